"""Check an imported MusicGen against transformers' implementation on the same local checkpoint.

    python eval/musicgen_parity.py musicgen-small models/musicgen-small [--steps 16]

Prints JSON: max abs logit differences (conditional and unconditional rows), whether
greedy guided generation gives the same tokens, and the decode difference. All logic
lives in ``audiogen.models.musicgen_import.parity_with_transformers``; see docs/import_musicgen.md.
"""

import argparse
import json
import sys

from audiogen.errors import AudiogenError
from audiogen.models.musicgen_import import parity_with_transformers

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="the transformers-layout MusicGen folder that was imported")
    p.add_argument("model_dir", help="the audiogen model directory import-musicgen wrote")
    p.add_argument("--steps", type=int, default=16, help="codes scored and greedy tokens generated")
    p.add_argument("--cfg", type=float, default=3.0, help="guidance scale for the greedy comparison")
    args = p.parse_args()
    try:
        print(json.dumps(parity_with_transformers(args.src, args.model_dir, steps=args.steps, cfg_scale=args.cfg), indent=2))
    except AudiogenError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
