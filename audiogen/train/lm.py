"""The conditioned LM's trainer: its config, model, loss, step, evaluation and export, which
:func:`audiogen.train.loop.run_loop` runs (``recipes/train_lm.py`` calls :func:`train`).

One process or many (DDP, FSDP, several nodes) run the same plain loop:

- data: :mod:`audiogen.data.loader` crops, sample ``i`` a function of ``(seed, i)``; step ``s``
  takes samples ``[s * batch_size, (s + 1) * batch_size)`` whatever the number of
  processes (``batch_size`` is the *global* batch, split over processes and ``grad_accum``);
- loss: per-codebook cross-entropy on the delay pattern (input ``[BOS, pattern[:-1]]``,
  target ``pattern``; the pattern's special positions and padding are masked), averaged
  over the global batch's valid tokens of each codebook, then over codebooks;
- AdamW, linear warmup then cosine decay to ``min_lr_ratio * lr``, gradient clipping,
  bf16 autocast on GPUs that have it (fp32 on CPU);
- checkpoints, resume, logging and stop requests (SIGTERM, SIGUSR1, ``OUT_DIR/STOP``) are
  the shared loop's (:mod:`audiogen.train.loop`); the model directory (``OUT_DIR/model``,
  :func:`audiogen.models.checkpoint.save_model_dir`) is exported at every checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiogen.errors import AudiogenError
from audiogen.train.loop import lr_at

# ------------------------------------------------------------------------------ config


@dataclass
class TrainConfig:
    """Everything an LM training run needs; YAML keys are these field names."""

    name: str = "audiogen-lm"
    # data
    data_dir: str = ""
    #: more prepared datasets (tokenized with the same codec) trained on alongside data_dir;
    #: evaluation stays on data_dir's valid split
    extra_data_dirs: list = field(default_factory=list)
    #: the share of training samples from each dataset, data_dir first (normalised); empty =
    #: in proportion to their train rows
    data_weights: list = field(default_factory=list)
    #: codec folder the dataset was tokenized with, when it is not a named codec (tiny, encodec_*)
    codec: str = ""
    segment_s: float = 10.0
    num_workers: int = 0
    # model
    model: str = "tiny"  #: named LM config (audiogen.models.lm.NAMED_CONFIGS)
    lm: dict = field(default_factory=dict)  #: LMConfig overrides
    conditioner: dict = field(default_factory=dict)  #: ConditionerConfig overrides (text_encoder, dim, p_drop_*)
    vocab_min_count: int = 2  #: attribute values seen fewer times in the train split are not learned
    bpm_buckets: int = 13  #: tempo buckets between 60 and 180 bpm (0 = no tempo conditioning)
    #: a model directory to fine-tune from (its LM/conditioner configs and weights)
    init_from: str = ""
    # optimisation
    batch_size: int = 8  #: global: sequences per optimizer step, over all processes and accumulation
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    #: auto (bf16 on a GPU that has it, else fp32), no, bf16, fp16
    mixed_precision: str = "auto"
    #: CPU threads per process (0 = torch's default, one per core). On a machine shared with
    #: other jobs, 1 is often faster: oversubscribed threads wait on each other
    num_threads: int = 0
    seed: int = 0
    # bookkeeping
    out_dir: str = "runs/lm"
    log_every: int = 10
    eval_every: int = 0  #: per-codebook perplexity on the valid split every N steps (0 = never)
    eval_rows: int = 64  #: valid rows scored (their first segment_s)
    save_every: int = 500
    keep_checkpoints: int = 2
    export_dtype: str = "float16"  #: float16, bfloat16 or float32
    #: the sampling the exported model recommends (SamplingParams fields; the model config's
    #: generation.sampling): what ``generate`` and ``stream`` use for options the user leaves out
    sampling: dict = field(default_factory=dict)
    #: --key requests the exported model plays away and decodes back ({tonic: semitones}; the model config's
    #: generation.key_shift, :func:`audiogen.generation.pipeline.played_key`): for keys its key slot misses
    key_shift: dict = field(default_factory=dict)
    progress: bool = True

    #: keys that must not change when a run is resumed (they change what the steps compute)
    RESUME_KEYS: ClassVar[tuple[str, ...]] = ("data_dir", "extra_data_dirs", "data_weights", "seed", "batch_size",
                                              "segment_s", "model", "lm",
                                              "conditioner", "vocab_min_count", "bpm_buckets", "init_from")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def validate(self) -> None:
        """Impossible values and unknown nested keys are user errors (:class:`AudiogenError`)."""
        from audiogen.models.conditioning import ConditionerConfig
        from audiogen.models.lm import LMConfig, NAMED_CONFIGS

        if not self.data_dir:
            raise AudiogenError("data_dir is not set (a folder made by 'audiogen prep')")
        if self.data_weights and len(self.data_weights) != 1 + len(self.extra_data_dirs):
            raise AudiogenError(f"data_weights has {len(self.data_weights)} values for "
                                f"{1 + len(self.extra_data_dirs)} datasets (data_dir + extra_data_dirs)")
        if any(not isinstance(w, (int, float)) or w < 0 for w in self.data_weights) or (
                self.data_weights and not sum(self.data_weights) > 0):
            raise AudiogenError(f"data_weights={self.data_weights}: numbers >= 0, not all 0")
        if self.model not in NAMED_CONFIGS:
            raise AudiogenError(f"model={self.model!r}: valid names are {', '.join(NAMED_CONFIGS)}")
        from audiogen.generation.sampling import SamplingParams

        SamplingParams.for_model({"generation": {"sampling": self.sampling}}).validate()
        from audiogen.generation.pipeline import key_shifts

        key_shifts({"generation": {"key_shift": self.key_shift}})
        for section, cls in (("lm", LMConfig), ("conditioner", ConditionerConfig)):
            names = {f.name for f in dataclasses.fields(cls)}
            bad = set(getattr(self, section)) - names
            if bad:
                raise AudiogenError(f"unknown {section} keys: {', '.join(sorted(bad))} (known: {', '.join(sorted(names))})")
        if set(self.lm) & {"num_codebooks", "cardinality", "cond_dim"}:
            raise AudiogenError("lm.num_codebooks/cardinality come from the dataset's codec and lm.cond_dim from "
                                "conditioner.dim; leave them out")
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.batch_size % self.grad_accum == 0, f"batch_size={self.batch_size} must be divisible by "
                                                     f"grad_accum={self.grad_accum}"),
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.segment_s > 0, "segment_s must be > 0"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (len(self.betas) == 2, "betas must be two numbers"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
            (self.mixed_precision in ("auto", "no", "bf16", "fp16"), "mixed_precision must be auto, no, bf16 or fp16"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.save_every >= 1, "save_every must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.eval_every >= 0, "eval_every must be >= 0"),
            (self.export_dtype in ("float16", "bfloat16", "float32"), "export_dtype must be float16, bfloat16 or float32"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.num_threads >= 0, "num_threads must be >= 0 (0 = torch's default)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise AudiogenError(msg)


#: settings a fine-tuning run (``init_from``) may change: condition dropout and the LM's residual dropout
DROPOUT_KEYS = ("p_drop_attr", "p_drop_text", "p_drop_all", "dropout")


def resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


# ------------------------------------------------------------------------------ model


class ConditionedLM(nn.Module):
    """LM + condition encoder as one module (one DDP/FSDP wrap, one ``save_state`` entry).

    ``forward(tokens: LongTensor[B, K, S], conds: list[Conditions], beat=None) -> logits: FloatTensor[B, K, S, card]``
    (``beat: FloatTensor[B, S]``, each position's beat phase, for an LM with a beat grid)
    """

    def __init__(self, lm: nn.Module, conditioner: nn.Module):
        super().__init__()
        self.lm = lm
        self.conditioner = conditioner

    def forward(self, tokens: torch.Tensor, conds, beat: torch.Tensor | None = None) -> torch.Tensor:
        cond, mask = self.conditioner(conds)
        return self.lm(tokens, cond, mask, beat)


def _tempo(b) -> float | None:
    return float(b) if b and math.isfinite(float(b)) and float(b) > 0 else None


def median_tempo(ds) -> float | None:
    """The median ``bpm`` of a dataset's rows that have one (rounded to 0.1), or None."""
    bpm = [t for t in map(_tempo, ds["bpm"]) if t]
    return round(statistics.median(bpm), 1) if bpm else None


#: a label's own default tempo needs at least this many training rows with the label and a tempo: a word as
#: common in prompts as "game" (9 rows of the default model's data, median 85 bpm) should not set the tempo of
#: "adventure game music" from a handful of tracks
LABEL_TEMPO_MIN_ROWS = 32


def label_tempos(ds, min_rows: int = LABEL_TEMPO_MIN_ROWS) -> dict:
    """``{"mood": {label: median bpm}, "genre": {...}}``: the median tempo of the rows carrying each mood and
    genre label (normalised as the conditioner's vocabulary holds them; rounded to 0.1), for labels with at
    least ``min_rows`` such rows. A beat-grid model plays a request that names a mood or genre but no tempo
    at it (``generation.default_bpm_by``): in the default model's training data the "fast" rows have a median
    of 123.5 bpm and the "slow" ones 92.2, where all rows together have 94.1."""
    from audiogen.models.conditioning import TEMPO_LABELS, row_labels

    out = {}
    for attr in TEMPO_LABELS:
        if attr not in ds.column_names:
            continue
        by = {}
        for value, b in zip(ds[attr], ds["bpm"]):
            t = _tempo(b)
            if t is None:
                continue
            for label in set(row_labels(value)):
                by.setdefault(label, []).append(t)
        kept = {label: round(statistics.median(v), 1) for label, v in sorted(by.items()) if len(v) >= min_rows}
        if kept:
            out[attr] = kept
    return out


def beat_frame_rate(lm, frame_rate: float) -> float | None:
    """The codec's ``frame_rate`` when ``lm`` has a beat grid (its crops then carry beat phases), else None."""
    from audiogen.generation.sampling import has_grid

    return float(frame_rate) if has_grid(lm) else None


def codec_spec(desc: dict, codec_path: str = "") -> tuple[str, object | None]:
    """Where the model directory finds the dataset's codec: (spec, codec object to copy in or None).

    Named codecs (``encodec_24khz``, ``tiny``) are recorded by name. A codec folder (the
    ``codec`` config key) is loaded, checked against the dataset's description, and copied
    into the model directory.
    """
    from audiogen.codec.base import PRETRAINED_FILES, load_tokenizing_codec

    name = str(desc.get("name", ""))
    if codec_path:
        return "codec", load_tokenizing_codec(codec_path, desc)
    if name in PRETRAINED_FILES:
        return name, None
    if name == "tiny-seed0" and desc.get("weights_sha256") is None:
        return "tiny", None
    raise AudiogenError(f"the dataset was tokenized with codec '{name}', which is not a named codec: set "
                        "codec=PATH to the codec folder it was prepared with")


def build_conditioner_config(cfg: TrainConfig, train_ds):
    """ConditionerConfig with vocabularies from the train split (values seen >= ``vocab_min_count`` times)."""
    from audiogen.models.conditioning import LABELS, ConditionerConfig, bpm_bucket_centres, build_vocab

    c = ConditionerConfig.from_dict(dict(cfg.conditioner))
    for a in LABELS:  # an optional attribute's column (harmony) may be absent: no values, no table
        if a.name in train_ds.column_names:
            setattr(c, a.vocab, build_vocab(train_ds[a.name], cfg.vocab_min_count))
        elif not a.optional:
            raise AudiogenError(f"the dataset has no {a.name!r} column; prepare it again with 'audiogen prep'")
    c.bpm_buckets = bpm_bucket_centres(n=cfg.bpm_buckets) if cfg.bpm_buckets > 1 else []
    return c


def build_model(cfg: TrainConfig, train_ds, codec_desc: dict, saved: dict | None = None):
    """(lm, conditioner) for a run: from ``init_from``, ``saved`` configs (a resumed run), or the config.

    Returns modules in float32 on CPU.
    """
    from audiogen.models.conditioning import ConditionEncoder, ConditionerConfig
    from audiogen.models.lm import LM, LMConfig, named_config

    K, card = int(codec_desc["num_codebooks"]), int(codec_desc["cardinality"])
    if cfg.init_from:  # also when resuming: its text encoder may live inside the model dir
        from audiogen.models.checkpoint import load_model, read_config

        mcfg = read_config(cfg.init_from)["lm"]
        if (mcfg.get("num_codebooks"), mcfg.get("cardinality")) != (K, card):
            raise AudiogenError(
                f"init_from={cfg.init_from}: the model predicts {mcfg.get('num_codebooks')} codebooks x "
                f"{mcfg.get('cardinality')} codes but the dataset's codec gives {K} x {card}")
        loaded = load_model(cfg.init_from)
        lm, cond = loaded.lm.train(), loaded.conditioner.train()
        # the model's architecture and vocabularies are kept; condition dropout may change
        for section, mcfg_obj in (("lm", lm.cfg), ("conditioner", cond.cfg)):
            for k, v in getattr(cfg, section).items():
                if k in DROPOUT_KEYS:
                    setattr(mcfg_obj, k, float(v))
                elif getattr(mcfg_obj, k) != v:
                    raise AudiogenError(f"init_from={cfg.init_from} has {section}.{k}={getattr(mcfg_obj, k)!r}, "
                                        f"the config asks for {v!r}: leave {section}.{k} out when fine-tuning")
    elif saved is not None:
        lm = LM(LMConfig.from_dict(saved["lm"]))
        cond = ConditionEncoder(ConditionerConfig.from_dict(saved["conditioner"]))
    else:
        ccfg = build_conditioner_config(cfg, train_ds)
        cond = ConditionEncoder(ccfg)
        lm = LM(named_config(cfg.model, **{**cfg.lm, "num_codebooks": K, "cardinality": card, "cond_dim": ccfg.dim}))
    if not getattr(cond.cfg, "attribute_slots", True):
        # text-only conditioning (imported MusicGen): the attribute tables take no part in
        # the forward pass; frozen, so DDP does not wait for their gradients
        cond.tables.requires_grad_(False)
    if lm.cfg.num_codebooks != K or lm.cfg.cardinality != card:
        raise AudiogenError(f"the LM predicts {lm.cfg.num_codebooks} x {lm.cfg.cardinality} codes but the "
                            f"dataset's codec gives {K} x {card}")
    return lm, cond


# ------------------------------------------------------------------------------ loss


def delay_inputs(codes: torch.Tensor, mask: torch.Tensor, special: int):
    """``codes: LongTensor[B, K, T]``, ``mask: BoolTensor[B, K, T]`` ->
    ``(inputs, targets: LongTensor[B, K, S], target_mask: BoolTensor[B, K, S])``, ``S = T + K - 1``.

    ``targets`` is the delay pattern, ``inputs`` is it shifted right by one with BOS (the
    special token) first; the pattern's special positions and padding are masked.
    """
    from audiogen.models.patterns import DelayPattern

    delay = DelayPattern(codes.shape[1], special)
    pattern = delay.build(codes)
    tmask = delay.build(mask, fill=False)
    return delay.inputs(pattern), pattern, tmask


def codebook_ce_sums(logits: torch.Tensor, targets: torch.Tensor, tmask: torch.Tensor):
    """``logits: [B, K, S, V]`` -> (per-codebook summed cross-entropy ``FloatTensor[K]``, valid counts ``[K]``)."""
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.float().reshape(-1, V), targets.clamp(max=V - 1).reshape(-1), reduction="none")
    ce = ce.view(targets.shape) * tmask
    return ce.sum(dim=(0, 2)), tmask.sum(dim=(0, 2)).float()


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; matrices (linear and embedding weights) decay, biases and norms do not."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


