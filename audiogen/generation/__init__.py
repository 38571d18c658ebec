"""Generation: sampling tokens from the LM, the end-to-end job pipeline, and endless adaptive streaming."""
