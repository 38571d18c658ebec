"""``audiogen info FILE...``: what the audio layer sees in a file (rate, channels, loudness, true peak).

``audiogen info --model [DIR]``: what a model knows (size, codec, window, attribute values) before generating.
"""

from __future__ import annotations

import argparse
import json

ORDER = 90


#: how ``audiogen info`` says where ``--cap-quiet`` applies
CAP_QUIET_SCOPE = {"on": "", "untimed": " to requests that name no tempo", "slow": " under {cap_below_bpm:g} bpm"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show duration, rate, channels, loudness (LUFS) and true peak of audio files, or what a model knows",
        description="Read audio files with audiogen's audio layer and report what it sees: duration, sample "
        "rate, channels, integrated loudness (ITU-R BS.1770-4) and true peak (dBTP). Useful to check a "
        "file before prep, or a generated track after finishing. With --model, describe a model instead: "
        "LM size, codec, text encoder, generation window, and the --genre/--mood/--key/--instruments "
        "values and --bpm range it accepts (read from its config, no weights loaded).",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="audio files (wav, flac, ogg, opus, mp3, aiff)")
    # False: not given; None: given without DIR, meaning the embedded default model
    p.add_argument("--model", nargs="?", const=None, default=False, metavar="DIR",
                   help="describe a model directory instead of audio files; without DIR, the embedded model")
    p.add_argument("--json", action="store_true", help="print one JSON object per file (or for the model)")
    p.set_defaults(func=run, usage_error=p.error)


def run(args: argparse.Namespace) -> int:
    if args.model is not False:
        if args.files:
            args.usage_error("give audio FILEs or --model [DIR], not both")
        return run_model(args)
    if not args.files:
        args.usage_error("give audio FILEs to measure, or --model [DIR] to describe a model")

    from audiogen.audio.io import audio_info
    from audiogen.audio.loudness import measure_file
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
            "lufs": None if m.lufs is None else round(m.lufs, 2),
            "true_peak_dbtp": round(m.true_peak_dbtp, 2),
        }
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{row['file']}: {row['duration_s']:.2f}s, {sr} Hz, {row['channels']} ch, {row['format']}, "
                + ("loudness n/a (BS.1770 covers up to 5 channels)" if m.lufs is None else f"{row['lufs']:.1f} LUFS")
                + f", {row['true_peak_dbtp']:.1f} dBTP"
            )
    return 0


def run_model(args: argparse.Namespace) -> int:
    from audiogen.generation.pipeline import describe_model

    m = describe_model(args.model)
    if args.json:
        print(json.dumps(m))
        return 0
    lm, codec, te = m["lm"], m["codec"], m["text_encoder"]
    print(f"model: {m['model_dir']}")
    print(f"LM: {lm['dim']} dim x {lm['num_layers']} layers, {lm['parameters'] / 1e6:.2f}M parameters "
          f"({lm['num_codebooks']} codebooks x {lm['cardinality']} codes)")
    parts = [codec.get("name") or codec["spec"]]
    if "sample_rate" in codec:
        parts.append(f"{codec['sample_rate']} Hz")
    if "channels" in codec:
        parts.append(f"{codec['channels']} ch")
    if "frame_rate" in codec:
        parts.append(f"{codec['frame_rate']:g} frames/s")
    print(f"codec: {', '.join(parts)}")
    print(f"text encoder: {te['name']} (prompts up to {te['max_tokens']} tokens)" if te["name"] != "none"
          else "text encoder: none (the prompt is not used)")
    lm_max = f" (the LM holds at most {m['max_window_s']:g} s)" if m["max_window_s"] else ""
    print(f"window: {m['window_s']:g} s at a time{lm_max}; longer tracks continue window by window")
    sp = m["sampling"]
    cap_scope = CAP_QUIET_SCOPE.get(sp.get("cap_quiet", "off"), "").format(cap_below_bpm=sp.get("cap_below_bpm", 120))
    print(f"sampling (the defaults of generate and stream): temperature {sp['temperature']:g}, top-k {sp['top_k']}, "
          f"top-p {sp['top_p']:g}, guidance {sp['cfg_scale']:g}, max silence {sp['max_silence_s']:g} s"
          + (f", min sound {sp['min_sound_s']:g} s" if sp.get("min_sound_s") else "")
          + (f", beat guidance {sp['beat_guidance']:g}" if m["beat_grid"] else "")
          + (f" (against the grid half a beat late below {sp['offbeat_below_bpm']:g} bpm)"
             if m["beat_grid"] and sp["beat_guidance"] != 1 and sp.get("offbeat_below_bpm") else "")
          + (", not for requests naming only instruments without percussion"
             if m["beat_grid"] and sp["beat_guidance"] != 1 and sp.get("beat_push_tonal") is False else "")
          + (", not for requests that name no tempo, mood or genre (played at the default tempo)"
             if m["beat_grid"] and sp["beat_guidance"] != 1 and sp.get("beat_push_default_tempo") is False else "")
          + (f", {sp['beat_guidance_plain']:g} for generate's requests that name no tempo and no label"
             if m["beat_grid"] and sp["beat_guidance"] != 1 and sp.get("beat_push_default_tempo") is not False
             and sp.get("beat_guidance_plain") is not None else "")
          + (f", label guidance {sp['label_guidance']:g} (generate, for requests naming a label"
             + (f"; for the first {sp['label_guidance_hold_s']:g} s, then falling to off over "
                f"{sp.get('label_guidance_fade_s', 0):g} s" if sp.get("label_guidance_hold_s") else "") + ")"
             if sp.get("label_guidance", 1) != 1 else "")
          + (f"; generate plays --mood {'/'.join(sp['calm_moods'])} without a tempo calm: no beat push, label "
             f"guidance {sp.get('calm_label_guidance', 1):g}" if sp.get("calm_moods") else "")
          + (f"; guidance adds no quiet sound{cap_scope} (--cap-quiet {sp['cap_quiet']})"
             if sp.get("cap_quiet", "off") != "off" else ""))
    from audiogen.models.conditioning import LABELS

    for a in LABELS:
        values = m["vocab"][a.name]
        print(f"{a.vocab} (--{a.name}): {', '.join(values) if values else 'not conditioned'}")
    if m["key_shift"]:  # played_key
        moves = ", ".join(f"{t} {v:+d}" for t, v in m["key_shift"].items())
        print(f"key shift: a --key on these tonics is played that many semitones away and decoded back to the key "
              f"asked for: {moves} (--no-key-shift: as learned)")
    b = m["bpm_buckets"]
    print(f"bpm (--bpm): {f'{min(b):g}-{max(b):g} in {len(b)} buckets' if b else 'not conditioned'}")
    if m["beat_grid"]:
        default = f"; without --bpm it plays at {m['default_bpm']:g} bpm" if m["default_bpm"] else ""
        print(f"beat grid: yes, at the requested tempo{default}")
        for attr, table in m["default_bpm_by"].items():  # requested_tempo: a mood's, then a genre's own tempo
            print(f"  without --bpm, a request naming a {attr} (--{attr}, or in the prompt) plays at its tempo: "
                  + ", ".join(f"{label} {bpm:g}" for label, bpm in table.items()))
    return 0
