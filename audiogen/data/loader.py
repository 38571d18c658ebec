"""Reading a prepared dataset for LM training: random crops, padding masks, batches, sharding.

A prepared dataset (``audiogen prep``, see :mod:`audiogen.data.prep`) holds one row per
segment with ``codes: int16[K, T]`` and its conditions. Training sees *samples*, numbered
``0, 1, 2, ...``; sample ``i`` is a pure function of ``(seed, i)``:

- epoch ``e = i // N`` (N rows) visits the rows in the permutation drawn from ``(seed, e)``;
  with a source mix (rows from several prepared datasets, see :func:`mix_rows`), epoch ``e``
  instead holds ``round(w_s * N)`` rows of source ``s``, each source's rows in their own
  permutation (cycled when a source is oversampled), the whole epoch shuffled again;
- the crop start inside the row is drawn from ``(seed, i)``; a row shorter than
  ``segment_frames`` is padded with the special token and masked out of the loss;
- condition dropout (classifier-free guidance) is drawn from ``(seed, i)`` too.

Optimizer step ``s`` consumes samples ``[s * G, (s + 1) * G)`` with ``G`` the global
batch. Each of ``world`` processes takes a contiguous ``G / world`` slice of them, cut
into ``accum`` micro-batches. So the global batch of a step does not depend on the
number of processes, and resuming at step ``s`` needs nothing but ``s``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audiogen.data.estimators import beat_phase
from audiogen.errors import AudiogenError
from audiogen.models.conditioning import ATTRIBUTES, Conditions, ConditionerConfig, drop_conditions

CONDITION_COLUMNS = ("caption", *(a.name for a in ATTRIBUTES))


def save_derived(train, valid, source_dir: str | os.PathLike, out_dir: str | os.PathLike, record: dict,
                 progress: bool = True) -> None:
    """Write ``out_dir``: a dataset derived from the prepared ``source_dir`` (its ``train`` and ``valid`` splits,
    ``datasets.Dataset`` each), atomically (a ``.partial`` folder renamed at the end), with the source's
    ``prep_config.json`` plus ``record`` (what was done, e.g. ``{"augment": {...}}``)."""
    import shutil

    import datasets

    from audiogen.progress import datasets_bars

    src, out = Path(source_dir), Path(out_dir)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with datasets_bars(progress):
        datasets.DatasetDict({"train": train, "valid": valid}).save_to_disk(str(partial))
    config = json.loads((src / "prep_config.json").read_text()) if (src / "prep_config.json").is_file() else {}
    config.update(record)
    (partial / "prep_config.json").write_text(json.dumps(config, indent=2))
    partial.rename(out)


def load_prepared(data_dir: str | os.PathLike):
    """``datasets.load_from_disk`` of an ``audiogen prep`` output, with the train/valid splits checked."""
    import datasets

    d = Path(data_dir)
    if not (d / "dataset_dict.json").is_file():
        raise AudiogenError(f"data_dir={d}: not a prepared dataset (no dataset_dict.json); run 'audiogen prep' first")
    dd = datasets.load_from_disk(str(d))
    for split in ("train", "valid"):
        if split not in dd:
            raise AudiogenError(f"data_dir={d}: the '{split}' split is missing")
    if len(dd["train"]) == 0:
        raise AudiogenError(f"data_dir={d}: the train split is empty")
    if "codes" not in dd["train"].column_names or "codec" not in dd["train"].column_names:
        raise AudiogenError(f"data_dir={d}: rows lack 'codes'/'codec' (not made by audiogen prep?)")
    return dd


def dataset_codec(ds) -> dict:
    """The codec description (``codec.describe()``) recorded in the rows; every row must agree."""
    values = set(ds.unique("codec"))
    if len(values) != 1:
        raise AudiogenError(f"the dataset mixes {len(values)} codecs; prepare it again with one codec")
    return json.loads(values.pop())


def load_mix(data_dirs: list[str | os.PathLike]):
    """The train splits of several prepared datasets (same codec) concatenated, and their sizes.

    Returns ``(train, valid, sizes)``: ``train`` rows of ``data_dirs[0]`` first, ``valid`` is
    the *first* dataset's valid split (so held-out figures stay on it whatever is mixed in).
    """
    import datasets

    dds = [load_prepared(d) for d in data_dirs]
    codecs = [dataset_codec(dd["train"]) for dd in dds]
    for d, c in zip(data_dirs[1:], codecs[1:]):
        if c != codecs[0]:
            raise AudiogenError(f"data_dir={d} was tokenized with another codec than data_dir={data_dirs[0]}; "
                                f"prepare it again with the same codec")
    sizes = [len(dd["train"]) for dd in dds]
    trains = [dd["train"] for dd in dds]
    # an optional attribute's column (harmony) some of the datasets have: empty (missing) in the others
    for name in (a.name for a in ATTRIBUTES if a.optional):
        if any(name in t.column_names for t in trains):
            trains = [t if name in t.column_names else t.add_column(name, [""] * len(t)) for t in trains]
    train = trains[0] if len(trains) == 1 else datasets.concatenate_datasets(trains)
    return train, dds[0]["valid"], sizes


def mix_rows(seed: int, epoch: int, sizes: list[int], weights: list[float]) -> np.ndarray:
    """Row indices (into the concatenated sources) of one epoch of a weighted source mix.

    The epoch has ``N = sum(sizes)`` samples, ``round(w_s * N)`` from source ``s`` (weights
    normalised; rounding remainders go to the largest weights): each source's rows in a
    permutation drawn from ``(seed, epoch, s)``, repeated when the source is oversampled,
    so every row of a source is seen before any is seen twice. A pure function of its arguments.
    """
    w = np.asarray(weights, dtype=float)
    if len(w) != len(sizes) or (w < 0).any() or w.sum() <= 0:
        raise AudiogenError(f"data_weights={list(weights)}: need one weight >= 0 per dataset, not all 0")
    n = int(sum(sizes))
    w = w / w.sum()
    counts = np.floor(w * n).astype(int)
    for s in np.argsort(-w, kind="stable")[: n - counts.sum()]:
        counts[s] += 1
    offsets = np.cumsum([0, *sizes[:-1]])
    parts = []
    for s, (size, count) in enumerate(zip(sizes, counts)):
        if count == 0:
            continue
        if size == 0:
            raise AudiogenError(f"dataset {s} of the mix has no train rows but weight {weights[s]}")
        rng = np.random.default_rng([seed, epoch, 3, s])
        reps = -(-int(count) // size)
        rows = np.concatenate([rng.permutation(size) for _ in range(reps)])[:count]
        parts.append(rows + offsets[s])
    table = np.concatenate(parts)
    return table[np.random.default_rng([seed, epoch, 4]).permutation(len(table))]


def crop_start(seed: int, index: int, length: int, segment_frames: int) -> int:
    """Where sample ``index``'s crop starts in a row of ``length`` frames (0 when the row is short)."""
    if length <= segment_frames:
        return 0
    return int(np.random.default_rng([seed, index, 1]).integers(0, length - segment_frames + 1))


