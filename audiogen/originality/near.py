"""Near replication that tokens miss: embeddings per window and a chroma alignment.

A copy that went through another codec path, starts between two frames, or was made
louder, transposed or re-timed shares few exact tokens with its source. Two audio-level
measures catch it, both against the dataset's reference audio (each row's source file,
or its tokens decoded with the codec when the sources are gone):

- **embedding nearest neighbours**: every ``WINDOW_S`` window (hop ``HOP_S``) of the
  query is embedded with a pluggable :class:`audiogen.metrics.embedders.Embedder`, standardised
  with the corpus' per-dimension mean and spread, and compared by cosine with every
  reference window; the evidence is the longest streak of consecutive query windows that each
  match a window of one recording above a threshold *at one time offset* (one lucky window is not
  a copy, and neither is music that sounds alike here and there: a copy keeps its timing);
- **chroma alignment** (cover-song detection, Serra et al. 2009 "Qmax"): 12-bin chroma
  frames stacked with their neighbours (a time-delay embedding, ``EMBED_FRAMES``), a binary
  cross-recurrence of those (mutual nearest neighbours that are also close in absolute
  terms, ``MIN_COSINE``) and a local alignment that tolerates tempo changes (steps (1,1),
  (2,1), (1,2)) and short disruptions; the 12 circular shifts of the query's chroma make it
  transposition-invariant. Run on a shortlist of items (nearest by embedding, plus those the
  token index found), each with its neighbouring items of the same recording, so that a copy
  across a row boundary aligns whole.

On disk beside the token index (``DATA_DIR/audit_index/``): ``audio.json`` (settings,
embedder, per-item offsets), ``emb.f16`` (raw window embeddings ``[W, D]``), ``emb_items.i4``
(``[W, 2]``: item, window start in centiseconds) and ``chroma.f16`` (``[F, 12]``); all
appended item by item while building (bounded memory) and memory-mapped when queried.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError

AUDIO_INDEX_VERSION = 1
WINDOW_S, HOP_S = 3.0, 0.5
#: chroma frames: 4096-sample hop at 22.05 kHz (~5.4 per second), as coarse as melody/harmony needs
CHROMA_SR, CHROMA_HOP, CHROMA_NFFT = 22_050, 4096, 8192
CHROMA_FPS = CHROMA_SR / CHROMA_HOP
#: chroma frames are compared with their context: this many consecutive frames (~0.9 s) stacked. Single
#: frames of sustained harmony all look alike, so a copy's diagonal drowned among equally good
#: neighbours and broke every few frames (a semitone-shifted 10 s copy aligned for ~2.4 s)
EMBED_FRAMES = 5
#: mutual nearest neighbours: a frame pair matches when each is in the other's top KAPPA share ...
KAPPA = 0.1
#: ... and their embedded chroma are this close (the share alone matches something in any two clips)
MIN_COSINE = 0.9
#: Qmax penalties for the onset and the extension of a disruption (Serra et al. 2009)
GAP_ONSET, GAP_EXTEND = 5.0, 0.5
#: items aligned by chroma: this many nearest by embedding (and every item, below this corpus size)
SHORTLIST = 16
ROWS_PER_CHUNK = 1 << 16
#: an embedding streak is a copy's only when its windows keep one offset (reference time minus query
#: time) within this much: a copy keeps its timing, music that merely sounds alike matches windows
#: here and there in the recording
OFFSET_TOL_S = 1.0
#: ... and only where the query is about as close to the reference window as the window's own recording
#: is to it elsewhere, or closer: within this much cosine (float16 rounding; a loop played twice in the
#: source is matched by a copy of it at both places)
OWN_MARGIN = 0.01


def window_starts(duration_s: float, window_s: float = WINDOW_S, hop_s: float = HOP_S) -> np.ndarray:
    """Window start times (s) covering ``duration_s``; one window for shorter audio."""
    n = max(1, int(np.floor((duration_s - window_s) / hop_s + 1e-9)) + 1)
    return np.arange(n) * hop_s


def window_embeddings(embedder, mono: np.ndarray, sr: int, window_s: float = WINDOW_S,
                      hop_s: float = HOP_S) -> tuple[np.ndarray, np.ndarray]:
    """``mono: float32[N]`` -> ``(starts_s float[W], emb float32[W, D])``.

    The embedder runs once on the whole clip and its frames are averaged per window
    (frames are spaced evenly over the clip), so overlapping windows cost nothing extra.
    """
    frames = embedder.embed(mono[None], sr)  # [T, D]
    dur = len(mono) / sr
    starts = window_starts(dur, window_s, hop_s)
    fps = frames.shape[0] / max(dur, 1e-9)
    emb = np.empty((len(starts), frames.shape[1]), np.float32)
    for i, s in enumerate(starts):
        a = min(int(round(s * fps)), frames.shape[0] - 1)
        b = max(a + 1, int(round((s + window_s) * fps)))
        emb[i] = frames[a:b].mean(axis=0)
    return starts, emb


def chroma_features(mono: np.ndarray, sr: int) -> np.ndarray:
    """``mono: float32[N]`` at ``sr`` -> unit-length chroma ``float32[F, 12]`` (~5.4 frames/s)."""
    import librosa

    from audiogen.audio.io import resample

    x = resample(np.asarray(mono, np.float32), sr, CHROMA_SR) if sr != CHROMA_SR else np.asarray(mono, np.float32)
    if len(x) < CHROMA_NFFT:
        x = np.pad(x, (0, CHROMA_NFFT - len(x)))
    c = librosa.feature.chroma_stft(y=x, sr=CHROMA_SR, n_fft=CHROMA_NFFT, hop_length=CHROMA_HOP, tuning=0.0).T
    return (c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-9)).astype(np.float32)


def _qmax_kernel():
    from numba import njit

    @njit(cache=True)
    def qmax(m, go, ge):  # pragma: no cover - compiled
        Fq, Fr = m.shape
        Q = np.zeros((Fq + 2, Fr + 2), np.float32)
        M = np.zeros((Fq + 2, Fr + 2), np.uint8)
        SI = np.zeros((Fq + 2, Fr + 2), np.int32)
        SJ = np.zeros((Fq + 2, Fr + 2), np.int32)
        M[2:, 2:] = m
        best, bi, bj = 0.0, 0, 0
        for i in range(2, Fq + 2):
            for j in range(2, Fr + 2):
                pi = (i - 1, i - 2, i - 1)
                pj = (j - 1, j - 1, j - 2)
                v, k = -1.0, 0
                for t in range(3):
                    q = Q[pi[t], pj[t]]
                    if not M[i, j]:
                        q -= go if M[pi[t], pj[t]] else ge
                    if q > v:
                        v, k = q, t
                if M[i, j]:
                    v += 1.0
                    if Q[pi[k], pj[k]] <= 0:
                        SI[i, j], SJ[i, j] = i, j
                    else:
                        SI[i, j], SJ[i, j] = SI[pi[k], pj[k]], SJ[pi[k], pj[k]]
                elif v > 0:
                    SI[i, j], SJ[i, j] = SI[pi[k], pj[k]], SJ[pi[k], pj[k]]
                v = max(v, 0.0)
                Q[i, j] = v
                if v > best:
                    best, bi, bj = v, i, j
        return best, SI[bi, bj] - 2, bi - 2, SJ[bi, bj] - 2, bj - 2

    return qmax


_QMAX = None


def qmax(match: np.ndarray) -> tuple[float, int, int, int, int]:
    """Serra's Qmax on a binary cross-recurrence ``match: bool[Fq, Fr]`` -> ``(score, q_start, q_end,
    r_start, r_end)``; the score is about the number of matched frames on the best local path."""
    global _QMAX
    if _QMAX is None:
        _QMAX = _qmax_kernel()
    s, qa, qb, ra, rb = _QMAX(np.ascontiguousarray(match, dtype=np.uint8), GAP_ONSET, GAP_EXTEND)
    return float(s), int(qa), int(qb), int(ra), int(rb)


def delay_embed(chroma: np.ndarray, m: int = EMBED_FRAMES) -> np.ndarray:
    """``chroma[F, 12]`` -> unit vectors ``[max(F - m + 1, 1), 12 m]``: frame ``i`` with the ``m - 1`` after it."""
    if len(chroma) < m:
        chroma = np.pad(chroma, ((0, m - len(chroma)), (0, 0)))
    n = len(chroma) - m + 1
    e = np.concatenate([chroma[k : k + n] for k in range(m)], axis=1)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-9)


def cross_recurrence(q: np.ndarray, r: np.ndarray, kappa: float = KAPPA, min_cosine: float = MIN_COSINE) -> np.ndarray:
    """Mutual nearest neighbours of unit vectors ``q[Fq, D]`` and ``r[Fr, D]`` that are at least
    ``min_cosine`` alike -> ``bool[Fq, Fr]``."""
    s = q @ r.T
    kr = max(1, int(round(kappa * s.shape[1])))
    kc = max(1, int(round(kappa * s.shape[0])))
    row = np.partition(s, -kr, axis=1)[:, -kr][:, None]
    col = np.partition(s, -kc, axis=0)[-kc][None, :]
    return (s >= row) & (s >= col) & (s >= min_cosine)


def chroma_alignment(q: np.ndarray, r: np.ndarray) -> dict:
    """Best transposition-invariant local alignment of chroma ``q[Fq, 12]`` against ``r[Fr, 12]``:
    ``seconds`` (about the matched frames), ``shift`` (semitones the query was rolled down by) and
    the aligned frame ranges ``q`` and ``r`` (end exclusive) in ``q``'s and ``r``'s frames."""
    best = {"seconds": 0.0, "shift": 0, "q": (0, 0), "r": (0, 0)}
    re = delay_embed(r)
    for shift in range(12):
        score, qa, qb, ra, rb = qmax(cross_recurrence(delay_embed(np.roll(q, shift, axis=1)), re))
        if score / CHROMA_FPS > best["seconds"]:
            # an embedded frame spans EMBED_FRAMES chroma frames: the path's last one ends that much later
            best = {"seconds": score / CHROMA_FPS, "shift": shift,
                    "q": (qa, min(qb + EMBED_FRAMES, len(q))), "r": (ra, min(rb + EMBED_FRAMES, len(r)))}
    return best


# --------------------------------------------------------------------------- reference audio


class ReferenceAudio:
    """The audio of dataset items: the row's source file where it still exists, else its tokens
    decoded with the dataset's codec (``codec``, loaded on first need)."""

    def __init__(self, data_dir: Path, token_index, codec_loader):
        self.data_dir = Path(data_dir)
        self.index = token_index
        self.codec_loader = codec_loader
        self._codec = None
        report = self.data_dir / "prep_report.json"
        self.audio_dir = Path(json.loads(report.read_text()).get("audio_dir", "")) if report.is_file() else None

    def source_path(self, item: int) -> Path | None:
        if self.audio_dir is None:
            return None
        p = self.audio_dir / self.index.items[item]["source"]
        return p if p.is_file() else None

    def load(self, item: int, sr: int, offset_s: float = 0.0, duration_s: float | None = None) -> tuple[np.ndarray, str]:
        """Mono ``float32[N]`` at ``sr`` of item ``item`` from ``offset_s`` (within the item); and where it came from."""
        from audiogen.audio import io as A

        it = self.index.items[item]
        length = it["frames"] / self.index.frame_rate
        duration_s = length - offset_s if duration_s is None else min(duration_s, length - offset_s)
        path = self.source_path(item)
        if path is not None:
            try:
                wav, _ = A.load_audio(path, sr, 1, offset_s=it["start_s"] + offset_s, duration_s=duration_s)
                return wav[0], "source"
            except AudiogenError:
                pass  # the file changed since prep: fall back to the tokens
        import torch

        if self._codec is None:
            self._codec = self.codec_loader()
        c = self._codec
        fr = self.index.frame_rate
        a, b = int(offset_s * fr), int(np.ceil((offset_s + duration_s) * fr))
        codes = torch.from_numpy(self.index.item_codes(item)[:, a:b].astype(np.int64))[None]
        wav = c.decode(codes)[0].float().cpu().numpy().mean(axis=0)
        return A.resample(wav, c.sample_rate, sr).astype(np.float32), "decoded tokens"


