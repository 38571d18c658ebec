"""The conditioning adherence report (issue 22): its statistics on inputs whose answer is known, its
request plans, and one small run of the whole report on a tiny random model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audiogen.errors import AudiogenError
from audiogen.metrics import adherence as A
from audiogen.models.conditioning import ConditionerConfig
from audiogen.metrics.tagger import MTT_LABELS

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ statistics


def test_a_perfect_tempo_follower_scores_spearman_1_and_every_clip_within_8_percent():
    req = A.tempo_plan(20, seed=3)
    s = A.tempo_stats(req, req)
    assert s["spearman"]["rho"] == pytest.approx(1.0)
    assert s["spearman"]["low"] == pytest.approx(1.0)
    assert s["within"]["rate"] == 1.0 and s["within"]["n"] == 20
    assert s["octave_errors"]["k"] == 0
    assert 0.8 < s["within"]["low"] < 1.0 == s["within"]["high"]  # Wilson: below 1 at n = 20


def test_double_and_half_tempo_answers_are_octave_errors_not_hits():
    req = A.tempo_plan(10, seed=0)
    est = [2 * b if i % 2 else b / 2 for i, b in enumerate(req)]
    s = A.tempo_stats(req, est)
    assert s["within"]["k"] == 0
    assert s["octave_errors"]["k"] == 10
    # 9 % off is neither a hit nor (far from 2x) an octave error; a missing estimate is a miss
    s = A.tempo_stats([100.0, 100.0, 100.0], [109.0, None, 107.9])
    assert (s["within"]["k"], s["octave_errors"]["k"], s["estimated"]) == (1, 0, 2)


def test_unrelated_tempo_answers_have_a_low_spearman_whose_interval_covers_zero():
    rng = np.random.default_rng(0)
    req = A.tempo_plan(30, seed=1)
    s = A.tempo_stats(req, list(rng.uniform(60, 160, 30)))
    assert abs(s["spearman"]["rho"]) < 0.5
    assert s["spearman"]["low"] < 0 < s["spearman"]["high"]


def test_tempo_plan_spans_60_to_160_bpm_and_is_fixed_by_its_seed():
    a = A.tempo_plan(24, seed=5)
    assert a == A.tempo_plan(24, seed=5) != A.tempo_plan(24, seed=6)
    assert min(a) >= 60 and max(a) <= 160
    assert min(a) < 65 and max(a) > 150  # one request in each of 24 log-spaced cells


def test_key_stats_count_mode_and_exact_key_with_enharmonic_spellings():
    s = A.key_stats(["g# major", "A minor", "C major", "e minor"], ["Ab major", "C major", None, "E minor"])
    assert s["mode"]["k"] == 2 and s["key"]["k"] == 2 and s["estimated"] == 3
    assert s["mirex_weighted"] == pytest.approx((1 + 0.3 + 0 + 1) / 4)


def test_held_key_stats_count_a_held_chord_and_not_a_progression():
    """The mode figure cannot tell a drone on the tonic from music in a key; these figures can."""
    sr = 22050
    t = np.arange(sr) / sr

    def chord(*hz):
        return sum(np.sin(2 * np.pi * f * t) for f in hz)

    c, f, g = chord(262, 330, 392), chord(349, 440, 523), chord(392, 494, 587)
    held = np.tile(c, 8).astype(np.float32)  # C major for 8 s
    moving = np.concatenate([c, f, g, c, f, g, c, f]).astype(np.float32)  # a chord a second
    from audiogen.metrics.audio_checks import harmonic_movement, tonal_clarity

    clips = [held, moving]
    s = A.held_key_stats([harmonic_movement(x, sr) for x in clips] + [float("nan")],
                         [tonal_clarity(x, sr) for x in clips] + [None])
    assert s["held_one_chord"]["k"] == 1 and s["held_one_chord"]["n"] == 2  # the NaN clip is left out
    assert math.isfinite(s["tonal_clarity_median"])
    assert A.held_key_stats([], [])["held_one_chord"]["n"] == 0


def test_family_scores_take_each_familys_best_tag():
    p = np.zeros((1, len(MTT_LABELS)))
    p[0, MTT_LABELS.index("violin")] = 0.9
    p[0, MTT_LABELS.index("piano")] = 0.5
    s = A.family_scores(p, MTT_LABELS)
    assert A.FAMILIES[int(np.argmax(s[0]))] == "strings"
    assert s[0, A.FAMILIES.index("piano")] == 0.5


def test_instrument_stats_rank_the_requested_family_and_count_top_1():
    fams = list(A.FAMILIES) * 2
    planted = np.full((12, 6), 0.1)
    for i, f in enumerate(fams):
        planted[i, A.FAMILIES.index(f)] = 0.9
    s = A.instrument_stats(fams, planted)
    assert s["top1"]["rate"] == 1.0 and s["mean_rank"] == 1.0
    flat = A.instrument_stats(fams, np.full((12, 6), 0.5))  # ties count against the request
    assert flat["top1"]["k"] == 0 and flat["mean_rank"] == 6.0


def _label_tags(seed: int, labels: list[str], n: int) -> tuple[dict, dict]:
    """Distinct tag profiles per label; references and generated clips are noisy draws of them."""
    rng = np.random.default_rng(seed)
    prof = {lab: rng.dirichlet(np.full(50, 0.3)) for lab in labels}

    def draw(lab):
        return np.clip(prof[lab] + rng.normal(0, 0.005, (n, 50)), 0, None)

    return {lab: draw(lab) for lab in labels}, {lab: draw(lab) for lab in labels}


def test_a_planted_diagonal_gives_every_label_its_own_references_and_a_shuffle_gives_none():
    labels = ["ambient", "rock", "jazz", "folk"]
    ref, gen = _label_tags(0, labels, 6)
    c = A.kl_confusion(gen, ref)
    m = np.array(c["matrix"])
    assert c["labels"] == labels and c["own_closest_count"] == 4
    assert (m.argmin(axis=1) == np.arange(4)).all()
    assert c["own_closest_boot"] == [1.0] * 4
    shuffled = {labels[i]: gen[labels[(i + 1) % 4]] for i in range(4)}
    assert A.kl_confusion(shuffled, ref)["own_closest_count"] == 0


def test_verdicts_follow_the_thresholds():
    report = {"thresholds": A.THRESHOLDS, "skipped": {"mood": "not conditioned (x)"}, "results": {
        "1": {"tempo": {"spearman": {"rho": 0.85}, "within": {"rate": 0.6}}, "key": {"mode": {"rate": 0.7}},
              "instruments": {"top1": {"rate": 0.6}},
              "genre": {"labels": ["a", "b", "c", "d"], "own_closest_count": 3}},
        "3": {"tempo": {"spearman": {"rho": 0.79}, "within": {"rate": 0.9}}, "key": {"mode": {"rate": 0.75}},
              "instruments": {"top1": {"rate": 0.5}},
              "genre": {"labels": ["a", "b", "c"], "own_closest_count": 2}}}}
    v = A.passes(report)
    assert v["1"] == {"tempo": True, "mode": False, "instruments": True, "genre": True, "mood": "not conditioned (x)"}
    assert v["3"]["tempo"] is False and v["3"]["mode"] is True and v["3"]["instruments"] is False
    assert v["3"]["genre"] is False  # 2 of 3 is under 3 of every 4


# ----------------------------------------------------------------------------------- plans


def test_plans_skip_what_the_model_does_not_condition_and_name_why():
    ccfg = ConditionerConfig(text_encoder="none", genres=["ambient"], moods=[], keys=["c major", "a minor"],
                             instruments=["piano", "violin"], bpm_buckets=[])
    plans, skipped = A.plan_requests(ccfg, clips=4, seed=0)
    assert skipped["tempo"].startswith("not conditioned") and skipped["mood"].startswith("not conditioned")
    assert "a confusion needs two" in skipped["genre"]
    assert skipped["instruments: guitar"] == "not in the model's vocabulary"
    assert "instruments: strings" not in skipped  # "violin" names the strings family
    assert {p["conditions"].instruments[0] for p in plans["instruments"]} == {"piano", "violin"}
    assert [p["conditions"].key for p in plans["key"]] == ["C major", "A minor", "C major", "A minor"]
    assert all(p["conditions"].text is None and p["channel"] == "attribute" for p in plans["key"])


def test_a_text_only_model_is_asked_in_words_as_prep_captions_them():
    ccfg = ConditionerConfig(text_encoder="minilm", attribute_slots=False)
    plans, skipped = A.plan_requests(ccfg, clips=3, seed=0)
    t = plans["tempo"][0]
    assert t["channel"] == "text" and t["conditions"].bpm is None and t["conditions"].text == f"{t['request']:.0f} bpm"
    assert plans["key"][0]["conditions"].text.startswith("in ")
    assert plans["instruments"][0]["conditions"].text.startswith("with ")
    assert "genre" in skipped and "mood" in skipped


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_codec):
    """A random tiny model (no mood vocabulary; piano and strings only) and a prepared dataset whose
    rows point at synthesized audio files: one held-out ambient row, the rest train rows."""
    import datasets

    from audiogen.audio.io import write_audio
    from audiogen.data.prep import dataset_features
    from conftest import save_tiny_model, synth_music

    root = tmp_path_factory.mktemp("adherence")
    ccfg = ConditionerConfig(text_encoder="none", genres=["ambient", "rock"], moods=[], keys=["C major", "A minor"],
                             instruments=["piano", "strings"], bpm_buckets=[60.0, 90.0, 120.0, 150.0], dim=32)
    model = save_tiny_model(root / "model", tiny_codec, ccfg)
    audio = root / "audio"
    audio.mkdir()
    rows = []
    for i, (genre, split) in enumerate([("ambient", "valid"), ("ambient", "train"), ("rock", "train"), ("rock", "train")]):
        write_audio(audio / f"t{i}.wav", synth_music(4.0, seed=i), tiny_codec.sample_rate)
        rows.append(dict(id=f"r{i}", source=f"t{i}.wav", sha256=f"{i:064d}", start_s=0.0, duration_s=4.0,
                         codec=json.dumps(tiny_codec.describe()), codes=[[1] * 8] * tiny_codec.num_codebooks,
                         caption=genre, genre=genre, mood=None, bpm=100.0, key="C major", instruments=[],
                         beats=[], license="CC0", split=split, title=None, artist=None, attribution=None))
    f = dataset_features(tiny_codec.num_codebooks)
    data = root / "data"
    datasets.DatasetDict({s: datasets.Dataset.from_list([r for r in rows if r["split"] == s], features=f)
                          for s in ("train", "valid")}).save_to_disk(str(data))
    return model, data, audio


def test_the_report_writes_clips_json_markdown_and_figures_and_names_what_is_not_conditioned(tiny_setup, tmp_path):
    model, data, audio = tiny_setup
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two fighting over a busy machine
    out = tmp_path / "report"
    try:
        r = A.adherence_report(model, data, audio, out, cfg_scales=(1.0, 3.0), clips=2, seconds=1.5,
                               progress=False)
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((out / "adherence.json").read_text())
    assert set(saved["results"]) == {"1", "3"}
    for g in ("1", "3"):
        res = saved["results"][g]
        assert set(res) == {"tempo", "key", "instruments", "genre"}
        assert res["tempo"]["clips"] == 2 and {"rho", "low", "high"} <= set(res["tempo"]["spearman"])
        assert {"k", "n", "rate", "low", "high"} <= set(res["key"]["mode"])
        assert res["key"]["held_one_chord"]["n"] <= 2 and "tonal_clarity_median" in res["key"]
        assert all("harmonic_movement" in c and "tonal_clarity" in c for c in res["key"]["per_clip"])
        assert res["instruments"]["clips"] == 2 and {c["request"] for c in res["instruments"]["per_clip"]} == {"piano", "strings"}
        assert res["genre"]["labels"] == ["ambient", "rock"] and len(res["genre"]["matrix"]) == 2
        for attr in res:
            for c in res[attr]["per_clip"]:
                assert (out / c["file"]).is_file()
        assert saved["passes"][g]["mood"].startswith("not conditioned")
    assert len(list((out / "clips" / "cfg3").glob("*.wav"))) == 2 + 2 + 2 + 4
    assert saved["skipped"]["instruments: guitar"] == "not in the model's vocabulary"
    assert "train rows" in saved["references"]["genre"]["rock"]  # no held-out rock: topped up from train
    assert saved["references"]["genre"]["ambient"].startswith("1 held-out rows")
    assert sorted(saved["figures"]) == ["genre_confusion.png", "tempo.png"]
    assert all((out / f).stat().st_size > 1000 for f in saved["figures"])
    md = (out / "adherence.md").read_text()
    assert md == A.summary_markdown(r)
    assert "| CFG 1 | CFG 3 |" in md and "mood: not conditioned" in md and "n=2" in md
    assert "clips holding one chord throughout" in md


def test_attributes_limits_the_report_to_those_asked(tiny_setup, tmp_path):
    model, data, audio = tiny_setup
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path / "report"
    try:
        r = A.adherence_report(model, data, audio, out, cfg_scales=(2.0,), clips=2, seconds=1.0, progress=False,
                               attributes=["instruments"])
    finally:
        torch.set_num_threads(threads)
    assert set(r["results"]["2"]) == {"instruments"}
    assert sorted(p.name for p in (out / "clips" / "cfg2").glob("*.wav")) == ["instruments_000.wav", "instruments_001.wav"]
    assert r["passes"]["2"]["tempo"] == r["skipped"]["tempo"] == "not asked (attributes)"
    assert r["passes"]["2"]["genre"] == "not asked (attributes)"
    with pytest.raises(AudiogenError, match="choose from tempo, key, instruments, genre, mood"):
        A.adherence_report(model, None, None, tmp_path / "o", attributes=["timbre"])


def test_the_cli_turns_the_default_tempo_push_off_and_on_over_the_models_recommendation(tiny_setup, tmp_path,
                                                                                       monkeypatch):
    """``--default-tempo-push off`` measures a model as if its config said ``beat_push_default_tempo: false`` (no
    edited copy of the model folder), ``on`` the reverse; the clips are sampled with it and the report says so."""
    import importlib.util

    model, _, _ = tiny_setup
    spec = importlib.util.spec_from_file_location("adherence_cli", REPO / "eval" / "adherence.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    used = []
    generate_scale = A._generate_scale

    def spy(loaded, plans, todo, params, *args):
        used.append(params.beat_push_default_tempo)
        return generate_scale(loaded, plans, todo, params, *args)

    monkeypatch.setattr(A, "_generate_scale", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for flag, expected in (("off", False), ("on", True), (None, True)):  # the tiny model recommends nothing
            out = tmp_path / f"r_{flag}"
            args = ["--model", str(model), "--out", str(out), "--attributes", "instruments", "--clips", "1",
                    "--seconds", "1", "--cfg", "2", "--quiet", *(["--default-tempo-push", flag] if flag else [])]
            monkeypatch.setattr(sys, "argv", ["adherence.py", *args])
            assert cli.main() == 0
            assert used[-1] is expected
            assert json.loads((out / "adherence.json").read_text())["beat_push_default_tempo"] is expected
    finally:
        torch.set_num_threads(threads)
    assert len(used) == 3  # premise: each run sampled its clips through the spied path


def test_the_cli_reports_a_bad_dataset_in_one_line(tiny_setup, tmp_path):
    model, _, audio = tiny_setup
    p = subprocess.run([sys.executable, str(REPO / "eval" / "adherence.py"), "--model", str(model), "--data",
                        str(tmp_path), "--audio-dir", str(audio), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1


def test_clips_play_at_the_tempo_generate_gives_them(monkeypatch, tmp_path):
    """A grid model plays a request without a tempo (a key, an instrument, a genre) at its default tempo,
    as ``generate`` does; before, the report sampled those clips with no grid at all. ``cap_quiet`` "slow" caps
    each request as generate would cap it alone: under 120 bpm, not the 130 bpm one in the same batch."""
    from types import SimpleNamespace

    import audiogen.metrics.model_eval as model_eval
    from audiogen.generation.sampling import SamplingParams
    from audiogen.models.conditioning import Conditions

    seen, capped = [], []

    def fake(loaded, conds, seconds, params, seed, capped_rows=None, semitones=None):
        seen.extend(conds)
        capped.extend(capped_rows)
        return np.zeros((len(conds), 1, int(seconds * 8000)), dtype=np.float32)

    monkeypatch.setattr(model_eval, "sample_waveforms", fake)
    config = {"lm": {"beat_harmonics": 3}, "conditioner": {"bpm_buckets": [60.0, 120.0]},
              "generation": {"default_bpm": 97.0}}
    loaded = SimpleNamespace(codec=SimpleNamespace(sample_rate=8000), config=config)
    plans = {"key": [{"request": "C major", "channel": "attribute", "conditions": Conditions(key="C major")}],
             "tempo": [{"request": bpm, "channel": "attribute", "conditions": Conditions(bpm=bpm)}
                       for bpm in (70.0, 130.0)]}
    todo = [(attr, i, p) for attr, ps in plans.items() for i, p in enumerate(ps)]
    rows, _ = A._generate_scale(loaded, plans, todo, SamplingParams(cfg_scale=2.0, cap_quiet="slow"), tmp_path, 1.0,
                                8, 0, None, SimpleNamespace(update=lambda n: None))
    assert [c.bpm for c in seen] == [97.0, 70.0, 130.0] and capped == [True, True, False]
    assert rows["key"][0]["played_bpm"] == 97.0 and rows["tempo"][0]["played_bpm"] == 70.0
    assert (tmp_path / "clips" / "cfg2" / "key_000.wav").is_file()


def test_key_requests_are_played_as_generate_plays_them(monkeypatch, tmp_path):
    """A key the model's ``generation.key_shift`` lists is sampled from its neighbour (slot and text) and decoded
    back, per row, as ``generate`` does (``played_key``); the row records the key played. ``key_shift=False``
    samples every key as asked."""
    from types import SimpleNamespace

    import audiogen.metrics.model_eval as model_eval
    from audiogen.generation.sampling import SamplingParams
    from audiogen.models.conditioning import Conditions

    calls = []

    def fake(loaded, conds, seconds, params, seed, capped_rows=None, semitones=None):
        calls.append(([(c.key, c.text) for c in conds], semitones))
        return np.zeros((len(conds), 1, int(seconds * 8000)), dtype=np.float32)

    monkeypatch.setattr(model_eval, "sample_waveforms", fake)
    monkeypatch.setattr(A, "analyse_clip", lambda w, sr, tempo=True: {"key": "C major"})
    config = {"generation": {"key_shift": {"A#": -1}}}
    loaded = SimpleNamespace(codec=SimpleNamespace(sample_rate=8000), config=config)
    plans = {"key": [{"request": k, "channel": "attribute + text", "conditions": Conditions(key=k, text=f"in {k}")}
                     for k in ("C major", "A# minor")]}
    todo = [("key", i, p) for i, p in enumerate(plans["key"])]
    bar = SimpleNamespace(update=lambda n: None)
    rows, _ = A._generate_scale(loaded, plans, todo, SamplingParams(cfg_scale=2.0), tmp_path, 1.0, 8, 0, None, bar)
    assert calls == [([("C major", "in C major"), ("A minor", "in A minor")], [0, 1])]
    assert "played_key" not in rows["key"][0] and rows["key"][1]["played_key"] == "A minor"
    assert rows["key"][1]["text"] == "in A# minor"  # the request as asked
    calls.clear()
    A._generate_scale(loaded, plans, todo, SamplingParams(cfg_scale=2.0), tmp_path, 1.0, 8, 0, None, bar, False)
    assert calls == [([("C major", "in C major"), ("A# minor", "in A# minor")], [0, 0])]


def test_a_calm_mood_is_sampled_apart_with_the_guidance_generate_gives_it(monkeypatch, tmp_path):
    """Mood requests the model plays calm (``SamplingParams.for_mood``: no beat push, labels pushed) are sampled
    in their own batch with that guidance, as ``generate`` would sample each alone; the others in the same batch
    keep the report's sampling, in their order."""
    from types import SimpleNamespace

    import audiogen.metrics.model_eval as model_eval
    from audiogen.generation.sampling import SamplingParams
    from audiogen.models.conditioning import Conditions

    calls = []

    def fake(loaded, conds, seconds, params, seed, capped_rows=None, semitones=None):
        calls.append(([c.mood for c in conds], params.beat_guidance, params.label_guidance, seed))
        return np.full((len(conds), 1, int(seconds * 8000)), len(calls) / 10, dtype=np.float32)

    monkeypatch.setattr(model_eval, "sample_waveforms", fake)
    config = {"lm": {"beat_harmonics": 3}, "conditioner": {"bpm_buckets": [60.0, 120.0]},
              "generation": {"default_bpm": 97.0, "default_bpm_by": {"mood": {"slow": 80.0}}}}
    loaded = SimpleNamespace(codec=SimpleNamespace(sample_rate=8000), config=config)
    moods = ["fast", "slow", "fast", "slow"]
    plans = {"mood": [{"request": m, "channel": "attribute", "conditions": Conditions(mood=m)} for m in moods]}
    todo = [("mood", i, p) for i, p in enumerate(plans["mood"])]
    tagger = SimpleNamespace(tag_probabilities=lambda w, sr: np.array([float(w.max())]))
    params = SamplingParams(cfg_scale=2.0, beat_guidance=3.0, calm_moods=("slow",), calm_label_guidance=3.0)
    rows, _ = A._generate_scale(loaded, plans, todo, params, tmp_path, 1.0, 8, 5, tagger,
                                SimpleNamespace(update=lambda n: None))
    assert calls == [(["fast", "fast"], 3.0, 1.0, 5), (["slow", "slow"], 1.0, 3.0, 5)]
    # each clip is its own request's: the fast ones from the first call, the slow ones from the second
    assert [r["tags"][0] for r in rows["mood"]] == pytest.approx([0.1, 0.2, 0.1, 0.2])
    assert [r["played_bpm"] for r in rows["mood"]] == [97.0, 80.0, 97.0, 80.0]


