"""The burst tamer: a decoder glitch half a second 30 dB over the music is taken down to just over the music;
music, hits and silence pass untouched; the output does not depend on the chunking; a finished track and a
stream keep the music around a burst at the target instead of the burst."""

from __future__ import annotations

import numpy as np
import pytest

from audiogen.audio.finishing import FinishSpec, finish
from audiogen.audio.loudness import KWeighting, integrated_loudness
from audiogen.audio.shaping import BurstTamer
from audiogen.errors import AudiogenError

SR = 24000


def notes(seconds: float, seed: int = 0, level_db: float = -30.0) -> np.ndarray:
    """``[1, n]``: a new tone every 250 ms, each at ``level_db`` +- 6 dB, with a short attack and decay."""
    rng = np.random.default_rng(seed)
    n, note = int(seconds * SR), SR // 4
    out = np.zeros(n)
    t = np.arange(note) / SR
    env = np.minimum(1.0, t / 0.01) * np.exp(-t / 0.4)
    for start in range(0, n, note):
        f = 110 * 2 ** (rng.integers(0, 36) / 12)
        amp = 10 ** ((level_db + rng.uniform(-6, 6)) / 20) * np.sqrt(2)
        seg = amp * env * np.sin(2 * np.pi * f * t)
        out[start : start + note] = seg[: n - start]
    return out[None].astype(np.float32)


def with_burst(x: np.ndarray, at_s: float, seconds: float, over_db: float, seed: int = 1) -> np.ndarray:
    """``x`` with broadband noise ``over_db`` louder than ``x``'s median 100 ms block added at ``at_s``."""
    y = x.copy()
    a, b = int(at_s * SR), int((at_s + seconds) * SR)
    level = np.median(blocks(x))
    noise = np.random.default_rng(seed).standard_normal(b - a)
    y[0, a:b] += noise * 10 ** ((level + over_db + 0.691) / 20) / 1.2  # ~K-weighted level of white noise at 24 kHz
    return y


