#!/usr/bin/env python
"""Render music21's bundled public-domain scores to a labelled corpus (FluidSynth + FluidR3_GM).

    python data_prep/render_music21.py --out .cache/music21-rendered [--variants 2] [--limit N] [--hours H]
        [--collections bach_chorales ryans_mammoth ...] [--ensembles guitar flute ...] [--max-seconds 150]
        [--skip-pieces-in .cache/music21-rendered ...] [--plan-only]

Needs what install.sh installs: music21 and mido (pip), fluidsynth and fluid-soundfont-gm
(apt). Every track gets TRACK.flac and a TRACK.json sidecar with exact labels (style,
instruments, tempo, key) and its license record; OUT/tracks.jsonl lists all finished
tracks. Resumable: rerun the same command and only unfinished tracks are rendered (the
plan is deterministic in --seed and --variants). Then: audiogen prep OUT --out DATA_DIR.
Logic: audiogen/data/render.py.
"""

import argparse
import json
import sys
from pathlib import Path

from audiogen.data.render import (COLLECTIONS, ENSEMBLES, MAX_SECONDS, pieces_in, plan_corpus, render_corpus,
                                  without_pieces)
from audiogen.errors import AudiogenError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    p.add_argument("--variants", type=int, default=1,
                   help="renders per piece, each with its own ensemble, tempo and transposition (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the ensemble/tempo/transposition draws (default: 0)")
    p.add_argument("--collections", nargs="+", default=None, metavar="NAME",
                   help="only these collections: " + ", ".join(c.name for c in COLLECTIONS))
    p.add_argument("--ensembles", nargs="+", default=None, metavar="NAME",
                   help="draw each piece's ensemble from these instead of its collection's: " + ", ".join(ENSEMBLES))
    p.add_argument("--limit", type=int, default=None, metavar="N", help="render at most N new tracks this run")
    p.add_argument("--hours", type=float, default=None, metavar="H",
                   help="stop once OUT holds H hours of audio (collections taken in turn, so any stop is varied)")
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                   help="cut longer renders at this many seconds (default: %(default)s)")
    p.add_argument("--skip-pieces-in", nargs="+", default=[], metavar="DIR",
                   help="leave out the pieces these rendered corpora hold (in any ensemble or variant), so this "
                        "corpus adds other music")
    p.add_argument("--plan-only", action="store_true", help="print the number of planned tracks per collection and stop")
    args = p.parse_args(argv)
    try:
        jobs = plan_corpus(args.variants, args.seed, args.collections, args.ensembles)
        if args.skip_pieces_in:
            if any(Path(d).resolve() == Path(args.out).resolve() for d in args.skip_pieces_in):
                # its own pieces would leave the plan: a rerun would render other pieces, not resume
                raise AudiogenError("--skip-pieces-in names the output folder; name the other corpora")
            jobs = without_pieces(jobs, pieces_in(args.skip_pieces_in))
        if args.plan_only:
            counts = {}
            for j in jobs:
                counts[j.collection] = counts.get(j.collection, 0) + 1
            print(json.dumps({"tracks": len(jobs), "per_collection": counts}))
            return 0
        print(json.dumps(render_corpus(args.out, jobs, args.limit, sys.stderr.isatty(), args.max_seconds, args.hours)))
    except AudiogenError as e:
        print(f"render_music21: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
