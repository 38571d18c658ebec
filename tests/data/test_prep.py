"""Corpus preparation: real files in mixed formats -> tokenized dataset, bad files reported,
resumable under kill -9, tempo/key estimates, CLI exit codes."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from audiogen.audio.io import load_audio, write_audio
from audiogen.codec.base import _is_lstm
from audiogen.data.labels import _analysis_features, estimate_bpm, estimate_key
from audiogen.data.prep import PrepConfig, assign_splits, dataset_features, prepare
from audiogen.data.prep_files import segment_bounds

SEGMENT = 4.0
BAD = {"corrupt.wav", "empty.flac", "silent.wav"}
# (relative path, sample rate, channels, source track index, offset s)
MIXED = [
    ("a.wav", 24000, 1, 0, 40.0),
    ("b.flac", 44100, 2, 1, 20.0),
    ("sub/c.mp3", 48000, 2, 2, 30.0),
    ("sub/d.ogg", 32000, 1, 3, 50.0),
    ("e.aiff", 16000, 2, 4, 60.0),
    ("f.wav", 22050, 2, 5, 15.0),
]
CLIP_S = 6.0
REPO = Path(__file__).resolve().parents[2]


def click_track(bpm: float, seconds: float, sr: int, offset_s: float = 0.1) -> np.ndarray:
    """Short 1 kHz blips every beat: float32 [N]."""
    n = int(seconds * sr)
    y = np.zeros(n, np.float32)
    t = np.arange(int(0.02 * sr)) / sr
    click = (0.5 * np.sin(2 * np.pi * 1000 * t) * np.exp(-300 * t)).astype(np.float32)
    for k in range(int(seconds * bpm / 60) + 1):
        s = int((offset_s + k * 60 / bpm) * sr)
        if s + len(click) <= n:
            y[s : s + len(click)] += click
    return y


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory, real_tracks) -> Path:
    d = tmp_path_factory.mktemp("mixed")
    for rel, sr, ch, idx, off in MIXED:
        wav, _ = load_audio(real_tracks[idx % len(real_tracks)], sample_rate=sr, channels=ch, offset_s=off, duration_s=CLIP_S)
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        write_audio(d / rel, wav, sr)
    write_audio(d / "clicks120.wav", click_track(120, 9.0, 22050)[None], 22050)
    gap = np.concatenate([click_track(100, 4.0, 22050), np.zeros(4 * 22050, np.float32), click_track(100, 2.0, 22050)])
    write_audio(d / "gap.flac", gap[None], 22050)  # music, 4 s of digital silence, music
    (d / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(3000))
    (d / "empty.flac").write_bytes(b"")
    write_audio(d / "silent.wav", np.zeros((1, 24000 * 5), np.float32), 24000)
    shutil.copy(d / "a.wav", d / "sub" / "a_copy.wav")  # same bytes -> tokenized once
    (d / "b.json").write_text(json.dumps({
        "title": "Awakening", "artist": "Max McCracken", "license": "CC-BY-SA-3.0",
        "attribution": "Music by Max McCracken (CC BY-SA 3.0)", "genre": "ambient", "instruments": ["synth", "cello"],
    }))
    (d / "e.txt").write_text("a slow electronic piece with soft pads\n")
    (d / "captions.csv").write_text("path,caption,mood\nsub/c.mp3,a driving synth track,energetic\n")
    return d


def _cfg(src: Path, out: Path, **kw) -> PrepConfig:
    # batch of 2: shards appear after the second file, so the kill test lands mid-run
    kw.setdefault("workers", 0)
    kw.setdefault("batch_size", 2)
    return PrepConfig(str(src), str(out), segment_s=SEGMENT, captions=str(src / "captions.csv"),
                      progress=False, **kw)


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory, tiny_codec) -> Path:
    """The tiny codec saved as a folder: subprocesses load it in milliseconds."""
    from audiogen.codec.base import save_codec

    return save_codec(tiny_codec, tmp_path_factory.mktemp("codec") / "tiny")


@pytest.fixture(scope="module")
def codec(codec_dir):
    from audiogen.codec.base import load_codec

    return load_codec(codec_dir)


@pytest.fixture(scope="module")
def prepared(mixed_dir, tmp_path_factory, codec):
    out = tmp_path_factory.mktemp("prepared") / "data"
    report = prepare(_cfg(mixed_dir, out), codec=codec)
    return out, report


def _load(out: Path):
    import datasets

    return datasets.load_from_disk(str(out))


def test_mixed_folder_becomes_dataset_with_exact_schema(prepared, codec):
    out, report = prepared
    dd = _load(out)
    assert set(dd) == {"train", "valid"}
    want = dataset_features(codec.num_codebooks)
    for name, ds in dd.items():
        assert ds.features == want, name
        assert str(ds.data.schema.field("codes").type) == "fixed_size_list<item: list<item: int16>>[4]"
        assert len(ds) > 0
        for row in ds.with_format("numpy"):
            codes = row["codes"]
            assert codes.shape == (4, math.ceil(row["duration_s"] * 75 - 1e-6))
            assert 0 <= codes.min() and codes.max() < codec.cardinality
            assert json.loads(row["codec"]) == codec.describe()
    sources = set(dd["train"]["source"]) | set(dd["valid"]["source"])
    assert sources == {r for r, *_ in MIXED} | {"clicks120.wav", "gap.flac"}
    cfg = json.loads((out / "prep_config.json").read_text())
    assert cfg["codec"] == codec.describe() and cfg["segment_s"] == SEGMENT and cfg["hop_s"] == SEGMENT
    assert cfg["counts"]["segments"] == {"train": len(dd["train"]), "valid": len(dd["valid"])}


def test_report_lists_exactly_the_bad_files(prepared):
    out, report = prepared
    on_disk = json.loads((out / "prep_report.json").read_text())
    assert on_disk["skipped"] == report["skipped"]
    reasons = {s["source"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == BAD
    assert "empty" in reasons["empty.flac"]
    assert "silent" in reasons["silent.wav"]
    assert "corrupt" in reasons["corrupt.wav"] or "unreadable" in reasons["corrupt.wav"]


def test_splits_are_by_source_file_and_deterministic(prepared):
    out, _ = prepared
    dd = _load(out)
    train, valid = set(dd["train"]["source"]), set(dd["valid"]["source"])
    assert train and valid and not (train & valid)
    for name in ("train", "valid"):
        assert set(dd[name]["split"]) == {name}
    shas = sorted(set(dd["train"]["sha256"]) | set(dd["valid"]["sha256"]))
    assert assign_splits(shas, 0, 0.1) == assign_splits(list(reversed(shas)), 0, 0.1)


def test_split_of_a_file_is_stable_when_files_are_added():
    shas = [f"{i:064x}" for i in range(200)]
    before = assign_splits(shas[:100], seed=7, valid_fraction=0.2)
    after = assign_splits(shas, seed=7, valid_fraction=0.2)
    assert all(after[s] == before[s] for s in shas[:100])
    assert 0.1 < sum(v == "valid" for v in after.values()) / 200 < 0.3
    assert assign_splits(shas, seed=8, valid_fraction=0.2) != after


def test_duplicate_audio_is_tokenized_once(prepared):
    out, report = prepared
    assert [(d["source"], d["duplicate_of"]) for d in report["duplicates"]] == [("sub/a_copy.wav", "a.wav")]
    assert report["files_tokenized_this_run"] == len(MIXED) + 2
    shards = [p for p in (out / ".work").glob("*.npz")]
    assert len(shards) == len(MIXED) + 2
    dd = _load(out)
    assert "sub/a_copy.wav" not in set(dd["train"]["source"]) | set(dd["valid"]["source"])


def test_metadata_comes_from_sidecars_captions_file_and_analysis(prepared):
    out, _ = prepared
    dd = _load(out)
    rows = {}
    for ds in dd.values():
        for r in ds:
            rows.setdefault(r["source"], []).append(r)
    b = rows["b.flac"][0]
    assert (b["license"], b["attribution"], b["genre"], b["instruments"]) == (
        "CC-BY-SA-3.0", "Music by Max McCracken (CC BY-SA 3.0)", "ambient", ["strings", "synth", "cello"])
    # the row carries the cello's family first (a model learns "strings" from it); the caption says what the sidecar said
    assert b["caption"].startswith("Awakening by Max McCracken, ambient, with synth, cello")
    assert rows["e.aiff"][0]["caption"] == "a slow electronic piece with soft pads"
    c = rows["sub/c.mp3"][0]
    assert (c["caption"], c["mood"]) == ("a driving synth track", "energetic")
    # nothing says what genre a.wav is: none is invented
    for r in rows["a.wav"]:
        assert r["genre"] is None and r["license"] is None
        assert r["key"] and r["key"] in r["caption"]
    full = [r for r in rows["clicks120.wav"] if r["duration_s"] == SEGMENT]
    assert full and all(abs(r["bpm"] - 120) <= 2 for r in full)
    assert "120 bpm" in full[0]["caption"]


def test_a_sidecars_exact_tempo_and_key_win_over_the_estimates(tmp_path, codec):
    # a rendered score's sidecar knows its tempo (the metre's beat) and key exactly; the click track
    # says 120 bpm to the estimator, the label says 63 and must be what the rows carry
    d = tmp_path / "music"
    d.mkdir()
    for name, offset in (("labelled", 0.1), ("unlabelled", 0.2)):  # other bytes: not one file's duplicate
        write_audio(d / f"{name}.wav", click_track(120, 9.0, 22050, offset)[None], 22050)
    (d / "labelled.json").write_text(json.dumps({"bpm": 126.0, "beat_bpm": 63, "key": "Eb minor", "genre": "chorale"}))
    prepare(PrepConfig(str(d), str(tmp_path / "data"), segment_s=SEGMENT, batch_size=2, progress=False, workers=0,
                       valid_fraction=0.0), codec=codec)
    rows = [r for ds in _load(tmp_path / "data").values() for r in ds]
    labelled = [r for r in rows if r["source"] == "labelled.wav"]
    assert labelled and all((r["bpm"], r["key"]) == (63.0, "Eb minor") for r in labelled)
    assert labelled[0]["caption"].endswith("chorale, 63 bpm, in Eb minor")
    full = [r for r in rows if r["source"] == "unlabelled.wav" and r["duration_s"] == SEGMENT]
    assert full and all(abs(r["bpm"] - 120) <= 2 for r in full)  # no label: estimated
    (d / "labelled.json").write_text(json.dumps({"key": "H dur"}))
    report = prepare(PrepConfig(str(d), str(tmp_path / "data2"), segment_s=SEGMENT, progress=False, workers=0),
                     codec=codec)
    assert any("key='H dur' is not a key" in s["reason"] for s in report["skipped"])


def test_segments_tile_each_file_without_padding(prepared):
    out, _ = prepared
    dd = _load(out)
    rows = sorted((r["start_s"], r["duration_s"]) for ds in dd.values() for r in ds if r["source"] == "b.flac")
    assert rows == [(0.0, SEGMENT), (SEGMENT, pytest.approx(CLIP_S - SEGMENT, abs=1e-3))]


def test_silent_segment_inside_a_file_is_dropped(prepared):
    out, report = prepared
    dd = _load(out)
    rows = sorted((r["start_s"], r["duration_s"]) for ds in dd.values() for r in ds if r["source"] == "gap.flac")
    assert rows == [(0.0, SEGMENT), (2 * SEGMENT, pytest.approx(2.0, abs=1e-3))]
    assert report["silent_segments_dropped"] == 1


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory, real_tracks) -> Path:
    """A 47.5 s mp3 (lossy: decoding from an offset must still line up to the sample) at
    44.1 kHz stereo, so prep resamples it to the codec's rate and channels; 26-34 s is
    digital silence (the segment at 28 s is dropped), and the last segment is a 3.5 s tail."""
    d = tmp_path_factory.mktemp("long")
    pieces = [load_audio(t, sample_rate=44100, channels=2, offset_s=30.0, duration_s=s)[0]
              for t, s in zip(real_tracks[:3], (13.0, 13.0, 13.5))]
    x = np.concatenate([pieces[0], pieces[1], np.zeros((2, 8 * 44100), np.float32), pieces[2]], axis=1)
    write_audio(d / "long.mp3", x, 44100)
    return d


def _long_cfg(src: Path, out: Path, **kw) -> PrepConfig:
    return PrepConfig(str(src), str(out), segment_s=SEGMENT, batch_size=2, progress=False, **kw)


def test_long_file_decoded_in_parts_gives_the_whole_file_dataset(long_dir, tmp_path, codec, monkeypatch):
    """Above 1.5 x part_s a file is decoded, analysed and handed to the tokenizer a part at a
    time, so memory does not grow with the file's length; the dataset is the same, code for
    code and tempo for tempo, as decoding it whole (and with worker processes)."""
    import audiogen.audio.io

    whole = prepare(_long_cfg(long_dir, tmp_path / "whole", workers=0, part_s=1000.0), codec=codec)
    reads = []
    real_load = audiogen.audio.io.load_audio

    def spy(path, *a, **kw):
        got = real_load(path, *a, **kw)
        reads.append(got[0].shape[1] / got[1])
        return got

    monkeypatch.setattr(audiogen.audio.io, "load_audio", spy)
    parted = prepare(_long_cfg(long_dir, tmp_path / "parts", workers=0, part_s=10.0), codec=codec)
    monkeypatch.undo()
    # parts of 2 hops (8 s): each read is one part and 1 s margins, its start aligned down to
    # the 1.7 s analysis grid; never the whole 47.5 s file
    assert len(reads) == 6 and max(reads) <= 8 + 2 + 1.71
    with_workers = prepare(_long_cfg(long_dir, tmp_path / "workers", workers=2, part_s=10.0), codec=codec)
    for report in (parted, with_workers):
        assert report["skipped"] == [] and report["segments"] == whole["segments"]
        assert report["silent_segments_dropped"] == whole["silent_segments_dropped"] == 1
        assert report["audio_hours"] == whole["audio_hours"]
    ref = _rows(tmp_path / "whole")
    assert sum(len(split["id"]) for split in ref.values()) == 11  # 12 starts, one silent
    assert _rows(tmp_path / "parts") == ref and _rows(tmp_path / "workers") == ref


def test_long_file_with_a_broken_part_is_skipped_whole(long_dir, tmp_path, codec):
    """A long FLAC cut short fails only in its last part: the whole file is skipped with the
    decoder's reason, nothing of it reaches the dataset, and the other files are kept."""
    src = tmp_path / "src"
    src.mkdir()
    wav, sr = load_audio(long_dir / "long.mp3")
    good = write_audio(src / "good.flac", wav[:, : 20 * sr], sr)
    whole = write_audio(tmp_path / "whole.flac", wav, sr).read_bytes()
    (src / "cut.flac").write_bytes(whole[: int(len(whole) * 0.8)])
    write_audio(src / "quiet.wav", np.zeros((1, 25 * 8000), np.float32), 8000)  # long, digital silence
    report = prepare(_long_cfg(src, tmp_path / "out", workers=0, part_s=10.0), codec=codec)
    reasons = {s["source"]: s["reason"] for s in report["skipped"]}
    assert sorted(reasons) == ["cut.flac", "quiet.wav"] and "corrupt or truncated" in reasons["cut.flac"]
    assert reasons["quiet.wav"] == "silent (peak -inf dBFS < -70 dBFS)"  # what a whole-file decode says
    assert {r for split in _rows(tmp_path / "out").values() for r in split["source"]} == {good.name}


