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


#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 512 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc's malloc keep freed blocks for reuse instead of handing them back to the kernel.

    A codec's activations over a long window are tens of MB each (the 24 kHz EnCodec's first layers
    on 12 s: 32 channels x 288,000 samples, 37 MB). Above glibc's dynamic ceiling (32 MB) every such
    tensor is mapped, zero-filled page by page and unmapped again, op after op, and a smaller one
    freed at the heap's top is trimmed back to the kernel. Measured through that encoder on 12 s,
    one thread: 1.30 s a call, 0.41 s of it in the kernel, then 0.95 s and 0.02 s with both limits
    raised (the mmap limit alone: 1.18 s), the peak RSS 150 MB higher (docs/prep.md, Throughput).

    A process-wide setting: long jobs that push long windows through a codec (prep, its workers,
    ``audiogen codec``) call it once. Returns whether it took effect (False where malloc is not glibc's)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
