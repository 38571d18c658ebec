"""Key augmentation (audiogen/data/augment.py): rows transposed in the codec's token space.

A transposed row must sound transposed (its decoded pitch moved by the semitones asked), carry the
moved key in its label and caption, and leave everything else as it was; the augmented dataset must
keep the source's held-out split and train like any prepared dataset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audiogen.audio.io import write_audio
from audiogen.data.augment import augment_dataset, transpose_caption, transpose_codes, transpose_key
from audiogen.errors import AudiogenError

REPO = Path(__file__).resolve().parents[2]
SR = 24_000


def note(hz: float, seconds: float, sr: int = SR) -> np.ndarray:
    """A held harmonic tone (8 partials falling 1/k) with a slow tremolo, float32 [N]."""
    t = np.arange(int(seconds * sr)) / sr
    y = sum(np.sin(2 * np.pi * hz * k * t) / k for k in range(1, 9)) * (1 + 0.2 * np.sin(2 * np.pi * 3 * t))
    return (0.2 * y / np.abs(y).max()).astype(np.float32)


def pitch_class(wav: np.ndarray, sr: int = SR) -> int:
    """The strongest class of the mean CQT chroma (0 = C)."""
    import librosa

    return int(librosa.feature.chroma_cqt(y=wav, sr=sr).mean(1).argmax())


@pytest.fixture(scope="module")
def codec():
    from audiogen.codec.base import load_codec

    return load_codec("default")  # the shipped pitch codec: the one augmentation is for


def test_key_names_move_with_their_spelling():
    assert transpose_key("A minor", 2) == "B minor"
    assert transpose_key("A minor", -2) == "G minor"
    assert transpose_key("B major", 1) == "C major"  # wraps round the octave
    assert transpose_key("G# major", 2) == "A# major"  # sharp labels (prep's estimator) stay sharp
    assert transpose_key("Eb major", -1) == "D major"
    assert transpose_key("Eb major", 3) == "Gb major"  # flat labels (scores' key signatures) stay flat
    assert transpose_key("Bb minor", 1) == "B minor"
    assert transpose_key(None, 2) is None and transpose_key("", 1) == ""
    assert transpose_key("H dur", 1) == "H dur"  # not a key: left alone


def test_caption_key_is_rewritten_and_the_rest_kept():
    cap = "Nebula by Maxstack, techno, with synth, drums, 100 bpm, in D# minor"
    want = "Nebula by Maxstack, techno, with synth, drums, 100 bpm, in D minor"
    assert transpose_caption(cap, "D# minor", -1) == want
    cap = "bwv104.6 by Johann Sebastian Bach, baroque chorale, 91 bpm, in Ab major"
    assert transpose_caption(cap, "Ab major", 2).endswith("91 bpm, in Bb major")
    assert transpose_caption("a slow piano piece", "C major", 2) == "a slow piano piece"
    assert transpose_caption("drums in space", None, 2) == "drums in space"


@pytest.mark.parametrize("semitones", [-2, 3])
def test_transposed_codes_decode_to_the_moved_pitch(codec, semitones):
    wav = note(440.0, 4.0)  # A4
    codes = codec.encode(torch.from_numpy(wav)[None, None])  # [1, K, T]
    # premise: the codec itself carries the note's class
    assert pitch_class(codec.decode(codes)[0, 0].numpy()) == 9
    moved = transpose_codes(codec, codes, [semitones])[0]
    assert moved.shape == codes.shape and moved.dtype == codes.dtype
    assert (moved != codes).any()
    assert pitch_class(codec.decode(moved)[0, 0].numpy()) == (9 + semitones) % 12
    # zero semitones quantizes the codes' own frames again: nearly the codes it was given
    same = transpose_codes(codec, codes, [0])[0]
    assert (same == codes).float().mean() > 0.9


def test_batched_transposition_equals_one_row_at_a_time(codec):
    rows = torch.stack([codec.encode(torch.from_numpy(note(hz, 2.0))[None, None])[0] for hz in (262.0, 392.0)])
    both = transpose_codes(codec, rows, [-1, 2])  # [2 shifts, 2 rows, K, T]
    for s, shift in enumerate((-1, 2)):
        for b in range(2):
            assert torch.equal(both[s, b], transpose_codes(codec, rows[b : b + 1], [shift])[0, 0])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, codec):
    from audiogen.data.prep import PrepConfig, prepare

    d = tmp_path_factory.mktemp("notes")
    for name, hz, key in (("a", 440.0, "A major"), ("b", 293.7, "Eb minor"), ("c", 349.2, "F major")):
        write_audio(d / f"{name}.wav", note(hz, 9.0)[None], SR)
        (d / f"{name}.json").write_text(json.dumps({"key": key, "genre": "test tone", "beat_bpm": 90}))
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(PrepConfig(str(d), str(out), segment_s=4.0, progress=False, workers=0, valid_fraction=0.34),
            codec=codec)
    return out


def test_augmented_dataset_adds_each_transposition_and_keeps_valid(prepared, tmp_path):
    import datasets

    from audiogen.data.loader import load_mix

    out = tmp_path / "aug"
    summary = augment_dataset(prepared, out, [2, -1], "default", progress=False)
    src, aug = datasets.load_from_disk(str(prepared)), datasets.load_from_disk(str(out))
    assert len(src["train"]) >= 2 and len(src["valid"]) >= 1  # premise: both splits have rows
    assert summary["rows_in"] == len(src["train"]) and summary["rows_out"] == 3 * len(src["train"])
    assert len(aug["train"]) == 3 * len(src["train"])
    assert aug["valid"]["id"] == src["valid"]["id"] and aug["valid"]["codes"] == src["valid"]["codes"]
    by_id = {r["id"]: r for r in aug["train"]}
    for row in src["train"]:
        assert by_id[row["id"]]["codes"] == row["codes"]  # the original kept as it was
        for shift in (-1, 2):
            moved = by_id[f"{row['id']}~t{shift:+d}"]
            assert moved["key"] == transpose_key(row["key"], shift) != row["key"]
            assert moved["caption"].endswith(f"in {moved['key']}")
            assert (moved["bpm"], moved["beats"], moved["source"], moved["codec"]) == (
                row["bpm"], row["beats"], row["source"], row["codec"])
            assert np.asarray(moved["codes"]).shape == np.asarray(row["codes"]).shape
            assert moved["codes"] != row["codes"]
    cfg = json.loads((out / "prep_config.json").read_text())
    assert cfg["augment"]["transpose_semitones"] == [-1, 2]
    train, valid, sizes = load_mix([out, prepared])  # trains like any prepared dataset, mixes with its source
    assert sizes == [3 * len(src["train"]), len(src["train"])] and len(valid) == len(src["valid"])


def test_refusals_are_one_line_errors(prepared, tmp_path):
    out = tmp_path / "aug"
    out.mkdir()
    run = subprocess.run([sys.executable, str(REPO / "data_prep" / "transpose_keys.py"), str(prepared),
                          "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 1 and "exists" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    run = subprocess.run([sys.executable, str(REPO / "data_prep" / "transpose_keys.py"), str(prepared),
                          "--out", str(tmp_path / "aug2"), "--codec", "tiny"], capture_output=True, text=True)
    # another codec than the rows' (here it cannot even give their 6 codebooks): refused before any work
    assert run.returncode == 1 and "codec" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "aug2").exists()


def test_a_codec_without_log_band_frames_is_refused(tiny_codec):
    codes = torch.zeros(1, 2, 10, dtype=torch.long)
    with pytest.raises(AudiogenError, match="not a mel codec"):
        transpose_codes(tiny_codec, codes, [1])
