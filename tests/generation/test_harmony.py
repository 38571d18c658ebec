"""The harmony attribute: a model trained with rows labelled held or moving (data_prep/label_harmony.py) takes
``--harmony``, plays ``moving`` when none is asked, and the label reaches the LM; a model trained before it
refuses the option in one line and plays as it did."""

from __future__ import annotations

import subprocess
import sys

import pytest
import soundfile as sf

from audiogen.errors import AudiogenError
from audiogen.generation.pipeline import GenerateJob, requested_conditions, run_job
from audiogen.models.conditioning import Conditions


@pytest.fixture(scope="module")
def harmony_dir(tmp_path_factory, tiny_codec):
    from audiogen.models.conditioning import ConditionerConfig
    from conftest import louder_labels, save_tiny_model

    ccfg = ConditionerConfig(text_encoder="none", keys=["C major"], harmonies=["moving", "held"], dim=32)

    return save_tiny_model(tmp_path_factory.mktemp("model") / "harmony", tiny_codec, ccfg,
                           conditioner_init=louder_labels)


def take(model_dir, out, **kw) -> tuple[GenerateJob, dict, bytes]:
    job = GenerateJob.from_options("a tune", 1.0, out, model_dir=model_dir, progress=False, seed=3, top_k=0, **kw)
    (meta,) = run_job(job)
    return job, meta, sf.read(str(out), dtype="float32")[0].tobytes()


def test_a_harmony_model_plays_moving_unless_asked_and_the_label_reaches_the_lm(harmony_dir, tmp_path):
    job, meta, moving = take(harmony_dir, tmp_path / "default.wav")
    assert job.conditions.harmony == "moving" and meta["conditions"]["harmony"] == "moving"
    job, meta, held = take(harmony_dir, tmp_path / "held.wav", harmony="held")
    assert job.conditions.harmony == "held" and meta["conditions"]["harmony"] == "held"
    _, _, asked_moving = take(harmony_dir, tmp_path / "moving.wav", harmony="moving")
    assert asked_moving == moving  # the default is the label, not something else
    assert held != moving  # the same seed, another harmony slot: another take
    with pytest.raises(AudiogenError, match="unknown harmony 'wobbly'; this model knows: moving, held"):
        take(harmony_dir, tmp_path / "bad.wav", harmony="wobbly")


def test_a_model_without_the_attribute_gets_no_harmony_and_refuses_the_option(tmp_path):
    from audiogen.generation.pipeline import resolve_model_dir
    from audiogen.models.checkpoint import read_config

    config = read_config(resolve_model_dir(None))  # the shipped default model, trained before the attribute
    assert not config["conditioner"].get("harmonies")
    assert requested_conditions(Conditions(text="x", bpm=100.0), config) == Conditions(text="x", bpm=100.0)
    r = subprocess.run([sys.executable, "-m", "audiogen", "generate", "calm orchestral theme", "--duration", "2",
                        "--out", str(tmp_path / "t.wav"), "--harmony", "held"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "trained without harmony conditioning; leave out --harmony" in r.stderr
    assert not (tmp_path / "t.wav").exists()


def test_the_cli_offers_the_harmonies_the_conditioner_knows():
    from audiogen.commands._sampling_options import HARMONY_CHOICES
    from audiogen.models.conditioning import HARMONIES

    assert HARMONY_CHOICES == HARMONIES


def test_info_lists_the_harmonies_a_model_takes(harmony_dir):
    r = subprocess.run([sys.executable, "-m", "audiogen", "info", "--model", str(harmony_dir)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "harmonies (--harmony): moving, held" in r.stdout


def test_a_stream_of_a_harmony_model_plays_moving_and_takes_the_control(harmony_dir):
    from audiogen.generation.sampling import SamplingParams
    from audiogen.generation.stream import MusicStream, StreamSettings
    from audiogen.models.checkpoint import load_model

    settings = StreamSettings(sampling=SamplingParams(top_k=50), chunk_s=0.25, window_s=1.0, seed=3,
                              decode_context_s=0.2)
    s = MusicStream(load_model(harmony_dir), {"key": "C major"}, settings)
    assert s.state.harmony == "moving"
    s.next_chunk()
    s.control({"harmony": "held"})
    assert s._latest_state().harmony == "held"
    with pytest.raises(AudiogenError, match="unknown harmony 'wobbly'"):
        s.control({"harmony": "wobbly"})
    assert s._latest_state().harmony == "held"  # a refused message changes nothing


def test_a_stream_of_a_model_without_the_attribute_refuses_it(tmp_path, tiny_codec):
    from audiogen.generation.sampling import SamplingParams
    from audiogen.generation.stream import MusicStream, StreamSettings
    from audiogen.models.checkpoint import load_model
    from audiogen.models.conditioning import ConditionerConfig
    from conftest import save_tiny_model

    model = load_model(save_tiny_model(tmp_path / "m", tiny_codec, ConditionerConfig(text_encoder="none", dim=32)))
    settings = StreamSettings(sampling=SamplingParams(top_k=50), chunk_s=0.25, window_s=1.0, seed=3,
                              decode_context_s=0.2)
    with pytest.raises(AudiogenError, match="trained without harmony conditioning"):
        MusicStream(model, {"harmony": "held"}, settings)
    s = MusicStream(model, {"text": "a tune"}, settings)
    assert s.state.harmony is None
    with pytest.raises(AudiogenError, match="trained without harmony conditioning"):
        s.control({"harmony": "moving"})
