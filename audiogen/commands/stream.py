"""``audiogen stream``: endless music to stdout or a file, steered by JSON lines on stdin."""

from __future__ import annotations

import argparse

from audiogen.commands._sampling_options import HARMONY_CHOICES, add_sampling_options

ORDER = 12

EPILOG = """control lines (stdin, one JSON object per line, applied at the next frame):
  {"mood": "tense", "intensity": 0.8, "glide_s": 4}     glide over 4 s
  {"prompt": "boss fight, drums", "bpm": 140, "cut": "bar"}  switch on the next bar line
  {"genre": null}                                      null clears a condition
fields: prompt (or text), genre, mood, bpm, key, instruments, intensity (0-1),
glide_s (0-120 s, default 0 = at once), cut ("bar"/true). Absent fields keep their
value. A bad line prints one error to stderr and the music carries on. Attributes the
model was not trained with (see 'audiogen info --model') are added to the text.

examples:
  audiogen stream "calm exploration music" --genre game | aplay -f S16_LE -r 24000 -c 1
  audiogen stream "calm exploration music" --format wav | ffplay -nodisp -
  audiogen stream "night drive" --bpm 90 --duration 600 --out drive.wav < controls.jsonl

raw output is signed 16-bit little-endian (or float32 with --format f32) at the model's
sample rate and channels, printed to stderr at the start. See docs/stream.md."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stream",
        help="stream endless music to stdout or a file; change mood, intensity, tempo live with JSON lines on stdin",
        description="Generate music without end (or for --duration), chunk by chunk, as raw PCM or WAV on "
        "stdout (pipe it into aplay, ffplay, a game engine) or into a file. Conditions change while it "
        "plays: write JSON lines on stdin; each change glides over glide_s seconds or cuts on the next bar. "
        "Loudness is held at --lufs by a streaming loudness follower and a true-peak limiter.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", default=None, help='text description to start with, e.g. "calm exploration"')
    p.add_argument("--model", default=None, metavar="DIR", help="model directory; default: the embedded model")
    g = p.add_argument_group("starting conditions (all change later through stdin)")
    g.add_argument("--genre", help="genre the model knows (`audiogen info --model`); otherwise added to the text")
    g.add_argument("--mood", help="mood, e.g. tense; a model without mood conditioning gets it in the text")
    g.add_argument("--bpm", type=float, help="tempo in beats per minute (default, on a model with a beat grid: "
                                                 "a tempo written in the prompt, else the mood's or genre's, else "
                                                 "the model's default; audiogen info --model lists them)")
    g.add_argument("--key", help='key and mode, e.g. "A minor"')
    g.add_argument("--instruments", help="comma-separated, e.g. piano,strings")
    g.add_argument("--harmony", choices=HARMONY_CHOICES,
                   help="a model trained with the harmony attribute only: moving (its default) or held (one chord)")
    g.add_argument("--negative", metavar="TEXT",
                   help='what the stream should not be, e.g. "techno, with drums": guidance pushes every condition '
                        "away from it instead of from no request at all; the labels the model knows that it names go "
                        "in their slots too (fixed for the whole stream; docs/generate.md, \"Negative prompt\")")
    g.add_argument("--no-prompt-labels", dest="prompt_labels", action="store_false",
                   help="read the prompt (and every prompt sent later) as text only; by default the labels the model "
                        "knows that it names fill the slots not given, as generate reads a prompt (docs/generate.md, "
                        "\"Labels in the prompt\")")
    g.add_argument("--intensity", type=float, metavar="0-1",
                   help="0 calm .. 1 energetic: mixes a calm and an energetic version of the request (default: off)")
    o = p.add_argument_group("output")
    o.add_argument("--tuning", type=float, metavar="HZ",
                   help="decode in tune with A4 = HZ (400-480, e.g. 440; mel codecs with semitone bands only), as "
                        "generate --tuning does (docs/generate.md, \"In tune\")")
    o.add_argument("--out", metavar="FILE", help="write a WAV file (finalised on exit or Ctrl-C) instead of stdout")
    o.add_argument("--format", choices=["raw", "f32", "wav"], default="raw",
                   help="stdout format: raw = s16le PCM, f32 = float32le PCM, wav = 16-bit WAV with an open-ended "
                        "header (default raw)")
    o.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: never)")
    o.add_argument("--chunk", type=float, default=1.0, metavar="S", help="chunk length in seconds (default 1)")
    o.add_argument("--lufs", type=float, default=-16.0, help="loudness target (default -16)")
    o.add_argument("--true-peak", type=float, default=-1.0, metavar="DBTP", help="true-peak ceiling (default -1)")
    s = p.add_argument_group("sampling")
    s.add_argument("--seed", type=int, default=0, help="same seed + same control lines at the same times = same audio")
    add_sampling_options(s, offbeat_default="default 0 = never in a stream, whatever the model recommends for "
                                            "generate: a stream whose tempo crosses it lost its tempo changes; "
                                            "docs/stream.md",
                         label_guidance_note="no effect on a request without labels (docs/generate.md)")
    s.add_argument("--tempo-boost", type=float, default=1.0, metavar="B",
                   help="for a model with a beat grid and beat guidance on: beat guidance is raised by B from a "
                        "change of tempo until 4 s after its glide, so the music takes the new beat (default 1; "
                        "0 = off)")
    s.add_argument("--allow-silence", dest="allow_silence", action="store_const", const=True, default=None,
                   help="let the model sample the codes that decode to silence (pauses up to --max-silence). A stream "
                        "leaves them out by default: the default model's short dark gaps pulled its 3 s loudness "
                        "2-2.5 LU under the target (docs/stream.md)")
    s.add_argument("--no-silence", dest="allow_silence", action="store_const", const=False,
                   help="never sample the codes that decode to silence (a stream's default; kept for scripts)")
    s.add_argument("--window", type=float, default=None, metavar="S",
                   help="LM window in seconds (default: the model's); the context slides within it")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="LM weights dtype (default float32)")
    p.add_argument("--quiet", action="store_true", help="no start-up line on stderr")
    p.set_defaults(func=run)


def _read_controls(stream, source, report) -> None:
    """Feed stdin's JSON lines to ``stream.control``; a bad line is reported, never fatal."""
    import json

    from audiogen.errors import AudiogenError

    for n, line in enumerate(source, 1):
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except json.JSONDecodeError as e:
            report(f"control line {n}: not JSON ({e.msg} at column {e.colno}); ignored")
            continue
        try:
            stream.control(msg)
        except AudiogenError as e:
            report(f"control line {n}: {e}; ignored")


