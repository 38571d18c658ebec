"""Fetch Creative Commons / GPL music that Debian packages ship, with licenses recorded.

``python -m audiogen.debian_music --packages singularity-music --out DIR`` runs
``apt-get download`` for each package (no root needed), unpacks it with ``dpkg -x``,
and writes a ``TRACK.json`` sidecar beside every track with its title, artist,
license, attribution and source package, plus ``DIR/tracks.jsonl`` listing them all.
``audiogen prep`` reads those sidecars, so licenses travel into the dataset.
Idempotent: a package already unpacked is not downloaded again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from audiogen.errors import AudiogenError

#: What we know of each package's music: license and authors, read from its
#: debian/copyright (kept beside the tracks as COPYRIGHT for the full text).
PACKAGES = {
    "singularity-music": {
        "license": "CC-BY-SA-3.0",
        "artist": "Max McCracken",
        "attribution": "Music by Max McCracken for Endgame: Singularity (CC BY-SA 3.0), via Debian singularity-music",
        "genre": None,
    },
    "warzone2100-music": {
        "license": "CC-BY-SA-3.0 OR GPL-2+",
        "artist": "Warzone 2100 Project contributors",
        "attribution": "Warzone 2100 soundtrack (see COPYRIGHT for composers and terms), via Debian warzone2100-music",
        "genre": None,
    },
    "wesnoth-1.16-music": {
        "license": "GPL-2+",
        "artist": "Battle for Wesnoth composers",
        "attribution": "Battle for Wesnoth soundtrack (see COPYRIGHT for composers; GPL-2+), via Debian wesnoth-1.16-music",
        "genre": None,
    },
}
AUDIO_SUFFIXES = (".ogg", ".oga", ".opus", ".flac", ".wav", ".mp3")


def fetch_package(package: str, out: Path) -> list[Path]:
    """Download and unpack one package into ``out/package``; return its audio files."""
    if package not in PACKAGES:
        raise AudiogenError(f"unknown music package '{package}'; known: {', '.join(PACKAGES)}")
    dest = out / package
    marker = dest / ".complete"
    if not marker.exists():
        for tool in ("apt-get", "dpkg"):
            if shutil.which(tool) is None:
                raise AudiogenError(f"'{tool}' not found: fetching Debian music needs a Debian/Ubuntu system")
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
            debs = list(Path(tmp).glob(f"{package}_*.deb"))
            if r.returncode != 0 or not debs:
                raise AudiogenError(
                    f"apt-get download {package} failed ({r.stderr.strip()[-300:]}); run 'apt-get update' first?"
                )
            staging = Path(tmp) / "x"
            subprocess.run(["dpkg", "-x", str(debs[0]), str(staging)], check=True)
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            copyright_file = staging / "usr/share/doc" / package / "copyright"
            if copyright_file.exists():
                shutil.copy(copyright_file, dest / "COPYRIGHT")
            for f in sorted(staging.rglob("*")):
                if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file():
                    rel = f.relative_to(staging / "usr/share")
                    target = dest / "tracks" / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(f), target)
        marker.write_text("ok\n")
    tracks = sorted(p for p in (dest / "tracks").rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    meta = PACKAGES[package]
    for t in tracks:
        sidecar = t.with_suffix(".json")
        if not sidecar.exists():
            sidecar.write_text(json.dumps({
                "title": t.stem,
                "artist": meta["artist"],
                "license": meta["license"],
                "attribution": meta["attribution"],
                "source": f"debian:{package}",
                **({"genre": meta["genre"]} if meta["genre"] else {}),
            }, indent=2))
    return tracks


def fetch(packages: list[str], out: str | os.PathLike) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tracks = [t for p in packages for t in fetch_package(p, out)]
    lines = []
    for t in tracks:
        meta = json.loads(t.with_suffix(".json").read_text())
        lines.append(json.dumps({"path": str(t.relative_to(out)), **meta}))
    (out / "tracks.jsonl").write_text("\n".join(lines) + "\n")
    return tracks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m audiogen.debian_music", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", nargs="+", default=["singularity-music"], choices=sorted(PACKAGES))
    ap.add_argument("--out", required=True, help="folder to unpack into")
    args = ap.parse_args(argv)
    try:
        tracks = fetch(args.packages, args.out)
    except AudiogenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[debian-music] {len(tracks)} tracks from {', '.join(args.packages)} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
