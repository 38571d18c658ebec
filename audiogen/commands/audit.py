"""``audiogen audit index DATA_DIR`` / ``audiogen audit GEN... --against DATA_DIR``: originality audit."""

from __future__ import annotations

import argparse
import json

ORDER = 65

DESCRIPTION = """\
Is a generated track a copy of the training data? Two forms:

  audiogen audit index DATA_DIR          build the audit index beside a prepared dataset
                                         (DATA_DIR/audit_index/), once
  audiogen audit GEN... --against DATA_DIR
                                         audit generated files against it

Per file it reports the longest run of codec frames shared exactly with a training item
(all codebooks, and codebook 0 alone; and with the item's tokens round-tripped through
the codec, which is what re-encoding the audio of memorised tokens gives), the longest streak of 3 s windows whose nearest
training window is closer than a cosine threshold (embeddings), and the longest
transposition-invariant chroma alignment (melody/harmony, tempo changes allowed), each
with the training item and timestamps; then a verdict: original, similar or copy.
Reference audio is each row's source file (from the folder prep read), or its tokens
decoded with the codec when the sources are gone.
"""

EPILOG = """\
examples:
  audiogen audit index data/prepared
  audiogen audit out/*.wav --against data/prepared
  audiogen audit take.flac --against data/prepared --json audit.json --html audit.html

Exit status: 0 when every file is original or similar, 4 when one is judged a copy.
Thresholds and how they were calibrated: docs/audit.md."""

EXIT_COPY = 4


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="originality audit: is a generated file a copy of the training data?",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="GEN",
                   help="generated audio files to audit; or 'index DATA_DIR' to build the index")
    p.add_argument("--against", metavar="DATA_DIR", help="the prepared dataset (audiogen prep output) to audit against")
    p.add_argument("--codec", default=None, metavar="DIR",
                   help="the codec folder the dataset was prepared with, when it is not a named codec")
    p.add_argument("--embedder", default="builtin", choices=["builtin", "vggish", "clap", "encodec"],
                   help="embedding model for the window similarity; the index and the audit must use the same "
                   "(default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="PATH", help="the embedder's weights (see audiogen fad --help)")
    p.add_argument("--tokens-only", action="store_true",
                   help="exact token replication only: no embeddings or chroma (index: faster to build, "
                   "and no codec round trip)")
    p.add_argument("--no-audio", action="store_true",
                   help="index: the token indexes with the codec round trip, no embeddings or chroma "
                   "(audits against such an index need --tokens-only)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the full results as JSON to FILE ('-': stdout)")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="write a page with the verdicts and the matched excerpts' spectrograms side by side")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiogen.errors import AudiogenError
    from audiogen.files import atomic_write_text
    from audiogen.originality.audit import Auditor, build_index

    if args.files[0] == "index" and args.against is None:
        if len(args.files) != 2:
            raise AudiogenError("usage: audiogen audit index DATA_DIR")
        report = build_index(args.files[1], args.embedder, args.weights, args.codec, args.tokens_only,
                             progress=not args.quiet, audio=not args.no_audio)
        t = report["tokens"]
        print(f"audit index: {t['items']} rows, {t['hours']:.2f} h of tokens, built in {t['build_s']:.1f}s"
              + (f"; codec round trip in {report['roundtrip']['build_s']:.1f}s" if "roundtrip" in report else "")
              + (f"; {report['audio']['windows']} embedding windows" if "audio" in report else ""))
        return 0
    if args.against is None:
        raise AudiogenError("give the prepared dataset to audit against: --against DATA_DIR")
    auditor = Auditor(args.against, codec_path=args.codec, embedder_name=args.embedder, weights=args.weights,
                      tokens_only=args.tokens_only)
    results = []
    for f in args.files:
        r = auditor.audit_file(f)
        results.append(r)
        why = f": {r['reasons'][0]}" if r["reasons"] else ""
        print(f"{f}: {r['verdict']}{why}")
    if args.json == "-":
        print(json.dumps(results, indent=2))
    elif args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2))
    if args.html:
        from audiogen.originality.report import write_html

        write_html(args.html, results, auditor)
    return EXIT_COPY if any(r["verdict"] == "copy" for r in results) else 0
