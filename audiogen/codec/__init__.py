"""The codec layer: waveforms <-> discrete tokens (the ``Codec`` contract, its backends, loading and saving)."""
