"""Loudness and peaks: BS.1770-4 integrated loudness (whole arrays, chunked streams, whole files)
and the oversampled true peak, with the gain arithmetic around them."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile as sf

from audiogen.audio.io import _check_decoded, _sf_reason, audio_info
from audiogen.errors import AudiogenError


def integrated_loudness(wav: np.ndarray, sample_rate: int, block_s: float = 30.0) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4 with gating, as pyloudnorm computes it).

    Returns ``-inf`` for digital silence. Audio shorter than one 400 ms gating block
    is zero-padded to one block so short clips still get a figure. The array is fed to a
    :class:`LoudnessMeter` ``block_s`` at a time, so the float64 filtering never holds
    more than one block (a 10-minute track would otherwise need several full-length copies).
    """
    x = np.asarray(wav)
    if x.ndim == 1:
        x = x[None]
    meter = LoudnessMeter(sample_rate, x.shape[0])
    block = max(1, int(block_s * sample_rate))
    for s in range(0, x.shape[1], block):
        meter.add(x[:, s : s + block])
    return meter.integrated()


class KWeighting:
    """BS.1770's K-weighting (pyloudnorm's filter stages) of audio fed in chunks, the filter state
    carried across them: ``kw(chunk [C, n]) -> float64 [C, n]``."""

    def __init__(self, sample_rate: int, channels: int):
        import pyloudnorm

        self.stages = [(f.b, f.a, f.passband_gain) for f in pyloudnorm.Meter(sample_rate)._filters.values()]
        self.state = [np.zeros((channels, max(len(b), len(a)) - 1)) for b, a, _ in self.stages]

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        from scipy.signal import lfilter

        y = np.asarray(chunk, dtype=np.float64)
        for i, (b, a, gain) in enumerate(self.stages):
            y, self.state[i] = lfilter(b, a, y, axis=1, zi=self.state[i])
            y = gain * y
        return y


class LoudnessMeter:
    """Integrated loudness (BS.1770-4, the same K-weighting, blocks and gating as pyloudnorm)
    of audio fed in chunks, so a file of any length is measured in bounded memory.

    The K-weighting filters carry their state across chunks; each 400 ms block's energy
    is the difference of running sums of the squared filtered signal at the block's
    bounds, computed with pyloudnorm's own expressions so the blocks are the same.
    """

    def __init__(self, sample_rate: int, channels: int):
        if channels > 5:
            raise AudiogenError(f"loudness (BS.1770-4) is defined for up to 5 channels, this audio has {channels}; "
                                "downmix it first")
        self.rate, self.channels = sample_rate, channels
        self.k_weighting = KWeighting(sample_rate, channels)
        self.n = 0  # samples seen
        self.total = np.zeros(channels)  # running sum of squares of the filtered signal
        self.marks: dict[int, np.ndarray] = {0: np.zeros(channels)}  # sample index -> running sum before it
        self._next = [0, 0]  # per side (lower, upper bound): the next block whose bound is not yet marked

    def _bounds(self, j: int) -> tuple[int, int]:
        return int(0.4 * (j * 0.25) * self.rate), int(0.4 * (j * 0.25 + 1) * self.rate)

    def add(self, chunk: np.ndarray) -> None:
        """``chunk: [C, n]`` float audio, the next ``n`` samples."""
        y = self.k_weighting(chunk)
        csum = np.cumsum(y * y, axis=1) + self.total[:, None]
        start, self.n = self.n, self.n + y.shape[1]
        for side in (0, 1):  # the running sum at every block bound (lower, then upper) inside this chunk
            while (bound := self._bounds(self._next[side])[side]) <= self.n:
                if bound > start:
                    self.marks[bound] = csum[:, bound - start - 1].copy()
                self._next[side] += 1
        if y.shape[1]:
            self.total = csum[:, -1].copy()

    def integrated(self) -> float:
        """LUFS; ``-inf`` for digital silence. Shorter than one block counts as one zero-padded block."""
        if self.n < int(math.ceil(0.4 * self.rate)):
            self.add(np.zeros((self.channels, int(math.ceil(0.4 * self.rate)) - self.n)))
        blocks = int(np.round((self.n / self.rate - 0.4) / 0.1)) + 1
        G = np.array([1.0, 1.0, 1.0, 1.41, 1.41][: self.channels])
        z = np.empty((self.channels, blocks))
        for j in range(blocks):
            lo, hi = self._bounds(j)
            z[:, j] = (self.marks.get(min(hi, self.n), self.total) - self.marks[lo]) / (0.4 * self.rate)
        with np.errstate(divide="ignore", invalid="ignore"):
            loud = -0.691 + 10.0 * np.log10(G @ z)
            gated = z[:, loud >= -70.0]
            if not gated.shape[1]:
                return float("-inf")
            rel = -0.691 + 10.0 * np.log10(G @ gated.mean(axis=1)) - 10.0
            keep = z[:, (loud > rel) & (loud > -70.0)]
            if not keep.shape[1]:
                return float("-inf")
            return float(-0.691 + 10.0 * np.log10(G @ keep.mean(axis=1)))


