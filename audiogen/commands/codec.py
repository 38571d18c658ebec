"""``audiogen codec``: encode audio to tokens, decode tokens to audio, or round-trip a file."""

from __future__ import annotations

import argparse

ORDER = 80


def add_codec_args(p: argparse.ArgumentParser) -> None:
    """Shared codec-selection flags (also used by prep and fad)."""
    p.add_argument("--codec", default="default", metavar="NAME|PATH",
                   help="default (the embedded default model's codec, offline), encodec_24khz, encodec_48khz "
                   "(pretrained, from a local file), tiny (random, for tests), or a codec folder (codec.json + "
                   "codec.safetensors). Default: %(default)s")
    p.add_argument("--bandwidth", type=float, default=None, metavar="KBPS",
                   help="target bandwidth in kbps (chooses the number of codebooks), e.g. 6 for encodec_24khz")
    p.add_argument("--codec-weights", default=None, metavar="FILE",
                   help="pretrained EnCodec checkpoint file (default: $AUDIOGEN_WEIGHTS or torch's hub cache)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "codec",
        help="encode audio to EnCodec tokens, decode tokens, or round-trip a file",
        description="Hear what the codec does to a file, or convert between audio and tokens. Tokens are "
        "saved as .npy arrays shaped [K, T] (int16).",
    )
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)
    audio_in = "audio file (wav, flac, ogg, opus, mp3, aiff; any rate and channel count)"
    audio_out = "audio file to write: .wav, .flac, .ogg, .opus, .mp3 or .aiff (at the codec's rate)"
    tokens = ".npy file of tokens shaped [K, T]"
    for name, help_, in_help, out_help in [
        ("roundtrip", "encode then decode IN, write OUT (hear the codec)", audio_in, audio_out),
        ("encode", "encode IN (audio) to OUT (.npy tokens [K, T])", audio_in, tokens),
        ("decode", "decode IN (.npy tokens [K, T]) to OUT (audio)", tokens, audio_out),
    ]:
        q = ops.add_parser(name, help=help_, description=help_)
        q.add_argument("input", metavar="IN", help=in_help)
        q.add_argument("output", metavar="OUT", help=out_help)
        add_codec_args(q)
        q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from audiogen.audio.io import load_audio, write_audio
    from audiogen.codec.base import load_codec, load_codes
    from audiogen.devices import keep_freed_memory
    from audiogen.files import atomic_path

    keep_freed_memory()  # a long file's windows: see its docstring
    codec = load_codec(args.codec, bandwidth=args.bandwidth, weights=args.codec_weights, device=args.device)
    if args.op in ("roundtrip", "encode"):
        wav, _ = load_audio(args.input, codec.sample_rate, codec.channels)
        codes = codec.encode(torch.from_numpy(wav)[None])
    else:
        codes = load_codes(args.input)
    if args.op == "encode":
        with atomic_path(args.output, suffix=".npy") as tmp:
            np.save(tmp, codes[0].cpu().numpy().astype(np.int16))
        print(f"{args.output}: {codes.shape[1]} codebooks x {codes.shape[2]} frames ({codec.frame_rate:g} Hz)")
        return 0
    out = codec.decode(codes)[0].cpu().numpy()
    if args.op == "roundtrip":
        out = out[:, : wav.shape[1]]
    write_audio(args.output, out, codec.sample_rate)
    print(f"{args.output}: {out.shape[1] / codec.sample_rate:.2f}s at {codec.sample_rate} Hz")
    return 0