def test_segment_analysis_does_not_depend_on_where_its_window_starts(real_tracks):
    """Tempo and key of a segment are the same from any window starting on the analysis
    frame grid, even for segments that start exactly on a frame (5.12 s at 44.1 kHz = 441
    hops of 512 samples), where float arithmetic used to pick a neighbouring frame."""
    from audiogen.data.prep_files import _analyse_segments, _frame_step

    sr = 44100
    wav, _ = load_audio(real_tracks[1], sample_rate=sr, channels=1, offset_s=10.0, duration_s=40.0)
    seg = round(5.12 * sr)
    bounds = [(s, seg) for s in range(0, wav.shape[1] - seg + 1, seg)]
    whole, _ = _analyse_segments(wav, sr, 0, bounds, -70.0)
    step = _frame_step(sr)
    for origin in (step, 7 * step, 19 * step):
        later = [b for b in bounds if b[0] - round(0.5 * sr) >= origin]
        part, _ = _analyse_segments(wav[:, origin:], sr, origin, later, -70.0)
        assert part == whole[len(whole) - len(later):]


def test_segment_bounds_hop_and_minimum_tail():
    sr = 10
    assert segment_bounds(100, sr, 4, 4, 1) == [(0, 40), (40, 40), (80, 20)]
    assert segment_bounds(100, sr, 4, 4, 3) == [(0, 40), (40, 40)]  # 2 s tail < 3 s minimum
    assert segment_bounds(100, sr, 4, 2, 1) == [(0, 40), (20, 40), (40, 40), (60, 40)]  # no tail inside the last
    assert segment_bounds(20, sr, 4, 4, 3) == []


