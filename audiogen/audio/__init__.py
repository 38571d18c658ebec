"""Audio files and signals: reading, resampling, loudness and fades, and finishing a track for delivery."""
