#!/usr/bin/env python
"""Build a real Creative Commons / GPL music corpus from Debian's music packages.

    python data_prep/build_debian_corpus.py --music-dir .cache/debian-music --out data/debian \\
        [--packages singularity-music warzone2100-music wesnoth-1.16-music] [prep flags ...]

Step 1 (:mod:`audiogen.data.debian_music`): ``apt-get download`` each package (no root
needed; run ``apt-get update`` first on a fresh system), unpack it with ``dpkg -x``,
keep its ``debian/copyright`` as ``COPYRIGHT`` and write a ``TRACK.json`` sidecar beside
every track with its title, artist, license and attribution. Already unpacked packages
are not downloaded again.

Step 2 (:mod:`audiogen.data.prep`): ``audiogen prep MUSIC_DIR --out DATA_DIR`` with any
further flags given here (``--codec``, ``--segment``, ``--workers``, ...). The sidecars
put each track's license into the dataset's ``license`` column and its credit line into
``attribution``; keep both when you publish anything trained on the corpus.

Sizes (Debian 12/13): singularity-music 52 MB, warzone2100-music 86 MB,
wesnoth-1.16-music 153 MB. Exit status as ``audiogen prep`` (0 clean, 3 files skipped,
1 error).
"""

import argparse
import sys

from audiogen.cli import main as audiogen_main
from audiogen.data.debian_music import PACKAGES, fetch
from audiogen.errors import AudiogenError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", nargs="+", default=sorted(PACKAGES), choices=sorted(PACKAGES),
                    help="Debian music packages to include (default: all three)")
    ap.add_argument("--music-dir", required=True, help="where the packages are unpacked (reused when present)")
    ap.add_argument("--out", required=True, help="dataset folder (DATA_DIR)")
    args, prep_flags = ap.parse_known_args(argv)
    try:
        tracks = fetch(args.packages, args.music_dir)
    except AudiogenError as e:
        print(f"build_debian_corpus: error: {e}", file=sys.stderr)
        return 1
    print(f"[debian-music] {len(tracks)} tracks from {', '.join(args.packages)} in {args.music_dir}")
    return audiogen_main(["prep", args.music_dir, "--out", args.out, *prep_flags])


if __name__ == "__main__":
    sys.exit(main())