@pytest.mark.parametrize("bpm", [90, 120, 140])
def test_tempo_of_click_track_within_2_bpm(bpm):
    sr = 44100
    env, chroma = _analysis_features(click_track(bpm, 12.0, sr), sr)
    assert abs(estimate_bpm(env, chroma=chroma) - bpm) <= 2  # as prep calls it
    assert abs(estimate_bpm(env) - bpm) <= 2  # onset envelope alone


def test_key_of_a_chord_progression():
    sr = 22050
    t = np.arange(sr) / sr

    def chord(*midi):
        return sum(np.sin(2 * np.pi * 440 * 2 ** ((m - 69) / 12) * t) for m in midi)

    # D minor: i - iv - v - i ; C major: I - IV - V - I
    dm = np.concatenate([chord(62, 65, 69), chord(67, 70, 74), chord(69, 72, 76), chord(62, 65, 69)]).astype(np.float32)
    cM = np.concatenate([chord(60, 64, 67), chord(65, 69, 72), chord(67, 71, 74), chord(60, 64, 67)]).astype(np.float32)
    assert estimate_key(_analysis_features(dm, sr)[1].mean(axis=1)) == "D minor"
    assert estimate_key(_analysis_features(cM, sr)[1].mean(axis=1)) == "C major"
    assert estimate_key(np.ones(12)) is None


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "audiogen", "prep", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _rows(out: Path) -> dict:
    dd = _load(out)
    return {name: ds.to_dict() for name, ds in dd.items()}


