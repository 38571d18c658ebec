"""Device names from the command line, checked once (torch and the standard library only)."""

from __future__ import annotations

import torch

from audiogen.errors import AudiogenError


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; an unknown name or an absent GPU is an AudiogenError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise AudiogenError(f"--device {device!r} is not a device; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AudiogenError(f"--device {device} was asked for, but no CUDA GPU is available")
    return dev
