"""Labels in the prompt: the labels a model knows that ``generate``'s prompt names as words fill the attribute slots
not given as options ("slow melancholic piano" plays as ``--mood slow --instruments piano``), keys only after "in";
``--no-prompt-labels`` reads the prompt as text only (docs/generate.md, "Labels in the prompt")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import soundfile as sf

from audiogen.generation.pipeline import GenerateJob, labels_in_text, prompt_labels, run_job
from audiogen.models.conditioning import Conditions, ConditionerConfig

CCFG = ConditionerConfig(text_encoder="none", genres=["techno", "classical", "classical string quartet"],
                         moods=["slow", "fast"], keys=["a minor", "d# major", "c major"],
                         instruments=["drums", "guitar", "nylon guitar", "piano", "choir", "flute"],
                         harmonies=["moving", "held"], dim=32)
CONFIG = {"conditioner": CCFG.to_dict()}


def test_a_prompt_names_its_labels_as_the_options_would_give_them():
    asked, read = prompt_labels(Conditions(text="Slow melancholic PIANO"), CONFIG)
    assert read == {"mood": "slow", "instruments": ["piano"]}
    assert asked == Conditions(text="Slow melancholic PIANO", mood="slow", instruments=["piano"])
    asked, read = prompt_labels(Conditions(text="a classical string quartet, fast, in Eb major, with nylon guitar, "
                                                 "choir, drums, flute and piano"), CONFIG)
    assert read == {"genre": "classical string quartet", "mood": "fast", "key": "D# major",
                    "instruments": ["nylon guitar", "choir", "drums", "flute"]}  # the longest label; at most 4
    assert asked.genre == "classical string quartet" and asked.key == "D# major"


def test_what_a_prompt_does_not_name():
    # a key only after "in", as the captions write it: "a major" and "a minor" are also English
    for text in ("a major film theme with a minor twist", "techno-pop on drumsticks", "calm orchestral theme"):
        assert prompt_labels(Conditions(text=text), CONFIG) == (Conditions(text=text), {})
    # a key the model does not know stays text; the harmony slot is never read from a prompt
    assert prompt_labels(Conditions(text="held chords in B minor"), CONFIG)[1] == {}
    # no readable model, no prompt, a model without attribute slots (imported MusicGen): nothing read
    assert prompt_labels(Conditions(text="slow piano"), {}) == (Conditions(text="slow piano"), {})
    assert prompt_labels(Conditions(text=None, mood="fast"), CONFIG)[1] == {}
    textonly = {"conditioner": {**CCFG.to_dict(), "attribute_slots": False}}
    assert prompt_labels(Conditions(text="slow piano"), textonly)[1] == {}


def test_an_option_given_is_kept_and_only_the_empty_slots_are_read():
    asked, read = prompt_labels(Conditions(text="slow piano in A minor", mood="fast", key="C major"), CONFIG)
    assert read == {"instruments": ["piano"]}
    assert (asked.mood, asked.key, asked.instruments) == ("fast", "C major", ["piano"])
    # the negative prompt reads its labels the same way, keys also without "in" (it names what to avoid)
    assert labels_in_text("techno, a minor", CCFG) == {"genre": "techno", "key": "a minor"}
    assert labels_in_text("techno, a minor", CCFG, keys_after_in=True) == {"genre": "techno"}


@pytest.fixture(scope="module")
def label_model(tmp_path_factory, tiny_codec):
    from conftest import louder_labels, save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "labels", tiny_codec, CCFG,
                           conditioner_init=louder_labels)


def take(model_dir, out, prompt, **kw):
    job = GenerateJob.from_options(prompt, 1.0, out, model_dir=model_dir, progress=False, seed=3, top_k=0,
                                   cfg_scale=3.0, **kw)
    (meta,) = run_job(job)
    return job, sf.read(str(out), dtype="float32")[0].tobytes()


def test_a_prompts_labels_play_as_the_same_options_do(label_model, tmp_path):
    prompt = "classical, slow, with piano"
    job, read = take(label_model, tmp_path / "read.wav", prompt)
    assert job.labels_from_prompt == {"genre": "classical", "mood": "slow", "instruments": ["piano"]}
    assert (job.conditions.genre, job.conditions.mood, job.conditions.instruments) == ("classical", "slow", ["piano"])
    side = json.loads((tmp_path / "read.wav.json").read_text())
    assert side["labels_from_prompt"] == job.labels_from_prompt and side["conditions"]["genre"] == "classical"
    _, flags = take(label_model, tmp_path / "flags.wav", prompt, prompt_labels=False, genre="classical", mood="slow",
                    instruments=["piano"])
    assert flags == read  # bit for bit: the same request
    job, text = take(label_model, tmp_path / "text.wav", prompt, prompt_labels=False)
    assert job.labels_from_prompt is None and job.conditions.genre is None
    assert json.loads((tmp_path / "text.wav.json").read_text())["labels_from_prompt"] is None
    assert text != read  # the model hears its labels: the slots were what changed the take


def test_generate_says_what_it_read_from_the_prompt(label_model, tmp_path):
    def cli(*extra):
        out = tmp_path / f"t{len(extra)}.wav"
        r = subprocess.run([sys.executable, "-m", "audiogen", "generate", "techno in Eb major, with nylon guitar",
                            "--duration", "1", "--out", str(out), "--model", str(label_model), "--key", "C major",
                            *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stderr, json.loads(out.with_name(out.name + ".json").read_text())

    err, side = cli()
    assert 'read from the prompt: --genre techno --instruments "nylon guitar" (--no-prompt-labels' in err
    assert side["conditions"]["key"] == "C major"  # the option given, not the prompt's key
    err, side = cli("--quiet")
    assert "read from the prompt" not in err and side["labels_from_prompt"]["genre"] == "techno"
    err, side = cli("--no-prompt-labels")
    assert "read from the prompt" not in err and side["labels_from_prompt"] is None
    assert side["conditions"]["genre"] is None


@pytest.mark.slow  # four 8 s takes of the default model and the tagger: about half a minute on 2 cores
def test_the_default_model_plays_the_instrument_a_prompt_names(tmp_path):
    """Measured on the default model (2026-12-08, eight prompts x four takes, docs/generate.md): a prompt that names
    a family the model plays is heard as it far more often with its labels read (choir first in 4 of 4 takes against
    2, the tagger's choir probability 0.59-0.76 against 0.10-0.34; here, two takes: 0.70 and 0.65 against 0.23 and
    0.47)."""
    import numpy as np

    from audiogen.metrics.adherence import FAMILIES, family_scores
    from audiogen.metrics.tagger import load_tagger

    tagger = load_tagger("MTT")
    choir = tagger.labels.index("choir")

    def takes(read: bool) -> list[np.ndarray]:
        out = tmp_path / f"{read}.wav"
        job = GenerateJob.from_options("choir singing in a cathedral", 8.0, out, progress=False, variations=2,
                                       prompt_labels=read)
        assert (job.labels_from_prompt == {"instruments": ["choir"]}) if read else job.labels_from_prompt is None
        return [tagger.tag_probabilities(sf.read(str(m["path"]), dtype="float32", always_2d=True)[0].T, 24000)
                for m in run_job(job)]

    read, text = takes(True), takes(False)
    assert [FAMILIES[int(np.argmax(family_scores(p[None], tagger.labels)[0]))] for p in read] == ["choir", "choir"]
    gain = np.mean([p[choir] for p in read]) - np.mean([p[choir] for p in text])
    print(f"choir probability: read {[round(float(p[choir]), 2) for p in read]}, "
          f"text only {[round(float(p[choir]), 2) for p in text]}")
    assert gain > 0.2


def test_a_stream_reads_its_prompts_labels_as_generate_does(label_model):
    import numpy as np

    from audiogen.generation.sampling import SamplingParams
    from audiogen.generation.stream import MusicStream, StreamSettings
    from audiogen.models.checkpoint import load_model

    loaded = load_model(label_model)

    def stream(start, read=True, message=None):
        settings = StreamSettings(sampling=SamplingParams(top_k=0, cfg_scale=3.0), chunk_s=0.25, window_s=1.0, seed=3,
                                  decode_context_s=0.2, prompt_labels=read)
        s = MusicStream(loaded, start, settings)
        if message is not None:
            s.control(message)
        return s, np.concatenate([s.next_chunk() for _ in range(3)])

    s, read = stream({"text": "classical, slow, with piano"})
    assert s.prompt_read(s.state) == {"genre": "classical", "mood": "slow", "instruments": ["piano"]}
    _, flags = stream({"text": "classical, slow, with piano", "genre": "classical", "mood": "slow",
                       "instruments": "piano"}, read=False)
    assert np.array_equal(read, flags)  # the same request, sample for sample
    s, text = stream({"text": "classical, slow, with piano"}, read=False)
    assert s.prompt_read(s.state) == {} and not np.array_equal(text, read)
    # a prompt sent later is read too; a label given keeps its value
    s, _ = stream({"text": "a tune", "mood": "fast"}, message={"prompt": "techno, slow, with drums"})
    s.next_chunk()
    assert s.prompt_read(s.state) == {"genre": "techno", "instruments": ["drums"]} and s.state.mood == "fast"
