"""Corpus preparation: a folder of audio files -> a tokenized Hugging Face dataset.

This module owns the job (config, ranks, resume, splits, assembly); the per-file work is in
:mod:`audiogen.data.prep_files`, labels and captions in :mod:`audiogen.data.labels`.

``prepare(PrepConfig(audio_dir, out))`` (the ``audiogen prep`` command) walks
``audio_dir``, decodes every file the audio layer reads, cuts it into segments, tokenizes
them with a codec and saves a :class:`datasets.DatasetDict` to ``out`` with
``save_to_disk``.

Dataset schema (``dataset_features(K)``), one row per segment, splits ``train`` and
``valid`` made by source file (no recording in both):

============  ======================  ==================================================
column        type                    meaning
============  ======================  ==================================================
id            string                  ``<sha256[:16]>-<segment index:05d>``, unique
source        string                  path relative to AUDIO_DIR (posix), first of duplicates
sha256        string                  of the source file's bytes
start_s       float64                 segment start in the source (seconds)
duration_s    float64                 segment length (seconds; the tail may be shorter)
codec         string                  ``json.dumps(codec.describe(), sort_keys=True)``
codes         int16 [K][T]            ``K = num_codebooks``, ``T = ceil(duration * frame_rate)``
caption       string                  sidecar/captions-file text, or composed from metadata
genre         string | None           from a sidecar, captions file or tag; never guessed
mood          string | None           from a sidecar or captions file
bpm           float32 | None          a sidecar's/captions file's ``beat_bpm`` or ``bpm`` (exact, e.g.
                                      rendered scores), else estimated on the segment
key           string | None           e.g. ``"D minor"``: a sidecar's/captions file's ``key``, else
                                      estimated on the segment (Temperley profiles on chroma)
instruments   list[string]            from a sidecar, captions file or tag (may be empty), each member's
                                      family added first (``labels.with_families``: violin -> strings)
beats         list[float32]           beat times in seconds from the segment's start, tracked at the
                                      ``bpm`` label (else the estimate); empty without a tempo. The
                                      LM's beat grid is made from them (``beat_grid`` in its config)
license       string | None           sidecar/captions ``license`` or the file's tag
split         string                  ``"train"`` or ``"valid"``
title         string | None           extra: sidecar or tag
artist        string | None           extra: sidecar or tag
attribution   string | None           extra: credit line to reproduce (sidecar/captions)
============  ======================  ==================================================

Also in ``out``: ``prep_config.json`` (codec description, segment/hop seconds, seed,
counts) and ``prep_report.json`` (skipped files with reasons, duplicates, figures).

How it stays correct when killed: every source file's result (codes + per-segment
analysis) is written atomically to ``out/.work/<sha256>.npz`` + ``.json`` as soon as
its last segment is tokenized; a rerun skips files whose shard exists, and the dataset
is assembled at the end, deterministically (sorted by source), from the shards alone.
A file longer than ``LONG_FILE_FACTOR * part_s`` comes in parts
(:func:`~audiogen.data.prep_files._plan_parts`), so memory is bounded whatever a file's length; its shard is written
after its last part. Codes of a segment depend only on its audio: full-length segments are always encoded in
batches of the same shape (padded with silent dummy rows), so a resumed run's batches
give the same codes as an uninterrupted run's.

Several processes (``accelerate launch``/``torchrun``, on one machine or many): each takes
the files whose path hash is its rank (:func:`rank_of`), writes their shards into the same
``out/.work`` and its report to ``out/.work/ranks/``; rank 0 combines the reports
(:func:`_combine`) into exactly the dataset one process would write.

Duplicates (same file bytes) are tokenized once: the first path in sorted order is
kept, the others are listed under ``duplicates`` in the report (not an error).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiogen.data.labels import ANALYSIS_HOP, ANALYSIS_SR, compose_caption, load_captions, with_families
from audiogen.data.prep_files import SHARD_VERSION, SILENT_SEGMENTS, _Runner, _Task, _Tokenizer
from audiogen.errors import AudiogenError


#: Exit codes of ``audiogen prep``.
EXIT_OK, EXIT_USER_ERROR, EXIT_SKIPPED = 0, 1, 3


def dataset_features(num_codebooks: int):
    """The :class:`datasets.Features` of a prepared dataset with ``num_codebooks`` codebooks."""
    from datasets import Features, List, Value

    s = Value("string")
    return Features({
        "id": s, "source": s, "sha256": s,
        "start_s": Value("float64"), "duration_s": Value("float64"),
        "codec": s,
        "codes": List(List(Value("int16")), length=num_codebooks),
        "caption": s, "genre": s, "mood": s,
        "bpm": Value("float32"), "key": s,
        "instruments": List(s),
        "beats": List(Value("float32")),
        "license": s, "split": s,
        "title": s, "artist": s, "attribution": s,
    })


def default_workers(device: str) -> int:
    """Worker processes: all cores. With a GPU they decode and analyse while the main process
    tokenizes in batches; on CPU each one also tokenizes its own files with single-threaded
    torch (:func:`~audiogen.data.prep_files._tokenize_in_worker`): processes over files scale where the codec's intra-op
    threads do not (docs/prep.md, Throughput)."""
    return os.cpu_count() or 1


@dataclass
class PrepConfig:
    audio_dir: str
    out: str
    codec: str = "tiny"
    bandwidth: float | None = None
    codec_weights: str | None = None
    device: str = "cpu"
    segment_s: float = 30.0
    #: distance between segment starts; None = segment_s (no overlap)
    hop_s: float | None = None
    #: a tail (or a whole file) shorter than this is dropped; None = segment_s / 3
    min_segment_s: float | None = None
    captions: str | None = None
    #: decoding/analysis processes; 0 = in the main process; None = default_workers(device)
    workers: int | None = None
    #: full-length segments per codec call; None = the codec's ``preferred_batch`` on the device (8 on a
    #: GPU; on CPU 8 for a codec with an LSTM, whose batch runs through it together, else 1)
    batch_size: int | None = None
    seed: int = 0
    valid_fraction: float = 0.1
    #: a file (or segment) whose sample peak is below this is silent
    silence_dbfs: float = -70.0
    #: a file longer than LONG_FILE_FACTOR * part_s is decoded, analysed and handed over in
    #: parts of about this many seconds (whole hops), so memory does not grow with file length
    part_s: float = 300.0
    progress: bool = True
    #: fill genre/mood/instruments a file's metadata lacks from the musicnn tagger (audiogen.metrics.tagger)
    tag_labels: bool = False

    def __post_init__(self):
        if self.hop_s is None:
            self.hop_s = self.segment_s
        if self.min_segment_s is None:
            self.min_segment_s = self.segment_s / 3
        for name in ("segment_s", "hop_s", "min_segment_s", "part_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise AudiogenError(f"--{name[:-2].replace('_', '-')} must be a positive number of seconds, got {v}")
        if self.min_segment_s > self.segment_s:
            raise AudiogenError(f"--min-segment ({self.min_segment_s:g}s) is longer than --segment ({self.segment_s:g}s)")
        if not math.isfinite(self.silence_dbfs):
            raise AudiogenError(f"--silence-db must be a number of dBFS, got {self.silence_dbfs}")
        if not 0 <= self.valid_fraction < 1:
            raise AudiogenError(f"--valid-fraction must be in [0, 1), got {self.valid_fraction}")
        if self.batch_size is not None and self.batch_size < 1:
            raise AudiogenError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers is None:
            self.workers = default_workers(self.device)
        if self.workers < 0:
            raise AudiogenError(f"--workers must be >= 0, got {self.workers}")


# ----------------------------------------------------------------------------- splits and assembly


def assign_splits(shas: list[str], seed: int, valid_fraction: float) -> dict[str, str]:
    """Source-level split from a hash of (seed, content hash): a file keeps its split when
    others are added. There is always a train file, and with >= 2 files and
    ``valid_fraction > 0`` a valid one (the files with the extreme hash scores move)."""
    score = {s: int(hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()[:15], 16) / 16**15 for s in shas}
    split = {s: "valid" if score[s] < valid_fraction else "train" for s in shas}
    if shas and "train" not in split.values():
        split[max(shas, key=score.get)] = "train"
    if len(shas) >= 2 and valid_fraction > 0 and "valid" not in split.values():
        split[min(shas, key=score.get)] = "valid"
    return split


def _assemble(out: Path, work: Path, kept: list[tuple[str, str]], metas: dict[str, dict], codec_json: str,
              num_codebooks: int, seed: int, valid_fraction: float, progress: bool = True) -> dict[str, int]:
    """Build and save the DatasetDict from the shards of ``kept`` [(source, sha)], sorted."""
    from datasets import Dataset, DatasetDict

    from audiogen.progress import datasets_bars

    splits = assign_splits([sha for _, sha in kept], seed, valid_fraction)
    cols = {k: [] for k in dataset_features(num_codebooks)}
    per_split = {"train": [], "valid": []}
    for source, sha in sorted(kept):
        shard = json.loads((work / f"{sha}.json").read_text())
        with np.load(work / f"{sha}.npz") as z:
            codes = [z[f"arr_{i}"] for i in range(len(shard["segments"]))]
        meta = metas[sha]
        for i, (seg, c) in enumerate(zip(shard["segments"], codes)):
            per_split[splits[sha]].append(len(cols["id"]))
            bpm, key = meta.get("bpm") or seg["bpm"], meta.get("key") or seg["key"]  # labels win over estimates
            row = {
                "id": f"{sha[:16]}-{i:05d}", "source": source, "sha256": sha,
                "start_s": seg["start_s"], "duration_s": seg["duration_s"], "codec": codec_json, "codes": c,
                "caption": meta.get("caption") or compose_caption(meta, bpm, key),
                "genre": meta.get("genre"), "mood": meta.get("mood"), "bpm": bpm, "key": key,
                "instruments": with_families(meta.get("instruments", [])), "beats": seg.get("beats", []),
                "license": meta.get("license"),
                "split": splits[sha], "title": meta.get("title"), "artist": meta.get("artist"),
                "attribution": meta.get("attribution"),
            }
            for k, v in row.items():
                cols[k].append(v)
    features = dataset_features(num_codebooks)
    dd = DatasetDict({
        name: Dataset.from_dict({k: [v[j] for j in idx] for k, v in cols.items()}, features=features)
        for name, idx in per_split.items()
    })
    # Save beside, then swap in: a kill during saving leaves either the old dataset or none.
    tmp = out / ".work" / "dataset.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    with datasets_bars(progress):
        # shards of <= 500 MB; an empty split still gets one (datasets cannot load zero shards)
        shards = {name: max(1, math.ceil(ds.data.nbytes / 500e6)) for name, ds in dd.items()}
        dd.save_to_disk(str(tmp), num_shards=shards)
    for name in ("dataset_dict.json", "train", "valid"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for name in ("train", "valid", "dataset_dict.json"):  # dataset_dict.json last: marks it complete
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)
    return {k: len(v) for k, v in per_split.items()}


# ----------------------------------------------------------------------------- the job


def _settings(cfg: PrepConfig, codec_desc: dict) -> dict:
    """What shards depend on; a .work folder made with other settings is refused."""
    return {"shard_version": SHARD_VERSION, "codec": codec_desc, "segment_s": cfg.segment_s, "hop_s": cfg.hop_s,
            "min_segment_s": cfg.min_segment_s, "silence_dbfs": cfg.silence_dbfs,
            "analysis": {"sample_rate": ANALYSIS_SR, "hop": ANALYSIS_HOP}}


def prepare(cfg: PrepConfig, codec=None) -> dict:
    """Run the whole preparation; returns the report (also written to ``out/prep_report.json``).

    ``codec``: an already-loaded codec (tests, benchmarks); default: load ``cfg.codec``.

    Under a launcher (``accelerate launch``, ``torchrun``: ``WORLD_SIZE`` > 1 in the
    environment) each process prepares its share of the files (:func:`rank_of`) and writes its
    report to ``out/.work/ranks/``; rank 0 then waits for the others' and writes the dataset
    (:func:`merge_ranks`). The other ranks return their own report.
    """
    from audiogen.audio.io import find_audio_files
    from audiogen.devices import keep_freed_memory
    from audiogen.files import atomic_write_text, make_dir

    t_start = time.perf_counter()
    keep_freed_memory()  # the codec's long windows: see its docstring
    rank = Rank.from_env()
    audio_dir, out = Path(cfg.audio_dir), Path(cfg.out)
    if not audio_dir.is_dir():
        raise AudiogenError(f"{audio_dir}: not a folder" if audio_dir.exists() else f"{audio_dir}: no such folder")
    if out.exists() and not out.is_dir():
        raise AudiogenError(f"--out {out}: exists and is not a folder")
    files = find_audio_files(audio_dir)
    if out.resolve().is_relative_to(audio_dir.resolve()):
        files = [f for f in files if not f.resolve().is_relative_to(out.resolve())]
    if not files:
        raise AudiogenError(f"{audio_dir}: no audio files found (looked for the audio layer's extensions)")
    captions = load_captions(cfg.captions, audio_dir) if cfg.captions else {}

    if codec is None:
        from audiogen.codec.base import load_codec

        codec = load_codec(cfg.codec, bandwidth=cfg.bandwidth, weights=cfg.codec_weights,
                           device=rank.device(cfg.device))
    if cfg.batch_size is None:
        cfg = dataclasses.replace(cfg, batch_size=codec.preferred_batch)
    codec_desc = codec.describe()
    work = out / ".work"
    make_dir(work)
    settings = _settings(cfg, codec_desc)
    settings_file = work / "settings.json"
    if settings_file.exists():
        old = json.loads(settings_file.read_text())
        if old != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if old.get(k) != json.loads(json.dumps(settings[k])))
            raise AudiogenError(
                f"{out} holds a preparation made with other settings ({', '.join(changed)} differ); "
                f"use a new --out folder, or delete {work} to start over"
            )
    else:
        atomic_write_text(settings_file, json.dumps(settings, indent=2))

    rels = [f.relative_to(audio_dir).as_posix() for f in files]
    mine = [(f, r) for f, r in zip(files, rels) if rank_of(r, rank.world_size) == rank.rank]
    tasks = [_Task(str(f), r, str(work), codec.sample_rate, codec.channels, cfg.segment_s, cfg.hop_s,
                   cfg.min_segment_s, cfg.silence_dbfs, cfg.part_s, captions.get(r, {}), cfg.tag_labels)
             for f, r in mine]
    result = _prepare_files(cfg, tasks, codec, work, t_start, rank)
    job = _Job(cfg, audio_dir, out, work, rels, captions, codec_desc, codec.num_codebooks, codec.frame_rate)
    if rank.world_size == 1:
        return _finish(job, [result], t_start)
    result.update(rank=rank.rank, world_size=rank.world_size, fingerprint=_fingerprint(job, files),
                  host=platform.node(), pid=os.getpid())
    make_dir(rank.manifest(work).parent)
    atomic_write_text(rank.manifest(work), json.dumps(result))  # written last: this rank is done
    if rank.rank != 0:
        return _rank_report(result)
    return _finish(job, merge_ranks(work, rank.world_size, result), t_start)


# ----------------------------------------------------------------------------- one process's files


def _prepare_files(cfg: PrepConfig, tasks: list[_Task], codec, work: Path, t_start: float, rank: "Rank") -> dict:
    """Decode, analyse and tokenize ``tasks`` (shards into ``work``). Returns ``{entries, counts}``:
    one entry per file, ``{source, sha256, status: kept|skipped|duplicate, reason, meta, audio_s}``,
    from which :func:`_combine` makes the dataset's file list, whatever process did which file."""
    # Long on purpose: the loop over the workers' results and its bookkeeping (skip, keep, parts of
    # long files, progress) share the counters below.
    from audiogen.files import atomic_write_text
    from audiogen.progress import progress_bar

    tok = _Tokenizer(codec, work, round(cfg.segment_s * codec.sample_rate), cfg.batch_size)
    entries: list[dict] = []
    first_of: set[str] = set()
    counts = {"tokenized": 0, "reused": 0}
    long_files: dict[str, dict] = {}  # sha -> progress of a file coming in parts
    seen_s = 0.0  # audio decoded so far, parts included (progress bar)
    desc = "prep" if rank.world_size == 1 else f"prep rank {rank.rank}/{rank.world_size}"
    bar = progress_bar(total=len(tasks), unit="file", desc=desc, disable=not cfg.progress, mininterval=0.5,
                       dynamic_ncols=True)

    def skip(rel: str, sha: str | None, reason: str, cacheable: bool) -> None:
        entries.append({"source": rel, "sha256": sha, "status": "skipped", "reason": reason})
        if cacheable:
            atomic_write_text(work / f"{sha}.json", json.dumps({"version": SHARD_VERSION, "skipped": reason}))

    def progress(seconds: float, refresh: bool = False) -> None:
        nonlocal seen_s
        seen_s += seconds
        elapsed = time.perf_counter() - t_start
        bar.set_postfix_str(f"{seen_s / 3600:.2f} h audio, {seen_s / max(elapsed, 1e-9):.0f}x realtime", refresh=refresh)

    def keep(rel: str, sha: str, meta: dict, seconds: float) -> None:
        entries.append({"source": rel, "sha256": sha, "status": "kept", "meta": meta, "audio_s": seconds})

    def part_done(res: dict) -> None:
        sha = res["sha256"]
        lf = long_files[sha]
        lf["left"] -= 1
        if lf["reason"] is None:
            if res["status"] == "part":
                tok.add(sha, res["wav"], res["segments"], codec.sample_rate, offset=res["offset"])
                lf["segments"] += len(res["segments"])
                lf["silent"] += res["silent_segments"]
                lf["end_s"] = max(lf["end_s"], res["end_s"])
                lf["peak"] = max(lf["peak"], res["peak_dbfs"])
                lf["bounds"] += res["bounds"]
                progress(res["owned_s"], refresh=True)  # a long file shows progress part by part
            else:  # one bad part skips the whole file
                lf["reason"], lf["cacheable"] = res["reason"], res["status"] == "skipped"
                tok.discard(sha)
        if lf["left"]:
            return
        del long_files[sha]
        bar.update(1)
        if lf["reason"] is None and not lf["segments"]:  # the reasons a whole-file decode gives
            if lf["peak"] < cfg.silence_dbfs:
                lf["reason"] = f"silent (peak {lf['peak']:.1f} dBFS < {cfg.silence_dbfs:g} dBFS)"
            elif not lf["bounds"]:
                lf["reason"] = f"too short ({lf['end_s']:.2f}s < minimum segment {cfg.min_segment_s:g}s)"
            else:
                lf["reason"] = SILENT_SEGMENTS
            lf["cacheable"] = True
        if lf["reason"] is not None:
            tok.discard(sha)
            skip(lf["rel"], sha, lf["reason"], lf["cacheable"])
            return
        tok.close(sha, {"duration_s": lf["end_s"], "silent_segments": lf["silent"]})
        counts["tokenized"] += 1
        keep(lf["rel"], sha, lf["meta"], lf["end_s"])

    # On CPU the workers tokenize too (one file per process, single-threaded torch): the codec is
    # most of the work and scales better over processes than over intra-op threads. On a GPU they
    # only decode, and the main process batches every file's segments through the device.
    in_workers = cfg.workers > 0 and codec.device.type == "cpu"
    runner = _Runner(tasks, cfg.workers, codec if in_workers else None, cfg.batch_size)
    worker_tokens = 0
    for res in runner:
        if "part" in res:
            part_done(res)
            continue
        rel, sha, status = res["rel"], res.get("sha256"), res["status"]
        if sha and sha in first_of:
            bar.update(1)
            entries.append({"source": rel, "sha256": sha, "status": "duplicate"})
            continue
        if sha:
            first_of.add(sha)
        if status == "long":  # its parts go next; the file counts as done with its last part
            long_files[sha] = {"rel": rel, "meta": res["meta"], "left": len(res["parts"]), "segments": 0,
                               "silent": 0, "end_s": 0.0, "peak": float("-inf"), "bounds": 0, "reason": None,
                               "cacheable": False}
            runner.insert(res["parts"])
            continue
        bar.update(1)
        if status in ("error", "skipped"):
            skip(rel, sha, res["reason"], status == "skipped" and not res.get("cached"))
            continue
        if status == "cached":
            counts["reused"] += 1
        elif "tokenized" in res:  # a worker wrote its shard
            counts["tokenized"] += 1
            worker_tokens += res["tokenized"]
        else:
            counts["tokenized"] += 1
            tok.add(sha, res["wav"], res["segments"], codec.sample_rate)
            tok.close(sha, {"duration_s": res["audio_s"], "silent_segments": res["silent_segments"]})
        keep(rel, sha, res["meta"], res["audio_s"])
        progress(res["audio_s"])
    tok.flush()
    bar.close()
    return {"entries": entries, "counts": {**counts, "files": len(tasks), "tokens": tok.tokens + worker_tokens,
                                           "wall_s": round(time.perf_counter() - t_start, 2)}}