def _beat_push_recorder(monkeypatch):
    """The report's sampler replaced by one that records each call's requests (key or tempo) and beat guidance, and
    a loaded model stub with a beat grid and a default tempo of 97 bpm: (calls, loaded)."""
    from types import SimpleNamespace

    import audiogen.metrics.model_eval as model_eval

    calls = []

    def fake(loaded, conds, seconds, params, seed, capped_rows=None, semitones=None):
        calls.append(([c.key or c.bpm for c in conds], params.beat_guidance))
        return np.zeros((len(conds), 1, int(seconds * 8000)), dtype=np.float32)

    monkeypatch.setattr(model_eval, "sample_waveforms", fake)
    monkeypatch.setattr(A, "analyse_clip", lambda w, sr, tempo=True: {"key": "C major", "bpm": 70.0})
    config = {"lm": {"beat_harmonics": 3}, "conditioner": {"bpm_buckets": [60.0, 120.0]},
              "generation": {"default_bpm": 97.0}}
    return calls, SimpleNamespace(codec=SimpleNamespace(sample_rate=8000), config=config)


def test_requests_at_the_default_tempo_are_sampled_without_the_push_where_the_model_says_so(monkeypatch, tmp_path):
    """A model with ``beat_push_default_tempo: false``: the key requests (no tempo named, played at the default
    tempo) are sampled apart with beat guidance off, as ``generate`` samples them; the tempo requests keep the
    push. The report's header says so."""
    from types import SimpleNamespace

    from audiogen.generation.sampling import SamplingParams
    from audiogen.models.conditioning import Conditions

    calls, loaded = _beat_push_recorder(monkeypatch)
    plans = {"tempo": [{"request": 70.0, "channel": "attribute", "conditions": Conditions(bpm=70.0)}],
             "key": [{"request": "C major", "channel": "attribute", "conditions": Conditions(key="C major")}]}
    todo = [(attr, i, p) for attr, ps in plans.items() for i, p in enumerate(ps)]
    params = SamplingParams(cfg_scale=2.0, beat_guidance=3.0, beat_push_default_tempo=False)
    rows, _ = A._generate_scale(loaded, plans, todo, params, tmp_path, 1.0, 8, 0, None,
                                SimpleNamespace(update=lambda n: None))
    assert calls == [([70.0], 3.0), (["C major"], 1.0)]
    assert rows["key"][0]["played_bpm"] == 97.0  # on the default tempo's grid all the same
    header = A.summary_markdown({"model_dir": "m", "clips_per_attribute": 1, "seconds": 1.0, "seed": 0, "top_k": 0,
                                "beat_guidance": 3.0, "beat_push_default_tempo": False, "thresholds": A.THRESHOLDS,
                                "results": {}, "skipped": {}, "generation_seconds": 1, "total_seconds": 1})
    assert "not for requests played at the model's default tempo" in header


