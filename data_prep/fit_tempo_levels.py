#!/usr/bin/env python
"""Fit the tempo level chooser's weights (audiogen.data.estimators.LEVEL_WEIGHTS) on a rendered corpus's
tuning half (label_eval.piece_half), first --max-seconds of each track, plus click tracks.

    python data_prep/fit_tempo_levels.py --corpus .cache/rendered [--max-seconds 20] [--lam 0.01]

Prints the weights, one per LEVEL_FEATURES, to paste into LEVEL_WEIGHTS. Logic: audiogen/metrics/label_eval.py.
"""

import argparse
import sys

from audiogen.data.estimators import LEVEL_FEATURES
from audiogen.errors import AudiogenError
from audiogen.metrics.label_eval import corpus_rows, fit_tempo_levels, piece_half


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="a corpus data_prep/render_music21.py wrote")
    p.add_argument("--max-seconds", type=float, default=20.0, help="seconds analysed per track (default: %(default)s)")
    p.add_argument("--lam", type=float, default=0.01, help="L2 penalty (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        rows = [r for r in corpus_rows(args.corpus) if piece_half(r) == "tuning"]
    except AudiogenError as e:
        print(f"fit_tempo_levels: error: {e}", file=sys.stderr)
        return 1
    w = fit_tempo_levels(args.corpus, rows, args.max_seconds, args.lam, progress=True)
    for name, x in zip(LEVEL_FEATURES, w):
        print(f"{name:24s} {x:8.3f}")
    print("LEVEL_WEIGHTS =", [round(float(x), 3) for x in w])
    return 0


if __name__ == "__main__":
    sys.exit(main())