def wav_header(sample_rate: int, channels: int, frames: int | None) -> bytes:
    """A 16-bit PCM WAV header; ``frames=None``: the open-ended sizes streaming players accept."""
    import struct

    data = 0xFFFFFFFF - 36 if frames is None else frames * channels * 2
    return (b"RIFF" + struct.pack("<I", min(0xFFFFFFFF, 36 + data)) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * channels * 2, channels * 2, 16)
            + b"data" + struct.pack("<I", data))


def run(args: argparse.Namespace) -> int:
    import math
    import sys
    import threading

    from audiogen.errors import AudiogenError
    from audiogen.generation.stream import MusicStream, StreamSettings, state_from, stream_sampling

    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise AudiogenError(f"--duration must be a positive number of seconds, got {args.duration}")
    if args.out is not None and not args.out.lower().endswith(".wav"):
        raise AudiogenError(f"{args.out}: a stream is written as WAV; give a .wav file name")
    start = {k: v for k, v in dict(text=args.prompt, genre=args.genre, mood=args.mood, bpm=args.bpm, key=args.key,
                                   instruments=args.instruments, harmony=args.harmony,
                                   intensity=args.intensity).items() if v is not None}
    state = state_from(start)  # bad values fail before the model loads
    from audiogen.generation.pipeline import check_guidance, negative_conditions, resolve_model_dir
    from audiogen.models.checkpoint import load_model, read_config

    model_dir = resolve_model_dir(args.model)
    config = read_config(model_dir)
    sampling = stream_sampling(config, temperature=args.temperature, top_k=args.top_k, cfg_scale=args.cfg,
                               max_silence_s=args.max_silence_s, allow_silence=args.allow_silence,
                               min_sound_s=args.min_sound_s, cap_quiet=args.cap_quiet,
                               cap_below_bpm=args.cap_below_bpm,
                               beat_guidance=args.beat_guidance,
                               label_guidance=args.label_guidance, offbeat_below_bpm=args.offbeat_below_bpm)
    check_guidance(config, model_dir, sampling)
    settings = StreamSettings(chunk_s=args.chunk, seed=args.seed, sampling=sampling,
                              window_s=args.window, lufs=args.lufs, true_peak_db=args.true_peak,
                              device=args.device, dtype=args.dtype, tempo_boost=args.tempo_boost,
                              tuning_hz=args.tuning,
                              negative=None if args.negative is None else negative_conditions(args.negative, config),
                              prompt_labels=args.prompt_labels)
    settings.validate()
    loaded = load_model(model_dir, device=args.device)
    stream = MusicStream(loaded, state, settings)
    sr, ch = stream.sr, stream.channels
    total = None if args.duration is None else int(round(args.duration * sr))

    def report(msg: str) -> None:
        print(f"audiogen stream: {msg}", file=sys.stderr, flush=True)

    if not args.quiet:
        fmt = "WAV file" if args.out else {"raw": "s16le", "f32": "float32le", "wav": "16-bit WAV"}[args.format]
        report(f"{sr} Hz, {ch} channel(s), {fmt}; reading JSON control lines on stdin")
        if read := stream.prompt_read(stream.state):
            from audiogen.generation.pipeline import as_options

            report(f"read from the prompt: {as_options(read)} (--no-prompt-labels reads it as text only)")
    threading.Thread(target=_read_controls, args=(stream, sys.stdin, report), daemon=True).start()

    if args.out is None:
        return _play(stream, None, args.format, total)
    import contextlib

    import soundfile as sf

    from audiogen.files import atomic_path

    with atomic_path(args.out) as tmp, sf.SoundFile(str(tmp), "w", sr, ch, subtype="PCM_16", format="WAV") as sink:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends an endless file: keep what was written
            _play(stream, sink, args.format, total)
    return 0


def _play(stream, sink, fmt: str, total: int | None) -> int:
    """Write chunks to ``sink`` (a SoundFile) or stdout in ``fmt`` until ``total`` samples (None: forever)."""
    import os
    import sys

    import numpy as np

    out = sys.stdout.buffer
    written = 0
    try:
        if sink is None and fmt == "wav":
            out.write(wav_header(stream.sr, stream.channels, total))
        while total is None or written < total:
            chunk = stream.next_chunk()  # [C, n]
            if total is not None:
                chunk = chunk[:, : total - written]
            written += chunk.shape[1]
            x = np.ascontiguousarray(chunk.T)  # interleaved [n, C]
            if sink is not None:
                sink.write(x)
                continue
            if fmt == "f32":
                out.write(x.astype("<f4").tobytes())
            else:
                out.write((np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes())
            out.flush()
    except BrokenPipeError:  # the player went away: a normal way for a stream to end
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0
