"""The key ceiling: prep's key estimator on held-out rows as they are, through a codec and through a mel
codec's unquantized features (``audiogen.metrics.key_ceiling``, ``eval/key_ceiling.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiogen.audio.io import write_audio
from conftest import save_rows_dataset

REPO = Path(__file__).resolve().parents[2]
SR = 24000


def progression(minor: bool, seconds: float = 4.0) -> np.ndarray:
    """i-iv-v-i in D minor or I-IV-V-I in C major, sine chords, ``[1, N]``."""
    t = np.arange(int(SR * seconds / 4)) / SR
    chords = ([(62, 65, 69), (67, 70, 74), (69, 72, 76), (62, 65, 69)] if minor
              else [(60, 64, 67), (65, 69, 72), (67, 71, 74), (60, 64, 67)])
    wav = np.concatenate([sum(np.sin(2 * np.pi * 440 * 2 ** ((m - 69) / 12) * t) for m in c) for c in chords])
    return (0.2 * wav / np.abs(wav).max())[None].astype(np.float32)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tiny_codec):
    """Four held-out rows (two C major, two D minor progressions; one of the minor ones labelled A major) and a
    train row, with their audio."""
    root = tmp_path_factory.mktemp("keys")
    audio = root / "audio"
    audio.mkdir()
    rows = []
    for i, (minor, label, split) in enumerate([(False, "C major", "valid"), (False, "C major", "valid"),
                                               (True, "D minor", "valid"), (True, "A major", "valid"),
                                               (True, "D minor", "train")]):
        write_audio(audio / f"t{i}.wav", progression(minor), SR)
        rows.append(dict(source=f"t{i}.wav", key=label, split=split))
    data = save_rows_dataset(root / "data", tiny_codec, rows)
    return data, audio


def test_the_source_estimates_count_against_the_labels_and_the_codec_against_both(keyed):
    from audiogen.metrics.key_ceiling import key_ceiling, summary_markdown

    data, audio = keyed
    r = key_ceiling(data, audio, "tiny", per_mode=5, seconds=4.0)
    assert r["rows_by_mode"] == {"major": 3, "minor": 1}  # the valid rows only, by their labels
    assert [x["source"] for x in r["rows"]].count("D minor") == 2 and [x["source"] for x in r["rows"]].count(
        "C major") == 2  # the estimator hears what was played
    src = r["summary"]["source"]
    assert (src["mode_vs_label"]["k"], src["key_vs_label"]["k"], src["key_vs_label"]["n"]) == (3, 3, 4)
    assert "mode_vs_source" not in src and set(r["summary"]) == {"source", "codec"}  # not a mel codec
    codec = r["summary"]["codec"]
    assert codec["key_vs_source"]["k"] == sum(x["codec"] == x["source"] for x in r["rows"])
    assert 0.0 <= codec["mode_vs_label"]["low"] <= codec["mode_vs_label"]["rate"] <= codec["mode_vs_label"]["high"]
    assert "| as it is | 3 of 4" in summary_markdown(r)
    assert key_ceiling(data, audio, "tiny", per_mode=1, seconds=4.0)["rows_by_mode"] == {"major": 1, "minor": 1}


def test_a_mel_codec_adds_its_unquantized_inversion_which_keeps_the_key_of_sine_chords(keyed, tmp_path):
    """The mel variant: features, no codebooks, inverted with Griffin-Lim. Sine chords keep their key through
    the shipped codec's 80 bands."""
    from audiogen.codec.base import load_codec
    from audiogen.metrics.key_ceiling import key_ceiling

    data, audio = keyed
    r = key_ceiling(data, audio, None, per_mode=5, seconds=4.0)
    assert r["num_codebooks"] == load_codec("default").num_codebooks
    assert set(r["summary"]) == {"source", "codec", "mel"}
    assert r["summary"]["mel"]["key_vs_source"]["k"] == 4


def test_the_command_prints_the_table_and_writes_the_json(keyed, tmp_path):
    data, audio = keyed
    out = tmp_path / "k.json"
    p = subprocess.run([sys.executable, str(REPO / "eval" / "key_ceiling.py"), "--data", str(data), "--audio-dir",
                        str(audio), "--codec", "tiny", "--per-mode", "2", "--seconds", "4", "--json", str(out),
                        "--quiet"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "| through the codec |" in p.stdout and json.loads(out.read_text())["rows_by_mode"]["major"] == 2
    bad = subprocess.run([sys.executable, str(REPO / "eval" / "key_ceiling.py"), "--data", str(data), "--audio-dir",
                          str(tmp_path / "nowhere"), "--codec", "tiny", "--quiet"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
