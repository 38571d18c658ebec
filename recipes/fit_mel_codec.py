#!/usr/bin/env python
"""Fit the mel codec (residual k-means VQ of log-mel frames, Griffin-Lim decoding).

    python recipes/fit_mel_codec.py --config recipes/configs/codec_melvq.yaml [key=value ...]

No gradient training: each of the n_q codebooks is k-means on the residual the stages before it
leave, over a sample of the corpus's log-mel frames (about 10 minutes on 2 CPU cores for the
Debian corpus). Every finished stage is saved (OUT_DIR/fit_state.pt); rerunning the same command
continues after it. The codec is exported to OUT_DIR/codec (``--codec OUT_DIR/codec`` anywhere).
Overrides are YAML values; codec fields use a dot: ``codec.n_mels=80 max_frames=100000``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from audiogen.codec.mel import MelVQFitConfig, fit_mel_codec
    from audiogen.train.loop import recipe_main

    return recipe_main(__doc__, MelVQFitConfig, fit_mel_codec, argv,
                       config_help="YAML config (see recipes/configs/codec_melvq.yaml)")


if __name__ == "__main__":
    sys.exit(main())