# ----------------------------------------------------------------------------- several processes


@dataclass(frozen=True)
class Rank:
    """This process's place among the processes preparing one corpus (``RANK``/``WORLD_SIZE``
    as ``torchrun`` and ``accelerate launch`` set them; 0 of 1 when run alone)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Rank":
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise AudiogenError("RANK / WORLD_SIZE / LOCAL_RANK in the environment must be integers") from None
        if world < 1 or not 0 <= rank < world:
            raise AudiogenError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
        return cls(rank, world, local)

    def device(self, device: str) -> str:
        """``cuda`` means this process's own GPU (``cuda:LOCAL_RANK``) when several share a machine."""
        return f"cuda:{self.local_rank}" if self.world_size > 1 and str(device) == "cuda" else device

    def manifest(self, work: Path) -> Path:
        return work / "ranks" / f"rank-{self.rank:05d}-of-{self.world_size:05d}.json"


def rank_of(rel: str, world_size: int) -> int:
    """The process that prepares source ``rel`` (its path under AUDIO_DIR): a hash of the path,
    so a file goes to the same process on every run and machine, and a rerun after a kill
    finds its shards where it left them."""
    return int(hashlib.sha256(rel.encode()).hexdigest()[:16], 16) % world_size


@dataclass
class _Job:
    """What every process of one preparation shares (the same on each)."""
    cfg: PrepConfig
    audio_dir: Path
    out: Path
    work: Path
    rels: list[str]
    captions: dict
    codec_desc: dict
    num_codebooks: int
    frame_rate: float


