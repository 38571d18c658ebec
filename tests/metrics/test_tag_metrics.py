"""Conditioning metrics from tag probabilities: paired/set KL and per-prompt tag agreement."""

from __future__ import annotations

import numpy as np
import pytest

from audiogen.errors import AudiogenError
from audiogen.metrics import tag_metrics as M
from audiogen.metrics.tagger import MTT_LABELS


def test_kl_is_zero_for_identical_tags_and_grows_with_difference():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 1, (6, 50))
    assert M.paired_kl(ref, ref) == pytest.approx(0.0, abs=1e-12)
    near = np.clip(ref + rng.normal(0, 0.02, ref.shape), 0, 1)
    far = rng.uniform(0, 1, (6, 50))
    assert 0 < M.paired_kl(ref, near) < M.paired_kl(ref, far)
    # KL of two known distributions, by hand: p = (0.5, 0.5), q = (0.9, 0.1)
    p, q = np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]])
    expect = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert M.paired_kl(p, q) == pytest.approx(expect, rel=1e-4)


def test_set_kl_ignores_order_but_paired_kl_does_not():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 1, (8, 50))
    shuffled = ref[::-1]
    assert M.set_kl(ref, shuffled) == pytest.approx(0.0, abs=1e-12)
    assert M.paired_kl(ref, shuffled) > 0.05
    with pytest.raises(AudiogenError, match="differ in shape"):
        M.paired_kl(ref, ref[:3])
    with pytest.raises(AudiogenError, match="finite"):
        M.set_kl(ref, np.full((2, 50), np.nan))


def test_tag_agreement_counts_requested_words_in_top_k():
    probs = np.zeros((2, 50))
    probs[0, MTT_LABELS.index("piano")] = 0.9
    probs[0, MTT_LABELS.index("classical")] = 0.8
    probs[1, MTT_LABELS.index("violin")] = 0.7  # a quartet prompt: "strings" accepts violin
    probs[1, MTT_LABELS.index("rock")] = 0.6
    out = M.tag_agreement(probs, MTT_LABELS, [["piano", "jazz"], ["strings", "Classical", "bagpipes"]], k=2)
    # scored: piano (hit), strings (hit via violin), classical (miss in clip 2); jazz/bagpipes are not MTT tags
    assert out["per_clip"] == [{"piano": True}, {"strings": True, "Classical": False}]
    assert out["agreement"] == pytest.approx(2 / 3) and out["scored"] == 3
    assert out["unscored"] == ["bagpipes", "jazz"]
    with pytest.raises(AudiogenError, match="one tag row per prompt"):
        M.tag_agreement(probs, MTT_LABELS, [["piano"]])


def test_model_report_tag_conditioning_pairs_each_clip_with_its_reference():
    from audiogen.metrics.model_eval import tag_conditioning

    labels = ("piano", "guitar", "classical", "rock")

    class FakeTagger:  # tags a clip by its mean level: stands in for musicnn
        name = "fake"

        def __init__(self):
            self.labels = labels

        def tag_probabilities(self, wav, sr):
            return np.array([0.9, 0.1, 0.8, 0.05]) if wav.mean() > 0 else np.array([0.05, 0.9, 0.1, 0.8])

    pos, neg = np.ones((1, 100), np.float32), -np.ones((1, 100), np.float32)
    same = tag_conditioning(FakeTagger(), [pos, neg], [pos, neg], 100, [["piano"], ["rock", "drums"]], k=2)
    assert same["paired_kl_ref_to_gen"] == pytest.approx(0, abs=1e-9) and same["tag_agreement_top_k"] == 1.0
    assert same["words_scored"] == 2 and same["words_unscored"] == ["drums"]
    swapped = tag_conditioning(FakeTagger(), [neg, pos], [pos, neg], 100, [["piano"], ["rock"]], k=2)
    assert swapped["paired_kl_ref_to_gen"] > 0.5 and swapped["tag_agreement_top_k"] == 0.0
    assert swapped["set_kl_ref_to_gen"] == pytest.approx(0, abs=1e-9)  # same two clips, unpaired
