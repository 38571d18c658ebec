"""Prep's work on each source file: decode it (in parts when long), cut it into segments, analyse
them, tokenize them into the file's shard; and the worker pool that runs this over the corpus."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiogen.data.labels import (
    ANALYSIS_HOP, ANALYSIS_SR, _analysis_features, estimate_bpm, estimate_key, read_sidecar, source_tags,
)
from audiogen.data.estimators import track_beats
from audiogen.errors import AudiogenError


#: Bumped when the content of shards changes meaning; a .work folder from another version is refused.
SHARD_VERSION = 7  # 2: onset envelope with a fixed dB floor; 3: Temperley key profiles; 4: metrical tempo;
# 5: metrical tempo hears harmonic change (chroma) too; 6: the beat's level chosen by a fitted scorer (tempo_levels);
# 7: beat times per segment (the LM's beat grid)
#: A file longer than this many ``part_s`` is decoded in parts (see :func:`_plan_parts`).
LONG_FILE_FACTOR = 1.5
#: Audio read on each side of a part beyond its segments: covers the resampling filter and
#: the analysis frames (4096-point chroma STFT) that reach past a segment's edge.
PART_MARGIN_S = 1.0
#: Segments are analysed in runs spanning at most this long, with this much context each side.
ANALYSIS_CHUNK_S = 60.0
ANALYSIS_MARGIN_S = 0.5


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
    label_bpm: float | None = None  # the file's tempo label (sidecar or captions file, checked 20-400 bpm there)


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
    from audiogen.audio.io import audio_info, load_audio
    from audiogen.audio.loudness import sample_peak_dbfs
    from audiogen.files import sha256_file

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
        return {**res, "status": "long", "parts": _plan_parts(t, sha, info.sample_rate, info.frames, meta.get("bpm"))}
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
    segments, silent = _analyse_segments(wav, sr, 0, bounds, t.silence_dbfs, meta.get("bpm"))
    if not segments:
        return {**res, "status": "skipped", "reason": SILENT_SEGMENTS}
    return {**res, "status": "ok", "wav": _to_codec_format(wav, sr, t), "segments": segments,
            "silent_segments": silent, "audio_s": duration, "source_rate": sr, "source_channels": wav.shape[0]}


SILENT_SEGMENTS = "silent (every segment below the silence threshold)"


def _analyse_segments(wav: np.ndarray, sr: int, origin: int, bounds: list[tuple[int, int]],
                      silence_dbfs: float, label_bpm: float | None = None) -> tuple[list[dict], int]:
    """Tempo, key and beat times of each of ``bounds`` (file samples) not below the silence threshold;
    the beats are tracked at ``label_bpm`` when the file has a tempo label, else at the estimate.
    ``wav [C, N]`` holds the file's samples from ``origin`` on (a multiple of
    :func:`_frame_step`). Returns (segments, silent count).

    The analysis runs on runs of segments spanning at most ``ANALYSIS_CHUNK_S`` (the STFTs
    of a 10-minute stretch would take ~2 GB), each with ``ANALYSIS_MARGIN_S`` of context
    and starting on the analysis frame grid, so the features equal a whole-file analysis's.
    """
    from audiogen.audio.loudness import sample_peak_dbfs

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
            bpm = estimate_bpm(env[f0:f1], chroma=chroma[:, f0:f1])
            # the beats, relative to the segment's start: frame f0 starts at most one analysis hop
            # before it (the frame grid), so that offset is taken off
            lead = f0 * per_frame / ANALYSIS_SR - (s - w0)
            beats = track_beats(env[f0:f1], label_bpm or bpm, ANALYSIS_SR, ANALYSIS_HOP) + lead / sr
            segments.append({"start_s": s / sr, "duration_s": n / sr, "bpm": bpm,
                             "key": estimate_key(chroma[:, f0:f1].mean(axis=1)),
                             "beats": [round(float(b), 4) for b in beats]})
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


def _plan_parts(t: _Task, sha: str, sample_rate: int, frames: int, label_bpm: float | None = None) -> list[_Part]:
    """Cut a long file into parts of a whole number of hops (about ``part_s`` each): part i
    owns the segments that start in it, so together the parts give the whole-file segments."""
    hop = max(1, round(t.hop_s * sample_rate))
    size = max(1, int(t.part_s // t.hop_s)) * hop
    count = math.ceil(frames / size)
    return [_Part(t, sha, i, count, i * size, (i + 1) * size if i < count - 1 else sys.maxsize, sample_rate, frames,
                  label_bpm) for i in range(count)]


def _process_part(p: _Part) -> dict:
    """Decode and analyse one part of a long file: its segments plus ``PART_MARGIN_S`` on each
    side, no more. Returns {rel, sha256, part, status "part", wav (codec format, starting at
    codec-rate sample ``offset`` of the file), segments, silent_segments, end} or a
    ``skipped`` status, which skips the whole file."""
    from audiogen.audio.io import load_audio
    from audiogen.audio.loudness import sample_peak_dbfs

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
    segments, silent = (_analyse_segments(wav, sr, start, bounds, t.silence_dbfs, p.label_bpm) if bounds
                        else ([], 0))
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

    from audiogen.devices import keep_freed_memory

    global _WORKER_CODEC
    torch.set_num_threads(1)  # one process per core already; also what makes fork safe (see _Runner)
    # and numpy's BLAS (librosa's mel and chroma filter banks): two workers with two BLAS threads each took
    # 4.7-5.2 s to analyse a 327 s file, against 3.7-3.9 s with one (docs/prep.md, "Lean SEANet pass")
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    keep_freed_memory()  # inherited through fork; spawned workers (not Linux) set their own
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

    def _encode(self, batch: np.ndarray, rows: int | None = None) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch)
        if self.codec.device.type == "cuda":  # page-locked, so the copy to the GPU is one DMA
            x = x.pin_memory().to(self.codec.device, non_blocking=True)
        codes = self.codec.encode(x, rows=rows)
        return codes.cpu().numpy().astype(np.int16)  # [B, K, T]

    def _run_full(self, flush: bool) -> None:
        while len(self.queue) >= self.batch_size or (flush and self.queue):
            group, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size :]
            batch = np.zeros((self.batch_size, *group[0][2].shape), dtype=np.float32)
            for j, (_, _, piece) in enumerate(group):
                batch[j] = piece
            codes = self._encode(batch, rows=len(group))  # the padding rows' codes are not wanted
            self._store([(sha, i) for sha, i, _ in group], codes[: len(group)])

    def _store(self, keys: list[tuple[str, int]], codes: np.ndarray) -> None:
        for (sha, i), c in zip(keys, codes):
            self.pending[sha]["codes"][i] = c
            self.tokens += c.size

    def _write_done(self) -> None:
        from audiogen.files import atomic_path, atomic_write_text

        for sha in [s for s, p in self.pending.items()
                    if p["facts"] is not None and all(c is not None for c in p["codes"])]:
            p = self.pending.pop(sha)
            # npz first, json last: the json's existence marks the shard complete
            with atomic_path(self.work / f"{sha}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, *p["codes"])
            atomic_write_text(self.work / f"{sha}.json", json.dumps(
                {"version": SHARD_VERSION, "sha256": sha, **p["facts"], "segments": p["segments"]}))
