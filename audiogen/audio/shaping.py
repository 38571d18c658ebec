"""Shaping a signal: equal-power fades and DC / rumble removal (zero-phase high-pass, in bounded memory)."""

from __future__ import annotations

import math

import numpy as np

from audiogen.errors import AudiogenError


def equal_power_fade(n: int, fade_in: bool = True) -> np.ndarray:
    """An equal-power fade curve of ``n`` samples (sin for in, cos for out): power sums to 1."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    curve = np.sin(0.5 * np.pi * t) if fade_in else np.cos(0.5 * np.pi * t)
    return curve.astype(np.float32)


def apply_fades(wav: np.ndarray, sample_rate: int, fade_in_s: float = 0.0, fade_out_s: float = 0.0) -> np.ndarray:
    """Equal-power fade-in and fade-out (seconds) on ``[C, N]``; returns a new array."""
    n = wav.shape[-1]
    if not (math.isfinite(fade_in_s) and math.isfinite(fade_out_s) and fade_in_s >= 0 and fade_out_s >= 0):
        raise AudiogenError(f"fade lengths must be >= 0 seconds, got {fade_in_s:g} in and {fade_out_s:g} out")
    nin, nout = int(round(fade_in_s * sample_rate)), int(round(fade_out_s * sample_rate))
    if nin + nout > n:
        raise AudiogenError(
            f"fades ({fade_in_s:g}s in + {fade_out_s:g}s out) are longer than the audio ({n / sample_rate:.2f}s)"
        )
    out = np.array(wav, dtype=np.float32, copy=True)
    if nin:
        out[..., :nin] *= equal_power_fade(nin, fade_in=True)
    if nout:
        out[..., n - nout :] *= equal_power_fade(nout, fade_in=False)
    return out


def remove_dc(wav: np.ndarray, sample_rate: int, cutoff_hz: float = 10.0, block_s: float = 30.0) -> np.ndarray:
    """Remove DC offset and sub-audible rumble: zero-phase 2nd-order Butterworth high-pass.

    The same filtering as ``scipy.signal.sosfiltfilt`` (odd extension at both ends, steady-state
    initial conditions, forward then backward), run ``block_s`` at a time with the filter state
    carried across blocks into one float32 buffer: memory is one copy of the audio plus one
    float64 block, where ``sosfiltfilt`` needs several float64 copies of the whole signal.
    """
    from scipy.signal import butter, sosfilt, sosfilt_zi

    x = np.asarray(wav, dtype=np.float32)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None]
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    sos = butter(2, cutoff_hz, btype="highpass", fs=sample_rate, output="sos")
    pad = 3 * (2 * len(sos) + 1)  # sosfiltfilt's default padlen for these sections
    if x.shape[-1] <= max(32, pad):
        out = x - mean
        return out[0] if squeeze else out
    # odd extension, as sosfiltfilt pads: 2*x[0] - x[pad:0:-1] ... 2*x[-1] - x[-2:-pad-2:-1]
    y = np.concatenate([2 * x[:, :1] - x[:, pad:0:-1], x, 2 * x[:, -1:] - x[:, -2 : -pad - 2 : -1]], axis=1)
    y -= mean
    zi = sosfilt_zi(sos)[:, None, :]  # [sections, 1, 2], scaled per channel by the first sample
    block = max(1, int(block_s * sample_rate))
    n = y.shape[1]
    state = zi * y[None, :, 0, None].astype(np.float64)
    for s in range(0, n, block):  # forward
        seg, state = sosfilt(sos, y[:, s : s + block].astype(np.float64), axis=-1, zi=state)
        y[:, s : s + block] = seg
    state = zi * y[None, :, -1, None].astype(np.float64)
    for e in range(n, 0, -block):  # backward, over the time-reversed signal
        s = max(0, e - block)
        seg, state = sosfilt(sos, y[:, s:e][:, ::-1].astype(np.float64), axis=-1, zi=state)
        y[:, s:e] = seg[:, ::-1]
    out = y[:, pad:-pad]  # a view (strided when there are several channels): no second copy of the audio
    return out[0] if squeeze else out
