"""FAD speed: files/s embedded per embedder, and the Fréchet distance on 2048-d statistics.

    python benchmarks/fad.py [--files 8] [--seconds 10] [--dim 2048] [--device cpu]

Files are synthesized (44.1 kHz stereo, so loading and resampling are included) and
embedded without the cache. VGGish and CLAP run with random weights (same architecture
and cost as the real ones; no downloads). The distance is timed for our Cholesky-factor /
``eigvalsh`` form against the peer, fadtk's / frechet_audio_distance's ``scipy.linalg.sqrtm``
of the product, on the same statistics. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from audiogen.audio.io import write_audio
from audiogen.metrics import fad as F
from audiogen.metrics.embedders import BuiltinEmbedder, EncodecEmbedder, VGGishEmbedder


def synth_files(folder: Path, n: int, seconds: float, sr: int = 44_100) -> list[Path]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    paths = []
    for i in range(n):
        f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
        x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3)) * 0.2 * (1 + np.sin(2 * np.pi * 2 * t)) / 2
        x = x + 0.01 * rng.standard_normal(t.shape)
        paths.append(write_audio(folder / f"{i}.wav", np.stack([x, 0.9 * x]).astype(np.float32), sr))
    return paths


def random_clap(device: str):
    """A full-size (HTSAT-base, 512-d) CLAP audio tower with random weights, saved and loaded as a user would."""
    from transformers import ClapAudioConfig, ClapAudioModelWithProjection, ClapFeatureExtractor

    from audiogen.metrics.embedders import ClapEmbedder

    d = Path(tempfile.mkdtemp(prefix="clap-bench-"))
    ClapAudioModelWithProjection(ClapAudioConfig(projection_dim=512)).save_pretrained(d)
    ClapFeatureExtractor().save_pretrained(d)
    return ClapEmbedder(d, device=device)


def time_embedder(emb, paths: list[Path], seconds: float) -> dict:
    F.embed_files(paths[:1], emb, None, progress=False)  # warm-up (lazy imports, allocator)
    t0 = time.perf_counter()
    frames = F.embed_files(paths, emb, None, progress=False)
    dt = time.perf_counter() - t0
    return {"files_per_s": round(len(paths) / dt, 3), "audio_s_per_s": round(len(paths) * seconds / dt, 2),
            "frames_per_file": int(frames[0].shape[0]), "dim": int(frames[0].shape[1])}


def time_distance(dim: int, repeats: int) -> dict:
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    s1 = a @ a.T + 0.01 * np.eye(dim)
    b = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    s2 = b @ b.T + 0.01 * np.eye(dim)
    m1, m2 = rng.standard_normal(dim), rng.standard_normal(dim)

    def ours():
        return F.frechet_distance(m1, s1, m2, s2)

    def peer():  # fadtk / frechet_audio_distance
        covmean = linalg.sqrtm(s1 @ s2)
        covmean = covmean.real if np.iscomplexobj(covmean) else covmean
        d = m1 - m2
        return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)

    out = {}
    for name, fn in (("ours_cholesky_eigvalsh", ours), ("peer_scipy_sqrtm", peer)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            val = fn()
            times.append(time.perf_counter() - t0)
        out[f"{name}_s"] = round(min(times), 4)
        out[f"{name}_value"] = float(val)
    out["speedup"] = round(out["peer_scipy_sqrtm_s"] / out["ours_cholesky_eigvalsh_s"], 2)
    out["rel_diff"] = abs(out["ours_cholesky_eigvalsh_value"] - out["peer_scipy_sqrtm_value"]) / abs(out["peer_scipy_sqrtm_value"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-clap", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = synth_files(Path(tmp), args.files, args.seconds)
        embedders = {
            "builtin": BuiltinEmbedder(),
            "vggish_random_weights": VGGishEmbedder(random_init=True, device=args.device),
            "encodec_tiny": EncodecEmbedder("tiny", device=args.device),
        }
        if not args.skip_clap:
            embedders["clap_random_weights"] = random_clap(args.device)
        embed = {name: time_embedder(e, paths, args.seconds) for name, e in embedders.items()}
    result = {
        "benchmark": "fad",
        "device": args.device,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "files": args.files,
        "seconds_per_file": args.seconds,
        "embed": embed,
        f"distance_{args.dim}d": time_distance(args.dim, args.repeats),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
