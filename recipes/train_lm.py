#!/usr/bin/env python
"""Train the conditioned music LM on a dataset made by ``audiogen prep``.

    python recipes/train_lm.py --config recipes/configs/tiny.yaml data_dir=data/corpus out_dir=runs/tiny
    accelerate launch recipes/train_lm.py --config recipes/configs/small.yaml data_dir=... out_dir=...
    accelerate launch --config_file recipes/accelerate/fsdp_8gpu.yaml recipes/train_lm.py --config recipes/configs/medium.yaml ...

Overrides are YAML values; nested keys use a dot (``lm.dim=128 conditioner.text_encoder=none``).
``batch_size`` is the global batch: the same config trains the same model on 1 or N
processes. Checkpoints go to ``OUT_DIR/checkpoints/step_NNNNNNN`` every ``save_every``
steps; rerunning the same command resumes exactly (also after ``kill -9``). SIGTERM,
SIGUSR1 or a file ``OUT_DIR/STOP`` save a checkpoint and exit 0. The model directory
``OUT_DIR/model`` (``audiogen generate --model OUT_DIR/model``) is exported at every
checkpoint and at the end. See docs/training.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from audiogen.train.lm import TrainConfig, train
    from audiogen.train.loop import recipe_main

    return recipe_main(__doc__, TrainConfig, train, argv,
                       config_help="YAML config (see recipes/configs/{tiny,small,medium}.yaml)")


if __name__ == "__main__":
    sys.exit(main())
