"""Training curves as a picture: ``OUT_DIR/log.jsonl`` -> ``OUT_DIR/curves.png``.

Both training recipes (LM and codec) redraw the picture at every checkpoint, so a run on a
cluster can be checked with an image viewer (or ``scp``) without starting TensorBoard;
``python eval/plot_training.py OUT_DIR`` draws it on demand. Three panels against the
optimizer step:

- LM: the training loss (mean over codebooks, bold, and each codebook's, thin) with the
  validation loss per codebook (markers, from ``eval/ppl_k``); the learning rate; the
  throughput in audio tokens per second.
- codec: every loss term (log scale) with the held-out mel loss; the held-out SI-SDR; the
  codebook usage, training and held out.
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
        raise AudiogenError(f"{path}: no training log here (is this a training run's OUT_DIR?)")
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
    """Draw ``log_file`` (an LM or codec run's ``log.jsonl``) to ``png`` (default:
    ``curves.png`` beside it), written atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from audiogen.files import atomic_path

    log_file = Path(log_file)
    png = Path(png) if png is not None else log_file.with_name("curves.png")
    s = series(read_log(log_file))
    if "loss" in s:
        fig = _lm_figure(plt, s, log_file.parent.name)
    elif any(k.startswith("loss/") for k in s):
        fig = _codec_figure(plt, s, log_file.parent.name)
    else:
        raise AudiogenError(f"{log_file}: no training steps logged yet")
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png


_warned: set[str] = set()


def redraw(log_file: Path, write=print) -> None:
    """At a checkpoint: redraw ``curves.png``. A picture that cannot be drawn (matplotlib
    missing, nothing logged yet) never stops training; the first failure is reported once
    through ``write``."""
    if not Path(log_file).exists():
        return
    try:
        plot_training_log(log_file)
    except AudiogenError:
        pass  # nothing logged yet
    except Exception as e:  # noqa: BLE001 -- e.g. ImportError: matplotlib is an extra
        if str(log_file) not in _warned:
            _warned.add(str(log_file))
            write(f"warning: curves.png not drawn ({type(e).__name__}: {e})")


def _lm_figure(plt, s: dict, name: str):
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
    ax_loss.set_title(f"LM training: {name}")
    ax_loss.legend(fontsize=7, ncol=2)
    _line(ax_lr, s, "lr", "learning rate", "tab:green")
    _line(ax_tps, s, "tokens_per_s", "tokens / s", "tab:purple")
    ax_tps.set_xlabel("optimizer step")
    for ax in (ax_loss, ax_lr, ax_tps):
        ax.grid(alpha=0.3)
    return fig


def _codec_figure(plt, s: dict, name: str):
    fig, (ax_loss, ax_sdr, ax_use) = plt.subplots(3, 1, figsize=(8, 8), sharex=True,
                                                  gridspec_kw={"height_ratios": [3, 1, 1]})
    for key in sorted(k for k in s if k.startswith("loss/")):
        steps, values = s[key]
        if any(v > 0 for v in values):  # log scale: the losses differ by orders of magnitude
            ax_loss.plot(steps, values, lw=1.8 if key == "loss/mel" else 0.9, label=key[len("loss/"):])
    if "eval/mel" in s:
        ax_loss.plot(*s["eval/mel"], color="black", ls="none", marker="o", ms=4, label="mel, held out")
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"codec training: {name}")
    ax_loss.legend(fontsize=7, ncol=3)
    _line(ax_sdr, s, "eval/si_sdr_db", "held-out SI-SDR (dB)", "tab:green", marker="o")
    _line(ax_use, s, "codebook_usage", "codebook usage", "tab:purple", label="train")
    _line(ax_use, s, "eval/codebook_usage", "codebook usage", "black", marker="o", label="held out")
    if "codebook_usage" in s or "eval/codebook_usage" in s:
        ax_use.legend(fontsize=7)
    ax_use.set_xlabel("optimizer step")
    for ax in (ax_loss, ax_sdr, ax_use):
        ax.grid(alpha=0.3)
    return fig


def _line(ax, s: dict, key: str, ylabel: str, color: str, marker: str | None = None, label: str | None = None):
    if key in s:
        ax.plot(*s[key], color=color, marker=marker, ms=4, label=label)
    ax.set_ylabel(ylabel)
