"""Corpus preparation throughput: hours of audio prepared per hour of wall time, tokens/s.

Runs the whole ``audiogen prep`` job (decode, resample, tempo/key analysis, tokenization,
shards, dataset assembly) on real Debian CC music, with each of ``--codecs``:

- ``tiny``: the random test codec (the pipeline's own overhead dominates);
- ``encodec_24khz``: the real-size 24 kHz EnCodec architecture at 6 kbps with random
  weights (speed does not depend on the weight values; pretrained weights are not needed);
- ``default``: the default model's codec (audiogen/default_model/codec) as shipped.

Each is measured as shipped (``--workers`` processes, batches of ``--batch-size``) and
against the naive peer: one process, torch's default threads, one segment per codec call.
The two are interleaved ``--repeats`` times in the same run and the medians compared, so
a change in the machine's load hits both; the load average is recorded.
Prints one JSON object.

    python benchmarks/prep.py [--tracks 3] [--segment 30] [--workers N] [--repeats 3]
                              [--codecs tiny encodec_24khz default] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from audiogen.codec.base import NAMED_CONFIGS, EncodecCodec, build_encodec_model, load_codec, num_codebooks_for_bandwidth
from audiogen.data.prep import PrepConfig, default_workers, prepare

REPO = Path(__file__).resolve().parents[1]


def real_size_codec(device: str) -> EncodecCodec:
    cfg = NAMED_CONFIGS["encodec_24khz"]
    torch.manual_seed(0)
    model = build_encodec_model(cfg)
    return EncodecCodec(model, cfg, "encodec_24khz-random-weights", num_codebooks_for_bandwidth(cfg, 6.0)).to(device)


def run_once(src: Path, codec, device: str, workers: int, batch_size: int, segment: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PrepConfig(str(src), str(Path(tmp) / "data"), device=device, segment_s=segment, workers=workers,
                         batch_size=batch_size, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        report = prepare(cfg, codec=codec)
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
    hours = report["audio_hours"]
    return {
        "workers": cfg.workers, "batch_size": cfg.batch_size or codec.preferred_batch, "wall_s": round(wall, 2),
        "audio_hours_per_wall_hour": round(hours / (wall / 3600), 1),
        "tokens_per_s": round(report["tokens_this_run"] / wall),
        "segments": report["segments"]["train"] + report["segments"]["valid"],
    }


def _median_run(runs: list[dict]) -> dict:
    """The run with the median wall time, with every repeat's wall time beside it."""
    mid = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    return {**mid, "wall_s_each": [r["wall_s"] for r in runs], "wall_s_median": statistics.median(r["wall_s"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--music-dir", default=os.environ.get("AUDIOGEN_MUSIC_DIR", REPO / ".cache" / "debian-music"))
    ap.add_argument("--tracks", type=int, default=3, help="how many real tracks (whole files)")
    ap.add_argument("--segment", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=None, help="default: audiogen.data.prep.default_workers(device)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: prep's own (the codec's preferred_batch)")
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    ap.add_argument("--codecs", nargs="+", default=["tiny", "encodec_24khz"],
                    choices=["tiny", "encodec_24khz", "default"])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each; medians compared")
    args = ap.parse_args()

    tracks = sorted(Path(args.music_dir).rglob("*.ogg"))[: args.tracks]
    if not tracks:
        raise SystemExit(f"no .ogg tracks under {args.music_dir}: run 'bash install.sh' (fetches singularity-music)")
    devices = [d for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    result = {"benchmark": "prep", "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "segment_s": args.segment, "repeats": args.repeats,
              "load_average_start": [round(x, 1) for x in os.getloadavg()], "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "music"
        src.mkdir()
        for i, t in enumerate(tracks):  # links, not copies: the files are read as they are
            (src / f"{i:02d}_{t.name}").symlink_to(t.resolve())
        from audiogen.audio.io import audio_info

        # warm-up: one file's whole analysis (librosa's numba functions compiled, filters built) here, so
        # forked workers inherit it, as they do in any long job, and neither side's first repeat pays it
        import numpy as np

        from audiogen.data.prep_files import _analyse_segments

        sr = 44100
        noise = (0.1 * np.random.default_rng(0).standard_normal((2, 35 * sr))).astype(np.float32)
        _analyse_segments(noise, sr, 0, [(0, 30 * sr)], -60.0, None)
        result["files"] = len(tracks)
        result["audio_hours"] = round(sum(audio_info(t).duration_s for t in tracks) / 3600, 4)
        for device in devices:
            for name in args.codecs:
                if name == "encodec_24khz":
                    label, codec = "encodec_24khz (random weights, 6 kbps)", real_size_codec(device)
                else:
                    label, codec = name, load_codec(name, device=device)
                workers = default_workers(device) if args.workers is None else args.workers
                ours, peer = [], []
                for _ in range(args.repeats):  # interleaved: load changes hit both alike
                    ours.append(run_once(src, codec, device, workers, args.batch_size, args.segment))
                    peer.append(run_once(src, codec, device, 0, 1, args.segment))
                o, p = _median_run(ours), _median_run(peer)
                result["runs"].append({
                    "codec": label, "device": device, "audiogen": o, "naive_peer": p,
                    "speedup_vs_naive": round(p["wall_s"] / o["wall_s"], 2),
                    "speedups_per_repeat": [round(b["wall_s"] / a["wall_s"], 2) for a, b in zip(ours, peer)],
                })
                print(f"[bench] {result['runs'][-1]}", file=sys.stderr, flush=True)  # partial results
    result["load_average_end"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
