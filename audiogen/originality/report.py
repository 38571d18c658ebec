"""The audit as a short HTML page: per file the verdict, the reasons, and the best-matched
excerpt of the file beside the training excerpt it matches (log-mel spectrograms)."""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np

from audiogen.originality.near import CHROMA_SR

#: excerpts drawn at most this long
MAX_EXCERPT_S = 10.0


def best_match(result: dict) -> tuple[str, dict] | None:
    """The longest match any measure found: ``(measure, match dict)`` or None."""
    found = [(f"tokens.{n}", runs[0]) for n, runs in result.get("tokens", {}).items() if runs]
    for measure in ("embedding", "chroma"):
        m = (result.get(measure) or {}).get("match")
        if m:
            found.append((measure, m))
    return max(found, key=lambda f: f[1]["seconds"]) if found else None


def _spectrogram_png(query: np.ndarray, ref: np.ndarray, sr: int, titles: tuple[str, str]) -> str:
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
    for ax, x, title in zip(axes, (query, ref), titles):
        mel = librosa.power_to_db(librosa.feature.melspectrogram(y=x, sr=sr, n_fft=2048, hop_length=512, n_mels=96),
                                  ref=1.0, top_db=80)
        ax.imshow(mel, origin="lower", aspect="auto", cmap="magma",
                  extent=(0, len(x) / sr, 0, mel.shape[0]))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("seconds into the excerpt")
    axes[0].set_ylabel("mel band")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_html(path: str | os.PathLike, results: list[dict], auditor) -> None:
    """Write the page for ``results`` (``Auditor.audit_file`` dicts) atomically to ``path``."""
    from audiogen.audio import io as A
    from audiogen.files import atomic_write_text
    from audiogen.originality.near import ReferenceAudio

    ref = ReferenceAudio(auditor.data_dir, auditor.tokens, auditor.codec)
    colour = {"original": "#2a7", "similar": "#d90", "copy": "#c22"}
    parts = ["<!doctype html><meta charset='utf-8'><title>audiogen originality audit</title>",
             "<style>body{font-family:sans-serif;max-width:62em;margin:2em auto}td,th{padding:.2em .6em;"
             "text-align:left}img{max-width:100%}</style>",
             f"<h1>Originality audit</h1><p>Against <code>{html.escape(str(auditor.data_dir))}</code> "
             f"({len(auditor.tokens.items)} training rows). Thresholds: <code>"
             f"{html.escape(str(results[0]['thresholds'])) if results else ''}</code>; see docs/audit.md.</p>"]
    for r in results:
        v = r["verdict"]
        parts.append(f"<h2>{html.escape(r.get('file', ''))}: <span style='color:{colour[v]}'>{v}</span></h2>")
        if r["reasons"]:
            parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in r["reasons"]) + "</ul>")
        rows = [(f"tokens.{n}", runs[0]) for n, runs in r["tokens"].items() if runs]
        rows += [(m, r[m]["match"]) for m in ("embedding", "chroma") if (r.get(m) or {}).get("match")]
        if rows:
            parts.append("<table><tr><th>measure</th><th>seconds</th><th>in this file</th><th>training source</th></tr>")
            for name, m in rows:
                parts.append(f"<tr><td>{name}</td><td>{m['seconds']:.2f}</td><td>{m['query_start_s']:.2f}-"
                             f"{m['query_end_s']:.2f}s</td><td>{html.escape(m['source'])} "
                             f"{m['source_start_s']:.2f}-{m['source_end_s']:.2f}s</td></tr>")
            parts.append("</table>")
        best = best_match(r)
        if best and "file" in r:
            name, m = best
            dur = min(MAX_EXCERPT_S, m["seconds"])
            q, _ = A.load_audio(r["file"], CHROMA_SR, 1, offset_s=m["query_start_s"], duration_s=dur)
            item = m["item_index"]
            x, origin = ref.load(item, CHROMA_SR, m["source_start_s"] - auditor.tokens.items[item]["start_s"], dur)
            png = _spectrogram_png(q[0], x, CHROMA_SR, (f"this file, {m['query_start_s']:.1f}s on",
                                                        f"{m['source']}, {m['source_start_s']:.1f}s on ({origin})"))
            parts.append(f"<p>Best match ({name}):</p><img alt='spectrograms' src='data:image/png;base64,{png}'>")
    atomic_write_text(path, "\n".join(parts))
