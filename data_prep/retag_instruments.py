#!/usr/bin/env python
"""Label each row's instruments by what its tokens play: the tagger on the row's decoded codes.

    python data_prep/retag_instruments.py DATA_DIR --out OUT_DIR [--codec CODEC_DIR] [--threshold 0.25]

Writes OUT_DIR, a copy of the prepared dataset DATA_DIR whose 'instruments' are the musicnn tagger's instrument
tags (prep's tags and threshold) on each row's codes decoded by the codec it was prepared with (default: the
default model's), and OUT_DIR/retag.json (the first instrument per split before and after). For
tagger-labelled recordings: prep tags a file as it sounds before tokenization, and a 3 kbps codec does not
carry every timbre (docs/adherence.md, "Instrument labels through the codec"). Resumable: rerun the same
command after an interruption and only the untagged rows are tagged. Logic: audiogen/data/retag.py.
"""

import argparse
import json
import sys

from audiogen.errors import AudiogenError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", help="a dataset written by 'audiogen prep'")
    p.add_argument("--out", required=True, help="folder for the retagged copy (resumed if interrupted)")
    p.add_argument("--codec", default=None, help="the codec folder DATA_DIR was prepared with (default: the default "
                   "model's)")
    p.add_argument("--threshold", type=float, default=None,
                   help="tag probability from which an instrument is written (default: prep's, 0.25)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        from audiogen.data.retag import retag_instruments

        report = retag_instruments(args.data_dir, args.out, args.codec, threshold=args.threshold,
                                   progress=not args.no_progress)
    except AudiogenError as e:
        print(f"retag_instruments: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
