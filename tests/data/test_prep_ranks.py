"""Corpus preparation by several processes (``accelerate launch``): same dataset as one process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from audiogen.audio.io import write_audio
from audiogen.data.prep import PrepConfig, Rank, prepare, rank_of
from audiogen.errors import AudiogenError

FLAGS = ["--codec", "tiny", "--segment", "1", "--workers", "0", "--no-progress", "--valid-fraction", "0.3",
         "--batch-size", "2"]


def test_rank_of_is_a_stable_hash_of_the_path():
    rels = [f"album/{i:03d}.flac" for i in range(200)]
    ranks = [rank_of(r, 4) for r in rels]
    assert ranks == [rank_of(r, 4) for r in rels] and set(ranks) == {0, 1, 2, 3}
    assert rank_of("album/000.flac", 4) == int(hashlib.sha256(b"album/000.flac").hexdigest()[:16], 16) % 4
    assert all(rank_of(r, 1) == 0 for r in rels)


def test_rank_comes_from_the_launchers_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    r = Rank.from_env()
    assert (r.rank, r.world_size) == (2, 4) and r.device("cuda") == "cuda:1" and r.device("cpu") == "cpu"
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(AudiogenError, match="RANK=4"):
        Rank.from_env()
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert Rank.from_env() == Rank(0, 1)


def _corpus(src: Path, make_music) -> list[str]:
    """Music files with at least two per rank (of 2), a copy of one whose path goes to the other
    rank (a duplicate across processes) and a silent file."""
    src.mkdir()
    names = [f"track{i}.wav" for i in range(5)]
    for i, n in enumerate(names):
        write_audio(src / n, make_music(2.0, 24000, 1, seed=i), 24000)
    copy = next(f"copy{k}.wav" for k in range(100) if rank_of(f"copy{k}.wav", 2) != rank_of("track3.wav", 2))
    (src / copy).write_bytes((src / "track3.wav").read_bytes())
    write_audio(src / "silence.wav", np.zeros((1, 48000), dtype=np.float32), 24000)
    rels = sorted(p.name for p in src.iterdir())
    assert all(sum(rank_of(r, 2) == k for r in rels if r.startswith("track")) >= 2 for k in (0, 1)), rels
    return rels


class _Killed(BaseException):
    """Stands for kill -9: nothing after it runs (not an Exception, so no handler sees it)."""


def test_ranks_in_turn_with_one_killed_give_the_single_process_dataset(tmp_path, make_music, monkeypatch, tiny_codec):
    """The ranks' code paths in one process (fast): rank 1 killed after its first shard and rerun,
    then rank 0 merges; the dataset equals a single process's, row by row."""
    from audiogen.data import prep_files as P

    src = tmp_path / "audio"
    _corpus(src, make_music)

    def cfg(out):
        return PrepConfig(str(src), str(out), codec="tiny", segment_s=1.0, workers=0, progress=False,
                          valid_fraction=0.3, batch_size=2)  # a batch = one file's 2 segments

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    prepare(cfg(tmp_path / "one"), codec=tiny_codec)
    out = tmp_path / "two"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    write_done = P._Tokenizer._write_done

    def killed_after_first_shard(self):
        write_done(self)
        if any(out.joinpath(".work").glob("*.npz")):
            raise _Killed

    monkeypatch.setattr(P._Tokenizer, "_write_done", killed_after_first_shard)
    with pytest.raises(_Killed):
        prepare(cfg(out), codec=tiny_codec)
    assert not Rank(1, 2).manifest(out / ".work").exists() and len(list((out / ".work").glob("*.npz"))) == 1
    monkeypatch.setattr(P._Tokenizer, "_write_done", write_done)
    r1 = prepare(cfg(out), codec=tiny_codec)  # the rerun: resumes, reports, leaves the dataset to rank 0
    assert (r1["rank"], r1["world_size"], r1["reused"]) == (1, 2, 1) and r1["tokenized"] >= 1
    assert not (out / "dataset_dict.json").exists()
    monkeypatch.setenv("RANK", "0")
    report = prepare(cfg(out), codec=tiny_codec)
    assert [r["rank"] for r in report["ranks"]] == [0, 1] and all(r["files"] >= 3 for r in report["ranks"])
    want = json.loads((tmp_path / "one" / "prep_report.json").read_text())
    assert report["skipped"] == want["skipped"] and len(want["skipped"]) == 1
    assert report["duplicates"] == want["duplicates"] and len(want["duplicates"]) == 1
    assert report["segments"] == want["segments"] and want["segments"]["valid"] > 0
    assert _rows(out) == _rows(tmp_path / "one")
    assert json.loads((out / "prep_config.json").read_text())["counts"] == \
        json.loads((tmp_path / "one" / "prep_config.json").read_text())["counts"]


