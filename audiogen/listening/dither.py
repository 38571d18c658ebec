"""Per-session served audio: the stimulus file plus inaudible dither of its own.

Every session hears the same music, but no two sessions (and no two places in one
session) get the same bytes: the 16-bit samples carry triangular (TPDF) dither of one
least significant bit, about -93 dBFS RMS, seeded by the session's secret ``dither_seed``
and the stimulus' place in the plan. A hash of a file then says nothing about which file
another session was sent, so sessions cannot be linked by comparing downloads. The
header is untouched: size and headers stay identical across a session's files.

The noise is drawn per 64 KiB block of the data chunk, so a range request computes only
the blocks it touches and every range of one file agrees with the whole file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BLOCK = 1 << 16  # bytes of sample data per noise block (even: whole 16-bit samples)


def wav_data_span(path: str | os.PathLike) -> tuple[int, int]:
    """(byte offset, byte length) of a 16-bit PCM WAV file's ``data`` chunk."""
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise ValueError(f"{path}: not a RIFF/WAVE file")
        pos = 12
        while True:
            f.seek(pos)
            ch = f.read(8)
            if len(ch) < 8:
                raise ValueError(f"{path}: no data chunk")
            size = int.from_bytes(ch[4:8], "little")
            if ch[:4] == b"data":
                return pos + 8, size
            pos += 8 + size + (size & 1)


def dithered_range(path: Path, span: tuple[int, int], seed: tuple[int, ...], first: int, last: int) -> bytes:
    """Bytes ``first..last`` (inclusive) of ``path`` as served to one session: the samples in
    ``span`` (the data chunk) get ``seed``'s dither; header bytes are the file's own."""
    off, length = span
    with open(path, "rb") as f:
        raw = bytearray(os.pread(f.fileno(), last - first + 1, first))
        lo, hi = max(first, off), min(last, off + length - 1)  # the part of the range inside the data
        if lo > hi:
            return bytes(raw)
        b0, b1 = (lo - off) // BLOCK, (hi - off) // BLOCK
        start, stop = off + b0 * BLOCK, min(off + length, off + (b1 + 1) * BLOCK)
        pcm = np.frombuffer(os.pread(f.fileno(), stop - start, start), dtype="<i2").astype(np.int32)
    noise = np.concatenate([_tpdf(seed, b, min(BLOCK, off + length - (off + b * BLOCK)) // 2)
                            for b in range(b0, b1 + 1)])
    out = np.clip(pcm + noise[:pcm.size], -32768, 32767).astype("<i2").tobytes()
    raw[lo - first:hi - first + 1] = out[lo - start:hi - start + 1]
    return bytes(raw)


def _tpdf(seed: tuple[int, ...], block: int, n: int) -> np.ndarray:
    """``n`` samples of {-1, 0, +1} LSB (probabilities 1/4, 1/2, 1/4) for one block. -> int32[n]"""
    rng = np.random.default_rng([*seed, block])
    bits = rng.integers(0, 2, size=(2, n), dtype=np.int8)
    return (bits[0] - bits[1]).astype(np.int32)
