"""Adaptive streaming on a tiny random model: token decoding, seams, controls, level, the `stream` pipe."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from audiogen.errors import AudiogenError
from audiogen.generation.sampling import SamplingParams, generate_window
from audiogen.generation.stream import (LevelFollower, MusicStream, StreamSettings, StreamState, intensity_moods,
                                        parse_message, state_from)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_codec):
    """A random tiny LM + the tiny codec (75 Hz frames), saved as a model directory."""
    from audiogen.models.conditioning import ConditionerConfig
    from conftest import save_tiny_model

    ccfg = ConditionerConfig(text_encoder="none", genres=["ambient", "rock"], moods=["calm", "dark"],
                             keys=["C major", "A minor"], bpm_buckets=[60.0, 90.0, 120.0, 150.0], dim=32)

    def redraw(lm):
        # token embeddings and heads redrawn at N(0, 0.02), without the unit-scale embeddings and copy
        # prior a fresh LM starts with (audiogen/models/lm.py): with those, an untrained model mostly repeats
        # its previous frame whatever the conditions, and these tests need a condition change to
        # change what is sampled
        for p in [*lm.embed_tokens.parameters(), *lm.lm_heads.parameters()]:
            torch.nn.init.normal_(p, std=0.02)

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", tiny_codec, ccfg, lm_init=redraw)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from audiogen.models.checkpoint import load_model

    return load_model(tiny_model_dir)


def settings(**kw):
    # a short codec context: the tiny codec's decode dominates the tests' time on a busy 2-core machine
    base = dict(chunk_s=0.25, window_s=1.0, top_k=50, seed=3, decode_context_s=0.2)
    base.update(kw)
    sampling = {k: base.pop(k) for k in ("temperature", "top_k", "top_p", "cfg_scale", "max_silence_s") if k in base}
    return StreamSettings(sampling=SamplingParams(**sampling), **base)


def take(stream, n):
    return [stream.next_chunk() for _ in range(n)]


def test_tokens_before_any_slide_equal_one_generated_window(loaded):
    """Greedy streaming inside one window is the same decode as generate_window (the delay pattern is kept)."""
    s = MusicStream(loaded, {"genre": "rock", "bpm": 120}, settings(temperature=0.0, window_s=2.0, level=False))
    while s.tokens.complete < 60:  # within the first window: no slide
        s.tokens.step(s.mix.install(s.tokens.produced, s.tokens.cache))
    assert s.tokens.slides == 0
    from audiogen.generation.pipeline import condition_batch

    cond, mask = condition_batch(loaded.conditioner, [state_from({"genre": "rock", "bpm": 120}).conditions()],
                                 True, "cpu")
    ref = generate_window(loaded.lm, cond, mask, 60, SamplingParams(temperature=0.0), None, engine="eager")[0]
    # the window's last K - 1 frames of the delayed codebooks saw its end (special tokens) as input; the stream's did not
    n = 60 - s.tokens.K + 1
    assert torch.equal(s.tokens.frames_between(0, n), ref[:, :n])


def test_window_slides_with_bounded_buffers_and_chunks_have_fixed_length(loaded):
    s = MusicStream(loaded, {"genre": "ambient"}, settings())
    chunks = take(s, 14)  # 3.5 s of audio through 1 s windows
    assert s.tokens.slides >= 4
    assert {c.shape for c in chunks} == {(1, s.chunk_samples)}
    assert all(c.dtype == np.float32 and np.isfinite(c).all() for c in chunks)
    # the token buffer holds about one window plus the decode context, not the whole stream
    assert s.tokens.frames.shape[1] <= s.tokens.window + s.decoder.ctx + s.chunk_frames + 64
    assert all(layer.k.shape[2] == s.tokens.positions for layer in s.tokens.cache.layers)


def test_chunks_decode_like_the_whole_track_and_boundaries_have_no_steps(loaded):
    s = MusicStream(loaded, {"genre": "ambient"}, settings(level=False, crossfade_s=0.0, decode_context_s=0.6))
    s.tokens.forget_before = lambda frame: None  # keep every frame for the reference decode
    wav = np.concatenate(take(s, 12), axis=1)[0]
    frames, hop = s.decoder.next, loaded.codec.hop_length
    whole = loaded.codec.decode(s.tokens.frames_between(0, frames + s.decoder.ctx)[None]).numpy()[0, 0]
    a = 2 * s.chunk_frames * hop  # past the stream's start, where both decodes see less context
    ref, got = whole[a : frames * hop], wav[a : frames * hop]
    # the tiny codec (convolutions, no LSTM) reaches less far than 0.6 s: the same samples up to rounding
    assert np.max(np.abs(got - ref)) < 1e-3 * np.max(np.abs(ref))
    steps = np.abs(np.diff(wav))
    seams = [steps[i * s.chunk_samples - 1] for i in range(1, 12)]
    assert max(seams) <= np.percentile(steps, 99)


def test_same_seed_same_audio_other_seed_differs(loaded):
    a = np.concatenate(take(MusicStream(loaded, {"genre": "rock"}, settings()), 6), axis=1)
    b = np.concatenate(take(MusicStream(loaded, {"genre": "rock"}, settings()), 6), axis=1)
    c = np.concatenate(take(MusicStream(loaded, {"genre": "rock"}, settings(seed=4)), 6), axis=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_change_alters_only_what_follows_it(loaded):
    def run(change):
        s = MusicStream(loaded, {"genre": "rock", "bpm": 90}, settings(level=False))
        s.tokens.forget_before = lambda frame: None  # keep every frame to compare
        take(s, 3)
        at = s.tokens.produced
        if change:
            s.control({"genre": "ambient", "intensity": 1.0})
        take(s, 3)
        return s, at

    s0, at = run(False)
    s1, at1 = run(True)
    assert at == at1 and s1.stats.changes[0][1] == at
    t0, t1 = s0.tokens, s1.tokens
    # the frames before the change are identical, and the frames after it differ
    assert torch.equal(t0.frames_between(0, at - t0.K), t1.frames_between(0, at - t0.K))
    assert not torch.equal(t0.frames_between(at, t0.complete), t1.frames_between(at, t1.complete))


def test_glide_moves_the_mixture_weights_linearly_frame_by_frame(loaded):
    s = MusicStream(loaded, {"genre": "rock"}, settings())
    s.next_chunk()
    s.control({"genre": "ambient", "glide_s": 1.0})
    s.next_chunk()
    start = s.stats.changes[0][1]
    n = round(1.0 * s.fr)
    mix = s.mix
    old, new = sorted(mix.start), sorted(mix.target)
    assert len(old) == len(new) == 1 and old != new
    half = mix.weights(start + n // 2)
    assert half[new[0]] == pytest.approx(0.5, abs=0.02) and half[old[0]] == pytest.approx(0.5, abs=0.02)
    assert mix.weights(start + n) == {new[0]: 1.0}
    # mid-glide the cross mask carries log weights: both sets' slots, neither masked out
    mask = mix.install(start + n // 2, s.tokens.cache)
    assert mask.shape[-1] == s.tokens.cache.layers[0].cross_k.shape[2]
    assert torch.isfinite(mask[0]).any() and (mask[0] < 0).any()


def test_cut_waits_for_the_next_bar_line(loaded):
    s = MusicStream(loaded, {"genre": "rock", "bpm": 150}, settings())
    s.next_chunk()
    asked = s.tokens.produced
    s.control({"genre": "ambient", "cut": "bar"})
    while not s.stats.changes:
        s.next_chunk()
    bar = s.bar_frames()  # 150 bpm at 75 Hz: 120 frames
    at = s.stats.changes[0][1]
    assert at >= asked and at % round(bar) == 0 and at - asked <= bar


def test_intensity_is_a_mixture_of_a_calm_and_an_energetic_request():
    parts = StreamState(text="drums", bpm=100.0, intensity=0.25).parts(fold=())
    (w_calm, calm), (w_hot, hot) = parts
    assert (w_calm, w_hot) == (0.75, 0.25)
    assert calm.bpm < 100 < hot.bpm and "calm" in calm.text and "energetic" in hot.text
    # a model without mood slots hears the mood in its text
    c = StreamState(text="drums", mood="tense").conditions(fold=("mood",))
    assert c.mood is None and "tense" in c.text


def test_intensity_moves_between_the_models_own_calm_and_energetic_moods():
    assert intensity_moods(["slow", "fast"]) == ("slow", "fast")  # the default model's
    assert intensity_moods(["happy", "calm", "tense"]) == ("calm", "tense")
    assert intensity_moods(["happy", "sad"]) is None and intensity_moods([]) is None
    ends = ("slow", "fast")
    for mood in (None, "slow", "fast"):  # no mood, or one of the two ends: intensity decides between them
        (w_lo, lo), (w_hi, hi) = StreamState(text="drums", mood=mood, bpm=140.0, intensity=0.9).parts((), ends)
        assert (w_lo, w_hi) == (pytest.approx(0.1), 0.9)
        assert (lo.mood, hi.mood) == ends
        assert lo.bpm == hi.bpm == 140.0 and lo.text == hi.text == "drums"  # labels only: no words, no tempo factor
    # a mood outside the pair is kept, with the word ends
    (_, lo), (_, hi) = StreamState(text="drums", mood="happy", bpm=100.0, intensity=0.5).parts((), ends)
    assert lo.mood == hi.mood == "happy" and "calm" in lo.text and hi.bpm > 100
    # no intensity: the request as it is
    [(w, c)] = StreamState(text="drums", mood="fast").parts((), ends)
    assert w == 1.0 and c.mood == "fast"


@pytest.mark.parametrize("msg, words", [
    ({"bpm": 1000}, "bpm"), ({"intensity": 2}, "intensity"), ({"colour": "red"}, "unknown control field"),
    ({"glide_s": -1}, "glide_s"), ({"mood": 3}, "mood"), ({"glide_s": 2, "cut": True}, "not both"), ([1], "object"),
])
def test_bad_messages_raise_one_readable_error(msg, words):
    with pytest.raises(AudiogenError, match=words):
        parse_message(msg, StreamState())


def test_a_bad_value_for_the_model_is_refused_and_the_stream_carries_on(loaded):
    s = MusicStream(loaded, {"genre": "rock"}, settings())
    with pytest.raises(AudiogenError, match="unknown genre"):
        s.control({"genre": "polka"})
    assert s.next_chunk().shape == (1, s.chunk_samples) and not s.stats.changes


def test_level_follower_holds_the_target_and_the_true_peak_through_a_jump():
    """A level jump of 20 dB: short-term loudness returns within 2 LU of the target in a few seconds."""
    from audiogen.audio.loudness import integrated_loudness, true_peak_dbtp

    sr = 24000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, sr * 16)).astype(np.float32) * 0.01
    x[:, sr * 8 :] *= 10  # +20 dB at 8 s
    lev = LevelFollower(sr, 1, -16.0, -1.0)
    y = np.concatenate([lev.process(x[:, i : i + sr // 4]) for i in range(0, x.shape[1], sr // 4)], axis=1)
    assert y.shape == x.shape
    assert true_peak_dbtp(y, sr) <= -1.0 + 0.05
    for start in (4, 13):  # settled before and after the jump
        assert integrated_loudness(y[:, start * sr : (start + 3) * sr], sr) == pytest.approx(-16.0, abs=2.0)


def _tone(sr: int, seconds: float, level_db) -> np.ndarray:
    """A 440 Hz sine ``[1, n]`` whose level (dB, a function of time in s) moves as given."""
    t = np.arange(int(seconds * sr)) / sr
    return (np.sin(2 * np.pi * 440 * t) * 10 ** (level_db(t) / 20))[None].astype(np.float32)


@pytest.mark.parametrize("chunk_s", [0.25, 1.0])
@pytest.mark.parametrize("swing", ["up 12 dB", "down 12 dB", "fade 24 dB"])
def test_level_follower_holds_every_3s_window_through_level_swings(swing, chunk_s):
    """Chunk by chunk, a tone whose level jumps or fades: every 3 s window (the benchmark's measure, every
    0.1 s) stays within 2 LU of the target, the true peak under the limit, and no chunk boundary steps."""
    from audiogen.audio.loudness import integrated_loudness, true_peak_dbtp

    sr, target = 24000, -16.0
    level = {"up 12 dB": lambda t: np.where(t < 6.13, -32.0, -20.0),
             "down 12 dB": lambda t: np.where(t < 6.13, -8.0, -20.0),
             "fade 24 dB": lambda t: -10.0 - 3.0 * np.clip(t - 4.0, 0.0, 8.0)}[swing]
    x = _tone(sr, 14.0, level)
    lev = LevelFollower(sr, 1, target, -1.0)
    n = int(chunk_s * sr)
    y = np.concatenate([lev.process(x[:, i : i + n]) for i in range(0, x.shape[1], n)], axis=1)
    assert y.shape == x.shape
    deviation = [integrated_loudness(y[:, e - 3 * sr : e], sr) - target
                 for e in range(3 * sr, y.shape[1] + 1, sr // 10)]
    assert max(map(abs, deviation)) <= 2.0
    assert true_peak_dbtp(y, sr) <= -1.0 + 0.05
    steps = np.abs(np.diff(y[0]))
    boundary = steps[np.arange(n, y.shape[1], n) - 1]  # from each chunk's last sample to the next one's first
    # a gain that jumped at a boundary would put most boundary steps above the tone's own largest steps
    assert (boundary > np.percentile(steps, 99)).sum() <= 1 + 0.01 * len(boundary)


def test_level_follower_does_not_pump_up_near_silence():
    """Music, then 6 s at -80 dB: the gain holds (below the gate), it does not climb toward its 30 dB cap."""
    from audiogen.audio.loudness import integrated_loudness

    sr = 24000
    x = _tone(sr, 12.0, lambda t: np.where(t < 6.0, -20.0, -80.0))
    lev = LevelFollower(sr, 1, -16.0, -1.0)
    y = np.concatenate([lev.process(x[:, i : i + sr // 2]) for i in range(0, x.shape[1], sr // 2)], axis=1)
    d = lev.delay
    gain_db = lambda a, b: 10 * np.log10((y[0, a + d : b + d] ** 2).sum() / (x[0, a:b] ** 2).sum())
    before, quiet = gain_db(4 * sr, 5 * sr), gain_db(8 * sr, 11 * sr)
    assert before == pytest.approx(-16.0 - integrated_loudness(x[:, : 6 * sr], sr), abs=0.5)
    assert quiet <= before + 1.0


def test_stream_pipe_writes_wav_and_survives_bad_control_lines(tiny_model_dir, tmp_path):
    controls = "\n".join([
        json.dumps({"genre": "ambient", "glide_s": 0.5}),
        "{not json",
        json.dumps({"bpm": 9999}),
        json.dumps({"intensity": 0.9}),
    ]) + "\n"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "audiogen", "stream", "--model", str(tiny_model_dir), "--genre", "rock",
                        "--duration", "2", "--chunk", "0.25", "--window", "1", "--format", "wav"],
                       input=controls.encode(), capture_output=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    err = r.stderr.decode().strip().splitlines()
    assert any("line 2" in line and "JSON" in line for line in err), err
    assert any("line 3" in line and "bpm" in line for line in err), err
    wav, sr = sf.read(io.BytesIO(r.stdout), dtype="float32")
    assert sr == 24000 and len(wav) == 2 * sr and np.abs(wav).max() > 0


def test_stream_refuses_bad_options_with_one_line(tiny_model_dir):
    r = subprocess.run([sys.executable, "-m", "audiogen", "stream", "--model", str(tiny_model_dir), "--genre", "polka",
                        "--duration", "1"], capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode().strip().count("\n") == 0 and "unknown genre" in r.stderr.decode()


@pytest.mark.browser
@pytest.mark.slow
def test_browser_page_plays_the_stream_and_a_slider_change_reaches_the_output(tiny_model_dir):
    """Debian's chromium: Play, wait for audio, move the intensity slider, hear the change, audio keeps flowing."""
    from pathlib import Path

    import httpx

    from listening_helpers import free_port

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail(f"{chromium} missing: run 'bash install.sh' (it installs Debian's chromium)")
    pytest.importorskip("websockets", reason="audiogen serve needs the listen extras (websockets)")
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "audiogen", "serve", "--model", str(tiny_model_dir), "--port",
                             str(port), "--chunk", "0.25", "--window", "1"],
                            env={**os.environ, "PYTHONPATH": os.getcwd()}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        import time

        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.time() < deadline, "server did not answer"
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--autoplay-policy=no-user-gesture-required"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.click("#play")
            page.wait_for_function("Number(document.body.dataset.played || 0) >= 0.5", timeout=240_000)
            # the page's start (intensity 0.5) reaches the stream: the first chunk may have been generated before
            # the page's first control arrived (under a loaded suite it was), so wait for a chunk made after it
            page.wait_for_function("JSON.parse(document.body.dataset.state || '{}').intensity === 0.5", timeout=60_000)
            assert json.loads(page.evaluate("document.body.dataset.state"))["intensity"] == 0.5
            # the mood list offers the model's own moods (one with labels refuses any other word)
            from audiogen.models.checkpoint import read_config

            moods = read_config(tiny_model_dir)["conditioner"]["moods"]
            assert moods and page.eval_on_selector_all("#moods option", "os => os.map(o => o.textContent)") == moods
            page.eval_on_selector("#intensity", "el => { el.value = 0.95; el.dispatchEvent(new Event('change')); }")
            page.wait_for_function("JSON.parse(document.body.dataset.state || '{}').intensity === 0.95",
                                   timeout=240_000)
            heard = float(page.evaluate("document.body.dataset.played"))
            page.wait_for_function(f"Number(document.body.dataset.played) >= {heard + 0.5}", timeout=240_000)
            assert float(page.evaluate("document.body.dataset.rms")) > 0  # sound, not silence
            underruns = int(page.evaluate("document.body.dataset.underruns || 0"))
            assert not page.evaluate("document.body.dataset.error || ''")
            browser.close()
        # underruns depend on the machine's speed: reported, not asserted (benchmarks/stream.py measures them)
        print(f"underruns: {underruns}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_stream_does_not_hold_silence_past_the_limit(loaded, monkeypatch):
    """A model that prefers a silent codebook-0 code: the stream holds it for the whole run without a limit,
    and for at most ``max_silence_s`` at a time with one, across window slides."""
    decode_step = loaded.lm.decode_step

    def prefers_silence(*args, **kwargs):
        logits = decode_step(*args, **kwargs).clone()
        logits[:, 0, 7] += 30.0
        return logits

    monkeypatch.setattr(loaded.lm, "decode_step", prefers_silence)
    monkeypatch.setattr(loaded.codec, "silent_codes", lambda: torch.arange(loaded.codec.cardinality) == 7,
                        raising=False)
    runs = {}
    for limit in (0.0, 0.2):
        s = MusicStream(loaded, {"genre": "ambient"}, settings(max_silence_s=limit, level=False))
        s.tokens.forget_before = lambda frame: None
        take(s, 12)  # 3 s through 1 s windows
        assert s.tokens.slides >= 2
        cb0 = s.tokens.frames_between(0, s.tokens.complete)[0]
        runs[limit], n = [], 0
        for c in cb0.tolist() + [-1]:
            n = n + 1 if c == 7 else (runs[limit].append(n) or 0) if n else 0
    assert max(runs[0.0]) >= 3 * loaded.codec.frame_rate - 10  # the premise: silence all the way
    assert max(runs[0.2]) == round(0.2 * loaded.codec.frame_rate)


def test_serve_streams_with_the_sampling_the_model_recommends(tiny_model_dir, tmp_path, monkeypatch):
    """`audiogen serve` samples as the model folder recommends (its generation.sampling), as `audiogen stream`
    does; until 2026-12-04 it used the library's defaults (guidance 3, top-k 250, no beat guidance)."""
    import shutil

    import yaml

    pytest.importorskip("websockets", reason="audiogen serve needs the listen extras (websockets)")
    from audiogen import cli
    from audiogen.generation import stream_server

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = yaml.safe_load((model / "config.yaml").read_text())
    config.setdefault("generation", {})["sampling"] = {"cfg_scale": 1.5, "top_k": 7, "offbeat_below_bpm": 120.0}
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    served = {}
    monkeypatch.setattr(stream_server, "serve", lambda loaded, settings, *rest: served.update(settings=settings))
    assert cli.main(["serve", "--model", str(model), "--port", "0"]) == 0
    # the late beat contrast is for clips at one tempo; a stream keeps the plain one (stream_sampling)
    assert served["settings"].sampling == SamplingParams(cfg_scale=1.5, top_k=7, allow_silence=False)


def test_a_stream_keeps_the_plain_beat_contrast_unless_asked():
    """generate takes a model's offbeat_below_bpm; a stream, whose tempo may cross it, does not unless the
    caller gives it (a 10-minute stream lost its tempo changes with it: docs/stream.md)."""
    from audiogen.generation.stream import stream_sampling

    config = {"generation": {"sampling": {"cfg_scale": 2.0, "beat_guidance": 3.0, "offbeat_below_bpm": 120.0}}}
    assert SamplingParams.for_model(config).offbeat_below_bpm == 120.0
    assert stream_sampling(config) == SamplingParams(cfg_scale=2.0, beat_guidance=3.0, allow_silence=False)
    assert stream_sampling(config, offbeat_below_bpm=90.0, top_k=None).offbeat_below_bpm == 90.0
    # label guidance, which a model may recommend for clips, is off in a stream unless given
    # (and given, it holds throughout: a stream has no start that sets its key for what follows)
    labelled = {"generation": {"sampling": {"label_guidance": 3.0, "label_guidance_hold_s": 2.0}}}
    assert SamplingParams.for_model(labelled).label_guidance == 3.0
    assert SamplingParams.for_model(labelled).fades_labels()
    assert stream_sampling(labelled).label_guidance == 1.0
    assert stream_sampling(labelled, label_guidance=2.0).label_guidance == 2.0
    assert not stream_sampling(labelled, label_guidance=2.0).fades_labels()
    # a stream always names its tempo, so "untimed" is off; "slow" stays, resolved step by step (MusicStream)
    for mode, used in (("untimed", "off"), ("slow", "slow"), ("on", "on"), ("off", "off")):
        assert stream_sampling({"generation": {"sampling": {"cap_quiet": mode}}}).cap_quiet == used


def test_a_stream_samples_no_silent_code_unless_asked(tiny_model_dir, monkeypatch):
    """A stream leaves out the codes that decode to silence (its gaps pulled the 3 s loudness under the
    target: docs/stream.md), even where the model allows them; ``allow_silence`` / ``--allow-silence`` opts
    back in; ``--no-silence`` is still accepted."""
    from audiogen import cli
    from audiogen.generation import stream as stream_mod
    from audiogen.generation.stream import stream_sampling

    config = {"generation": {"sampling": {"allow_silence": True}}}
    assert SamplingParams.for_model(config).allow_silence is True
    assert stream_sampling(config).allow_silence is False
    assert stream_sampling(config, allow_silence=True).allow_silence is True
    seen = []

    def spy(self, loaded, conditions, settings, *a, **kw):
        seen.append(settings.sampling.allow_silence)
        raise SystemExit(0)

    monkeypatch.setattr(stream_mod.MusicStream, "__init__", spy)
    for flags, want in (([], False), (["--allow-silence"], True), (["--no-silence"], False)):
        with pytest.raises(SystemExit):
            cli.main(["stream", "ambient", "--model", str(tiny_model_dir), "--duration", "1", *flags])
        assert seen[-1] is want, flags


def test_a_grid_model_stream_starts_at_the_tempo_its_mood_names():
    """A stream asked for no tempo starts where ``generate`` would play (``requested_tempo``): the shipped
    default model has a beat grid and mood tempos; an asked tempo wins, a request naming no mood or genre
    plays at the model's default."""
    from audiogen.generation.pipeline import DEFAULT_MODEL_DIR
    from audiogen.models.checkpoint import load_model

    model = load_model(DEFAULT_MODEL_DIR)
    gen = model.config["generation"]

    def start(conditions):
        return MusicStream(model, conditions, settings()).state.bpm

    assert start({"mood": "fast"}) == gen["default_bpm_by"]["mood"]["fast"] != gen["default_bpm"]
    assert start({"text": "a slow theme"}) == gen["default_bpm_by"]["mood"]["slow"]
    assert start({"text": "calm orchestral theme"}) == gen["default_bpm"]
    assert start({"mood": "fast", "bpm": 100}) == 100


def test_a_tuned_stream_decodes_the_same_tokens_in_tune_and_leaves_the_shared_codec_alone(tiny_model_dir):
    """``tuning_hz`` (``audiogen stream --tuning 440``): the default model's stream samples the same tokens and decodes
    them moved onto the A440 notes, through a copy of the codec; the loaded model (which a server's streams share)
    decodes as coded before and after. A codec without semitone bands refuses it in one error."""
    from audiogen.generation.pipeline import DEFAULT_MODEL_DIR
    from audiogen.models.checkpoint import load_model

    model = load_model(DEFAULT_MODEL_DIR)

    def run(**kw):
        stream = MusicStream(model, {"text": "calm orchestral theme"}, settings(**kw))
        audio = np.concatenate(take(stream, 4), axis=-1)
        return stream, audio, stream.tokens.frames.clone()

    plain, plain_audio, plain_codes = run()
    tuned, tuned_audio, tuned_codes = run(tuning_hz=440.0)
    again, again_audio, _ = run()
    assert torch.equal(plain_codes, tuned_codes)  # the same tokens
    assert not np.allclose(plain_audio, tuned_audio)  # decoded otherwise
    assert tuned.codec.model.config.retune_hz == 440.0 and tuned.codec is not model.codec
    assert model.codec.model.config.retune_hz == 0.0 and np.array_equal(plain_audio, again_audio)  # no leak
    with pytest.raises(AudiogenError, match="--tuning is the frequency"):
        MusicStream(model, None, settings(tuning_hz=1000.0))
    with pytest.raises(AudiogenError, match="no semitone bands"):
        MusicStream(load_model(tiny_model_dir), None, settings(tuning_hz=440.0))
