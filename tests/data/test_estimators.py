"""Tempo/key estimators and the MIREX measures used to validate them on rendered music."""

from __future__ import annotations

import numpy as np
import pytest

from audiogen.data import estimators as E


def test_tempo_accuracy_mirex_acc1_and_acc2():
    true = [100, 100, 100, 100, 90]
    est = [103.9, 96.5, 200.0, 33.4, None]  # in, in, double (acc2 only), third (acc2 only), missing
    got = E.tempo_accuracy(true, est)
    assert got == {"acc1": pytest.approx(2 / 5), "acc2": pytest.approx(4 / 5), "n": 5}
    assert E.tempo_accuracy([100], [104.1])["acc1"] == 0.0  # just outside 4 %


@pytest.mark.parametrize("true,est,score", [
    ("C major", "C major", 1.0), ("C major", "G major", 0.5), ("C major", "F major", 0.5),
    ("A minor", "E minor", 0.5), ("C major", "A minor", 0.3), ("A minor", "C major", 0.3),
    ("C major", "C minor", 0.2), ("C major", "D major", 0.0), ("C major", "E minor", 0.0),
    ("Eb major", "D# major", 1.0), ("C major", None, 0.0),
])
def test_mirex_weighted_key_score(true, est, score):
    assert E.key_score(true, est) == score


@pytest.mark.parametrize("profiles", sorted(E.PROFILES))
def test_key_from_chroma_finds_the_profile_key_of_a_triad_heavy_chroma(profiles):
    c = np.full(12, 0.1)
    for pc, w in ((2, 1.0), (6, 0.7), (9, 0.8), (7, 0.4), (4, 0.3), (1, 0.3), (11, 0.3)):  # D major scale
        c[pc] = w
    assert E.key_from_chroma(c, profiles) == "D major"
    assert E.key_from_chroma(np.roll(c, 3), profiles) == "F major"
    assert E.key_from_chroma(np.zeros(12), profiles) is None


def test_tempo_estimators_find_a_click_track_tempo():
    bpm = 96.0
    env = E.onset_envelope(E.click_track(bpm))
    for name, f in E.TEMPO_ESTIMATORS.items():
        got = f(env)
        assert got is not None and abs(got - bpm) <= 0.04 * bpm, (name, got)


def test_validation_summary_markdown_lists_every_estimator():
    from audiogen.metrics.label_eval import summary_markdown

    s = {"tempo": {"beat_track": {"acc1": 0.9, "acc2": 1.0, "n": 20}},
         "key": {"krumhansl_cqt": {"weighted": 0.815, "exact": 0.7}},
         "instrument_top3": 0.85, "instrument_confusion": {"piano": [["piano", "classical", "slow"]]}}
    md = summary_markdown(s)
    assert "| `beat_track` | 90.0% | 100.0% | 20 |" in md and "| `krumhansl_cqt` | 0.815 | 70% |" in md
    assert "| piano | piano, classical, slow |" in md and "top 3: 85%" in md


