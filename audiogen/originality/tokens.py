"""Exact token replication: a hashed n-gram index of a prepared dataset's codec frames.

The model was trained on exactly these tokens, so the strongest evidence of copying is a
long run of frames a generated track shares with a training item. Two indexes answer it:

- ``all``: n-grams of ``n`` consecutive frames over every codebook the dataset holds (the
  LM models all of them);
- ``cb0``: n-grams of codebook 0 alone, the coarse codebook, chained across gaps (a decode/encode
  round trip changes some of its tokens);
- ``rt`` and ``rt0`` (built when the codec is at hand): as ``all`` and ``cb0``, over each row's tokens
  *round-tripped* through the codec (decoded, then encoded again). A model that memorised a
  row emits its tokens; an audit of that audio encodes the decoded tokens again, and the
  codec's round trip is far from the identity (the default model's codec keeps ~38% of the
  codebook-0 tokens and ~15% of the others), so the copy shares few exact tokens with the
  row itself, but nearly all with the row's round trip: the encoder is deterministic and its
  context is local, so the same decoded audio gives the same tokens inside a new clip. A gain
  change breaks the exact runs (the encoder reads a log-mel spectrogram, unnormalised) but
  most codebook-0 tokens survive it, hence ``rt0``'s gapped chains.

On disk (``DATA_DIR/audit_index/``), per index: ``<name>.hashes.npy`` (uint64, sorted)
and ``<name>.postings.npy`` (uint64, ``item << 32 | frame``, in the same order), read
memory-mapped; ``items.json`` maps an item number to its dataset row; ``tokens.json``
holds the settings. Building is a two-pass external radix sort: n-gram hashes are
computed row by row, spilled in chunks into ``2^bits`` bucket files by their top bits,
then each bucket is sorted on its own. Memory is one chunk plus one bucket, and the
bucket count grows with the corpus, so it stays bounded; time is linear plus the small
per-bucket sorts.

A query hashes its own n-grams, looks them up (binary search on the memory map), keeps
chains of consecutive hits on one diagonal (same item, same offset) and extends the
longest chains frame by frame against the item's real tokens, so a reported run is an
exact run of shared frames, not a hash artefact. n-grams found in more than ``stop_df``
places (silence, a held note every track has) are not looked up: shared silence is not
a copy.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError

INDEX_DIR = "audit_index"
#: bumped when the hash or the layout changes; an index of another version is rebuilt, not misread
TOKEN_INDEX_VERSION = 2  # 2: short cb0 n-grams, gapped chains
ROUNDTRIP_VERSION = 2  # 2: rt0, codebook 0 of the round trip with gapped chains
#: n-gram lengths in seconds (at least MIN_N frames): short enough to catch a 1 s copy, long enough that
#: chance matches between unrelated music are rare. cb0 n-grams are short because small changes of the
#: audio change some cb0 tokens, so its exact runs are short; its evidence is a *gapped* chain instead
#: (see MAX_GAP_S). ``rt`` uses the ``all`` n-gram.
NGRAM_S = {"all": 0.1, "cb0": 0.06}
MIN_N = {"all": 4, "cb0": 4}
#: hits on one diagonal further apart than this do not chain: 0 for ``all`` (exact runs); for cb0 a
#: re-encoded copy's chain survives the odd changed token
MAX_GAP_S = {"all": 0.0, "cb0": 0.2, "rt": 0.0, "rt0": 0.2}
#: a cb0 chain counts when at least this share of its frames carry the item's cb0 token
MIN_AGREEMENT = 0.5
#: an n-gram found in more places than this is not looked up (silence and the like)
STOP_DF = 32
#: entries per spilled chunk (16 bytes each) and per bucket, which bound the builder's memory
CHUNK_ENTRIES = 1 << 21
BUCKET_ENTRIES = 1 << 21

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_RNG = np.random.default_rng(20240623)
#: odd random multipliers: per codebook (frame hash) and per n-gram position
_CODEBOOK_MUL = (_RNG.integers(1, 2**63, 64, dtype=np.uint64) * np.uint64(2) + np.uint64(1))
_POS_MUL = (_RNG.integers(1, 2**63, 256, dtype=np.uint64) * np.uint64(2) + np.uint64(1))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic is the point)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def ngram_hashes(codes: np.ndarray, n: int) -> np.ndarray:
    """``codes: int[K', T]`` (the codebooks of one index) -> ``uint64[max(0, T - n + 1)]``, the
    hash of frames ``t .. t + n - 1`` at ``t``."""
    K, T = codes.shape
    if T < n:
        return np.zeros(0, dtype=np.uint64)
    c = codes.astype(np.uint64) + np.uint64(1)
    f = np.zeros(T, dtype=np.uint64)
    for k in range(K):
        f += c[k] * _CODEBOOK_MUL[k]
    f = _mix(f)
    m = T - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):
        h += f[j : j + m] * _POS_MUL[j]
    return _mix(h)


@dataclass
class NgramSpec:
    name: str  # "all" or "cb0"
    codebooks: int  # the first ``codebooks`` codebooks (all K, or 1)
    n: int  # frames per n-gram

    def select(self, codes: np.ndarray) -> np.ndarray:
        return codes[: self.codebooks]


def default_specs(num_codebooks: int, frame_rate: float) -> list[NgramSpec]:
    return [NgramSpec(name, k, max(MIN_N[name], round(NGRAM_S[name] * frame_rate)))
            for name, k in (("all", num_codebooks), ("cb0", 1))]


# ------------------------------------------------------------------------------- building


def iter_dataset_codes(dd, batch_rows: int = 256):
    """``(split, row, codes int16[K, T])`` for every row of a prepared dataset, read straight from
    Arrow (no per-row Python conversion): the index of 10 hours must build in seconds."""
    for split in ("train", "valid"):
        table = dd[split].data
        row = 0
        for chunk in table.column("codes").chunks:
            K = chunk.type.list_size
            for a in range(0, len(chunk), batch_rows):
                part = chunk.slice(a, batch_rows)
                inner = part.flatten()  # [rows * K] lists
                lengths = inner.value_lengths().to_numpy(zero_copy_only=False)
                values = inner.flatten().to_numpy(zero_copy_only=False)
                ends = np.cumsum(lengths)
                for r in range(len(part)):
                    T = int(lengths[r * K])
                    start = int(ends[r * K] - T)
                    yield split, row, values[start : start + K * T].reshape(K, T)
                    row += 1


class _Spill:
    """Entries ``(hash, posting)`` spilled by the top ``bits`` of the hash into bucket files."""

    def __init__(self, folder: Path, bits: int):
        self.folder, self.bits = folder, bits
        self.buf_h: list[np.ndarray] = []
        self.buf_p: list[np.ndarray] = []
        self.pending = 0
        self.counts = np.zeros(1 << bits, dtype=np.int64)

    def add(self, h: np.ndarray, p: np.ndarray) -> None:
        self.buf_h.append(h)
        self.buf_p.append(p)
        self.pending += len(h)
        if self.pending >= CHUNK_ENTRIES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        h, p = np.concatenate(self.buf_h), np.concatenate(self.buf_p)
        self.buf_h, self.buf_p, self.pending = [], [], 0
        bucket = (h >> np.uint64(64 - self.bits)).astype(np.uint16) if self.bits else np.zeros(len(h), np.uint16)
        order = np.argsort(bucket, kind="stable")  # radix sort on 16-bit keys: linear
        counts = np.bincount(bucket, minlength=1 << self.bits)
        pairs = np.stack([h[order], p[order]], axis=1)
        ends = np.cumsum(counts)
        for b in np.flatnonzero(counts):
            with open(self.folder / f"{b:05d}.bin", "ab") as f:
                f.write(pairs[ends[b] - counts[b] : ends[b]].tobytes())
        self.counts += counts

    def finish(self, hashes_path: Path, postings_path: Path) -> None:
        """Sort bucket by bucket into the final arrays (the top bits order the buckets). The arrays are
        written with plain file writes, not through a memory map, whose dirty pages would pile up
        in the process (resident memory growing with the corpus)."""
        self.flush()
        total = int(self.counts.sum())
        files = []
        for path in (hashes_path, postings_path):
            np.lib.format.open_memmap(path, mode="w+", dtype=np.uint64, shape=(total,)).flush()  # header + size
            files.append(open(path, "r+b"))
        header = np.load(hashes_path, mmap_mode="r").offset
        offsets = np.concatenate([[0], np.cumsum(self.counts)])
        try:
            for b in np.flatnonzero(self.counts):
                f = self.folder / f"{b:05d}.bin"
                pairs = np.fromfile(f, dtype=np.uint64).reshape(-1, 2)
                f.unlink()
                order = np.argsort(pairs[:, 0], kind="stable")  # stable: postings stay in corpus order
                for col, out in enumerate(files):
                    out.seek(header + int(offsets[b]) * 8)
                    out.write(np.ascontiguousarray(pairs[order, col]).tobytes())
        finally:
            for out in files:
                out.close()


def codec_of(dd) -> dict:
    from audiogen.data.loader import dataset_codec

    return dataset_codec(dd["train"])


def build_token_index(data_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Build ``DATA_DIR/audit_index/`` token files for a prepared dataset; returns the settings written."""
    from tqdm import tqdm

    from audiogen.data.loader import load_prepared
    from audiogen.files import atomic_write_text, make_dir

    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    dd = load_prepared(data_dir)
    desc = codec_of(dd)
    K, fr = int(desc["num_codebooks"]), float(desc["frame_rate"])
    specs = default_specs(K, fr)
    out = make_dir(data_dir / INDEX_DIR)
    (out / "tokens.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    (out / "roundtrip.json").unlink(missing_ok=True)  # built from the items numbered here: rebuilt after them
    est = sum(float(np.sum(dd[s]["duration_s"])) for s in ("train", "valid")) * fr
    bits = int(np.clip(math.ceil(math.log2(max(est, 1) / BUCKET_ENTRIES)), 0, 16))
    tmp = out / ".spill"
    if tmp.exists():
        shutil.rmtree(tmp)
    spills = {}
    for s in specs:
        make_dir(tmp / s.name)
        spills[s.name] = _Spill(tmp / s.name, bits)
    items = []
    cols = {s: dd[s].select_columns(["id", "source", "start_s", "duration_s"]).to_dict() for s in ("train", "valid")}
    bar = tqdm(total=len(dd["train"]) + len(dd["valid"]), unit="row", desc="audit index", disable=not progress)
    frames = 0
    for split, row, codes in iter_dataset_codes(dd):
        item = len(items)
        c = cols[split]
        items.append({"split": split, "row": row, "id": c["id"][row], "source": c["source"][row],
                      "start_s": c["start_s"][row], "frames": int(codes.shape[1])})
        frames += codes.shape[1]
        for s in specs:
            h = ngram_hashes(s.select(codes), s.n)
            post = (np.uint64(item) << np.uint64(32)) | np.arange(len(h), dtype=np.uint64)
            spills[s.name].add(h, post)
        bar.update(1)
    bar.close()
    if len(items) >= 2**32 or frames and max(i["frames"] for i in items) >= 2**32:
        raise AudiogenError(f"{data_dir}: too many rows or frames for 32-bit postings")
    for s in specs:
        spills[s.name].finish(out / f"{s.name}.hashes.npy", out / f"{s.name}.postings.npy")
    shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(out / "items.json", json.dumps(items))
    settings = {"version": TOKEN_INDEX_VERSION, "codec": desc, "frame_rate": fr, "num_codebooks": K,
                "specs": [asdict(s) for s in specs], "stop_df": STOP_DF, "bucket_bits": bits,
                "items": len(items), "frames": int(frames), "hours": round(frames / fr / 3600, 4),
                "build_s": round(time.perf_counter() - t0, 2)}
    atomic_write_text(out / "tokens.json", json.dumps(settings, indent=2))  # last: marks the index complete
    return settings


def roundtrip_specs(num_codebooks: int, frame_rate: float) -> list[NgramSpec]:
    """``rt``: the ``all`` n-gram over the round-tripped tokens (exact runs); ``rt0``: the ``cb0`` n-gram
    over their codebook 0 (gapped chains), which survives a gain change that breaks exact runs."""
    return [NgramSpec("rt" if s.name == "all" else "rt0", s.codebooks, s.n) for s in default_specs(num_codebooks, frame_rate)]


def build_roundtrip_index(data_dir: str | os.PathLike, codec, progress: bool = True, batch_rows: int = 8) -> dict:
    """The ``rt`` and ``rt0`` indexes: every row's tokens decoded with ``codec`` (the dataset's) and
    encoded again (kept in ``rt.codes.i2``, int16 ``[K, T]`` per item, with ``rt.offsets.npy``), then
    hashed. Needs the token index (the same item numbers); returns the settings written. The codec
    pass (a decode and an encode of every row) is skipped when the round trip on disk was made by
    the same codec for the same items, so new hashes cost no codec compute."""
    import torch
    from tqdm import tqdm

    from audiogen.data.loader import load_prepared
    from audiogen.files import atomic_write_text

    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    out = data_dir / INDEX_DIR
    tok = json.loads((out / "tokens.json").read_text())
    K, n_items = int(tok["num_codebooks"]), int(tok["items"])
    meta = out / "roundtrip.json"
    old = json.loads(meta.read_text()) if meta.is_file() else {}
    meta.unlink(missing_ok=True)
    desc = codec.describe()
    reuse = (old.get("items") == n_items and old.get("codec", {}).get("weights_sha256") == desc.get("weights_sha256")
             and old.get("codec", {}).get("name") == desc.get("name")
             and (out / "rt.codes.i2").is_file() and (out / "rt.offsets.npy").is_file())
    codec_s = old.get("codec_s") if reuse else None
    if not reuse:
        offsets = [0]
        pending: list[tuple[int, np.ndarray]] = []
        bar = tqdm(total=n_items, unit="row", desc="audit round trip", disable=not progress)

        def flush(f) -> None:
            by_len: dict[int, list] = {}  # rows of one length go through the codec together
            for item, codes in pending:
                by_len.setdefault(codes.shape[1], []).append((item, codes))
            done = {}
            for group in by_len.values():
                x = torch.from_numpy(np.stack([c for _, c in group]).astype(np.int64))
                with torch.no_grad():
                    rt = codec.encode(codec.decode(x))[:, :K, : x.shape[2]].cpu().numpy().astype(np.int16)
                done.update({item: rt[i] for i, (item, _) in enumerate(group)})
            for item, _ in pending:
                f.write(np.ascontiguousarray(done[item]).tobytes())
                offsets.append(offsets[-1] + done[item].shape[1])
            bar.update(len(pending))
            pending.clear()

        with open(out / "rt.codes.i2", "wb") as f:
            for item, (_, _, codes) in enumerate(iter_dataset_codes(load_prepared(data_dir))):
                pending.append((item, np.array(codes[:K])))
                if len(pending) >= batch_rows:
                    flush(f)
            flush(f)
        bar.close()
        np.save(out / "rt.offsets.npy", np.asarray(offsets, np.int64))
        codec_s = round(time.perf_counter() - t0, 2)
    offsets = np.load(out / "rt.offsets.npy")
    codes = np.memmap(out / "rt.codes.i2", np.int16, "r")
    specs = roundtrip_specs(K, float(tok["frame_rate"]))
    tmp = out / ".spill_rt"
    if tmp.exists():
        shutil.rmtree(tmp)
    spills = {}
    for spec in specs:
        (tmp / spec.name).mkdir(parents=True)
        spills[spec.name] = _Spill(tmp / spec.name, int(tok["bucket_bits"]))
    for item in range(n_items):
        a, b = int(offsets[item]), int(offsets[item + 1])
        rt = np.asarray(codes[a * K : b * K]).reshape(K, b - a)
        for spec in specs:
            h = ngram_hashes(spec.select(rt), spec.n)
            spills[spec.name].add(h, (np.uint64(item) << np.uint64(32)) | np.arange(len(h), dtype=np.uint64))
    for spec in specs:
        spills[spec.name].finish(out / f"{spec.name}.hashes.npy", out / f"{spec.name}.postings.npy")
    shutil.rmtree(tmp, ignore_errors=True)
    settings = {"version": ROUNDTRIP_VERSION, "specs": [asdict(s) for s in specs], "codec": desc,
                "items": n_items, "frames": int(offsets[-1]), "codec_s": codec_s, "reused_round_trip": reuse,
                "build_s": round(time.perf_counter() - t0, 2)}
    atomic_write_text(meta, json.dumps(settings, indent=2))  # last: marks it complete
    return settings


# -------------------------------------------------------------------------------- querying


@dataclass
class Run:
    """Frames ``query_start .. query_start + frames`` of the query match frames ``ref_start ..`` of
    dataset item ``item`` in the index's codebooks: all of them (``all``, ``agreement`` 1), or
    ``agreement`` of them, with gaps (``cb0``)."""

    index: str
    item: int
    query_start: int
    ref_start: int
    frames: int
    agreement: float = 1.0


class TokenIndex:
    """The token index of a prepared dataset, memory-mapped."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.folder = self.data_dir / INDEX_DIR
        meta = self.folder / "tokens.json"
        if not meta.is_file():
            raise AudiogenError(f"{self.data_dir}: no audit index; build it with 'audiogen audit index {self.data_dir}'")
        self.settings = json.loads(meta.read_text())
        if self.settings.get("version") != TOKEN_INDEX_VERSION:
            raise AudiogenError(f"{self.folder} was built by another version; rebuild it with "
                                f"'audiogen audit index {self.data_dir}'")
        self.frame_rate = float(self.settings["frame_rate"])
        self.specs = [NgramSpec(**s) for s in self.settings["specs"]]
        self.items = json.loads((self.folder / "items.json").read_text())
        self._rt = None
        rt = self.folder / "roundtrip.json"
        if rt.is_file():
            meta = json.loads(rt.read_text())
            if meta.get("version") == ROUNDTRIP_VERSION and meta.get("items") == len(self.items):
                self.specs += [NgramSpec(**x) for x in meta["specs"]]
                self._rt_offsets = np.load(self.folder / "rt.offsets.npy")
                self._rt = np.memmap(self.folder / "rt.codes.i2", np.int16, "r")
        self.arrays = {s.name: (np.load(self.folder / f"{s.name}.hashes.npy", mmap_mode="r"),
                                np.load(self.folder / f"{s.name}.postings.npy", mmap_mode="r"))
                       for s in self.specs}
        self._dd = None

    @property
    def names(self) -> list[str]:
        """The token indexes at hand: ``all``, ``cb0`` and, when built, ``rt`` and ``rt0``."""
        return [s.name for s in self.specs]

    def _ref_codes(self, name: str, item: int) -> np.ndarray:
        """The tokens index ``name`` was built from for ``item``: the row's, or its round trip (``rt*``)."""
        if not name.startswith("rt"):
            return self.item_codes(item)
        a, b = int(self._rt_offsets[item]), int(self._rt_offsets[item + 1])
        K = int(self.settings["num_codebooks"])
        return np.asarray(self._rt[a * K : b * K]).reshape(K, b - a)

    @property
    def codec(self) -> dict:
        return self.settings["codec"]

    def seconds(self, item: int) -> float:
        return self.items[item]["frames"] / self.frame_rate

    def follows(self, a: int, b: int) -> bool:
        """Item ``b`` is the segment of ``a``'s recording that starts where ``a`` ends."""
        items = self.items
        return (0 <= a < len(items) and 0 <= b < len(items) and items[a]["source"] == items[b]["source"]
                and abs(items[a]["start_s"] + self.seconds(a) - items[b]["start_s"]) < 0.1)

    def item_codes(self, item: int) -> np.ndarray:
        """``int16[K, T]`` of item ``item``, read from the dataset."""
        if self._dd is None:
            from audiogen.data.loader import load_prepared

            self._dd = {s: d.select_columns(["codes"]).with_format("numpy")
                        for s, d in load_prepared(self.data_dir).items()}
        it = self.items[item]
        return np.stack(list(self._dd[it["split"]][it["row"]]["codes"]))

    def _lookup(self, name: str, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hashes ``h`` -> ``(lo, hi)`` ranges in the sorted hash array (binary search on the memory map)."""
        H = self.arrays[name][0]
        order = np.argsort(h)  # sorted probes touch the map's pages in order
        lo, hi = np.empty(len(h), np.int64), np.empty(len(h), np.int64)
        lo[order] = np.searchsorted(H, h[order], "left")
        hi[order] = np.searchsorted(H, h[order], "right")
        return lo, hi

    def runs(self, codes: np.ndarray, name: str, top: int = 5) -> list[Run]:
        """The ``top`` longest runs (one per item) that ``codes: int[K, T]`` shares with the dataset: exact
        for ``all``; for ``cb0`` chains of hits on one diagonal with gaps up to ``MAX_GAP_S``."""
        spec = next(s for s in self.specs if s.name == name)
        q = spec.select(np.asarray(codes))
        h = ngram_hashes(q, spec.n)
        if not len(h):
            return []
        lo, hi = self._lookup(name, h)
        counts = hi - lo
        keep = (counts > 0) & (counts <= self.settings["stop_df"])
        pos, lo, counts = np.flatnonzero(keep), lo[keep], counts[keep]
        if not len(pos):
            return []
        # gather every posting of every kept n-gram: t (query position), item, frame
        n_hits = int(counts.sum())
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        idx = starts + np.arange(n_hits)
        post = np.asarray(self.arrays[name][1][idx])
        t = np.repeat(pos, counts).astype(np.int64)
        item = (post >> np.uint64(32)).astype(np.int64)
        diag = (post & np.uint64(0xFFFFFFFF)).astype(np.int64) - t
        o = np.lexsort((t, diag, item))
        t, item, diag = t[o], item[o], diag[o]
        new = np.ones(len(t), bool)
        gap = int(round(MAX_GAP_S[name] * self.frame_rate))
        new[1:] = (item[1:] != item[:-1]) | (diag[1:] != diag[:-1]) | (t[1:] > t[:-1] + 1 + gap)
        first = np.flatnonzero(new)
        last = np.append(first[1:], len(t)) - 1
        length = t[last] - t[first] + 1  # chain span in n-gram positions = frames - n + 1
        # the longest chain per item, longest items first
        best: dict[int, int] = {}
        for r in np.argsort(-length, kind="stable"):
            it = int(item[first[r]])
            if it not in best:
                best[it] = r
                if len(best) >= top:
                    break
        out = []
        for it, r in best.items():
            qs = int(t[first[r]])
            rs = qs + int(diag[first[r]])
            frames = int(length[r]) + spec.n - 1
            out.append(self._extend(q, spec, it, qs, rs, frames) if not gap else self._agreement(q, spec, it, qs, rs, frames))
        out = [r for r in out if r.agreement >= MIN_AGREEMENT]
        return sorted(out, key=lambda r: -r.frames)

    def _agreement(self, q: np.ndarray, spec: NgramSpec, item: int, qs: int, rs: int, frames: int) -> Run:
        """A gapped chain checked against the item's real tokens: the share of its frames that agree."""
        ref = spec.select(self._ref_codes(spec.name, item))
        same = (q[:, qs : qs + frames] == ref[:, rs : rs + frames]).all(axis=0)
        return Run(spec.name, item, qs, rs, frames, float(same.mean()) if len(same) else 0.0)

    def _extend(self, q: np.ndarray, spec: NgramSpec, item: int, qs: int, rs: int, frames: int) -> Run:
        """Check a chain against the item's real tokens and grow it to the exact shared run."""
        ref = spec.select(self._ref_codes(spec.name, item))
        Tq, Tr = q.shape[1], ref.shape[1]
        equal = lambda a, b: np.array_equal(q[:, a], ref[:, b])  # noqa: E731
        same = (q[:, qs : qs + frames] == ref[:, rs : rs + frames]).all(axis=0)
        if not same.all():  # a 64-bit hash collision: keep only the exact prefix
            frames = int(np.argmin(same))
        while qs > 0 and rs > 0 and equal(qs - 1, rs - 1):
            qs, rs, frames = qs - 1, rs - 1, frames + 1
        while qs + frames < Tq and rs + frames < Tr and equal(qs + frames, rs + frames):
            frames += 1
        return Run(spec.name, item, qs, rs, frames)

    def describe_run(self, run: Run) -> dict:
        """A run as JSON: seconds in the query and in the source recording."""
        it = self.items[run.item]
        fr = self.frame_rate
        return {"index": run.index, "seconds": round(run.frames / fr, 3), "frames": run.frames,
                "agreement": round(run.agreement, 3),
                "query_start_s": round(run.query_start / fr, 3), "query_end_s": round((run.query_start + run.frames) / fr, 3),
                "item": it["id"], "source": it["source"], "split": it["split"],
                "source_start_s": round(it["start_s"] + run.ref_start / fr, 3),
                "source_end_s": round(it["start_s"] + (run.ref_start + run.frames) / fr, 3)}
