#!/usr/bin/env python
"""Label each row of a prepared dataset with its harmony: "held" (one chord for the whole row) or "moving".

    python data_prep/label_harmony.py DATA_DIR --audio-dir AUDIO_DIR --out OUT_DIR [--min-movement 0.017]

Each row's excerpt of its source file (under AUDIO_DIR, the folder audiogen prep read) is measured for harmonic
movement (how far its chroma moves from one second to the next), as drop_held_rows.py measures it; rows under the
line are labelled held, the others moving, rows too short or quiet to measure get no label. OUT_DIR is the dataset
again, every row kept (train and valid), with a "harmony" column. An LM trained on it has a --harmony condition and
plays moving harmony unless asked for held. Prints a JSON summary (rows per split and label). Logic:
audiogen/data/curate.py; why: docs/training.md, "Harmony as a condition".
"""

import argparse
import json
import sys

from audiogen.errors import AudiogenError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", help="prepared dataset (audiogen prep)")
    p.add_argument("--audio-dir", required=True, help="the audio folder audiogen prep read for DATA_DIR")
    p.add_argument("--out", required=True, help="folder for the labelled dataset (must not exist)")
    p.add_argument("--min-movement", type=float, default=None,
                   help="rows moving less than this are labelled held (default: 0.017, one chord held)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        from audiogen.data.curate import label_harmony

        print(json.dumps(label_harmony(args.data_dir, args.out, args.audio_dir, args.min_movement,
                                       progress=not args.no_progress)))
    except AudiogenError as e:
        print(f"label_harmony: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