@torch.no_grad()
def evaluate(model, accelerator, valid_ds, segment_frames: int, special: int, batch: int, max_rows: int,
             frame_rate: float | None = None) -> dict:
    """Per-codebook perplexity on fixed valid crops (no RNG used; every process runs the same number of batches)."""
    from audiogen.data.loader import eval_batches

    was_training = model.training
    model.eval()
    sums = counts = None
    try:
        for b in eval_batches(valid_ds, segment_frames, special, batch, max_rows,
                              accelerator.num_processes, accelerator.process_index, frame_rate):
            b = b.to(accelerator.device)
            inputs, targets, tmask = delay_inputs(b.codes, b.mask, special)
            s, c = codebook_ce_sums(model(inputs, b.conds, b.beat), targets, tmask)
            sums = s if sums is None else sums + s
            counts = c if counts is None else counts + c
    finally:
        model.train(was_training)
    if sums is None:
        return {}
    sums, counts = accelerator.reduce(sums, "sum"), accelerator.reduce(counts, "sum")
    K = sums.shape[0]
    ce = (sums / counts.clamp(min=1)).tolist()
    out = {f"eval/ppl_{k}": math.exp(ce[k]) for k in range(K)}
    out["eval/loss"] = sum(ce) / K
    return out


# ------------------------------------------------------------------------------ the run


