"""``audiogen info FILE...``: what the audio layer sees in a file (rate, channels, loudness, true peak)."""

from __future__ import annotations

import argparse
import json

ORDER = 90


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show duration, rate, channels, loudness (LUFS) and true peak of audio files",
        description="Read audio files with audiogen's audio layer and report what it sees: duration, sample "
        "rate, channels, integrated loudness (ITU-R BS.1770-4) and true peak (dBTP). Useful to check a "
        "file before prep, or a generated track after finishing.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, opus, mp3, aiff)")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiogen.audio import audio_info, measure_file
    from audiogen.errors import AudiogenError

    for f in args.files:
        info = audio_info(f)
        try:
            m = measure_file(f)  # streamed: bounded memory for files of any length
        except AudiogenError as e:
            raise AudiogenError(e.args[0] if str(f) in e.args[0] else f"{f}: {e}") from None
        sr = m.sample_rate
        row = {
            "file": str(f),
            "duration_s": round(m.duration_s, 3),
            "sample_rate": sr,
            "channels": m.channels,
            "format": f"{info.format}/{info.subtype}",
            "lufs": round(m.lufs, 2),
            "true_peak_dbtp": round(m.true_peak_dbtp, 2),
        }
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{row['file']}: {row['duration_s']:.2f}s, {sr} Hz, {row['channels']} ch, {row['format']}, "
                f"{row['lufs']:.1f} LUFS, {row['true_peak_dbtp']:.1f} dBTP"
            )
    return 0
