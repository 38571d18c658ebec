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

Negatives: the host clips themselves (generated, nothing planted) and unseen real music.
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
    from audiogen.audio import equal_power_fade

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
    """A mono ``float32`` excerpt of dataset item ``item`` for a planted copy of ``kind``."""
    import torch

    from audiogen import audio as A

    ref = auditor.audio.reference if auditor.audio is not None else None
    if kind == "reencoded":
        c = auditor.codec()
        fr = auditor.tokens.frame_rate
        a = int(round(start_s * fr))
        codes = auditor.tokens.item_codes(item)[:, a : a + int(round(length_s * fr))]
        wav = c.decode(torch.from_numpy(codes.astype(np.int64))[None])[0].float().cpu().numpy().mean(axis=0)
        return A.resample(wav, c.sample_rate, sr).astype(np.float32)
    if ref is None:
        from audiogen.originality.near import ReferenceAudio

        ref = ReferenceAudio(auditor.data_dir, auditor.tokens, auditor.codec)
    x, _ = ref.load(item, sr, start_s, length_s)
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
        "embedding_s": ((result.get("embedding") or {}).get("match") or {}).get("seconds", 0.0),
        "best_cosine": (result.get("embedding") or {}).get("best_cosine"),
        "chroma_s": ((result.get("chroma") or {}).get("match") or {}).get("seconds", 0.0),
    }


def run_calibration(auditor, hosts: list[Path], unseen: list[Path], per_cell: int = 4, kinds=KINDS,
                    lengths=LENGTHS, clip_s: float = 30.0, seed: int = 0, progress: bool = True) -> dict:
    """Plant ``per_cell`` excerpts per (kind, length) into ``hosts`` (cycled), audit everything, and
    return recall / false-positive rates at the auditor's thresholds with every clip's measures."""
    from tqdm import tqdm

    from audiogen import audio as A

    t0 = time.perf_counter()
    sr = 24_000
    rng = np.random.default_rng(seed)
    host_wavs = [A.load_audio(h, sr, 1, duration_s=None)[0][0, : int(clip_s * sr)] for h in hosts]
    items = auditor.tokens.items
    fr = auditor.tokens.frame_rate
    hop = sr / fr
    train = [i for i, it in enumerate(items) if it["split"] == "train"]
    jobs = [(kind, length, n) for kind in kinds for length in lengths for n in range(per_cell)]
    clips = []
    bar = tqdm(total=len(jobs) + len(hosts) + len(unseen), desc="calibration", unit="clip", disable=not progress)
    for j, (kind, length, n) in enumerate(jobs):
        long_enough = [i for i in train if items[i]["frames"] / fr >= length + 1]
        item = int(rng.choice(long_enough))
        room = items[item]["frames"] / fr - length - 0.5
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
            wav = A.load_audio(f, sr, 1)[0][:, : int(clip_s * sr)]
            r = auditor.audit(wav, sr)
            clips.append({"set": name, "file": str(f), "verdict": r["verdict"], **measures(r)})
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
    neg_max = {k: max((c[k] or 0.0) for c in negatives) for k in ("tokens_all_s", "tokens_cb0_s", "embedding_s",
                                                                  "best_cosine", "chroma_s")} if negatives else {}
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

    from audiogen.prep import dataset_features

    K = rows[0].shape[0]
    fr = float(codec_desc["frame_rate"])
    codec = json.dumps(codec_desc, sort_keys=True)

    def row(i: int, split: str) -> dict:
        return {"id": f"synthetic-{i:06d}", "source": f"synthetic/{i:06d}.wav", "sha256": "0" * 64, "start_s": 0.0,
                "duration_s": rows[i].shape[1] / fr, "codec": codec, "codes": np.asarray(rows[i], np.int16),
                "caption": "", "genre": None, "mood": None, "bpm": None, "key": None, "instruments": [],
                "license": None, "split": split, "title": None, "artist": None, "attribution": None}

    f = dataset_features(K)
    n = len(rows) - valid_rows
    splits = {name: datasets.Dataset.from_list([row(i, name) for i in range(lo, hi)], features=f)
              for name, (lo, hi) in (("train", (0, n)), ("valid", (n, len(rows))))}
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return Path(out)
