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
    sr, bpm = E.SR, 96.0
    y = np.zeros(int(12 * sr), dtype=np.float32)
    for t in np.arange(0.2, 12, 60 / bpm):
        i = int(t * sr)
        y[i : i + 200] += np.hanning(200).astype(np.float32)
    env = E.onset_envelope(y)
    for name, f in E.TEMPO_ESTIMATORS.items():
        got = f(env)
        assert got is not None and abs(got - bpm) <= 0.04 * bpm, (name, got)


def test_validation_summary_markdown_lists_every_estimator():
    from audiogen.metrics.label_eval import summary_markdown

    s = {"tempo": {"beat_track": {"acc1": 0.9, "acc2": 1.0, "n": 20}},
         "key": {"krumhansl_cqt": {"weighted": 0.815, "exact": 0.7}},
         "instrument_top3": 0.85, "instrument_confusion": {"piano": [["piano", "classical", "slow"]]}}
    md = summary_markdown(s)
    assert "| `beat_track` | 90% | 100% | 20 |" in md and "| `krumhansl_cqt` | 0.815 | 70% |" in md
    assert "| piano | piano, classical, slow |" in md and "top 3: 85%" in md
