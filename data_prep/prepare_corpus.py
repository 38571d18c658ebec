#!/usr/bin/env python
"""Prepare a training corpus from a folder of music: the same as ``audiogen prep``.

    python data_prep/prepare_corpus.py AUDIO_DIR --out DATA_DIR [--codec default|encodec_24khz --bandwidth 6]
        [--segment 30] [--hop S] [--captions FILE] [--workers N] [--device cpu|cuda]
    # several processes or machines: each takes its share of the files, rank 0 writes the dataset
    accelerate launch --multi_gpu --num_processes 8 data_prep/prepare_corpus.py AUDIO_DIR --out DATA_DIR --device cuda

All logic lives in :mod:`audiogen.data.prep`; see ``--help`` and docs/prep.md. Exit status:
0 clean, 3 some files skipped (listed in DATA_DIR/prep_report.json), 1 user error.
"""

import sys

from audiogen.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", *sys.argv[1:]]))
