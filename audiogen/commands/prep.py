"""``audiogen prep``: a folder of music -> a tokenized Hugging Face dataset (see docs/prep.md)."""

from __future__ import annotations

import argparse
import os

from audiogen.commands.codec import add_codec_args

ORDER = 20
#: kbps used with --codec encodec_24khz when --bandwidth is not given (8 codebooks, as MusicGen-style LMs use)
DEFAULT_BANDWIDTH_24KHZ = 6.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prep",
        help="prepare a training corpus: audio folder -> tokenized dataset with metadata",
        description="Walk AUDIO_DIR (every format the audio layer reads), cut each file into segments, "
        "tokenize them with the codec and save a Hugging Face DatasetDict (train/valid, split by source "
        "file) to DATA_DIR, with tempo, key, tags, captions and licenses per segment. Bad files are skipped "
        "and listed in DATA_DIR/prep_report.json. Killed and rerun with the same command, it resumes where "
        "it stopped and produces the same dataset. Started by a launcher (accelerate launch, torchrun: "
        "WORLD_SIZE > 1), each process prepares its share of the files (a hash of the path) and rank 0 writes the "
        "dataset a single process would have written (see docs/prep.md). A file longer than 7.5 minutes (a mix, "
        "a live set) is processed in 5-minute parts, so memory does not grow with its length; its segments come out as "
        "if it had been decoded whole.",
        epilog="Exit status: 0 all files used; 3 some files were skipped (see prep_report.json; under a launcher "
        "0, since any other status reads as a failed job); "
        "1 user error (bad flag, folder, codec). Captions: --captions FILE (CSV or JSONL with a 'path' "
        "column relative to AUDIO_DIR and any of caption,title,artist,genre,mood,instruments,license,"
        "attribution), or TRACK.txt / TRACK.json beside TRACK.ogg.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("audio_dir", metavar="AUDIO_DIR", help="folder of audio files (searched recursively)")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="dataset folder to write (resumed if it exists)")
    add_codec_args(p)  # default: the embedded default model's codec, so a first prep needs no download
    p.add_argument("--segment", type=float, default=30.0, metavar="S", help="segment length in seconds (default: %(default)s)")
    p.add_argument("--hop", type=float, default=None, metavar="S",
                   help="seconds between segment starts (default: = --segment, no overlap)")
    p.add_argument("--min-segment", type=float, default=None, metavar="S",
                   help="drop a last (or only) segment shorter than this; never padded (default: segment / 3)")
    p.add_argument("--captions", default=None, metavar="FILE", help="CSV/JSONL of captions and metadata keyed by relative path")
    p.add_argument("--tag-labels", action="store_true",
                   help="fill genre, mood and instruments a track's metadata lacks from the musicnn MTT tagger "
                   "(probability >= 0.25; confidence and source in DATA_DIR/.work/<sha256>.tags.json); captions "
                   "use them")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes decoding and analysing files (on cpu they tokenize them too, one file each; with "
                   "--device cuda the main process tokenizes); 0 = all in the main process "
                   f"(default: all {os.cpu_count()} cores)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="segments per codec call (default: the codec's own choice, measured: 8 on a GPU; on cpu 8 for "
                        "a codec with an LSTM such as EnCodec, else 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/valid assignment (default: %(default)s)")
    p.add_argument("--valid-fraction", type=float, default=0.1, metavar="F",
                   help="share of source files in the valid split (default: %(default)s)")
    p.add_argument("--silence-db", type=float, default=-70.0, metavar="DBFS",
                   help="files/segments with a peak below this are silent and skipped (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from audiogen.data.prep import EXIT_OK, EXIT_SKIPPED, PrepConfig, prepare

    bandwidth = args.bandwidth
    if bandwidth is None and args.codec == "encodec_24khz":
        bandwidth = DEFAULT_BANDWIDTH_24KHZ
    cfg = PrepConfig(
        audio_dir=args.audio_dir, out=args.out, codec=args.codec, bandwidth=bandwidth,
        codec_weights=args.codec_weights, device=args.device, segment_s=args.segment, hop_s=args.hop,
        min_segment_s=args.min_segment, captions=args.captions, workers=args.workers, batch_size=args.batch_size,
        seed=args.seed, valid_fraction=args.valid_fraction, silence_dbfs=args.silence_db,
        progress=not args.no_progress, tag_labels=args.tag_labels,
    )
    report = prepare(cfg)
    if "rank" in report:  # one of several processes (not rank 0): rank 0 writes the dataset and reports
        print(f"{args.out}: rank {report['rank']} of {report['world_size']}: {report['files_kept']} of "
              f"{report['files']} files kept ({report['reused']} resumed from earlier work); rank 0 writes the dataset")
        return EXIT_OK  # skipped files are rank 0's to report: a non-zero exit would make the launcher stop it
    seg = report["segments"]
    print(f"{args.out}: {report['files_kept']} files, {report['audio_hours']:.3f} h audio, "
          f"{seg['train']} train + {seg['valid']} valid segments "
          f"({report['files_reused_from_shards']} files resumed from earlier work)")
    if report["duplicates"]:
        print(f"{len(report['duplicates'])} duplicate files tokenized once (see prep_report.json)")
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} files (reasons in {args.out}/prep_report.json):", file=sys.stderr)
        for s in report["skipped"][:10]:
            print(f"  {s['source']}: {s['reason']}", file=sys.stderr)
        # under a launcher any non-zero exit reads as a crashed job: there the report says it
        return EXIT_OK if report.get("ranks") else EXIT_SKIPPED
    return EXIT_OK
