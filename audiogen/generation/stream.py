"""Endless adaptive streaming: fixed-length float32 PCM chunks whose conditions can change while playing.

``MusicStream`` turns a loaded model into an iterator of finished audio chunks::

    stream = MusicStream(load_model(DIR), {"text": "dark ambient", "bpm": 90}, StreamSettings(chunk_s=1.0))
    for chunk in stream:                     # float32 [C, chunk samples], forever
        play(chunk)
        stream.control({"mood": "tense", "intensity": 0.8, "glide_s": 4})   # any time, any thread

Four stages run per chunk, each carrying its state across chunk boundaries:

1. **Tokens** (:class:`TokenStream`): the LM decodes one delay-pattern position per step
   with its KV cache, the pattern running on across chunks (codebook ``k`` writes frame
   ``p - k`` at step ``p``), so a chunk boundary is invisible to the LM. The model was
   trained on windows of ``window`` frames and its positions are absolute, so when the
   cache is full the window *slides*: the oldest frames are dropped, the last
   ``context`` frames are re-prefilled in one forward pass at positions from 0, and
   decoding carries on. That pass costs one forward over ``context`` frames once every
   ``window - context`` frames (amortised), and the cache never grows.
2. **Conditions** (:class:`ConditionMix`): the active conditioning is a weighted mixture of
   condition sets. Each set's cross-attention keys and values are computed once; a step
   attends over all sets' slots at once with ``log(weight)`` added to each set's
   attention logits, which makes the attention distribution the weight-mixture of each
   set's own distribution (exactly one set at weight 1, the model as trained). A glide
   moves the weights linearly frame by frame over ``glide_s``; a cut switches at the next
   bar line. ``intensity`` (0-1) is a mixture of a calm and an energetic version of the
   same request, so it is continuous: the model's calm and energetic mood labels where it has
   them (the default model's ``slow`` and ``fast``), else descriptor words in the text and a
   tempo -/+ 15 %.
3. **Audio** (:class:`ChunkDecoder`): complete frames are decoded with ``decode_context``
   frames of codec context on both sides (the codec's ``stream_context_s`` unless set; what the
   codec's own long-input windowing does)
   and the centre kept, so a chunk decodes the same as the whole track would; a short
   linear crossfade over the next chunk's head covers codecs whose reach is longer.
4. **Level** (:class:`LevelFollower`): a causal DC blocker, a loudness follower (BS.1770
   K-weighting in 100 ms blocks, looking ahead to the end of the chunk being finished, with a
   guard that aims to keep every 3 s window within 1 LU of the target) and a look-ahead true-peak
   limiter (``finishing.true_peak_limit``'s gain curve, made causal by holding back
   ``2 x lookahead`` samples), so the level does not jump when the music changes.

A model with a beat grid (``LMConfig.beat_harmonics``) also reads each frame's beat phase: the
grid counts beats frame by frame at the mixture's tempo (a tempo glide changes its rate, never
its count), and a stream asked for no tempo starts at the tempo ``generate`` would play
(:func:`audiogen.generation.pipeline.requested_tempo`: the one its prompt writes, else its mood's or genre's,
else the model's ``generation.default_bpm``); a later change of mood or genre keeps the tempo.

Reproducible: the sampling uniforms come from one ``torch.Generator`` seeded by the caller,
drawn per step, so the same seed, settings and control messages at the same frames give
the same samples. Memory is bounded: the KV cache is one window, the token and audio
buffers keep a few seconds, nothing grows with time.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
from dataclasses import dataclass, field, replace

import numpy as np
# the level follower's filter libraries load with this module, not when the first stream starts: importing
# scipy.signal takes 0.8 s on this 2-core CPU (1.8 s when loaded), which would count against the time to first audio
import pyloudnorm  # noqa: F401  (audio.loudness.KWeighting's)
import scipy.signal  # noqa: F401  (the level stage's)
import torch

from audiogen.audio.level import LevelFollower  # noqa: F401  (here since streams began; finishing shares it)
from audiogen.errors import AudiogenError
from audiogen.generation.sampling import SamplingParams, SilenceGuard, guide_capped, has_grid, sample_tokens
from audiogen.models.conditioning import ATTRIBUTES, LABELS, MAX_TEXT_CHARS, Conditions, labels_given
from audiogen.models.lm import KVCache
from audiogen.models.patterns import DelayPattern

#: descriptor words the two ends of ``intensity`` add to the text (a model without a calm and an energetic mood label)
CALM_WORDS = "calm, soft, gentle, sparse"
ENERGETIC_WORDS = "intense, energetic, powerful, driving"
#: tempo factor of the calm and the energetic end of ``intensity`` (with the words only)
INTENSITY_TEMPO = (0.85, 1.15)
#: mood labels that can be ``intensity``'s calm and energetic end, in order of preference (the first of each a
#: model knows; the default model's moods are ``slow`` and ``fast``)
CALM_MOODS = ("calm", "slow", "relaxed", "peaceful", "soft", "gentle")
ENERGETIC_MOODS = ("energetic", "fast", "tense", "intense", "upbeat", "aggressive")
#: the calm and the energetic request of the stream benchmark and its picture (benchmarks/stream.py,
#: eval/stream_change.py), and those moods in the words of a model with mood labels (the default model's)
CALM_TENSE = ({"mood": "calm", "bpm": 80, "intensity": 0.2}, {"mood": "tense", "bpm": 140, "intensity": 0.9})
MOOD_LABELS = {"calm": "slow", "tense": "fast"}
#: tempo the intensity ends start from when the request has none
DEFAULT_BPM = 120.0
#: fields a control message may set (``prompt`` is an alias of ``text``)
CONDITION_FIELDS = ("text", *(a.name for a in ATTRIBUTES), "intensity")
MESSAGE_FIELDS = CONDITION_FIELDS + ("prompt", "glide_s", "cut")
MAX_GLIDE_S = 120.0


def intensity_moods(moods) -> tuple[str, str] | None:
    """The calm and the energetic mood label among a model's ``moods`` (:data:`CALM_MOODS`,
    :data:`ENERGETIC_MOODS`), or None where it lacks either: then ``intensity`` is said in words."""
    lo = next((m for m in CALM_MOODS if m in moods), None)
    hi = next((m for m in ENERGETIC_MOODS if m in moods), None)
    return (lo, hi) if lo and hi else None


def stream_sampling(config: dict, **given) -> SamplingParams:
    """The sampling a stream uses: the model's recommendation (:meth:`SamplingParams.for_model`, then the
    ``given`` options that are not None), except that beat guidance keeps its plain contrast (no grid) unless
    ``offbeat_below_bpm`` is given. The late contrast below a tempo helps a clip at one tempo, but a stream
    that changes tempo across the threshold switches the contrast row's kind in the middle of its context:
    10 minutes alternating 80 and 140 bpm (benchmarks/stream.py, seed 0) heard the 140 bpm request at 140
    in 3 of 10 probes instead of 9, the tempo change no longer measurable (p 0.24 against 0.002), and left
    the loudness band (2.75 LU; docs/stream.md).

    And the codes that decode to silence are never sampled unless ``allow_silence`` is given True: background
    music that never ends has no use for pauses, and the default model's short dark gaps (48-70 a minute in a
    3-minute stream) pulled its 3 s loudness 2-2.5 LU under the target, which the level stage rightly does not
    boost (it gates blocks under -50 LUFS); without them the stream stayed within 1.6 LU (docs/stream.md).
    A stream always plays at a tempo (its state's, which it changes and must be heard changing), so
    ``cap_quiet`` "untimed" is off in a stream; "slow" caps each step by the tempo it plays at then (the grid's,
    gliding with a change): the quiet cap on the calm stretches, off the fast ones, whose beat the holes carry
    (docs/stream.md, "The dropout LM").

    Label guidance stays off unless given: a model recommends it for clips whose key it was measured on (the
    default model since 2026-12-06: docs/generate.md, "Label guidance"); a stream names a mood in every step,
    so its contrast rows would run throughout (a third more LM work), unmeasured on streams."""
    if given.get("offbeat_below_bpm") is None:
        given["offbeat_below_bpm"] = 0.0
    if given.get("label_guidance") is None:
        given["label_guidance"] = 1.0
    if given.get("label_guidance_hold_s") is None:  # a stream has no start that sets its key: held when given
        given["label_guidance_hold_s"] = 0.0
    if given.get("allow_silence") is None:
        given["allow_silence"] = False
    params = SamplingParams.for_model(config, **given)
    return replace(params, cap_quiet="off") if params.cap_quiet == "untimed" else params


def calm_and_tense(cfg) -> list[dict]:
    """:data:`CALM_TENSE` as a model with conditioner config ``cfg`` can take them: a model without mood
    labels hears the moods in its text (the stream folds them in); one with labels gets its own label
    for each (``MOOD_LABELS``), or no mood where it has neither."""
    moods = (cfg.vocab() if cfg.attribute_slots else {}).get("mood") or []
    if not moods:
        return [dict(r) for r in CALM_TENSE]
    out = []
    for req in CALM_TENSE:
        mood = next((m for m in (req["mood"], MOOD_LABELS[req["mood"]]) if m in moods), None)
        out.append({**req, "mood": mood} if mood else {k: v for k, v in req.items() if k != "mood"})
    return out


@dataclass(frozen=True)
class StreamState:
    """What the music is asked to be: a :class:`~audiogen.models.conditioning.Conditions` plus ``intensity``
    (its fields are ``CONDITION_FIELDS``; a many-valued attribute is a tuple)."""

    text: str | None = None
    genre: str | None = None
    mood: str | None = None
    bpm: float | None = None
    key: str | None = None
    instruments: tuple[str, ...] | None = None
    harmony: str | None = None
    intensity: float | None = None

    def conditions(self, text_extra: str | None = None, bpm_factor: float = 1.0, fold: tuple[str, ...] = ()):
        """The model's ``Conditions``; ``fold`` names attributes the model lacks, said in the text instead."""
        words = [self.text] if self.text else []
        labels = {}
        for a in LABELS:
            value = getattr(self, a.name)
            # an optional attribute (harmony) is never said in words: a model without it refuses it (validation)
            if a.name not in fold or a.optional:
                labels[a.name] = (list(value) if value else None) if a.many else value
            elif value:
                words.append(", ".join(value) if a.many else value)
        if text_extra:
            words.append(text_extra)
        bpm = self.bpm
        if bpm_factor != 1.0:
            bpm = (bpm or DEFAULT_BPM) * bpm_factor
        if "bpm" in fold and bpm is not None:
            words.append(f"{bpm:.0f} bpm")
            bpm = None
        return Conditions(text=", ".join(words) or None, bpm=bpm, **labels)

    def parts(self, fold: tuple[str, ...], moods: tuple[str, str] | None = None) -> list[tuple[float, object]]:
        """``[(weight, Conditions)]``: one set, or with ``intensity`` its calm and energetic ends.

        ``moods``: the model's calm and energetic mood labels (:func:`intensity_moods`). With them the
        ends are the request with each of those moods, at the tempo asked: labels the model learned,
        so the blend keeps its beat (a requested mood that is one of the two is what intensity moves
        between; any other mood keeps the word ends). Without them the ends add descriptor words and
        scale the tempo by :data:`INTENSITY_TEMPO`."""
        if self.intensity is None:
            return [(1.0, self.conditions(fold=fold))]
        i = float(self.intensity)
        if moods and "mood" not in fold and self.mood in (None, *moods):
            return [(1.0 - i, replace(self, mood=moods[0]).conditions(fold=fold)),
                    (i, replace(self, mood=moods[1]).conditions(fold=fold))]
        return [(1.0 - i, self.conditions(CALM_WORDS, INTENSITY_TEMPO[0], fold)),
                (i, self.conditions(ENERGETIC_WORDS, INTENSITY_TEMPO[1], fold))]


def parse_message(msg: dict, state: StreamState) -> tuple[StreamState, float, bool]:
    """A control message applied to ``state`` -> ``(new state, glide_s, cut_on_bar)``.

    Absent keys keep their value; ``null`` clears one. Raises :class:`AudiogenError` with
    one readable line for anything malformed, leaving ``state`` untouched.
    """
    if not isinstance(msg, dict):
        raise AudiogenError(f"a control message must be a JSON object, got {type(msg).__name__}")
    unknown = sorted(set(msg) - set(MESSAGE_FIELDS))
    if unknown:
        raise AudiogenError(f"unknown control field(s) {', '.join(map(repr, unknown))}; valid: "
                            f"{', '.join(MESSAGE_FIELDS)}")
    if "prompt" in msg and "text" in msg:
        raise AudiogenError("give 'prompt' or 'text', not both (they are the same field)")
    changes = {("text" if k == "prompt" else k): v for k, v in msg.items() if k not in ("glide_s", "cut")}
    for name in ("text", *(a.name for a in LABELS if not a.many)):
        v = changes.get(name)
        if v is not None and not isinstance(v, str):
            raise AudiogenError(f"{name} must be a string or null, got {v!r}")
        if isinstance(v, str) and len(v) > MAX_TEXT_CHARS:
            raise AudiogenError(f"{name} is {len(v)} characters long; keep it under {MAX_TEXT_CHARS}")
    if changes.get("bpm") is not None:
        bpm = changes["bpm"]
        if isinstance(bpm, bool) or not isinstance(bpm, (int, float)) or not math.isfinite(bpm) or not 20 <= bpm <= 400:
            raise AudiogenError(f"bpm must be a number in 20..400 or null, got {bpm!r}")
        changes["bpm"] = float(bpm)
    if changes.get("intensity") is not None:
        x = changes["intensity"]
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1:
            raise AudiogenError(f"intensity must be a number in 0..1 or null, got {x!r}")
        changes["intensity"] = float(x)
    for name in (a.name for a in LABELS if a.many):
        v = changes.get(name)
        if v is None:
            continue
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise AudiogenError(f"{name} must be a list of strings, a comma-separated string or null, got {v!r}")
        changes[name] = tuple(v) or None
    glide = msg.get("glide_s", 0.0)
    if isinstance(glide, bool) or not isinstance(glide, (int, float)) or not 0 <= glide <= MAX_GLIDE_S:
        raise AudiogenError(f"glide_s must be a number of seconds in 0..{MAX_GLIDE_S:g}, got {glide!r}")
    cut = msg.get("cut", False)
    if cut not in (False, True, "bar", None):
        raise AudiogenError(f"cut must be true, \"bar\" or false, got {cut!r}")
    cut = bool(cut)
    if cut and glide:
        raise AudiogenError("a change either glides (glide_s) or cuts on the next bar (cut), not both")
    return replace(state, **changes), float(glide), cut


def state_from(conditions: dict | StreamState | None) -> StreamState:
    if isinstance(conditions, StreamState):
        return conditions
    state, glide, cut = parse_message(dict(conditions or {}), StreamState())
    if glide or cut:
        raise AudiogenError("the starting conditions cannot glide or cut")
    return state


@dataclass
class StreamSettings:
    chunk_s: float = 1.0
    seed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    #: LM window (default: the model's); the rolling context keeps ``context_fraction`` of it on a slide
    window_s: float | None = None
    context_fraction: float = 0.5
    #: codec context on each side of a chunk's frames (s); also the lookahead each chunk waits for.
    #: None: the codec's own ``stream_context_s`` (0.2 s for the default model's mel codec)
    decode_context_s: float | None = None
    crossfade_s: float = 0.01
    lufs: float = -16.0
    true_peak_db: float = -1.0
    level: bool = True  #: False: raw decoder output (no loudness follower or limiter)
    device: str = "cpu"
    dtype: str = "float32"
    #: after a change of tempo (a model with a beat grid and beat guidance on): beat guidance is raised by
    #: ``tempo_boost`` from the message until ``tempo_boost_s`` after the glide ends, then steps back, so the
    #: music takes the new beat against a context played at the old one (docs/stream.md). 0: no boost
    tempo_boost: float = 1.0
    tempo_boost_s: float = 4.0
    #: decode in tune with A4 = this many Hz (a codec with semitone bands: :meth:`Codec.retuned`); None: as coded
    tuning_hz: float | None = None
    #: what the stream should not be (``--negative``, :func:`~audiogen.generation.pipeline.negative_conditions`):
    #: classifier-free guidance pushes every condition set away from it instead of from the unconditional
    negative: Conditions | None = None
    #: the labels the model knows that the prompt names fill the slots the state leaves empty, as ``generate``
    #: reads a prompt (:func:`~audiogen.generation.pipeline.prompt_labels`; ``--no-prompt-labels``: text only)
    prompt_labels: bool = True

    def validate(self) -> None:
        from audiogen.generation.pipeline import check_negative, check_tuning

        check_tuning(self.tuning_hz)
        check_negative(self.negative, self.sampling)
        if not (math.isfinite(self.chunk_s) and 0.05 <= self.chunk_s <= 10):
            raise AudiogenError(f"chunk length must be 0.05..10 s, got {self.chunk_s}")
        if not 0.1 <= self.context_fraction <= 0.9:
            raise AudiogenError(f"context fraction must be 0.1..0.9, got {self.context_fraction}")
        if not (math.isfinite(self.tempo_boost) and 0 <= self.tempo_boost <= 10):
            raise AudiogenError(f"tempo boost must be 0..10, got {self.tempo_boost}")
        if not (math.isfinite(self.tempo_boost_s) and 0 <= self.tempo_boost_s <= MAX_GLIDE_S):
            raise AudiogenError(f"tempo boost time must be 0..{MAX_GLIDE_S:g} s, got {self.tempo_boost_s}")
        if self.decode_context_s is not None and not (math.isfinite(self.decode_context_s)
                                                      and 0 <= self.decode_context_s <= 5):
            raise AudiogenError(f"decode context must be 0..5 s, got {self.decode_context_s}")
        if not 0 <= self.crossfade_s <= 0.2:
            raise AudiogenError(f"crossfade must be 0..0.2 s, got {self.crossfade_s}")
        if not -40.0 <= self.lufs <= -5.0:
            raise AudiogenError(f"loudness target {self.lufs} LUFS is outside the sensible range -40..-5")
        if not -12.0 <= self.true_peak_db <= 0.0:
            raise AudiogenError(f"true-peak limit {self.true_peak_db} dBTP is outside -12..0")
        self.sampling.validate()


# ------------------------------------------------------------------------------ conditions


class ConditionMix:
    """The active conditioning as a weighted mixture of condition sets, moving frame by frame.

    Each set (one ``Conditions`` plus the CFG null row, or the negative request's) is encoded once into per-layer
    cross-attention keys/values ``[B2, H, L_i, d]`` and an additive mask ``[B2, 1, 1, L_i]``.
    :meth:`at` gives, for a frame, the concatenated keys/values of the sets with weight > 0
    and the mask with ``log(weight)`` added to each set's slots.
    """

    def __init__(self, lm, conditioner, rows: tuple[bool, bool, bool], device, dtype, negative=None):
        self.lm, self.conditioner, self.rows = lm, conditioner, rows  # (beat, label, CF) guidance row groups
        self.negative = negative  # CF guidance's contrast instead of the unconditional (None: that)
        self.device, self.dtype = device, dtype
        self._encoded: dict[str, tuple[list, torch.Tensor]] = {}
        self._bpm: dict[str, float | None] = {}  # set key -> its tempo (the beat grid's)
        self.start: dict[str, float] = {}  # set key -> weight at the start of the current move
        self.target: dict[str, float] = {}
        self.move_from, self.move_frames = 0, 0  # the move runs over frames [move_from, move_from + move_frames)
        self._layout: tuple | None = None  # (keys) of the concatenated cache now installed

    @torch.inference_mode()
    def encode(self, cond) -> str:
        from audiogen.generation.pipeline import condition_batch

        key = repr(cond)
        if key not in self._encoded:
            beat, labels, cfg = self.rows
            c, m = condition_batch(self.conditioner, [cond], cfg, self.device, no_grid=beat, no_labels=labels,
                                   negative=self.negative)
            c = c.to(self.dtype)
            mem = self.lm.project_conditions(c, m)
            kv = [layer.cross_kv(mem) for layer in self.lm.layers]
            self._encoded[key] = (kv, self.lm.cross_masks(m, self.dtype))
            self._bpm[key] = cond.bpm
        return key

    def set_target(self, parts: list[tuple[float, object]], frame: int, frames: int) -> None:
        """Move from the weights at ``frame`` to ``parts`` linearly over ``frames`` frames (0: at once)."""
        now = self.weights(frame)
        target: dict[str, float] = {}
        for w, cond in parts:
            if w > 0:
                k = self.encode(cond)
                target[k] = target.get(k, 0.0) + w
        self.start, self.target = now, target
        self.move_from, self.move_frames = frame, frames
        # forget encodings no longer in play (bounded memory over hours of changes)
        live = set(now) | set(target)
        for k in list(self._encoded):
            if k not in live:
                del self._encoded[k], self._bpm[k]

    def weights(self, frame: int) -> dict[str, float]:
        if not self.move_frames or frame >= self.move_from + self.move_frames:
            return dict(self.target)
        a = max(0.0, (frame - self.move_from) / self.move_frames)
        keys = set(self.start) | set(self.target)
        w = {k: (1 - a) * self.start.get(k, 0.0) + a * self.target.get(k, 0.0) for k in keys}
        return {k: v for k, v in w.items() if v > 1e-6}

    def beat_step(self, frame: int, frame_rate: float) -> float:
        """Beats per frame at ``frame``: the weighted mean tempo of the sets that have one (a tempo glide
        moves the grid's rate smoothly), NaN when none has."""
        w = {k: v for k, v in self.weights(frame).items() if self._bpm.get(k)}
        if not w:
            return math.nan
        return sum(v * self._bpm[k] for k, v in w.items()) / sum(w.values()) / 60.0 / frame_rate

    @torch.inference_mode()
    def install(self, frame: int, cache: KVCache) -> torch.Tensor:
        """Put the keys/values for ``frame`` into ``cache``; returns the additive cross mask ``[B2, 1, 1, L]``."""
        w = self.weights(frame)
        keys = tuple(sorted(w))
        if keys != self._layout:
            for i, layer_cache in enumerate(cache.layers):
                layer_cache.cross_k = torch.cat([self._encoded[k][0][i][0] for k in keys], dim=2)
                layer_cache.cross_v = torch.cat([self._encoded[k][0][i][1] for k in keys], dim=2)
            self._layout = keys
        if len(keys) == 1:
            return self._encoded[keys[0]][1]
        return torch.cat([self._encoded[k][1] + math.log(w[k]) for k in keys], dim=-1)


# ------------------------------------------------------------------------------ tokens


class TokenStream:
    """Delay-pattern decoding that never ends: one KV-cached step per pattern position, sliding windows.

    Window coordinates: position ``j`` holds codebook ``k``'s token of absolute frame
    ``origin + j - k`` (a special token where ``j < k``, as at the start of every
    training window). ``frames: LongTensor[K, F]`` keeps the recent generated tokens,
    frame ``base`` first; codebook ``k`` has produced frames ``< produced - k``.
    """

    def __init__(self, lm, window: int, context: int, params: SamplingParams, generator: torch.Generator,
                 device, dtype, guard: SilenceGuard | None = None):
        self.lm, self.params, self.generator, self.guard = lm, params, generator, guard
        # the guard's state (SilenceGuard.fresh); unused without a guard
        self.silent_run = guard.fresh(1, device) if guard is not None else None
        self.K, self.special = lm.cfg.num_codebooks, lm.cfg.cardinality
        self.delay = DelayPattern(self.K, self.special)
        self.window, self.context = window, context
        self.positions = self.delay.positions(window)
        if self.positions > lm.cfg.max_positions:
            raise AudiogenError(f"a window of {window} frames needs {self.positions} positions; the model has "
                                f"{lm.cfg.max_positions}")
        self.grid = has_grid(lm)
        self.rows = params.guidance_rows(self.grid)  # (beat, label, CF guidance): the row groups after the request's
        self.B2 = 1 + sum(self.rows)
        self.guided = self.B2 > 1
        self.cache = lm.init_cache(self.B2, self.positions, device, dtype)
        lm.fuse_decode_weights(self.cache)  # cross K/V come from ConditionMix.install
        self.device = device
        self.k_idx = self.delay.delays(device)  # codebook k's index, which is also its delay
        self.origin = 0  # absolute frame of codebook 0 at window position 0
        self.pos = 0  # next window position to decode
        self.produced = 0  # frames codebook 0 has produced
        self.frames = torch.full((self.K, 0), -1, dtype=torch.long, device=device)
        self.base = 0  # absolute frame of frames[:, 0]
        self.cur = torch.full((1, self.K, 1), self.special, dtype=torch.long, device=device)
        self.slides = 0
        # the beat grid (an LM with one): beats counted up to frame `produced`, and the phases each held
        # frame was decoded at (aligned with `frames`; the request's, and beat guidance's contrast row's:
        # NaN, half a beat late where SamplingParams.offbeat, or the request's where it does not push), which a
        # slide's prefill reads again
        self.beat_count = 0.0
        self.phases = torch.zeros(2, 0, dtype=torch.float32, device=device)

    @property
    def complete(self) -> int:
        """Frames whose every codebook is generated."""
        return max(0, self.produced - self.K + 1)

    def frames_between(self, a: int, b: int) -> torch.Tensor:
        """``LongTensor[K, b - a]`` of complete frames ``[a, b)``."""
        if a < self.base or b > self.complete:
            raise ValueError(f"frames [{a}, {b}) not held (held [{self.base}, {self.complete}))")
        return self.frames[:, a - self.base : b - self.base]

    def forget_before(self, frame: int) -> None:
        """Drop frames before ``frame`` that neither the LM context nor the caller needs."""
        keep_from = min(frame, self.origin)
        if keep_from > self.base:
            self.frames = self.frames[:, keep_from - self.base :].clone()
            self.phases = self.phases[:, keep_from - self.base :].clone()
            self.base = keep_from

    def _beat(self, phase: torch.Tensor) -> torch.Tensor | None:
        """``phase: FloatTensor[2, S]`` (the request's; beat guidance's contrast row's) -> the ``[B2, S]`` beat
        input (label guidance's row reads the request's grid, the classifier-free guidance rows have none), or
        None."""
        if not self.grid:
            return None
        rows = torch.cat([phase[: 1 + self.rows[0]], phase[:1].expand(int(self.rows[1]), -1)])
        return torch.cat([rows, torch.full_like(phase[:1], math.nan).expand(self.B2 - len(rows), -1)])

    @torch.inference_mode()
    def step(self, cross_mask: torch.Tensor, beat_step: float = math.nan, offbeat: bool = False,
             push: bool = True, capped: bool = True) -> None:
        """Decode one pattern position (codebook ``k`` writes frame ``produced - k``); ``beat_step``: the
        beat grid's beats per frame from this frame on (NaN: no grid); ``offbeat``: beat guidance's contrast
        row reads the grid half a beat late (:meth:`SamplingParams.offbeat`), else no grid; ``push`` False:
        it reads the request's grid, so beat guidance does nothing (:meth:`SamplingParams.pushes`);
        ``capped`` False: the guard's quiet cap (:meth:`SilenceGuard.cap`) skips this step."""
        if self.pos == self.positions:
            self._slide(cross_mask)
        pos = torch.tensor([self.pos], device=self.device)
        x = self.cur.expand(self.B2, -1, -1)
        p = self.beat_count % 1.0 if math.isfinite(beat_step) else math.nan
        contrast = p if not push else (p + 0.5) % 1.0 if offbeat else math.nan
        phase = torch.tensor([[p], [contrast]], device=self.device)
        if math.isfinite(beat_step):
            self.beat_count += beat_step
        logits = self.lm.decode_step(x, pos, self.cache, cross_mask, self.pos + 1, beat=self._beat(phase)).float()
        if self.guided:
            logits = guide_capped(logits, self.params, self.rows, self.guard if capped else None)
        if self.guard is not None:
            self.guard.block(logits, self.silent_run)
        uniforms = torch.rand((1, self.K), generator=self.generator, device=self.device)
        tokens = sample_tokens(logits, self.params, uniforms)[0]  # [K]
        if self.guard is not None:  # codebook 0 writes frame `produced`, always inside the window
            self.guard.advance(self.silent_run, tokens[:1])
        frame = self.delay.frame_at(self.produced, self.k_idx)
        tokens = torch.where(frame >= self.origin, tokens, self.special)  # before the window: special, as trained
        # write frame produced - k of codebook k
        need = self.produced + 1 - self.base
        if self.frames.shape[1] < need:
            grow = max(need - self.frames.shape[1], 64)
            self.frames = torch.cat([self.frames, self.frames.new_full((self.K, grow), -1)], dim=1)
            self.phases = torch.cat([self.phases, self.phases.new_full((2, grow), math.nan)], dim=1)
        self.phases[:, self.produced - self.base] = phase[:, 0]
        cols = frame - self.base
        ok = frame >= self.base
        self.frames[self.k_idx[ok], cols[ok]] = tokens[ok]
        self.cur = tokens.view(1, self.K, 1)
        self.pos += 1
        self.produced += 1

    def _slide(self, cross_mask: torch.Tensor) -> None:
        """Keep the last ``context`` frames of codebook 0 and re-prefill them at positions ``[0, context)``."""
        context = self.context
        self.origin = self.produced - context
        # window position j < context of codebook k holds frame origin + j - k (special where j < k)
        kept = self.frames[None, :, self.origin - self.base : self.origin - self.base + context]
        pattern = self.delay.build(kept)[..., :context]  # [1, K, context]
        phase = self.phases[:, self.origin - self.base : self.origin - self.base + context]
        self.lm.prefill(self.delay.inputs(pattern).expand(self.B2, -1, -1), self.cache, cross_mask,
                        beat=self._beat(phase))
        self.cur = pattern[:, :, context - 1 :].clone()
        self.pos = context
        self.slides += 1


# ------------------------------------------------------------------------------ audio


class ChunkDecoder:
    """Complete frames -> audio chunks of ``chunk`` frames, each decoded with codec context on both sides.

    Chunk ``[a, a + chunk)`` is decoded from frames ``[a - ctx, a + chunk + ctx)`` (fewer at
    the stream start) and its centre kept; the ``xfade`` samples past its end are kept too
    and faded into the next chunk's head (linear: the two decodes of the same frames agree
    closely, so they add coherently).
    """

    def __init__(self, codec, chunk: int, ctx: int, xfade: int):
        self.codec, self.chunk, self.ctx, self.xfade = codec, chunk, ctx, xfade
        self.hop = codec.hop_length
        self.next = 0  # first frame of the next chunk
        self.tail: np.ndarray | None = None

    def frames_needed(self) -> int:
        """Complete frames the next chunk waits for (its end plus the right-hand context)."""
        return self.next + self.chunk + max(self.ctx, -(-self.xfade // self.hop))

    def decode(self, tokens: TokenStream) -> np.ndarray:
        a, b = self.next, self.next + self.chunk
        lo = max(0, a - self.ctx)
        hi = self.frames_needed()
        codes = tokens.frames_between(lo, hi)[None]
        wav = self.codec.decode(codes).float().cpu().numpy()[0]  # [C, (hi - lo) * hop]
        s = (a - lo) * self.hop
        out = wav[:, s : s + self.chunk * self.hop].copy()
        if self.xfade and self.tail is not None:
            ramp = np.linspace(0.0, 1.0, self.xfade + 2, dtype=np.float32)[1:-1]
            out[:, : self.xfade] = self.tail * (1 - ramp) + out[:, : self.xfade] * ramp
        e = s + self.chunk * self.hop
        self.tail = wav[:, e : e + self.xfade].copy() if self.xfade else None
        self.next = b
        return out


# ------------------------------------------------------------------------------ the stream


@dataclass
class _Change:
    state: StreamState
    glide_s: float
    cut: bool
    received: float  # time.perf_counter() when the message arrived


@dataclass
class StreamStats:
    chunks: int = 0
    frames: int = 0
    slides: int = 0
    #: per applied change: (perf_counter when received, frame it took effect at)
    changes: list = field(default_factory=list)


class MusicStream:
    """An endless iterator of ``float32 [C, chunk samples]`` chunks; see the module docstring."""

    def __init__(self, loaded, conditions: dict | StreamState | None = None, settings: StreamSettings | None = None):
        self.settings = settings = settings or StreamSettings()
        settings.validate()
        from audiogen.generation.pipeline import DTYPES, window_frames

        self.loaded = loaded
        # a copy decoding in tune for --tuning: the loaded codec (a server's streams share it) stays as it is
        self.codec = loaded.codec if settings.tuning_hz is None else loaded.codec.retuned(settings.tuning_hz)[0]
        self.sr, self.channels, self.fr = self.codec.sample_rate, self.codec.channels, self.codec.frame_rate
        dtype = DTYPES.get(settings.dtype) or torch.float32
        self.lm = loaded.lm.eval().to(dtype)
        cfg = loaded.conditioner.cfg
        vocab = cfg.vocab() if cfg.attribute_slots else {}
        # attributes the model has no slot for are said in the text instead (see StreamState.conditions)
        self.fold = tuple(a.name for a in LABELS if not vocab.get(a.name))
        self.moods = list(vocab.get("mood") or [])  # what a "mood" may be; any words where empty (folded)
        self.intensity_moods = intensity_moods(self.moods)  # intensity's ends as mood labels, if the model has them
        self.fold += () if cfg.attribute_slots and cfg.bpm_buckets else ("bpm",)
        self._validate_conditions = cfg.validate_conditions
        self._conditioner_cfg = cfg
        self.state = state_from(conditions)
        if "bpm" not in self.fold and self.state.bpm is None:  # a beat-grid model's default tempo
            from audiogen.generation.pipeline import requested_tempo

            start = Conditions(text=self.state.text, genre=self.state.genre, mood=self.state.mood)
            self.state = replace(self.state, bpm=requested_tempo(start, loaded.config).bpm)
        if self.state.harmony is None:  # a model trained with the harmony attribute plays moving harmony
            from audiogen.generation.pipeline import default_harmony

            self.state = replace(self.state, harmony=default_harmony(loaded.config))
        self._check(self.state)
        params = settings.sampling
        W = window_frames(loaded, self.fr, settings.window_s)
        context = max(1, min(W - 1, int(W * settings.context_fraction)))  # frames kept when the window slides
        self.generator = torch.Generator(device=settings.device).manual_seed(settings.seed)
        # cap_quiet "slow": the guard holds the quiet codes, and each step caps them at the tempo it plays
        slow = [True] if params.cap_quiet == "slow" else None
        self.tokens = TokenStream(self.lm, W, context, params, self.generator, settings.device, dtype,
                                  SilenceGuard.for_codec(self.codec, params, settings.device, slow))
        self.boosted = replace(params, beat_guidance=params.beat_guidance + settings.tempo_boost)
        self.boost_until = -1  # frame at which a tempo change's raised beat guidance steps back
        self.mix = ConditionMix(self.lm, loaded.conditioner, self.tokens.rows, settings.device, dtype,
                                settings.negative)
        self.mix.set_target(self._parts(self.state), 0, 0)
        self.chunk_frames = max(1, round(settings.chunk_s * self.fr))
        self.chunk_samples = self.chunk_frames * self.codec.hop_length
        ctx_s = self.codec.stream_context_s if settings.decode_context_s is None else settings.decode_context_s
        self.decoder = ChunkDecoder(self.codec, self.chunk_frames, round(ctx_s * self.fr),
                                    round(settings.crossfade_s * self.sr))
        self.level = LevelFollower(self.sr, self.channels, settings.lufs, settings.true_peak_db) if settings.level else None
        self._inbox: queue.Queue[_Change] = queue.Queue()
        self._lock = threading.Lock()
        self._pending_cut: tuple[_Change, int] | None = None
        self._queued_state = self.state  # the state the last queued message leads to
        self.bar_anchor = 0  # frame the bar grid counts from
        self.stats = StreamStats()
        self._history = collections.deque([(0, self.state)], maxlen=256)  # (frame, state from that frame on)

    def _check(self, state: StreamState) -> None:
        for _, cond in self._parts(state):
            self._validate_conditions([cond])

    def _parts(self, state: StreamState) -> list[tuple[float, object]]:
        return self.read_prompt(state).parts(self.fold, self.intensity_moods)

    def prompt_read(self, state: StreamState) -> dict:
        """The labels ``state``'s text names that fill its empty slots (``{attribute: label(s)}``; {} with
        ``settings.prompt_labels`` off), as ``generate`` reads a prompt
        (:func:`~audiogen.generation.pipeline.prompt_slots`)."""
        if not self.settings.prompt_labels:
            return {}
        from audiogen.generation.pipeline import prompt_slots

        return prompt_slots(state.text, self._conditioner_cfg, labels_given(state) + list(self.fold))

    def read_prompt(self, state: StreamState) -> StreamState:
        """``state`` with :meth:`prompt_read`'s labels in its slots (each time it is played: a new prompt is read
        again, and a label cleared by a message comes back while the prompt still names it)."""
        read = self.prompt_read(state)
        return replace(state, **{k: tuple(v) if isinstance(v, list) else v for k, v in read.items()}) if read else state

    # -- control (any thread)
    def control(self, message: dict) -> None:
        """Queue a change (``{"mood": "tense", "intensity": 0.8, "glide_s": 4}``); applied at the next frame.

        Raises :class:`AudiogenError` (one line) for a malformed message or a value the
        model does not know; the stream carries on unchanged.
        """
        import time

        with self._lock:  # messages are merged in arrival order
            base = self._latest_state()
            state, glide, cut = parse_message(message, base)
            self._check(state)
            self._queued_state = state
            self._inbox.put(_Change(state, glide, cut, time.perf_counter()))

    def _latest_state(self) -> StreamState:
        return self._queued_state

    def state_at(self, frame: int) -> StreamState:
        """The request that took effect at or before ``frame`` (recent frames; a glide's target from its start)."""
        for f, state in reversed(self._history):
            if f <= frame:
                return state
        return self._history[0][1]

    def bar_frames(self) -> float:
        """Frames per 4/4 bar at the current tempo (``DEFAULT_BPM`` when none is asked)."""
        return 4 * 60.0 / (self.state.bpm or DEFAULT_BPM) * self.fr

    def _apply_changes(self, frame: int) -> None:
        while True:
            try:
                ch = self._inbox.get_nowait()
            except queue.Empty:
                break
            if ch.cut:
                bar = self.bar_frames()
                n = math.ceil((frame - self.bar_anchor) / bar - 1e-9)
                self._pending_cut = (ch, self.bar_anchor + int(round(n * bar)))
            else:
                self._pending_cut = None  # a later glide supersedes a waiting cut
                self._switch(ch, frame, round(ch.glide_s * self.fr))
        if self._pending_cut and frame >= self._pending_cut[1]:
            ch, _ = self._pending_cut
            self._pending_cut = None
            self._switch(ch, frame, 0)

    def _switch(self, ch: _Change, frame: int, frames: int) -> None:
        if ch.state.bpm != self.state.bpm:
            self.bar_anchor = frame  # a new tempo starts a new bar grid
            if self.settings.tempo_boost and self.tokens.rows[0]:  # beat guidance on: push onto the new beat
                self.boost_until = frame + frames + round(self.settings.tempo_boost_s * self.fr)
                self.tokens.params = self.boosted
        self.state = ch.state
        self._history.append((frame, ch.state))
        self.mix.set_target(self._parts(ch.state), frame, frames)
        self.stats.changes.append((ch.received, frame))

    # -- generation
    @torch.inference_mode()
    def next_chunk(self) -> np.ndarray:
        """Generate until the next chunk is decodable; return it, ``float32 [C, chunk samples]``."""
        t = self.tokens
        need = self.decoder.frames_needed()
        while t.complete < need:
            frame = t.produced
            self._apply_changes(frame)
            if 0 <= self.boost_until <= frame:
                t.params, self.boost_until = self.settings.sampling, -1
            step = self.mix.beat_step(frame, self.fr)
            bpm = step * 60.0 * self.fr if math.isfinite(step) else None
            capped = t.params.cap_quiet != "slow" or t.params.capped(True, bpm)
            t.step(self.mix.install(frame, t.cache), step, t.params.offbeat(bpm),
                   t.params.pushes(self.state.instruments), capped)
        out = self.decoder.decode(t)
        t.forget_before(self.decoder.next - self.decoder.ctx)
        if self.level is not None:
            out = self.level.process(out)
        self.stats.chunks += 1
        self.stats.frames = t.produced
        self.stats.slides = t.slides
        return out

    def __iter__(self):
        while True:
            yield self.next_chunk()