def _fingerprint(job: _Job, files: list[Path]) -> str:
    """Names the corpus and settings a rank's report was made for: a report left by an earlier
    run over other files, captions or settings is not merged."""
    h = hashlib.sha256(json.dumps([_settings(job.cfg, job.codec_desc), job.captions], sort_keys=True).encode())
    for f, rel in zip(files, job.rels):
        st = f.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def merge_ranks(work: Path, world_size: int, own: dict, poll_s: float = 2.0) -> list[dict]:
    """Rank 0: the reports of all ``world_size`` ranks (its own, ``own``, plus the others' from
    ``work/ranks/``, waiting for them). Ranks that are not done yet are waited for; the
    launcher ends this process if one of them fails."""
    results = {0: own}
    said = 0.0
    while len(results) < world_size:
        for r in range(1, world_size):
            path = Rank(r, world_size).manifest(work)
            if r in results or not path.is_file():
                continue
            try:
                res = json.loads(path.read_text())
            except ValueError:  # written atomically, so only a foreign file gets here
                raise AudiogenError(f"{path}: not a rank report") from None
            if res.get("fingerprint") == own["fingerprint"]:
                results[r] = res
        if len(results) < world_size:
            if time.monotonic() - said > 300:
                missing = [r for r in range(world_size) if r not in results]
                print(f"prep rank 0: waiting for rank(s) {', '.join(map(str, missing))} of {world_size}",
                      file=sys.stderr, flush=True)
                said = time.monotonic()
            time.sleep(poll_s)
    return [results[r] for r in range(world_size)]


