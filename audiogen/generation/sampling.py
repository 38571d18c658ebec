"""Sampling from the LM: KV-cached decoding, classifier-free guidance, long-form continuation.

Tokens are generated in the delay-pattern domain (codebook k lags k steps), one
pattern position per forward pass after a single prefill:

- the conditional and unconditional rows for classifier-free guidance run in one
  batch of 2B: ``logits = uncond + cfg * (cond - uncond)``;
- temperature, top-k and top-p filter the guided distribution; a ``torch.Generator``
  seeded by the caller makes a run reproducible;
- an audio prompt (``prompt: LongTensor[B, K, T0]``) is teacher-forced: its pattern
  positions are prefilled in one pass, and the delayed codebooks keep their known
  tokens until the pattern leaves the prompt;
- tracks longer than the model's window are produced by windowed continuation: each
  new window is prompted with the last ``context_s`` seconds of tokens, reusing one
  window-sized cache, so memory is bounded by the window, not the track length;
- every decode step has fixed shapes (:class:`Decoder`), so on a GPU it is captured
  once in a CUDA graph (optionally compiled with ``torch.compile``) and replayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache, partial

import torch

from audiogen.errors import AudiogenError, dataclass_from_dict
from audiogen.models.patterns import DelayPattern


#: the values of ``SamplingParams.cap_quiet``
CAP_QUIET = ("off", "on", "untimed", "slow")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_scale: float = 3.0
    #: how far silence (codebook-0 codes :meth:`Codec.silent_codes` names) may outlast the sound around it, in
    #: seconds; past it those codes are not sampled (:class:`SilenceGuard`). 0 = no limit
    max_silence_s: float = 1.0
    #: False: codebook 0's silent codes are never sampled, so the track has no pause at all, and far fewer short
    #: holes (the default model's dropouts a minute: median 36 -> 10 over 8 clips; docs/generate.md)
    allow_silence: bool = True
    #: how much sound a silence must follow, in seconds: a silent code may start a silence only this long after
    #: the last silence ended (:class:`SilenceGuard`). The default model starts a silence 18-28 times a minute
    #: where its training tokens start one 3-7 times: short holes in the sound (docs/generate.md). 0 = off
    min_sound_s: float = 0.0
    #: "on": guidance may not make codebook 0's quiet codes (:meth:`Codec.quiet_codes`, frames under -40 LUFS)
    #: more likely than the least likely any of its rows (the request, its contrasts, the unconditional) makes
    #: them: it shapes what sounds, not whether (:meth:`SilenceGuard.cap`). Guidance pushes the small default
    #: model's half-beats into quiet codes, heard as short holes, and those holes carry its fast tempos: capped,
    #: 133-152 bpm requests were heard at half tempo. "untimed": on for requests that name no tempo, off for
    #: those that do. "slow": on for requests played under ``cap_below_bpm`` (the tempo they name, or the one
    #: the model plays them at), off at and above it, where the holes carry the beat. (:meth:`capped` tells per
    #: request, :meth:`for_tempo` resolves a job; unresolved, both are off.) "off": plain guidance
    #: (docs/generate.md, "--cap-quiet")
    cap_quiet: str = "off"
    #: ``cap_quiet`` "slow": the tempo (bpm) from which the cap is off
    cap_below_bpm: float = 120.0
    #: guidance towards the beat grid (a model with one; 1 = off): the logits of the request are pushed
    #: away from those of the same request without the grid, ``nogrid + beat_guidance * (grid - nogrid)``,
    #: as classifier-free guidance pushes away from the unconditional logits (docs/generate.md)
    beat_guidance: float = 1.0
    #: below this tempo (bpm), beat guidance's contrast row reads the grid half a beat late instead of no grid:
    #: the push then goes towards what the beat has and its half-beat lacks (hits on the beat, not between),
    #: where a slow request otherwise fills the half-beats as strongly and is heard at double time. Above it
    #: the contrast stays no grid, which holds fast requests better (docs/generate.md, "Attributes").
    #: 0 = off
    offbeat_below_bpm: float = 0.0
    #: whether beat guidance pushes a request that names instruments, none of them percussion
    #: (:func:`audiogen.data.labels.tonal_only`: "piano", "strings and flute"). A small model's push is heard as
    #: drum hits, which such a request did not ask for; False plays it on the grid without the push (the
    #: default model: docs/generate.md, "Attributes")
    beat_push_tonal: bool = True
    #: whether beat guidance pushes a request played at the model's default tempo: one that names no tempo
    #: (no ``--bpm``, no "120 bpm" in the prompt) and no mood or genre with a typical tempo
    #: (``generation.default_bpm_by``). Nobody asked that request for a beat, and the push, heard as broadband
    #: hits, scatters the default model's pitch; but without it that model holds one chord (docs/generate.md,
    #: "A request that names no tempo"), so it does not set this. False plays such a request on its default
    #: tempo's grid without the push (:meth:`for_default_tempo`)
    beat_push_default_tempo: bool = True
    #: the beat guidance of a plain request, where ``beat_push_default_tempo`` pushes it: one played at the
    #: model's default tempo that names no label either (no genre, mood, key or instruments; the README's "calm
    #: orchestral theme"). None: ``beat_guidance``, as any other request. A request naming its tempo needs the full
    #: push to be heard at it, and one naming a label drones under a smaller one; a plain request only needs
    #: to be kept off one held chord, and the full push scatters its pitch (docs/generate.md, "A request that
    #: names no tempo")
    beat_guidance_plain: float | None = None
    #: guidance towards the request's labels (genre, mood, key, instruments through a model's attribute
    #: slots; 1 = off): the logits are pushed away from those of the same request without its label slots
    #: (text and tempo kept), ``request + (label_guidance - 1) * (request - unlabelled)``, before
    #: classifier-free guidance. Classifier-free guidance pushes the text, the tempo and the labels alike;
    #: this pushes the labels alone (docs/generate.md, "Label guidance")
    label_guidance: float = 1.0
    #: how long label guidance lasts, in seconds of generated audio: ``label_guidance`` for the first
    #: ``label_guidance_hold_s``, then linearly down to 1 (off) over ``label_guidance_fade_s``, the rest of the
    #: track continuing what it has begun (:meth:`label_guidance_at`). Held throughout, the default model's key
    #: requests reached their key by droning on it (27 % of 8 s clips held one chord; 9 % faded after 2 s, the
    #: mode as often right: docs/generate.md, "Label guidance"). 0 = held throughout
    label_guidance_hold_s: float = 0.0
    #: seconds label guidance takes to fall from ``label_guidance`` to 1 after ``label_guidance_hold_s``
    label_guidance_fade_s: float = 0.0
    #: moods played calm: a request with one of these moods (its ``--mood``) that names no tempo is played on its
    #: grid without beat guidance's push and, where ``label_guidance`` is 1, with label guidance
    #: ``calm_label_guidance`` (:meth:`for_mood`). The default model's push is heard as beat hits, which the
    #: tagger hears as fast; without it and with the labels pushed (4) its ``slow`` clips are heard as slow, but
    #: most of its 30 s takes hold one chord, so it does not set this (docs/generate.md, "A slow mood played
    #: calm"). A tempo named keeps the push. () = off
    calm_moods: tuple[str, ...] = ()
    #: the label guidance of a request :meth:`for_mood` plays calm (1 = none)
    calm_label_guidance: float = 1.0

    def __post_init__(self):
        if isinstance(self.calm_moods, str) or not isinstance(self.calm_moods, tuple):  # a YAML list, or one mood
            moods = [self.calm_moods] if isinstance(self.calm_moods, str) else list(self.calm_moods or ())
            object.__setattr__(self, "calm_moods", tuple(moods))

    def fades_labels(self) -> bool:
        """Whether label guidance changes over the track (:meth:`label_guidance_at`)."""
        return self.label_guidance != 1.0 and self.label_guidance_hold_s > 0

    def label_guidance_at(self, seconds: float) -> float:
        """Label guidance ``seconds`` into the generated audio: ``label_guidance`` up to ``label_guidance_hold_s``
        (throughout where that is 0), then linearly to 1 over ``label_guidance_fade_s`` (at once where it is 0)."""
        hold, fade = self.label_guidance_hold_s, self.label_guidance_fade_s
        if hold <= 0 or seconds < hold:
            return self.label_guidance
        if seconds >= hold + fade:
            return 1.0
        return self.label_guidance + (1.0 - self.label_guidance) * (seconds - hold) / fade

    def plays_calm(self, named: bool, mood: str | None) -> bool:
        """Whether a request that names a tempo (``named``) or not, for ``mood`` (None: none), is played calm
        (``calm_moods``)."""
        from audiogen.models.conditioning import _norm

        return not named and bool(mood) and _norm(mood) in {_norm(m) for m in self.calm_moods}

    def for_mood(self, named: bool, mood: str | None) -> "SamplingParams":
        """These parameters for one request (``named``, ``mood``: :meth:`plays_calm`): played calm, beat guidance
        off (its contrast rows would only push towards the beat hits) and label guidance ``calm_label_guidance``
        unless label guidance is already set; otherwise as they are."""
        if not self.plays_calm(named, mood):
            return self
        labels = self.calm_label_guidance if self.label_guidance == 1.0 else self.label_guidance
        return replace(self, beat_guidance=1.0, label_guidance=labels)

    def for_default_tempo(self, defaulted: bool, labelled: bool = False) -> "SamplingParams":
        """These parameters for one request played at the model's default tempo (``defaulted``:
        :func:`audiogen.generation.pipeline.plays_default_tempo`) or not, naming a label (``labelled``) or not:
        for the first, beat guidance off unless ``beat_push_default_tempo``, else ``beat_guidance_plain`` where
        that is set and the request names no label; otherwise as they are. Beat guidance off stays off."""
        if not defaulted or self.beat_guidance == 1.0:
            return self
        if not self.beat_push_default_tempo:
            return replace(self, beat_guidance=1.0)
        if self.beat_guidance_plain is None or labelled:
            return self
        return replace(self, beat_guidance=self.beat_guidance_plain)

    def pushes(self, instruments) -> bool:
        """Whether beat guidance pushes a request for ``instruments`` (a list of names, or None)."""
        if self.beat_guidance == 1.0:
            return False
        if self.beat_push_tonal:
            return True
        from audiogen.data.labels import tonal_only

        return not tonal_only(instruments)

    def offbeat(self, bpm: float | None) -> bool:
        """Whether beat guidance's contrast row reads the grid half a beat late at tempo ``bpm`` (a model with a
        grid and beat guidance on; ``offbeat_below_bpm``) rather than no grid."""
        return self.beat_guidance != 1.0 and bool(bpm) and bpm < self.offbeat_below_bpm

    def guidance_rows(self, grid: bool) -> tuple[bool, bool, bool]:
        """(beat guidance on, label guidance on, classifier-free guidance on) for a model with or without a
        beat grid: which row groups follow the request's rows in a batch, in this order (:func:`guide`)."""
        return grid and self.beat_guidance != 1.0, self.label_guidance != 1.0, self.cfg_scale != 1.0

    def for_conditions(self, conds) -> "SamplingParams":
        """These parameters for a batch of requests ``conds``: label guidance off when none of them names a
        label (its contrast rows would equal the request's, a third more work for no change)."""
        from audiogen.models.conditioning import names_label

        if self.label_guidance != 1.0 and not any(names_label(c) for c in conds):
            return replace(self, label_guidance=1.0)
        return self

    def capped(self, named: bool, bpm: float | None) -> bool:
        """Whether ``cap_quiet`` caps a request that names a tempo (``named``:
        :func:`audiogen.generation.pipeline.names_tempo`) or not, played at ``bpm`` (None: at no tempo)."""
        if self.cap_quiet == "untimed":
            return not named
        if self.cap_quiet == "slow":
            return bpm is None or bpm < self.cap_below_bpm
        return self.cap_quiet == "on"

    def for_tempo(self, named: bool, bpm: float | None = None) -> "SamplingParams":
        """These parameters for requests that name a tempo (``named``) or not, played at ``bpm``: ``cap_quiet``
        "untimed" or "slow" becomes "on" or "off" (:meth:`capped`)."""
        if self.cap_quiet not in ("untimed", "slow"):  # an unknown value stays for validate() to refuse
            return self
        return replace(self, cap_quiet="on" if self.capped(named, bpm) else "off")

    def validate(self) -> None:
        if self.cap_quiet not in CAP_QUIET:
            raise AudiogenError(f"cap-quiet must be one of {', '.join(CAP_QUIET)}, got {self.cap_quiet!r}")
        if not (math.isfinite(self.cap_below_bpm) and self.cap_below_bpm > 0):
            raise AudiogenError(f"cap-below must be a tempo in bpm > 0, got {self.cap_below_bpm}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise AudiogenError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise AudiogenError(f"top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise AudiogenError(f"top-p must be in [0, 1] (0 = off), got {self.top_p}")
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise AudiogenError(f"guidance scale must be a finite number >= 0, got {self.cfg_scale}")
        if not (math.isfinite(self.beat_guidance) and self.beat_guidance >= 0):
            raise AudiogenError(f"beat guidance must be a finite number >= 0 (1 = off), got {self.beat_guidance}")
        plain = self.beat_guidance_plain
        if plain is not None and not (isinstance(plain, (int, float)) and math.isfinite(plain) and plain >= 0):
            raise AudiogenError(f"beat guidance of a plain request must be a finite number >= 0 (1 = off) or "
                                f"unset, got {plain!r}")
        if not (math.isfinite(self.label_guidance) and self.label_guidance >= 0):
            raise AudiogenError(f"label guidance must be a finite number >= 0 (1 = off), got {self.label_guidance}")
        for name in ("label_guidance_hold_s", "label_guidance_fade_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise AudiogenError(f"{name.replace('_', ' ')[:-2]} must be a finite number of seconds >= 0 "
                                    f"(hold 0 = throughout), got {getattr(self, name)}")
        if not (math.isfinite(self.calm_label_guidance) and self.calm_label_guidance >= 0):
            raise AudiogenError(f"calm label guidance must be a finite number >= 0 (1 = off), "
                                f"got {self.calm_label_guidance}")
        if not all(isinstance(m, str) and m.strip() for m in self.calm_moods):
            raise AudiogenError(f"calm moods must be mood names, got {list(self.calm_moods)}")
        if not (math.isfinite(self.offbeat_below_bpm) and self.offbeat_below_bpm >= 0):
            raise AudiogenError(f"offbeat-below must be a finite tempo in bpm >= 0 (0 = off), "
                                f"got {self.offbeat_below_bpm}")
        if not (math.isfinite(self.min_sound_s) and self.min_sound_s >= 0):
            raise AudiogenError(f"min sound must be a finite number of seconds >= 0 (0 = off), got {self.min_sound_s}")
        if not (math.isfinite(self.max_silence_s) and self.max_silence_s >= 0):
            raise AudiogenError(f"max silence must be a finite number of seconds >= 0 (0 = no limit), "
                                f"got {self.max_silence_s}")

    @classmethod
    def for_model(cls, config: dict, **given) -> "SamplingParams":
        """The sampling a model folder recommends (its config's ``generation.sampling``, e.g. a small
        model whose guidance only amplifies noise asks for ``cfg_scale: 1``), then the ``given``
        options that are not None; fields neither sets keep this class's defaults. A ``beat_guidance`` given
        pushes every request at that scale (``beat_push_tonal``, ``beat_push_default_tempo``, no
        ``beat_guidance_plain``) and every mood (no ``calm_moods``),
        and a ``label_guidance`` given is the calm requests' too (``calm_label_guidance``), unless those are
        given too."""
        if given.get("beat_guidance") is not None:
            given = {"beat_push_tonal": True, "beat_push_default_tempo": True, "calm_moods": (),
                     **{k: v for k, v in given.items() if v is not None}}
        if given.get("label_guidance") is not None and given.get("calm_label_guidance") is None:
            given = {**given, "calm_label_guidance": given["label_guidance"]}
        recommended = (config.get("generation") or {}).get("sampling") or {}
        if not isinstance(recommended, dict):
            raise AudiogenError(f"model config: generation.sampling must be a mapping, got {recommended!r}")
        base = dataclass_from_dict(cls, recommended, "model config generation.sampling keys")
        params = cls(**{**base.__dict__, **{k: v for k, v in given.items() if v is not None}})
        if given.get("beat_guidance") is not None and given.get("beat_guidance_plain") is None:
            params = replace(params, beat_guidance_plain=None)
        return params


def has_grid(lm) -> bool:
    """Whether ``lm`` reads a beat grid (``LMConfig.beat_harmonics``)."""
    return bool(getattr(lm.cfg, "beat_harmonics", 0))


def guide(logits: torch.Tensor, params: SamplingParams, beat: bool, labels: bool, cfg: bool,
          label_guidance: torch.Tensor | None = None) -> torch.Tensor:
    """``logits: [G * B, ...]`` of the row groups (the request; the request without the beat grid when
    ``beat``; the request without its label slots when ``labels``; unconditional when ``cfg``) -> the guided
    ``[B, ...]``: towards the grid, towards the labels, then classifier-free guidance from the unconditional
    rows. ``label_guidance`` (a 0-d tensor, the step's :meth:`SamplingParams.label_guidance_at`) overrides
    ``params.label_guidance``."""
    groups = logits.chunk(1 + beat + labels + cfg)
    out = groups[0]
    if beat:
        out = groups[1] + params.beat_guidance * (out - groups[1])
    if labels:
        g = params.label_guidance if label_guidance is None else label_guidance
        out = out + (g - 1.0) * (groups[0] - groups[1 + beat])
    if cfg:
        out = groups[-1] + params.cfg_scale * (out - groups[-1])
    return out


def guide_capped(logits: torch.Tensor, params: SamplingParams, rows: tuple[bool, bool, bool],
                 guard: "SilenceGuard | None", label_guidance: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`guide` with the ``rows`` :meth:`SamplingParams.guidance_rows` gives (and the step's
    ``label_guidance``, if any), then the guard's cap on quiet codes (:meth:`SilenceGuard.cap`, when it has
    one)."""
    out = guide(logits, params, *rows, label_guidance=label_guidance)
    if guard is not None:
        guard.cap(out, logits)
    return out


def sample_tokens(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None) -> torch.Tensor:
    """``logits: FloatTensor[B, K, V] -> LongTensor[B, K]``: greedy at temperature 0, else filtered sampling.

    Sampling is by inverse CDF over the top-k (then top-p) candidates, driven by
    ``uniforms: FloatTensor[B, K]`` in [0, 1) that the caller draws from its seeded
    generator. No random draw happens here, so the same code runs eagerly, under
    ``torch.compile`` and inside a CUDA graph, and all three give the same tokens.
    """
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    V = logits.shape[-1]
    k = params.top_k if 0 < params.top_k < V else V
    values, index = torch.topk(logits, k, dim=-1)  # sorted, most likely first
    probs = values.softmax(dim=-1)
    if params.top_p and params.top_p < 1.0:
        # keep the smallest prefix whose mass reaches top_p (the most likely token always stays)
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs > params.top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    target = uniforms.to(cdf.dtype)[..., None] * cdf[..., -1:]
    choice = (cdf <= target).sum(dim=-1, keepdim=True).clamp_(max=k - 1)
    return index.gather(-1, choice).squeeze(-1)


@dataclass(frozen=True)
class SilenceGuard:
    """Keeps codebook 0 from holding silence for more than ``max_frames`` frames, and, with ``min_sound_frames``,
    from starting a silence sooner than that many sounding frames after the last one.

    A small LM trained on recordings that open and close with silence learns that silence follows
    silence: once it samples a silent code it can stay there (the default model opened a stream with
    6 s of it, and one clip in 16 was more than half silent). The guard counts up one per silent
    frame and down one per sounding frame (not below 0); at ``max_frames`` the silent codes get no
    probability, so the next frame sounds. A pause of ``max_frames`` is allowed whenever the music
    before it has paid the count back, and a lone sounding frame between long silences (a click)
    does not reset it.

    Sampled with the default model's guidance, the same LM starts a short silence 18-28 times a minute where
    its training tokens start one 3-7 times (holes cut into held sound). ``min_sound_frames`` counts the
    sounding frames since the last silent one; while it is under that, a silence may go on but not start.
    The guidance makes those holes, not the LM (16 caption clips start a silence 4.5 times a minute with beat
    guidance 3 alone, 3.7 with guidance 2 alone, 19.5 with both): ``quiet`` (:meth:`cap`) keeps guidance
    from making codebook 0's quiet codes more likely than its rows do, which leaves the LM its own rate.

    The state is ``LongTensor[B, 2]`` per row (:meth:`fresh`): the silence count and the sounding frames
    since the last silent frame, updated with tensor ops only, so a fixed-shape decode step (CUDA graph,
    ``torch.compile``) keeps it.
    """

    silent: torch.Tensor  #: BoolTensor[V]: codebook 0's silent codes
    max_frames: int
    min_sound_frames: int = 0
    #: BoolTensor[V]: codebook 0's quiet codes, whose probability guidance may not raise (:meth:`cap`); None: no cap
    quiet: torch.Tensor | None = None
    #: BoolTensor[B]: the rows of a batch the cap applies to; None: all
    capped_rows: torch.Tensor | None = None

    @classmethod
    def for_codec(cls, codec, params: SamplingParams, device=None,
                  capped_rows: list[bool] | None = None) -> "SilenceGuard | None":
        """The guard ``params.max_silence_s``, ``params.min_sound_s`` and ``params.cap_quiet`` "on" ask for (with
        ``allow_silence`` False: one that lets no silent code through), or None (no limit, or a codec that cannot
        tell which codes are silent). ``capped_rows`` (one flag per row of a batch, :meth:`SamplingParams.capped`)
        caps those rows whatever ``cap_quiet`` says, for a batch whose requests differ."""
        capped = params.cap_quiet == "on" if capped_rows is None else any(capped_rows)
        rows = None if capped_rows is None or all(capped_rows) else torch.tensor(capped_rows, dtype=torch.bool)
        wanted = params.max_silence_s > 0 or params.min_sound_s > 0 or not params.allow_silence or capped
        silent = codec.silent_codes() if wanted else None
        if silent is None or not bool(silent.any()):
            return None
        device = device or codec.device
        silent = silent.to(device)
        quiet = codec.quiet_codes() if capped else None
        quiet = quiet.to(device) if quiet is not None and bool(quiet.any()) else None
        rows = rows.to(device) if rows is not None and quiet is not None else None
        if not params.allow_silence:  # a count that starts at its limit: never a silent code
            return cls(silent, 0, quiet=quiet, capped_rows=rows)
        longest = max(1, round(params.max_silence_s * codec.frame_rate)) if params.max_silence_s > 0 else 2**62
        return cls(silent, longest, round(params.min_sound_s * codec.frame_rate), quiet, rows)

    def fresh(self, rows: int, device=None) -> torch.Tensor:
        """The state of ``rows`` rows before any frame: no silence, and a silence free to start."""
        state = torch.zeros(rows, 2, dtype=torch.long, device=device if device is not None else self.silent.device)
        state[:, 1] = self.min_sound_frames
        return state

    def cap(self, guided: torch.Tensor, logits: torch.Tensor) -> None:
        """In place on ``guided: FloatTensor[B, K, V]`` (:func:`guide` of ``logits: [G * B, K, V]``, its rows'):
        codebook 0's quiet codes together get at most the probability the least of the ``G`` rows gives them,
        by scaling them down and the other codes up alike (their odds among themselves are guidance's).

        Guidance extrapolates: where the request gives a quiet code more than its contrast row does (the
        grid's half-beat, where a held note decays), it gives it more still, and the default model's
        half-beats went quiet 20-45 times a minute. Capped, guidance shapes what sounds, not whether."""
        if self.quiet is None:
            return
        B = guided.shape[0]
        quiet_mass = lambda x: x.log_softmax(-1).masked_fill(~self.quiet, float("-inf")).logsumexp(-1)  # noqa: E731
        least = quiet_mass(logits[:, 0]).view(-1, B).amin(0)
        now = quiet_mass(guided[:, 0])
        over = (now > least)[:, None]  # rows left as they are get no shift (not -inf - -inf)
        if self.capped_rows is not None:
            over = over & self.capped_rows[:, None]
        rest = lambda x: torch.log1p(-x.exp().clamp(max=1.0 - 1e-6))  # noqa: E731 (log of the other codes' mass)
        shift = torch.where(self.quiet, (least - now)[:, None], (rest(least) - rest(now))[:, None])
        guided[:, 0] += torch.where(over, shift, 0.0)

    def block(self, logits: torch.Tensor, state: torch.Tensor) -> None:
        """In place on ``logits: FloatTensor[B, K, V]``: codebook 0's silent codes get no probability in the rows
        whose silence has lasted ``max_frames``, or whose sound since the last silence (a row that sounds now)
        is shorter than ``min_sound_frames``."""
        run, sound = state[:, 0], state[:, 1]
        stop = (run >= self.max_frames) | ((sound > 0) & (sound < self.min_sound_frames))
        logits[:, 0].masked_fill_(stop[:, None] & self.silent, float("-inf"))

    def advance(self, state: torch.Tensor, codes: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """In place: the state after codebook 0 produced ``codes: LongTensor[B]`` (special tokens count as sound;
        where the BoolTensor ``valid`` is False the state stays as it was)."""
        V = self.silent.shape[0]
        silent = self.silent[codes.clamp(0, V - 1)] & (codes < V)
        run = (state[:, 0] + silent * 2 - 1).clamp_min(0)
        sound = torch.where(silent, 0, (state[:, 1] + 1).clamp_max(max(self.min_sound_frames, 1)))
        new = torch.stack([run, sound], dim=1)
        if valid is not None:  # one flag for the batch, or one per row
            new = torch.where(valid if valid.dim() == 0 else valid[:, None], new, state)
        state.copy_(new)

    def count(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes: LongTensor[B, T]`` of codebook 0 (a prompt) -> the state after them, ``LongTensor[B, 2]``."""
        state = self.fresh(codes.shape[0], codes.device)
        for t in range(codes.shape[1]):
            self.advance(state, codes[:, t])
        return state


ENGINES = ("auto", "eager", "static", "graph", "compile")


def resolve_engine(engine: str, device: torch.device | str) -> str:
    """``auto`` is a CUDA graph on a GPU and eager on CPU (no capture or compile wait)."""
    from audiogen.devices import resolve_device

    if engine not in ENGINES:
        raise AudiogenError(f"unknown decode engine {engine!r}; valid: {', '.join(ENGINES)}")
    cuda = resolve_device(device).type == "cuda"
    if engine == "auto":
        return "graph" if cuda else "eager"
    if engine == "graph" and not cuda:
        raise AudiogenError("the 'graph' decode engine captures a CUDA graph and needs --device cuda")
    return engine


class Decoder:
    """Samples windows of codes for one batch of conditions.

    All state lives in fixed buffers sized for the largest window (the KV cache, the
    pattern being written, the known prompt tokens, the per-position uniforms, the
    current position as a tensor), and one decode step reads and writes only those.
    The step therefore has fixed shapes and no host synchronisation, which lets these
    engines run the very same step:

    - ``eager``: plain PyTorch; self-attention reads only the filled part of the cache;
    - ``static``: the fixed-shape step, eagerly (what a graph replays; used by tests);
    - ``graph``: the fixed-shape step captured once in a CUDA graph and replayed per
      frame, which removes the per-kernel launch cost that dominates batch-1 decoding;
    - ``compile``: the fixed-shape step through ``torch.compile`` (fused kernels), and
      on CUDA captured in a CUDA graph as well.

    Buffers are reused by every window, so a graph is captured once per job.
    """

    SMALLEST_BUCKET = 256  # cache positions read by the first fixed-shape step (see _build_steps)
    ALIGN = 16  # key lengths (cache, condition slots) are padded to a multiple of this

    @torch.inference_mode()
    def __init__(self, lm, cond: torch.Tensor, cond_mask: torch.Tensor, max_frames: int, params: SamplingParams,
                 generator: torch.Generator | None, engine: str = "auto", guard: SilenceGuard | None = None,
                 beat_step: torch.Tensor | None = None, frame_rate: float | None = None, label_from: int = 0):
        self.lm, self.params, self.generator, self.guard = lm, params, generator, guard
        dtype = next(lm.parameters()).dtype
        self.cond, self.cond_mask = cond.to(dtype), cond_mask
        self.rows = params.guidance_rows(has_grid(lm))  # (beat guidance, classifier-free guidance)
        self.groups = 1 + sum(self.rows)
        self.guided = self.groups > 1
        # label guidance that fades (SamplingParams.label_guidance_at): a 0-d tensor set before each step from the
        # track frame (the frames before ``label_from``, a user prompt's, count as time 0), which a captured step
        # reads; None: params.label_guidance throughout
        self.label_g = None
        if self.rows[1] and params.fades_labels():
            if not frame_rate:
                raise AudiogenError("label guidance that fades needs the codec's frame rate")
            self.label_g = torch.full((), params.label_guidance, dtype=torch.float32, device=cond.device)
        self.frame_rate, self.label_from = frame_rate, label_from
        B2 = cond.shape[0]
        if B2 % self.groups:
            raise AudiogenError(f"{B2} condition rows cannot hold {self.groups} guidance groups")
        self.B = B2 // self.groups
        K, self.special = lm.cfg.num_codebooks, lm.cfg.cardinality
        self.delay = DelayPattern(K, self.special)
        device = cond.device
        self.engine = resolve_engine(engine, device)
        self.S_max = self.delay.positions(max_frames)
        if self.S_max > lm.cfg.max_positions:
            raise AudiogenError(f"a window of {max_frames} frames needs {self.S_max} positions; the model has "
                                f"{lm.cfg.max_positions}")
        # Key lengths are padded to a multiple of ALIGN: GPU attention kernels otherwise pad the
        # mask themselves at every call. Padded keys are masked out, padded condition slots are
        # zero (so an all-masked, unconditional row still gets exactly zero cross-attention).
        self.S_alloc = _round_up(self.S_max, self.ALIGN)
        self.cache = lm.init_cache(B2, self.S_alloc, device, dtype)
        lm.fill_cross_cache(self.cond, cond_mask, self.cache)
        L = cond_mask.shape[1]
        pad = _round_up(L, self.ALIGN) - L
        if pad:
            self.cond_mask = torch.nn.functional.pad(cond_mask.bool(), (0, pad), value=False)
            for layer_cache in self.cache.layers:
                layer_cache.cross_k = torch.nn.functional.pad(layer_cache.cross_k, (0, 0, 0, pad))
                layer_cache.cross_v = torch.nn.functional.pad(layer_cache.cross_v, (0, 0, 0, pad))
        self.cross_mask = lm.cross_masks(self.cond_mask, dtype)
        long = dict(dtype=torch.long, device=device)
        self.pos = torch.zeros(1, **long)
        self.num_frames = torch.zeros((), **long)
        self.cur = torch.full((self.B, K, 1), self.special, **long)
        self.pattern = torch.full((self.B, K, self.S_max), self.special, **long)
        self.known = torch.full((self.B, K, self.S_max), -1, **long)
        self.uniforms = torch.full((self.S_max, self.B, K), 0.5, dtype=torch.float32, device=device)
        self.silent_run = torch.zeros(self.B, 2, **long)  # the guard's state per row (SilenceGuard.fresh)
        # the beat grid (an LM with one): each row's beats per frame (NaN: none) and phase offset in beats,
        # and the track frame at this window's pattern position 0; a position's phase is
        # frac((frame0 + pos) * step + offset)
        grid = has_grid(lm) and beat_step is not None
        self.beat_step = self.beat_offset = None
        if grid:  # beat_step: [B2, 2] (beat_steps)
            steps = beat_step.to(device=device, dtype=torch.float64)
            self.beat_step, self.beat_offset = steps[:, 0].contiguous(), steps[:, 1].contiguous()
        self.frame0 = torch.zeros((), **long)
        self.delays = self.delay.delays(device)
        self.key_positions = torch.arange(self.S_alloc, device=device)
        self.zero_mask = torch.zeros(self.S_alloc, dtype=dtype, device=device)  # additive self-attention mask base
        self._p = 0  # host copy of pos: the eager step's cache slice, the bucket choice
        self._bucket_sizes, self._steps = self._build_steps()

    def _body(self, kv_len: int | None) -> None:
        """One decode step. ``kv_len=None``: eager (reads the ``_p + 1`` filled keys);
        an int: the fixed-shape step over the first ``kv_len`` cache positions, masked."""
        pos = self.pos
        x = self.cur.repeat(self.groups, 1, 1) if self.guided else self.cur
        beat = None if self.beat_step is None else self.beat_phase(pos)
        if kv_len is None:
            logits = self.lm.decode_step(x, pos, self.cache, self.cross_mask, self._p + 1, beat=beat)
        else:
            self_mask = self.zero_mask[:kv_len].masked_fill(self.key_positions[:kv_len] > pos, float("-inf"))
            logits = self.lm.decode_step(x, pos, self.cache, self.cross_mask, kv_len, self_mask[None, None, None],
                                         beat=beat)
        logits = logits.float()  # guidance and sampling in float32 whatever the LM's precision
        if self.guided:
            logits = guide_capped(logits, self.params, self.rows, self.guard, self.label_g)
        if self.guard is not None:
            self.guard.block(logits, self.silent_run)
        tokens = sample_tokens(logits, self.params, self.uniforms.index_select(0, pos)[0])
        frame = self.delay.frame_at(pos, self.delays)  # the frame each codebook is at in this pattern position
        outside = (frame < 0) | (frame >= self.num_frames)
        tokens = torch.where(outside[None], self.special, tokens)
        known = self.known.index_select(2, pos)[..., 0]
        tokens = torch.where(known >= 0, known, tokens)
        if self.guard is not None:
            self.guard.advance(self.silent_run, tokens[:, 0], ~outside[0])
        self.pattern.index_copy_(2, pos, tokens[..., None])
        self.cur.copy_(tokens[..., None])
        pos.add_(1)

    def beat_phase(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions: LongTensor[S]`` of this window -> each row's beat phase there, ``FloatTensor[B2, S]``
        (NaN for rows without a grid)."""
        count = (self.frame0 + positions).to(torch.float64)[None] * self.beat_step[:, None] + self.beat_offset[:, None]
        return torch.remainder(count, 1.0).float()

    def _build_steps(self) -> tuple[list[int], list]:
        """(bucket sizes, one step callable per bucket): the step for position p is the first bucket > p.

        A fixed-shape step attends over a whole bucket of cache positions, so buckets double
        from ``SMALLEST_BUCKET`` (a 30 s window reads about 0.64 of its cache per step on
        average instead of all of it); one graph is captured per bucket. ``compile`` keeps one
        bucket, since every shape is a separate compilation.
        """
        if self.engine == "eager":
            return [self.S_alloc], [partial(Decoder._body, self, None)]
        sizes = []
        n = self.SMALLEST_BUCKET
        while self.engine != "compile" and n < self.S_alloc:
            sizes.append(n)
            n *= 2
        sizes.append(self.S_alloc)
        body = _compiled_body() if self.engine == "compile" else Decoder._body
        steps = [partial(body, self, n) for n in sizes]
        if self.engine == "graph" or (self.engine == "compile" and self.pos.is_cuda):
            steps = self._capture(steps)
        return sizes, steps

    def _capture(self, steps: list) -> list:
        """Warm up on a side stream (lazy cuBLAS / compile init), restore the state, capture each step.

        The graphs share one memory pool: they never run at the same time.
        """
        pos, cur = self.pos.clone(), self.cur.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for fn in steps:
                self.pos.copy_(pos)
                for _ in range(2):
                    fn()
        torch.cuda.current_stream().wait_stream(side)
        self.pos.copy_(pos)
        self.cur.copy_(cur)
        self._graphs = []  # keep the graphs (and their pool) alive
        for fn in steps:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._graphs[0].pool() if self._graphs else None):
                fn()
            self._graphs.append(graph)
        return [g.replay for g in self._graphs]

    @torch.inference_mode()
    def window(self, num_frames: int, prompt: torch.Tensor | None = None, on_frame=None,
               continuing: bool = False, first_frame: int = 0) -> torch.Tensor:
        """One window of ``num_frames`` frames, the first ``T0`` of them the ``prompt: LongTensor[B, K, T0]``.

        ``continuing``: the prompt is the end of this decoder's previous window, so the silence guard's
        count goes on from there (else it is counted over the prompt). ``first_frame``: the track frame
        this window starts at (the beat grid runs on across windows). Returns ``LongTensor[B, K, num_frames]``.
        """
        special = self.special
        t0 = 0 if prompt is None else prompt.shape[-1]
        if t0 >= num_frames:
            raise AudiogenError(f"the prompt ({t0} frames) must be shorter than the window ({num_frames} frames)")
        S = self.delay.positions(num_frames)
        if S > self.S_max:
            raise AudiogenError(f"a window of {num_frames} frames is longer than this decoder's "
                                f"{self.delay.frames(self.S_max)}")
        self.known.fill_(-1)
        if t0:
            self.known[:, :, : self.delay.positions(t0)] = self.delay.build(prompt.to(self.known.device), fill=-1)
        # pattern positions < t0 are fully determined: prompt tokens, or special outside the frames
        self.pattern.fill_(special)
        self.pattern[:, :, :t0] = torch.where(self.known[:, :, :t0] >= 0, self.known[:, :, :t0], special)
        self.num_frames.fill_(num_frames)
        if self.guard is not None and not continuing:  # a prompt's silence counts as the track's
            if t0:
                self.silent_run.copy_(self.guard.count(prompt[:, 0].to(self.silent_run.device)))
            else:
                self.silent_run.copy_(self.guard.fresh(self.B, self.silent_run.device))
        if self.params.temperature > 0:
            self.uniforms[:S].uniform_(generator=self.generator)
        # the inputs of positions <= t0; those < t0 are prefilled at once
        inputs = self.delay.inputs(self.pattern[:, :, : t0 + 1])
        self.frame0.fill_(first_frame)
        if t0:
            x = inputs[:, :, :t0]
            beat = None if self.beat_step is None else self.beat_phase(torch.arange(t0, device=self.pos.device))
            self.lm.prefill(x.repeat(self.groups, 1, 1), self.cache, self.lm.cross_masks(self.cond_mask),
                            beat=beat)
        self.cur.copy_(inputs[:, :, t0 : t0 + 1])
        self.pos.fill_(t0)
        bucket = 0
        for p in range(t0, S):
            self._p = p
            if self.label_g is not None:  # codebook 0 writes track frame first_frame + p
                seconds = max(0, first_frame + p - self.label_from) / self.frame_rate
                self.label_g.fill_(self.params.label_guidance_at(seconds))
            while self._bucket_sizes[bucket] <= p:
                bucket += 1
            self._steps[bucket]()
            if on_frame is not None and p < num_frames:  # codebook 0 just produced a new frame
                on_frame()
        return self.delay.revert(self.pattern[:, :, :S])


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@cache
def _compiled_body():
    """One compiled step shared by every Decoder, so a second job with the same shapes reuses the kernels."""
    return torch.compile(Decoder._body, fullgraph=True, dynamic=False)


def generate_window(lm, cond: torch.Tensor, cond_mask: torch.Tensor, num_frames: int, params: SamplingParams,
                    generator: torch.Generator | None, prompt: torch.Tensor | None = None, on_frame=None,
                    engine: str = "auto", guard: SilenceGuard | None = None,
                    beat_step: torch.Tensor | None = None, frame_rate: float | None = None) -> torch.Tensor:
    """Generate one window of codes with a fresh KV cache.

    ``cond: [B2, L, D]``, ``cond_mask: [B2, L]``: the request's ``B`` rows, then a group of ``B`` rows for
    each guidance (see :func:`guide`): ``B2 = 2B`` (conditional rows then unconditional rows) when
    ``params.cfg_scale != 1``, else ``B``. ``prompt:
    LongTensor[B, K, T0]`` (T0 < num_frames) is kept as the first T0 frames.
    Returns ``LongTensor[B, K, num_frames]``. ``guard``: see :class:`SilenceGuard`. ``beat_step``: see
    :func:`beat_steps`. ``frame_rate``: the codec's, which label guidance that fades needs
    (:meth:`SamplingParams.label_guidance_at`; its time counts from the prompt's end).
    """
    with torch.inference_mode():
        label_from = 0 if prompt is None else prompt.shape[-1]
        return Decoder(lm, cond, cond_mask, num_frames, params, generator, engine,
                       guard, beat_step, frame_rate, label_from).window(num_frames, prompt, on_frame)


def generate_codes(lm, cond: torch.Tensor, cond_mask: torch.Tensor, num_frames: int, params: SamplingParams,
                   generator: torch.Generator | None, window_frames: int, context_frames: int,
                   prompt: torch.Tensor | None = None, on_frame=None, engine: str = "auto",
                   guard: SilenceGuard | None = None, beat_step: torch.Tensor | None = None,
                   frame_rate: float | None = None) -> torch.Tensor:
    """Any number of frames by windowed continuation. Returns ``LongTensor[B, K, num_frames]``.

    The first window may carry a user ``prompt``; every later window is prompted with the
    last ``context_frames`` frames generated so far. One window's KV cache (and one
    captured graph) serves every window, so memory is bounded by the window. ``guard`` (see
    :class:`SilenceGuard`) counts silence on across windows, and the beat grid (``beat_step``, see
    :func:`beat_steps`) runs on from the prompt's first frame. ``frame_rate``: the codec's, which label guidance
    that fades needs (:meth:`SamplingParams.label_guidance_at`; its time counts from the prompt's end).
    """
    if not 0 < context_frames < window_frames:
        raise AudiogenError(f"context ({context_frames}) must be between 0 and the window ({window_frames}) frames")
    if prompt is not None and prompt.shape[-1] > context_frames:
        prompt = prompt[..., -context_frames:]  # the model only ever sees one window
    t0 = 0 if prompt is None else prompt.shape[-1]
    first = min(window_frames, num_frames + t0)
    with torch.inference_mode():
        largest = first if first - t0 >= num_frames else window_frames
        decoder = Decoder(lm, cond, cond_mask, largest, params, generator, engine, guard, beat_step, frame_rate, t0)
        codes = decoder.window(first, prompt, on_frame)[..., t0:]
        pieces = [codes]
        have = codes.shape[-1]
        tail = codes[..., -context_frames:]
        while have < num_frames:
            ctx = tail
            new = min(window_frames - ctx.shape[-1], num_frames - have)
            out = decoder.window(ctx.shape[-1] + new, ctx, on_frame, continuing=True,
                                 first_frame=t0 + have - ctx.shape[-1])
            pieces.append(out[..., ctx.shape[-1] :])
            have += new
            tail = torch.cat([tail, out[..., ctx.shape[-1] :]], dim=-1)[..., -context_frames:]
    return torch.cat(pieces, dim=-1)[..., :num_frames]


def beat_steps(conds: list, extra_groups: int, frame_rate: float,
               beat_guidance: SamplingParams | None = None, label_group: bool = False) -> torch.Tensor:
    """``DoubleTensor[G * B, 2]``: each row's beat grid in the rows of
    :func:`~audiogen.generation.pipeline.condition_batch`, as (beats per frame, ``bpm / 60 / frame_rate``; phase
    offset in beats). NaN (no grid) for a row without a tempo and for the ``extra_groups`` groups of guidance
    rows that follow the request's (the request without the grid; the unconditional rows, which trained
    without one: the grid drops with the tempo). ``beat_guidance``: the sampling when the first extra group is
    beat guidance's contrast; its rows then read the grid half a beat late for a request slower than
    ``offbeat_below_bpm`` (:meth:`SamplingParams.offbeat`), and the request's own grid for a request beat
    guidance does not push (:meth:`SamplingParams.pushes`): guidance between two equal rows changes nothing.
    ``label_group``: the next extra group is label guidance's contrast (the request without its labels), which
    reads the request's own grid."""
    none = (math.nan, 0.0)
    request = [(c.bpm / 60.0 / frame_rate, 0.0) if c.bpm else none for c in conds]
    extra = []
    if beat_guidance is not None:
        for c, (step, _) in zip(conds, request):
            if not beat_guidance.pushes(c.instruments):
                extra.append((step, 0.0))
            else:
                extra.append((step, 0.5) if beat_guidance.offbeat(c.bpm) else none)
    if label_group:
        extra += request
    extra += [none] * (len(conds) * int(extra_groups) - len(extra))
    return torch.tensor(request + extra, dtype=torch.float64).reshape(-1, 2)


def frames_for(seconds: float, frame_rate: float) -> int:
    return max(1, math.ceil(seconds * frame_rate))
