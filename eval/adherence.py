"""Conditioning adherence report (issue 22): does a model follow the tempo, key, instruments, genre
and mood it is asked for, at each guidance scale?

    python eval/adherence.py --model MODEL_DIR --data DATA_DIR --audio-dir AUDIO_DIR --out OUT_DIR \
        [--clips 24] [--seconds 8] [--cfg 1 2 3] [--top-k K] [--seed 0]

Writes OUT_DIR/adherence.json, OUT_DIR/adherence.md (printed too), the figures (PNG) and every
generated clip under OUT_DIR/clips/ to listen to. Without --data/--audio-dir genre and mood are not
measured (they need reference clips). All logic is in ``audiogen/metrics/adherence.py``; what each figure
means: docs/adherence.md.
"""

import argparse
import sys

from audiogen.errors import AudiogenError
from audiogen.generation.pipeline import DEFAULT_MODEL_DIR
from audiogen.metrics.adherence import ATTRIBUTES, DEFAULT_CLIPS, DEFAULT_SECONDS, adherence_report, summary_markdown


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                    help="model directory (default: the shipped default model)")
    ap.add_argument("--data", default=None, help="prepared dataset whose held-out rows are the genre/mood references")
    ap.add_argument("--audio-dir", default=None, help="the audio folder the dataset was prepared from")
    ap.add_argument("--out", required=True, help="folder for the report, figures and generated clips")
    ap.add_argument("--clips", type=int, default=DEFAULT_CLIPS,
                    help="clips per attribute and guidance scale (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="seconds per clip (default: %(default)s)")
    ap.add_argument("--cfg", type=float, nargs="+", default=None,
                    help="guidance scales (default: 1, 3 and the model's recommended scale)")
    ap.add_argument("--top-k", type=int, default=None, help="top-k sampling (default: the model's recommendation)")
    ap.add_argument("--beat-guidance", type=float, default=None,
                    help="beat guidance for a model with a beat grid (default: the model's recommendation)")
    ap.add_argument("--label-guidance", type=float, default=None,
                    help="label guidance for a model with attribute slots: the labels pushed beyond what CFG gives "
                         "them (1 = off; default: the model's recommendation)")
    ap.add_argument("--label-guidance-hold", type=float, default=None, metavar="S",
                    help="label guidance for the first S seconds of a clip, then fading (0 = throughout; default: "
                         "the model's recommendation)")
    ap.add_argument("--label-guidance-fade", type=float, default=None, metavar="S",
                    help="seconds label guidance takes to fall to 1 after the hold (default: the model's "
                         "recommendation)")
    ap.add_argument("--no-key-shift", dest="key_shift", action="store_false",
                    help="play key requests as the model learned them, not shifted by its generation.key_shift and "
                         "decoded back as generate plays them (default: as generate)")
    ap.add_argument("--offbeat-below", type=float, default=None, metavar="BPM",
                    help="below this tempo beat guidance contrasts with the grid half a beat late, not with no "
                         "grid (0 = never; default: the model's recommendation)")
    ap.add_argument("--default-tempo-push", choices=("on", "off"), default=None,
                    help="whether requests that name no tempo (key, instruments: played at the model's default "
                         "tempo) get the beat push (default: the model's recommendation, its generation.sampling "
                         "beat_push_default_tempo; on where --beat-guidance is given)")
    ap.add_argument("--attributes", nargs="+", default=None, choices=ATTRIBUTES, metavar="ATTR",
                    help=f"measure only these ({', '.join(ATTRIBUTES)}; default: all of them)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args()
    try:
        report = adherence_report(a.model, a.data, a.audio_dir, a.out, cfg_scales=a.cfg and tuple(a.cfg),
                                  clips=a.clips, seconds=a.seconds, seed=a.seed, progress=not a.quiet,
                                  device=a.device, beat_guidance=a.beat_guidance, top_k=a.top_k,
                                  offbeat_below_bpm=a.offbeat_below, attributes=a.attributes,
                                  label_guidance=a.label_guidance, label_guidance_hold_s=a.label_guidance_hold,
                                  label_guidance_fade_s=a.label_guidance_fade, key_shift=a.key_shift,
                                  beat_push_default_tempo=None if a.default_tempo_push is None
                                  else a.default_tempo_push == "on")
    except AudiogenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