def test_validate_labels_corpus_mode_measures_every_track_of_a_rendered_corpus(tmp_path, capsys):
    import json
    import sys
    from pathlib import Path

    import soundfile as sf

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "data_prep"))
    import validate_labels

    corpus = tmp_path / "rendered"
    rows = []
    for i, (coll, bpm) in enumerate([("chorales", 72.0), ("chorales", 96.0), ("reels", 120.0)]):
        (corpus / coll).mkdir(parents=True, exist_ok=True)
        # 20 s of clicks, then 40 s at another tempo: only --max-seconds 20 leaves the first tempo
        y = np.concatenate([E.click_track(bpm, 20.0), E.click_track(bpm * 1.5, 40.0)])
        sf.write(corpus / coll / f"t{i}.flac", y, E.SR)
        rows.append({"path": f"{coll}/t{i}.flac", "collection": coll, "ensemble": "piano", "beat_bpm": bpm,
                     "key": "C major", "time_signature": "4/4"})
    (corpus / "tracks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "check"
    assert validate_labels.main(["--corpus", str(corpus), "--out", str(out), "--max-seconds", "20", "--no-tagger"]) == 0
    result = json.loads((out / "validation.json").read_text())
    assert sorted(r["path"] for r in result["rows"]) == sorted(r["path"] for r in rows)  # every track was read
    assert result["summary"]["tempo"]["metrical"] == {**result["summary"]["tempo"]["metrical"], "acc1": 1.0, "n": 3}
    per = result["summary"]["tempo_by_collection"]
    assert per["chorales"]["metrical"]["n"] == 2 and per["reels"]["metrical"]["n"] == 1
    assert "| chorales | 2 |" in capsys.readouterr().out
    # not a rendered corpus: one line, exit 1
    assert validate_labels.main(["--corpus", str(tmp_path), "--out", str(out)]) == 1
    assert "tracks.jsonl not found" in capsys.readouterr().err


def legato_chorale(bpm: float, pulse: float, per_beat: int = 2, seconds: float = 12.0, sr: int = E.SR) -> np.ndarray:
    """Four-voice chords changing on every beat, crossfaded over 60 ms (no attack, no accent), over a
    repeated middle C struck ``per_beat`` times a beat at ``pulse`` x the chords' level: ``float32 [N]``."""
    chords = [(48, 55, 64, 72), (53, 57, 65, 72), (55, 59, 62, 67), (48, 55, 64, 67), (57, 60, 64, 69),
              (50, 57, 65, 69), (55, 59, 62, 74), (48, 52, 60, 72)]

    def tone(midi: int, n: int) -> np.ndarray:
        t = np.arange(n) / sr
        return sum(np.sin(2 * np.pi * 440 * 2 ** ((midi - 69) / 12) * k * t) / k**1.5 for k in (1, 2, 3))

    n, beat, fade = int(seconds * sr), int(round(60 / bpm * sr)), int(0.06 * sr)
    y = np.zeros(n + beat + fade)
    ramp = np.concatenate([np.linspace(0, 1, fade), np.ones(beat - fade), np.linspace(1, 0, fade)])
    for i, s in enumerate(range(0, n, beat)):
        y[s : s + beat + fade] += sum(tone(m, beat + fade) for m in chords[i % len(chords)]) * ramp
    step = beat / per_beat
    for j in range(int(n / step)):
        s, m = int(round(j * step)), int(step)
        strike = np.exp(-np.arange(m) / (0.08 * sr)) * np.minimum(1, np.arange(m) / 200)
        y[s : s + m] += pulse * tone(60, m) * strike
    return (y[:n] / np.abs(y).max()).astype(np.float32)


@pytest.mark.parametrize("bpm,pulse,per_beat", [(66, 0.3, 2), (72, 1.0, 2), (60, 0.5, 3)])
def test_metrical_tempo_follows_chord_changes_not_repeated_notes_between_them(bpm, pulse, per_beat):
    # the onset envelope alone marks the repeated notes at least as well as the legato chord changes, so
    # the onset-only tempo is their rate (prep's estimator until shard version 5); harmony changes on the beat
    from audiogen.data.labels import ANALYSIS_HOP, ANALYSIS_SR, _analysis_features

    env, chroma = _analysis_features(legato_chorale(bpm, pulse, per_beat), ANALYSIS_SR)
    got = E.tempo_metrical(env, ANALYSIS_SR, ANALYSIS_HOP, chroma=chroma)
    assert got is not None and abs(got - bpm) <= 0.04 * bpm, got


def test_harmonic_change_marks_chord_changes_and_not_a_held_chord():
    from audiogen.data.labels import ANALYSIS_HOP, ANALYSIS_SR, _analysis_features

    y = legato_chorale(60, pulse=0.0, seconds=8.0)  # a chord change every second
    h = E.harmonic_change(_analysis_features(y, ANALYSIS_SR)[1], ANALYSIS_SR, ANALYSIS_HOP)
    fps = ANALYSIS_SR / ANALYSIS_HOP
    at_change = [h[int((k - 0.15) * fps) : int((k + 0.15) * fps)].max() for k in range(1, 8)]
    held = [h[int((k + 0.3) * fps) : int((k + 0.7) * fps)].max() for k in range(1, 7)]
    assert min(at_change) > 3 * max(held)


@pytest.mark.parametrize("bpm", [52, 56, 60])
def test_levels_tempo_hears_a_slow_beat_not_its_subdivision(bpm):
    # chords on a slow beat (Palestrina's half notes in 4/2) over a note struck twice a beat at full
    # strength: metrical's prior at 100 bpm answers the subdivision (2x), the fitted level chooser the beat
    from audiogen.data.labels import ANALYSIS_HOP, ANALYSIS_SR, _analysis_features

    env, chroma = _analysis_features(legato_chorale(bpm, 1.0, 2), ANALYSIS_SR)
    got = E.tempo_levels(env, ANALYSIS_SR, ANALYSIS_HOP, chroma=chroma)
    assert got is not None and abs(got - bpm) <= 0.04 * bpm, got


@pytest.mark.parametrize("bpm", [90, 120, 140, 160])
def test_levels_tempo_finds_click_tracks_on_prep_features(bpm):
    # a click track has no subdivisions; its half tempo's "subdivision" is perfect, which music never
    # taught the fit (LEVEL_FIT_CLICKS does: none of these tempi is among them)
    from audiogen.data.labels import ANALYSIS_HOP, ANALYSIS_SR, _analysis_features

    assert bpm not in E.LEVEL_FIT_CLICKS
    env, chroma = _analysis_features(E.click_track(bpm), ANALYSIS_SR)
    got = E.tempo_levels(env, ANALYSIS_SR, ANALYSIS_HOP, chroma=chroma)
    assert got is not None and abs(got - bpm) <= 0.04 * bpm, got


def test_fit_level_weights_learns_which_feature_marks_the_right_candidate():
    rng = np.random.default_rng(0)
    cands, truth = [], []
    for _ in range(40):
        bpm = rng.uniform(50, 200, size=5)
        f = rng.normal(size=(5, len(E.LEVEL_FEATURES)))
        f[:, 0] = 0.0
        f[2, 0] = 1.0  # the right one, and only it, has feature 0
        cands.append((bpm, f))
        truth.append(bpm[2])
    w = E.fit_level_weights(cands + [None], truth + [100.0])  # None (under 4 s) is left out
    assert w[0] > 3 * np.abs(w[1:]).max()
    assert all(int(np.argmax(f @ w)) == 2 for _, f in cands)


def test_piece_half_keeps_a_pieces_variants_together_and_splits_the_corpus():
    from audiogen.metrics.label_eval import piece_half

    assert piece_half({"path": "bach/bwv1.6__v0.flac"}) == piece_half({"path": "bach/bwv1.6__v3.flac"})
    assert piece_half({"path": "x__v0.flac", "source": "music21 corpus: bach/bwv1.6.mxl"}) == piece_half(
        {"path": "y__v1.flac", "source": "music21 corpus: bach/bwv1.6.mxl"})
    halves = [piece_half({"path": f"p{i}__v0.flac"}) for i in range(200)]
    assert 60 < halves.count("tuning") < 140 and set(halves) == {"tuning", "heldout"}