def test_datasets_from_0_1_and_2_workers_are_identical(mixed_dir, prepared, codec, tmp_path):
    """On CPU the workers decode, analyse and tokenize whole files themselves (single-threaded
    torch); the dataset and the counts are those of the main process doing everything."""
    ref_out, ref = prepared
    for workers in (1, 2):
        report = prepare(_cfg(mixed_dir, tmp_path / f"w{workers}", workers=workers), codec=codec)
        assert report["tokens_this_run"] == ref["tokens_this_run"] > 0
        assert report["segments"] == ref["segments"] and report["skipped"] == ref["skipped"]
        assert _rows(tmp_path / f"w{workers}") == _rows(ref_out)


def test_an_lstm_codec_gives_the_same_dataset_from_0_and_2_workers(mixed_dir, tiny_lstm_codec, tmp_path):
    """EnCodec's kind (an LSTM in the encoder): a batch goes row by row through the convolutions and
    together through the LSTM, padding rows skipped. Segments share batches differently with 0 workers
    (across files) and with 2 (within each file); the datasets are the same."""
    assert tiny_lstm_codec.preferred_batch == 8  # on CPU: the batch runs through the LSTM together
    lstm = next(m for m in tiny_lstm_codec.model.encoder.model if _is_lstm(m))
    rows: list[int] = []
    hook = lstm.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    try:
        reports = {w: prepare(_cfg(mixed_dir, tmp_path / f"w{w}", workers=w, batch_size=4), codec=tiny_lstm_codec)
                   for w in (0, 2)}
    finally:
        hook.remove()
    assert 4 in rows  # the premise (seen in this process, the 0-worker run): full batches went through together
    assert reports[0]["tokens_this_run"] == reports[2]["tokens_this_run"] > 0
    assert reports[0]["segments"] == reports[2]["segments"]
    assert _rows(tmp_path / "w0") == _rows(tmp_path / "w2")