def test_report_clips_are_generated_in_the_models_own_window(tiny_setup, monkeypatch):
    """The clips every report judges are generated as ``audiogen generate`` generates: in the window the model's
    config names, each later window prompted with the end of the one before (until 2026-12-05: one 10 s window
    whatever the model, twice the default model's training length)."""
    from audiogen.generation.pipeline import CONTEXT_FRACTION, window_frames
    from audiogen.generation.sampling import SamplingParams
    from audiogen.metrics import model_eval
    from audiogen.models.checkpoint import load_model
    from audiogen.models.conditioning import Conditions

    model, _, _ = tiny_setup
    loaded = load_model(model)
    loaded.config.setdefault("generation", {})["window_s"] = 0.5
    seen = {}
    real = model_eval.generate_codes

    def spy(lm, cond, mask, num_frames, params, generator, window, context, **kw):
        seen.update(frames=num_frames, window=window, context=context)
        return real(lm, cond, mask, num_frames, params, generator, window, context, **kw)

    monkeypatch.setattr(model_eval, "generate_codes", spy)
    wav = model_eval.sample_waveforms(loaded, [Conditions(genre="rock")], 1.5, SamplingParams(top_k=5), seed=0)
    fr = loaded.codec.frame_rate
    assert seen["window"] == window_frames(loaded, fr) == int(0.5 * fr)  # the model's, not 10 s
    assert seen["frames"] > seen["window"]  # the premise: more than one window
    assert seen["context"] == max(1, int(seen["window"] * CONTEXT_FRACTION))
    assert wav.shape[-1] >= int(1.5 * loaded.codec.sample_rate)