def train(cfg: TrainConfig) -> int:
    """Run (or resume) the training described by ``cfg``; returns the exit status."""
    import yaml
    from accelerate.utils import set_seed

    from audiogen.data.loader import CropDataset, dataset_codec, load_mix, make_loader
    from audiogen.files import atomic_write_text, make_dir
    from audiogen.train.loop import check_resumable, make_accelerator, restore, resume_point, run_loop

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out_dir)
    accelerator = make_accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
                                   log_with="tensorboard", project_dir=str(out))
    world = accelerator.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise AudiogenError(f"batch_size={cfg.batch_size} must be divisible by processes x grad_accum = "
                            f"{world} x {cfg.grad_accum}")
    check_resumable(cfg)

    train_ds, valid_ds, sizes = load_mix([cfg.data_dir, *cfg.extra_data_dirs])
    mix = (sizes, list(cfg.data_weights) or [float(n) for n in sizes]) if len(sizes) > 1 else None
    desc = dataset_codec(train_ds)
    spec, codec_obj = codec_spec(desc, cfg.codec)
    frames = max(1, round(cfg.segment_s * float(desc["frame_rate"])))

    latest = resume_point(accelerator, out / "checkpoints")
    build_file = out / "build.json"
    saved = json.loads(build_file.read_text()) if latest is not None and build_file.is_file() else None
    set_seed(cfg.seed)
    lm, conditioner = build_model(cfg, train_ds, desc, saved)
    K, special = lm.cfg.num_codebooks, lm.cfg.cardinality
    if frames + K > lm.cfg.max_positions:
        raise AudiogenError(f"segment_s={cfg.segment_s} is {frames} frames; the LM has {lm.cfg.max_positions} "
                            f"positions (raise lm.max_positions)")
    accelerator.wait_for_everyone()  # every rank has read the run's state before the main process writes
    if accelerator.is_main_process:
        make_dir(out)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_text(build_file, json.dumps({"lm": lm.cfg.to_dict(), "conditioner": conditioner.cfg.to_dict(),
                                                  "codec": desc, "segment_frames": frames}, indent=2))
    model = ConditionedLM(lm, conditioner)
    optimizer = make_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    start = restore(accelerator, latest)

    beat_rate = beat_frame_rate(lm, desc["frame_rate"])
    default_bpm = median_tempo(train_ds) if beat_rate else None
    default_bpm_by = label_tempos(train_ds, LABEL_TEMPO_MIN_ROWS) if beat_rate else None
    dataset = CropDataset(train_ds, frames, special, cfg.seed, drop=conditioner.cfg, mix=mix, frame_rate=beat_rate)
    loader = make_loader(dataset, start, cfg.max_steps, cfg.batch_size, world, accelerator.process_index,
                         cfg.grad_accum, cfg.num_workers)
    model.train()
    trainer = LMTrainer(cfg, accelerator, model, optimizer, loader, out, special, frames, valid_ds,
                        {"spec": spec, "num_codebooks": K, "describe": desc}, codec_obj, beat_rate, default_bpm,
                        default_bpm_by)
    return run_loop(accelerator, cfg, trainer, start)


