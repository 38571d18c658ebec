"""``audiogen tag FILE...``: the most likely musicnn tags of each file (see docs/tag.md)."""

from __future__ import annotations

import argparse

ORDER = 65

DESCRIPTION = """\
Tag music with a pretrained musicnn model, offline. MTT (MagnaTagATune, 50 tags:
instruments such as piano, strings, guitar, violin, drums; genres such as classical,
techno, rock; moods and tempo such as slow, fast, quiet, soft) or MSD (Million Song
Dataset, 50 tags: rock, pop, jazz, electronic, folk, chillout, happy, sad, mellow, ...).
Each file is cut into 3 s patches; a tag's probability is its mean over the patches.
Weights come from the musicnn wheel (pip install --no-deps musicnn), nothing is downloaded.
FILE may be a folder (searched recursively for audio).
"""

EPILOG = """\
examples:
  audiogen tag song.ogg                       # top 5 MTT tags
  audiogen tag music/ --model MSD --top 3
  audiogen tag a.flac b.wav --json            # one JSON object per line
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tag", help="top musicnn tags (instruments, genre, mood) with probabilities per file",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files or folders")
    p.add_argument("--model", default="MTT", type=str.upper, choices=["MTT", "MSD"],
                   help="MTT (MagnaTagATune: instruments, genre, mood) or MSD (Million Song Dataset: genre, "
                   "era, mood) (default: %(default)s)")
    p.add_argument("--top", type=int, default=5, metavar="N", help="tags shown per file (default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="musicnn checkpoint folder (default: $AUDIOGEN_WEIGHTS/musicnn/<MODEL>_musicnn, else "
                   "the installed musicnn wheel)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per file: path, model, top tags and every tag's probability")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from audiogen.audio.io import find_audio_files, load_audio
    from audiogen.devices import resolve_device
    from audiogen.errors import AudiogenError
    from audiogen.metrics.tagger import load_tagger, top_of

    if args.top < 1:
        raise AudiogenError("--top must be >= 1")
    files = [f for arg in args.files for f in find_audio_files(arg)]
    if not files:
        raise AudiogenError(f"no audio files in {', '.join(args.files)}")
    resolve_device(args.device)
    tagger = load_tagger(args.model, weights=args.weights, device=args.device)
    for f in files:
        wav, sr = load_audio(f)
        probs = tagger.tag_probabilities(wav, sr)
        top = top_of(probs, tagger.labels, args.top)
        if args.json:
            print(json.dumps({"path": str(f), "model": tagger.name, "top": [[t, round(p, 4)] for t, p in top],
                              "probabilities": {t: round(float(p), 4) for t, p in zip(tagger.labels, probs)}}))
        else:
            print(f"{f}: " + ", ".join(f"{t} {p:.2f}" for t, p in top), flush=True)
    return 0