def test_generated_clips_hand_back_their_codes_and_the_held_out_rows_their_hold_rates(tiny_setup, tmp_path):
    """The model report's code-hold figure: the codes of the clips it writes, and how often the held-out
    tokens repeat the code before them (the fixture's rows hold one code throughout)."""
    from audiogen.audio.io import load_audio
    from audiogen.generation.sampling import SamplingParams
    from audiogen.metrics import model_eval
    from audiogen.models.checkpoint import load_model

    model, data, _ = tiny_setup
    loaded = load_model(model)
    codes = []
    paths = model_eval.generate_clips(loaded, tmp_path / "gen", ["calm", "loud", "soft"], seconds=1.0,
                                      params=SamplingParams(top_k=5, cfg_scale=1.0), batch=2, codes_out=codes)
    K = loaded.codec.num_codebooks
    assert len(paths) == len(codes) == 3 and all(c.shape == (K, codes[0].shape[1]) for c in codes)
    # the codes are those of the written audio
    wav = loaded.codec.decode(torch.from_numpy(codes[2])[None]).float().numpy()[0]
    written, _ = load_audio(paths[2], loaded.codec.sample_rate, loaded.codec.channels)
    peak = float(np.abs(wav).max())
    wav = wav / peak * 0.9 if peak > 0.9 else wav
    assert np.abs(written - wav[:, : written.shape[1]]).max() < 1e-3
    assert model_eval.heldout_hold_rates(data, K) == [1.0] * K


