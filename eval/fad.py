"""Fréchet Audio Distance between two sets: a thin entry point for ``audiogen fad``.

    python eval/fad.py REF GEN [--embedder vggish --weights FILE] [--inf] [--per-song CSV] [--json]

All logic lives in ``audiogen/metrics/fad.py`` and ``audiogen/metrics/embedders.py``.
"""

import sys

from audiogen.cli import main

if __name__ == "__main__":
    sys.exit(main(["fad", *sys.argv[1:]]))
