"""Blind listening tests: a thin entry point for ``audiogen listen create|serve|report``.

    python eval/listen.py create experiment.yaml --out runs/pilot
    python eval/listen.py serve runs/pilot --port 8000
    python eval/listen.py report runs/pilot

All logic lives in ``audiogen/listening/``; docs in docs/listening.md.
"""

import sys

from audiogen.cli import main

if __name__ == "__main__":
    sys.exit(main(["listen", *sys.argv[1:]]))
