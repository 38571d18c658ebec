"""The language model and what surrounds it: delay patterns, conditioning, model directories, MusicGen import."""