# ----------------------------------------------------------------------------------- the index


def build_audio_index(data_dir: str | os.PathLike, token_index, embedder, codec_loader, progress: bool = True) -> dict:
    """Embeddings and chroma of every item, beside the token index; returns the settings written."""
    from tqdm import tqdm

    from audiogen.files import atomic_write_text

    folder = Path(data_dir) / "audit_index"
    (folder / "audio.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    ref = ReferenceAudio(Path(data_dir), token_index, codec_loader)
    n_items = len(token_index.items)
    emb_off, chroma_off = np.zeros(n_items + 1, np.int64), np.zeros(n_items + 1, np.int64)
    s1 = s2 = None
    rows = 0
    origins = {"source": 0, "decoded tokens": 0}
    with open(folder / "emb.f16", "wb") as fe, open(folder / "emb_items.i4", "wb") as fi, \
            open(folder / "chroma.f16", "wb") as fc:
        for item in tqdm(range(n_items), unit="item", desc="audit audio index", disable=not progress):
            mono, origin = ref.load(item, CHROMA_SR)
            origins[origin] += 1
            starts, emb = window_embeddings(embedder, mono, CHROMA_SR)
            chroma = chroma_features(mono, CHROMA_SR)
            fe.write(emb.astype(np.float16).tobytes())
            fi.write(np.stack([np.full(len(starts), item), np.round(starts * 100)], 1).astype(np.int32).tobytes())
            fc.write(chroma.astype(np.float16).tobytes())
            e64 = emb.astype(np.float64)
            s1 = e64.sum(0) if s1 is None else s1 + e64.sum(0)
            s2 = (e64**2).sum(0) if s2 is None else s2 + (e64**2).sum(0)
            rows += len(starts)
            emb_off[item + 1] = rows
            chroma_off[item + 1] = chroma_off[item] + len(chroma)
    mean = s1 / rows
    std = np.sqrt(np.maximum(s2 / rows - mean**2, 0)) + 1e-6
    np.save(folder / "emb_stats.npy", np.stack([mean, std]).astype(np.float32))
    np.save(folder / "chroma_offsets.npy", chroma_off)
    settings = {"version": AUDIO_INDEX_VERSION, "embedder": embedder.describe(), "dim": int(len(mean)),
                "windows": rows, "window_s": WINDOW_S, "hop_s": HOP_S, "chroma_fps": CHROMA_FPS,
                "reference_audio": origins}
    atomic_write_text(folder / "audio.json", json.dumps(settings, indent=2))
    return settings


@dataclass
class EmbeddingMatch:
    """The longest streak of consecutive query windows that match one recording at one offset
    (``item``: where the streak starts in the recording)."""

    item: int
    seconds: float
    query_start_s: float
    ref_start_s: float  # within the item
    similarity: float  # the streak's mean cosine


class AudioIndex:
    def __init__(self, data_dir: str | os.PathLike, token_index, embedder, codec_loader):
        self.folder = Path(data_dir) / "audit_index"
        meta = self.folder / "audio.json"
        if not meta.is_file():
            raise AudiogenError(f"{data_dir}: the audit index has no audio part; rebuild it with "
                                f"'audiogen audit index {data_dir}' (without --tokens-only or --no-audio), "
                                "or audit with --tokens-only")
        self.settings = json.loads(meta.read_text())
        if self.settings.get("version") != AUDIO_INDEX_VERSION:
            raise AudiogenError(f"{self.folder}: built by another version; rebuild it with 'audiogen audit index'")
        if self.settings["embedder"]["cache_key"] != embedder.cache_key:
            raise AudiogenError(f"{self.folder} was built with the embedder {self.settings['embedder']['cache_key']}, "
                                f"not {embedder.cache_key}; use that one or rebuild the index")
        self.embedder = embedder
        self.tokens = token_index
        D, W = self.settings["dim"], self.settings["windows"]
        self.emb = np.memmap(self.folder / "emb.f16", np.float16, "r", shape=(W, D))
        self.emb_items = np.memmap(self.folder / "emb_items.i4", np.int32, "r", shape=(W, 2))
        self.mean, self.std = np.load(self.folder / "emb_stats.npy")
        self.chroma_off = np.load(self.folder / "chroma_offsets.npy")
        self.chroma = np.memmap(self.folder / "chroma.f16", np.float16, "r", shape=(int(self.chroma_off[-1]), 12))
        self.reference = ReferenceAudio(Path(data_dir), token_index, codec_loader)
        self._rows: np.ndarray | None = None
        self._sources: dict[str, list[int]] = {}
        self._recordings: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _normalise(self, e: np.ndarray) -> np.ndarray:
        z = (e.astype(np.float32) - self.mean) / self.std
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-9)

    def nearest(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
        """``emb[Wq, D]`` -> best cosine per query window ``[Wq]``, its reference window ``[Wq]``, and
        each item's best cosine (for the shortlist)."""
        q = self._normalise(emb)
        best = np.full(len(q), -2.0, np.float32)
        arg = np.zeros(len(q), np.int64)
        per_item: dict[int, float] = {}
        for a in range(0, len(self.emb), ROWS_PER_CHUNK):
            r = self._normalise(np.asarray(self.emb[a : a + ROWS_PER_CHUNK]))
            s = q @ r.T  # [Wq, chunk]
            j = s.argmax(axis=1)
            v = s[np.arange(len(q)), j]
            better = v > best
            best[better], arg[better] = v[better], a + j[better]
            items = np.asarray(self.emb_items[a : a + ROWS_PER_CHUNK, 0])
            col = s.max(axis=0)
            top = np.full(items.max() + 1, -2.0, np.float32)
            np.maximum.at(top, items, col)
            for it in np.flatnonzero(top > -2):
                per_item[int(it)] = max(per_item.get(int(it), -2.0), float(top[it]))
        return best, arg, per_item

    def _recording(self, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One recording's embedding rows, the time of each in the recording (s), and how close each
        window comes to any other part of its own recording (windows that do not overlap it; -2 where
        there is none). Computed once per recording: it depends on the index alone."""
        if source not in self._recordings:
            if self._rows is None:  # the first embedding row of each item (rows are written item by item)
                col = np.asarray(self.emb_items[:, 0])
                self._rows = np.searchsorted(col, np.arange(len(self.tokens.items) + 1))
                self._sources = {}
                for i, it in enumerate(self.tokens.items):
                    self._sources.setdefault(it["source"], []).append(i)
            rows, items = self._rows, self.tokens.items
            idx = np.concatenate([np.arange(rows[i], rows[i + 1]) for i in self._sources[source]])
            ei = np.asarray(self.emb_items[idx])
            t_ref = np.array([items[i]["start_s"] for i in ei[:, 0]]) + ei[:, 1] / 100.0
            r = self._normalise(np.asarray(self.emb[idx]))
            own = r @ r.T
            own[np.abs(t_ref[:, None] - t_ref[None, :]) < WINDOW_S] = -2.0
            self._recordings[source] = (idx, t_ref, own.max(axis=1, initial=-2.0))
        return self._recordings[source]

    def embedding_match(self, starts: np.ndarray, emb: np.ndarray, per_item: dict[int, float],
                        threshold: float) -> EmbeddingMatch | None:
        """The longest run of consecutive query windows (starting at ``starts``, embeddings ``emb``)
        each closer than ``threshold`` to a window of one recording at one time offset (reference time
        minus query time, within ``OFFSET_TOL_S``): a copy keeps its timing. A pair counts only when
        it is also as close (within ``OWN_MARGIN``) as the reference window is to any other part of its
        own recording (windows that do not overlap it): in a held texture every window is alike, and a
        match there says the query sounds like that texture, not that it is that passage.

        Only recordings with some window above ``threshold`` (``per_item``, from :meth:`nearest`) are
        searched; all of a recording's segments are, so a copy that crosses a row boundary or repeats
        (a chorus) stays one run.
        """
        items = self.tokens.items
        sources = dict.fromkeys(items[i]["source"] for i, c in per_item.items() if c >= threshold)
        q = self._normalise(emb)
        tol = int(round(OFFSET_TOL_S / HOP_S))
        hop = starts[1] - starts[0] if len(starts) > 1 else 0.0
        out = None
        for source in sources:
            idx, t_ref, own = self._recording(source)
            s = q @ self._normalise(np.asarray(self.emb[idx])).T  # [Wq, Wr]
            # a match no closer than the window's own recording elsewhere says "sounds like this part
            # of the track", not "is this passage"
            qi, rj = np.nonzero((s >= threshold) & (s >= own[None, :] - OWN_MARGIN))
            if not len(qi):
                continue
            k = np.round((t_ref[rj] - starts[qi]) / HOP_S).astype(np.int64)
            k -= k.min() - tol
            # best cosine per (offset, query window) and which reference window gave it
            cos = s[qi, rj]
            key = k * len(q) + qi
            order = np.lexsort((cos, key))  # by key, then cosine: each key's best pair comes last
            last = order[np.r_[key[order][1:] != key[order][:-1], True]]
            grid = np.full((int(k.max()) + tol + 1, len(q)), -2.0, np.float32)
            ref_at = np.full(grid.shape, -1, np.int64)
            grid[k[last], qi[last]] = cos[last]
            ref_at[k[last], qi[last]] = rj[last]
            # a window counts for offset k when it matches within +-tol of k
            band = np.full_like(grid, -2.0)
            band_ref = np.full(grid.shape, -1, np.int64)
            for d in range(-tol, tol + 1):
                shifted = np.roll(grid, d, axis=0)
                shifted_ref = np.roll(ref_at, d, axis=0)
                better = shifted > band
                band[better], band_ref[better] = shifted[better], shifted_ref[better]
            ok = band >= threshold
            for kk in np.flatnonzero(ok.any(axis=1)):
                run, total = 0, 0.0
                for i in range(len(q)):
                    run, total = (run + 1, total + float(band[kk, i])) if ok[kk, i] else (0, 0.0)
                    if not run:
                        continue
                    seconds, mean = (run - 1) * hop + WINDOW_S, total / run
                    # the longest; of equally long ones (a held texture matches at several offsets) the closest
                    if out is None or (seconds, mean) > (out.seconds, out.similarity):
                        j = int(idx[band_ref[kk, i - run + 1]])
                        out = EmbeddingMatch(int(self.emb_items[j, 0]), float(seconds), float(starts[i - run + 1]),
                                             float(self.emb_items[j, 1]) / 100, mean)
        return out

    def item_chroma(self, item: int) -> np.ndarray:
        return np.asarray(self.chroma[self.chroma_off[item] : self.chroma_off[item + 1]], np.float32)

    def context_chroma(self, item: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Chroma ``[F, 12]`` of ``item`` with the items just before and after it in the same recording
        (consecutive segments), and ``(item, first frame)`` of each part."""
        tok = self.tokens
        parts = [i for i, ok in ((item - 1, tok.follows(item - 1, item)), (item, True),
                                 (item + 1, tok.follows(item, item + 1))) if ok]
        chroma = [self.item_chroma(i) for i in parts]
        starts = np.cumsum([0] + [len(c) for c in chroma[:-1]])
        return np.concatenate(chroma), [(i, int(a)) for i, a in zip(parts, starts)]
