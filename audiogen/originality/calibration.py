"""Calibrating the audit: plant known training excerpts into clips and count what is found.

Positives: a training excerpt of ``length`` seconds pasted (10 ms crossfades) into a
host clip, in one of these kinds:

- ``exact``: the row's source audio, cut and pasted on the codec's frame grid;
- ``reencoded``: the row's tokens decoded with the codec (what a model that memorised
  them would emit), on the frame grid;
- ``gain``: ``exact`` 6 dB quieter;
- ``pitch``: ``exact`` shifted up one semitone (librosa);
- ``shift``: the source audio cut and pasted off the frame grid (a fraction of a frame
  at both ends), so its tokens do not line up with the training tokens.

Negatives: the host clips themselves (generated, nothing planted) and unseen real music
(files, or ``(file, offset_s)`` for several clips of one file; :func:`write_train_only`
makes a dataset of some of a prepared dataset's train recordings, so that the recordings it
leaves out, :func:`held_out_clips`, are unseen music of the same kind).
The result gives recall per kind and length, the false-positive rate per negative set,
and every clip's measures, so thresholds can be re-derived from them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

KINDS = ("exact", "reencoded", "gain", "pitch", "shift")
LENGTHS = (2.0, 5.0, 10.0)
FADE_S = 0.01


def plant(host: np.ndarray, excerpt: np.ndarray, at: int, sr: int) -> np.ndarray:
    """``host[N]`` with ``excerpt[M]`` pasted from sample ``at``, with short equal-power crossfades."""
    from audiogen.audio.shaping import equal_power_fade

    out = host.copy()
    m = min(len(excerpt), len(host) - at)
    seg = excerpt[:m].astype(np.float32).copy()
    f = min(int(FADE_S * sr), m // 2)
    mix = np.ones(m, np.float32)
    if f:
        mix[:f], mix[m - f :] = equal_power_fade(f, True), equal_power_fade(f, False)
    out[at : at + m] = out[at : at + m] * np.sqrt(np.clip(1 - mix**2, 0, 1)) + seg * mix
    return out


def excerpt(kind: str, auditor, item: int, start_s: float, length_s: float, sr: int) -> np.ndarray:
    """A mono ``float32`` excerpt of dataset item ``item`` for a planted copy of ``kind``; one that runs
    past the item's end goes on into the next item (the recording's next segment)."""
    import torch

    from audiogen.audio import io as A

    tok = auditor.tokens
    own = tok.seconds(item)
    # (item, start, length) of each part: the item's, and the next one's when the excerpt runs on
    parts = [(item, start_s, min(length_s, own - start_s))]
    if start_s + length_s > own + 1e-6:
        parts.append((item + 1, 0.0, start_s + length_s - own))
    if kind == "reencoded":
        c = auditor.codec()
        fr = tok.frame_rate
        codes = np.concatenate([tok.item_codes(i)[:, int(round(a * fr)) : int(round(a * fr)) + int(round(n * fr))]
                                for i, a, n in parts], axis=1)
        wav = c.decode(torch.from_numpy(codes.astype(np.int64))[None])[0].float().cpu().numpy().mean(axis=0)
        return A.resample(wav, c.sample_rate, sr).astype(np.float32)
    ref = auditor.audio.reference if auditor.audio is not None else None
    if ref is None:
        from audiogen.originality.near import ReferenceAudio

        ref = ReferenceAudio(auditor.data_dir, tok, auditor.codec)
    x = np.concatenate([ref.load(i, sr, a, n)[0] for i, a, n in parts])
    if kind == "gain":
        return x * np.float32(10 ** (-6 / 20))
    if kind == "pitch":
        import librosa

        return librosa.effects.pitch_shift(x, sr=sr, n_steps=1).astype(np.float32)
    return x


def measures(result: dict) -> dict:
    """The numbers a verdict is made from, for re-deriving thresholds."""
    tok = result.get("tokens", {})
    return {
        "tokens_all_s": tok.get("all", [{}])[0].get("seconds", 0.0) if tok.get("all") else 0.0,
        "tokens_cb0_s": tok.get("cb0", [{}])[0].get("seconds", 0.0) if tok.get("cb0") else 0.0,
        "tokens_rt_s": tok.get("rt", [{}])[0].get("seconds", 0.0) if tok.get("rt") else 0.0,
        "tokens_rt0_s": tok.get("rt0", [{}])[0].get("seconds", 0.0) if tok.get("rt0") else 0.0,
        "embedding_s": ((result.get("embedding") or {}).get("match") or {}).get("seconds", 0.0),
        "best_cosine": (result.get("embedding") or {}).get("best_cosine"),
        "chroma_s": ((result.get("chroma") or {}).get("match") or {}).get("seconds", 0.0),
    }


def run_calibration(auditor, hosts: list[Path], unseen: list, per_cell: int = 4, kinds=KINDS,
                    lengths=LENGTHS, clip_s: float = 30.0, seed: int = 0, progress: bool = True,
                    per_cell_at: dict | None = None) -> dict:
    """Plant ``per_cell`` excerpts per (kind, length) (``per_cell_at[length]`` where given) into
    ``hosts`` (cycled), audit everything, and return recall / false-positive rates at the auditor's
    thresholds with every clip's measures."""
    from tqdm import tqdm

    from audiogen.audio import io as A

    t0 = time.perf_counter()
    sr = 24_000
    rng = np.random.default_rng(seed)
    host_wavs = [A.load_audio(h, sr, 1, duration_s=None)[0][0, : int(clip_s * sr)] for h in hosts]
    items = auditor.tokens.items
    fr = auditor.tokens.frame_rate
    hop = sr / fr
    train = [i for i, it in enumerate(items) if it["split"] == "train"]
    per_cell_at = per_cell_at or {}
    jobs = [(kind, length, n) for kind in kinds for length in lengths
            for n in range(per_cell_at.get(float(length), per_cell))]
    tok = auditor.tokens
    # an excerpt is cut from a row at least a second longer or, where there is none (rows of 10 s and a
    # 10 s excerpt), from a row and the next segment of its recording; lengths neither holds are skipped
    span = {i: tok.seconds(i) + (tok.seconds(i + 1) if tok.follows(i, i + 1) else 0.0) for i in train}
    jobs = [j for j in jobs if any(span[i] >= j[1] + 1 for i in train)]
    clips = []
    bar = tqdm(total=len(jobs) + len(hosts) + len(unseen), desc="calibration", unit="clip", disable=not progress)
    for j, (kind, length, n) in enumerate(jobs):
        long_enough = [i for i in train if tok.seconds(i) >= length + 1] or [i for i in train if span[i] >= length + 1]
        item = int(rng.choice(long_enough))
        own = tok.seconds(item)
        room = own - length - 0.5 if own >= length + 1 else min(span[item] - length - 0.5, own - 0.5)
        start = float(np.floor(rng.uniform(0, room) * fr) / fr)  # on the frame grid
        host = host_wavs[j % len(host_wavs)]
        at = int(np.floor(rng.uniform(0, len(host) / sr - length) * fr) * hop)
        if kind == "shift":  # off the grid at both ends
            start += float(rng.uniform(0.25, 0.75) / fr)
            at += int(rng.uniform(0.25, 0.75) * hop)
        x = excerpt(kind, auditor, item, start, length, sr)
        r = auditor.audit(plant(host, x, at, sr)[None], sr)
        clips.append({"set": "planted", "kind": kind, "length_s": length, "item": items[item]["id"],
                      "source_start_s": round(items[item]["start_s"] + start, 3), "at_s": round(at / sr, 3),
                      "verdict": r["verdict"], **measures(r)})
        bar.update(1)
    for name, files in (("generated", hosts), ("unseen", unseen)):
        for f in files:
            f, offset = (f, 0.0) if isinstance(f, (str, Path)) else f
            wav = A.load_audio(f, sr, 1, offset_s=offset, duration_s=clip_s)[0]
            r = auditor.audit(wav, sr)
            clips.append({"set": name, "file": str(f), "offset_s": offset, "verdict": r["verdict"], **measures(r)})
            bar.update(1)
    bar.close()
    return summarise(clips, auditor, time.perf_counter() - t0)


