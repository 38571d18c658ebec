"""Blind listening tests: a thin entry point for ``audiogen listen create|serve|report|power``.

    python eval/listen.py create experiment.yaml --out runs/pilot
    python eval/listen.py serve runs/pilot --port 8000
    python eval/listen.py report runs/pilot
    python eval/listen.py power --listeners 40 --clips 20 --accuracy 0.6

All logic lives in ``audiogen/listening/``; docs in docs/listening.md.
"""

import sys

from audiogen.cli import main

if __name__ == "__main__":
    sys.exit(main(["listen", *sys.argv[1:]]))
