#!/usr/bin/env python
"""Key augmentation: a prepared dataset again with every training row transposed by a few semitones.

    python data_prep/transpose_keys.py DATA_DIR --out OUT_DIR [--semitones -2 -1 1 2] [--codec CODEC]

Needs a mel codec's tokens (the default model's, or any ``melvq`` codec) and that codec. Each train row
is kept and followed by its transpositions (codes moved along log-frequency and quantized again; key
label and caption's key moved with them; tempo, beats and tags kept); the valid split is copied as it
is. Prints a JSON summary (rows in and out, key counts before and after). Then train on OUT_DIR as on
any prepared dataset. Logic: audiogen/data/augment.py; why and what it changes: docs/adherence.md,
"Key augmentation".
"""

import argparse
import json
import sys

from audiogen.errors import AudiogenError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", help="prepared dataset (audiogen prep) tokenized with a mel codec")
    p.add_argument("--out", required=True, help="folder for the augmented dataset (must not exist)")
    p.add_argument("--semitones", type=int, nargs="+", default=[-2, -1, 1, 2],
                   help="transpositions to add, each within -6..6 (default: -2 -1 1 2)")
    p.add_argument("--codec", default="default",
                   help="the codec folder the rows were tokenized with, checked against their record "
                        "(default: the default model's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        from audiogen.data.augment import augment_dataset

        summary = augment_dataset(args.data_dir, args.out, args.semitones, args.codec, progress=not args.no_progress)
        print(json.dumps(summary))
    except AudiogenError as e:
        print(f"transpose_keys: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