def summarise(clips: list[dict], auditor, wall_s: float) -> dict:
    def rate(rows, verdicts=("copy",)):
        return round(sum(r["verdict"] in verdicts for r in rows) / len(rows), 3) if rows else None

    planted = [c for c in clips if c["set"] == "planted"]
    recall = {}
    for kind in dict.fromkeys(c["kind"] for c in planted):
        recall[kind] = {f"{length:g}s": {"copy": rate(rows), "copy_or_similar": rate(rows, ("copy", "similar")),
                                          "n": len(rows)}
                        for length in dict.fromkeys(c["length_s"] for c in planted)
                        if (rows := [c for c in planted if c["kind"] == kind and c["length_s"] == length])}
    fpr = {}
    for name in ("generated", "unseen"):
        rows = [c for c in clips if c["set"] == name]
        fpr[name] = {"copy": rate(rows), "copy_or_similar": rate(rows, ("copy", "similar")), "n": len(rows)}
    negatives = [c for c in clips if c["set"] != "planted"]
    keys = ("tokens_all_s", "tokens_cb0_s", "tokens_rt_s", "tokens_rt0_s", "embedding_s", "best_cosine", "chroma_s")
    neg_max = {k: max((c[k] or 0.0) for c in negatives) for k in keys} if negatives else {}
    from dataclasses import asdict

    return {"recall": recall, "false_positive_rate": fpr, "negatives_max": neg_max,
            "thresholds": asdict(auditor.thresholds), "index": {"items": len(auditor.tokens.items),
                                                               "hours": auditor.tokens.settings["hours"],
                                                               "codec": auditor.tokens.codec.get("name")},
            "wall_s": round(wall_s, 1), "clips": clips}


