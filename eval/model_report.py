"""Quality figures of a trained model directory (used for the default model's MODEL_CARD.md).

    python eval/model_report.py --model MODEL_DIR --data DATA_DIR --audio-dir AUDIO_DIR \
        --work runs/model_report [--clips 16] [--seconds 10] [--json OUT.json]

FAD (built-in offline embedder; not comparable with published VGGish figures) of
generated clips, prompted with the held-out tracks' captions (their labels read into the
slots as `audiogen generate` reads a prompt's), against those held-out tracks, next to
the codec's own resynthesis of them (the ceiling the LM cannot beat);
the tempo response (requested vs estimated bpm); and, with the musicnn weights installed,
the tag conditioning figures (KL between generated and reference tag distributions,
per-prompt tag agreement); and how often each codebook of the generated codes repeats the
frame before's code, beside the held-out tokens' rate (``code_hold_rates``). All logic is in
``audiogen/metrics/model_eval.py``.
"""

import argparse
import json
import sys
from pathlib import Path

from audiogen.errors import AudiogenError
from audiogen.files import atomic_write_text
from audiogen.metrics.model_eval import model_report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (config.yaml + model.safetensors)")
    ap.add_argument("--data", required=True, help="the prepared dataset the model was trained on (its valid split is held out)")
    ap.add_argument("--audio-dir", required=True, help="the audio folder the dataset was prepared from")
    ap.add_argument("--work", default="runs/model_report", help="folder for generated clips and embeddings")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--bpm-clips", type=int, default=4, help="clips per requested tempo")
    ap.add_argument("--seed", type=int, default=0,
                    help="the generated clips' seed (the tempo clips use seed + 1000); another seed is another "
                         "draw: the FAD of one setting moved by about 4 between two")
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("--figure", default=None, help="write a spectrogram picture (held-out track, codec roundtrip, generated clip) here")
    a = ap.parse_args()
    try:
        result = model_report(a.model, a.data, a.audio_dir, a.work, a.clips, a.seconds, a.bpm_clips, seed=a.seed,
                              figure=a.figure)
    except AudiogenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2, default=float)
    if a.json:
        atomic_write_text(Path(a.json), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
