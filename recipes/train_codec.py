#!/usr/bin/env python
"""Train an EnCodec codec (SEANet + RVQ) on a folder of audio with the EnCodec objectives.

    python recipes/train_codec.py --config recipes/configs/codec_tiny.yaml [key=value ...]
    accelerate launch recipes/train_codec.py --config recipes/configs/codec_default.yaml out_dir=runs/codec_default

Overrides are YAML values; nested codec keys use a dot: ``codec.n_filters=16 max_steps=200``.
Checkpoints go to ``OUT_DIR/checkpoints/step_NNNNNNN`` (Accelerate state: both networks,
both optimizers, the balancer's EMA, RNG) every ``save_every`` steps. Rerunning the same
command resumes exactly (the data position is the step number), also after ``kill -9``;
SIGTERM, SIGUSR1 or a file ``OUT_DIR/STOP`` save a checkpoint and exit 0. The codec is
exported to ``OUT_DIR/codec`` (``load_codec(OUT_DIR/codec)`` / ``--codec OUT_DIR/codec``)
at every checkpoint and at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from audiogen.train.codec import CodecTrainConfig, train_codec
    from audiogen.train.loop import recipe_main

    return recipe_main(__doc__, CodecTrainConfig, train_codec, argv,
                       config_help="YAML config (see recipes/configs/codec_*.yaml)")


if __name__ == "__main__":
    sys.exit(main())