def test_kill_9_then_rerun_gives_identical_dataset(mixed_dir, prepared, codec_dir, tmp_path):
    ref_out, _ = prepared
    out = tmp_path / "data"
    flags = ["--out", out, "--codec", codec_dir, "--segment", SEGMENT, "--captions", mixed_dir / "captions.csv",
             "--batch-size", 2, "--workers", 2,
             "--no-progress"]
    p = _cli(mixed_dir, *flags, start_new_session=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and p.poll() is None:
            if any(f.with_suffix(".json").exists() for f in (out / ".work").glob("*.npz")):
                break
            time.sleep(0.02)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
    assert p.returncode == -signal.SIGKILL, "prep finished before it could be killed"
    assert not (out / "dataset_dict.json").exists()
    # a shard is complete once its .json is beside its .npz (the json is written last)
    done_before = {f.stem for f in (out / ".work").glob("*.npz") if f.with_suffix(".json").exists()}
    assert done_before
    # resume in the main process: the codes must not depend on how decoding was spread out either
    r = _cli(mixed_dir, *flags[:-3], "--workers", 0, "--no-progress")
    _, err = r.communicate(timeout=300)
    assert r.returncode == 3, err
    report = json.loads((out / "prep_report.json").read_text())
    assert report["files_reused_from_shards"] >= len(done_before)
    assert report["files_tokenized_this_run"] >= 1, "nothing was left to do after the kill"
    assert report["skipped"] == json.loads((ref_out / "prep_report.json").read_text())["skipped"]
    assert _rows(out) == _rows(ref_out)


def test_cli_exit_codes_and_one_line_errors(tmp_path, make_music, codec_dir, monkeypatch, capsys):
    from audiogen.cli import main

    src = tmp_path / "clean"
    src.mkdir()
    write_audio(src / "x.wav", make_music(5.0, 24000, 1, seed=3), 24000)
    flags = ["--codec", str(codec_dir), "--workers", "0", "--no-progress"]
    assert main(["prep", str(src), "--out", str(tmp_path / "d"), "--segment", "2", *flags]) == 0
    dd = _load(tmp_path / "d")  # one file: all train, an empty but well-formed valid split
    assert (len(dd["train"]), len(dd["valid"])) == (3, 0) and dd["valid"].features == dd["train"].features
    # same folder, other settings: refused rather than mixing shards
    p = _cli(src, "--out", tmp_path / "d", "--segment", "3", *flags)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1 and "other settings" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["prep", str(tmp_path / "nope"), "--out", str(tmp_path / "e")]) == 1
    # the pretrained encodec_24khz without its weights: one clear line
    monkeypatch.setenv("AUDIOGEN_WEIGHTS", str(tmp_path / "no-weights"))
    capsys.readouterr()
    assert main(["prep", str(src), "--out", str(tmp_path / "e"), "--workers", "0", "--codec", "encodec_24khz"]) == 1
    err = capsys.readouterr().err.strip()
    assert "encodec_24khz weights not found" in err and len(err.splitlines()) == 1
    assert main(["prep", str(src), "--out", str(tmp_path / "e"), "--segment", "-1"]) == 1
    capsys.readouterr()
    assert main(["prep", str(src), "--out", str(tmp_path / "e"), "--silence-db", "nan", *flags]) == 1
    assert "--silence-db must be a number" in capsys.readouterr().err
    assert main(["prep", str(src), "--out", str(tmp_path / "e"), "--captions", str(tmp_path / "none.csv")]) == 1
    (tmp_path / "file").write_text("in the way")
    capsys.readouterr()
    assert main(["prep", str(src), "--out", str(tmp_path / "file" / "d"), *flags]) == 1
    assert "cannot create the folder" in capsys.readouterr().err


