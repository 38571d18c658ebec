"""Rows that hold one chord: how many a prepared corpus has, and a copy of it without them.

An LM samples what its corpus plays. A quarter of the default model's recordings' training rows hold
one chord for their 10 s (harmonic movement under :data:`audiogen.metrics.audio_checks.HELD_CHORD_MOVEMENT`,
measured on each row's own excerpt of the source audio: 631 of 2293, 544 of them Warzone 2100's pads),
against 2-3 % of the rendered scores' rows; every LM trained on them plays drones (docs/training.md,
"Rows that hold one chord"). :func:`row_movements` measures each row; :func:`drop_held_rows` writes the
dataset again with the train rows under a movement line left out and the valid split as it was, so
held-out figures stay comparable with the source's; :func:`label_harmony` keeps every row and labels each
``held`` or ``moving`` (the conditioner's ``harmony`` attribute).

The figure is computed on the source audio (mono, at the chroma rate), not on the codes: what the row
*is*, whatever the codec makes of it. Rows too short or too quiet to measure (fewer than two sounding
1 s windows) have no figure and are kept.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError


def row_movements(data_dir: str | os.PathLike, audio_dir: str | os.PathLike, split: str = "train",
                  progress: bool = True) -> dict[str, float]:
    """``{row id: harmonic movement}`` of each ``split`` row's excerpt (``start_s``, ``duration_s``) of its
    source file under ``audio_dir`` (the folder ``audiogen prep`` read); NaN where it cannot be measured.
    Each source file is decoded once."""
    from audiogen.audio.io import load_audio
    from audiogen.data.loader import load_prepared
    from audiogen.metrics.audio_checks import CHROMA_SR, harmonic_movement
    from audiogen.progress import progress_bar

    root = Path(audio_dir)
    if not root.is_dir():
        raise AudiogenError(f"--audio-dir {root} is not a folder: give the folder audiogen prep read")
    rows = load_prepared(data_dir)[split].select_columns(["id", "source", "start_s", "duration_s"])
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    out: dict[str, float] = {}
    with progress_bar(total=len(rows), desc="measuring rows", unit="row", disable=not progress) as bar, \
            warnings.catch_warnings():
        # librosa's chroma says so for each near-silent frame set; such rows get NaN or a figure all the same
        warnings.filterwarnings("ignore", message="Trying to estimate tuning", category=UserWarning)
        for source, group in by_source.items():
            path = root / source
            if not path.is_file():
                raise AudiogenError(f"{path}: row {group[0]['id']}'s source is not there; --audio-dir must be "
                                    f"the folder audiogen prep read for {data_dir}")
            wav, sr = load_audio(path, sample_rate=CHROMA_SR, channels=1)
            wav = np.asarray(wav, dtype=np.float32).reshape(-1)
            for row in group:
                a = int(round(row["start_s"] * sr))
                b = a + int(round(row["duration_s"] * sr))
                out[row["id"]] = harmonic_movement(wav[a:b], sr)
                bar.update(1)
    return out


def label_harmony(data_dir: str | os.PathLike, out_dir: str | os.PathLike, audio_dir: str | os.PathLike,
                  min_movement: float | None = None, progress: bool = True) -> dict:
    """Write ``out_dir``: ``data_dir``'s prepared dataset, every row kept, with a ``harmony`` column: ``held`` for a
    row whose harmonic movement is under ``min_movement`` (default: the held-chord line, 0.017), ``moving`` for the
    others, empty where it cannot be measured; both splits, so held-out figures are taken with the condition the
    rows would be generated with. An LM trained on it learns the two as a condition (the conditioner's ``harmony``
    attribute) and plays ``moving`` unless asked for ``held``: the rows that hold one chord are trained on at full
    weight and named instead of left out (docs/training.md, "Harmony as a condition"). Atomic, as
    :func:`drop_held_rows`; returns the labelled rows per split and label."""
    from audiogen.data.loader import load_prepared, save_derived

    line = _movement_line(min_movement)
    src, out = Path(data_dir), Path(out_dir)
    if out.exists():
        raise AudiogenError(f"{out} exists; remove it or choose another --out")
    dd = load_prepared(src)
    if "harmony" in dd["train"].column_names:
        raise AudiogenError(f"{src} has a harmony column already")
    splits, summary = {}, {"min_movement": line}
    for split in ("train", "valid"):
        moves = row_movements(src, audio_dir, split, progress)
        labels = [_harmony(moves.get(rid, math.nan), line) for rid in dd[split]["id"]]
        splits[split] = dd[split].add_column("harmony", labels)
        summary[split] = dict(Counter(label or "unmeasured" for label in labels).most_common())
    save_derived(splits["train"], splits["valid"], src, out, {"curate": {"from": str(src), "harmony_line": line}},
                 progress)
    return summary


def _harmony(movement: float, line: float) -> str:
    """A row's ``harmony`` label: ``held`` under the line, ``moving`` at or over it, empty (missing) if unmeasured."""
    from audiogen.models.conditioning import HARMONIES

    if math.isnan(movement):
        return ""
    moving, held = HARMONIES
    return held if movement < line else moving


