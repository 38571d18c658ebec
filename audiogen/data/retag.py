"""Instrument labels for what the tokens play: each row tagged after its codes are decoded.

Prep labels a recording's instruments with the tagger on the middle of the whole file, as it sounds before
tokenization (:func:`audiogen.metrics.tagger.fill_missing_labels`). An LM learns to play the tokens, and a
codec at 3 kbps does not carry every timbre: 328 train rows of the Debian recordings have labels that start
with ``strings``; tagged on their decoded codes, 9 rows of the 2293 do (docs/adherence.md, "Instrument labels
through the codec"). An LM trained on the file's labels learns that a strings request means what those rows'
tokens play. :func:`retag_instruments` writes a copy of a prepared dataset whose ``instruments``
are the tagger's on each row's decoded codes (the same tags and threshold as prep's,
:func:`audiogen.metrics.tagger.labels_from_tags`), so the label names what the tokens play, row by row::

    report = retag_instruments(".cache/data_pf_deb", ".cache/data_pf_deb_rt")

Meant for tagger-labelled recordings; a rendered corpus's exact labels are better left as they are.
Resumable: each row's tags are appended to ``OUT/.work/retag.jsonl`` as they come, and a rerun tags only the
rest. ``OUT`` is written as prep writes a dataset (splits swapped in, ``dataset_dict.json`` last), with the source
dataset's ``prep_config.json`` and ``prep_report.json`` (so its audio is still found) and ``retag.json`` (what
changed).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError

#: files of a prepared dataset's folder copied to the retagged one
COPIED_FILES = ("prep_config.json", "prep_report.json")


def _first(instruments) -> str:
    return str(instruments[0]) if instruments else "-"


def retag_instruments(data_dir: str | Path, out_dir: str | Path, codec_spec: str | Path | None = None,
                      tagger=None, threshold: float | None = None, progress: bool = True) -> dict:
    """Write ``out_dir``: ``data_dir`` with every row's ``instruments`` replaced by the tagger's instrument tags
    on the row's decoded codes (an empty list where none reaches ``threshold``, prep's
    :data:`~audiogen.metrics.tagger.LABEL_THRESHOLD` by default). ``codec_spec``: the codec folder the dataset
    was prepared with (checked against the rows' description); None: the default model's. ``tagger``: the
    musicnn MTT tagger unless given (anything with ``labels`` and ``tag_probabilities(wav, sr)``).
    Returns the report written to ``out_dir/retag.json``: rows per split, the first instrument's counts before
    and after, and how many rows changed it."""
    import datasets
    import torch

    from audiogen.codec.base import load_tokenizing_codec
    from audiogen.data.loader import dataset_codec, load_prepared
    from audiogen.files import atomic_write_text
    from audiogen.metrics.tagger import LABEL_THRESHOLD, labels_from_tags, load_tagger
    from audiogen.progress import datasets_bars, progress_bar

    threshold = LABEL_THRESHOLD if threshold is None else float(threshold)
    if not 0.0 < threshold < 1.0:
        raise AudiogenError(f"threshold must lie between 0 and 1, got {threshold:g}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if data_dir.resolve() == out_dir.resolve():
        raise AudiogenError(f"--out {out_dir} is the dataset itself: write the retagged copy to another folder")
    if (out_dir / "dataset_dict.json").exists():
        raise AudiogenError(f"{out_dir} already holds a dataset: remove it or choose another --out")
    dd = load_prepared(data_dir)
    desc = dataset_codec(dd["train"])
    if codec_spec is None:
        codec_spec = "default"
    codec = load_tokenizing_codec(codec_spec, desc)
    tagger = tagger or load_tagger("MTT")

    work = out_dir / ".work"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "retag.jsonl"
    done: dict[str, list[str]] = {}
    if log.is_file():  # a resumed run: a torn last line (killed mid-write) is tagged again
        for line in log.read_text().splitlines():
            try:
                r = json.loads(line)
                done[r["id"]] = r["instruments"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    todo = [(s, i) for s in dd for i, rid in enumerate(dd[s]["id"]) if rid not in done]
    with open(log, "a") as fh, torch.inference_mode():
        for split, i in progress_bar(todo, desc="retag", unit="row", disable=not progress):
            row = dd[split][i]
            codes = torch.as_tensor(np.asarray(row["codes"], dtype=np.int64))[None]
            wav = codec.decode(codes.to(codec.device))[0].float().cpu().numpy()
            tags = labels_from_tags(tagger.tag_probabilities(wav, codec.sample_rate), tagger.labels, threshold)
            done[row["id"]] = tags.get("instruments", [])
            fh.write(json.dumps({"id": row["id"], "instruments": done[row["id"]]}) + "\n")
            fh.flush()

    report: dict = {"data_dir": str(data_dir), "codec": str(codec_spec), "tagger": getattr(tagger, "name", None),
                    "threshold": threshold, "splits": {}}
    out = {}
    for split, ds in dd.items():
        before = [_first(x) for x in ds["instruments"]]
        new = [done[rid] for rid in ds["id"]]
        after = [_first(x) for x in new]
        report["splits"][split] = {
            "rows": len(ds), "first_before": dict(Counter(before).most_common()),
            "first_after": dict(Counter(after).most_common()),
            "first_changed": sum(a != b for a, b in zip(before, after))}
        out[split] = ds.remove_columns("instruments").add_column("instruments", new, feature=ds.features["instruments"])
        out[split] = out[split].select_columns(ds.column_names)  # the source's column order
    tmp = work / "dataset.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    with datasets_bars(progress):
        datasets.DatasetDict(out).save_to_disk(str(tmp))
    for name in COPIED_FILES:
        if (data_dir / name).is_file():
            shutil.copy(data_dir / name, out_dir / name)
    atomic_write_text(out_dir / "retag.json", json.dumps(report, indent=1))
    for name in (*dd.keys(), "dataset_dict.json"):  # dataset_dict.json last: marks it complete
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
    shutil.rmtree(work, ignore_errors=True)
    return report
