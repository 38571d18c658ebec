"""Fetch Creative Commons / GPL music that Debian packages ship, with licenses recorded.

``python -m audiogen.data.debian_music --packages singularity-music --out DIR`` runs
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
        # debian/copyright "Files: *" (Eidos 1999-2004, Warzone 2100 Project); the newer albums'
        # license.txt adds CC-BY-SA-3.0 as an alternative, read per track by _album_license
        "license": "GPL-2+",
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
    "fretsonfire-songs-muldjord": {
        # debian/copyright: "Copyright (c) 2009 El Senator ... Creative Commons Attribution ShareAlike
        # licence 3.0"; "composed by El Senator of the danish metal band Muldjord". Frets on Fire
        # songs come as stems: song.ogg (the band) and guitar.ogg (the lead guitar), kept as two tracks.
        "license": "CC-BY-SA-3.0",
        "artist": "El Senator (Muldjord)",
        "attribution": "Songs by El Senator of Muldjord (CC BY-SA 3.0), via Debian fretsonfire-songs-muldjord",
        "genre": "metal",
    },
    "fretsonfire-songs-sectoid": {
        # debian/copyright: "Copyright (c) 2006/2007 Carlos Viola Iborra", then the MIT/Expat permission text
        "license": "Expat",
        "artist": "Carlos Viola Iborra (Sectoid)",
        "attribution": "Songs by Carlos Viola Iborra (Expat license), via Debian fretsonfire-songs-sectoid",
        "genre": None,
    },
    "planetblupi-music-ogg": {
        # debian/copyright "Files: *": 2017, 2018 Mathieu Schroeter, GPL-3+
        "license": "GPL-3+",
        "artist": "Planet Blupi authors",
        "attribution": "Planet Blupi music (c) 2017-2018 Mathieu Schroeter (GPL-3+), via Debian planetblupi-music-ogg",
        "genre": None,
    },
    "drascula-music": {
        # debian/copyright "Files: *": 1996-2008 Alcachofa Soft S.L., "Drascula-License": made freely
        # available, BSD-like (DFSG-free per the package's own comment, as for BASS and FOTAQ)
        "license": "Drascula-License (BSD-like, see COPYRIGHT)",
        "artist": "Alcachofa Soft",
        "attribution": "Drascula: The Vampire Strikes Back music (c) 1996-2008 Alcachofa Soft S.L., "
                       "via Debian drascula-music (terms in its COPYRIGHT file)",
        "genre": None,
    },
    "openttd-openmsx": {
        # debian/copyright "Files: *": 2010 various authors (readme.txt), GPL-2.0. MIDI: rendered to
        # FLAC with FluidSynth and FluidR3_GM (audiogen.data.render) when fetched.
        "license": "GPL-2.0",
        "artist": "OpenMSX contributors",
        "attribution": "OpenMSX, the OpenTTD music set (c) 2010 various authors (GPL-2.0), rendered with "
                       "FluidSynth/FluidR3_GM, via Debian openttd-openmsx",
        "genre": None,
    },
}
AUDIO_SUFFIXES = (".ogg", ".oga", ".opus", ".flac", ".wav", ".mp3")
#: MIDI files are rendered to FLAC (their audio) when a package is unpacked
MIDI_SUFFIXES = (".mid", ".midi")
#: Per-album files kept beside the tracks (Warzone 2100: track titles/authors, license terms).
ALBUM_FILES = ("album.json", "license.txt")
#: Version of the TRACK.json layout; older sidecars are rewritten on the next fetch.
SIDECAR_VERSION = 2


def _album_entry(track: Path) -> tuple[dict, dict]:
    """Warzone 2100 ships ``album.json`` (title/author per track) beside its albums: (album, track entry)."""
    f = track.parent / "album.json"
    if not f.is_file():
        return {}, {}
    try:
        album = json.loads(f.read_text(encoding="utf-8"))
    except ValueError:
        return {}, {}
    entry = next((e for e in album.get("tracks", []) if e.get("filename") == track.name), {})
    return album, entry


def _tags(track: Path) -> dict:
    try:
        import mutagen

        f = mutagen.File(str(track), easy=True)
        tags = dict(f.tags) if f is not None and f.tags else {}
    except Exception:  # tags are a bonus; the package's facts still hold
        return {}
    return {k.lower(): str(v[0]).strip() for k, v in tags.items() if v and str(v[0]).strip()}


def _album_license(track: Path) -> tuple[str | None, str | None]:
    """(license, copyright notice) from an album's ``license.txt`` (Warzone 2100), or Nones.

    Its albums are "CC-BY-SA-3.0 ... Alternatively ... GNU General Public License
    Version 2 or later", except a track singled out as GPL only ("track3_enhanced ... is
    licensed under the terms of the GNU General Public License Version 2 or later").
    """
    f = track.parent / "license.txt"
    if not f.is_file():
        return None, None
    text = f.read_text(encoding="utf-8", errors="replace")
    notice = next((" ".join(line.replace("`", "").split()) for line in text.splitlines() if "Copyright (C)" in line), None)
    paras = [" ".join(p.split()) for p in text.split("\n\n")]
    gpl = "General Public License Version 2 or later"
    for para in paras:
        if track.stem in para and gpl in para and "CC-BY" not in para and "except" not in para:
            return "GPL-2+", None
    if "CC-BY-SA-3.0" in text and gpl in text:
        return "CC-BY-SA-3.0 OR GPL-2+", notice
    return None, notice


def track_facts(track: Path, package: str) -> dict:
    """The TRACK.json sidecar for one track: title, artist, license, attribution, source.

    Per-track facts come from the track's own tags (Wesnoth and Singularity tag title,
    artist/composer, copyright and genre) and from Warzone 2100's ``album.json``. The
    license is an album's ``license.txt`` where there is one, else the package's (from its
    debian/copyright, more precise than tags such as ``GPL``). Nothing is guessed: a
    missing fact stays missing.
    """
    meta = PACKAGES[package]
    tags = _tags(track)
    album, entry = _album_entry(track)
    title = entry.get("title") or tags.get("title") or track.stem
    artist = entry.get("author") or tags.get("artist") or tags.get("composer") or album.get("author") or meta["artist"]
    album_title = album.get("title") or tags.get("album")
    album_license, album_notice = _album_license(track)
    notice = tags.get("copyright") or album_notice
    parts = [f'"{title}" by {artist}']
    if album_title:
        parts.append(f"from {album_title}")
    if notice:
        parts.append(notice)
    license_ = album_license or meta["license"]
    parts.append(f"license {license_}")
    where = "full terms in its COPYRIGHT file"
    if (track.parent / "license.txt").is_file():
        where += "; album terms in license.txt beside the track"
    parts.append(f"via Debian package {package} ({where})")
    facts = {
        "title": title, "artist": artist, "license": license_, "attribution": ", ".join(parts),
        "source": f"debian:{package}", "sidecar_version": SIDECAR_VERSION,
    }
    if album_title:
        facts["album"] = album_title
    genre = tags.get("genre") or meta["genre"]  # only what the track or package says
    if genre:
        facts["genre"] = genre
    return facts


def _render_midi(midi: Path, flac: Path) -> None:
    """A MIDI file's audio (FluidSynth, FluidR3_GM; see :func:`audiogen.data.render.synthesize`) as FLAC."""
    from audiogen.audio.io import write_audio
    from audiogen.data.render import synthesize

    wav, sr = synthesize(midi, max_seconds=3600.0)
    write_audio(flac, wav, sr)


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
                # album facts (Warzone 2100's album.json and license.txt) travel with the tracks
                keep = f.suffix.lower() in AUDIO_SUFFIXES or f.name in ALBUM_FILES
                # Frets on Fire's notes.mid is the game's fret chart, not music
                midi = f.suffix.lower() in MIDI_SUFFIXES and f.name != "notes.mid"
                # drascula-music links its 31 tracks into one folder per language: keep the files only
                if (keep or midi) and f.is_file() and not f.is_symlink():
                    rel = f.relative_to(staging / "usr/share")
                    target = dest / "tracks" / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if midi:
                        _render_midi(f, target.with_suffix(".flac"))
                    else:
                        shutil.move(str(f), target)
        marker.write_text("ok\n")
    tracks = sorted(p for p in (dest / "tracks").rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    for t in tracks:
        sidecar = t.with_suffix(".json")
        old = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        if old.get("sidecar_version", 1) < SIDECAR_VERSION:  # regenerate sidecars of older versions
            sidecar.write_text(json.dumps(track_facts(t, package), indent=2))
    return tracks


def fetch(packages: list[str], out: str | os.PathLike) -> list[Path]:
    from audiogen.files import make_dir

    out = make_dir(out)
    tracks = [t for p in packages for t in fetch_package(p, out)]
    lines = []
    for t in tracks:
        meta = json.loads(t.with_suffix(".json").read_text())
        lines.append(json.dumps({"path": str(t.relative_to(out)), **meta}))
    (out / "tracks.jsonl").write_text("\n".join(lines) + "\n")
    return tracks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m audiogen.data.debian_music", description=__doc__,
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
