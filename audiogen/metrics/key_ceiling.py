"""How much key and mode a codec lets through: the ceiling of the adherence report's key figures.

A model trained on a codec's tokens can at best play what the tokens hold. Held-out rows of a prepared
dataset that carry a key label are cut to the report's clip length, and prep's key estimator (the one the
adherence report uses, :func:`audiogen.metrics.adherence.analyse_clip`) is run on each excerpt as it is
(``source``), through the codec (``codec``: encode, decode) and, for a mel codec, on its unquantized
features inverted the way its decoder inverts them (``mel``: no codebooks at all, so the representation's
own limit)::

    report = key_ceiling(".cache/data_pf_deb", ".cache/debian-all", "audiogen/default_model/codec")

Counted against the label and against the source's own estimate (rows whose source has one) with the
adherence report's :func:`~audiogen.metrics.adherence.key_stats`, with Wilson intervals. See
docs/adherence.md, "The same ceiling for the mode".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError

MODES = ("major", "minor")


def _mode(key: str | None) -> str | None:
    return key.split()[-1].lower() if key else None


def pick_rows(data_dir: str | Path, per_mode: int, seed: int = 0, split: str = "valid") -> list[dict]:
    """Up to ``per_mode`` rows of each mode from ``split`` of a prepared dataset, one row per source file
    first, in a seeded order (:func:`audiogen.metrics.adherence._spread`)."""
    from audiogen.data.loader import load_prepared
    from audiogen.metrics.adherence import _spread

    ds = load_prepared(data_dir)
    if split not in ds or "key" not in ds[split].column_names:
        raise AudiogenError(f"{data_dir}: no {split} split with key labels")
    rows = [r for r in ds[split].select_columns(["source", "start_s", "duration_s", "key"]) if _mode(r["key"]) in MODES]
    rng = np.random.default_rng(seed)
    return [r for m in MODES for r in _spread([r for r in rows if _mode(r["key"]) == m], rng)[:per_mode]]


def key_ceiling(data_dir: str | Path, audio_dir: str | Path, codec_spec: str | Path | None = None,
                per_mode: int = 20, seconds: float = 8.0, seed: int = 0, progress: bool = False,
                bandwidth: float | None = None) -> dict:
    """The key estimate of each picked row's excerpt (``seconds`` from its middle) as it is, through the codec
    and (a mel codec) through its unquantized features; per-row estimates and, per variant, how many keep
    the label's and the source's mode and key. ``codec_spec`` None: the default model's codec with the
    codebooks its LM uses; ``bandwidth`` (kbps): the codec's codebooks for it (:func:`load_codec`)."""
    import torch

    from audiogen.codec.base import load_codec, roundtrip_array
    from audiogen.metrics.adherence import analyse_clip, excerpt, key_stats
    from audiogen.progress import progress_bar

    if per_mode < 1 or seconds <= 0:
        raise AudiogenError("per-mode and seconds must be positive")
    codec = load_codec(codec_spec or "default", bandwidth)
    sr, model = codec.sample_rate, getattr(codec, "model", None)
    mel = model if hasattr(model, "features") and hasattr(model, "synthesize") else None
    rows = pick_rows(data_dir, per_mode, seed)
    if not rows:
        raise AudiogenError(f"{data_dir}: no held-out rows with a major or minor key")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for r in progress_bar(rows, desc="key ceiling", unit="row", disable=not progress):
        off = r["start_s"] + max(0.0, (r["duration_s"] - seconds) / 2)
        wav = excerpt(audio_dir, r, seconds, sr, codec.channels)
        x = torch.from_numpy(wav)[None]
        est = {"label": r["key"], "source": analyse_clip(wav, sr, tempo=False)["key"]}
        with torch.no_grad():
            est["codec"] = analyse_clip(roundtrip_array(codec, wav), sr, tempo=False)["key"]
            if mel is not None:
                x = x[..., : x.shape[-1] // mel.config.hop * mel.config.hop]
                feats = mel.features(x)
                phase = torch.rand(1, mel.config.n_fft // 2 + 1, feats.shape[1], generator=gen) * 2 * np.pi
                est["mel"] = analyse_clip(mel.synthesize(feats, phase)[0].numpy(), sr, tempo=False)["key"]
        out.append({"source_file": r["source"], "start_s": off, **est})
    summary = {}
    heard = [o for o in out if o["source"] is not None]  # the source's own estimate: what "kept" is against
    for v in [k for k in out[0] if k not in ("source_file", "start_s", "label")]:
        vs_label = key_stats([o["label"] for o in out], [o[v] for o in out])
        summary[v] = {"mode_vs_label": vs_label["mode"], "key_vs_label": vs_label["key"]}
        if v != "source":
            vs_source = key_stats([o["source"] for o in heard], [o[v] for o in heard])
            summary[v]["mode_vs_source"], summary[v]["key_vs_source"] = vs_source["mode"], vs_source["key"]
    return {"data_dir": str(data_dir), "codec": codec.describe(), "num_codebooks": codec.num_codebooks,
            "seconds": seconds, "seed": seed,
            "rows_by_mode": {m: sum(_mode(o["label"]) == m for o in out) for m in MODES}, "summary": summary,
            "rows": out}


def summary_markdown(report: dict) -> str:
    def cell(p: dict | None) -> str:
        return "-" if p is None else f"{p['k']} of {p['n']} [{100 * p['low']:.0f}, {100 * p['high']:.0f}]"

    s, by = report["summary"], report["rows_by_mode"]
    lines = [f"# Key ceiling: `{report['data_dir']}` through `{report['codec'].get('name', 'the codec')}` "
             f"({report['num_codebooks']} codebooks)", "",
             f"{by['major']} major and {by['minor']} minor held-out rows, {report['seconds']:g} s each, seed "
             f"{report['seed']}; prep's key estimator; 95 % Wilson intervals.", "",
             "| excerpt | mode = label's | key = label's | mode = source's | key = source's |", "|---|---|---|---|---|"]
    names = {"source": "as it is", "codec": "through the codec", "mel": "unquantized mel, inverted"}
    for v, f in s.items():
        lines.append(f"| {names.get(v, v)} | {cell(f['mode_vs_label'])} | {cell(f['key_vs_label'])} | "
                     f"{cell(f.get('mode_vs_source'))} | {cell(f.get('key_vs_source'))} |")
    return "\n".join(lines)
