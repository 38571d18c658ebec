"""The genre and mood ceiling: train rows standing in for a model that played them, tagged as they are and
through a codec, against the adherence report's references (``audiogen.metrics.label_ceiling``,
``eval/label_ceiling.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audiogen.audio.io import write_audio
from conftest import save_rows_dataset

REPO = Path(__file__).resolve().parents[2]
SR = 24000
SECONDS = 2.0


def _ambient(seed: int) -> np.ndarray:
    t = np.arange(int(SR * SECONDS)) / SR
    f = 220 * (1 + seed / 7)
    return (0.01 * (np.sin(2 * np.pi * f * t) + np.sin(2 * np.pi * 1.5 * f * t)))[None].astype(np.float32)


def _techno(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(int(SR * SECONDS))
    for start in range(0, x.size, SR // 2):  # a noise hit every half second (120 bpm)
        x[start:start + 2400] = rng.normal(0, 0.5, 2400) * np.exp(-np.arange(2400) / 400)
    return x[None].astype(np.float32)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_codec):
    """Two held-out and three train rows of `ambient` (quiet sine chords) and of `techno` (loud noise hits), and
    one train row of `game` (its only row, so it is its own reference and has no stand-in)."""
    root = tmp_path_factory.mktemp("labels")
    audio = root / "audio"
    audio.mkdir()
    plan = [(g, s) for g in ("ambient", "techno") for s in ("valid", "valid", "train", "train", "train")]
    plan.append(("game", "train"))
    for i, (genre, split) in enumerate(plan):
        write_audio(audio / f"t{i}.wav", (_techno if genre != "ambient" else _ambient)(i), SR)
    rows = [dict(source=f"t{i}.wav", genre=g, split=s, duration_s=SECONDS) for i, (g, s) in enumerate(plan)]
    data = save_rows_dataset(root / "data", tiny_codec, rows)
    return data, audio


class LoudnessTagger:
    """Two 'tags' from a clip's RMS: loud clips lean to the first, quiet ones to the second. Counts its calls."""

    def __init__(self):
        self.clips = []

    def tag_probabilities(self, wav, sr):
        self.clips.append(np.asarray(wav).copy())
        loud = float(np.sqrt(np.mean(np.square(wav)))) / 0.1
        p = np.array([loud, 1.0, 0.05])
        return (p / p.sum()).astype(np.float32)