@dataclass(frozen=True)
class FileMeasure:
    frames: int
    duration_s: float
    sample_rate: int
    channels: int
    lufs: float | None  # None above 5 channels (the channel weights here cover up to 5)
    true_peak_dbtp: float


def measure_file(path: str | os.PathLike, block_s: float = 30.0) -> FileMeasure:
    """Loudness and true peak of a whole file, read ``block_s`` at a time (bounded memory for
    any length); the figures equal :func:`integrated_loudness` and :func:`true_peak_dbtp` on
    the loaded file. ``lufs`` is None for more than 5 channels (the channel weights here cover up to 5)."""
    info = audio_info(path)
    # a block is at least the filter context, so the held block's neighbours give a full context on each side
    sr, block, pad = info.sample_rate, max(TRUE_PEAK_PAD, int(block_s * info.sample_rate)), TRUE_PEAK_PAD
    loudness = info.channels <= 5  # BS.1770-4 defines loudness for up to 5 channels
    meter, peak, n = None, 0.0, 0
    held = None  # the block waiting for the next one's first samples (true-peak filter context)
    left = None  # the last samples before the held block
    try:
        with sf.SoundFile(str(info.path)) as f:
            while True:
                data = f.read(frames=block, dtype="float32", always_2d=True)
                if not data.shape[0] and held is None:
                    break
                x = np.ascontiguousarray(data.T, dtype=np.float64)
                if not np.isfinite(x).all():
                    raise AudiogenError(f"{info.path}: contains NaN or infinite samples")
                if x.shape[1]:
                    if loudness:
                        meter = meter or LoudnessMeter(sr, x.shape[0])
                        meter.add(x)
                    n += x.shape[1]
                if held is not None:
                    ctx = [c for c in (left, held, x[:, :pad]) if c is not None]
                    off = 0 if left is None else left.shape[1]
                    peak = max(peak, float(_true_peak_block(np.concatenate(ctx, axis=1), off,
                                                            off + held.shape[1], sr).max(initial=0.0)))
                    left = held[:, -pad:]
                held = x if x.shape[1] else None
                if held is None:
                    break
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudiogenError(f"{info.path}: corrupt or truncated audio ({_sf_reason(e)})") from None
    _check_decoded(info.path, n, info.frames)
    return FileMeasure(frames=n, duration_s=n / sr, sample_rate=sr, channels=info.channels,
                       lufs=meter.integrated() if loudness else None,
                       true_peak_dbtp=20 * math.log10(peak) if peak > 0 else float("-inf"))


def true_peak_envelope(wav: np.ndarray, sample_rate: int, block_s: float = 10.0) -> np.ndarray:
    """Per-sample true peak, max over channels: ``[C, N] -> float32[N]``.

    Each sample's value is the largest magnitude of the signal oversampled to >= 192 kHz
    (BS.1770-4 Annex 2) within that sample period. Computed in blocks (with overlap for
    the interpolation filter) so an hour of audio never needs an hour of oversampled
    float64 at once; stored as float32 (the limiter's resolution), one value per sample.
    """
    x = np.asarray(wav)
    if x.ndim == 1:
        x = x[None]
    env = np.zeros(x.shape[1], dtype=np.float32)
    for s, e, peaks in _true_peak_blocks(x, sample_rate, block_s):
        env[s:e] = peaks
    return env


TRUE_PEAK_PAD = 64  # context samples on each side of a block for the oversampling filter


def _true_peak_blocks(x: np.ndarray, sample_rate: int, block_s: float) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, float64 true-peak envelope of x[:, start:stop])`` block by block over ``[C, N]``."""
    N = x.shape[1]
    block = max(1, int(block_s * sample_rate))
    for s in range(0, N, block):
        lo, hi, e = max(0, s - TRUE_PEAK_PAD), min(N, s + block + TRUE_PEAK_PAD), min(N, s + block)
        yield s, e, _true_peak_block(np.asarray(x[:, lo:hi], dtype=np.float64), s - lo, e - lo, sample_rate)


def _true_peak_block(x: np.ndarray, start: int, stop: int, sample_rate: int) -> np.ndarray:
    """True-peak envelope of ``x[:, start:stop]``, the samples around it being filter context."""
    from scipy.signal import resample_poly

    C, n = x.shape
    factor = max(4, int(math.ceil(192_000 / sample_rate)))
    up = np.abs(resample_poly(x, factor, 1, axis=1)).reshape(C, n, factor).max(axis=2).max(axis=0)
    return np.maximum(up[start:stop], np.abs(x[:, start:stop]).max(axis=0))


def true_peak_dbtp(wav: np.ndarray, sample_rate: int, block_s: float = 10.0) -> float:
    """True peak in dBTP: the peak of the signal oversampled to >= 192 kHz (BS.1770-4 Annex 2)."""
    x = np.asarray(wav)
    if x.ndim == 1:
        x = x[None]
    peak = max((float(p.max(initial=0.0)) for _, _, p in _true_peak_blocks(x, sample_rate, block_s)), default=0.0)
    return 20 * math.log10(peak) if peak > 0 else float("-inf")


def sample_peak_dbfs(wav: np.ndarray) -> float:
    peak = float(np.abs(wav).max(initial=0.0))
    return 20 * math.log10(peak) if peak > 0 else float("-inf")


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)
