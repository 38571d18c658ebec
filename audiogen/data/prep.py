"""Corpus preparation: a folder of audio files -> a tokenized Hugging Face dataset.

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
bpm           float32 | None          estimated on the segment (librosa beat tracking)
key           string | None           e.g. ``"D minor"`` (Temperley profiles on chroma)
instruments   list[string]            from a sidecar or captions file (may be empty)
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
(:func:`_plan_parts`), so memory is bounded whatever a file's length; its shard is written
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

import csv
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError

#: Bumped when the content of shards changes meaning; a .work folder from another version is refused.
SHARD_VERSION = 4  # 2: onset envelope with a fixed dB floor; 3: Temperley key profiles; 4: metrical tempo
#: Sample rate and hop of the librosa analysis (tempo, key).
ANALYSIS_SR = 22_050
ANALYSIS_HOP = 256
#: A file longer than this many ``part_s`` is decoded in parts (see :func:`_plan_parts`).
LONG_FILE_FACTOR = 1.5
#: Audio read on each side of a part beyond its segments: covers the resampling filter and
#: the analysis frames (4096-point chroma STFT) that reach past a segment's edge.
PART_MARGIN_S = 1.0
#: Segments are analysed in runs spanning at most this long, with this much context each side.
ANALYSIS_CHUNK_S = 60.0
ANALYSIS_MARGIN_S = 0.5
#: Exit codes of ``audiogen prep``.
EXIT_OK, EXIT_USER_ERROR, EXIT_SKIPPED = 0, 1, 3

_KEY_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
# Keys are matched with Temperley's (2001) profiles (audiogen/data/estimators.py): on 20 rendered music21
# pieces with known keys they scored 0.950 (MIREX weighted) on this chroma vs 0.715 for
# Krumhansl-Kessler's (docs/prep.md).
#: Metadata fields a sidecar or captions file may carry.
META_FIELDS = ("caption", "title", "artist", "genre", "mood", "instruments", "license", "attribution")


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
        "license": s, "split": s,
        "title": s, "artist": s, "attribution": s,
    })


def default_workers(device: str) -> int:
    """Worker processes: all cores. With a GPU they decode and analyse while the main process
    tokenizes in batches; on CPU each one also tokenizes its own files with single-threaded
    torch (:func:`_tokenize_in_worker`): processes over files scale where the codec's intra-op
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
    #: full-length segments per codec call; None = 1 on CPU, 8 on a GPU. On CPU, batches of 8 were
    #: slower than one segment at a time (encodec_24khz, 2 workers, quiet 2-core VM: 60 s vs 39 s
    #: for 2 tracks; the naive loop 41-45 s): their activations outgrow the caches
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
        if self.batch_size is None:
            self.batch_size = 1 if str(self.device).startswith("cpu") else 8
        if self.batch_size < 1:
            raise AudiogenError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers is None:
            self.workers = default_workers(self.device)
        if self.workers < 0:
            raise AudiogenError(f"--workers must be >= 0, got {self.workers}")


# ----------------------------------------------------------------------------- analysis


def estimate_key(chroma_mean: np.ndarray) -> str | None:
    """Profile matching (Temperley's profiles): the key whose profile correlates best with a mean chroma [12]."""
    from audiogen.data.estimators import key_from_chroma

    return key_from_chroma(chroma_mean, "temperley", names=_KEY_NAMES, min_std=1e-6)


def estimate_bpm(onset_env: np.ndarray, sr: int = ANALYSIS_SR, hop: int = ANALYSIS_HOP) -> float | None:
    """Tempo of the metre's beat from an onset-strength envelope (None under 4 s or without onsets):
    :func:`audiogen.data.estimators.tempo_metrical`, measured against rendered pieces in docs/prep.md."""
    from audiogen.data.estimators import tempo_metrical

    return tempo_metrical(onset_env, sr, hop)


