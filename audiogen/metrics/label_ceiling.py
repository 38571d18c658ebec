"""How much genre, mood and instrument a codec lets through: the ceiling of the adherence report's figures.

The adherence report asks a model for each genre (or mood) label and counts a label as followed when the
tag distribution of its clips is closer (KL) to the references of that label than to those of any other
(:func:`audiogen.metrics.adherence.kl_confusion`). A model trained on a codec's tokens can at best play what
its training rows sound like through the codec. This module stands such a model in with the training rows
themselves: for each label, train rows that are not among its references (one per source file first, in a
seeded order), cut to the report's clip length, tagged as they are and after an encode/decode through the
codec, and put through the same confusion against the same references the report uses::

    report = label_ceiling(".cache/data_pf_deb", ".cache/debian-all", "genre")

Three confusions: the rows as they are against the references (the tagger's and the labels' own limit), through
the codec against the references (what the report can count for a model that played its training rows), and
through the codec against the references through the codec (the codec's timbre taken out of the comparison).
Instruments (:func:`instrument_ceiling`): held-out rows whose instruments list starts with one of the report's
six families, tagged as they are and through the codec, each counted when its family ranks first among the
six (the report's :func:`~audiogen.metrics.adherence.instrument_stats`).

See docs/adherence.md, "The ceiling for genre and mood" and "Instruments".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError

#: the confusions reported: (name, stand-in variant, reference variant)
VARIANTS = (("as it is", "source", "source"), ("through the codec", "codec", "source"),
            ("both through the codec", "codec", "codec"))


def pick_stand_ins(data_dir: str | Path, attr: str, labels: list[str], exclude: dict[str, list[dict]],
                   per_label: int, seed: int) -> dict[str, list[dict]]:
    """Up to ``per_label`` train rows per label of ``attr``, none of them a row in ``exclude`` (the references,
    by source and start), one per source file first, in a seeded order."""
    from audiogen.data.loader import load_prepared
    from audiogen.metrics.adherence import _spread
    from audiogen.models.conditioning import _norm

    ds = load_prepared(data_dir)
    if "train" not in ds or attr not in ds["train"].column_names:
        raise AudiogenError(f"{data_dir}: no train split with {attr} labels")
    taken = {(r["source"], r["start_s"]) for rs in exclude.values() for r in rs}
    rows: dict[str, list[dict]] = {}
    for r in ds["train"].select_columns(["source", "start_s", "duration_s", attr]):
        lab = _norm(r[attr]) if r[attr] else None
        if lab in labels and (r["source"], r["start_s"]) not in taken:
            rows.setdefault(lab, []).append(r)
    rng = np.random.default_rng(seed)
    return {lab: _spread(rows[lab], rng)[:per_label] for lab in labels if rows.get(lab)}


def label_ceiling(data_dir: str | Path, audio_dir: str | Path, attr: str, labels: list[str] | None = None,
                  codec_spec: str | Path | None = None, bandwidth: float | None = None, per_label: int = 8,
                  seconds: float = 8.0, seed: int = 0, tagger=None, progress: bool = False) -> dict:
    """The three confusions of :data:`VARIANTS` for ``attr`` (``genre`` or ``mood``). ``labels`` None: the labels
    of the dataset's train rows. References are picked as the adherence report picks them
    (:func:`audiogen.metrics.adherence.label_rows`, same ``seed`` and ``per_label``); only labels with both
    references and stand-ins are compared. ``codec_spec`` None: the default model's codec with the codebooks
    its LM uses. ``tagger``: the musicnn MTT tagger unless given (anything with ``tag_probabilities(wav, sr)``)."""
    from audiogen.codec.base import load_codec
    from audiogen.data.loader import load_prepared
    from audiogen.metrics.adherence import kl_confusion, label_rows
    from audiogen.models.conditioning import _norm
    from audiogen.progress import progress_bar

    if attr not in ("genre", "mood"):
        raise AudiogenError(f"the label ceiling measures genre or mood, not {attr!r}")
    if per_label < 2 or seconds <= 0:
        raise AudiogenError("per-label must be at least 2 and seconds positive")
    if labels is None:
        ds = load_prepared(data_dir)
        if "train" not in ds or attr not in ds["train"].column_names:
            raise AudiogenError(f"{data_dir}: no train split with {attr} labels")
        labels = sorted({_norm(v) for v in ds["train"][attr] if v})
    labels = [_norm(lab) for lab in labels]
    codec = load_codec(codec_spec or "default", bandwidth)
    if tagger is None:
        from audiogen.metrics.tagger import load_tagger

        tagger = load_tagger("MTT")
    refs, origin = label_rows(data_dir, attr, labels, per_label, seed=seed)
    stand_ins = pick_stand_ins(data_dir, attr, labels, refs, per_label, seed + 1)
    both = [lab for lab in labels if lab in refs and lab in stand_ins]
    if len(both) < 2:
        raise AudiogenError(f"{data_dir}: fewer than two {attr} labels have both references and other train rows "
                            f"({', '.join(both) or 'none'}); a confusion needs two")

    total = sum(len(refs[lab]) + len(stand_ins[lab]) for lab in both)
    with progress_bar(total=total, desc=f"{attr} ceiling", unit="clip", disable=not progress) as bar:
        ref_tags = {lab: _tag_rows(refs[lab], audio_dir, seconds, codec, tagger, bar) for lab in both}
        in_tags = {lab: _tag_rows(stand_ins[lab], audio_dir, seconds, codec, tagger, bar) for lab in both}
    confusions = {}
    for name, v_in, v_ref in VARIANTS:
        k = kl_confusion({lab: in_tags[lab][v_in] for lab in both}, {lab: ref_tags[lab][v_ref] for lab in both},
                         seed=seed)
        k["closest"] = {lab: k["labels"][int(np.argmin(row))] for lab, row in zip(k["labels"], k["matrix"])}
        confusions[name] = k
    return {"data_dir": str(data_dir), "attr": attr, "codec": codec.describe(), "num_codebooks": codec.num_codebooks,
            "seconds": seconds, "seed": seed, "labels": both, "references": {lab: origin[lab] for lab in both},
            "stand_ins": {lab: len(stand_ins[lab]) for lab in both},
            "skipped": {lab: ("no references" if lab not in refs else "no other train rows")
                        for lab in labels if lab not in both},
            "confusions": confusions}


def instrument_ceiling(data_dir: str | Path, audio_dir: str | Path, codec_spec: str | Path | None = None,
                       bandwidth: float | None = None, per_family: int = 8, seconds: float = 8.0, seed: int = 0,
                       split: str = "valid", tagger=None, progress: bool = False) -> dict:
    """Up to ``per_family`` rows of ``split`` whose instruments list starts with each of the adherence report's
    families (one per source file first, in a seeded order), ``seconds`` from each row's middle, tagged as they
    are and through the codec: per variant the report's :func:`~audiogen.metrics.adherence.instrument_stats`
    with the row's family as the request."""
    from audiogen.codec.base import load_codec
    from audiogen.data.loader import load_prepared
    from audiogen.metrics.adherence import FAMILIES, _spread, family_scores, instrument_stats
    from audiogen.progress import progress_bar

    if per_family < 1 or seconds <= 0:
        raise AudiogenError("per-family and seconds must be positive")
    ds = load_prepared(data_dir)
    if split not in ds or "instruments" not in ds[split].column_names:
        raise AudiogenError(f"{data_dir}: no {split} split with instrument labels")
    by_family: dict[str, list[dict]] = {}
    for r in ds[split].select_columns(["source", "start_s", "duration_s", "instruments"]):
        first = " ".join(str(r["instruments"][0]).lower().split()) if r["instruments"] else None
        if first in FAMILIES:
            by_family.setdefault(first, []).append(r)
    rng = np.random.default_rng(seed)
    rows = [(fam, r) for fam in FAMILIES for r in _spread(by_family.get(fam, []), rng)[:per_family]]
    if not rows:
        raise AudiogenError(f"{data_dir}: no {split} row lists one of {', '.join(FAMILIES)} first")
    codec = load_codec(codec_spec or "default", bandwidth)
    if tagger is None:
        from audiogen.metrics.tagger import load_tagger

        tagger = load_tagger("MTT")
    with progress_bar(total=len(rows), desc="instrument ceiling", unit="row", disable=not progress) as bar:
        tags = _tag_rows([r for _, r in rows], audio_dir, seconds, codec, tagger, bar)
    fams = [fam for fam, _ in rows]
    variants = {v: instrument_stats(fams, family_scores(t, tagger.labels)) for v, t in tags.items()}
    return {"data_dir": str(data_dir), "attr": "instruments", "split": split, "codec": codec.describe(),
            "num_codebooks": codec.num_codebooks, "seconds": seconds, "seed": seed,
            "rows": {fam: fams.count(fam) for fam in FAMILIES if fam in fams}, "variants": variants}


