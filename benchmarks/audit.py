"""Originality audit: index scale and calibration. Prints one JSON object.

  python benchmarks/audit.py scale [--hours 2 10]
      synthetic random tokens (K codebooks at a frame rate): index build time and peak memory
      at each corpus size (each in its own process), and the time of a 30 s token query
  python benchmarks/audit.py calibrate --data DATA_DIR --hosts GEN_DIR --unseen REAL_DIR [--per-cell 4]
      plant training excerpts (exact, reencoded, gain, pitch, shift; 2/5/10 s) into the generated
      clips of GEN_DIR, audit them and the clean clips and unseen real music: recall and
      false-positive rate at the current thresholds (DATA_DIR needs 'audiogen audit index')
  python benchmarks/audit.py calibrate --data DATA_DIR --hold-out WORK_DIR [--train-sources N] --hosts GEN_DIR ...
      the same against WORK_DIR: DATA_DIR's train split (N of its recordings), indexed there, with
      30 s clips of the recordings it leaves out (valid split and the rest) as unseen real music

Logic lives in audiogen.originality (calibration.py); this is the entry point.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# peak anonymous memory (the heap; file pages of the dataset and the index are page cache, reclaimable),
# sampled every 20 ms while building, beside the peak resident set (which counts those file pages too)
BUILD = """
import json, resource, sys, threading, time
from audiogen.originality.tokens import build_token_index
peak, done = [0], threading.Event()
def anon():
    return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1])
def watch():
    while not done.wait(0.02):
        peak[0] = max(peak[0], anon())
base = anon()
threading.Thread(target=watch, daemon=True).start()
s = build_token_index(sys.argv[1], progress=False)
done.set()
print(json.dumps({"build_s": s["build_s"], "hours": s["hours"], "bucket_bits": s["bucket_bits"],
                  "anon_mb_before": round(base / 1024, 1), "peak_anon_mb": round(max(peak[0], anon()) / 1024, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def scale(args) -> dict:
    from audiogen.originality.calibration import write_token_dataset
    from audiogen.originality.tokens import TokenIndex

    desc = {"name": "synthetic", "sample_rate": 24000, "channels": 1, "frame_rate": args.frame_rate,
            "num_codebooks": args.codebooks, "cardinality": 1024, "weights_sha256": None}
    out = {"codebooks": args.codebooks, "frame_rate": args.frame_rate, "sizes": []}
    rng = np.random.default_rng(0)
    T = int(30 * args.frame_rate)
    with tempfile.TemporaryDirectory() as tmp:
        for hours in args.hours:
            rows = [rng.integers(0, 1024, (args.codebooks, T), dtype=np.int16) for _ in range(int(hours * 120))]
            d = write_token_dataset(Path(tmp) / f"h{hours}", rows, desc)
            t0 = time.perf_counter()
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = subprocess.run([sys.executable, "-c", BUILD, str(d)], capture_output=True, text=True, check=True)
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res["process_wall_s"] = round(time.perf_counter() - t0, 2)
            res["process_cpu_s"] = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2)
            idx = TokenIndex(d)
            q = rng.integers(0, 1024, (args.codebooks, T))
            q[:, 500:1000] = rows[len(rows) // 2][:, 100:600]
            idx.runs(q, "all")  # warm the page cache and the dataset handle
            t0, c0 = time.perf_counter(), time.process_time()
            found = {name: idx.runs(q, name)[0].frames for name in ("all", "cb0")}
            res["query_30s_wall_s"] = round(time.perf_counter() - t0, 4)
            res["query_30s_cpu_s"] = round(time.process_time() - c0, 4)
            res["planted_frames_found"] = found
            out["sizes"].append(res)
            del rows, idx
    return out


def calibrate(args) -> dict:
    from audiogen.audio.io import find_audio_files
    from audiogen.originality.audit import Auditor, build_index
    from audiogen.originality.calibration import (KINDS, LENGTHS, held_out_clips, run_calibration,
                                                  write_train_only)

    data = args.data
    unseen = find_audio_files(args.unseen)[: args.max_unseen] if args.unseen else []
    index_s = None
    if args.hold_out:
        data = args.hold_out
        done = "roundtrip.json" if args.tokens_only else "audio.json"
        if not (Path(data) / "audit_index" / done).is_file():
            t0 = time.perf_counter()
            write_train_only(args.data, data, args.train_sources, seed=args.seed)
            build_index(data, codec_path=args.codec, progress=False, audio=not args.tokens_only)
            index_s = round(time.perf_counter() - t0, 1)
        unseen += held_out_clips(args.data, data, per_file=args.clips_per_unseen)[: args.max_held_out]
    auditor = Auditor(data, codec_path=args.codec, tokens_only=args.tokens_only)
    hosts = find_audio_files(args.hosts)
    res = run_calibration(auditor, hosts, unseen, per_cell=args.per_cell, kinds=args.kinds or KINDS,
                          lengths=args.lengths or LENGTHS, seed=args.seed, progress=False,
                          per_cell_at={float(k): int(v) for k, v in (x.split("=") for x in args.per_cell_at or [])})
    res["index_build_s"] = index_s
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scale", help="index build time/memory at two corpus sizes, query time")
    s.add_argument("--hours", type=float, nargs="+", default=[2.0, 10.0], help="corpus sizes (default 2 10)")
    s.add_argument("--codebooks", type=int, default=4, help="codebooks per frame (default 4)")
    s.add_argument("--frame-rate", type=float, default=75.0, help="frames per second (default 75)")
    c = sub.add_parser("calibrate", help="planted-copy recall and false-positive rate")
    c.add_argument("--data", required=True, help="prepared dataset with an audit index")
    c.add_argument("--hosts", required=True, help="folder of generated clips (hosts and clean negatives)")
    c.add_argument("--unseen", default=None, help="folder of real music not in the dataset (negatives)")
    c.add_argument("--max-unseen", type=int, default=8, help="unseen files used (default 8)")
    c.add_argument("--codec", default=None, help="the dataset's codec folder, when not a named codec")
    c.add_argument("--hold-out", default=None, metavar="WORK_DIR",
                   help="audit against DATA_DIR's train split (or --train-sources of its recordings), written and "
                   "indexed in WORK_DIR once, with clips of the recordings it leaves out as unseen music")
    c.add_argument("--train-sources", type=int, default=None, help="with --hold-out: recordings kept (default all)")
    c.add_argument("--clips-per-unseen", type=int, default=2, help="with --hold-out: 30 s clips per left-out recording")
    c.add_argument("--max-held-out", type=int, default=40, help="with --hold-out: left-out clips used (default 40)")
    c.add_argument("--per-cell", type=int, default=4, help="planted clips per kind and length (default 4)")
    c.add_argument("--per-cell-at", nargs="+", default=None, metavar="LENGTH=N",
                   help="another count for some lengths, e.g. 5=20")
    c.add_argument("--kinds", nargs="+", default=None, help="subset of exact reencoded gain pitch shift")
    c.add_argument("--lengths", type=float, nargs="+", default=None, help="excerpt lengths in s (default 2 5 10)")
    c.add_argument("--tokens-only", action="store_true",
                   help="the token measures alone (all, cb0, rt): no embeddings or chroma, far cheaper")
    c.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    res = scale(args) if args.what == "scale" else calibrate(args)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
