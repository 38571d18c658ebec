"""Training curves as a picture: ``OUT_DIR/log.jsonl`` -> ``OUT_DIR/curves.png``.

The LM recipe redraws the picture at every checkpoint, so a run on a cluster can be
checked with an image viewer (or ``scp``) without starting TensorBoard;
``python eval/plot_training.py OUT_DIR`` draws it on demand. Three panels, against the
optimizer step: the training loss (mean over codebooks, bold, and each codebook's, thin)
with the validation loss per codebook (markers, from ``eval/ppl_k``); the learning rate;
the throughput in audio tokens per second.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from audiogen.errors import AudiogenError


def read_log(path: str | os.PathLike) -> list[dict]:
    """The lines of a ``log.jsonl``; a torn last line (a kill mid-write) is ignored."""
    path = Path(path)
    if not path.is_file():
        raise AudiogenError(f"{path}: no training log here (is this an LM training OUT_DIR?)")
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def series(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """``{name: (steps, values)}`` of every logged figure: ``loss``, ``loss_k``, ``lr``,
    ``tokens_per_s``, ``grad_norm``, and ``eval/loss_k`` (the log of ``eval/ppl_k``)."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key == "step" or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if key.startswith("eval/ppl_"):
                key, value = f"eval/loss_{key[len('eval/ppl_'):]}", math.log(value) if value > 0 else math.nan
            steps, values = out.setdefault(key, ([], []))
            steps.append(row["step"])
            values.append(value)
    return out


def plot_training_log(log_file: str | os.PathLike, png: str | os.PathLike | None = None) -> Path:
    """Draw ``log_file`` (``log.jsonl``) to ``png`` (default: ``curves.png`` beside it),
    written atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from audiogen.audio import atomic_path

    log_file = Path(log_file)
    png = Path(png) if png is not None else log_file.with_name("curves.png")
    s = series(read_log(log_file))
    if "loss" not in s:
        raise AudiogenError(f"{log_file}: no training steps logged yet")
    fig, (ax_loss, ax_lr, ax_tps) = plt.subplots(3, 1, figsize=(8, 8), sharex=True,
                                                 gridspec_kw={"height_ratios": [3, 1, 1]})
    ks = sorted(int(k.split("_")[1]) for k in s if k.startswith("loss_"))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k in ks:
        c = colors[k % len(colors)]
        ax_loss.plot(*s[f"loss_{k}"], color=c, lw=0.8, alpha=0.6, label=f"train, codebook {k}")
        if f"eval/loss_{k}" in s:
            ax_loss.plot(*s[f"eval/loss_{k}"], color=c, ls="none", marker="o", ms=4, label=f"valid, codebook {k}")
    ax_loss.plot(*s["loss"], color="black", lw=1.8, label="train, mean")
    ax_loss.set_ylabel("cross-entropy (nats)")
    ax_loss.set_title(f"LM training: {log_file.parent.name}")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=7, ncol=2)
    if "lr" in s:
        ax_lr.plot(*s["lr"], color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    if "tokens_per_s" in s:
        ax_tps.plot(*s["tokens_per_s"], color="tab:purple")
    ax_tps.set_ylabel("tokens / s")
    ax_tps.set_xlabel("optimizer step")
    ax_tps.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png