@dataclass
class LMTrainer:
    """The LM's step, evaluation and export: the :class:`audiogen.train.loop.Trainer` of one run."""

    cfg: TrainConfig
    accelerator: object
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: object
    out: Path
    special: int
    frames: int
    valid_ds: object
    codec_info: dict
    codec_obj: object
    beat_rate: float | None = None  # the codec's frame rate for a model with a beat grid (its crops' phases)
    default_bpm: float | None = None  # the exported model's generation.default_bpm (a model with a beat grid)
    default_bpm_by: dict | None = None  # and its generation.default_bpm_by (label_tempos)
    name: str = "lm"
    _batches: object = field(default=None, init=False, repr=False)  # the loader's iterator, from the first step

    @property
    def progress(self) -> bool:
        return self.cfg.progress

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.frames * self.codec_info["num_codebooks"]

    @property
    def export_dir(self) -> Path:
        return self.out / "model"

    def step(self, step: int) -> dict:
        if self._batches is None:
            self._batches = iter(self.loader)
        micro = [next(self._batches) for _ in range(self.cfg.grad_accum)]
        return train_step(self.model, self.optimizer, self.accelerator, micro, step, self.cfg, self.special)

    def bar_figures(self, stats: dict) -> dict:
        return {"loss": f"{stats['loss']:.4f}", "lr": f"{stats['lr']:.2e}"}

    def evaluate(self, step: int) -> tuple[dict, str]:
        acc, cfg = self.accelerator, self.cfg
        scores = evaluate(self.model, acc, self.valid_ds, self.frames, self.special,
                          max(1, cfg.batch_size // (acc.num_processes * cfg.grad_accum)), cfg.eval_rows, self.beat_rate)
        if not scores:
            return {}, ""
        ppl = ", ".join(f"{scores[f'eval/ppl_{k}']:.1f}" for k in range(self.codec_info["num_codebooks"]))
        return scores, f"step {step}: valid perplexity per codebook {ppl}"

    def rank_state(self) -> None:
        return None  # Accelerate's save_state holds all of it

    def export(self, step: int) -> Path:
        """``OUT_DIR/model``: a model directory ``audiogen generate --model`` loads."""
        acc, cfg = self.accelerator, self.cfg
        state = acc.get_state_dict(self.model)  # gathers FSDP shards (a collective: every rank calls it)
        if acc.is_main_process:
            export_model(acc.unwrap_model(self.model), state, self.export_dir, self.codec_info, self.codec_obj, cfg,
                         step, self.frames / float(self.codec_info["describe"]["frame_rate"]), self.default_bpm,
                         self.default_bpm_by)
        acc.wait_for_everyone()
        return self.export_dir


def train_step(model, optimizer, acc, micro: list, step: int, cfg: TrainConfig, special: int) -> dict:
    """One optimizer step over this process's micro-batches (``audiogen.data.loader.Batch``, ``grad_accum`` of them).

    ``model``/``optimizer`` are prepared by ``acc`` (an ``Accelerator``). Returns the logged figures.
    """
    lr = lr_at(step, cfg)
    for g in optimizer.param_groups:
        g["lr"] = lr
    prepared = []
    counts = None
    for b in micro:
        b = b.to(acc.device)
        inputs, targets, tmask = delay_inputs(b.codes, b.mask, special)
        c = tmask.sum(dim=(0, 2)).float()
        counts = c if counts is None else counts + c
        prepared.append((inputs, targets, tmask, b.conds, b.beat))
    # the loss is a mean over the *global* batch's valid tokens of each codebook, so it
    # (and its gradient) is the same for any number of processes and accumulation steps
    counts = acc.reduce(counts, "sum").clamp(min=1)
    K = counts.shape[0]
    ce_total = torch.zeros(K, device=acc.device)
    for i, (inputs, targets, tmask, conds, beat) in enumerate(prepared):
        sync = i == len(prepared) - 1
        ctx = contextlib.nullcontext() if sync else acc.no_sync(model)
        with ctx:
            logits = model(inputs, conds, beat)
            sums, _ = codebook_ce_sums(logits, targets, tmask)
            # DDP/FSDP average gradients over processes: scale by their number
            loss = (sums / counts).sum() / K * acc.num_processes
            acc.backward(loss)
        ce_total += sums.detach()
    grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    per_cb = (acc.reduce(ce_total, "sum") / counts).tolist()
    stats = {"loss": sum(per_cb) / K, "lr": lr}
    stats.update({f"loss_{k}": v for k, v in enumerate(per_cb)})
    if grad_norm is not None:
        stats["grad_norm"] = float(grad_norm)
    return stats


def export_model(model: ConditionedLM, state: dict, path: Path, codec_info: dict, codec_obj, cfg: TrainConfig,
                 step: int, window_s: float, default_bpm: float | None = None,
                 default_bpm_by: dict | None = None) -> Path:
    """Write the model directory from a full ``state`` dict (``lm.*``, ``conditioner.*``) without moving the RNG;
    ``default_bpm``: the tempo a request without one plays at (``generation.default_bpm``); ``default_bpm_by``:
    the tempo of a request naming a mood or genre but no tempo (``generation.default_bpm_by``, :func:`label_tempos`)."""
    from audiogen.models.checkpoint import save_model_dir
    from audiogen.models.conditioning import ConditionEncoder
    from audiogen.models.lm import LM

    with torch.random.fork_rng(devices=[]):  # fresh modules draw init weights; training's RNG must not move
        lm = LM(model.lm.cfg)
        cond = ConditionEncoder(model.conditioner.cfg, text_encoder=model.conditioner.text_encoder)
    for prefix, module in (("lm.", lm), ("conditioner.", cond)):
        module.load_state_dict({k[len(prefix):]: v.detach().cpu().float() if v.is_floating_point() else v.cpu()
                                for k, v in state.items() if k.startswith(prefix)})
    dtype = getattr(torch, cfg.export_dtype)
    return save_model_dir(path, lm, cond, codec_info, codec=codec_obj, dtype=None if dtype == torch.float32 else dtype,
                          generation={"window_s": round(window_s, 3),
                                      **({"sampling": dict(cfg.sampling)} if cfg.sampling else {}),
                                      **({"key_shift": dict(cfg.key_shift)} if cfg.key_shift else {}),
                                      **({"default_bpm": default_bpm} if default_bpm else {}),
                                      **({"default_bpm_by": default_bpm_by} if default_bpm and default_bpm_by else {})},
                          extra={"training": {"name": cfg.name, "steps": step, "data_dir": str(cfg.data_dir),
                                              "extra_data_dirs": [str(d) for d in cfg.extra_data_dirs],
                                              "data_weights": list(cfg.data_weights),
                                              "batch_size": cfg.batch_size, "segment_s": cfg.segment_s}})