def test_debian_sidecar_takes_per_track_facts_and_album_license(tmp_path, real_tracks, make_music):
    from audiogen.data.debian_music import track_facts

    import mutagen

    tags = mutagen.File(str(real_tracks[0]), easy=True).tags
    facts = track_facts(real_tracks[0], "singularity-music")  # its tags carry title and artist
    assert (facts["title"], facts["artist"]) == (tags["title"][0], tags["artist"][0])
    assert facts["license"] == "CC-BY-SA-3.0" and f'"{facts["title"]}" by {facts["artist"]}' in facts["attribution"]
    # Warzone 2100 layout: album.json names tracks; license.txt adds CC-BY-SA except for one track
    album = tmp_path / "albums" / "legacy"
    album.mkdir(parents=True)
    for name in ("track4.opus", "track3_enhanced.opus"):
        write_audio(album / name, make_music(1.0, 48000, 2), 48000)
    (album / "album.json").write_text(json.dumps({"title": "Legacy Soundtrack", "author": "LupusMechanicus", "tracks": [
        {"filename": "track4.opus", "title": "Nuclear Heartbeat", "author": "LupusMechanicus"}]}))
    (album / "license.txt").write_text(
        "For all track *except* track3_enhanced:\n\n`Legacy Soundtrack` - Copyright (C) 2019-2022 LupusMechanicus\n\n"
        "'Legacy Soundtrack' is licensed and available under: \nCC-BY-SA-3.0 (or, at your discretion, any later version)"
        "\n\nAlternatively, it may be used under the terms of \nthe GNU General Public License Version 2 or later.\n\n"
        "track3_enhanced is derived from the original track3, \nand is licensed under the terms of the GNU General "
        "Public License Version 2 or later (the \"GPL\").\n")
    t4 = track_facts(album / "track4.opus", "warzone2100-music")
    assert (t4["title"], t4["artist"], t4["license"]) == ("Nuclear Heartbeat", "LupusMechanicus", "CC-BY-SA-3.0 OR GPL-2+")
    assert "Copyright (C) 2019-2022 LupusMechanicus" in t4["attribution"]
    t3 = track_facts(album / "track3_enhanced.opus", "warzone2100-music")
    assert (t3["title"], t3["license"]) == ("track3_enhanced", "GPL-2+")
    assert "genre" not in t3


def test_instrument_labels_gain_their_family_first():
    from audiogen.data.labels import with_families

    assert with_families(["viola", "violin"]) == ["strings", "viola", "violin"]
    assert with_families(["bassoon", "clarinet", "flute", "oboe"]) == ["flute", "bassoon", "clarinet", "oboe"]
    assert with_families(["Nylon  Guitar", "strings"]) == ["guitar", "strings", "Nylon Guitar"]
    assert with_families(["Strings", "violin"]) == ["strings", "violin"]  # once, whatever its case
    assert with_families(["synth", "pads"]) == ["synth", "pads"] and with_families([]) == []