def test_plain_requests_are_sampled_at_their_own_push_where_the_model_says_so(monkeypatch, tmp_path):
    """A model with ``beat_guidance_plain: 2``: a request at the default tempo that names no label is sampled at 2,
    a key request (a label) and a tempo request at the model's 3, each apart, as ``generate`` samples them. The
    report's header says so."""
    from types import SimpleNamespace

    from audiogen.generation.sampling import SamplingParams
    from audiogen.models.conditioning import Conditions

    calls, loaded = _beat_push_recorder(monkeypatch)
    plans = {"tempo": [{"request": 70.0, "channel": "attribute", "conditions": Conditions(bpm=70.0)}],
             "key": [{"request": "C major", "channel": "attribute", "conditions": Conditions(key="C major")},
                     {"request": None, "channel": "text", "conditions": Conditions(text="a theme")}]}
    todo = [(attr, i, p) for attr, ps in plans.items() for i, p in enumerate(ps)]
    params = SamplingParams(cfg_scale=2.0, beat_guidance=3.0, beat_guidance_plain=2.0)
    A._generate_scale(loaded, plans, todo, params, tmp_path, 1.0, 8, 0, None, SimpleNamespace(update=lambda n: None))
    assert sorted(calls, key=str) == sorted([([70.0, "C major"], 3.0), ([97.0], 2.0)], key=str), calls
    header = A.summary_markdown({"model_dir": "m", "clips_per_attribute": 1, "seconds": 1.0, "seed": 0, "top_k": 0,
                                "beat_guidance": 3.0, "beat_guidance_plain": 2.0, "thresholds": A.THRESHOLDS,
                                "results": {}, "skipped": {}, "generation_seconds": 1, "total_seconds": 1})
    assert "beat guidance 3" in header and "2 for plain requests (the default tempo, no label)" in header