class CropDataset(torch.utils.data.Dataset):
    """Sample ``i`` -> ``{"codes": LongTensor[K, S], "mask": BoolTensor[K, S], "cond": Conditions}``, plus
    ``"beat": FloatTensor[S + K - 1]`` with ``frame_rate`` (an LM with a beat grid).

    ``S = segment_frames``; ``mask`` is False on padding. With ``drop`` (a
    ``ConditionerConfig``) the conditions are dropped as in :func:`drop_conditions`,
    seeded by ``(seed, i)``. Indices run past the dataset length: that is the next epoch.
    ``random_crops=False`` (evaluation): sample ``i`` is the start of row ``i % len``.
    ``mix=(sizes, weights)``: ``ds`` is several sources concatenated (:func:`load_mix`), sampled
    with these weights (:func:`mix_rows`); None visits every row once per epoch.
    ``frame_rate`` (codec frames per second): also return the beat phase of every delay-pattern
    position's frame (``audiogen.data.estimators.beat_phase`` of the row's ``beats``, from the crop
    on), NaN where the row has no beats or its tempo condition was dropped.
    """

    def __init__(self, ds, segment_frames: int, special: int, seed: int, drop: ConditionerConfig | None = None,
                 random_crops: bool = True, mix: tuple[list[int], list[float]] | None = None,
                 frame_rate: float | None = None):
        if segment_frames < 1:
            raise AudiogenError(f"segment_frames must be >= 1, got {segment_frames}")
        if frame_rate is not None and "beats" not in ds.column_names:
            raise AudiogenError("this dataset has no beat times (a 'beats' column), which an LM with a beat grid "
                                "trains on; prepare it again with this version of 'audiogen prep'")
        self.frame_rate = frame_rate
        # an optional attribute's column (harmony) is in the datasets labelled with it only
        self.condition_columns = [c for c in CONDITION_COLUMNS if c in ds.column_names]
        columns = ["codes", *self.condition_columns, *(["beats"] if frame_rate is not None else [])]
        self.ds = ds.select_columns(columns).with_format("numpy")
        self.n = len(ds)
        self.segment_frames = segment_frames
        self.special = special
        self.seed = seed
        self.drop = drop
        self.random_crops = random_crops
        self.mix = mix
        if mix is not None and sum(mix[0]) != self.n:
            raise AudiogenError(f"the mix's sizes {mix[0]} do not add up to the dataset's {self.n} rows")
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return self.n

    def row_of(self, i: int) -> int:
        if not self.random_crops:
            return int(i) % self.n
        epoch, pos = divmod(int(i), self.n)
        if epoch != self._perm_epoch:
            self._perm = (np.random.default_rng([self.seed, epoch, 0]).permutation(self.n) if self.mix is None
                          else mix_rows(self.seed, epoch, *self.mix))
            self._perm_epoch = epoch
        return int(self._perm[pos])

    def __getitem__(self, i: int) -> dict:
        row = self.ds[self.row_of(i)]
        codes = np.asarray(row["codes"])
        if codes.ndim != 2:  # a [K] object array of [T] arrays
            codes = np.stack(list(codes))
        K, T = codes.shape
        S = self.segment_frames
        start = crop_start(self.seed, i, T, S) if self.random_crops else 0
        piece = torch.from_numpy(codes[:, start : start + S].astype(np.int64))
        out = torch.full((K, S), self.special, dtype=torch.long)
        mask = torch.zeros((K, S), dtype=torch.bool)
        out[:, : piece.shape[1]] = piece
        mask[:, : piece.shape[1]] = True
        cond = Conditions.from_row({k: _plain(row[k]) for k in self.condition_columns})
        if self.drop is not None:
            g = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, int(i), 2]).integers(2**62)))
            cond = drop_conditions([cond], self.drop, g)[0]
        item = {"codes": out, "mask": mask, "cond": cond}
        if self.frame_rate is not None:  # the grid goes with the tempo condition: dropped together
            beats = np.asarray(row["beats"], dtype=np.float64) if cond.bpm is not None else np.zeros(0)
            item["beat"] = torch.from_numpy(beat_phase(beats, S + K - 1, self.frame_rate, start / self.frame_rate))
        return item


