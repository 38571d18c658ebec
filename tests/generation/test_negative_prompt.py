"""``generate --negative TEXT``: classifier-free guidance pushes away from a request instead of from the
unconditional; the labels the model knows that the text names fill its slots (docs/generate.md, "Negative prompt")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from audiogen.errors import AudiogenError
from audiogen.generation.pipeline import (GenerateJob, condition_batch, labels_named, negative_conditions,
                                          run_job)
from audiogen.models.conditioning import Conditions, ConditionerConfig

CCFG = ConditionerConfig(text_encoder="none", genres=["techno", "classical", "classical string quartet"],
                         instruments=["drums", "guitar", "nylon guitar", "piano"], dim=32)


@pytest.fixture(scope="module")
def label_model(tmp_path_factory, tiny_codec):
    from conftest import louder_labels, save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "labels", tiny_codec, CCFG,
                           conditioner_init=louder_labels)


def test_labels_named_are_whole_words_earliest_first_the_longest_at_a_place():
    labels = ["drums", "guitar", "nylon guitar", "techno", "classical", "classical string quartet"]
    assert labels_named("Techno,  with DRUMS and nylon guitar; a classical string quartet", labels) == [
        "techno", "drums", "nylon guitar", "classical string quartet"]
    assert labels_named("drumsticks, techno-pop, guitars", labels) == []
    assert labels_named(None, labels) == []


def test_a_negative_prompt_fills_the_slots_of_the_labels_it_names():
    config = {"conditioner": CCFG.to_dict()}
    neg = negative_conditions("techno or classical, with drums, piano and nylon guitar", config)
    assert neg == Conditions(text="techno or classical, with drums, piano and nylon guitar", genre="techno",
                             instruments=["drums", "piano", "nylon guitar"])
    assert negative_conditions("no beat", {}) == Conditions(text="no beat")  # no readable model: run_job says so
    # a model that reads no text hears nothing in a negative that names none of its labels
    with pytest.raises(AudiogenError, match="reads no text and the prompt names none of its labels"):
        negative_conditions("loud noise", config)


def test_the_negative_rows_replace_the_unconditional_ones(label_model):
    from audiogen.models.checkpoint import load_model

    conditioner = load_model(label_model, device="cpu").conditioner
    request, neg = Conditions(text="x", genre="classical"), Conditions(text="y", genre="techno", instruments=["drums"])
    plain, plain_mask = condition_batch(conditioner, [request] * 2, True, "cpu")
    cond, mask = condition_batch(conditioner, [request] * 2, True, "cpu", negative=neg)
    own, own_mask = conditioner([neg] * 2)
    L = own.shape[1]
    assert torch.equal(cond[:2, : plain.shape[1]], plain[:2]) and torch.equal(mask[:2], plain_mask[:2, : mask.shape[1]])
    assert torch.equal(cond[2:, :L], own) and torch.equal(mask[2:, :L], own_mask)
    assert own_mask.any() and not plain_mask[2:].any()  # the unconditional rows were empty; these are not


def take(model_dir, out, **kw):
    job = GenerateJob.from_options("a tune", 1.0, out, model_dir=model_dir, progress=False, seed=3, top_k=0,
                                   genre="classical", cfg_scale=3.0, **kw)
    (meta,) = run_job(job)
    return job, meta, sf.read(str(out), dtype="float32")[0].tobytes()


def test_a_take_pushed_away_from_a_negative_differs_and_its_sidecar_says_so(label_model, tmp_path):
    _, meta, plain = take(label_model, tmp_path / "plain.wav")
    assert "negative" not in meta
    job, meta, pushed = take(label_model, tmp_path / "neg.wav", negative="techno, with drums")
    assert job.negative == Conditions(text="techno, with drums", genre="techno", instruments=["drums"])
    assert pushed != plain  # the same seed, another contrast row: another take
    side = json.loads((tmp_path / "neg.wav.json").read_text())
    assert side["negative"] == {"text": "techno, with drums", "genre": "techno", "instruments": ["drums"]}
    _, _, again = take(label_model, tmp_path / "again.wav", negative="techno, with drums")
    assert again == pushed  # deterministic


@pytest.mark.parametrize("args, message", [
    (["--negative", "techno", "--cfg", "1"], "--negative acts through classifier-free guidance"),
    (["--negative", "   "], "--negative must describe what the music should not be"),
])
def test_a_negative_that_cannot_act_is_one_line_and_nothing_written(label_model, tmp_path, args, message):
    out = tmp_path / "t.wav"
    r = subprocess.run([sys.executable, "-m", "audiogen", "generate", "a tune", "--duration", "1", "--out", str(out),
                        "--model", str(label_model), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr
    assert not out.exists()


def test_a_stream_pushed_away_from_a_negative_plays_otherwise(label_model):
    import numpy as np

    from audiogen.generation.sampling import SamplingParams
    from audiogen.generation.stream import MusicStream, StreamSettings
    from audiogen.models.checkpoint import load_model

    loaded = load_model(label_model)

    def chunks(negative, cfg_scale=3.0):
        settings = StreamSettings(sampling=SamplingParams(top_k=0, cfg_scale=cfg_scale), chunk_s=0.25, window_s=1.0,
                                  seed=3, decode_context_s=0.2, negative=negative)
        s = MusicStream(loaded, {"text": "a tune", "genre": "classical"}, settings)
        return np.concatenate([s.next_chunk() for _ in range(3)])

    neg = negative_conditions("techno, with drums", {"conditioner": CCFG.to_dict()})
    plain, pushed = chunks(None), chunks(neg)
    assert plain.shape == pushed.shape and not np.array_equal(plain, pushed)
    assert np.array_equal(chunks(neg), pushed)  # deterministic
    with pytest.raises(AudiogenError, match="--negative acts through classifier-free guidance"):
        chunks(neg, cfg_scale=1.0)
