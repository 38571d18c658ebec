"""A picture of a stream around a control change (docs/stream.md, "Conditioned change").

    python eval/stream_change.py --out runs/stream_change [--model DIR] [--prompt TEXT] [--before 10]
        [--after 20] [--reference REAL.ogg] [--seed 0]

Streams ``--before`` seconds of the calm request (80 bpm, intensity 0.2), sends the energetic
one (140 bpm, intensity 0.9, at once), streams ``--after`` seconds more, and writes the audio
(``stream.wav``), the tempo the prep estimator hears in the 10 s before and after the change
(``change.json``) and log-mel spectrograms of the stream beside ``--reference`` real music
(``change.png``). Moods are those of ``benchmarks/stream.py``: the model's own labels where it has
them. All logic is in ``audiogen.generation.stream`` and ``audiogen.metrics``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for stream.wav, change.json and change.png")
    ap.add_argument("--model", default=None, help="model directory (default: the shipped default model)")
    ap.add_argument("--prompt", default="adventure game music")
    ap.add_argument("--before", type=float, default=10.0, help="seconds streamed before the change")
    ap.add_argument("--after", type=float, default=20.0, help="seconds streamed after it")
    ap.add_argument("--reference", default=None, help="real music to show above the stream")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from audiogen.audio.io import load_audio, write_audio
    from audiogen.errors import AudiogenError
    from audiogen.generation.pipeline import resolve_model_dir
    from audiogen.generation.stream import MusicStream, StreamSettings, calm_and_tense, stream_sampling
    from audiogen.metrics.model_eval import estimate_tempo, spectrogram_figure
    from audiogen.models.checkpoint import load_model

    def run() -> int:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        loaded = load_model(resolve_model_dir(args.model))
        calm, tense = calm_and_tense(loaded.conditioner.cfg)
        settings = StreamSettings(seed=args.seed, sampling=stream_sampling(loaded.config))
        stream = MusicStream(loaded, {"text": args.prompt, **calm}, settings)
        chunks, t = [], 0.0
        while t < args.before:
            chunks.append(stream.next_chunk())
            t += chunks[-1].shape[-1] / stream.sr
        change_s = t
        stream.control(tense)
        while t < args.before + args.after:
            chunks.append(stream.next_chunk())
            t += chunks[-1].shape[-1] / stream.sr
        wav = np.concatenate(chunks, axis=-1).astype(np.float32)
        write_audio(out / "stream.wav", wav, stream.sr)

        def tempo(a: float, b: float) -> float | None:  # prep's estimator, as the benchmark's
            return estimate_tempo(wav[:, int(a * stream.sr):int(b * stream.sr)], stream.sr)

        figures = {"change_at_s": round(change_s, 2), "calm": calm, "tense": tense,
                   "tempo_before_bpm": tempo(max(0.0, change_s - 10), change_s),
                   "tempo_after_bpm": tempo(change_s, change_s + 10)}
        (out / "change.json").write_text(json.dumps(figures, indent=2))
        panels = []
        if args.reference:
            ref, _ = load_audio(args.reference, stream.sr, 1, duration_s=t)
            panels.append((f"real music: {Path(args.reference).name}", ref))
        panels.append((f"stream: {calm} -> {tense} at {change_s:.0f} s", wav))
        spectrogram_figure(panels, stream.sr, out / "change.png", seconds=t)
        print(json.dumps(figures))
        return 0

    try:
        return run()
    except AudiogenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