def write_token_dataset(out: str | Path, rows: list[np.ndarray], codec_desc: dict, valid_rows: int = 1) -> Path:
    """A prepared-dataset folder (``audiogen prep``'s schema) holding ``rows`` (``int[K, T]`` each) as
    its codes: for scale measurements with synthetic tokens and for tests. The last
    ``valid_rows`` rows form the valid split."""
    import json

    import datasets

    from audiogen.data.prep import dataset_features

    K = rows[0].shape[0]
    fr = float(codec_desc["frame_rate"])
    codec = json.dumps(codec_desc, sort_keys=True)

    def row(i: int, split: str) -> dict:
        return {"id": f"synthetic-{i:06d}", "source": f"synthetic/{i:06d}.wav", "sha256": "0" * 64, "start_s": 0.0,
                "duration_s": rows[i].shape[1] / fr, "codec": codec, "codes": np.asarray(rows[i], np.int16),
                "caption": "", "genre": None, "mood": None, "bpm": None, "key": None, "instruments": [], "beats": [],
                "license": None, "split": split, "title": None, "artist": None, "attribution": None}

    f = dataset_features(K)
    n = len(rows) - valid_rows
    splits = {name: datasets.Dataset.from_list([row(i, name) for i in range(lo, hi)], features=f)
              for name, (lo, hi) in (("train", (0, n)), ("valid", (n, len(rows))))}
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return Path(out)


def write_train_only(data_dir: str | Path, out: str | Path, max_sources: int | None = None, seed: int = 0) -> Path:
    """Write ``out``: ``data_dir``'s train split (the rows of ``max_sources`` of its recordings, drawn
    with ``seed``, when given) as a prepared dataset (one of those recordings as its valid split), its
    ``prep_report.json`` copied so the source audio is still found. Indexed, the recordings it
    leaves out (:func:`held_out_clips`) are unseen music of the same kind."""
    import shutil

    import datasets

    from audiogen.data.loader import load_prepared

    data_dir, out = Path(data_dir), Path(out)
    dd = load_prepared(data_dir)
    train = dd["train"]
    order = np.random.default_rng(seed).permutation(sorted(train.unique("source"))).tolist()
    keep = order[: max_sources or len(order)]
    # a split cannot be empty on disk: the last kept recording's rows form the valid split
    rows = {s: [] for s in keep}
    for i, s in enumerate(train["source"]):
        if s in rows:
            rows[s].append(i)
    splits = {"train": train.select([i for s in keep[:-1] for i in rows[s]]), "valid": train.select(rows[keep[-1]])}
    datasets.DatasetDict(splits).save_to_disk(str(out))
    if (data_dir / "prep_report.json").is_file():
        shutil.copy(data_dir / "prep_report.json", out / "prep_report.json")
    return out


def held_out_clips(data_dir: str | Path, indexed_dir: str | Path, clip_s: float = 30.0,
                   per_file: int = 2) -> list[tuple[Path, float]]:
    """Up to ``per_file`` clips ``(file, offset_s)`` of ``clip_s`` from each recording of ``data_dir``
    that ``indexed_dir`` (made by :func:`write_train_only`) holds no row of, first clips first;
    recordings whose file is gone are skipped."""
    import json

    from audiogen.audio import io as A
    from audiogen.data.loader import load_prepared

    data_dir = Path(data_dir)
    dd, indexed = load_prepared(data_dir), load_prepared(indexed_dir)
    seen = set(indexed["train"].unique("source")) | set(indexed["valid"].unique("source"))
    report = data_dir / "prep_report.json"
    audio_dir = Path(json.loads(report.read_text()).get("audio_dir", "")) if report.is_file() else None
    clips = []
    for source in sorted((set(dd["train"].unique("source")) | set(dd["valid"].unique("source"))) - seen):
        path = audio_dir / source if audio_dir is not None else None
        if path is None or not path.is_file():
            continue
        n = int(min(per_file, A.audio_info(path).duration_s // clip_s))
        clips += [(k, path, float(k * clip_s)) for k in range(n)]
    # every recording's first clip, then every second one...: a prefix of the list spreads over recordings
    return [(path, offset) for _, path, offset in sorted(clips, key=lambda c: c[0])]
