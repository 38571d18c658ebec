"""``audiogen generate PROMPT --duration S --out FILE``: a finished track from a text prompt."""

from __future__ import annotations

import argparse

from audiogen.commands._sampling_options import HARMONY_CHOICES, add_sampling_options
import sys

ORDER = 10
VALUES = "valid values depend on the model: audiogen info --model [DIR]"

EPILOG = """examples:
  audiogen generate "slow melancholic piano" --duration 90 --out bed.mp3
  audiogen generate "upbeat electronic" --bpm 120 --duration 60 --loop --out loop.wav
  audiogen generate "calm strings" --duration 30 --variations 3 --seed 7 --preset broadcast --out take.flac
  audiogen generate "calm orchestral theme" --negative "techno, with drums" --duration 30 --out calm.wav
  audiogen generate "same mood, longer" --continue intro.wav --duration 120 --out full.ogg

Loudness presets: podcast -16 LUFS (default), streaming -14 LUFS, broadcast -23 LUFS (EBU R128).
Beside each track a JSON sidecar (FILE.json) records the prompt, conditions, seed, model
hash, codec and the loudness and true peak measured on the written file."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate a finished track (exact length, fades or loop, broadcast loudness) from a prompt",
        description="Generate music from a text description and optional attributes, then finish it for "
        "podcasts and video: exact duration, equal-power fades or a seamless loop, loudness normalised "
        "(BS.1770) with a true-peak limit, tags marking it AI-generated, and a JSON sidecar.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", help='text description, e.g. "slow melancholic piano"')
    p.add_argument("--duration", type=float, required=True, metavar="S", help="length in seconds (exact)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file: .wav, .flac, .ogg or .mp3")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="model directory (config.yaml + model.safetensors); default: the embedded model")
    g = p.add_argument_group("conditions", "optional; each is off unless given. The values a model accepts depend on\n"
                             "what it was trained with: 'audiogen info --model [DIR]' lists them.")
    g.add_argument("--genre", help=f'e.g. "ambient"; {VALUES}')
    g.add_argument("--mood", help=f'e.g. "calm"; {VALUES}')
    g.add_argument("--bpm", type=float,
                   help="tempo in beats per minute (20-400), mapped to the nearest of the model's tempo buckets; "
                        "the range depends on the model: audiogen info --model [DIR]. Without it, a model with a "
                        "beat grid takes a tempo written in the prompt (\"upbeat electronic, 120 bpm\"), else the "
                        "tempo typical of the mood or genre the request names (--mood fast, or \"fast\" in the "
                        "prompt), else plays at its default tempo")
    g.add_argument("--key", help=f'e.g. "D minor"; {VALUES}')
    g.add_argument("--no-key-shift", dest="key_shift", action="store_false",
                   help="play a --key as the model learned it; by default a key the model lists under key_shift "
                        "('audiogen info') is played a few semitones away and decoded back to the key asked for "
                        "(the default model: keys on black keys, a semitone down; docs/generate.md)")
    g.add_argument("--instruments", help=f'comma-separated, e.g. "piano,strings"; {VALUES}')
    g.add_argument("--harmony", choices=HARMONY_CHOICES,
                   help="moving: chords that change; held: one chord held (a drone, a pad). Only a model trained "
                        "with the harmony attribute takes it ('audiogen info'); such a model plays moving harmony "
                        "unless told otherwise (docs/generate.md, \"Harmony\")")
    g.add_argument("--no-prompt-labels", dest="prompt_labels", action="store_false",
                   help="read the prompt as text only. By default the labels the model knows that the prompt names "
                        "as words fill the slots not given as options: \"slow melancholic piano\" plays as --mood "
                        "slow --instruments piano (keys only after 'in': \"... in D minor\"); the line 'read from "
                        "the prompt' and the sidecar's labels_from_prompt say what was read (docs/generate.md, "
                        "\"Labels in the prompt\")")
    g.add_argument("--negative", metavar="TEXT",
                   help='what the music should not be, e.g. "techno, with drums": classifier-free guidance pushes '
                        "away from it instead of from no request at all; the labels the model knows that it names "
                        "as words (genre, mood, key, instruments: audiogen info) go in their slots too "
                        "(docs/generate.md, \"Negative prompt\")")
    g.add_argument("--tuning", type=float, metavar="HZ",
                   help="decode in tune with A4 = HZ (400-480, e.g. 440): the default model's notes sit about a "
                        "quarter-semitone sharp of A440, since its codec's semitone bands do; this moves them onto "
                        "the notes (mel codecs with semitone bands only; the tokens are the same). Off by default: "
                        "docs/generate.md, \"In tune\"")
    s = p.add_argument_group("sampling")
    s.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same file (default 0)")
    s.add_argument("--variations", type=int, default=1, metavar="N",
                   help="N takes in one batch: FILE, FILE-v2, ... (default 1)")
    add_sampling_options(s, offbeat_default="default: the model's recommendation, else 0 = never",
                         label_guidance_note="no effect on a request without --genre, --mood, --key or --instruments "
                                             "(a model with --harmony: on every request, played moving unless "
                                             "asked otherwise)")
    s.add_argument("--label-guidance-hold", type=float, metavar="S", dest="label_guidance_hold_s",
                   help="label guidance lasts the first S seconds of the take, then falls to off over "
                        "--label-guidance-fade seconds and the rest continues what it began: a key set, not droned "
                        "on (default: the model's recommendation, else 0 = throughout; docs/generate.md)")
    s.add_argument("--label-guidance-fade", type=float, metavar="S", dest="label_guidance_fade_s",
                   help="seconds label guidance takes to fall to off after --label-guidance-hold (default: the "
                        "model's recommendation, else 0 = at once)")
    s.add_argument("--top-p", type=float, metavar="P",
                   help="sample among the most likely tokens whose probabilities add up to P (default 0 = off)")
    s.add_argument("--no-silence", dest="allow_silence", action="store_const", const=False, default=None,
                   help="never sample the codes that decode to silence: no pauses, and far fewer short holes in "
                        "the sound (default: the model's recommendation, else silence allowed up to --max-silence)")
    s.add_argument("--continue", dest="continue_from", metavar="FILE",
                   help="audio to continue: the track starts with it (re-synthesised) and carries on")
    f = p.add_argument_group("finishing")
    f.add_argument("--loop", action="store_true", help="make the end flow seamlessly into the start")
    f.add_argument("--fade-in", type=float, metavar="S",
                   help="equal-power fade-in at the start, in seconds (default 0 = none)")
    f.add_argument("--fade-out", type=float, metavar="S",
                   help="equal-power fade-out at the end, in seconds (default 0 = none)")
    f.add_argument("--lufs", type=float, default=None, help="integrated loudness target (default -16)")
    f.add_argument("--preset", choices=["podcast", "streaming", "broadcast"], default=None,
                   help="loudness preset: podcast -16, streaming -14, broadcast -23 LUFS (default podcast)")
    f.add_argument("--true-peak", type=float, metavar="DBTP", help="true-peak ceiling (default -1)")
    f.add_argument("--keep-dynamics", dest="even_level", action="store_const", const=False, default=None,
                   help="keep the model's own level swings; by default a loudness follower (the stream's) holds "
                        "the level of every 3 s near the target, as a broadcast bed is, so a take that gets "
                        "louder halfway does not play its start far under the target")
    d = p.add_argument_group("speed")
    d.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    d.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="LM precision; auto = bfloat16 on a GPU that supports it, float32 on CPU (default auto)")
    d.add_argument("--engine", choices=["auto", "eager", "graph", "compile"], default="auto",
                   help="decode engine: graph = one CUDA graph replayed per frame (GPU), compile = torch.compile "
                        "(fused kernels; tens of seconds of compiling first), eager = plain PyTorch; "
                        "auto = graph on a GPU, eager on CPU (default auto)")
    o = p.add_argument_group("originality")
    o.add_argument("--originality", metavar="DATA_DIR",
                   help="audit each take against this prepared dataset (its 'audiogen audit index') before writing "
                        "it; a take judged a copy of the training data is regenerated with the next seed")
    o.add_argument("--originality-tries", type=int, default=3, metavar="N",
                   help="seeds tried per take before giving up with an error, nothing written (default 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # sampling and finishing options left out keep the defaults of SamplingParams and FinishSpec (the help
    # states them; test_generate checks it)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiogen.audio.finishing import PRESETS
    from audiogen.errors import AudiogenError
    from audiogen.generation.pipeline import GenerateJob, as_options, run_job

    if args.lufs is not None and args.preset is not None:
        raise AudiogenError("give either --lufs or --preset, not both")
    lufs = args.lufs if args.lufs is not None else PRESETS[args.preset or "podcast"]
    instruments = [i.strip() for i in args.instruments.split(",") if i.strip()] if args.instruments else None
    options = dict(genre=args.genre, mood=args.mood, bpm=args.bpm, key=args.key, instruments=instruments,
                   harmony=args.harmony, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   cfg_scale=args.cfg,
                   max_silence_s=args.max_silence_s, allow_silence=args.allow_silence, min_sound_s=args.min_sound_s,
                   cap_quiet=args.cap_quiet, cap_below_bpm=args.cap_below_bpm,
                   beat_guidance=args.beat_guidance, label_guidance=args.label_guidance,
                   label_guidance_hold_s=args.label_guidance_hold_s, label_guidance_fade_s=args.label_guidance_fade_s,
                   offbeat_below_bpm=args.offbeat_below_bpm,
                   fade_in_s=args.fade_in, fade_out_s=args.fade_out, true_peak_db=args.true_peak,
                   even_level=args.even_level)
    job = GenerateJob.from_options(
        args.prompt, args.duration, args.out, model_dir=args.model, seed=args.seed, variations=args.variations,
        continue_from=args.continue_from, loop=args.loop, lufs=lufs, device=args.device, dtype=args.dtype,
        engine=args.engine, progress=not args.quiet, originality=args.originality,
        originality_tries=args.originality_tries, key_shift=args.key_shift, tuning_hz=args.tuning,
        negative=args.negative, prompt_labels=args.prompt_labels,
        **{k: v for k, v in options.items() if v is not None},
    )
    job.validate()  # a job that cannot run says so before anything else is printed
    if job.labels_from_prompt and not args.quiet:
        print(f"read from the prompt: {as_options(job.labels_from_prompt)} (--no-prompt-labels reads it as text only)",
              file=sys.stderr)
    for meta in run_job(job):
        m = meta["measured"]
        print(f"{meta['path']}: {meta['duration_s']:.2f}s, {m['integrated_lufs']:.1f} LUFS, "
              f"{m['true_peak_dbtp']:.1f} dBTP (seed {meta['seed']})")
        if abs(m["integrated_lufs"] - lufs) > 0.5:
            print(f"warning: {meta['path']} reached {m['integrated_lufs']:.1f} LUFS, not {lufs:g}: this material "
                  f"cannot get louder under a {job.finish.true_peak_db:g} dBTP ceiling without distortion; lower "
                  "--lufs or raise --true-peak", file=sys.stderr)
    return 0
