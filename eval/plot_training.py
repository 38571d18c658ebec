"""Draw a training run's curves (LM or codec): ``python eval/plot_training.py OUT_DIR [--out PNG]``.

Reads ``OUT_DIR/log.jsonl`` and writes ``OUT_DIR/curves.png`` against the step: for an LM
run the training loss per codebook and mean, the validation loss per codebook, the learning
rate and tokens/s; for a codec run the loss terms, held-out mel loss and SI-SDR, and
codebook usage. Both recipes redraw the same picture at every checkpoint; this redraws it
on demand (see ``audiogen/train/curves.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audiogen.errors import AudiogenError
from audiogen.train.curves import plot_training_log


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="the training run's OUT_DIR (holds log.jsonl)")
    ap.add_argument("--out", default=None, help="where to write the picture (default: OUT_DIR/curves.png)")
    args = ap.parse_args(argv)
    try:
        png = plot_training_log(Path(args.out_dir) / "log.jsonl", args.out)
    except AudiogenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
