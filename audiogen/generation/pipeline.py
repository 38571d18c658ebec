"""One generation job end to end: validate, load the model, sample, decode, finish, write.

Everything a user can get wrong (duration, output path, fades, attribute values, the
model folder) is checked before the model is loaded or any sampling starts, so a bad
request fails in a second with one clear message and nothing written.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from audiogen.audio.finishing import FinishSpec, finish, write_finished
from audiogen.audio.io import audio_info, load_audio
from audiogen.errors import AudiogenError
from audiogen.files import sha256_file
from audiogen.generation.sampling import SamplingParams
from audiogen.models.conditioning import MAX_TEXT_CHARS, Conditions, _norm, names_label, without_labels

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"
MAX_DURATION_S = 3 * 3600
#: the concert pitches ``--tuning`` accepts (A4, Hz): baroque 415 to the sharpest orchestras' 446, with room
TUNING_RANGE_HZ = (400.0, 480.0)
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: share of each long-form window given to the previous window's tail as prompt
CONTEXT_FRACTION = 0.4


@dataclass
class GenerateJob:
    """One request: what to generate (``conditions``, ``conditions.text`` the prompt), how to sample it, how
    to finish it (``finish``, which holds the duration), where to write it, and how to run. Every default
    lives in its part (``Conditions``, ``SamplingParams``, ``FinishSpec``) or below."""

    conditions: Conditions
    finish: FinishSpec
    out: Path
    sampling: SamplingParams = field(default_factory=SamplingParams)
    model_dir: str | os.PathLike | None = None
    seed: int = 0
    variations: int = 1
    continue_from: str | None = None
    device: str = "cpu"
    dtype: str = "auto"  # LM precision: auto (bfloat16 on a capable GPU, else float32), float32, bfloat16, float16
    engine: str = "auto"  # decode engine, see audiogen.generation.sampling.Decoder
    progress: bool = True
    window_s: float | None = None  # override the model's window (tests, memory limits)
    extra_tags: dict = field(default_factory=dict)
    originality: str | None = None  # a prepared dataset with an audit index: audit each take, regenerate copies
    originality_tries: int = 3
    #: a --key whose tonic the model's generation.key_shift names is played that far away and decoded back
    #: (:func:`played_key`); False plays every key as the model learned it
    key_shift: bool = True
    #: decode in tune with A4 = this many Hz (a codec with semitone bands: :meth:`Codec.retuned`); None: as coded
    tuning_hz: float | None = None
    #: what the take should not be (``--negative``, :func:`negative_conditions`): classifier-free guidance pushes
    #: away from it instead of from the unconditional; None: from the unconditional
    negative: Conditions | None = None
    #: the labels read from the prompt into empty slots (:func:`prompt_labels`; ``{}``: none named); None: not read
    #: (``--no-prompt-labels``)
    labels_from_prompt: dict | None = None

    @classmethod
    def from_options(cls, prompt: str, duration_s: float, out, **options) -> "GenerateJob":
        """A job from flat options, each given to the part with a field of its name (``genre`` to the
        conditions, ``top_k`` to the sampling, ``lufs`` to the finishing, ``seed`` to the job). Sampling
        options not given are the model's recommendation (:meth:`SamplingParams.for_model`). The labels the prompt
        names fill the slots left empty (:func:`prompt_labels`) unless ``prompt_labels=False``."""
        from audiogen.models.checkpoint import read_config

        parts = {}
        for name, part in (("conditions", Conditions), ("sampling", SamplingParams), ("finish", FinishSpec)):
            names = {f.name for f in fields(part)}
            parts[name] = {k: options.pop(k) for k in list(options) if k in names}
        try:
            config = read_config(resolve_model_dir(options.get("model_dir")))
        except AudiogenError:  # the job cannot run; run_job reports the model's error, after validate()'s checks
            config = {}
        asked = Conditions(text=prompt, **parts["conditions"])
        read = None
        if options.pop("prompt_labels", True):
            asked, read = prompt_labels(asked, config)
        played = requested_conditions(asked, config)
        sampling = request_sampling(SamplingParams.for_model(config, **parts["sampling"])
                                    .for_tempo(names_tempo(asked), played.bpm), asked, config)
        negative = options.pop("negative", None)
        if isinstance(negative, str):
            negative = negative_conditions(negative, config)
        return cls(conditions=played, finish=FinishSpec(duration_s=duration_s, **parts["finish"]), out=Path(out),
                   sampling=sampling, negative=negative, labels_from_prompt=read, **options)

    @property
    def prompt(self) -> str | None:
        return self.conditions.text

    @property
    def duration_s(self) -> float:
        return self.finish.duration_s

    def output_paths(self) -> list[Path]:
        out = Path(self.out)
        if self.variations == 1:
            return [out]
        return [out] + [out.with_name(f"{out.stem}-v{i}{out.suffix}") for i in range(2, self.variations + 1)]

    def validate(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise AudiogenError("the prompt is empty: describe the music, e.g. \"slow melancholic piano\"")
        if len(self.prompt) > MAX_TEXT_CHARS:
            raise AudiogenError(f"the prompt is {len(self.prompt)} characters long; keep it under {MAX_TEXT_CHARS}")
        if not (isinstance(self.duration_s, (int, float)) and math.isfinite(self.duration_s)) or self.duration_s <= 0:
            raise AudiogenError(f"--duration must be a positive number of seconds, got {self.duration_s}")
        if self.duration_s > MAX_DURATION_S:
            raise AudiogenError(f"--duration {self.duration_s:g}s is longer than the {MAX_DURATION_S}s maximum")
        if not 1 <= self.variations <= 64:
            raise AudiogenError(f"--variations must be between 1 and 64, got {self.variations}")
        check_tuning(self.tuning_hz)
        check_negative(self.negative, self.sampling)
        bpm = self.conditions.bpm
        if bpm is not None and not 20 <= bpm <= 400:
            raise AudiogenError(f"--bpm {bpm:g} is outside 20..400")
        self.finish.validate()
        out = Path(self.out)
        if out.is_dir():
            raise AudiogenError(f"{out} is a folder; give a file name, e.g. {out / 'track.mp3'}")
        if out.suffix.lower() not in (".wav", ".flac", ".ogg", ".mp3"):
            raise AudiogenError(f"{out}: unsupported output type '{out.suffix}'; use .wav, .flac, .ogg or .mp3")
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir():
            raise AudiogenError(f"{out}: the folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise AudiogenError(f"{out}: the folder {parent} is not writable")
        from audiogen.audio.finishing import sidecar_path

        for path in self.output_paths():  # checked now, not after minutes of generating
            for p in (path, sidecar_path(path)):
                if p.is_dir():
                    raise AudiogenError(f"{p} is a folder, where the output would be written; move it or pick "
                                        "another --out")
        self.sampling.validate()
        if self.dtype not in DTYPES:
            raise AudiogenError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        from audiogen.generation.sampling import resolve_engine

        resolve_engine(self.engine, self.device)  # also: the device exists
        if self.originality is not None:
            from audiogen.originality.guard import check_request

            check_request(self.originality, self.originality_tries)
        if self.continue_from is not None:
            info = audio_info(self.continue_from)  # fails early on a missing or broken file
            if info.duration_s >= self.duration_s:  # before loading weights, or a long file
                raise AudiogenError(f"--continue audio ({info.duration_s:.1f}s) is not shorter than --duration "
                                    f"({self.duration_s:g}s)")

    def lm_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        cuda = torch.device(self.device).type == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32


_TEMPO_IN_TEXT = re.compile(r"\b(\d{2,3}(?:\.\d+)?)\s*bpm\b", re.IGNORECASE)


def _tempo_in_text(text: str | None) -> float | None:
    """The tempo a prompt writes ("upbeat electronic, 120 bpm"; 20-400 bpm), or None."""
    match = _TEMPO_IN_TEXT.search(text or "")
    return float(match.group(1)) if match and 20 <= float(match.group(1)) <= 400 else None


def names_tempo(conditions: Conditions) -> bool:
    """Whether a request names its tempo: ``--bpm``, or a tempo written in the prompt ("120 bpm"), as
    :func:`requested_tempo` reads them (not one it takes from a mood, a genre or the model's default)."""
    return conditions.bpm is not None or _tempo_in_text(conditions.text) is not None


def check_tuning(a4_hz: float | None) -> None:
    """``--tuning``'s value (None: off) or an :class:`AudiogenError` that says what it takes."""
    lo, hi = TUNING_RANGE_HZ
    if a4_hz is not None and not (isinstance(a4_hz, (int, float)) and lo <= a4_hz <= hi):
        raise AudiogenError(f"--tuning is the frequency of A4 in Hz, between {lo:g} and {hi:g} (e.g. 440, or 415 for "
                            f"baroque pitch); got {a4_hz!r}")


def plays_default_tempo(conditions: Conditions, config: dict) -> bool:
    """Whether :func:`requested_tempo` plays a request at the model's ``generation.default_bpm``: it names no
    tempo (:func:`names_tempo`) and no mood or genre with a typical tempo (:func:`label_tempo`)."""
    return not names_tempo(conditions) and label_tempo(conditions, default_bpm_by(config)) is None


def request_sampling(params: SamplingParams, asked: Conditions, config: dict) -> SamplingParams:
    """``params`` for one request as asked (``asked``, before :func:`requested_tempo`), on a model with ``config``:
    played calm (:meth:`SamplingParams.for_mood`), or at the default tempo without the push or, naming no label,
    with a push of its own (:meth:`SamplingParams.for_default_tempo`) where the model says so; else as they are.
    ``generate`` and the adherence report both sample each request so."""
    defaulted = plays_default_tempo(asked, config)
    return params.for_mood(names_tempo(asked), asked.mood).for_default_tempo(defaulted, names_label(asked))


def requested_tempo(conditions: Conditions, config: dict) -> Conditions:
    """``conditions`` with the tempo the request means, for a model with a beat grid (``config``: its model
    folder's config): ``--bpm`` when given; else a tempo written in the prompt ("upbeat electronic, 120
    bpm"); else the tempo typical of the mood, then the genre, the request names (:func:`label_tempo`); else
    its ``generation.default_bpm`` (the median tempo of its training data), so that it plays on a beat
    unless told otherwise. A model without a grid gets the request as it is: its tempo condition is
    ``--bpm`` alone (the default model's was measured so, and a tempo read from its captions' text made its
    report clips worse: docs/generate.md)."""
    grid = (config.get("lm") or {}).get("beat_harmonics")
    if conditions.bpm is not None or not grid or not (config.get("conditioner") or {}).get("bpm_buckets"):
        return conditions
    written = _tempo_in_text(conditions.text)
    if written is not None:
        return replace(conditions, bpm=written)
    bpm = label_tempo(conditions, default_bpm_by(config)) or (config.get("generation") or {}).get("default_bpm")
    return replace(conditions, bpm=float(bpm)) if bpm else conditions


def requested_conditions(conditions: Conditions, config: dict) -> Conditions:
    """The request as the model (``config``: its folder's config) plays it: at the tempo it means
    (:func:`requested_tempo`) and with the harmony it means (:func:`requested_harmony`)."""
    return requested_harmony(requested_tempo(conditions, config), config)


def default_harmony(config: dict) -> str | None:
    """The harmony a model (``config``: its folder's config) plays when a request names none: ``moving`` (music whose
    chords change, not a drone, unless asked for one: ``--harmony held``) for a model trained with the attribute,
    None for one without it."""
    from audiogen.models.conditioning import HARMONIES

    known = (config.get("conditioner") or {}).get("harmonies") or []
    return HARMONIES[0] if HARMONIES[0] in known else None


def requested_harmony(conditions: Conditions, config: dict) -> Conditions:
    """``conditions`` with the model's :func:`default_harmony` when the request names no harmony."""
    if conditions.harmony is None:
        return replace(conditions, harmony=default_harmony(config))
    return conditions


#: "in <key>" as a prompt may write it (any case, sharp or flat), which :func:`played_key` moves with the key slot
_KEY_IN_TEXT = re.compile(r"\b(in )([a-g](?:#|b)? (?:major|minor))\b", re.IGNORECASE)


def key_shift_table(config: dict) -> dict[str, int]:
    """A model folder's ``generation.key_shift`` as written (``{tonic: semitones}``), for ``audiogen info`` and the
    adherence report; :func:`key_shifts` reads and checks it for :func:`played_key`."""
    return {str(k): int(v) for k, v in ((config.get("generation") or {}).get("key_shift") or {}).items()}


def key_shifts(config: dict) -> dict[int, int]:
    """A model folder's ``generation.key_shift`` as ``{requested tonic's pitch class: semitones}``: a request in
    such a key is played by the LM that many semitones away and decoded back (:func:`played_key`). Bad entries
    are an :class:`AudiogenError` naming the model config's field."""
    from audiogen.data.estimators import _parse_key, sharp_key

    table = (config.get("generation") or {}).get("key_shift") or {}
    if not isinstance(table, dict):
        raise AudiogenError(f"generation.key_shift must map tonics to semitones, e.g. {{'C#': -1}}; got {table!r}")
    out = {}
    for tonic, shift in table.items():
        name = sharp_key(f"{tonic} major")
        if name is None or isinstance(shift, bool) or not isinstance(shift, int) or not -6 <= shift <= 6:
            raise AudiogenError(f"generation.key_shift: {tonic!r}: {shift!r} is not a tonic (C, C#, Db, ...) and a "
                                "whole number of semitones in -6..6")
        out[_parse_key(name)[0]] = shift
    return out


def played_key(conditions: Conditions, config: dict) -> tuple[Conditions, int]:
    """``(conditions the LM plays, semitones the decoder transposes its codes by)``: a ``--key`` whose tonic the
    model's ``generation.key_shift`` names is played that many semitones away (the key slot and any "in <key>"
    the prompt writes move together, as key augmentation moves a training row's) and decoded back to the key
    asked for, so the audio is in the requested key. The default model plays the keys on black keys a semitone
    down: its key slot plays the natural keys (C minor, A major) and misses most black-key ones (A# minor heard as
    its relative C# major; docs/generate.md, "Keys played a semitone away"). Other requests: ``(conditions, 0)``."""
    from audiogen.data.augment import transpose_key
    from audiogen.data.estimators import _parse_key, sharp_key

    asked = sharp_key(conditions.key) if conditions.key else None
    shift = key_shifts(config).get(_parse_key(asked)[0], 0) if asked else 0
    if not shift:
        return conditions, 0
    played = transpose_key(conditions.key, shift)
    vocab = [_norm(k) for k in (config.get("conditioner") or {}).get("keys") or []]
    if vocab and _norm(played) not in vocab:  # a key the slot does not know: play the one asked for
        return conditions, 0

    def move(m: re.Match) -> str:  # the asked key, however the prompt spells it; other words stay
        said = sharp_key(m.group(2))
        return m.group(1) + played if said == asked else m.group(0)

    text = _KEY_IN_TEXT.sub(move, conditions.text) if conditions.text else conditions.text
    return replace(conditions, key=played, text=text), -shift


def default_bpm_by(config: dict) -> dict:
    """A model folder's ``generation.default_bpm_by`` (``{"mood"|"genre": {label: bpm}}``; empty when it has none)."""
    return (config.get("generation") or {}).get("default_bpm_by") or {}


def label_tempo(conditions: Conditions, by: dict) -> float | None:
    """The tempo typical of the labels a request names, from a model's ``generation.default_bpm_by``
    (``{"mood": {label: bpm}, "genre": {...}}``, the median tempo of its training rows with each label;
    :func:`audiogen.train.lm.label_tempos`): its mood first, then its genre, each given as the attribute
    (``--mood fast``) or else said in the prompt as a whole word ("a fast reel", the way the training
    captions say it); the earliest in the prompt when it says several, the longest of those starting at one
    place ("classical string quartet", not "classical"). None when it names none of them."""
    from audiogen.models.conditioning import TEMPO_LABELS

    for attr in TEMPO_LABELS:
        table = by.get(attr) or {}
        value = getattr(conditions, attr)
        if value and (label := _norm(value)) in table:
            return float(table[label])
        if named := labels_named(conditions.text, table):
            return float(table[named[0]])
    return None


def labels_named(text: str | None, labels) -> list[str]:
    """The ``labels`` (normalized values, lower case) that ``text`` says as whole words, case and spacing folded,
    earliest first; of those starting at one place the longest, and none within another's words ("nylon guitar",
    not "guitar" as well)."""
    text = " ".join((text or "").lower().split())
    found = sorted((m.start(), -len(label), label) for label in labels
                   if (m := re.search(rf"(?<![\w-]){re.escape(label)}(?![\w-])", text)))
    named, end = [], 0
    for start, minus_length, label in found:
        if start >= end:
            named.append(label)
            end = start - minus_length
    return named


def _conditioner(config: dict):
    """A model folder's ``ConditionerConfig``, or None where its config has none readable (run_job reports it)."""
    from audiogen.models.conditioning import ConditionerConfig

    try:
        return ConditionerConfig.from_dict(config["conditioner"])
    except (KeyError, TypeError, AudiogenError):
        return None


def labels_in_text(text: str | None, conditioner, keys_after_in: bool = False,
                   skip: tuple[str, ...] = ()) -> dict:
    """``{attribute: label(s)}``: the labels of ``conditioner``'s vocabulary that ``text`` names as whole words
    (:func:`labels_named`), for each :data:`~audiogen.models.conditioning.LABELS` attribute but ``skip``: the first
    of a single-valued attribute ("techno" as the genre), up to ``max_instruments`` instruments ("with drums").
    ``keys_after_in``: a key only as the training captions write it, after "in" ("in D minor", "in Eb major", any
    case, sharp or flat), so that "a major film theme" names no key."""
    from audiogen.data.estimators import sharp_key
    from audiogen.models.conditioning import LABELS

    vocab = conditioner.vocab()
    slots: dict = {}
    for a in LABELS:
        if a.name in skip or not vocab[a.name]:
            continue
        if a.name == "key" and keys_after_in:
            said = [sharp_key(m.group(2)) for m in _KEY_IN_TEXT.finditer(text or "")]
            known = [k for k in said if k and _norm(k) in vocab["key"]]
            if known:
                slots["key"] = known[0]
            continue
        if named := labels_named(text, vocab[a.name]):
            slots[a.name] = named[: conditioner.max_instruments] if a.many else named[0]
    return slots


def prompt_slots(text: str | None, conditioner, given=()) -> dict:
    """What a prompt says for the slots not in ``given`` (``{attribute: label(s)}``; {} for a model without attribute
    slots or no text): :func:`labels_in_text` with keys only after "in", and never the harmony slot (its labels,
    moving and held, are words a prompt uses for other things). ``generate`` (:func:`prompt_labels`) and ``stream``
    read prompts so."""
    if conditioner is None or not conditioner.attribute_slots or not (text or "").strip():
        return {}
    return labels_in_text(text, conditioner, keys_after_in=True, skip=(*given, "harmony"))


def as_options(read: dict) -> str:
    """Labels read from a prompt as the options that would give them: ``--mood slow --instruments piano``."""
    def value(v) -> str:
        v = ",".join(v) if isinstance(v, (list, tuple)) else str(v)
        return f'"{v}"' if any(c in v for c in " #,") else v

    return " ".join(f"--{k} {value(v)}" for k, v in read.items())


def prompt_labels(conditions: Conditions, config: dict) -> tuple[Conditions, dict]:
    """``(conditions, read)``: the request with the labels its prompt names put in the attribute slots it leaves
    empty, and what was read (``{attribute: label(s)}``, empty when nothing). The prompt "slow melancholic piano"
    on the default model is mood ``slow`` and instruments ``[piano]``, as if given ``--mood slow --instruments
    piano``: the model learned its labels from captions that say them so, with the same labels in the slots
    (:func:`prompt_slots`). A slot given (``--genre``, ...) is kept as it is."""
    from audiogen.models.conditioning import labels_given

    read = prompt_slots(conditions.text, _conditioner(config), labels_given(conditions))
    return (replace(conditions, **read) if read else conditions), read


def negative_conditions(text: str, config: dict) -> Conditions:
    """A ``--negative`` prompt as the conditions classifier-free guidance pushes away from (instead of the
    unconditional): the text, and in each attribute slot the labels the model knows (``config``: its folder's
    config) that the text names as whole words (:func:`labels_in_text`; keys also without "in")."""
    from audiogen.models.conditioning import LABELS

    conditioner = _conditioner(config)
    if conditioner is None or not text.strip():  # GenerateJob.validate says what the text should be
        return Conditions(text=text)
    vocab = conditioner.vocab()
    slots = labels_in_text(text, conditioner)
    if not slots and conditioner.text_encoder == "none":
        known = ", ".join(v for a in LABELS for v in vocab[a.name]) or "none"
        raise AudiogenError(f"--negative {text!r}: this model reads no text and the prompt names none of its labels "
                            f"({known}), so there is nothing to push away from")
    return Conditions(text=text, **slots)


def check_negative(negative: Conditions | None, sampling: SamplingParams) -> None:
    """A negative prompt (:func:`negative_conditions`; None: none) that can act with ``sampling``, else an
    :class:`AudiogenError`: it needs a text and classifier-free guidance (its contrast row is CFG's)."""
    if negative is None:
        return
    text = (negative.text or "").strip()
    if not text or len(text) > MAX_TEXT_CHARS:
        raise AudiogenError(f"--negative must describe what the music should not be, in 1 to {MAX_TEXT_CHARS} "
                            "characters (e.g. \"techno, with drums\")")
    if sampling.cfg_scale == 1.0:
        raise AudiogenError("--negative acts through classifier-free guidance, which --cfg 1 turns off; "
                            "give --cfg above 1 (the model's recommendation when left out)")


def resolve_model_dir(model_dir) -> Path:
    if model_dir is not None:
        return Path(model_dir)
    if not (DEFAULT_MODEL_DIR / "config.yaml").is_file():
        raise AudiogenError(
            f"no embedded default model at {DEFAULT_MODEL_DIR} (it has not been trained into this build yet); "
            "pass --model DIR with a trained or imported model directory"
        )
    return DEFAULT_MODEL_DIR


def check_against_model(model_dir: Path, job: GenerateJob) -> None:
    """The requested attributes against the model's config alone: a bad ``--genre`` fails before any weights load."""
    from audiogen.models.checkpoint import read_config
    from audiogen.models.conditioning import ConditionerConfig

    config = read_config(model_dir)
    try:
        conditioner = ConditionerConfig.from_dict(config["conditioner"])
    except (KeyError, TypeError) as e:
        raise AudiogenError(f"{model_dir}: invalid model config (conditioner: {e})") from None
    conditioner.validate_conditions([job.conditions])
    check_guidance(config, model_dir, job.sampling)


def check_guidance(config: dict, model_dir: Path, sampling: SamplingParams) -> None:
    """Beat guidance acts through a beat grid alone, label guidance through attribute slots alone: asked of a
    model without them (``config``: its folder's config), each is refused rather than run and recorded in the
    sidecar as if it had done something."""
    if sampling.beat_guidance != 1.0 and not (config.get("lm") or {}).get("beat_harmonics"):
        raise AudiogenError(
            f"--beat-guidance {sampling.beat_guidance:g}: the model at {model_dir} has no beat grid, so beat "
            "guidance would do nothing; leave it out (`audiogen info --model DIR` shows a model's grid)"
        )
    if sampling.label_guidance != 1.0 and not (config.get("conditioner") or {}).get("attribute_slots", True):
        raise AudiogenError(
            f"--label-guidance {sampling.label_guidance:g}: the model at {model_dir} takes no labels (it reads "
            "text alone), so label guidance would do nothing; leave it out (`audiogen info --model DIR` lists "
            "what a model accepts)"
        )


def describe_model(model_dir: str | os.PathLike | None = None) -> dict:
    """What a model directory offers, from ``config.yaml`` and the weights file's header alone.

    Nothing is loaded: no LM weights, no text encoder, no codec. Parameter counts are the
    sums of the tensor shapes recorded in ``model.safetensors``. ``model_dir=None``: the
    embedded default model.
    """
    from safetensors import safe_open

    from audiogen.models.checkpoint import WEIGHTS, read_model_configs

    d = resolve_model_dir(model_dir)
    config, lm_cfg, c_cfg = read_model_configs(d)
    w = d / WEIGHTS
    params = {"lm.": 0, "conditioner.": 0}
    try:
        with safe_open(str(w), framework="np") as f:  # reads the header only
            for name in f.keys():
                prefix = name.split(".", 1)[0] + "."
                if prefix in params:
                    params[prefix] += math.prod(f.get_slice(name).get_shape())
    except Exception as e:
        raise AudiogenError(f"{w}: unreadable weights ({type(e).__name__}: {e})") from None
    codec = config["codec"]
    described = codec.get("describe") or {}
    frame_rate = described.get("frame_rate")
    max_window_s = round(lm_max_frames(lm_cfg) / frame_rate, 2) if frame_rate else None
    return {
        "model_dir": str(d),
        "lm": {"dim": lm_cfg.dim, "num_layers": lm_cfg.num_layers, "num_heads": lm_cfg.num_heads,
               "num_codebooks": lm_cfg.num_codebooks, "cardinality": lm_cfg.cardinality,
               "max_positions": lm_cfg.max_positions, "parameters": params["lm."]},
        "conditioner": {"parameters": params["conditioner."], "attribute_slots": c_cfg.attribute_slots},
        "codec": {"spec": codec.get("spec"),
                  **{k: described[k] for k in ("name", "sample_rate", "channels", "frame_rate") if k in described}},
        "text_encoder": {"name": c_cfg.text_encoder, "dim": c_cfg.text_dim, "max_tokens": c_cfg.max_text_tokens},
        # what generation uses (see window_frames): the model's window, capped by the LM's positions
        "window_s": min(model_window_s(config), max_window_s or math.inf),
        "max_window_s": max_window_s,
        "sampling": asdict(SamplingParams.for_model(config)),
        "vocab": c_cfg.vocab(),
        "bpm_buckets": [float(b) for b in c_cfg.bpm_buckets],
        # a beat grid plays requests without a tempo at the default, or at a mood's or genre's (requested_tempo)
        "beat_grid": lm_cfg.beat_harmonics,
        "default_bpm": requested_tempo(Conditions(), config).bpm,
        "default_bpm_by": dict(default_bpm_by(config)) if lm_cfg.beat_harmonics else {},
        "key_shift": key_shift_table(config),
    }


@torch.inference_mode()
def condition_batch(conditioner, conds: list, guided: bool, device, no_grid: bool = False, no_labels: bool = False,
                    negative: Conditions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cond[B2, L, D], mask[B2, L])``: the conditional rows; with ``no_grid`` (beat guidance) the same
    rows again, which decoding gives no beat grid; with ``no_labels`` (label guidance) the rows without their
    label slots (:func:`~audiogen.models.conditioning.without_labels`); then (``guided``: CFG) the
    unconditional rows, or with a ``negative`` request (:func:`negative_conditions`) its rows: guidance then
    pushes away from it."""
    parts = [conditioner(conds)]
    if no_grid:
        parts.append(parts[0])
    if no_labels:
        parts.append(conditioner(without_labels(conds)))
    if guided:
        n = len(conds)
        parts.append(conditioner.unconditional(n) if negative is None else conditioner([negative] * n))
    L = max(c.shape[1] for c, _ in parts)
    pad = torch.nn.functional.pad
    cond = torch.cat([pad(c, (0, 0, 0, L - c.shape[1])) for c, _ in parts])
    mask = torch.cat([pad(m, (0, L - m.shape[1]), value=False) for _, m in parts])
    return cond.to(device), mask.to(device)


def guided_batch(loaded, conds: list, params, device,
                 negative: Conditions | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cond, mask, beat_step)`` for decoding ``conds`` with ``params``' guidance on ``loaded``'s LM: the
    request's rows, the guidance groups it needs (:meth:`SamplingParams.guidance_rows`), and each row's
    beat grid (:func:`~audiogen.generation.sampling.beat_steps`). ``params`` must be those the sampler gets
    (:meth:`SamplingParams.for_conditions` of ``conds``). ``negative``: classifier-free guidance's contrast
    instead of the unconditional rows (:func:`condition_batch`); like them, its rows read no beat grid."""
    from audiogen.generation.sampling import beat_steps, has_grid

    beat, labels, cfg = params.guidance_rows(has_grid(loaded.lm))
    cond, mask = condition_batch(loaded.conditioner, conds, cfg, device, no_grid=beat, no_labels=labels,
                                 negative=negative)
    return cond, mask, beat_steps(conds, beat + labels + cfg, loaded.codec.frame_rate, params if beat else None,
                                  label_group=labels)


def lm_max_frames(lm_cfg) -> int:
    """The most frames one window may hold: the frames the LM's positions hold in the delay pattern, less one
    spare position, as training's segment check (``frames + K <= max_positions``)."""
    from audiogen.models.patterns import DelayPattern

    return DelayPattern(lm_cfg.num_codebooks, lm_cfg.cardinality).frames(lm_cfg.max_positions) - 1


def model_window_s(config: dict) -> float:
    """The generation window, in seconds, a model directory's config asks for."""
    return float(config.get("generation", {}).get("window_s", 30.0))


def window_frames(loaded, frame_rate: float, window_s: float | None = None) -> int:
    """Frames per generation window: ``window_s`` (default: the model's own), capped by the LM's positions."""
    lm_max = lm_max_frames(loaded.lm.cfg)
    seconds = window_s or model_window_s(loaded.config)
    return max(8, min(lm_max, int(seconds * frame_rate)))


def run_job(job: GenerateJob) -> list[dict]:
    """Generate, finish and write ``job.variations`` tracks; returns their sidecar dicts."""
    try:
        from audiogen.models.checkpoint import load_model
    except ImportError as exc:  # the LM/checkpoint modules land with issue 5
        raise AudiogenError(f"generation needs audiogen.models.checkpoint and audiogen.models.lm, which are not installed: "
                            f"{exc}") from exc
    from audiogen.generation.sampling import SilenceGuard, frames_for, generate_codes

    job.validate()
    model_dir = resolve_model_dir(job.model_dir)
    check_against_model(model_dir, job)
    loaded = load_model(model_dir, device=job.device)
    lm_dtype = job.lm_dtype()
    lm, codec = loaded.lm.eval().to(lm_dtype), loaded.codec
    auditor = None
    if job.originality is not None:  # before sampling: a model whose codec is not the dataset's fails now
        from audiogen.originality.guard import open_auditor

        auditor = open_auditor(job.originality, codec)
    tuned = None  # the semitones a --tuning moves every decode by; a codec that cannot be tuned fails before sampling
    if job.tuning_hz is not None:
        codec, tuned = codec.retuned(job.tuning_hz)
    sr, fr = codec.sample_rate, codec.frame_rate
    total_frames = frames_for(job.finish.samples_needed(sr) / sr, fr)
    prompt = continuation_prompt(job, codec, total_frames)
    W = window_frames(loaded, fr, job.window_s)
    context = max(1, int(W * CONTEXT_FRACTION))  # frames of the previous window that prompt the next
    # a continuation keeps its prompt's key as coded: the LM plays on from it untransposed
    played, semitones = (played_key(job.conditions, loaded.config) if job.key_shift and prompt is None
                         else (job.conditions, 0))
    if semitones and not codec.transposes:  # before minutes of sampling
        raise AudiogenError(f"{model_dir}: generation.key_shift needs a codec that decodes transposed (a mel codec); "
                            f"'{codec.name}' cannot. Leave out --key or pass --no-key-shift")
    sampling = job.sampling.for_conditions([played])
    cond, mask, beat_step = guided_batch(loaded, [played] * job.variations, sampling, job.device, job.negative)
    new_frames = total_frames - (0 if prompt is None else prompt.shape[-1])
    silence = SilenceGuard.for_codec(codec, job.sampling, job.device)  # once: every retry below reuses it

    def sample(seed: int, on_frame=None) -> tuple[torch.Tensor, np.ndarray]:
        """``(codes[B, K, T], wav: float32[B, channels, T * hop])`` of the request with ``seed``."""
        g = torch.Generator(device=job.device).manual_seed(seed)
        c = generate_codes(lm, cond, mask, new_frames, sampling, g, W, context, prompt=prompt, engine=job.engine,
                           on_frame=on_frame, guard=silence, beat_step=beat_step, frame_rate=fr)
        c = c if prompt is None else torch.cat([prompt.to(c.device), c], dim=-1)
        wav = codec.decode(c, semitones) if semitones else codec.decode(c)  # (a codec that cannot transpose: as ever)
        return c, wav.float().cpu().numpy()

    with _progress(job, new_frames / fr, 1 / fr) as on_frame:
        codes, wav = sample(job.seed, on_frame)
    audits = [None] * job.variations
    if auditor is not None:
        from audiogen.originality.guard import guard

        codes, wav, audits = guard(auditor, codes, wav, sr, job.seed, job.originality_tries, sample, job.originality)
    model_hash = sha256_file(model_dir / "model.safetensors")
    provenance = {"dir": model_dir, "sha256": model_hash, "lm_dtype": str(lm_dtype).replace("torch.", ""),
                  "codec": codec.describe()}
    results = []
    for i, path in enumerate(job.output_paths()):
        tags, sidecar = _tags(job, provenance, audits[i]), _sidecar(job, i, provenance, audits[i])
        if semitones:
            sidecar["key_played"] = {"key": played.key, "decoded_semitones": semitones}
        if tuned is not None:
            sidecar["tuning"] = {"a4_hz": job.tuning_hz, "decoded_semitones": round(tuned, 4)}
        meta = write_finished(path, finish(wav[i], sr, job.finish), sr, job.finish, tags, sidecar)
        meta["path"] = str(path)
        results.append(meta)
    return results


def continuation_prompt(job: GenerateJob, codec, total_frames: int) -> torch.Tensor | None:
    """``--continue`` audio as codes ``LongTensor[variations, K, T0]`` (None without it), shorter than the track."""
    if job.continue_from is None:
        return None
    sr = codec.sample_rate
    wav, _ = load_audio(job.continue_from, sr, codec.channels)
    prompt = codec.encode(torch.from_numpy(wav)[None]).repeat(job.variations, 1, 1)
    if prompt.shape[-1] >= total_frames:
        raise AudiogenError(
            f"--continue audio ({wav.shape[1] / sr:.1f}s) is not shorter than --duration ({job.duration_s:g}s)"
        )
    return prompt


@contextlib.contextmanager
def _progress(job: GenerateJob, total_s: float, frame_s: float):
    """A bar over the seconds of audio to generate; yields the ``on_frame`` callback that advances it."""
    from audiogen.progress import progress_bar

    bar = progress_bar(total=round(total_s, 1), unit="s", desc="generating audio", disable=not job.progress,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f}s of audio [{elapsed}<{remaining}]")
    try:
        yield lambda: bar.update(min(frame_s, bar.total - bar.n))
    finally:
        bar.close()


def _tags(job: GenerateJob, model: dict, audit: dict | None) -> dict:
    """The provenance tags written into a take's file: AI-generated, model, seed (and audit)."""
    return {
        "title": job.prompt[:200],
        "artist": "audiogen (AI-generated)",
        "comment": "AI-generated by audiogen; not a human performance",
        "ai_generated": "true",
        "audiogen_model": f"{model['dir'].name} sha256:{model['sha256'][:16]}",
        "audiogen_seed": str(job.seed),
        **({"audiogen_originality": f"{audit['verdict']} (audited against {job.originality}, seed "
                                    f"{audit['seed']})"} if audit else {}),
        **job.extra_tags,
    }


def _sidecar(job: GenerateJob, index: int, model: dict, audit: dict | None) -> dict:
    """The request part of take ``index``'s JSON sidecar (the finishing adds what it measured)."""
    return {
        "prompt": job.prompt,
        "conditions": {k: v for k, v in asdict(job.conditions).items() if k != "text"},
        "labels_from_prompt": job.labels_from_prompt,
        "seed": job.seed,
        "variation": index + 1,
        "sampling": {**asdict(job.sampling), "lm_dtype": model["lm_dtype"]},
        "continue_from": job.continue_from,
        **({"negative": {k: v for k, v in asdict(job.negative).items() if v is not None}} if job.negative else {}),
        "model": {"dir": str(model["dir"]), "sha256": model["sha256"]},
        "codec": model["codec"],
        "requested_duration_s": job.duration_s,
        **({"originality": audit} if audit else {}),
    }
