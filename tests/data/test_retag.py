"""Instrument labels from each row's decoded codes (``audiogen.data.retag``, ``data_prep/retag_instruments.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audiogen.errors import AudiogenError
from audiogen.metrics.tagger import MTT_LABELS
from conftest import save_rows_dataset

REPO = Path(__file__).resolve().parents[2]
K, FRAMES = 4, 75  # the tiny codec's codebooks; one second


class RmsTagger:
    """MTT-shaped probabilities from a clip's RMS: loud clips are 'piano', quiet ones 'strings' then 'cello'. Keeps
    every clip it is given; ``fail_after`` raises on that call (a job killed midway)."""

    labels = MTT_LABELS
    name = "rms"

    def __init__(self, split: float, fail_after: int | None = None):
        self.split, self.fail_after, self.clips = split, fail_after, []

    def rms(self, wav) -> float:
        return float(np.sqrt(np.mean(np.square(wav))))

    def tag_probabilities(self, wav, sr):
        if self.fail_after is not None and len(self.clips) == self.fail_after:
            raise KeyboardInterrupt
        self.clips.append(np.asarray(wav).copy())
        p = np.zeros(len(self.labels), np.float32)
        if self.rms(wav) >= self.split:
            p[self.labels.index("piano")] = 0.9
        else:
            p[self.labels.index("strings")], p[self.labels.index("cello")] = 0.8, 0.4
        return p


def _codes(i: int) -> list[list[int]]:
    return np.random.default_rng(i).integers(0, 64, (K, FRAMES)).tolist()


@pytest.fixture()
def dataset(tmp_path, tiny_codec):
    """Six train and two valid rows, each with its own random codes and the label 'drums' (as prep's tagger on the
    whole file might have written), and the tiny codec's decoding of each and their median RMS."""
    rows = [dict(source=f"t{i}.flac", split="valid" if i >= 6 else "train", instruments=["drums"], codes=_codes(i),
                 genre="game", start_s=float(i)) for i in range(8)]
    data = save_rows_dataset(tmp_path / "data", tiny_codec, rows)
    (data / "prep_report.json").write_text(json.dumps({"input_dir": "/music"}))
    with torch.inference_mode():
        wavs = [tiny_codec.decode(torch.tensor([r["codes"]]))[0].numpy() for r in rows]
    rms = [RmsTagger(0).rms(w) for w in wavs]
    return data, wavs, float(np.median(rms))


def _load(d):
    from audiogen.data.loader import load_prepared

    return load_prepared(d)


def test_labels_name_what_the_decoded_codes_play(dataset, tmp_path):
    data, wavs, median = dataset
    tagger = RmsTagger(median)
    report = retag(data, tmp_path / "out", tagger)
    # premise: the tagger heard each row's decoded codes, row by row, once each
    assert len(tagger.clips) == 8
    for clip, wav in zip(tagger.clips, wavs):
        np.testing.assert_allclose(clip, wav, atol=1e-6)
    src, out = _load(data), _load(tmp_path / "out")
    for split in ("train", "valid"):
        for a, b in zip(src[split], out[split]):
            want = ["piano"] if tagger.rms(wavs[int(a["id"][1:])]) >= median else ["strings", "cello"]
            assert b["instruments"] == want
            a.pop("instruments"), b.pop("instruments")
            assert a == b  # every other column as it was
        assert out[split].column_names == src[split].column_names
    assert report["splits"]["train"]["first_before"] == {"drums": 6}
    assert sum(report["splits"]["train"]["first_after"].values()) == 6
    assert report["splits"]["train"]["first_changed"] == 6
    assert json.loads((tmp_path / "out" / "retag.json").read_text()) == report
    assert json.loads((tmp_path / "out" / "prep_report.json").read_text()) == {"input_dir": "/music"}
    assert not (tmp_path / "out" / ".work").exists()


def retag(data, out, tagger, **kw):
    from audiogen.data.retag import retag_instruments

    return retag_instruments(data, out, "tiny", tagger=tagger, progress=False, **kw)


def test_interrupted_job_resumes_where_it_stopped(dataset, tmp_path):
    data, _, median = dataset
    with pytest.raises(KeyboardInterrupt):
        retag(data, tmp_path / "out", RmsTagger(median, fail_after=3))
    assert not (tmp_path / "out" / "dataset_dict.json").exists()  # nothing that looks finished
    again = RmsTagger(median)
    retag(data, tmp_path / "out", again)
    assert len(again.clips) == 5  # only the rows the first run had not tagged
    retag(data, tmp_path / "whole", RmsTagger(median))
    a, b = _load(tmp_path / "out"), _load(tmp_path / "whole")
    assert all(a[s]["instruments"] == b[s]["instruments"] for s in ("train", "valid"))


def test_a_quiet_row_gets_no_instrument(dataset, tmp_path):
    data, _, _ = dataset
    tagger = RmsTagger(0.0)
    tagger.tag_probabilities = lambda wav, sr: np.full(len(MTT_LABELS), 0.1, np.float32)  # nothing reaches 0.25
    report = retag(data, tmp_path / "out", tagger)
    assert all(x == [] for x in _load(tmp_path / "out")["train"]["instruments"])
    assert report["splits"]["train"]["first_after"] == {"-": 6}


def test_refuses_what_it_cannot_do(dataset, tmp_path, tiny_codec):
    data, _, _ = dataset
    with pytest.raises(AudiogenError, match="is the dataset itself"):
        retag(data, data, RmsTagger(0))
    with pytest.raises(AudiogenError, match="already holds a dataset"):
        retag(data, _copy_marker(tmp_path), RmsTagger(0))
    with pytest.raises(AudiogenError, match="between 0 and 1"):
        retag(data, tmp_path / "o", RmsTagger(0), threshold=1.5)

    class Other:  # a dataset tokenized by a codec at another rate
        num_codebooks = K

        def describe(self):
            return {**tiny_codec.describe(), "sample_rate": 32000}

    other = save_rows_dataset(tmp_path / "other", Other(), [dict(source="a", split=s) for s in ("train", "valid")])
    with pytest.raises(AudiogenError, match="sample_rate differ"):
        retag(other, tmp_path / "o2", RmsTagger(0))


def _copy_marker(tmp_path):
    d = tmp_path / "taken"
    d.mkdir()
    (d / "dataset_dict.json").write_text("{}")
    return d


def test_command_line(dataset, tmp_path):
    cmd = [sys.executable, str(REPO / "data_prep" / "retag_instruments.py")]
    r = subprocess.run([*cmd, str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("retag_instruments: error:") and "not a prepared dataset" in r.stderr
    r = subprocess.run([*cmd, "--help"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "decoded" in r.stdout