def blocks(x: np.ndarray) -> np.ndarray:
    """K-weighted loudness (LUFS) of each 100 ms block."""
    z = KWeighting(SR, x.shape[0])(x)
    nb = z.shape[1] // (SR // 10)
    return -0.691 + 10 * np.log10((z[:, : nb * SR // 10].reshape(z.shape[0], nb, -1) ** 2).mean(-1).sum(0) + 1e-20)


def test_a_burst_is_taken_down_to_just_over_the_music_and_let_go_after_it():
    x = notes(12.0)
    y = with_burst(x, 6.0, 0.5, over_db=30.0)
    assert blocks(y)[60:65].min() > np.median(blocks(x)) + 25  # the premise: a burst 30 dB over the music
    tamer = BurstTamer(SR, 1)
    out = tamer(y)
    music = np.median(blocks(x))
    burst = blocks(out)[61:65]  # the first block holds the attack, as the envelope rises
    assert burst.max() <= music + tamer.over_db + 2.0
    assert np.array_equal(out[:, : 6 * SR], y[:, : 6 * SR])  # nothing before it changed
    after = slice(int(7.0 * SR), 12 * SR)  # half a second after it: the music as it was
    assert np.abs(out[:, after] - y[:, after]).max() <= 1e-3 * np.abs(y[:, after]).max()
    assert 0.4 <= tamer.reduced_s <= 1.0 and tamer.max_reduction_db >= 15


def test_music_hits_and_silence_pass_untouched():
    """Notes at +-6 dB, hits 15 dB over the music for 20 ms, a silent start: not one sample changes."""
    x = np.concatenate([np.zeros((1, SR), np.float32), notes(10.0, seed=2)], axis=1)
    level = 10 ** (np.median(blocks(x[:, SR:])) / 20)
    for s in range(2 * SR, x.shape[1] - SR, SR):
        x[0, s : s + SR // 50] += 10 ** (15 / 20) * level * np.sin(2 * np.pi * 2000 * np.arange(SR // 50) / SR)
    tamer = BurstTamer(SR, 1)
    assert np.array_equal(tamer(x), x)
    assert tamer.reduced_s == 0.0


@pytest.mark.parametrize("channels", [1, 2])
def test_the_output_does_not_depend_on_the_chunking(channels):
    x = np.repeat(with_burst(notes(8.0, seed=3), 4.0, 0.6, over_db=25.0), channels, axis=0)
    whole = BurstTamer(SR, channels)(x)
    cuts = np.sort(np.random.default_rng(0).choice(np.arange(1, x.shape[1]), 150, replace=False))
    tamer = BurstTamer(SR, channels)
    chunked = np.concatenate([tamer(part) for part in np.split(x, cuts, axis=1)], axis=1)
    assert chunked.shape == x.shape and np.array_equal(chunked, whole)
    assert np.array_equal(BurstTamer(SR, channels).run(x, block_s=0.37), whole)  # finishing's blocks
    empty = [tamer(x[:, :0]), tamer(x[:, :0])]  # an empty chunk changes nothing, in the tamer or the level stage
    assert all(e.shape == (channels, 0) for e in empty)
    from audiogen.generation.stream import LevelFollower

    assert LevelFollower(SR, channels, -16.0, -1.0).process(x[:, :0]).shape == (channels, 0)
    assert not np.array_equal(whole, x)  # the premise: there was something to take down


def test_a_bad_threshold_is_refused():
    with pytest.raises(AudiogenError, match="positive"):
        BurstTamer(SR, 1, over_db=0.0)


def test_a_finished_track_plays_its_music_at_the_target_not_its_burst():
    """A 0.6 s burst 30 dB over 20 s of music: left in, it sets the integrated loudness (the quiet music is gated
    out) and the music plays about 20 dB under the target; tamed, the music plays near the target."""
    x = with_burst(notes(21.0, seed=4), 10.0, 0.6, over_db=30.0)
    music = np.r_[0:95, 115:200]  # 100 ms blocks away from the burst
    # the level evening (on by default) would hide it: the tamer alone
    kept = blocks(finish(x, SR, FinishSpec(duration_s=20.0, tame_bursts=False, even_level=False)))[music]
    tamed = blocks(finish(x, SR, FinishSpec(duration_s=20.0, even_level=False)))[music]
    assert np.median(kept) < -16.0 - 10  # the premise: the burst sets the level when left in
    assert np.median(tamed) == pytest.approx(-16.0, abs=3.0)


def test_a_stream_holds_the_music_around_a_burst_at_the_target():
    """The level stage, 1 s chunks, a 0.5 s burst 30 dB over the music: the follower alone (the tamer switched
    off) plays the music after it far under the music before it (the burst's 3 s window is set to the target);
    with the tamer the music after it plays within a few dB of the music before, and every 3 s window stays
    within 2 LU of the target."""
    from audiogen.generation.stream import LevelFollower

    x = with_burst(notes(20.0, seed=6), 10.2, 0.5, over_db=30.0)

    def run(tame: bool) -> tuple[float, float, float]:
        lev = LevelFollower(SR, 1, -16.0, -1.0, tame_bursts=tame)
        y = np.concatenate([lev.process(x[:, i : i + SR]) for i in range(0, x.shape[1], SR)], axis=1)
        b = blocks(y)
        worst = max(abs(integrated_loudness(y[:, e - 3 * SR : e], SR) + 16.0) for e in range(6 * SR, 20 * SR + 1, SR // 10))
        return float(np.median(b[88:102])), float(np.median(b[107:122])), worst  # 1.4 s before it, 1.5 s after

    before, after, _ = run(False)
    assert after < before - 10  # the premise: the follower alone drops the music after the burst
    before, after, worst = run(True)
    assert after >= before - 4.0 and worst <= 2.0
