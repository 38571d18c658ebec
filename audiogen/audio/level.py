"""The level stage of a stream, and of finishing's level evening: a DC blocker, the burst tamer, a loudness follower
holding the 3 s loudness at a target and a look-ahead true-peak limiter, over audio fed in chunks (docs/stream.md)."""

from __future__ import annotations

import collections
import math

import numpy as np
import scipy.signal


class LevelFollower:
    """Level control over whole chunks: DC blocker, burst tamer (:class:`~audiogen.audio.shaping.BurstTamer`),
    loudness follower to ``lufs``, look-ahead true-peak limiter.

    Loudness is BS.1770's (K-weighted mean square) in 100 ms blocks, and what is held is the 3 s
    window (EBU R128's short-term loudness). A chunk is finished before any of it plays, so the
    gain of a block may look ahead to the end of the chunk it is in, never past it:

    - the **follower** moves the gain (time constant ``TAU_S``) toward the target minus the
      loudness of the 3 s *centred* on the block, the part of that window past the chunk's end
      counted at the level of the chunk's last ``FORECAST_S`` (a window ending at the block
      lags the music by 1.5 s, and the smoothing adds to that);
    - the **guard** then keeps every 3 s window that ends within the chunk inside the target
      ``+- BAND_LU``, by one offset on the follower's course over the rest of the chunk (a level
      jump is met within 0.2 s; a loud block at the chunk's end lowers the whole chunk a
      little rather than itself a lot), taking the chunk's last 100 ms to go on for ``BEYOND_S``
      so that the next chunk has room to move. New blocks are never pushed past the target level
      to make up for earlier ones: that would echo every swing 3 s later;
    - the limiter takes energy from loud peaks, so a chunk the limiter touches is levelled
      twice, the second time with each block counted at what the limiter left of it;
    - the gain moves at most ``MAX_STEP_DB`` per block, is interpolated per sample (linear in
      dB), never exceeds ``MAX_GAIN_DB``, and holds while the music is below ``GATE_LUFS``
      (silence is not boosted).

    ``tame_bursts=False`` leaves the burst tamer out. Output lags input by ``delay`` samples (the limiter's look-ahead); ``process`` returns
    exactly as many samples as it is given (the stream starts with ``delay`` samples of silence).
    """

    WINDOW_S = 3.0  # short-term loudness (EBU R128's short-term window)
    BLOCK_S = 0.1
    TAU_S = 0.3  # gain smoothing time constant
    BAND_LU = 1.0  # the guard's band around the target
    FORECAST_S = 1.0  # the level the window's part past the chunk is counted at: the last FORECAST_S
    MAX_STEP_DB = 6.0  # per block: a 12 dB jump is met within 0.2 s
    BEYOND_S = 0.2  # the guard takes the chunk's last 100 ms to go on this long: room for the next chunk's gain to move
    GATE_LUFS = -50.0  # quieter than this: hold the gain (do not pump up silence)
    MAX_GAIN_DB = 30.0
    LOOKAHEAD_S = 0.005

    def __init__(self, sample_rate: int, channels: int, lufs: float, true_peak_db: float, tame_bursts: bool = True):
        from audiogen.audio.loudness import KWeighting
        from audiogen.audio.shaping import BurstTamer

        self.sr, self.channels, self.lufs = sample_rate, channels, lufs
        self.ceiling = 10 ** ((true_peak_db - 0.1) / 20)  # just under: oversampling estimates differ slightly
        self.k_weighting = KWeighting(sample_rate, channels)
        self.tamer = BurstTamer(sample_rate, channels) if tame_bursts else None
        self.dc_b, self.dc_a = scipy.signal.butter(2, 10.0 / (sample_rate / 2), "highpass")
        self.dc_state = np.zeros((channels, 2))
        self.block = int(self.BLOCK_S * sample_rate)
        self.n_window = int(round(self.WINDOW_S / self.BLOCK_S))
        self.n_forecast = max(1, int(round(self.FORECAST_S / self.BLOCK_S)))
        self.n_beyond = int(round(self.BEYOND_S / self.BLOCK_S))
        self.e_target = 10 ** ((lufs + 0.691) / 10)  # mean square of a block at the target loudness
        self.e_gate = 10 ** ((self.GATE_LUFS + 0.691) / 10)
        # per completed block, oldest first: K-weighted mean square in and out (after the gain)
        self.e_in: collections.deque[float] = collections.deque(maxlen=self.n_window)
        self.e_out: collections.deque[float] = collections.deque(maxlen=self.n_window)
        self.partial: tuple[int, float, float] = (0, 0.0, 0.0)  # block under way: samples, summed squares in, out
        self.gain_db: float | None = None  # at the end of the last completed block (None: nothing audible yet)
        self.look = max(1, int(self.LOOKAHEAD_S * sample_rate))
        self.delay = 2 * self.look
        self.pending = np.zeros((channels, self.delay), dtype=np.float32)  # gained audio not yet emitted
        self.need_hist = np.ones(self.delay, dtype=np.float32)  # required limiter gain of the emitted tail
        self.peak_ctx = np.zeros((channels, 64), dtype=np.float32)  # oversampling filter context

    def _targets(self, e: list[float]) -> list[float | None]:
        """Follower target (dB) of each new block: ``lufs`` minus the loudness of the window centred on it (its
        part past the chunk at the level of the chunk's last ``FORECAST_S``), counting only blocks above the
        gate (a pause does not raise the gain); None when no block is."""
        if not e:
            return []
        known = [v if v > self.e_gate else None for v in [*self.e_in, *e]]
        recent = [v for v in known[-self.n_forecast :] if v is not None]
        half, out = self.n_window // 2, []
        for j in range(len(e)):
            c = len(self.e_in) + j
            seen = [v for v in known[max(0, c - half) : c + half] if v is not None]
            if recent:  # the window's blocks past the chunk
                seen += [sum(recent) / len(recent)] * max(0, c + half - len(known))
            z = sum(seen) / len(seen) if seen else 0.0
            out.append(min(self.MAX_GAIN_DB, self.lufs + 0.691 - 10 * math.log10(z)) if seen else None)
        return out

    def _guard(self, e: list[float], gains: list[float], prev: float) -> tuple[float, float]:
        """Bounds (dB) on one offset to ``gains`` (the follower's course over blocks ``e``, the rest of the chunk;
        ``prev`` the gain the first one ramps from) keeping each 3 s window that ends on one of them within the
        band, counting only blocks above the gate; ``(-inf, inf)`` when none binds."""
        band = 10 ** (self.BAND_LU / 10)
        lo, hi = -math.inf, math.inf
        # the window's earlier blocks, oldest first: output energy and 1 where audible; before 3 s of audio the
        # missing ones count as on target
        missing = self.n_window - len(self.e_in)
        past = [(self.e_target, 1)] * missing + [(o, 1) if i > self.e_gate else (0.0, 0)
                                                for o, i in zip(self.e_out, self.e_in)]
        # the new blocks' output energy is fixed + x * scaled for an offset of 10 log10(x) dB: the first block
        # ramps from prev, which counts as half its energy (linear in dB, so a little more than that when it falls)
        fixed = scaled = 0.0
        count = 0
        for k in range(min(len(e), self.n_window)):
            if e[k] > self.e_gate:
                if k == 0:
                    fixed, scaled = e[0] * 10 ** (prev / 10) / 2, -e[0] * 10 ** (gains[0] / 10) / 2
                scaled += e[k] * 10 ** (gains[k] / 10)
                count += 1
            if not count or scaled <= 0:
                continue
            kept = past[len(past) - (self.n_window - k - 1) :] if k < self.n_window - 1 else []
            past_out = sum(o for o, _ in kept)
            n = count + sum(a for _, a in kept)
            # the new blocks may always reach the target level, whatever came before
            up = (max(n * self.e_target * band - past_out, count * self.e_target) - fixed) / scaled
            hi = min(hi, 10 * math.log10(up) if up > 0 else -math.inf)
            down = (min(n * self.e_target / band - past_out, count * self.e_target) - fixed) / scaled
            if down > 0:
                lo = max(lo, 10 * math.log10(down))
        return lo, hi

    def _gains(self, ysq: np.ndarray, start: float | None,
               scale: list[float] | None = None) -> tuple[list[int], list[float]]:
        """``ysq: float64 [n]`` K-weighted squares summed over channels, ``start`` the gain (dB) at the call's
        first sample (None: nothing played yet), ``scale`` what the limiter leaves of each block -> the
        blocks completed in this call: their ends (sample index in the call) and gains (dB at that sample)."""
        n = len(ysq)
        done, sum_in, sum_out = self.partial
        ends = list(range(self.block - done, n + 1, self.block))
        starts = [0] + ends[:-1]
        e = [(float(ysq[s:t].sum()) + (sum_in if j == 0 else 0.0)) / self.block
             for j, (s, t) in enumerate(zip(starts, ends))]
        if scale is not None:
            e = [v * r for v, r in zip(e, scale)]
        targets = self._targets(e)
        # the guard's blocks past the chunk: its last 100 ms going on
        last = float(ysq[max(0, n - self.block) :].sum()) / self.block * (scale[-1] if scale else 1.0)
        beyond = [last] * self.n_beyond
        alpha = 1 - math.exp(-self.BLOCK_S / self.TAU_S)
        gains, quiet = [], []  # quiet: blocks of this call before anything was audible
        for j, (s, t) in enumerate(zip(starts, ends)):
            if self.gain_db is None:
                if targets[j] is None:
                    quiet.append(j)
                    continue
                # the first audible block starts the gain where it belongs, and the quiet blocks before it in
                # this call take the same gain (those of earlier calls have played at 0 dB)
                self.gain_db = targets[j]
                for q in quiet:
                    self.e_in.append(e[q])
                    self.e_out.append(e[q] * 10 ** (self.gain_db / 10))
                gains += [self.gain_db] * len(quiet)
                quiet = []
            g0, course = self.gain_db, []
            g = g0
            for target in targets[j:]:  # the follower's course to the end of the chunk
                g = g if target is None else g + alpha * (target - g)
                course.append(g)
            # the block's gain ramps from the previous block's (the previous call's tail held it)
            prev = gains[-1] if gains else g0 if start is None else start
            lo, hi = self._guard(e[j:] + beyond, course + [course[-1]] * len(beyond), prev)
            g = course[0] + min(hi, max(lo, 0.0))
            g = min(max(g, g0 - self.MAX_STEP_DB), g0 + self.MAX_STEP_DB, self.MAX_GAIN_DB)
            ramp = 10 ** (np.linspace(prev, g, t - s + 1)[1:] / 10)
            out = float((ysq[s:t] * ramp).sum()) + (sum_out if j == 0 else 0.0)
            out *= 1.0 if scale is None else scale[j]
            self.e_in.append(e[j])
            self.e_out.append(out / self.block)
            self.gain_db = g
            gains.append(g)
        for q in quiet:  # nothing audible in this call
            self.e_in.append(e[q])
            self.e_out.append(e[q])
            gains.append(0.0)
        tail = float(ysq[ends[-1] if ends else 0 :].sum())
        g = 10 ** ((self.gain_db or 0.0) / 10)
        if ends:
            self.partial = (n - ends[-1], tail, tail * g)
        else:
            self.partial = (done + n, sum_in + tail, sum_out + tail * g)
        return ends, gains

    def _limit(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Look-ahead true-peak limiting of ``y: [C, n]`` after the held-back tail, state untouched:
        ``(z = [pending | y], need, limit)``, the limiter gain per sample of ``z`` (its last ``delay`` provisional)."""
        from scipy.ndimage import minimum_filter1d, uniform_filter1d

        from audiogen.audio.loudness import true_peak_envelope

        z = np.concatenate([self.pending, y], axis=1)
        env = true_peak_envelope(np.concatenate([self.peak_ctx, z], axis=1), self.sr)[self.peak_ctx.shape[1] :]
        need = np.minimum(1.0, self.ceiling / np.maximum(env, 1e-12)).astype(np.float32)
        ext = np.concatenate([self.need_hist, need])
        smooth = uniform_filter1d(minimum_filter1d(ext, size=2 * self.look + 1, mode="nearest"), size=self.look,
                                  mode="nearest")
        return z, need, np.minimum(smooth, ext)[self.delay :]

    def _limiter_loss(self, y: np.ndarray, limit: np.ndarray, ends: list[int]) -> list[float]:
        """Per block ending at ``ends``: the fraction of its energy the limiter leaves (``y: [C, n]``,
        ``limit: [n]`` the limiter gain per sample of ``y``)."""
        p = (y.astype(np.float64) ** 2).sum(axis=0)
        out = []
        for t in ends:
            s = max(0, t - self.block)
            before = float(p[s:t].sum())
            out.append(float((p[s:t] * limit[s:t] ** 2).sum()) / before if before > 0 else 1.0)
        return out

    def process(self, x: np.ndarray) -> np.ndarray:
        """``x: float32 [C, n]`` -> levelled ``float32 [C, n]`` (delayed by ``self.delay`` samples)."""
        from scipy.signal import lfilter

        x, self.dc_state = lfilter(self.dc_b, self.dc_a, x.astype(np.float64), axis=1, zi=self.dc_state)
        x = x.astype(np.float32)
        if self.tamer is not None:
            x = self.tamer(x)
        n = x.shape[1]
        ysq = (self.k_weighting(x) ** 2).sum(axis=0)
        played = self.e_in or self.partial[0]
        start = self.gain_db if self.gain_db is not None else 0.0 if played else None
        kept = (self.e_in.copy(), self.e_out.copy(), self.gain_db, self.partial)

        def level(scale):
            ends, gains = self._gains(ysq, start, scale)
            s0 = start if start is not None else gains[0] if gains else 0.0
            # per sample, linear in dB between block ends; held after the last one
            y = x * (10 ** (np.interp(np.arange(1, n + 1), [0, *ends], [s0, *gains]) / 20)).astype(np.float32)
            return (ends, y, *self._limit(y))

        ends, y, z, need, limit = level(None)
        loss = self._limiter_loss(y, limit[self.delay :], ends)
        if ends and min(loss) < 0.999:
            # the limiter takes energy from loud blocks: level again with each block counted at what it leaves
            # (the gains change a little, so the limiter does too: the blocks are booked at the second figure)
            self.e_in, self.e_out, self.gain_db, self.partial = kept
            ends, y, z, need, limit = level(loss)
            for j, (r1, r2) in enumerate(zip(loss, self._limiter_loss(y, limit[self.delay :], ends))):
                self.e_in[j - len(ends)] *= r2 / r1
                self.e_out[j - len(ends)] *= r2 / r1
        out = z[:, :n] * limit[:n]
        self.need_hist = need[n - self.delay : n] if n >= self.delay else np.concatenate([self.need_hist, need[:n]])[-self.delay :]
        self.peak_ctx = z[:, max(0, n - 64) : n]
        self.pending = z[:, n:]
        return out.astype(np.float32)


def even_level(wav: np.ndarray, sample_rate: int, lufs: float, true_peak_db: float, tame_bursts: bool = True,
               chunk_s: float = 1.0) -> np.ndarray:
    """``wav: [C, N]`` through the level stage in ``chunk_s`` chunks (a stream's), its delay taken out: ``float32
    [C, N]`` whose 3 s loudness stays near ``lufs`` wherever the music is audible. ``tame_bursts=False`` leaves the
    burst tamer out."""
    channels, n = wav.shape
    stage = LevelFollower(sample_rate, channels, lufs, true_peak_db, tame_bursts)
    step = max(1, int(round(chunk_s * sample_rate)))
    x = np.asarray(wav, dtype=np.float32)
    parts = [stage.process(x[:, i : i + step]) for i in range(0, n, step)]
    parts.append(stage.process(np.zeros((channels, stage.delay), dtype=np.float32)))  # flush the look-ahead
    return np.concatenate(parts, axis=1)[:, stage.delay : stage.delay + n]
