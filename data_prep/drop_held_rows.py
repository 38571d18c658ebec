#!/usr/bin/env python
"""Rows that hold one chord: measure them in a prepared dataset, or write it again without them.

    python data_prep/drop_held_rows.py DATA_DIR --audio-dir AUDIO_DIR [--out OUT_DIR [--held-out HELD_DIR]]
        [--min-movement 0.017]

Each train row's excerpt of its source file (under AUDIO_DIR, the folder audiogen prep read) is measured
for harmonic movement (how far its chroma moves from one second to the next; one chord held: under 0.017,
the line the generated-audio checks use). Without --out it prints how many rows are under the line and
stops; with --out it writes the dataset again without them (codes and labels as they were; the valid
split copied as it is, so held-out figures stay comparable); --held-out writes the rows left out as a
dataset of their own beside it, to mix back at a lower weight (extra_data_dirs, data_weights). Prints a
JSON summary. Then train on OUT_DIR as on any prepared dataset. Logic: audiogen/data/curate.py; why:
docs/training.md, "Rows that hold one chord".
"""

import argparse
import json
import sys

from audiogen.errors import AudiogenError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", help="prepared dataset (audiogen prep)")
    p.add_argument("--audio-dir", required=True, help="the audio folder audiogen prep read for DATA_DIR")
    p.add_argument("--out", help="folder for the dataset without the held rows (must not exist); "
                                 "left out: measure and report only")
    p.add_argument("--held-out", help="folder for the rows left out, as a dataset of their own (must not exist; "
                                      "needs --out)")
    p.add_argument("--min-movement", type=float, default=None,
                   help="rows moving less than this are left out (default: 0.017, one chord held)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        from audiogen.data.curate import drop_held_rows

        print(json.dumps(drop_held_rows(args.data_dir, args.out, args.audio_dir, args.min_movement,
                                        progress=not args.no_progress, held_dir=args.held_out)))
    except AudiogenError as e:
        print(f"drop_held_rows: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