def _rank_report(result: dict) -> dict:
    entries = result["entries"]
    return {"rank": result["rank"], "world_size": result["world_size"], **result["counts"],
            "files_kept": sum(e["status"] == "kept" for e in entries),
            "skipped": [e for e in entries if e["status"] == "skipped"]}


def _combine(results: list[dict]) -> tuple[list[tuple[str, str]], dict, list[dict], list[dict], float]:
    """The files of all ranks as one process would have seen them, in sorted path order: the
    first path of each content hash is the one used, the later ones are duplicates of it.
    Returns (kept [(source, sha)], metas {sha: meta}, skipped, duplicates, kept audio seconds)."""
    kept, metas, skipped, duplicates, first_of, audio_s = [], {}, [], [], {}, 0.0
    for e in sorted((e for r in results for e in r["entries"]), key=lambda e: e["source"]):
        sha = e["sha256"]
        if sha and sha in first_of:
            duplicates.append({"source": e["source"], "duplicate_of": first_of[sha], "sha256": sha})
            continue
        if e["status"] == "duplicate":  # its first copy went through the same process: always seen before
            raise AudiogenError(f"rank reports disagree about {e['source']} (a duplicate of a file no rank used)")
        if sha:
            first_of[sha] = e["source"]
        if e["status"] == "skipped":
            skipped.append({"source": e["source"], "reason": e["reason"]})
        else:
            kept.append((e["source"], sha))
            metas[sha] = e["meta"]
            audio_s += e["audio_s"]
    return kept, metas, skipped, duplicates, audio_s


