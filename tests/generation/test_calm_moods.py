"""Moods played calm: a ``--mood`` the model lists in ``calm_moods``, on a request that names no tempo, is played
without beat guidance's push and with the labels pushed (``SamplingParams.for_mood``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from audiogen.errors import AudiogenError
from audiogen.generation.pipeline import GenerateJob
from audiogen.generation.sampling import SamplingParams

SHIPPED = SamplingParams(cfg_scale=2.0, beat_guidance=3.0, calm_moods=("slow",), calm_label_guidance=3.0)


def test_a_calm_mood_without_a_tempo_is_played_without_the_push_and_with_the_labels():
    assert SHIPPED.for_mood(False, "slow") == replace(SHIPPED, beat_guidance=1.0, label_guidance=3.0)
    assert SHIPPED.for_mood(False, " Slow ") == SHIPPED.for_mood(False, "slow")  # as the vocabulary folds it
    assert SHIPPED.for_mood(True, "slow") == SHIPPED  # a tempo named keeps the push that holds it
    assert SHIPPED.for_mood(False, "fast") == SHIPPED and SHIPPED.for_mood(False, None) == SHIPPED
    # label guidance already asked for is kept
    assert replace(SHIPPED, label_guidance=2.0).for_mood(False, "slow").label_guidance == 2.0
    assert SamplingParams(beat_guidance=3.0).for_mood(False, "slow").beat_guidance == 3.0  # no calm moods: off


def test_a_models_recommendation_and_the_options_given():
    config = {"generation": {"sampling": {"beat_guidance": 3.0, "calm_moods": ["slow"], "calm_label_guidance": 3.0}}}
    assert SamplingParams.for_model(config).calm_moods == ("slow",)  # a YAML list becomes a tuple (hashable)
    assert SamplingParams(calm_moods="slow").calm_moods == ("slow",)
    given_beat = SamplingParams.for_model(config, beat_guidance=2.0)
    assert given_beat.calm_moods == () and given_beat.for_mood(False, "slow").beat_guidance == 2.0
    assert SamplingParams.for_model(config, beat_guidance=2.0, calm_moods=("slow",)).calm_moods == ("slow",)
    given_labels = SamplingParams.for_model(config, label_guidance=1.5)
    assert given_labels.for_mood(False, "slow").label_guidance == 1.5  # what was asked, not the model's 3
    for bad, match in (({"calm_label_guidance": -1.0}, "calm label guidance"), ({"calm_moods": ("",)}, "mood names")):
        with pytest.raises(AudiogenError, match=match):
            SamplingParams(**bad).validate()


@pytest.fixture(scope="module")
def calm_model(tmp_path_factory, tiny_codec):
    """A random tiny LM with a beat grid and mood slots (``slow``, ``fast``) whose recommended sampling pushes the
    beat (3) and lists ``slow`` as calm (label guidance 3)."""
    from audiogen.models.conditioning import ConditionerConfig
    from conftest import louder_labels, save_tiny_model

    ccfg = ConditionerConfig(text_encoder="none", moods=["slow", "fast"], bpm_buckets=[60.0, 90.0, 120.0, 150.0],
                             dim=32)

    model = save_tiny_model(tmp_path_factory.mktemp("model") / "calm", tiny_codec, ccfg, beat_harmonics=3,
                            conditioner_init=louder_labels)
    config = yaml.safe_load((model / "config.yaml").read_text())
    config.setdefault("generation", {}).update(default_bpm=100.0, sampling={
        "cfg_scale": 2.0, "top_k": 0, "beat_guidance": 3.0, "calm_moods": ["slow"], "calm_label_guidance": 3.0})
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    return model, SamplingParams.for_model(config)


def test_generate_plays_calm_only_what_the_model_lists(calm_model, tmp_path):
    """The job's sampling from a model folder that lists ``slow``: calm for ``--mood slow``; as recommended for
    ``--mood slow --bpm 70``, ``--mood fast`` and no mood. Its take is the one the same request gets with the calm
    guidance given by hand (beat guidance 1, label guidance 3), and not the one it gets without the labels' push."""
    from audiogen.generation.pipeline import run_job

    model, recommended = calm_model

    def job(name, **kw):
        return GenerateJob.from_options("quiet bed", 1.0, tmp_path / f"{name}.wav", model_dir=model, progress=False,
                                        seed=2, **kw)

    calm = job("calm", mood="slow")
    assert calm.sampling == replace(recommended, beat_guidance=1.0, label_guidance=3.0)
    assert calm.conditions.bpm == 100.0  # played on the grid at the default tempo all the same
    assert job("timed", mood="slow", bpm=70.0).sampling == recommended
    assert job("fast", mood="fast").sampling == recommended and job("plain").sampling == recommended
    by_hand = job("hand", mood="slow", beat_guidance=1.0, label_guidance=3.0)
    assert by_hand.sampling.calm_moods == () and by_hand.sampling.label_guidance == 3.0
    unpushed = job("unpushed", mood="slow", beat_guidance=1.0)  # no push, no label guidance
    (meta,), _, _ = run_job(calm), run_job(by_hand), run_job(unpushed)
    assert meta["sampling"]["label_guidance"] == 3.0 and meta["sampling"]["beat_guidance"] == 1.0
    assert _samples(tmp_path / "calm.wav") == _samples(tmp_path / "hand.wav")
    assert _samples(tmp_path / "calm.wav") != _samples(tmp_path / "unpushed.wav")  # the labels' push changed it


def _samples(path) -> bytes:
    import soundfile as sf

    return sf.read(str(path), dtype="float32")[0].tobytes()
