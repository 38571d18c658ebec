"""Measurements: FAD and its embedders, the musicnn tagger, conditioning and label metrics, conditioning adherence, audio checks, model and codec evaluation."""
