"""``audiogen import-musicgen SRC_DIR --out MODEL_DIR``: a released MusicGen checkpoint as an audiogen model."""

from __future__ import annotations

import argparse

ORDER = 35


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-musicgen",
        help="convert a downloaded MusicGen checkpoint (transformers or AudioCraft layout) into a model directory",
        description="Convert a MusicGen checkpoint folder, downloaded beforehand on a machine with network access "
        "(e.g. facebook/musicgen-small from the Hugging Face hub), into an audiogen model directory that "
        "'audiogen generate --model' and the LM training recipe (init_from) can use. The transformers layout "
        "(config.json + model.safetensors) carries T5 and EnCodec; the AudioCraft layout (state_dict.bin + "
        "compression_state_dict.bin) needs --t5. Nothing is downloaded. See docs/import_musicgen.md.",
    )
    p.add_argument("src", metavar="SRC_DIR", help="the MusicGen checkpoint folder")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="the audiogen model directory to write")
    p.add_argument("--t5", metavar="DIR", help="a local T5 folder (t5-base for MusicGen): required for AudioCraft "
                   "checkpoints; for transformers ones, where to take the tokenizer from if SRC_DIR has none")
    p.add_argument("--codec", metavar="DIR", help="AudioCraft checkpoints: a transformers-layout EnCodec folder "
                   "(facebook/encodec_32khz) used instead of compression_state_dict.bin (needed when that file "
                   "only names a pretrained codec)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiogen.models.musicgen_import import import_musicgen

    out = import_musicgen(args.src, args.out, t5=args.t5, codec=args.codec)
    print(f"wrote {out}")
    return 0