def _tag_rows(rows: list[dict], audio_dir: str | Path, seconds: float, codec, tagger, bar) -> dict[str, np.ndarray]:
    """The tag probabilities ``[len(rows), tags]`` of each row's excerpt (``seconds`` from its middle) as it is
    (``source``) and through ``codec`` (``codec``), in the rows' order; ``bar`` counts the rows."""
    from audiogen.codec.base import roundtrip_array
    from audiogen.metrics.adherence import excerpt

    sr, out = codec.sample_rate, {"source": [], "codec": []}
    for r in rows:
        wav = excerpt(audio_dir, r, seconds, sr, codec.channels)
        out["source"].append(tagger.tag_probabilities(wav, sr))
        out["codec"].append(tagger.tag_probabilities(roundtrip_array(codec, wav), sr))
        bar.update(1)
    return {k: np.stack(v) for k, v in out.items()}


def summary_markdown(report: dict) -> str:
    if report["attr"] == "instruments":
        return _instrument_markdown(report)
    attr, labs = report["attr"], report["labels"]
    codec = report["codec"].get("name", "the codec")
    lines = [f"# {attr.capitalize()} ceiling: `{report['data_dir']}` through `{codec}` "
             f"({report['num_codebooks']} codebooks)", "",
             f"Train rows of each {attr} label (not the references) stand in for a model that played its training "
             f"rows; {report['seconds']:g} s each, seed {report['seed']}; tag KL to each label's references "
             "(the adherence report's references and measure). A label counts when its own references are the "
             "closest.", "",
             "| stand-ins vs references | own label closest | closest label per label (stand-ins) |", "|---|---|---|"]
    for name, k in report["confusions"].items():
        closest = ", ".join(f"{a} -> {b}" for a, b in k["closest"].items())
        lines.append(f"| {name} | {k['own_closest_count']} of {len(k['labels'])} | {closest} |")
    lines += ["", "| label | references | stand-ins |", "|---|---|---|"]
    lines += [f"| {lab} | {report['references'][lab]} | {report['stand_ins'][lab]} train rows |" for lab in labs]
    if report["skipped"]:
        lines += ["", "Not compared: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items()) + "."]
    return "\n".join(lines)


def _instrument_markdown(report: dict) -> str:
    codec = report["codec"].get("name", "the codec")
    lines = [f"# Instrument ceiling: `{report['data_dir']}` ({report['split']} rows) through `{codec}` "
             f"({report['num_codebooks']} codebooks)", "",
             f"Rows whose instruments list starts with a family, {report['seconds']:g} s each, seed {report['seed']}; "
             "the family ranked first among the six by the tagger (the adherence report's measure).", "",
             "| family | rows | as it is: ranked first | through the codec: ranked first | through the codec, heard "
             "as |",
             "|---|---|---|---|---|"]
    src, cod = report["variants"]["source"], report["variants"]["codec"]
    for fam, n in report["rows"].items():
        heard = {}
        for f in cod["top_family"][fam]:
            heard[f] = heard.get(f, 0) + 1
        k_src = sum(f == fam for f in src["top_family"][fam])
        k_cod = heard.get(fam, 0)
        lines.append(f"| {fam} | {n} | {k_src} of {n} | {k_cod} of {n} | "
                     + ", ".join(f"{f} {c}" for f, c in sorted(heard.items(), key=lambda x: -x[1])) + " |")
    n = src["clips"]
    lines.append(f"| all | {n} | {src['top1']['k']} of {n} | {cod['top1']['k']} of {n} | |")
    return "\n".join(lines)
