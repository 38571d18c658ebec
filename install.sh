#!/usr/bin/env bash
# One-step setup for a fresh Debian/Ubuntu machine (run as root or with sudo):
#   system packages (Debian chromium for the browser tests), the audiogen package
#   with every extra the tests need, and the Creative Commons music the tests use.
# Idempotent: re-running it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
PY="${PYTHON:-python3}"

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# FluidSynth and the General MIDI soundfont (MIT) render the music21 corpus (data_prep/render_music21.py)
command -v fluidsynth >/dev/null 2>&1 || need_apt+=(fluidsynth)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need_apt+=(fluid-soundfont-gm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[install] apt: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

echo "[install] pip: audiogen[all] (torch 2.11.0 pinned)"
"$PY" -m pip install -q --disable-pip-version-check -e ".[all]"

# The musicnn taggers' weights (ISC license) ship inside its wheel as TF checkpoints, read by
# audiogen/metrics/tagger.py without TensorFlow; --no-deps because its own code (never imported) wants
# TensorFlow and numpy < 1.17.
echo "[install] pip: musicnn 0.1.0 weights (--no-deps)"
"$PY" -m pip install -q --disable-pip-version-check --no-deps "musicnn==0.1.0"

# Real CC-BY-SA / GPL music from Debian, used by the tests (and a small corpus to try prep on).
"$PY" -m audiogen.data.debian_music --packages singularity-music --out .cache/debian-music

echo "[install] done. Run the tests with: python3 -m pytest -q"
