"""audiogen: end-to-end music generation (EnCodec tokens -> conditioned LM -> finished tracks)."""

__version__ = "0.1.0"

from audiogen.errors import AudiogenError  # noqa: E402  (re-exported: the one user-error type)

__all__ = ["AudiogenError", "__version__"]
