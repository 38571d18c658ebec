"""Reconstruction quality of a codec on held-out real music, next to anchors measured in the same run.

For each held-out track, an excerpt (mono, at the codec's rate) goes through the codec at
each bitrate it offers and through the anchors: Griffin-Lim from the unquantized mel
(ceiling), Vorbis / MP3 / Opus at the libsndfile compression levels nearest the codec's
bitrates, 8-bit mu-law, and the pretrained EnCodec 24 kHz when its weights are on this
machine. Reported per method, averaged over tracks: per-band log-mel correlation over time
with the input, mean log-mel error (dB), temporal-variation ratio (output / input),
frame-rate harmonic fraction of the output, the older mel distance and SI-SDR, the bitrate,
and for the codec its per-codebook distinct codes and entropy; ``failures`` lists the
thresholds of issue 16 a method misses. The timbre check renders a few held-out scores with
five instrument families (piano, string quartet, guitar, flute, choir; FluidSynth) and reports how
often the musicnn tagger names the right family before and after the codec: a codec that turns a
piano into noise is heard as drums there. Prints one JSON object. See docs/quality_checks.md.

    python benchmarks/codec_quality.py --codec audiogen/default_model/codec
    python benchmarks/codec_quality.py --codec runs/codec_default/codec --audio held_out/ other.ogg

Held-out tracks: ``--audio`` files or folders; else the run's ``split.json`` beside the codec
folder; else the hash split the codec recipe uses, over ``--audio-dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from audiogen.audio.io import find_audio_files  # noqa: E402
from audiogen.codec.base import load_codec  # noqa: E402
from audiogen.errors import AudiogenError  # noqa: E402
from audiogen.metrics.codec_benchmark import codec_quality, read_excerpts  # noqa: E402
from audiogen.train.codec import split_tracks  # noqa: E402

MIN_TRACKS = 2


def held_out_tracks(codec_dir: Path, audio: list[str] | None, audio_dir: str | None, holdout: int) -> list[Path]:
    if audio:
        return sorted({f for a in audio for f in find_audio_files(a)})
    split = codec_dir.parent / "split.json"
    if audio_dir is None and split.is_file():
        return [Path(p) for p in json.loads(split.read_text())["held_out"]]
    files = find_audio_files(audio_dir or REPO / ".cache" / "debian-music")
    return split_tracks(files, holdout)[1]


def timbre(codec, sr: int, pieces: int, exclude: list[str], seconds: float) -> dict | str:
    """The timbre check's figures (``audiogen.metrics.codec_benchmark.timbre_roundtrip``), or why it did not run."""
    if pieces <= 0:
        return "not requested (--timbre-pieces 0)"
    from audiogen.metrics.codec_benchmark import render_timbre_clips, timbre_pieces, timbre_roundtrip
    from audiogen.metrics.tagger import load_tagger

    try:
        tagger = load_tagger("MTT")
        clips = render_timbre_clips(timbre_pieces(pieces, exclude), sr, seconds)
    except AudiogenError as e:  # music21, FluidSynth or the musicnn weights missing: say so, score the rest
        return f"absent: {e}"
    return {"pieces": sorted({p for _, p, _ in clips}), "seconds": seconds,
            "excluded_corpora": [d for d in exclude if Path(d).is_dir()], **timbre_roundtrip(codec, clips, sr, tagger)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default=str(REPO / "audiogen" / "default_model" / "codec"),
                   help="codec folder or name (default: the shipped default model's codec)")
    p.add_argument("--audio", nargs="+", metavar="PATH", default=None,
                   help="held-out music: files or folders (default: the run's split.json, else --audio-dir)")
    p.add_argument("--audio-dir", default=None,
                   help="corpus to hold tracks out of by the codec recipe's hash split (default: .cache/debian-music)")
    p.add_argument("--holdout", type=int, default=2, help="tracks held out of --audio-dir (default 2)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="excerpt length per track in seconds (default 20; codebook usage is judged on >= 20 s)")
    p.add_argument("--offset", type=float, default=30.0, help="excerpt start (s), moved earlier for a short track")
    p.add_argument("--no-griffin-lim", action="store_true", help="skip the Griffin-Lim ceiling (the slowest anchor)")
    p.add_argument("--no-encodec", action="store_true", help="skip the pretrained EnCodec anchor")
    p.add_argument("--timbre-pieces", type=int, default=4, metavar="N",
                   help="timbre check: N scores (not in the --timbre-exclude corpora) rendered by piano, string "
                        "quartet, guitar, flute and choir, tagged before and after the codec (default 4; 0 skips)")
    p.add_argument("--timbre-exclude", nargs="*", metavar="DIR",
                   default=[str(REPO / ".cache" / "music21-rendered"), str(REPO / ".cache" / "music21-extra")],
                   help="rendered corpora whose pieces the timbre check leaves out (default: the recipes' two)")
    a = p.parse_args(argv)

    try:
        codec = load_codec(a.codec)
        describe = codec.describe()
        tracks = held_out_tracks(Path(a.codec), a.audio, a.audio_dir, a.holdout)
        if len(tracks) < MIN_TRACKS:
            raise AudiogenError(f"need at least {MIN_TRACKS} held-out tracks, got {len(tracks)}")
        sr = codec.sample_rate
        excerpts = read_excerpts(tracks, sr, a.seconds, a.offset)
        report = codec_quality(codec, excerpts, sr, griffin_lim=not a.no_griffin_lim, encodec=not a.no_encodec)
        report["timbre"] = timbre(codec, sr, a.timbre_pieces, a.timbre_exclude, a.seconds)
    except AudiogenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    training = Path(a.codec) / "training.json"
    steps = json.loads(training.read_text()).get("steps") if training.is_file() else None
    print(json.dumps({
        "benchmark": "codec_quality",
        "codec": describe,
        "codec_training_steps": steps,
        "held_out_tracks": [t.name for t in tracks],
        "sample_rate": sr,
        **report,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
