"""Corpora: fetching and rendering music, preparing a tokenized dataset, and reading it back for training."""
