"""The sampling options ``audiogen generate`` and ``audiogen stream`` share: each defaults to the model's
recommendation (``generation.sampling`` in its config; ``audiogen info --model`` shows it), else to
:class:`audiogen.generation.sampling.SamplingParams`'s default, which the help states."""

from __future__ import annotations

import argparse

RECOMMENDED = "the model's recommendation"
#: ``--harmony``'s values in both commands: ``audiogen.models.conditioning.HARMONIES``, restated so that building the
#: CLI does not import torch (tests/generation/test_harmony.py holds them equal)
HARMONY_CHOICES = ("moving", "held")


def add_sampling_options(group: argparse._ArgumentGroup, offbeat_default: str, label_guidance_note: str) -> None:
    """--temperature, --top-k, --cfg, --beat-guidance, --label-guidance, --offbeat-below, --max-silence,
    --min-sound, --cap-quiet and --cap-below on ``group``; ``offbeat_default`` ends --offbeat-below's help (what it
    defaults to in that command), and
    ``label_guidance_note`` is --label-guidance's (which requests it changes there)."""
    group.add_argument("--temperature", type=float,
                       help=f"lower = safer and more repetitive, higher = more varied (default: {RECOMMENDED} "
                            f"(audiogen info --model), else 1.0; 0 = always the most likely token)")
    group.add_argument("--top-k", type=int,
                       help=f"sample among the K most likely tokens per codebook (default: {RECOMMENDED}, "
                            f"else 250; 0 = off)")
    group.add_argument("--cfg", type=float,
                       help=f"classifier-free guidance: higher follows the prompt and attributes more closely "
                            f"(default: {RECOMMENDED}, else 3; 1 = off)")
    group.add_argument("--beat-guidance", type=float, metavar="G", dest="beat_guidance",
                       help=f"for a model with a beat grid: how strongly the music is pushed onto the beat of the "
                            f"tempo (default: {RECOMMENDED}, else 1 = off)")
    group.add_argument("--label-guidance", type=float, metavar="G", dest="label_guidance",
                       help=f"for a model with attribute slots: how strongly the music is pushed towards the "
                            f"requested labels (genre, mood, key, instruments) beyond what --cfg gives them, a third "
                            f"more LM work; {label_guidance_note} (default: {RECOMMENDED}, else 1 = off)")
    group.add_argument("--offbeat-below", type=float, metavar="BPM", dest="offbeat_below_bpm",
                       help="with beat guidance on: below this tempo it pushes hits onto the beat and off its "
                            "half-beats (which a slow request otherwise fills, so it is heard at double time), above "
                            f"it onto the beat and its divisions ({offbeat_default})")
    group.add_argument("--max-silence", type=float, metavar="S", dest="max_silence_s",
                       help=f"longest silence the model may hold, in seconds: past it, codes that decode to silence "
                            f"(quieter than -50 LUFS) are not sampled (default: {RECOMMENDED}, else 1.0; "
                            f"0 = no limit)")
    group.add_argument("--min-sound", type=float, metavar="S", dest="min_sound_s",
                       help=f"a silence (codes that decode to silence) may start only S seconds of sound after the "
                            f"last one ended, so the model cannot cut short holes into held sound (default: "
                            f"{RECOMMENDED}, else 0 = off; docs/generate.md)")
    group.add_argument("--cap-quiet", metavar="MODE", dest="cap_quiet",
                       help=f"off, on, untimed or slow. on: guidance may not make quiet sound (codes that decode "
                            f"under -40 LUFS) more likely than the model without it does, so --cfg and "
                            f"--beat-guidance shape the sound without cutting short holes into it, at a cost to fast "
                            f"tempos; untimed: on when the request names no tempo (no --bpm, no \"120 bpm\" in the "
                            f"prompt); slow: on when the music plays under --cap-below bpm (default: {RECOMMENDED}, "
                            f"else off; docs/generate.md)")
    group.add_argument("--cap-below", type=float, metavar="BPM", dest="cap_below_bpm",
                       help=f"with --cap-quiet slow: the tempo from which the cap is off (default: {RECOMMENDED}, "
                            f"else 120)")
