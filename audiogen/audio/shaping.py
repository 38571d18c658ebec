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


class BurstTamer:
    """Takes bursts down to the level of the music around them, causally, in chunks of any length.

    A generated track can hold a burst: half a second 20-40 dB above the music around it (the
    decoder's output for a rare codeword combination, peaking at many times full scale). A true-peak
    limiter caps its peaks but leaves its loudness well above the rest, so a loudness stage either
    lowers the quiet music around it (a stream's follower: the 3 s window holding the burst is set
    to the target) or the listener hears a crack. This stage lowers the gain wherever the loudness
    envelope (K-weighted mean square over the last ``ENVELOPE_S``) stands more than ``over_db``
    above the median 100 ms block of the last ``HISTORY_S`` (blocks under ``GATE_LUFS`` left out),
    by the excess: a hard knee, attack as fast as the envelope rises, release ``RELEASE_S``. A
    single hit (tens of milliseconds) barely moves a 100 ms envelope; a burst is held at ``over_db``
    above the music, and the envelope lets go of it 100 ms after it ends (a one-pole envelope held
    the music after a 30 dB burst down for 0.4 s). Until ``MIN_BLOCKS`` audible blocks have been
    heard nothing is changed. The median, not the mean, is the music's level: a burst in the
    history would lift a mean by as much as it stands over the music.

    The gain is decided on a 1 ms grid from the samples before each step, and ramps linearly in
    dB within it, so the output does not depend on how the input is split into chunks.
    ``tamer(x: [C, n]) -> float32 [C, n]``; ``reduced_s`` and ``max_reduction_db`` report what it did.
    """

    STEP_S = 0.001
    BLOCK_S = 0.1
    ENVELOPE_S = 0.1
    RELEASE_S = 0.05
    HISTORY_S = 3.0
    GATE_LUFS = -50.0
    MIN_BLOCKS = 5

    def __init__(self, sample_rate: int, channels: int, over_db: float = 12.0):
        import collections

        from audiogen.audio.loudness import KWeighting

        if not (math.isfinite(over_db) and over_db > 0):
            raise AudiogenError(f"a burst must stand a positive number of dB over the music, got {over_db}")
        self.sr, self.over_db = sample_rate, over_db
        self.k_weighting = KWeighting(sample_rate, channels)
        self.step = max(1, int(round(self.STEP_S * sample_rate)))
        self.steps_per_block = max(1, int(round(self.BLOCK_S / self.STEP_S)))
        self.recent: collections.deque[float] = collections.deque(maxlen=max(1, int(round(self.ENVELOPE_S / self.STEP_S))))
        self.a_release = 1 - math.exp(-self.STEP_S / self.RELEASE_S)
        self.blocks: collections.deque[float] = collections.deque(maxlen=int(round(self.HISTORY_S / self.BLOCK_S)))
        self.reference: float | None = None  # median audible block (LUFS) of the history
        self.recent_sum = 0.0  # of ``recent``, the last ENVELOPE_S of 1 ms mean squares
        self.block_sum, self.block_steps = 0.0, 0
        self.carry = np.zeros(0)  # K-weighted squares of the step under way
        self.g_from = self.g_to = 0.0  # reduction (dB) at the start and end of the step under way
        self.reduced_samples, self.max_reduction_db = 0, 0.0

    @property
    def reduced_s(self) -> float:
        """Seconds of audio taken down by more than 0.5 dB so far."""
        return self.reduced_samples / self.sr

    def _complete(self, mean_square: float) -> None:
        """One 1 ms step done: envelope, block history, and the reduction the next step ramps to."""
        if len(self.recent) == self.recent.maxlen:
            self.recent_sum -= self.recent[0]
        self.recent.append(mean_square)
        self.recent_sum += mean_square
        self.block_sum += mean_square
        self.block_steps += 1
        if self.block_steps == self.steps_per_block:
            self.blocks.append(-0.691 + 10 * math.log10(self.block_sum / self.block_steps + 1e-30))
            audible = [b for b in self.blocks if b > self.GATE_LUFS]
            self.reference = float(np.median(audible)) if len(audible) >= self.MIN_BLOCKS else None
            self.block_sum, self.block_steps = 0.0, 0
            self.recent_sum = sum(self.recent)  # no drift from the running sum
        want = 0.0
        if self.reference is not None:
            envelope = max(self.recent_sum, 0.0) / len(self.recent)
            want = max(0.0, -0.691 + 10 * math.log10(envelope + 1e-30) - self.reference - self.over_db)
        g = self.g_to
        self.g_from, self.g_to = g, want if want > g else g + self.a_release * (want - g)

    def run(self, x: np.ndarray, block_s: float = 10.0) -> np.ndarray:
        """A whole track ``[C, N]`` in ``block_s`` blocks: the same samples as one call, in bounded memory (one call
        holds a dozen float64 arrays of the length it is given)."""
        out = np.empty(x.shape, dtype=np.float32)
        step = max(1, int(block_s * self.sr))
        for i in range(0, x.shape[-1], step):
            out[:, i : i + step] = self(x[:, i : i + step])
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[-1]
        if n == 0:  # nothing to decide (the level stage takes empty chunks, as it did before this stage)
            return np.asarray(x, dtype=np.float32)
        squares = np.concatenate([self.carry, (self.k_weighting(x) ** 2).sum(axis=0)])
        offset = len(self.carry)  # samples of the first step that earlier calls already played
        starts = np.arange(0, offset + n, self.step)
        g_from, g_to = np.empty(len(starts)), np.empty(len(starts))
        for s, a in enumerate(starts):
            g_from[s], g_to[s] = self.g_from, self.g_to
            if a + self.step <= len(squares):
                self._complete(float(squares[a : a + self.step].mean()))
        self.carry = squares[starts[-1] :] if len(squares) - starts[-1] < self.step else np.zeros(0)
        i = np.arange(offset, offset + n)
        s, frac = i // self.step, (i % self.step + 1) / self.step
        reduction = g_from[s] + (g_to[s] - g_from[s]) * frac
        self.reduced_samples += int((reduction > 0.5).sum())
        self.max_reduction_db = max(self.max_reduction_db, float(reduction.max(initial=0.0)))
        return (x * (10 ** (-reduction / 20))).astype(np.float32)
