"""The beat grid: beat times from prep, beat phases in training crops, and the same phases in
generation, windowed continuation and streaming (``LMConfig.beat_harmonics``)."""

from __future__ import annotations

import math
import os
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audiogen.data.estimators import beat_phase, click_track, onset_envelope, track_beats
from audiogen.generation.sampling import SamplingParams, beat_steps, generate_codes, generate_window
from audiogen.models.conditioning import Conditions
from audiogen.models.lm import LM, LMConfig, beat_features
from audiogen.models.patterns import DelayPattern

GREEDY = SamplingParams(temperature=0.0, cfg_scale=1.0)


def grid_lm(harmonics: int = 3, seed: int = 0) -> LM:
    torch.manual_seed(seed)
    return LM(LMConfig(num_codebooks=3, cardinality=16, dim=32, num_layers=2, num_heads=4, ffn_dim=64, cond_dim=8,
                       beat_harmonics=harmonics)).eval()


def conditions(batch: int = 1):
    torch.manual_seed(1)
    return torch.randn(batch, 3, 8), torch.ones(batch, 3, dtype=torch.bool)


def test_features_are_zero_where_there_is_no_grid():
    phase = torch.tensor([[0.0, 0.25, math.nan]])
    f = beat_features(phase, 2)
    assert f.shape == (1, 3, 4)
    assert torch.allclose(f[0, 0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(f[0, 1], torch.tensor([0.0, -1.0, 1.0, 0.0]), atol=1e-6)
    assert torch.equal(f[0, 2], torch.zeros(4))


def test_decoding_reads_the_phases_training_reads():
    """Greedy decoding at 120 bpm is what the teacher-forced forward pass predicts with the phases the
    loader would give those frames, for every engine; without the grid the output differs."""
    lm, (cond, mask) = grid_lm(), conditions()
    step = beat_steps([Conditions(bpm=120.0)], False, 50.0)
    assert step.tolist() == [pytest.approx([120 / 60 / 50, 0.0])]
    eager = generate_window(lm, cond, mask, 40, GREEDY, None, engine="eager", beat_step=step)
    assert torch.equal(eager, generate_window(lm, cond, mask, 40, GREEDY, None, engine="static", beat_step=step))
    assert not torch.equal(eager, generate_window(lm, cond, mask, 40, GREEDY, None, engine="eager"))
    delay = DelayPattern(3, 16)
    pattern = delay.build(eager)
    beats = np.arange(0, 2, 0.5)  # 120 bpm from frame 0
    phase = torch.from_numpy(beat_phase(beats, pattern.shape[-1], 50.0))[None]
    predicted = lm(delay.inputs(pattern), cond, mask, phase).argmax(-1)
    assert bool(((predicted == pattern) | (pattern == 16)).all())


def test_continuation_windows_keep_the_grid_running():
    """Windows of 30 frames with 10 of context give the first window's frames, then go on: the grid does not
    restart at each window (a restart would put the downbeat every 20 frames)."""
    lm, (cond, mask) = grid_lm(), conditions()
    step = beat_steps([Conditions(bpm=97.0)], False, 50.0)
    long = generate_codes(lm, cond, mask, 70, GREEDY, None, 30, 10, beat_step=step)
    assert torch.equal(long[..., :30], generate_window(lm, cond, mask, 30, GREEDY, None, beat_step=step))
    # the same decode with the second window's grid shifted is different
    shifted = generate_codes(lm, cond, mask, 70, GREEDY, None, 30, 10, beat_step=step + torch.tensor([0.01, 0.0]))
    assert not torch.equal(long[..., 30:], shifted[..., 30:])


def test_guidance_rows_have_no_grid():
    step = beat_steps([Conditions(bpm=60.0), Conditions()], True, 25.0)
    assert step[0, 0].item() == pytest.approx(0.04)
    assert torch.isnan(step[1:, 0]).all()


def test_offbeat_contrast_rows_read_the_grid_half_a_beat_late_below_the_tempo():
    """With ``offbeat_below_bpm`` the beat-guidance group's rows of a slower request read the request's grid
    half a beat late; a faster request's, a request without a tempo's and the unconditional rows read none."""
    p = SamplingParams(beat_guidance=3.0, offbeat_below_bpm=100.0)
    conds = [Conditions(bpm=60.0), Conditions(bpm=150.0), Conditions()]
    step = beat_steps(conds, 2, 50.0, p)
    assert step.shape == (9, 2)
    assert step[3].tolist() == [pytest.approx(60 / 60 / 50), 0.5]
    assert torch.isnan(step[4:, 0]).all()
    assert torch.isnan(beat_steps(conds, 2, 50.0)[3:, 0]).all()  # no beat guidance group given
    assert p.offbeat(99.0) and not p.offbeat(100.0) and not p.offbeat(None)
    assert not SamplingParams(beat_guidance=1.0, offbeat_below_bpm=100.0).offbeat(60.0)  # guidance off
    assert not SamplingParams(beat_guidance=3.0).offbeat(60.0)  # 0 = never
    with pytest.raises(Exception, match="offbeat"):
        SamplingParams(offbeat_below_bpm=-1.0).validate()


def test_beats_of_a_click_track_and_their_phases():
    y = click_track(100, 12)  # clicks at 0.2 s + 0.6 s n
    beats = track_beats(onset_envelope(y), 100)
    clicks = 0.2 + 0.6 * np.arange(20)
    near = [np.abs(clicks - b).min() for b in beats if 0.5 < b < 11]
    assert len(near) >= 15 and max(near) < 0.05  # onset frames lag a click by ~1 hop
    ph = beat_phase(np.array([1.0, 1.5, 2.0]), 8, 4.0, offset_s=0.5)  # frames at 0.5, 0.75, ..., 2.25 s
    assert np.allclose(ph, [0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5])  # extrapolated on both sides
    assert np.isnan(beat_phase(np.array([1.0]), 4, 4.0)).all()
    assert track_beats(onset_envelope(y), None).size == 0


@pytest.fixture(scope="module")
def clicks_data(tmp_path_factory):
    """Click tracks at 100 and 125 bpm, 25 s each, prepared with the tiny codec in 10 s segments."""
    import soundfile as sf

    from audiogen.data.prep import PrepConfig, prepare

    root = tmp_path_factory.mktemp("clicks")
    (root / "audio").mkdir()
    for bpm in (100, 125):
        sf.write(root / "audio" / f"clicks{bpm}.wav", click_track(bpm, 25, 22050), 22050)
    prepare(PrepConfig(audio_dir=str(root / "audio"), out=str(root / "data"), codec="tiny", segment_s=10.0,
                       workers=0, valid_fraction=0.5, progress=False))
    return root / "data"


def test_prep_stores_beats_relative_to_each_segment(clicks_data):
    """A 100 bpm click track cut into 10 s segments: every segment's beats land on its own clicks (the
    analysis frames start before a segment; that lead is taken off)."""
    import datasets

    dd = datasets.load_from_disk(str(clicks_data))
    rows = [r for split in ("train", "valid") for r in dd[split] if r["source"] == "clicks100.wav"]
    assert sorted(r["start_s"] for r in rows) == [0.0, 10.0, 20.0]
    for r in rows:
        clicks = 0.2 + 0.6 * np.arange(45) - r["start_s"]
        inside = [b for b in r["beats"] if 0.3 < b < r["duration_s"] - 0.3]
        assert len(inside) >= 0.6 * r["duration_s"] / 0.6
        assert max(np.abs(clicks - b).min() for b in inside) < 0.05, r["beats"]


def test_a_trained_grid_model_plays_at_the_tempo_asked_written_or_its_default(clicks_data, tmp_path, monkeypatch):
    """Training with ``lm.beat_harmonics`` exports the grid and the data's median tempo as the default, and
    each mood's and genre's median tempo (here one mood on every train row, kept from one row up);
    generate takes --bpm, else a tempo in the prompt, else the mood's, else that default."""
    import datasets
    import yaml

    import audiogen.train.lm as lm_train
    from audiogen.errors import AudiogenError
    from audiogen.generation.pipeline import GenerateJob, describe_model
    from audiogen.train.lm import TrainConfig, train
    from audiogen.train.loop import load_config

    dd = datasets.load_from_disk(str(clicks_data))
    labelled = tmp_path / "labelled"
    dd["train"] = dd["train"].map(lambda r: {"mood": "Fast"})
    dd.save_to_disk(str(labelled))
    monkeypatch.setattr(lm_train, "LABEL_TEMPO_MIN_ROWS", 1)
    tiny = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "tiny.yaml"
    out = tmp_path / "run"
    args = [f"data_dir={labelled}", f"out_dir={out}", "max_steps=4", "save_every=4", "eval_every=4",
            "progress=false", "batch_size=2", "segment_s=2.0", "lm.beat_harmonics=2"]
    assert train(load_config(TrainConfig, tiny, args)) == 0
    model = out / "model"
    config = yaml.safe_load((model / "config.yaml").read_text())
    assert config["lm"]["beat_harmonics"] == 2
    train_bpm = [b for b in dd["train"]["bpm"] if b]
    assert config["generation"]["default_bpm"] == pytest.approx(float(np.median(train_bpm)), abs=0.05)
    assert config["generation"]["default_bpm_by"] == {"mood": {"fast": config["generation"]["default_bpm"]}}
    info = describe_model(model)
    assert info["beat_grid"] == 2 and info["default_bpm"] == config["generation"]["default_bpm"]
    assert info["default_bpm_by"] == config["generation"]["default_bpm_by"]

    def job(prompt, **kw):
        return GenerateJob.from_options(prompt, 2.0, tmp_path / "x.wav", model_dir=model, **kw).conditions.bpm

    assert job("clicks", bpm=90.0) == 90.0
    assert job("upbeat clicks, 140 BPM") == 140.0
    assert job("clicks") == config["generation"]["default_bpm"]
    # the exported table is what generate reads: a copy of the model whose "fast" plays at 150
    config["generation"]["default_bpm_by"]["mood"]["fast"] = 150.0
    (model / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert job("fast clicks") == 150.0 and job("clicks", mood="fast") == 150.0
    assert job("clicks") == config["generation"]["default_bpm"]
    # a dataset without beat times (prepared before them) is one clear error for a grid model
    old = tmp_path / "old"
    dd = datasets.load_from_disk(str(clicks_data))
    datasets.DatasetDict({k: v.remove_columns("beats") for k, v in dd.items()}).save_to_disk(str(old))
    with pytest.raises(AudiogenError, match="no beat times"):
        train(load_config(TrainConfig, tiny, [f"data_dir={old}", f"out_dir={tmp_path / 'run2'}", "max_steps=2",
                                              "progress=false", "lm.beat_harmonics=2"]))


def test_crops_carry_phases_and_drop_them_with_the_tempo():
    import datasets

    from audiogen.data.loader import CropDataset
    from audiogen.models.conditioning import ConditionerConfig

    codes = np.zeros((3, 100), dtype=np.int16)
    rows = {"codes": [codes.tolist()] * 2, "caption": ["a", "b"], "genre": [None, None], "mood": [None, None],
            "bpm": [120.0, 120.0], "key": [None, None], "instruments": [[], []],
            "beats": [[0.2 + 0.4 * i for i in range(4)], []]}
    ds = datasets.Dataset.from_dict(rows)
    crops = CropDataset(ds, 40, 16, seed=0, random_crops=False, frame_rate=25.0)
    beat = crops[0]["beat"]
    assert beat.shape == (40 + 3 - 1,)
    # beats at 0.2 s + 0.4 s n: frames 5, 15, 25, 35, extended by the period on both sides
    got = beat[[0, 5, 15, 25, 35, 40]]
    circular = torch.minimum(got, 1 - got)
    assert torch.allclose(circular, torch.tensor([0.5, 0.0, 0.0, 0.0, 0.0, 0.5]), atol=1e-4), got
    assert torch.isnan(crops[1]["beat"]).all()  # a row without beats
    # a crop that starts 10 frames in reads the phases from there
    import audiogen.data.loader as loader

    orig = loader.crop_start
    loader.crop_start = lambda seed, index, length, frames: 10
    try:
        shifted = CropDataset(ds, 40, 16, seed=0, frame_rate=25.0)
        row0 = next(i for i in range(8) if shifted.row_of(i) == 0)
        assert torch.allclose(shifted[row0]["beat"][:30], beat[10:40], atol=1e-5)
    finally:
        loader.crop_start = orig
    # the tempo dropped (condition dropout) takes the grid with it
    drop_all = ConditionerConfig(p_drop_attr=0.0, p_drop_text=0.0, p_drop_all=1.0)
    dropped = CropDataset(ds, 40, 16, seed=0, drop=drop_all, random_crops=False, frame_rate=25.0)
    assert dropped[0]["cond"].bpm is None and torch.isnan(dropped[0]["beat"]).all()
    with pytest.raises(Exception, match="no beat times"):
        CropDataset(ds.remove_columns("beats"), 40, 16, seed=0, frame_rate=25.0)


@pytest.fixture(scope="module")
def grid_model(tmp_path_factory, tiny_codec):
    """A random tiny LM with a beat grid + the tiny codec, loaded from a saved model directory."""
    from audiogen.models.checkpoint import load_model
    from audiogen.models.conditioning import ConditionerConfig
    from conftest import save_tiny_model

    ccfg = ConditionerConfig(text_encoder="none", genres=["ambient"], bpm_buckets=[60.0, 90.0, 120.0, 150.0], dim=32,
                             instruments=["piano", "drums"])
    drawn = {}
    d = save_tiny_model(tmp_path_factory.mktemp("model") / "grid", tiny_codec, ccfg, beat_harmonics=3,
                        lm_init=lambda lm: drawn.update(beat=lm.beat_proj.weight.clone()))
    loaded = load_model(d)
    assert loaded.lm.cfg.beat_harmonics == 3 and torch.equal(loaded.lm.beat_proj.weight, drawn["beat"])
    return loaded


@pytest.mark.parametrize("beat_guidance, offbeat_below, label_guidance",
                         [(1.0, 0.0, 1.0), (3.0, 0.0, 1.0), (3.0, 120.0, 1.0), (3.0, 120.0, 2.5), (1.0, 0.0, 2.5)])
def test_stream_reads_the_grid_generate_reads(grid_model, beat_guidance, offbeat_below, label_guidance):
    """Greedy streaming inside one window is generate_window's decode with the same grid (and the same
    beat guidance, whose contrast row reads no grid or, below ``offbeat_below_bpm``, the grid half a beat
    late; and the same label guidance, whose contrast row reads the request's grid), and the grid's count
    follows a tempo glide frame by frame (a new tempo does not restart it)."""
    from audiogen.generation.pipeline import guided_batch
    from audiogen.generation.stream import MusicStream, StreamSettings, state_from

    params = SamplingParams(temperature=0.0, cfg_scale=1.0, beat_guidance=beat_guidance,
                            offbeat_below_bpm=offbeat_below, label_guidance=label_guidance)
    s = MusicStream(grid_model, {"genre": "ambient", "bpm": 90}, StreamSettings(
        chunk_s=0.25, window_s=2.0, decode_context_s=0.2, level=False, sampling=params))
    t, fr = s.tokens, grid_model.codec.frame_rate
    while t.complete < 60:
        t.step(s.mix.install(t.produced, t.cache), s.mix.beat_step(t.produced, fr), params.offbeat(90))
    assert t.slides == 0
    assert bool(torch.isnan(t.phases[1]).all()) != params.offbeat(90)
    cond = state_from({"genre": "ambient", "bpm": 90}).conditions()
    c, m, step = guided_batch(grid_model, [cond], params, "cpu")
    assert c.shape[0] == 1 + (beat_guidance != 1) + (label_guidance != 1)
    ref = generate_window(grid_model.lm, c, m, 60, params, None, engine="eager", beat_step=step)[0]
    n = 60 - t.K + 1
    assert torch.equal(t.frames_between(0, n), ref[:, :n])
    # a glide from 90 to 150 bpm over 20 frames: the count grows by each frame's mixed tempo
    s.control({"bpm": 150, "glide_s": 20 / fr})
    before, start = t.beat_count, t.produced
    s._apply_changes(start)
    expected = before
    for f in range(start, start + 40):
        step = s.mix.beat_step(f, fr)
        expected += step
        t.step(s.mix.install(f, t.cache), step)
    assert s.mix.beat_step(start, fr) == pytest.approx(90 / 60 / fr)
    assert s.mix.beat_step(start + 30, fr) == pytest.approx(150 / 60 / fr)
    assert t.beat_count == pytest.approx(expected)
    assert 40 * 90 / 60 / fr < t.beat_count - before < 40 * 150 / 60 / fr


def test_a_stream_does_not_push_a_tonal_request_when_the_model_says_so(grid_model):
    """A stream of a piano request with ``beat_push_tonal`` False decodes as with beat guidance off; the same
    request with drums is pushed."""
    from audiogen.generation.stream import MusicStream, StreamSettings

    def frames(request, **sampling):
        params = SamplingParams(temperature=0.0, cfg_scale=1.0, **sampling)
        s = MusicStream(grid_model, request, StreamSettings(chunk_s=0.25, window_s=1.0, decode_context_s=0.2,
                                                            level=False, sampling=params))
        audio = np.concatenate([s.next_chunk() for _ in range(6)], axis=-1)
        assert s.tokens.slides >= 1  # past a slide, whose prefill reads the held phases again
        return torch.from_numpy(audio)

    piano, band = {"instruments": ["piano"], "bpm": 90}, {"instruments": ["piano", "drums"], "bpm": 90}
    off = frames(piano)
    assert torch.equal(frames(piano, beat_guidance=3.0, beat_push_tonal=False), off)
    assert not torch.equal(frames(piano, beat_guidance=3.0), off)  # pushed when the model does not say so
    assert not torch.equal(frames(band, beat_guidance=3.0, beat_push_tonal=False), frames(band))


def test_stream_slides_with_a_grid_and_without_a_tempo(grid_model):
    """A stream slides its window with the grid's phases (the request's and beat guidance's late contrast row's)
    held for the prefill, and plays on without a grid once the tempo is dropped."""
    from audiogen.generation.stream import MusicStream, StreamSettings

    s = MusicStream(grid_model, {"genre": "ambient", "bpm": 120}, StreamSettings(
        chunk_s=0.25, window_s=1.0, decode_context_s=0.2, level=False,
        sampling=SamplingParams(top_k=20, cfg_scale=3, beat_guidance=2, offbeat_below_bpm=130)))
    chunks = [s.next_chunk() for _ in range(8)]
    assert s.tokens.slides >= 1 and all(np.isfinite(c).all() for c in chunks)
    assert s.tokens.beat_count == pytest.approx(s.tokens.produced * 120 / 60 / grid_model.codec.frame_rate)
    t = s.tokens
    held = t.phases[:, : t.produced - t.base]
    assert not torch.isnan(held).any()  # the request's grid, and the contrast's half a beat late (120 < 130)
    assert torch.allclose(torch.remainder(held[0] + 0.5, 1.0), held[1])
    s.control({"bpm": None})
    count = t.beat_count
    chunks = [s.next_chunk() for _ in range(4)]
    assert t.beat_count == count  # no tempo, no grid
    assert torch.isnan(t.phases[0, t.produced - 1 - t.base])


def test_guide_pushes_from_the_gridless_rows_then_from_the_unconditional_rows():
    from audiogen.generation.sampling import guide

    c, n, u = torch.tensor([[3.0]]), torch.tensor([[1.0]]), torch.tensor([[0.0]])
    p = SamplingParams(cfg_scale=2.0, beat_guidance=4.0)
    assert guide(torch.cat([c, n, u]), p, True, False, True).item() == pytest.approx(2 * (1 + 4 * (3 - 1)))
    assert guide(torch.cat([c, n]), p, True, False, False).item() == pytest.approx(1 + 4 * (3 - 1))
    assert guide(torch.cat([c, u]), p, False, False, True).item() == pytest.approx(2 * 3)
    assert p.guidance_rows(grid=False) == (False, False, True)  # no grid: nothing to guide towards
    with pytest.raises(Exception, match="beat guidance"):
        SamplingParams(beat_guidance=-1.0).validate()


def test_beat_guidance_decodes_the_guided_logits_and_is_ignored_without_a_grid():
    """Greedy decoding with beat guidance picks, at every position, the argmax of
    ``nogrid + g * (grid - nogrid)`` of the teacher-forced logits; a model without a grid decodes as if
    it were off."""
    lm, (cond, mask) = grid_lm(), conditions()
    params = SamplingParams(temperature=0.0, cfg_scale=1.0, beat_guidance=3.0)
    step = beat_steps([Conditions(bpm=110.0)], 1, 50.0)
    codes = generate_window(lm, torch.cat([cond, cond]), torch.cat([mask, mask]), 40, params, None, beat_step=step)
    assert not torch.equal(codes, generate_window(lm, cond, mask, 40, GREEDY, None, beat_step=step[:1]))
    delay = DelayPattern(3, 16)
    pattern = delay.build(codes)
    S = pattern.shape[-1]
    phase = torch.remainder(torch.arange(S, dtype=torch.float64) * step[0, 0], 1.0).float()[None]
    inputs = delay.inputs(pattern)
    grid = lm(inputs, cond, mask, phase)
    nogrid = lm(inputs, cond, mask, torch.full_like(phase, math.nan))
    predicted = (nogrid + 3.0 * (grid - nogrid)).argmax(-1)
    assert bool(((predicted == pattern) | (pattern == 16)).all())
    plain = grid_lm(harmonics=0)
    assert torch.equal(generate_window(plain, cond, mask, 30, params, None, beat_step=step[:1]),
                       generate_window(plain, cond, mask, 30, GREEDY, None))


def test_offbeat_beat_guidance_pushes_away_from_the_late_grid():
    """Below ``offbeat_below_bpm`` greedy decoding picks the argmax of ``late + g * (grid - late)``, ``late``
    being the teacher-forced logits with the grid half a beat late (only the beat's own harmonic changes
    sign there), not those without a grid."""
    lm, (cond, mask) = grid_lm(), conditions()
    params = SamplingParams(temperature=0.0, cfg_scale=1.0, beat_guidance=3.0, offbeat_below_bpm=120.0)
    step = beat_steps([Conditions(bpm=70.0)], 1, 50.0, params)
    codes = generate_window(lm, torch.cat([cond, cond]), torch.cat([mask, mask]), 40, params, None, beat_step=step)
    gridless = beat_steps([Conditions(bpm=70.0)], 1, 50.0)
    assert not torch.equal(codes, generate_window(lm, torch.cat([cond, cond]), torch.cat([mask, mask]), 40,
                                                  params, None, beat_step=gridless))
    delay = DelayPattern(3, 16)
    pattern = delay.build(codes)
    count = torch.arange(pattern.shape[-1], dtype=torch.float64) * step[0, 0]
    phase = torch.remainder(count, 1.0).float()[None]
    late = torch.remainder(count + 0.5, 1.0).float()[None]
    f, g = beat_features(phase, 3), beat_features(late, 3)
    beat, divisions = [0, 3], [1, 2, 4, 5]  # cos then sin of harmonics 1, 2, 4
    assert torch.allclose(f[..., beat], -g[..., beat], atol=1e-5)
    assert torch.allclose(f[..., divisions], g[..., divisions], atol=1e-5)
    inputs = delay.inputs(pattern)
    grid, shifted = lm(inputs, cond, mask, phase), lm(inputs, cond, mask, late)
    predicted = (shifted + 3.0 * (grid - shifted)).argmax(-1)
    assert bool(((predicted == pattern) | (pattern == 16)).all())


def test_a_tonal_request_is_not_pushed_when_the_model_says_so():
    """``beat_push_tonal`` False: a request naming only non-percussion instruments decodes exactly as with beat
    guidance off (its contrast rows read its own grid), while one with drums, or none named, is still pushed."""
    lm, (cond, mask) = grid_lm(), conditions()
    params = SamplingParams(temperature=0.0, cfg_scale=1.0, beat_guidance=3.0, offbeat_below_bpm=120.0,
                            beat_push_tonal=False)
    piano, band = Conditions(bpm=70.0, instruments=["piano"]), Conditions(bpm=70.0, instruments=["piano", "drums"])
    step = beat_steps([piano, band], 1, 50.0, params)
    assert step[2].tolist() == step[0].tolist()  # the piano's contrast row: its own grid, on the beat
    assert step[3].tolist() == [pytest.approx(70 / 60 / 50), 0.5]  # the band's: half a beat late
    both, masks = torch.cat([cond, cond]), torch.cat([mask, mask, mask, mask])

    def decode(s, p):
        return generate_window(lm, torch.cat([both, both]), masks, 40, p, None, beat_step=s)

    pushing = replace(params, beat_push_tonal=True)
    pushed_all = decode(beat_steps([piano, band], 1, 50.0, pushing), pushing)
    codes = decode(step, params)
    unpushed = generate_window(lm, cond, mask, 40, GREEDY, None, beat_step=step[:1])
    assert torch.equal(codes[0], unpushed[0])  # the piano: as if beat guidance were off
    assert torch.equal(codes[1], pushed_all[1])  # the band: pushed as before
    assert not torch.equal(pushed_all[0], unpushed[0])  # (the push does change a pushed piano)
    assert params.pushes(None) and params.pushes(["drum kit"]) and not params.pushes(["strings", "flute"])
    assert not SamplingParams(beat_guidance=1.0).pushes(None)
    # a beat guidance the user gives pushes every request, unless told otherwise
    config = {"generation": {"sampling": {"beat_guidance": 3.0, "beat_push_tonal": False}}}
    assert not SamplingParams.for_model(config).beat_push_tonal
    assert SamplingParams.for_model(config, beat_guidance=2.0).beat_push_tonal
    assert not SamplingParams.for_model(config, beat_guidance=2.0, beat_push_tonal=False).beat_push_tonal


def test_tonal_only_names_instruments_without_percussion():
    from audiogen.data.labels import tonal_only

    assert tonal_only(["piano"]) and tonal_only(["Nylon  Guitar", "flute"])
    for names in ([], None, ["drums"], ["piano", "drum kit"], ["percussion"], ["Drum machine"], ["timpani", "strings"]):
        assert not tonal_only(names), names


def test_a_tempo_is_read_from_the_prompt_or_defaulted_only_for_a_grid_model():
    from audiogen.generation.pipeline import requested_tempo

    grid = {"conditioner": {"bpm_buckets": [60.0, 120.0]}, "lm": {"beat_harmonics": 3},
            "generation": {"default_bpm": 100.0}}
    plain = {"conditioner": {"bpm_buckets": [60.0, 120.0]}, "lm": {}, "generation": {}}
    assert requested_tempo(Conditions(text="upbeat electronic, 120 BPM"), grid).bpm == 120.0
    assert requested_tempo(Conditions(text="calm", bpm=70.0), grid).bpm == 70.0
    assert requested_tempo(Conditions(text="calm"), grid).bpm == 100.0
    assert requested_tempo(Conditions(text="a 999 bpm blur"), grid).bpm == 100.0  # out of range: not a tempo
    # a model without a grid: its requests are left as they are
    assert requested_tempo(Conditions(text="upbeat electronic, 120 bpm"), plain).bpm is None


def test_a_request_naming_a_mood_or_genre_plays_at_its_tempo():
    """``generation.default_bpm_by``: the mood's tempo first, then the genre's, each from the attribute or a
    whole word of the prompt; a tempo asked or written wins; a label the table lacks falls back."""
    from audiogen.generation.pipeline import requested_tempo

    grid = {"conditioner": {"bpm_buckets": [60.0, 120.0]}, "lm": {"beat_harmonics": 3},
            "generation": {"default_bpm": 94.0, "default_bpm_by": {
                "mood": {"fast": 124.0, "slow": 92.0},
                "genre": {"techno": 106.0, "classical": 100.0, "classical string quartet": 109.0}}}}

    def bpm(**kw):
        return requested_tempo(Conditions(**kw), grid).bpm

    assert bpm(text="calm orchestral theme") == 94.0  # names none of them: the model's default
    assert bpm(text="slow melancholic piano") == 92.0 and bpm(text="a FAST reel") == 124.0
    assert bpm(text="music", mood="Fast") == 124.0 and bpm(text="music", genre="Techno") == 106.0
    assert bpm(text="slow techno") == 92.0 and bpm(text="techno", mood="fast") == 124.0  # mood before genre
    assert bpm(text="fast, then slow") == 124.0  # the earliest word
    assert bpm(text="a classical string quartet") == 109.0 and bpm(text="classical guitar") == 100.0
    assert bpm(text="slowly, fast-paced, technofunk") == 94.0  # whole words only
    assert bpm(text="music", mood="angry") == 94.0 and bpm(text="music", genre="jazz") == 94.0
    assert bpm(text="slow techno", bpm=70.0) == 70.0 and bpm(text="slow techno, 140 bpm") == 140.0
    assert requested_tempo(Conditions(text="slow"), {**grid, "lm": {}}).bpm is None  # no grid: as asked


def test_label_tempos_are_medians_of_the_rows_with_each_label():
    import datasets

    from audiogen.train.lm import label_tempos

    ds = datasets.Dataset.from_dict({
        "bpm": [100.0, 120.0, 140.0, 90.0, None, 80.0, 0.0],
        "mood": ["fast", "Fast", "fast ", "slow", "slow", None, "slow"],
        "genre": ["Romantic  Classical", "techno", None, "romantic classical", "techno", "romantic classical", None]})
    # rows without a tempo (None, 0) count for nothing; labels as the vocabulary holds them
    assert label_tempos(ds, min_rows=1) == {"mood": {"fast": 120.0, "slow": 90.0},
                                            "genre": {"romantic classical": 90.0, "techno": 120.0}}
    assert label_tempos(ds, min_rows=2) == {"mood": {"fast": 120.0}, "genre": {"romantic classical": 90.0}}
    assert label_tempos(ds, min_rows=4) == {}
    assert label_tempos(ds.remove_columns(["genre"]), min_rows=3) == {"mood": {"fast": 120.0}}


@pytest.mark.parametrize("command", ["generate", "stream"])
def test_beat_guidance_asked_of_a_model_without_a_grid_is_refused_with_one_line(command, tmp_path):
    """On a model without a grid (the default model until 2026-12-04) --beat-guidance would do nothing,
    yet its sidecar once recorded it. The model here is the shipped one's folder with its grid taken
    out of the config: the refusal comes before any weight loads."""
    import yaml

    from audiogen.generation.pipeline import DEFAULT_MODEL_DIR
    from audiogen.models.checkpoint import read_config

    config = read_config(DEFAULT_MODEL_DIR)
    config["lm"].pop("beat_harmonics", None)
    config["generation"]["sampling"].pop("beat_guidance", None)
    model = tmp_path / "plain"
    model.mkdir()
    (model / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in ("model.safetensors", "codec"):
        (model / name).symlink_to(DEFAULT_MODEL_DIR / name)
    assert not (read_config(model).get("lm") or {}).get("beat_harmonics")  # the premise
    work = tmp_path / "work"
    work.mkdir()
    out = work / "x.wav"
    args = ["calm", "--duration", "2", "--out", str(out)] if command == "generate" else ["--duration", "1", "--out", str(out)]
    r = subprocess.run([sys.executable, "-m", "audiogen", command, *args, "--model", str(model), "--beat-guidance", "3"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "has no beat grid" in r.stderr, r.stderr
    assert not out.exists() and not list(work.iterdir())


@pytest.mark.parametrize("mode", ["slow", "on", "off"])
def test_a_stream_with_cap_quiet_slow_caps_the_steps_played_under_its_tempo(grid_model, monkeypatch, mode):
    """``cap_quiet`` "slow" in a stream: each step is capped while the grid plays under ``cap_below_bpm`` (90 bpm)
    and not once a change has glided to 150; "on" and "off" leave every step to the guard (which caps all or
    none)."""
    from audiogen.generation import stream as stream_mod
    from audiogen.generation.stream import MusicStream, StreamSettings

    caps = []  # the capped flag of each step, in frame order
    real_step = stream_mod.TokenStream.step

    def spy(self, cross_mask, beat_step=math.nan, offbeat=False, push=True, capped=True):
        caps.append(capped)
        return real_step(self, cross_mask, beat_step, offbeat, push, capped)

    monkeypatch.setattr(stream_mod.TokenStream, "step", spy)
    params = SamplingParams(top_k=20, cfg_scale=2.0, beat_guidance=3.0, cap_quiet=mode)
    s = MusicStream(grid_model, {"genre": "ambient", "bpm": 90}, StreamSettings(
        chunk_s=0.25, window_s=1.0, decode_context_s=0.2, level=False, sampling=params))
    s.next_chunk()
    s.control({"bpm": 150, "glide_s": 0.2})
    for _ in range(4):
        s.next_chunk()
    at = s.stats.changes[-1][1]
    done = at + round(0.2 * grid_model.codec.frame_rate) + 1
    assert len(caps) == s.tokens.produced > done + 10 and at > 0
    if mode == "slow":
        assert all(caps[:at]) and not any(caps[done:])
    else:
        assert all(caps)


@pytest.mark.parametrize("beat_guidance, boost, boosted", [(3.0, 1.0, True), (3.0, 0.0, False), (1.0, 1.0, False)])
def test_a_tempo_change_raises_beat_guidance_until_after_its_glide(grid_model, monkeypatch, beat_guidance, boost,
                                                                    boosted):
    """The stream's tempo boost: from a change of tempo to ``tempo_boost_s`` after its glide, each step samples
    with beat guidance + ``tempo_boost``, then the model's own again; a change that keeps the tempo, a zero
    boost, or beat guidance off (no guidance row to raise) changes nothing."""
    from audiogen.generation import stream as stream_mod
    from audiogen.generation.stream import MusicStream, StreamSettings

    used = []  # beat guidance of each step, in frame order (one guide call per step)
    real_guide = stream_mod.guide_capped
    monkeypatch.setattr(stream_mod, "guide_capped", lambda logits, params, *rest: (
        used.append(params.beat_guidance), real_guide(logits, params, *rest))[1])
    params = SamplingParams(top_k=20, cfg_scale=2.0, beat_guidance=beat_guidance)
    s = MusicStream(grid_model, {"genre": "ambient", "bpm": 90}, StreamSettings(
        chunk_s=0.25, window_s=1.0, decode_context_s=0.2, level=False, sampling=params, tempo_boost=boost,
        tempo_boost_s=0.5))
    fr = grid_model.codec.frame_rate
    s.next_chunk()
    s.control({"genre": "ambient", "glide_s": 0.1})  # the same tempo: no boost
    for _ in range(3):
        s.next_chunk()
    s.control({"bpm": 150, "glide_s": 0.2})
    for _ in range(6):
        s.next_chunk()
    assert len(used) == s.tokens.produced
    at = s.stats.changes[-1][1]
    until = at + round(0.2 * fr) + round(0.5 * fr)
    assert s.tokens.produced > until + 10
    if boosted:
        assert set(used[:at]) == {beat_guidance} and set(used[until:]) == {beat_guidance}
        assert set(used[at:until]) == {beat_guidance + boost}
    else:
        assert set(used) == {beat_guidance}
    assert s.tokens.params == params  # stepped back to the sampling asked for
