"""Requests played at the model's default tempo: a model whose sampling sets ``beat_push_default_tempo: false`` plays
a request that names no tempo, and no mood or genre with a typical tempo, on its default tempo's grid without beat
guidance's push (``SamplingParams.for_default_tempo``, ``pipeline.plays_default_tempo``)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import yaml

from audiogen.generation.pipeline import GenerateJob, plays_default_tempo, request_sampling
from audiogen.generation.sampling import SamplingParams
from audiogen.models.conditioning import Conditions

PUSHING = SamplingParams(cfg_scale=2.0, beat_guidance=3.0, beat_push_default_tempo=False)
CONFIG = {"lm": {"beat_harmonics": 3}, "conditioner": {"bpm_buckets": [60.0, 120.0]},
          "generation": {"default_bpm": 97.0, "default_bpm_by": {"mood": {"slow": 80.0},
                                                                  "genre": {"baroque chorale": 85.0}}}}


def test_only_a_request_at_the_default_tempo_loses_the_push():
    assert PUSHING.for_default_tempo(True) == replace(PUSHING, beat_guidance=1.0)
    assert PUSHING.for_default_tempo(False) == PUSHING
    assert replace(PUSHING, beat_push_default_tempo=True).for_default_tempo(True) == replace(
        PUSHING, beat_push_default_tempo=True)  # the class default: every request pushed, as before
    off = replace(PUSHING, beat_guidance=1.0)
    assert off.for_default_tempo(True) is off


def test_what_counts_as_the_default_tempo():
    assert plays_default_tempo(Conditions(text="calm orchestral theme"), CONFIG)  # the README's prompt
    assert plays_default_tempo(Conditions(text="piano", key="C major", instruments=["piano"]), CONFIG)
    assert not plays_default_tempo(Conditions(text="calm", bpm=70.0), CONFIG)
    assert not plays_default_tempo(Conditions(text="upbeat electronic, 120 bpm"), CONFIG)
    assert not plays_default_tempo(Conditions(mood="slow"), CONFIG)  # the mood's typical tempo: asked for
    assert not plays_default_tempo(Conditions(text="a slow air"), CONFIG)  # said as the captions say it
    assert not plays_default_tempo(Conditions(genre="baroque chorale"), CONFIG)
    assert plays_default_tempo(Conditions(mood="fast"), CONFIG)  # a mood without a typical tempo in this model


def test_a_beat_guidance_given_pushes_every_request():
    config = {"generation": {"sampling": {"beat_guidance": 3.0, "beat_push_default_tempo": False}}}
    assert not SamplingParams.for_model(config).beat_push_default_tempo
    assert SamplingParams.for_model(config, beat_guidance=2.0).for_default_tempo(True).beat_guidance == 2.0
    kept = SamplingParams.for_model(config, beat_guidance=2.0, beat_push_default_tempo=False)
    assert not kept.beat_push_default_tempo


@pytest.fixture(scope="module")
def unpushed_model(tmp_path_factory, tiny_codec):
    """A random tiny LM with a beat grid whose recommended sampling pushes the beat (3), except at its default
    tempo (100 bpm)."""
    from audiogen.models.conditioning import ConditionerConfig
    from conftest import save_tiny_model

    ccfg = ConditionerConfig(text_encoder="none", bpm_buckets=[60.0, 90.0, 120.0, 150.0], dim=32)

    def louder_grid(lm):  # a grid a random model hears
        lm.beat_proj.weight.mul_(50.0)

    model = save_tiny_model(tmp_path_factory.mktemp("model") / "unpushed", tiny_codec, ccfg, beat_harmonics=3,
                            lm_init=louder_grid)
    config = yaml.safe_load((model / "config.yaml").read_text())
    config.setdefault("generation", {}).update(default_bpm=100.0, sampling={
        "cfg_scale": 2.0, "top_k": 0, "beat_guidance": 3.0, "beat_push_default_tempo": False})
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    return model, SamplingParams.for_model(config)


def test_generate_plays_the_default_tempo_without_the_push(unpushed_model, tmp_path):
    """The README-style request (no tempo named) is sampled with beat guidance off, on the default tempo's grid:
    its take is the one ``--beat-guidance 1`` gives, and differs from the same tempo asked for by ``--bpm 100``,
    which keeps the push (the premise: the push changes this model's take). The sidecar says what was played."""
    model, recommended = unpushed_model
    (plain, timed, _), (meta, timed_meta, _), take = _three_takes(model, tmp_path, hand_push=1.0)
    assert plain.sampling == replace(recommended, beat_guidance=1.0)
    assert plain.conditions.bpm == timed.conditions.bpm == 100.0  # the same grid, with and without the push
    assert timed.sampling == recommended
    assert meta["sampling"]["beat_guidance"] == 1.0 and timed_meta["sampling"]["beat_guidance"] == 3.0
    assert take["plain"].tobytes() == take["hand"].tobytes()
    assert take["plain"].tobytes() != take["timed"].tobytes()


def _three_takes(model, tmp_path, hand_push: float):
    """One second of "quiet bed" (seed 3) on ``model`` three ways: as asked (no tempo named), at its default tempo
    asked by ``--bpm 100``, and with ``--beat-guidance hand_push``: (the jobs, their sidecars, the takes' samples
    by name "plain", "timed", "hand")."""
    import soundfile as sf

    from audiogen.generation.pipeline import run_job

    def job(name, **kw):
        return GenerateJob.from_options("quiet bed", 1.0, tmp_path / f"{name}.wav", model_dir=model, progress=False,
                                        seed=3, **kw)

    jobs = job("plain"), job("timed", bpm=100.0), job("hand", beat_guidance=hand_push)
    metas = []
    for j in jobs:
        (meta,) = run_job(j)  # one take, one sidecar
        metas.append(meta)
    take = {name: sf.read(str(tmp_path / f"{name}.wav"), dtype="float32")[0] for name in ("plain", "hand", "timed")}
    return jobs, metas, take


def test_a_plain_request_can_have_a_push_of_its_own():
    """``beat_guidance_plain``: the scale of the push for a request played at the default tempo that names no
    label; other requests keep ``beat_guidance``; ``beat_push_default_tempo: false`` still turns it off; a
    ``--beat-guidance`` given is every request's scale."""
    own = SamplingParams(cfg_scale=2.0, beat_guidance=3.0, beat_guidance_plain=2.0)
    assert own.for_default_tempo(True).beat_guidance == 2.0
    assert own.for_default_tempo(False) is own
    assert own.for_default_tempo(True, labelled=True) is own  # a key or instrument request keeps the full push
    config = {**CONFIG, "generation": {**CONFIG["generation"], "sampling": {"beat_guidance": 3.0,
                                                                            "beat_guidance_plain": 2.0}}}
    params = SamplingParams.for_model(config)
    for asked, push in [(Conditions(text="calm orchestral theme"), 2.0), (Conditions(text="calm", bpm=70.0), 3.0),
                        (Conditions(text="theme", key="C major"), 3.0), (Conditions(instruments=["drums"]), 3.0),
                        (Conditions(mood="slow"), 3.0), (Conditions(text="upbeat electronic, 120 bpm"), 3.0)]:
        assert request_sampling(params, asked, config).beat_guidance == push, asked
    assert replace(own, beat_push_default_tempo=False).for_default_tempo(True).beat_guidance == 1.0
    off = replace(own, beat_guidance=1.0)
    assert off.for_default_tempo(True) is off  # beat guidance off stays off
    config = {"generation": {"sampling": {"beat_guidance": 3.0, "beat_guidance_plain": 2.0}}}
    assert SamplingParams.for_model(config).for_default_tempo(True).beat_guidance == 2.0
    assert SamplingParams.for_model(config, beat_guidance=4.0).for_default_tempo(True).beat_guidance == 4.0
    kept = SamplingParams.for_model(config, beat_guidance=4.0, beat_guidance_plain=1.5)
    assert kept.for_default_tempo(True).beat_guidance == 1.5 and kept.for_default_tempo(False).beat_guidance == 4.0


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf"), "two"])
def test_a_bad_default_tempo_push_is_refused(scale):
    from audiogen.errors import AudiogenError

    with pytest.raises(AudiogenError, match="beat guidance of a plain request must be a finite number >= 0"):
        SamplingParams(beat_guidance=3.0, beat_guidance_plain=scale).validate()


def test_generate_plays_the_default_tempo_at_its_own_push(unpushed_model, tmp_path):
    """A model recommending a push of 3, and 2 at its default tempo: the README-style request's take is the one
    ``--beat-guidance 2`` gives and differs from the recommended push at that tempo asked for (``--bpm 100``);
    the sidecar says 2."""
    model, _ = unpushed_model
    own = tmp_path / "own"
    shutil.copytree(model, own)
    config = yaml.safe_load((own / "config.yaml").read_text())
    config["generation"]["sampling"].update(beat_push_default_tempo=True, beat_guidance_plain=2.0)
    (own / "config.yaml").write_text(yaml.safe_dump(config))
    (plain, timed, _), (meta, _, _), take = _three_takes(own, tmp_path, hand_push=2.0)
    assert plain.sampling.beat_guidance == 2.0 and timed.sampling.beat_guidance == 3.0
    assert plain.conditions.bpm == timed.conditions.bpm == 100.0
    assert meta["sampling"]["beat_guidance"] == 2.0
    assert take["plain"].tobytes() == take["hand"].tobytes()
    assert take["plain"].tobytes() != take["timed"].tobytes()
