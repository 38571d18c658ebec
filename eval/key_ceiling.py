"""How much key and mode a codec lets through (the ceiling of the adherence report's key figures).

    python eval/key_ceiling.py --data DATA_DIR --audio-dir AUDIO_DIR [--codec CODEC] [--per-mode 20] \
        [--seconds 8] [--json OUT.json]

Held-out rows of a prepared dataset with a key label: prep's key estimator on each excerpt as it is,
through the codec, and (a mel codec) on its unquantized mel inverted, against the label and the source.
Prints a markdown table. All logic is in ``audiogen/metrics/key_ceiling.py``; what it means:
docs/adherence.md, "The same ceiling for the mode".
"""

import argparse
import json
import sys

from audiogen.errors import AudiogenError
from audiogen.metrics.key_ceiling import key_ceiling, summary_markdown


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="prepared dataset whose held-out rows have key labels")
    ap.add_argument("--audio-dir", required=True, help="the audio folder the dataset was prepared from")
    ap.add_argument("--codec", default=None, help="codec folder or name (default: the shipped default model's)")
    ap.add_argument("--bandwidth", type=float, default=None,
                    help="kbps: how many of the codec's codebooks (default: the codec's own; the default model's "
                         "codec: the codebooks its LM uses)")
    ap.add_argument("--per-mode", type=int, default=20, help="rows per mode, at most (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=8.0,
                    help="excerpt length, the adherence report's clip length (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the report, with every row's estimates, here")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args()
    try:
        report = key_ceiling(a.data, a.audio_dir, a.codec, per_mode=a.per_mode, seconds=a.seconds, seed=a.seed,
                             progress=not a.quiet, bandwidth=a.bandwidth)
    except AudiogenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.json:
        from audiogen.files import atomic_write_text

        atomic_write_text(a.json, json.dumps(report, indent=1))
    print(summary_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
