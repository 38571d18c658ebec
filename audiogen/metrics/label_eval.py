"""Validate the label estimators and the tagger on rendered tracks whose labels are exact.

:func:`evaluation_jobs` picks a fixed, varied set of music21 pieces and renders each with
one instrument family (solo piano, violin, flute, guitar, harp, cello, harpsichord, a
string quartet, a choir); :func:`evaluate` then runs every tempo and key estimator of
:mod:`audiogen.data.estimators` and the MTT tagger on each, against the sidecar's truth.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np

from audiogen.data.render import Job, listed_tracks, plan_corpus

#: rendered ensemble -> the MTT tags that name it
ENSEMBLE_TAGS = {
    "piano": ("piano",), "violin": ("violin", "strings"), "flute": ("flute",), "guitar": ("guitar",),
    "harp": ("harp",), "cello": ("cello", "strings"), "harpsichord": ("harpsichord",),
    "string quartet": ("strings", "violin", "cello"), "choir": ("choir", "choral"),
}
CHECK_ENSEMBLES = tuple(ENSEMBLE_TAGS)


def evaluation_jobs(n: int = 20, seed: int = 17) -> list[Job]:
    """``n`` jobs: alternately chorales (4 voices) and fiddle tunes (1 voice), ensembles cycled.

    Solo-instrument ensembles go to the one-voice tunes and the chorales get polyphonic
    ones (piano, harpsichord, harp, string quartet, choir), as they would be played.
    """
    rng = random.Random(seed)
    chorales = plan_corpus(1, seed, ["bach_chorales"])
    tunes = plan_corpus(1, seed, ["ryans_mammoth"])
    poly = ("piano", "string quartet", "choir", "harpsichord", "harp")
    mono = ("violin", "flute", "guitar", "cello", "piano")
    jobs = []
    for i in range(n):
        if i % 2 == 0:
            base, ens = rng.choice(chorales), poly[(i // 2) % len(poly)]
        else:
            base, ens = rng.choice(tunes), mono[(i // 2) % len(mono)]
        jobs.append(Job(base.collection, base.source, base.tune, ens, base.beat_bpm, base.transpose, 100 + i))
    return jobs


def evaluate(folder: str | Path, rows_in: list[dict], tagger=None, max_seconds: float | None = None,
             progress: bool = False) -> dict:
    """Run the estimators (and ``tagger``, if given) on rendered tracks; ``rows_in`` are their sidecars
    with a ``path`` relative to ``folder``; ``max_seconds`` analyses only each track's opening.
    Returns per-track rows and the summary figures (tempo also per collection)."""
    from audiogen.data import estimators as E
    from audiogen.data.labels import ANALYSIS_HOP
    from audiogen.progress import progress_bar

    rows = []
    for r in progress_bar(rows_in, desc="estimators", disable=not progress):
        wav, y, env, chroma = track_features(folder, r["path"], max_seconds)
        row = {"path": r["path"], "ensemble": r["ensemble"], "true_bpm": r["beat_bpm"], "true_key": r["key"],
               "time_signature": r.get("time_signature"), "collection": r.get("collection")}
        for name, f in E.TEMPO_ESTIMATORS.items():
            row[f"bpm_{name}"] = f(env, E.SR, ANALYSIS_HOP, chroma=chroma)
        for kind in ("stft", "cqt"):
            c = E.chroma(y, kind=kind)
            for prof in E.PROFILES:
                row[f"key_{prof}_{kind}"] = E.key_from_chroma(c, prof)
        if tagger is not None:
            probs = tagger.tag_probabilities(wav, E.SR)
            top = [t for t, _ in __import__("audiogen.metrics.tagger", fromlist=["top_of"]).top_of(probs, tagger.labels, 3)]
            row["mtt_top3"] = top
            row["instrument_hit"] = bool(set(top) & set(ENSEMBLE_TAGS.get(r["ensemble"], ())))
        rows.append(row)
    summary = {"tempo": {}, "key": {}}
    for name in E.TEMPO_ESTIMATORS:
        summary["tempo"][name] = E.tempo_accuracy([x["true_bpm"] for x in rows], [x[f"bpm_{name}"] for x in rows])
    collections = sorted({x["collection"] for x in rows if x["collection"]})
    if len(collections) > 1:
        summary["tempo_by_collection"] = {
            c: {name: E.tempo_accuracy([x["true_bpm"] for x in rows if x["collection"] == c],
                                       [x[f"bpm_{name}"] for x in rows if x["collection"] == c])
                for name in E.TEMPO_ESTIMATORS}
            for c in collections}
    for kind in ("stft", "cqt"):
        for prof in E.PROFILES:
            k = f"{prof}_{kind}"
            scores = [E.key_score(x["true_key"], x[f"key_{k}"]) for x in rows]
            summary["key"][k] = {"weighted": float(np.mean(scores)), "exact": float(np.mean([s == 1 for s in scores]))}
    if tagger is not None:
        summary["instrument_top3"] = float(np.mean([x["instrument_hit"] for x in rows]))
        confusion: dict = {}
        for x in rows:
            confusion.setdefault(x["ensemble"], []).append(x["mtt_top3"])
        summary["instrument_confusion"] = confusion
    return {"summary": summary, "rows": rows}


def track_features(folder: str | Path, path: str, max_seconds: float | None = None):
    """A rendered track's first ``max_seconds`` (all of it if None) at the analysis rate: ``(wav [C, N],
    mono [N], onset envelope [F], chroma [12, F])``, the envelope and chroma as prep computes them."""
    from audiogen.audio.io import load_audio
    from audiogen.data import estimators as E
    from audiogen.data.labels import _analysis_features

    wav, sr = load_audio(Path(folder) / path, sample_rate=E.SR)
    if max_seconds:
        wav = wav[:, : int(max_seconds * sr)]
    y = wav.mean(axis=0)
    env, chroma = _analysis_features(y, E.SR)
    return wav, y, env, chroma


def fit_tempo_levels(folder: str | Path, rows: list[dict], max_seconds: float | None = 20.0, lam: float = 0.01,
                     progress: bool = False) -> np.ndarray:
    """Fit the tempo level chooser's weights (:func:`audiogen.data.estimators.fit_level_weights`) on the
    first ``max_seconds`` of rendered tracks ``rows`` (sidecars with ``path`` relative to ``folder``)
    and on click tracks at ``LEVEL_FIT_CLICKS`` bpm. Returns ``[len(LEVEL_FEATURES)]``."""
    from audiogen.data import estimators as E
    from audiogen.data.labels import ANALYSIS_HOP, _analysis_features
    from audiogen.progress import progress_bar

    cands, truth = [], []
    for r in progress_bar(rows, desc="features", disable=not progress):
        _, _, env, chroma = track_features(folder, r["path"], max_seconds)
        cands.append(E.level_candidates(env, E.SR, ANALYSIS_HOP, chroma))
        truth.append(r["beat_bpm"])
    for bpm in E.LEVEL_FIT_CLICKS:
        env, chroma = _analysis_features(E.click_track(bpm), E.SR)
        cands.append(E.level_candidates(env, E.SR, ANALYSIS_HOP, chroma))
        truth.append(bpm)
    return E.fit_level_weights(cands, truth, lam)


def load_sidecars(folder: str | Path, jobs: list[Job]) -> list[dict]:
    from audiogen.data.render import output_paths

    out = []
    for j in jobs:
        audio, side = output_paths(j, Path(folder))
        if side.is_file():
            out.append({"path": audio.relative_to(folder).as_posix(), **json.loads(side.read_text())})
    return out


def corpus_rows(folder: str | Path, limit: int | None = None, seed: int = 0) -> list[dict]:
    """The sidecar rows of a rendered corpus (``FOLDER/tracks.jsonl``, as ``render_corpus`` writes it),
    all of them or ``limit`` drawn at random with ``seed``."""
    from audiogen.errors import AudiogenError

    index = Path(folder) / "tracks.jsonl"
    if not index.is_file():
        raise AudiogenError(f"{index} not found: --corpus takes a folder that data_prep/render_music21.py wrote")
    rows = listed_tracks(index)
    if limit is not None and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows


def piece_half(row: dict) -> str:
    """``"tuning"`` or ``"heldout"`` for a corpus row, fixed by its piece: the sha1 of its ``source`` (else
    its path without the ``__vN`` variant suffix) even -> tuning. Variants of one piece stay together."""
    piece = row.get("source") or re.sub(r"__v\d+$", "", str(Path(row["path"]).with_suffix("")))
    return "tuning" if hashlib.sha1(piece.encode("utf-8")).digest()[-1] % 2 == 0 else "heldout"


def summary_markdown(summary: dict) -> str:
    """The validation figures as markdown tables (for docs/prep.md)."""
    lines = ["| tempo estimator | accuracy-1 (4 %) | accuracy-2 (x2, x3, /2, /3) | tracks |", "|---|---|---|---|"]
    for name, t in summary["tempo"].items():
        lines.append(f"| `{name}` | {t['acc1']:.1%} | {t['acc2']:.1%} | {t['n']} |")
    if "tempo_by_collection" in summary:
        names = list(summary["tempo"])
        lines += ["", "| collection | tracks | " + " | ".join(f"`{n}` acc-1" for n in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for c, per in summary["tempo_by_collection"].items():
            n = next(iter(per.values()))["n"]
            lines.append(f"| {c} | {n} | " + " | ".join(f"{per[k]['acc1']:.1%}" for k in names) + " |")
    lines += ["", "| key estimator (profiles, chroma) | MIREX weighted score | exact |", "|---|---|---|"]
    for name, k in summary["key"].items():
        lines.append(f"| `{name}` | {k['weighted']:.3f} | {k['exact']:.0%} |")
    if "instrument_top3" in summary:
        lines += ["", f"MTT instrument tag in the top 3: {summary['instrument_top3']:.0%}", "",
                  "| rendered as | MTT top 3 per piece |", "|---|---|"]
        for ens, tops in summary["instrument_confusion"].items():
            lines.append(f"| {ens} | " + "; ".join(", ".join(t) for t in tops) + " |")
    return "\n".join(lines)