def _movement_line(min_movement: float | None) -> float:
    from audiogen.metrics.audio_checks import HELD_CHORD_MOVEMENT

    line = HELD_CHORD_MOVEMENT if min_movement is None else float(min_movement)
    if not (math.isfinite(line) and 0 <= line <= 1):
        raise AudiogenError(f"--min-movement {min_movement}: give a movement between 0 and 1 (held chord: "
                            f"{HELD_CHORD_MOVEMENT})")
    return line


def drop_held_rows(data_dir: str | os.PathLike, out_dir: str | os.PathLike | None, audio_dir: str | os.PathLike,
                   min_movement: float | None = None, progress: bool = True,
                   held_dir: str | os.PathLike | None = None) -> dict:
    """Write ``out_dir``: ``data_dir``'s prepared dataset without the train rows whose harmonic movement is under
    ``min_movement`` (default: the held-chord line, 0.017), the valid split as it was, atomically (a ``.partial``
    folder renamed at the end). ``held_dir``, if given, gets the rows left out the same way (train: those rows
    alone; valid as it was), to mix back at a lower weight (``data_weights``). ``out_dir`` None writes nothing
    (the summary alone). Returns a summary: rows in and out, the movement's quartiles, and the rows left out per
    source folder (its first path part)."""
    from audiogen.data.loader import load_prepared, save_derived

    line = _movement_line(min_movement)
    src = Path(data_dir)
    out = Path(out_dir) if out_dir is not None else None
    held_out = Path(held_dir) if held_dir is not None else None
    if held_out is not None and out is None:
        raise AudiogenError("--held-out needs --out: the held rows are written beside the dataset without them")
    for folder, flag in ((out, "--out"), (held_out, "--held-out")):
        if folder is not None and folder.exists():
            raise AudiogenError(f"{folder} exists; remove it or choose another {flag}")
    if out is not None and out == held_out:
        raise AudiogenError(f"--out and --held-out are both {out}: give two folders")
    dd = load_prepared(src)
    moves = row_movements(src, audio_dir, "train", progress)
    held = {rid for rid, m in moves.items() if _harmony(m, line) == "held"}  # unmeasured rows are kept
    train = dd["train"]
    keep, left, dropped_by = [], [], Counter()
    for i, row in enumerate(train.select_columns(["id", "source"])):
        if row["id"] in held:
            dropped_by[row["source"].split("/")[0]] += 1
            left.append(i)
        else:
            keep.append(i)
    measured = np.array([m for m in moves.values() if not math.isnan(m)])
    summary = {"rows_in": len(train), "rows_out": len(keep), "left_out": len(held), "min_movement": line,
               "unmeasured_kept": int(len(moves) - len(measured)),
               "movement_quartiles": [round(float(q), 4) for q in np.percentile(measured, [25, 50, 75])]
               if len(measured) else [],
               "left_out_by_source": dict(dropped_by.most_common())}
    if out is None:
        return summary
    if not keep:
        raise AudiogenError(f"every train row of {src} moves less than {line}: nothing would be left to train on")
    if held_out is not None and not left:
        raise AudiogenError(f"no train row of {src} moves less than {line}: --held-out would be empty")
    record = {"from": str(src), "held_rows_under": line}
    save_derived(train.select(keep), dd["valid"], src, out,
                 {"curate": {**record, "train_rows": "moving", "rows_left_out": len(left)}}, progress)
    if held_out is not None:
        save_derived(train.select(left), dd["valid"], src, held_out,
                     {"curate": {**record, "train_rows": "held", "rows_kept": len(left)}}, progress)
    return summary
