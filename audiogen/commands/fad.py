"""``audiogen fad REF GEN``: Fréchet Audio Distance between a reference and a generated set."""

from __future__ import annotations

import argparse

ORDER = 60

DESCRIPTION = """\
Fréchet Audio Distance between REF and GEN. Each is a folder of audio files (searched
recursively), a .txt file listing audio paths (one per line), or statistics saved
earlier with --save-stats (.npz), so a large reference set is embedded once.

Embedders: vggish (the standard behind published figures; weights from a local file),
clap (LAION CLAP, a local Hugging Face folder), encodec (continuous EnCodec encoder
output), musicnn (the MTT tagger's penultimate layer: music-trained, but not comparable
with published figures) and builtin (librosa features, no weights, always works offline, but its
figures are NOT comparable with published ones). Nothing is ever downloaded.
Embeddings are cached by file content and embedder (--cache), so re-runs are fast.
"""

EPILOG = """\
examples:
  audiogen fad data/ref out/gen                         # builtin embedder, a table
  audiogen fad data/ref out/gen --embedder vggish --weights vggish-10086976.pth --inf --json
  audiogen fad data/ref out/gen --save-stats ref.npz    # also save REF statistics
  audiogen fad ref.npz out/gen --per-song gen_fad.csv --bootstrap 500
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fad", help="Fréchet Audio Distance (FAD, FAD-inf, per song) between two sets of audio",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", metavar="REF", help="reference set: folder, .txt list of files, or saved .npz statistics")
    p.add_argument("gen", metavar="GEN", help="generated set: folder, .txt list of files, or saved .npz statistics")
    p.add_argument("--embedder", default="builtin", choices=["builtin", "vggish", "clap", "encodec", "musicnn"],
                   help="embedding model (default: %(default)s; use vggish for figures comparable with papers)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="vggish: the vggish-10086976.pth file; clap: the HF model folder; encodec: the checkpoint "
                   "file; musicnn: the checkpoint folder (default: under $AUDIOGEN_WEIGHTS or ~/.cache/audiogen/weights)")
    p.add_argument("--codec", default="encodec_24khz", metavar="NAME|DIR",
                   help="for --embedder encodec: encodec_24khz, encodec_48khz, default (the default model's codec), "
                   "tiny, or a codec folder (default: %(default)s)")
    p.add_argument("--inf", action="store_true", help="also report FAD-inf (extrapolated to infinitely many frames)")
    p.add_argument("--per-song", nargs="?", const="fad_per_song.csv", default=None, metavar="CSV",
                   help="per-song FAD of each GEN file vs REF, written to CSV (default name: %(const)s) "
                   "and a bar plot beside it (.png)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="95%% confidence interval from N bootstrap resamples of the GEN files")
    p.add_argument("--save-stats", default=None, metavar="OUT.npz",
                   help="save REF's statistics to OUT.npz (reuse it as REF later)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="embedding cache folder (default: $AUDIOGEN_CACHE/fad or ~/.cache/audiogen/fad)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("--batch-files", type=int, default=8, metavar="N", help="files embedded per batch (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed for FAD-inf subsets and the bootstrap")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from audiogen.errors import AudiogenError
    from audiogen.metrics import fad as F
    from audiogen.metrics.embedders import load_embedder

    if args.bootstrap < 0 or args.batch_files < 1:
        raise AudiogenError("--bootstrap must be >= 0 and --batch-files >= 1")
    embedder = load_embedder(args.embedder, weights=args.weights, device=args.device, codec=args.codec)
    cache = None if args.no_cache else F.EmbeddingCache(args.cache or F.default_cache_dir())
    progress = sys.stderr.isatty()
    ref = F.load_set(args.ref, embedder, cache, progress, args.batch_files)
    if args.save_stats:
        F.save_stats(args.save_stats, ref.stats, {"source": str(args.ref), "embedder_info": embedder.describe()})
    gen = F.load_set(args.gen, embedder, cache, progress, args.batch_files)
    score = F.fad(ref.stats, gen.stats)

    extra: dict = {}
    if args.inf:
        extra["fad_inf"] = F.fad_inf(ref.stats, gen.frames, seed=args.seed)
    if args.bootstrap:
        gen.frames  # noqa: B018 -- raises the readable error for .npz input
        extra["bootstrap"] = F.bootstrap_fad(ref.stats, gen.per_file, args.bootstrap, seed=args.seed)
    if args.per_song:
        scores = F.per_song_fad(ref.stats, gen.per_file if gen.per_file is not None else [gen.frames])
        csv_path, png = F.write_per_song(args.per_song, gen.files, scores, [f.shape[0] for f in gen.per_file])
        extra["per_song"] = {"csv": str(csv_path), "plot": str(png), "mean": F.nan_mean(scores)}
    result = F.result_dict(ref, gen, embedder, score, **extra)
    if args.save_stats:
        result["saved_stats"] = args.save_stats

    if args.json:
        print(json.dumps(result, indent=None))
        return 0
    rows = [("FAD", f"{score:.4f}")]
    if args.inf:
        fi = extra["fad_inf"]
        rows.append(("FAD-inf", f"{fi.score:.4f}  (slope {fi.slope:.3g}, r2 {fi.r2:.3f}, {len(fi.points)} sizes)"))
    if args.bootstrap:
        b = extra["bootstrap"]
        rows.append((f"{b['level']:.0%} CI", f"[{b['low']:.4f}, {b['high']:.4f}]  ({b['n_boot']} resamples)"))
    if args.per_song:
        ps = extra["per_song"]
        mean = "n/a" if ps["mean"] is None else f"{ps['mean']:.4f}"
        rows.append(("per-song", f"mean {mean} -> {ps['csv']}, {ps['plot']}"))
    rows += [
        ("embedder", f"{embedder.cache_key} ({embedder.dim}-d, {embedder.sample_rate} Hz)"),
        ("reference", f"{ref.name}: {ref.stats.n_files} files, {ref.stats.n_frames} frames"),
        ("generated", f"{gen.name}: {gen.stats.n_files} files, {gen.stats.n_frames} frames"),
    ]
    if args.save_stats:
        rows.append(("saved", args.save_stats))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if "warning" in result:
        print(f"WARNING: {result['warning']}")
    return 0