def _analysis_features(mono: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """``mono: [N]`` at ``sr`` -> (onset envelope [F], chroma [12, F]) at ANALYSIS_SR / ANALYSIS_HOP."""
    import librosa

    from audiogen.audio.io import resample

    y = resample(mono[None], sr, ANALYSIS_SR)[0] if sr != ANALYSIS_SR else mono
    # librosa's default floors the mel power at 80 dB below the loudest frame of the whole
    # signal; a fixed floor (top_db=None: amin, -100 dB) keeps each frame's envelope
    # independent of the rest of the file, so a long file analysed in parts gets the same
    # tempo as if analysed whole
    mel = librosa.feature.melspectrogram(y=y, sr=ANALYSIS_SR, hop_length=ANALYSIS_HOP)
    env = librosa.onset.onset_strength(S=librosa.power_to_db(mel, top_db=None), sr=ANALYSIS_SR,
                                       hop_length=ANALYSIS_HOP)
    # tuning=0: skip librosa's pitch-tracking tuning estimate (the slowest step); a mean chroma
    # over a segment is robust to the few cents a recording may be off
    chroma = librosa.feature.chroma_stft(y=y, sr=ANALYSIS_SR, hop_length=ANALYSIS_HOP, n_fft=4096, tuning=0.0)
    return env, chroma


def segment_bounds(n: int, sr: int, segment_s: float, hop_s: float, min_segment_s: float) -> list[tuple[int, int]]:
    """(start, length) in samples of each segment of ``n`` samples; tails shorter than
    ``min_segment_s`` are dropped and nothing is padded. A tail wholly inside the previous
    segment (overlapping hops) is not repeated."""
    seg, hop, mn = round(segment_s * sr), max(1, round(hop_s * sr)), round(min_segment_s * sr)
    out: list[tuple[int, int]] = []
    for s in range(0, n, hop):
        length = min(seg, n - s)
        if length < mn or (out and out[-1][0] + out[-1][1] >= n):
            break
        out.append((s, length))
    return out


# ----------------------------------------------------------------------------- metadata


def _first(v):
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    v = None if v is None else str(v).strip()
    return v or None


def source_tags(path: Path) -> dict:
    """A source file's title, artist, album, genre and license tags (mutagen); {} when none. (Tags of
    files audiogen writes: ``finishing.read_tags``.)"""
    import mutagen

    try:
        f = mutagen.File(str(path), easy=True)
    except Exception:  # tags are optional; an unreadable tag block is not a reason to skip
        return {}
    if f is None or not f.tags:
        return {}
    tags = {k.lower(): v for k, v in f.tags.items()}
    out = {k: _first(tags.get(k)) for k in ("title", "artist", "album", "genre")}
    out["license"] = _first(tags.get("license")) or _first(tags.get("copyright"))
    return {k: v for k, v in out.items() if v}


def _clean_meta(d: dict, where: str) -> dict:
    out = {}
    for k in META_FIELDS:
        v = d.get(k)
        if v is None or v == "":
            continue
        if k == "instruments":
            items = v.split(",") if isinstance(v, str) else v
            if not isinstance(items, (list, tuple)):
                raise AudiogenError(f"{where}: 'instruments' must be a list or a comma-separated string")
            out[k] = [str(x).strip() for x in items if str(x).strip()]
        else:
            out[k] = str(v).strip()
    return out


def read_sidecar(path: Path) -> dict:
    """Metadata from ``TRACK.json`` (any META_FIELDS) or ``TRACK.txt`` (the caption) beside ``TRACK.ext``."""
    meta = {}
    js, txt = path.with_suffix(".json"), path.with_suffix(".txt")
    if js.is_file():
        try:
            d = json.loads(js.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise AudiogenError(f"{js}: invalid JSON sidecar ({e})") from None
        if not isinstance(d, dict):
            raise AudiogenError(f"{js}: sidecar must be a JSON object")
        meta.update(_clean_meta(d, str(js)))
    if txt.is_file():
        text = txt.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            meta["caption"] = text
    return meta


def load_captions(path: str | os.PathLike, audio_dir: Path) -> dict[str, dict]:
    """``--captions`` file (CSV with a header, or JSONL) -> {relative path: metadata}.

    Rows need ``path`` (relative to AUDIO_DIR, or absolute) and may carry any of
    ``caption, title, artist, genre, mood, instruments, license, attribution``.
    """
    p = Path(path)
    if not p.is_file():
        raise AudiogenError(f"--captions {p}: no such file")
    rows: list[dict] = []
    text = p.read_text(encoding="utf-8-sig", errors="replace")
    if p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise AudiogenError(f"{p}:{i}: invalid JSON line ({e})") from None
    elif p.suffix.lower() in (".csv", ".tsv"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if p.suffix.lower() == ".tsv" else ","))
    else:
        raise AudiogenError(f"--captions {p}: expected a .csv, .tsv or .jsonl file")
    out = {}
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("path"):
            raise AudiogenError(f"{p}: row {i} has no 'path'")
        key = Path(row["path"])
        if key.is_absolute():
            try:
                key = key.resolve().relative_to(audio_dir.resolve())
            except ValueError:
                raise AudiogenError(f"{p}: row {i}: {key} is not inside {audio_dir}") from None
        out[key.as_posix()] = _clean_meta(row, f"{p} row {i}")
    return out


def compose_caption(meta: dict, bpm: float | None, key: str | None) -> str:
    """A caption from the facts we have, e.g. "Awakening by Max McCracken, 92 bpm, in D minor"."""
    parts = []
    head = meta.get("title") or ""
    if meta.get("artist"):
        head = f"{head} by {meta['artist']}" if head else f"music by {meta['artist']}"
    if head:
        parts.append(head)
    for k in ("genre", "mood"):
        if meta.get(k):
            parts.append(meta[k])
    if meta.get("instruments"):
        parts.append("with " + ", ".join(meta["instruments"]))
    if bpm:
        parts.append(f"{bpm:.0f} bpm")
    if key:
        parts.append(f"in {key}")
    return ", ".join(parts) if parts else "music"


# ----------------------------------------------------------------------------- per file (worker)


@dataclass
class _Task:
    path: str
    rel: str
    work: str
    sample_rate: int
    channels: int
    segment_s: float
    hop_s: float
    min_segment_s: float
    silence_dbfs: float
    part_s: float
    extra_meta: dict
    tag_labels: bool = False


@dataclass
class _Part:
    """One part of a long file: the segments whose start sample lies in ``[lo, hi)``."""
    task: _Task
    sha: str
    index: int
    count: int
    lo: int
    hi: int
    sample_rate: int
    frames: int  # the header's frame count


def _process_file(t: _Task | _Part) -> dict:
    """:func:`_process_file_unchecked` (or :func:`_process_part`), but an unexpected failure on
    one file (a decoder or analysis bug on odd audio) skips that file, with the exception
    named, instead of ending a long job; such skips are not cached, so a rerun tries the file
    again. In a worker that tokenizes (:data:`_WORKER_CODEC`), a whole file's segments are
    tokenized and its shard written here, and the result carries no audio."""
    try:
        if isinstance(t, _Part):
            return _process_part(t)
        res = _process_file_unchecked(t)
        if _WORKER_CODEC is not None and res["status"] == "ok":
            res = _tokenize_in_worker(res, t, *_WORKER_CODEC)
        return res
    except Exception as e:  # noqa: BLE001 -- reported per file, see docstring
        res = {"rel": t.task.rel, "sha256": t.sha, "part": t.index} if isinstance(t, _Part) else {"rel": t.rel}
        return {**res, "status": "error", "reason": f"failed: {type(e).__name__}: {e}"}


def _process_file_unchecked(t: _Task) -> dict:
    """Decode + analyse one file. Returns {rel, sha256, status, ...}; status is
    ``error`` (unreadable, no hash), ``skipped`` (content-determined, cacheable),
    ``cached`` (shard exists), ``long`` (with the ``parts`` to process instead: see
    :func:`_plan_parts`) or ``ok`` (with ``wav [C, N]`` at the codec rate and segments)."""
    from audiogen.audio.io import audio_info, load_audio, sample_peak_dbfs, sha256_file

    path = Path(t.path)
    res: dict = {"rel": t.rel}
    try:
        info = audio_info(path)  # empty / missing / unreadable header: named reason before hashing
        res["sha256"] = sha = sha256_file(path)
    except (AudiogenError, OSError) as e:
        return {**res, "status": "error", "reason": _reason(e, path)}
    try:
        meta = source_tags(path)
        meta.update(read_sidecar(path))
    except AudiogenError as e:
        return {**res, "status": "error", "reason": _reason(e, path)}
    meta.update(t.extra_meta)
    if t.tag_labels:
        from audiogen.metrics.tagger import fill_missing_labels

        try:
            meta = fill_missing_labels(meta, path, t.work, sha)
        except AudiogenError as e:
            return {**res, "status": "error", "reason": _reason(e, path)}
    res["meta"] = meta
    shard = Path(t.work) / f"{sha}.json"
    if shard.exists():
        done = json.loads(shard.read_text())
        if "skipped" in done:
            return {**res, "status": "skipped", "reason": done["skipped"], "cached": True}
        return {**res, "status": "cached", "audio_s": done["duration_s"]}
    if info.duration_s > LONG_FILE_FACTOR * t.part_s:
        return {**res, "status": "long", "parts": _plan_parts(t, sha, info.sample_rate, info.frames)}
    try:
        wav, sr = load_audio(path)
    except AudiogenError as e:
        return {**res, "status": "skipped", "reason": _reason(e, path)}
    duration = wav.shape[1] / sr
    peak = sample_peak_dbfs(wav)
    if peak < t.silence_dbfs:
        return {**res, "status": "skipped", "reason": f"silent (peak {peak:.1f} dBFS < {t.silence_dbfs:g} dBFS)"}
    bounds = segment_bounds(wav.shape[1], sr, t.segment_s, t.hop_s, t.min_segment_s)
    if not bounds:
        return {**res, "status": "skipped",
                "reason": f"too short ({duration:.2f}s < minimum segment {t.min_segment_s:g}s)"}
    segments, silent = _analyse_segments(wav, sr, 0, bounds, t.silence_dbfs)
    if not segments:
        return {**res, "status": "skipped", "reason": SILENT_SEGMENTS}
    return {**res, "status": "ok", "wav": _to_codec_format(wav, sr, t), "segments": segments,
            "silent_segments": silent, "audio_s": duration, "source_rate": sr, "source_channels": wav.shape[0]}


SILENT_SEGMENTS = "silent (every segment below the silence threshold)"


def _analyse_segments(wav: np.ndarray, sr: int, origin: int, bounds: list[tuple[int, int]],
                      silence_dbfs: float) -> tuple[list[dict], int]:
    """Tempo and key of each of ``bounds`` (file samples) not below the silence threshold.
    ``wav [C, N]`` holds the file's samples from ``origin`` on (a multiple of
    :func:`_frame_step`). Returns (segments, silent count).

    The analysis runs on runs of segments spanning at most ``ANALYSIS_CHUNK_S`` (the STFTs
    of a 10-minute stretch would take ~2 GB), each with ``ANALYSIS_MARGIN_S`` of context
    and starting on the analysis frame grid, so the features equal a whole-file analysis's.
    """
    from audiogen.audio.io import sample_peak_dbfs

    loud = []
    for s, n in bounds:
        if sample_peak_dbfs(wav[:, s - origin : s - origin + n]) >= silence_dbfs:
            loud.append((s, n))
    grid, margin, per_frame = _frame_step(sr), round(ANALYSIS_MARGIN_S * sr), sr * ANALYSIS_HOP
    segments = []
    i = 0
    while i < len(loud):
        j = i + 1
        while j < len(loud) and loud[j][0] + loud[j][1] - loud[i][0] <= ANALYSIS_CHUNK_S * sr:
            j += 1
        w0 = max(origin, (loud[i][0] - margin) // grid * grid)
        w1 = min(origin + wav.shape[1], loud[j - 1][0] + loud[j - 1][1] + margin)
        env, chroma = _analysis_features(wav[:, w0 - origin : w1 - origin].mean(axis=0), sr)
        for s, n in loud[i:j]:
            # frames [f0, f1) cover the segment; integer arithmetic, so a start on the frame
            # grid gives the same frame whatever the window (float rounding would not)
            f0, f1 = (s - w0) * ANALYSIS_SR // per_frame, -(-(s - w0 + n) * ANALYSIS_SR // per_frame)
            segments.append({"start_s": s / sr, "duration_s": n / sr,
                             "bpm": estimate_bpm(env[f0:f1]), "key": estimate_key(chroma[:, f0:f1].mean(axis=1))})
        i = j
    return segments, len(bounds) - len(loud)


def _frame_step(sr: int) -> int:
    """The step (in samples at ``sr``) of the windows the analysis may start on: one where
    its resampling to ANALYSIS_SR and its frames fall on the whole-file grid. For rates
    where that step exceeds 10 s, 1 (the frames then shift by under one hop, ~12 ms)."""
    step = sr * ANALYSIS_HOP // math.gcd(sr * ANALYSIS_HOP, ANALYSIS_SR)
    return step if step <= 10 * sr else 1


def _to_codec_format(wav: np.ndarray, sr: int, t: _Task) -> np.ndarray:
    from audiogen.audio.io import convert_channels, resample

    out = convert_channels(wav, t.channels)
    if sr != t.sample_rate:
        out = resample(out, sr, t.sample_rate)
    return np.ascontiguousarray(out, dtype=np.float32)


def _part_alignment(sr: int, codec_sr: int) -> int:
    """The step (in samples at ``sr``) on which a part's window may start so that both its
    codec-rate resampling and its analysis (:func:`_frame_step`) fall on the same grid as a
    whole-file decode's: then a long file's segments get the codes, tempo and key they would
    get if it were decoded whole. Where the two grids meet only every 10 s or more (49441 Hz
    to 24 kHz: 128 s), a part would read that much extra: then only the codec grid is kept
    (codes still match; a tempo may differ by ~0.1 bpm)."""
    codec_step, frame_step = sr // math.gcd(sr, codec_sr), _frame_step(sr)
    both = codec_step * frame_step // math.gcd(codec_step, frame_step)
    return both if both <= 10 * sr else codec_step


def _plan_parts(t: _Task, sha: str, sample_rate: int, frames: int) -> list[_Part]:
    """Cut a long file into parts of a whole number of hops (about ``part_s`` each): part i
    owns the segments that start in it, so together the parts give the whole-file segments."""
    hop = max(1, round(t.hop_s * sample_rate))
    size = max(1, int(t.part_s // t.hop_s)) * hop
    count = math.ceil(frames / size)
    return [_Part(t, sha, i, count, i * size, (i + 1) * size if i < count - 1 else sys.maxsize, sample_rate, frames)
            for i in range(count)]


def _process_part(p: _Part) -> dict:
    """Decode and analyse one part of a long file: its segments plus ``PART_MARGIN_S`` on each
    side, no more. Returns {rel, sha256, part, status "part", wav (codec format, starting at
    codec-rate sample ``offset`` of the file), segments, silent_segments, end} or a
    ``skipped`` status, which skips the whole file."""
    from audiogen.audio.io import load_audio, sample_peak_dbfs

    t, sr = p.task, p.sample_rate
    res = {"rel": t.rel, "sha256": p.sha, "part": p.index}
    seg, margin = round(t.segment_s * sr), round(PART_MARGIN_S * sr)
    step = _part_alignment(sr, t.sample_rate)
    start = max(0, p.lo - margin) // step * step
    last = p.index == p.count - 1
    hop = max(1, round(t.hop_s * sr))
    stop = None if last else min(p.hi - hop + seg + margin, p.frames)  # the part's last segment ends by then
    try:
        wav, _ = load_audio(t.path, offset_s=start / sr, duration_s=None if stop is None else (stop - start) / sr)
    except AudiogenError as e:
        return {**res, "status": "skipped", "reason": _reason(e, Path(t.path))}
    end = start + wav.shape[1]  # the file's real end in the last part
    n = end if last else min(p.frames, end)
    bounds = [b for b in segment_bounds(n, sr, t.segment_s, t.hop_s, t.min_segment_s) if p.lo <= b[0] < p.hi]
    segments, silent = _analyse_segments(wav, sr, start, bounds, t.silence_dbfs) if bounds else ([], 0)
    return {**res, "status": "part", "wav": _to_codec_format(wav, sr, t) if segments else None,
            "offset": start * t.sample_rate // sr, "peak_dbfs": sample_peak_dbfs(wav), "bounds": len(bounds),
            "segments": segments, "silent_segments": silent, "end_s": n / sr, "owned_s": (min(p.hi, n) - p.lo) / sr}


def _reason(e: Exception, path: Path) -> str:
    msg = str(e)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


#: In a worker process that tokenizes its own files: (codec, batch_size); None elsewhere.
_WORKER_CODEC: tuple | None = None


def _tokenize_in_worker(res: dict, t: _Task, codec, batch_size: int) -> dict:
    """Tokenize a decoded file (``res`` from :func:`_process_file_unchecked`) in this worker with
    the same batches the main process would use (full segments in padded batches of
    ``batch_size``), write its shard, and return ``res`` without the audio."""
    tok = _Tokenizer(codec, Path(t.work), round(t.segment_s * t.sample_rate), batch_size)
    tok.add(res["sha256"], res["wav"], res["segments"], t.sample_rate)
    tok.close(res["sha256"], {"duration_s": res["audio_s"], "silent_segments": res["silent_segments"]})
    tok.flush()
    res = {k: v for k, v in res.items() if k not in ("wav", "segments")}
    return {**res, "tokenized": tok.tokens}


def _worker_init(parent_pid: int, codec=None, batch_size: int = 1) -> None:
    import torch

    global _WORKER_CODEC
    torch.set_num_threads(1)  # one process per core already; also what makes fork safe (see _Runner)
    if codec is not None:
        _WORKER_CODEC = (codec, batch_size)

    def watch():  # exit if the main process dies (kill -9): no orphaned workers
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class _Runner:
    """Yields each task's result in order, decoding up to ``2 * workers`` tasks ahead.
    :meth:`insert` queues tasks (a long file's parts) ahead of the files not yet started."""

    def __init__(self, tasks: list[_Task], workers: int, codec=None, batch_size: int = 1):
        self.todo = deque(tasks)
        self.workers = workers
        #: a CPU codec the workers tokenize whole files with (see _tokenize_in_worker); None: they only decode
        self.codec, self.batch_size = codec, batch_size

    def insert(self, tasks: list[_Part]) -> None:
        self.todo.extendleft(reversed(tasks))

    def __iter__(self):
        if self.workers == 0:
            while self.todo:
                yield _process_file(self.todo.popleft())
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # fork on Linux: workers start in milliseconds with torch, librosa and numba already
        # loaded (spawn costs each one ~8 s of imports and JIT-cache loading). Safe with the
        # parent's OpenMP pool because each worker runs torch single-threaded (_worker_init)
        # and never enters a multi-threaded OpenMP region.
        method = "fork" if sys.platform == "linux" else "spawn"
        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context(method), initializer=_worker_init,
                                 initargs=(os.getpid(), self.codec, self.batch_size)) as pool:
            running: deque = deque()
            while self.todo or running:
                while self.todo and len(running) < 2 * self.workers:
                    running.append(pool.submit(_process_file, self.todo.popleft()))
                future = running.popleft()
                yield future.result()
                del future  # free the decoded audio


# ----------------------------------------------------------------------------- tokenization


class _Tokenizer:
    """Batches segments from several files through ``codec.encode`` and writes each file's
    shard once all its segments are tokenized.

    Full-length segments go through in batches of exactly ``batch_size`` (padded with
    zero rows) so every call has the same shape and a segment's codes never depend on
    which other segments shared its batch. Shorter tail segments go alone.
    """

    def __init__(self, codec, work: Path, segment_samples: int, batch_size: int):
        self.codec, self.work = codec, work
        self.segment_samples, self.batch_size = segment_samples, batch_size
        self.pending: OrderedDict[str, dict] = OrderedDict()  # sha -> {segments, codes, facts}
        self.queue: list[tuple[str, int, np.ndarray]] = []
        self.tokens = 0

    def add(self, sha: str, wav: np.ndarray, segments: list[dict], sr: int, offset: int = 0) -> None:
        """Queue ``segments`` (start_s/duration_s in the file) of file ``sha``; ``wav: float32
        [C, N]`` at the codec rate holds the file from sample ``offset`` on. A file may come
        in several calls (a long file's parts); :meth:`close` says it is complete."""
        entry = self._entry(sha)
        for seg in segments:
            i = len(entry["segments"])
            entry["segments"].append(seg)
            entry["codes"].append(None)
            s, n = round(seg["start_s"] * sr) - offset, round(seg["duration_s"] * sr)
            # a full segment may come out one sample off after resampling: it is still full
            if abs(n - self.segment_samples) <= 1 and s + self.segment_samples <= wav.shape[1]:
                self.queue.append((sha, i, wav[:, s : s + self.segment_samples]))
            else:
                self._store([(sha, i)], self._encode(wav[None, :, s : s + n]))
        if len(self.queue) >= self.batch_size:
            self._run_full(flush=False)
            self._write_done()  # files completed by this batch

    def close(self, sha: str, facts: dict) -> None:
        """No more segments of ``sha``: its shard is written, with ``facts`` (duration_s,
        silent_segments) as they are, once all its segments are tokenized."""
        self._entry(sha)["facts"] = facts
        self._write_done()

    def _entry(self, sha: str) -> dict:
        """``sha``'s pending segments, codes (None until tokenized) and facts (None until closed)."""
        return self.pending.setdefault(sha, {"segments": [], "codes": [], "facts": None})

    def discard(self, sha: str) -> None:
        """Forget a file (a part of it failed): nothing of it is tokenized or written."""
        self.pending.pop(sha, None)
        self.queue = [q for q in self.queue if q[0] != sha]

    def flush(self) -> None:
        self._run_full(flush=True)
        self._write_done()

    def _encode(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch)
        if self.codec.device.type == "cuda":  # page-locked, so the copy to the GPU is one DMA
            x = x.pin_memory().to(self.codec.device, non_blocking=True)
        codes = self.codec.encode(x)
        return codes.cpu().numpy().astype(np.int16)  # [B, K, T]

    def _run_full(self, flush: bool) -> None:
        while len(self.queue) >= self.batch_size or (flush and self.queue):
            group, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size :]
            batch = np.zeros((self.batch_size, *group[0][2].shape), dtype=np.float32)
            for j, (_, _, piece) in enumerate(group):
                batch[j] = piece
            codes = self._encode(batch)
            self._store([(sha, i) for sha, i, _ in group], codes[: len(group)])

    def _store(self, keys: list[tuple[str, int]], codes: np.ndarray) -> None:
        for (sha, i), c in zip(keys, codes):
            self.pending[sha]["codes"][i] = c
            self.tokens += c.size

    def _write_done(self) -> None:
        from audiogen.audio.io import atomic_path, atomic_write_text

        for sha in [s for s, p in self.pending.items()
                    if p["facts"] is not None and all(c is not None for c in p["codes"])]:
            p = self.pending.pop(sha)
            # npz first, json last: the json's existence marks the shard complete
            with atomic_path(self.work / f"{sha}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, *p["codes"])
            atomic_write_text(self.work / f"{sha}.json", json.dumps(
                {"version": SHARD_VERSION, "sha256": sha, **p["facts"], "segments": p["segments"]}))


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
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    from audiogen.progress import stderr_is_terminal

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
            row = {
                "id": f"{sha[:16]}-{i:05d}", "source": source, "sha256": sha,
                "start_s": seg["start_s"], "duration_s": seg["duration_s"], "codec": codec_json, "codes": c,
                "caption": meta.get("caption") or compose_caption(meta, seg["bpm"], seg["key"]),
                "genre": meta.get("genre"), "mood": meta.get("mood"), "bpm": seg["bpm"], "key": seg["key"],
                "instruments": meta.get("instruments", []), "license": meta.get("license"),
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
    bars_were_on = is_progress_bar_enabled()
    if not progress or not stderr_is_terminal():  # datasets' own bars would redraw into a log
        disable_progress_bars()
    try:
        # shards of <= 500 MB; an empty split still gets one (datasets cannot load zero shards)
        shards = {name: max(1, math.ceil(ds.data.nbytes / 500e6)) for name, ds in dd.items()}
        dd.save_to_disk(str(tmp), num_shards=shards)
    finally:
        if bars_were_on:
            enable_progress_bars()
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
    from audiogen.audio.io import atomic_write_text, find_audio_files, make_dir

    t_start = time.perf_counter()
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
    from audiogen.audio.io import atomic_write_text
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
    from audiogen.audio.io import atomic_write_text

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