class OneSoundCodec:
    """A codec that decodes every input to the same tone (a buzz), or, ``identity``, to the input itself."""

    sample_rate, channels, num_codebooks, device = SR, 1, 2, "cpu"

    def __init__(self, identity: bool):
        self.identity = identity

    def describe(self):
        return {"name": "identity" if self.identity else "buzz"}

    def encode(self, x):
        self.last = x
        return torch.zeros(x.shape[0], 2, x.shape[-1] // 480, dtype=torch.long)

    def decode(self, codes):
        if self.identity:
            return self.last
        t = torch.arange(self.last.shape[-1]) / SR
        return (0.05 * torch.sin(2 * np.pi * 75 * t)).expand_as(self.last).clone()


@pytest.fixture(params=[True, False], ids=["identity", "buzz"])
def identity(request, monkeypatch):
    """Every codec the ceilings load is a :class:`OneSoundCodec`: the input back (True) or one buzz (False)."""
    import audiogen.codec.base as base

    monkeypatch.setattr(base, "load_codec", lambda spec, bandwidth=None: OneSoundCodec(request.param))
    return request.param


def test_a_codec_that_plays_one_buzz_leaves_no_label_and_one_that_plays_the_input_leaves_every_label(
        labelled, identity):
    from audiogen.metrics.adherence import label_rows
    from audiogen.metrics.label_ceiling import label_ceiling, summary_markdown

    data, audio = labelled
    tagger = LoudnessTagger()
    r = label_ceiling(data, audio, "genre", None, "any", per_label=2, seconds=SECONDS, tagger=tagger)
    # the premise: the report's references (same seed), stand-ins from other train rows, every clip tagged twice
    refs, _ = label_rows(data, "genre", ["ambient", "game", "techno"], 2)
    assert r["labels"] == ["ambient", "techno"] and r["skipped"] == {"game": "no other train rows"}
    assert r["stand_ins"] == {"ambient": 2, "techno": 2} and r["references"]["ambient"] == "2 held-out rows"
    assert {x["split"] for lab in ("ambient", "techno") for x in refs[lab]} == {"valid"}
    assert len(tagger.clips) == 2 * 8 and all(c.shape == (1, int(SR * SECONDS)) for c in tagger.clips)
    c = r["confusions"]
    assert c["as it is"]["own_closest_count"] == 2  # loud hits and quiet chords tell the labels apart
    if identity:
        assert c["through the codec"]["matrix"] == c["as it is"]["matrix"]
        assert c["both through the codec"]["own_closest_count"] == 2
    else:  # every stand-in is the same buzz: at most one label can be closest to its own references
        assert c["through the codec"]["own_closest_count"] <= 1
        assert c["both through the codec"]["own_closest_count"] == 0
        assert len(set(c["through the codec"]["closest"].values())) == 1
    assert "| through the codec |" in summary_markdown(r) and "game (no other train rows)" in summary_markdown(r)


def test_the_command_prints_the_tables_writes_the_json_and_reports_a_bad_folder_in_one_line(labelled, tmp_path):
    data, audio = labelled
    out = tmp_path / "c.json"
    cmd = [sys.executable, str(REPO / "eval" / "label_ceiling.py"), "--data", str(data), "--codec", "tiny",
           "--per-label", "2", "--seconds", str(SECONDS), "--attributes", "genre", "--json", str(out), "--quiet"]
    p = subprocess.run([*cmd, "--audio-dir", str(audio)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "# Genre ceiling" in p.stdout and "| both through the codec |" in p.stdout
    assert json.loads(out.read_text())["genre"]["stand_ins"] == {"ambient": 2, "techno": 2}
    bad = subprocess.run([*cmd, "--audio-dir", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    mood = subprocess.run([*cmd[:-5], "--attributes", "mood", "--audio-dir", str(audio), "--quiet"],
                          capture_output=True, text=True)
    assert mood.returncode == 1 and "no train split with mood labels" not in mood.stderr
    assert "fewer than two mood labels" in mood.stderr
    inst = subprocess.run([*cmd[:-5], "--attributes", "instruments", "--audio-dir", str(audio), "--quiet"],
                          capture_output=True, text=True)  # no row of these lists an instrument
    assert inst.returncode == 1 and "no valid row lists one of piano, strings" in inst.stderr


class FamilyTagger(LoudnessTagger):
    """Six tags, one a family: loud clips are 'drums', quiet ones 'piano'."""

    labels = ("piano", "strings", "guitar", "flute", "choir", "drums")

    def tag_probabilities(self, wav, sr):
        self.clips.append(np.asarray(wav).copy())
        loud = float(np.sqrt(np.mean(np.square(wav)))) > 0.03
        return np.array([0.1, 0.02, 0.02, 0.02, 0.02, 0.8] if loud else [0.8, 0.02, 0.02, 0.02, 0.02, 0.1],
                        dtype=np.float32)


@pytest.fixture(scope="module")
def instrumented(tmp_path_factory, tiny_codec):
    """Held-out rows: two drum tracks (noise hits), two piano ones (quiet chords), one `synth` (no family); a
    train row of piano."""
    root = tmp_path_factory.mktemp("instruments")
    audio = root / "audio"
    audio.mkdir()
    plan = [(["drums"], "valid"), (["Drums", "synth"], "valid"), (["piano"], "valid"), (["piano", "drums"], "valid"),
            (["synth"], "valid"), (["piano"], "train")]
    for i, (inst, _) in enumerate(plan):
        write_audio(audio / f"t{i}.wav", (_ambient if inst[0] == "piano" else _techno)(i), SR)
    rows = [dict(source=f"t{i}.wav", instruments=inst, split=s, duration_s=SECONDS) for i, (inst, s) in enumerate(plan)]
    return save_rows_dataset(root / "data", tiny_codec, rows), audio


def test_instrument_ceiling_counts_held_out_rows_by_their_first_family_as_they_are_and_through_the_codec(
        instrumented, identity):
    from audiogen.metrics.label_ceiling import instrument_ceiling, summary_markdown

    data, audio = instrumented
    tagger = FamilyTagger()
    r = instrument_ceiling(data, audio, "any", per_family=8, seconds=SECONDS, tagger=tagger)
    assert r["rows"] == {"piano": 2, "drums": 2}  # held-out rows whose list starts with a family; synth has none
    assert len(tagger.clips) == 2 * 4
    src, cod = r["variants"]["source"], r["variants"]["codec"]
    assert src["top1"]["k"] == 4  # as they are, every row is heard as its family
    if identity:
        assert cod["top1"]["k"] == 4
    else:  # every row comes back as the one tone, loud enough to be 'drums'
        assert cod["top1"]["k"] == 2 and cod["top_family"] == {"piano": ["drums"] * 2, "drums": ["drums"] * 2}
    md = summary_markdown(r)
    assert "| piano | 2 | 2 of 2 |" in md and ("| piano | 2 | 2 of 2 | 0 of 2 | drums 2 |" in md) != identity
    assert instrument_ceiling(data, audio, "any", per_family=1, seconds=SECONDS, tagger=tagger)["rows"] == {
        "piano": 1, "drums": 1}