def _plain(v):
    """numpy-formatted values back to Python (strings, floats, lists of strings)."""
    if isinstance(v, np.ndarray):
        return [str(x) for x in v.tolist()] if v.ndim else v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass
class Batch:
    codes: torch.Tensor  # LongTensor[B, K, S]
    mask: torch.Tensor  # BoolTensor[B, K, S]
    conds: list[Conditions]
    beat: torch.Tensor | None = None  # FloatTensor[B, S + K - 1]: each pattern position's beat phase (NaN: none)

    def to(self, device) -> "Batch":
        return Batch(self.codes.to(device), self.mask.to(device), self.conds,
                     None if self.beat is None else self.beat.to(device))


def collate(items: list[dict]) -> Batch:
    beat = torch.stack([x["beat"] for x in items]) if "beat" in items[0] else None
    return Batch(torch.stack([x["codes"] for x in items]), torch.stack([x["mask"] for x in items]),
                 [x["cond"] for x in items], beat)


class StepBatchSampler(torch.utils.data.Sampler):
    """This process's micro-batches, as lists of sample indices, from optimizer step ``start`` to ``stop``.

    Step ``s`` covers samples ``[s * G, (s + 1) * G)``; process ``rank`` of ``world``
    takes the slice ``[rank * G / world, (rank + 1) * G / world)`` of them, in ``accum``
    micro-batches of ``G / (world * accum)``.
    """

    def __init__(self, start: int, stop: int, global_batch: int, world: int = 1, rank: int = 0, accum: int = 1):
        if global_batch % (world * accum):
            raise AudiogenError(f"batch_size={global_batch} must be divisible by processes x grad_accum "
                                f"= {world} x {accum}")
        self.start, self.stop, self.G, self.world, self.rank, self.accum = start, stop, global_batch, world, rank, accum
        self.micro = global_batch // (world * accum)

    def __iter__(self):
        for s in range(self.start, self.stop):
            base = s * self.G + self.rank * (self.G // self.world)
            for a in range(self.accum):
                first = base + a * self.micro
                yield list(range(first, first + self.micro))

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.accum


def make_loader(dataset: CropDataset, start: int, stop: int, global_batch: int, world: int = 1, rank: int = 0,
                accum: int = 1, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A loader yielding this process's ``Batch`` micro-batches from step ``start`` (``accum`` per step)."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(start, stop, global_batch, world, rank, accum),
        collate_fn=collate, num_workers=num_workers, persistent_workers=False,
        # its own generator: iterating must not draw from the global RNG that resume restores
        generator=torch.Generator().manual_seed(dataset.seed),
    )


def eval_batches(ds, segment_frames: int, special: int, batch: int, max_rows: int, world: int = 1, rank: int = 0,
                 frame_rate: float | None = None):
    """Fixed evaluation crops: the first ``segment_frames`` of the first ``max_rows`` rows, all conditions kept.

    Yields this process's share as ``Batch``es; the same crops at every evaluation. Every
    process gets the same number of batches of the same size (FSDP's forward is a
    collective): the shares are padded with fully masked rows, which count for nothing.
    """
    n = min(len(ds), max_rows) if max_rows else len(ds)
    if n == 0:
        return
    crops = CropDataset(ds.select(range(n)), segment_frames, special, seed=0, random_crops=False,
                        frame_rate=frame_rate)
    per_rank = -(-n // world)
    mine = [rank + world * m for m in range(per_rank)]
    for i in range(0, per_rank, batch):
        items = []
        for j in mine[i : i + batch]:
            item = crops[j % n]
            if j >= n:  # padding: present for the shapes, masked out of the loss
                item = {**item, "mask": torch.zeros_like(item["mask"])}
            items.append(item)
        yield collate(items)
