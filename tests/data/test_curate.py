"""Rows that hold one chord (audiogen/data/curate.py, data_prep/drop_held_rows.py, data_prep/label_harmony.py).

Each train row is measured on its own excerpt of the source audio; rows holding one chord are left out of
the copy, everything else (codes, labels, the valid split) is kept as it was; or every row is kept and labelled
held or moving, the conditioner's harmony attribute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiogen.audio.io import write_audio
from audiogen.data.curate import drop_held_rows, label_harmony, row_movements
from audiogen.errors import AudiogenError
from audiogen.metrics.audio_checks import HELD_CHORD_MOVEMENT

from conftest import save_rows_dataset, synth_music

REPO = Path(__file__).resolve().parents[2]
SR = 24_000


def held_chord(seconds: float, sr: int = SR) -> np.ndarray:
    """A C major triad of harmonic tones held for ``seconds``, with a slow swell. float32 [N]."""
    t = np.arange(int(seconds * sr)) / sr
    y = sum(np.sin(2 * np.pi * f * k * t) / k for f in (261.63, 329.63, 392.0) for k in range(1, 5))
    y = y * (1 + 0.3 * np.sin(2 * np.pi * 0.2 * t))
    return (0.2 * y / np.abs(y).max()).astype(np.float32)


@pytest.fixture
def corpus(tmp_path, tiny_codec):
    audio = tmp_path / "audio"
    (audio / "pads").mkdir(parents=True)
    (audio / "tunes").mkdir()
    write_audio(audio / "pads" / "drone.wav", held_chord(20.0)[None], SR)
    write_audio(audio / "tunes" / "tune.wav", synth_music(20.0, SR, seed=3), SR)
    rows = [
        dict(id="drone-a", source="pads/drone.wav", start_s=0.0, duration_s=10.0, split="train", genre="ambient",
             codes=[[5] * 8] * tiny_codec.num_codebooks),
        dict(id="drone-b", source="pads/drone.wav", start_s=10.0, duration_s=10.0, split="train"),
        dict(id="tune-a", source="tunes/tune.wav", start_s=0.0, duration_s=10.0, split="train", genre="folk",
             codes=[[7] * 8] * tiny_codec.num_codebooks),
        dict(id="tune-short", source="tunes/tune.wav", start_s=18.5, duration_s=1.5, split="train"),
        dict(id="drone-valid", source="pads/drone.wav", start_s=5.0, duration_s=10.0, split="valid"),
        dict(id="tune-valid", source="tunes/tune.wav", start_s=10.0, duration_s=10.0, split="valid"),
    ]
    data = save_rows_dataset(tmp_path / "data", tiny_codec, rows)
    (data / "prep_config.json").write_text(json.dumps({"segment_s": 10.0}))
    return data, audio


def test_held_rows_are_left_out_and_the_rest_kept_as_it_was(corpus, tmp_path):
    import datasets

    data, audio = corpus
    moves = row_movements(data, audio, progress=False)
    # premise: the measurement tells the two kinds of row apart, on each row's own excerpt
    assert set(moves) == {"drone-a", "drone-b", "tune-a", "tune-short"}
    assert moves["drone-a"] < HELD_CHORD_MOVEMENT and moves["drone-b"] < HELD_CHORD_MOVEMENT
    assert moves["tune-a"] > 0.05
    assert np.isnan(moves["tune-short"])  # 1.5 s: fewer than two 1 s windows, so no figure

    out = tmp_path / "curated"
    summary = drop_held_rows(data, out, audio, progress=False)
    assert summary["rows_in"] == 4 and summary["rows_out"] == 2 and summary["left_out"] == 2
    assert summary["left_out_by_source"] == {"pads": 2} and summary["unmeasured_kept"] == 1
    got, src = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(data))
    assert got["train"]["id"] == ["tune-a", "tune-short"]  # the unmeasurable row is kept
    kept = got["train"][0]
    assert kept["codes"] == src["train"][2]["codes"] and kept["genre"] == "folk"
    assert got["valid"]["id"] == src["valid"]["id"] == ["drone-valid", "tune-valid"]  # valid untouched
    config = json.loads((out / "prep_config.json").read_text())
    assert config["segment_s"] == 10.0 and config["curate"]["rows_left_out"] == 2
    assert not (tmp_path / "curated.partial").exists()

    # the held rows as a dataset of their own, beside the copy without them, to mix back at a lower weight
    summary2 = drop_held_rows(data, tmp_path / "moving", audio, progress=False, held_dir=tmp_path / "held")
    assert summary2 == summary
    held = datasets.load_from_disk(str(tmp_path / "held"))
    assert held["train"]["id"] == ["drone-a", "drone-b"] and held["valid"]["id"] == src["valid"]["id"]
    assert held["train"][0]["codes"] == src["train"][0]["codes"] and held["train"][0]["genre"] == "ambient"
    assert datasets.load_from_disk(str(tmp_path / "moving"))["train"]["id"] == got["train"]["id"]
    assert json.loads((tmp_path / "held" / "prep_config.json").read_text())["curate"]["train_rows"] == "held"

    # a stricter line leaves out the moving row too; the report alone writes nothing
    report = drop_held_rows(data, None, audio, min_movement=0.99, progress=False)
    assert report["left_out"] == 3 and report["rows_out"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "curated", "data", "held", "moving"]


def test_bad_requests_are_one_clear_error_and_write_nothing(corpus, tmp_path, tiny_codec):
    data, audio = corpus
    out = tmp_path / "curated"
    out.mkdir()
    with pytest.raises(AudiogenError, match="exists"):
        drop_held_rows(data, out, audio, progress=False)
    with pytest.raises(AudiogenError, match="between 0 and 1"):
        drop_held_rows(data, tmp_path / "o2", audio, min_movement=-1, progress=False)
    with pytest.raises(AudiogenError, match="--held-out needs --out"):
        drop_held_rows(data, None, audio, progress=False, held_dir=tmp_path / "o5")
    with pytest.raises(AudiogenError, match="exists; remove it or choose another --held-out"):
        drop_held_rows(data, tmp_path / "o6", audio, progress=False, held_dir=out)
    with pytest.raises(AudiogenError, match="give two folders"):
        drop_held_rows(data, tmp_path / "o7", audio, progress=False, held_dir=tmp_path / "o7")
    with pytest.raises(AudiogenError, match="drone.wav.*source is not there"):
        drop_held_rows(data, tmp_path / "o3", tmp_path, progress=False)  # not the folder prep read
    pads = save_rows_dataset(tmp_path / "pads", tiny_codec, [
        dict(source="pads/drone.wav", start_s=s, duration_s=10.0, split=split)
        for s, split in ((0.0, "train"), (10.0, "train"), (5.0, "valid"))])
    with pytest.raises(AudiogenError, match="nothing would be left"):
        drop_held_rows(pads, tmp_path / "o4", audio, progress=False)
    moving = save_rows_dataset(tmp_path / "moving", tiny_codec, [
        dict(source="tunes/tune.wav", start_s=s, duration_s=10.0, split=split)
        for s, split in ((0.0, "train"), (5.0, "valid"))])
    with pytest.raises(AudiogenError, match="--held-out would be empty"):
        drop_held_rows(moving, tmp_path / "o8", audio, progress=False, held_dir=tmp_path / "o9")
    assert not any((tmp_path / n).exists() for n in ("o2", "o3", "o4", "o4.partial", "o5", "o6", "o7", "o8", "o9"))


def test_the_cli_reports_and_refuses_in_one_line(corpus, tmp_path):
    data, audio = corpus
    cmd = [sys.executable, str(REPO / "data_prep" / "drop_held_rows.py"), str(data), "--audio-dir", str(audio),
           "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["left_out"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "data"]  # report only: nothing written
    r = subprocess.run(cmd[:3] + ["--audio-dir", str(tmp_path / "nowhere")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "not a folder" in r.stderr

    label = [sys.executable, str(REPO / "data_prep" / "label_harmony.py"), str(data), "--audio-dir", str(audio),
             "--out", str(tmp_path / "labelled"), "--no-progress"]
    r = subprocess.run(label, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["train"] == {"held": 2, "moving": 1, "unmeasured": 1}
    r = subprocess.run(label, capture_output=True, text=True, timeout=300)  # the same --out again
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "exists; remove it or choose another --out" in r.stderr


def test_rows_labelled_held_or_moving_train_a_harmony_condition(corpus, tmp_path, tiny_codec):
    """label_harmony keeps every row (both splits) and adds the label; mixed with a dataset without the column,
    its rows are unlabelled (missing), and the LM's vocabulary and each sample's conditions carry it."""
    import datasets

    from audiogen.data.loader import CropDataset, load_mix
    from audiogen.train.lm import TrainConfig, build_conditioner_config

    data, audio = corpus
    out = tmp_path / "labelled"
    summary = label_harmony(data, out, audio, progress=False)
    assert summary["train"] == {"held": 2, "moving": 1, "unmeasured": 1}
    assert summary["valid"] == {"held": 1, "moving": 1}
    got, src = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(data))
    assert got["train"]["id"] == src["train"]["id"] and got["train"]["codes"] == src["train"]["codes"]
    assert dict(zip(got["train"]["id"], got["train"]["harmony"])) == {
        "drone-a": "held", "drone-b": "held", "tune-a": "moving", "tune-short": ""}
    assert got["valid"]["harmony"] == ["held", "moving"]
    assert json.loads((out / "prep_config.json").read_text())["curate"]["harmony_line"] == HELD_CHORD_MOVEMENT
    with pytest.raises(AudiogenError, match="exists; remove it or choose another --out"):
        label_harmony(data, out, audio, progress=False)
    with pytest.raises(AudiogenError, match="has a harmony column already"):
        label_harmony(out, tmp_path / "again", audio, progress=False)
    assert not (tmp_path / "again").exists()

    other = save_rows_dataset(tmp_path / "scores", tiny_codec, [
        dict(source="s.wav", split="train", genre="folk"), dict(source="s.wav", split="valid")])
    train, valid, sizes = load_mix([out, other])
    assert sizes == [4, 1] and train["harmony"] == ["held", "held", "moving", "", ""]
    cfg = build_conditioner_config(TrainConfig(data_dir=str(out), conditioner={"text_encoder": "none"},
                                               vocab_min_count=1), train)
    assert sorted(cfg.harmonies) == ["held", "moving"]
    conds = [CropDataset(train, 8, 0, seed=0, random_crops=False)[i]["cond"] for i in range(5)]
    assert [c.harmony for c in conds] == ["held", "held", "moving", None, None]
    unlabelled = build_conditioner_config(TrainConfig(data_dir=str(other), conditioner={"text_encoder": "none"}),
                                          load_mix([other])[0])
    assert unlabelled.harmonies == []  # no column: no values, so no table and no slot