def _finish(job: _Job, results: list[dict], t_start: float) -> dict:
    """Write the dataset, ``prep_config.json`` and ``prep_report.json`` from the ranks' results."""
    from audiogen.files import atomic_write_text

    cfg, out, work = job.cfg, job.out, job.work
    kept, metas, skipped, duplicates, audio_s = _combine(results)
    if not kept:
        atomic_write_text(out / "prep_report.json", json.dumps(
            {"audio_dir": str(job.audio_dir), "files_found": len(job.rels), "files_kept": 0,
             "skipped": skipped, "duplicates": duplicates}, indent=2))
        raise AudiogenError(f"{job.audio_dir}: none of the {len(job.rels)} audio files could be used "
                            f"(first problem: {skipped[0]['source']}: {skipped[0]['reason']})")
    # every shard is checked before anything is replaced: a rank report naming a missing shard
    # (a .work folder copied in part) fails here, not halfway through assembling
    missing = [src for src, sha in kept if not ((work / f"{sha}.json").is_file() and (work / f"{sha}.npz").is_file())]
    if missing:
        raise AudiogenError(f"{work}: the shards of {len(missing)} kept files are missing (first: {missing[0]}); "
                            "rerun the same command to make them again")
    sizes = _assemble(out, work, kept, metas, json.dumps(job.codec_desc, sort_keys=True), job.num_codebooks,
                      cfg.seed, cfg.valid_fraction, cfg.progress)
    silent_segments = sum(json.loads((work / f"{sha}.json").read_text()).get("silent_segments", 0) for _, sha in kept)
    counts = {k: sum(r["counts"][k] for r in results) for k in ("tokenized", "reused", "tokens")}
    report = {
        "audio_dir": str(job.audio_dir), "files_found": len(job.rels), "files_kept": len(kept),
        "files_tokenized_this_run": counts["tokenized"], "files_reused_from_shards": counts["reused"],
        "segments": sizes, "silent_segments_dropped": silent_segments,
        "audio_hours": round(audio_s / 3600, 4), "tokens_this_run": counts["tokens"],
        "wall_s": round(time.perf_counter() - t_start, 2),
        "skipped": skipped, "duplicates": duplicates,
        "captions_unmatched": sorted(set(job.captions) - set(job.rels)),
    }
    if len(results) > 1:
        report["ranks"] = [{k: r.get(k) for k in ("rank", "world_size", "host", "pid")} | r["counts"] for r in results]
    config = {
        "codec": job.codec_desc, "segment_s": cfg.segment_s, "hop_s": cfg.hop_s, "min_segment_s": cfg.min_segment_s,
        "seed": cfg.seed, "valid_fraction": cfg.valid_fraction, "silence_dbfs": cfg.silence_dbfs,
        "num_codebooks": job.num_codebooks, "frame_rate": job.frame_rate,
        "counts": {"files": len(kept), "skipped": len(skipped), "duplicates": len(duplicates),
                   "segments": sizes, "audio_hours": report["audio_hours"]},
        "captions": cfg.captions, "audiogen_python": sys.version.split()[0],
    }
    atomic_write_text(out / "prep_config.json", json.dumps(config, indent=2))
    atomic_write_text(out / "prep_report.json", json.dumps(report, indent=2))
    return report
