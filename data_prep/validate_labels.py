#!/usr/bin/env python
"""Render a fixed set of music21 pieces and measure the tempo/key estimators and the tagger on them.

    python data_prep/validate_labels.py --out .cache/label-check [--n 20] [--seed 17] [--max-seconds 30]
    python data_prep/validate_labels.py --corpus .cache/rendered --out .cache/corpus-check --max-seconds 20
    python data_prep/validate_labels.py --corpus .cache/rendered --half heldout --out ... --max-seconds 20

With ``--corpus``, nothing is rendered: every track of a corpus that data_prep/render_music21.py
wrote (or ``--n`` drawn with ``--seed``) is measured, on its first ``--max-seconds`` seconds.

Writes OUT/validation.json (per-track rows and the summary: MIREX tempo accuracy-1/-2 per
tempo estimator, weighted key score per key estimator, MTT instrument top-3 hit rate and
confusion). Resumable (renders are reused). Logic: audiogen/metrics/label_eval.py.
"""

import argparse
import json
import sys

from audiogen.data.render import render_corpus
from audiogen.errors import AudiogenError
from audiogen.files import atomic_write_text, make_dir
from audiogen.metrics.label_eval import (corpus_rows, evaluate, evaluation_jobs, load_sidecars, piece_half,
                                        summary_markdown)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the renders and validation.json")
    p.add_argument("--corpus", help="measure the tracks of this rendered corpus instead of rendering pieces")
    p.add_argument("--n", type=int, default=None, help="pieces (default: 20; with --corpus, every track)")
    p.add_argument("--seed", type=int, default=17, help="seed of the piece draw (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=30.0,
                   help="render length cap; with --corpus, the seconds analysed per track (default: %(default)s)")
    p.add_argument("--half", choices=("tuning", "heldout"),
                   help="with --corpus, only the pieces of this half (label_eval.piece_half: sha1 of the piece)")
    p.add_argument("--no-tagger", action="store_true", help="skip the MTT instrument check")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except AudiogenError as e:
        print(f"validate_labels: error: {e}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.corpus:
        rows, folder, cap = corpus_rows(args.corpus, args.n, args.seed), args.corpus, args.max_seconds
        if args.half:
            rows = [r for r in rows if piece_half(r) == args.half]
    else:
        jobs = evaluation_jobs(20 if args.n is None else args.n, args.seed)
        print(json.dumps(render_corpus(args.out, jobs, progress=False, max_seconds=args.max_seconds)), file=sys.stderr)
        rows, folder, cap = load_sidecars(args.out, jobs), args.out, None
    tagger = None
    if not args.no_tagger:
        from audiogen.metrics.tagger import load_tagger

        tagger = load_tagger("MTT")
    result = evaluate(folder, rows, tagger, max_seconds=cap, progress=True)
    make_dir(args.out)
    atomic_write_text(f"{args.out}/validation.json", json.dumps(result, indent=1))
    print(summary_markdown(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