def _launch(src: Path, out: Path) -> subprocess.Popen:
    """``accelerate launch`` with two processes on this machine (CPU, no GPU needed)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "audiogen", "prep", str(src), "--out", str(out), *FLAGS]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.Popen(cmd, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _rank_process(launcher: subprocess.Popen, rank: int, timeout: float = 300):
    import psutil

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for p in psutil.Process(launcher.pid).children(recursive=True):
            try:
                env = p.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if env.get("RANK") == str(rank) and env.get("WORLD_SIZE") == "2":
                return p
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} never started")


def _rows(out: Path) -> dict:
    import datasets

    dd = datasets.load_from_disk(str(out))
    return {name: dd[name].to_list() for name in sorted(dd)}


@pytest.mark.slow
@pytest.mark.timeout(2400)  # three preparations, each process importing torch and librosa afresh
def test_two_processes_killed_and_rerun_give_the_single_process_dataset(tmp_path, make_music):
    import torch

    src = tmp_path / "audio"
    rels = _corpus(src, make_music)
    # rank 1's music 20 s long, so that a kill after its first file lands before its second is done
    # (with 2 s files a quiet machine finished both between two polls)
    for r in rels:
        if r.startswith("track") and rank_of(r, 2) == 1:
            write_audio(src / r, make_music(20.0, 24000, 1, seed=int(r[5])), 24000)
    (src / next(r for r in rels if r.startswith("copy"))).write_bytes((src / "track3.wav").read_bytes())
    ref = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process runs (OMP_NUM_THREADS=1)
    try:
        prepare(PrepConfig(str(src), str(ref), codec="tiny", segment_s=1.0, workers=0, progress=False,
                           valid_fraction=0.3, batch_size=2))
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "two"
    sha = {r: hashlib.sha256((src / r).read_bytes()).hexdigest() for r in rels if r != "silence.wav"}
    shas0 = {s for r, s in sha.items() if rank_of(r, 2) == 0}
    shas1 = sorted({s for r, s in sha.items() if rank_of(r, 2) == 1} - shas0)  # music only rank 1 tokenizes
    assert len(shas1) >= 2  # so that a kill after its first file leaves work undone
    manifest1 = Rank(1, 2).manifest(out / ".work")
    launcher = _launch(src, out)
    try:
        rank1 = _rank_process(launcher, 1)
        t0 = time.monotonic()  # kill rank 1 once one of its files is done
        while not any((out / ".work" / f"{s}.json").exists() for s in shas1) and time.monotonic() - t0 < 600:
            time.sleep(0.1)
        rank1.send_signal(signal.SIGKILL)
        first_log = launcher.communicate(timeout=300)[0]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0, first_log[-3000:]
    done1 = [s for s in shas1 if (out / ".work" / f"{s}.json").exists()]
    assert done1 and len(done1) < len(shas1) and not manifest1.exists(), "rank 1 was not killed halfway"
    assert not (out / "dataset_dict.json").exists()

    launcher = _launch(src, out)
    log = launcher.communicate(timeout=900)[0]
    assert launcher.returncode == 0, log[-3000:]
    report = json.loads((out / "prep_report.json").read_text())
    # two processes really ran, each on its share of the files
    assert [r["rank"] for r in report["ranks"]] == [0, 1] and {r["world_size"] for r in report["ranks"]} == {2}
    assert len({r["pid"] for r in report["ranks"]}) == 2 and all(r["files"] >= 3 for r in report["ranks"])
    # rank 1 resumed: what it had written is reused, the rest made now
    assert report["ranks"][1]["reused"] >= len(done1) and report["ranks"][1]["tokenized"] >= 1
    for r in (0, 1):
        assert Rank(r, 2).manifest(out / ".work").is_file()

    want = json.loads((ref / "prep_report.json").read_text())
    assert report["skipped"] == want["skipped"] and [s["source"] for s in report["skipped"]] == ["silence.wav"]
    assert report["duplicates"] == want["duplicates"] and len(want["duplicates"]) == 1
    assert report["segments"] == want["segments"] and want["segments"]["valid"] > 0
    assert _rows(out) == _rows(ref)  # same rows, codes, metadata and split
