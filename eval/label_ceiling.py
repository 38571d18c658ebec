"""How much genre, mood and instrument a codec lets through (the ceiling of the adherence report's figures).

    python eval/label_ceiling.py --data DATA_DIR --audio-dir AUDIO_DIR [--attributes genre mood instruments] \
        [--codec CODEC] [--per-label 8] [--seconds 8] [--json OUT.json]

genre, mood: train rows of each label (not the references) stand in for a model that played its training
rows: tagged as they are and through the codec, each label's tag distribution against the adherence report's
references (closest label by tag KL). instruments: held-out rows whose instruments list starts with one of the
report's six families, tagged as they are and through the codec (family ranked first). Prints a markdown
table per attribute. All logic is in ``audiogen/metrics/label_ceiling.py``; what it means: docs/adherence.md,
"The ceiling for genre and mood" and "Instruments".
"""

import argparse
import json
import sys

from audiogen.errors import AudiogenError
from audiogen.metrics.label_ceiling import instrument_ceiling, label_ceiling, summary_markdown


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="prepared dataset with genre/mood labels (train and valid rows)")
    ap.add_argument("--audio-dir", required=True, help="the audio folder the dataset was prepared from")
    ap.add_argument("--attributes", nargs="+", default=["genre", "mood"], choices=["genre", "mood", "instruments"],
                    help="which labels (default: genre mood)")
    ap.add_argument("--labels", nargs="+", default=None,
                    help="only these labels (default: every label of the train rows; the adherence report asks "
                         "for a model's vocabulary)")
    ap.add_argument("--codec", default=None, help="codec folder or name (default: the shipped default model's)")
    ap.add_argument("--bandwidth", type=float, default=None,
                    help="kbps: how many of the codec's codebooks (default: the codec's own; the default model's "
                         "codec: the codebooks its LM uses)")
    ap.add_argument("--per-label", type=int, default=8,
                    help="references and stand-ins per label (instruments: rows per family), at most (default: "
                         "%(default)s, the report's)")
    ap.add_argument("--seconds", type=float, default=8.0,
                    help="excerpt length, the adherence report's clip length (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="the report's seed: the same references (default: 0)")
    ap.add_argument("--json", default=None, help="also write the reports, one per attribute, here")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args()
    reports = {}
    try:
        for attr in a.attributes:
            if attr == "instruments":
                reports[attr] = instrument_ceiling(a.data, a.audio_dir, a.codec, a.bandwidth, a.per_label, a.seconds,
                                                   a.seed, progress=not a.quiet)
            else:
                reports[attr] = label_ceiling(a.data, a.audio_dir, attr, a.labels, a.codec, a.bandwidth,
                                              a.per_label, a.seconds, a.seed, progress=not a.quiet)
    except AudiogenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.json:
        from audiogen.files import atomic_write_text

        atomic_write_text(a.json, json.dumps(reports, indent=1))
    print("\n\n".join(summary_markdown(r) for r in reports.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
