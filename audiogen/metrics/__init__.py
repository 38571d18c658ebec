"""Measurements: FAD and its embedders, the musicnn tagger, conditioning and label metrics, audio checks, model and codec evaluation."""
