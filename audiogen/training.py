"""Training the conditioned LM with Accelerate: the pieces ``recipes/train_lm.py`` calls.

One process or many (DDP, FSDP, several nodes) run the same plain loop:

- data: :mod:`audiogen.data` crops, sample ``i`` a function of ``(seed, i)``; step ``s``
  takes samples ``[s * batch_size, (s + 1) * batch_size)`` whatever the number of
  processes (``batch_size`` is the *global* batch, split over processes and ``grad_accum``);
- loss: per-codebook cross-entropy on the delay pattern (input ``[BOS, pattern[:-1]]``,
  target ``pattern``; the pattern's special positions and padding are masked), averaged
  over the global batch's valid tokens of each codebook, then over codebooks;
- AdamW, linear warmup then cosine decay to ``min_lr_ratio * lr``, gradient clipping,
  bf16 autocast on GPUs that have it (fp32 on CPU);
- checkpoints (``save_state`` + the step) every ``save_every`` steps, written to a
  temporary folder and renamed (a ``kill -9`` never leaves half a checkpoint), last
  ``keep_checkpoints`` kept; rerunning the same command resumes bit-exactly;
- SIGTERM/SIGUSR1 or an ``OUT_DIR/STOP`` file: checkpoint at the end of the step, exit 0;
- the model directory (``OUT_DIR/model``, :func:`audiogen.checkpoint.save_model_dir`) is
  exported at every checkpoint and at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiogen.errors import AudiogenError, yaml_problem

# ------------------------------------------------------------------------------ config


@dataclass
class TrainConfig:
    """Everything an LM training run needs; YAML keys are these field names."""

    name: str = "audiogen-lm"
    # data
    data_dir: str = ""
    #: codec folder the dataset was tokenized with, when it is not a named codec (tiny, encodec_*)
    codec: str = ""
    segment_s: float = 10.0
    num_workers: int = 0
    # model
    model: str = "tiny"  #: named LM config (audiogen.lm.NAMED_CONFIGS)
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
    progress: bool = True
    #: testing only: SIGKILL this process right after this step (0 = never)
    kill_at_step: int = 0
    #: testing only: the rank kill_at_step kills (-1 = every rank)
    kill_rank: int = -1

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


DROPOUT_KEYS = ("p_drop_attr", "p_drop_text", "p_drop_all")

#: keys that must not change when a run is resumed (they change what the steps compute)
RESUME_KEYS = ("data_dir", "seed", "batch_size", "segment_s", "model", "lm", "conditioner", "vocab_min_count",
               "bpm_buckets", "init_from")


def read_config(cls, path: str | os.PathLike | None, overrides: list[str] = ()):
    """A config dataclass ``cls`` from a YAML file plus ``key=value`` overrides.

    Overrides are YAML values; nested keys use a dot (``lm.dim=128``). Unknown keys and
    values of the wrong type raise :class:`AudiogenError` naming the key. Shared by the
    LM and codec recipes.
    """
    import yaml

    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise AudiogenError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise AudiogenError(f"{p}: invalid YAML ({yaml_problem(e)})") from None
        except UnicodeDecodeError:
            raise AudiogenError(f"{p}: not a UTF-8 text file") from None
        if not isinstance(data, dict):
            raise AudiogenError(f"{p}: expected a mapping of config keys")
    for item in overrides:
        if "=" not in item:
            raise AudiogenError(f"override '{item}' is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw  # not YAML: a plain string
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise AudiogenError(f"override '{item}': '{part}' is not a section")
        node[leaf] = value
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = set(data) - set(known)
    if unknown:
        raise AudiogenError(f"unknown config keys: {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    defaults = cls()
    for k, v in list(data.items()):
        want = type(getattr(defaults, k))
        if want is float and isinstance(v, str):
            try:  # PyYAML reads 1e-3 (no dot) as a string
                v = float(v)
            except ValueError:
                pass
        if want is tuple and isinstance(v, list):
            v = tuple(v)
        if want is str and v is None:
            v = ""
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool)) if want is float else (
            isinstance(v, want) and (want is bool or not isinstance(v, bool)))
        if not ok:
            raise AudiogenError(f"config key {k}: expected {want.__name__}, got {v!r}")
        data[k] = float(v) if want is float else v
    return cls(**data)


def check_resumable(out: Path, new: dict, keys: tuple[str, ...]) -> None:
    """Refuse to continue the run in ``out`` when its saved ``config.yaml`` differs in ``keys``."""
    import yaml

    cfg_file = Path(out) / "config.yaml"
    if not cfg_file.is_file():
        return
    old = yaml.safe_load(cfg_file.read_text()) or {}
    changed = [k for k in keys if k in old and old[k] != new.get(k)]
    if changed:
        raise AudiogenError(f"{out} holds a run with different {', '.join(changed)}; use another out_dir")


def recipe_main(description: str, load, run, argv: list[str] | None = None, config_help: str = "YAML config") -> int:
    """A recipe's command line, ``--config FILE [key=value ...]``: ``run(load(config, overrides))``.

    User errors (:class:`AudiogenError`) print one line and return 1.
    """
    import argparse
    import sys

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. max_steps=100")
    args = p.parse_args(argv)
    try:
        return run(load(args.config, args.overrides))
    except AudiogenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def load_train_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config and apply ``key=value`` overrides (YAML values; ``lm.dim=128`` for nested keys)."""
    cfg = read_config(TrainConfig, path, overrides)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    from audiogen.conditioning import ConditionerConfig
    from audiogen.lm import LMConfig, NAMED_CONFIGS

    if not cfg.data_dir:
        raise AudiogenError("data_dir is not set (a folder made by 'audiogen prep')")
    if cfg.model not in NAMED_CONFIGS:
        raise AudiogenError(f"model={cfg.model!r}: valid names are {', '.join(NAMED_CONFIGS)}")
    for section, cls in (("lm", LMConfig), ("conditioner", ConditionerConfig)):
        names = {f.name for f in dataclasses.fields(cls)}
        bad = set(getattr(cfg, section)) - names
        if bad:
            raise AudiogenError(f"unknown {section} keys: {', '.join(sorted(bad))} (known: {', '.join(sorted(names))})")
    if set(cfg.lm) & {"num_codebooks", "cardinality", "cond_dim"}:
        raise AudiogenError("lm.num_codebooks/cardinality come from the dataset's codec and lm.cond_dim from "
                            "conditioner.dim; leave them out")
    checks = [
        (cfg.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.grad_accum >= 1, "grad_accum must be >= 1"),
        (cfg.batch_size % cfg.grad_accum == 0, f"batch_size={cfg.batch_size} must be divisible by "
                                               f"grad_accum={cfg.grad_accum}"),
        (cfg.max_steps >= 1, "max_steps must be >= 1"),
        (cfg.segment_s > 0, "segment_s must be > 0"),
        (cfg.lr > 0, "lr must be > 0"),
        (0 <= cfg.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
        (cfg.warmup_steps >= 0, "warmup_steps must be >= 0"),
        (len(cfg.betas) == 2, "betas must be two numbers"),
        (cfg.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
        (cfg.mixed_precision in ("auto", "no", "bf16", "fp16"), "mixed_precision must be auto, no, bf16 or fp16"),
        (cfg.log_every >= 1, "log_every must be >= 1"),
        (cfg.save_every >= 1, "save_every must be >= 1"),
        (cfg.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (cfg.eval_every >= 0, "eval_every must be >= 0"),
        (cfg.export_dtype in ("float16", "bfloat16", "float32"), "export_dtype must be float16, bfloat16 or float32"),
        (cfg.num_workers >= 0, "num_workers must be >= 0"),
        (cfg.num_threads >= 0, "num_threads must be >= 0 (0 = torch's default)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise AudiogenError(msg)


def resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


# ------------------------------------------------------------------------------ processes and checkpoints


def make_accelerator(**kwargs):
    """An ``Accelerator`` that joins the job its launcher started.

    On a machine without a GPU, ``accelerate launch --multi_gpu`` and ``torchrun`` start N
    processes that a plain ``Accelerator()`` turns into N independent single-process runs
    (each "rank 0 of 1", all writing the same folders). With ``cpu=True`` they form one
    gloo job instead. A launched process that still finds itself alone is refused.
    """
    from accelerate import Accelerator

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    acc = Accelerator(cpu=launched > 1 and not torch.cuda.is_available(), **kwargs)
    if launched > 1 and acc.num_processes != launched:
        raise AudiogenError(f"the launcher started {launched} processes but they did not form one job "
                            f"(this one is rank {acc.process_index} of {acc.num_processes})")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and acc.distributed_type.value != "FSDP":
        # Accelerate enables FSDP only on accelerators; on CPU it would quietly run DDP instead
        raise AudiogenError(f"an FSDP launch config, but Accelerate runs FSDP only on GPUs (here: "
                            f"{acc.distributed_type.value} on {acc.device}); use a DDP config on this machine")
    return acc


def process_record(accelerator, step: int) -> dict:
    """What every rank sees of the job (rank, world size, host, pid, device), gathered to one log line.

    A collective: every rank calls it. ``{"step": step, "event": "start", "processes": [...]}``.
    """
    import socket

    from accelerate.utils import gather_object

    me = {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
          "local_rank": accelerator.local_process_index, "host": socket.gethostname(), "pid": os.getpid(),
          "device": str(accelerator.device), "distributed_type": str(accelerator.distributed_type.value)}
    everyone = gather_object([me]) if accelerator.num_processes > 1 else [me]
    return {"step": step, "event": "start", "processes": sorted(everyone, key=lambda r: r["rank"])}


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete ``root/step_NNNNNNN`` (one with ``trainer.json``), or None.

    Only complete checkpoints carry that name: they are assembled in ``.tmp-step_*`` and
    renamed once every rank's files and then ``trainer.json`` are on disk.
    """
    ckpts = sorted(p for p in Path(root).glob("step_*") if (p / "trainer.json").is_file())
    return ckpts[-1] if ckpts else None


def resume_point(accelerator, root: Path) -> Path | None:
    """:func:`latest_checkpoint`, checked to be the same on every rank (a collective).

    Ranks that see different checkpoints (several nodes without a shared ``out_dir``) are
    refused before anything is loaded or written.
    """
    latest = latest_checkpoint(root)
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        seen = gather_object([latest.name if latest else None])
        if len(set(seen)) > 1:
            raise AudiogenError(f"the ranks see different checkpoints in {root} ({', '.join(map(str, seen))}): "
                                "out_dir must be one folder shared by every node")
    return latest


def rank_state_file(ckpt: Path, rank: int) -> Path:
    return Path(ckpt) / f"rank_state_{rank}.pt"


def save_checkpoint(accelerator, root: Path, step: int, keep: int, extra: dict | None = None,
                    rank_state: dict | None = None, write=None) -> Path:
    """Save a checkpoint with N ranks so that a ``kill -9`` of any rank at any moment leaves a resumable run.

    A collective: every rank calls it at the same step. The order:

    1. the main process removes a temp folder left by a killed save and creates a fresh one;
    2. every rank writes what it owns into it: ``save_state`` (the model and optimizer by the
       main process, or each rank its shard under FSDP; ``random_states_{rank}.pkl`` by each
       rank) and ``rank_state`` (this rank's own state, e.g. a loss balancer's statistics)
       as ``rank_state_{rank}.pt``;
    3. once every rank is done, the main process writes ``trainer.json``
       (``{"step": step, "world_size": N, **extra}``), the marker of a complete checkpoint,
       last; renames the folder to ``step_NNNNNNN``; and prunes to the newest ``keep``
       (each old one renamed away first, so a half-deleted folder never looks complete).

    A kill before the rename leaves only a ``.tmp-*`` folder, which resume ignores.
    ``accelerator`` may be any Accelerate state object (``PartialState`` too: the torchrun
    FSDP2 path of :mod:`audiogen.fsdp`) with ``write(folder)`` replacing ``save_state``.
    """
    root = Path(root)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in [*root.glob(".tmp-step_*"), *root.glob(".del-step_*")]:  # left by a kill mid-save
            shutil.rmtree(stale)
        tmp.mkdir()
    accelerator.wait_for_everyone()  # (1) the empty folder exists for everyone
    if write is None:
        accelerator.save_state(str(tmp))
    else:
        write(tmp)
    if rank_state is not None:
        torch.save(rank_state, rank_state_file(tmp, accelerator.process_index))
    accelerator.wait_for_everyone()  # (2) every rank's files are on disk
    if accelerator.is_main_process:
        from audiogen.audio import atomic_write_text

        atomic_write_text(tmp / "trainer.json", json.dumps({"step": step, "world_size": accelerator.num_processes,
                                                            **(extra or {})}))
        if final.exists():  # the same step saved by a run killed after its rename
            _remove_dir(final)
        os.replace(tmp, final)
        old = sorted(p for p in root.glob("step_*") if p != final)
        for p in old[: max(0, len(old) - (keep - 1))]:
            _remove_dir(p)
    accelerator.wait_for_everyone()  # (3) nobody moves on (or is killed by a test) before the rename
    return final


def load_rank_state(ckpt: Path, rank: int) -> dict | None:
    """This rank's ``rank_state`` from a checkpoint (None when it has none, e.g. a different world size)."""
    f = rank_state_file(ckpt, rank)
    return torch.load(f, weights_only=True) if f.is_file() else None


def _remove_dir(path: Path) -> None:
    """Rename out of the ``step_*`` namespace first, then delete: a kill mid-delete leaves no torn checkpoint."""
    doomed = path.with_name(f".del-{path.name}")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


# ------------------------------------------------------------------------------ model


class ConditionedLM(nn.Module):
    """LM + condition encoder as one module (one DDP/FSDP wrap, one ``save_state`` entry).

    ``forward(tokens: LongTensor[B, K, S], conds: list[Conditions]) -> logits: FloatTensor[B, K, S, card]``
    """

    def __init__(self, lm: nn.Module, conditioner: nn.Module):
        super().__init__()
        self.lm = lm
        self.conditioner = conditioner

    def forward(self, tokens: torch.Tensor, conds) -> torch.Tensor:
        cond, mask = self.conditioner(conds)
        return self.lm(tokens, cond, mask)


def codec_spec(desc: dict, codec_path: str = "") -> tuple[str, object | None]:
    """Where the model directory finds the dataset's codec: (spec, codec object to copy in or None).

    Named codecs (``encodec_24khz``, ``tiny``) are recorded by name. A codec folder (the
    ``codec`` config key) is loaded, checked against the dataset's description, and copied
    into the model directory.
    """
    from audiogen.codec import PRETRAINED_FILES, load_codec

    name = str(desc.get("name", ""))
    if codec_path:
        codec = load_codec(codec_path, num_codebooks=desc.get("num_codebooks"))
        got = codec.describe()
        diff = [k for k in ("sample_rate", "num_codebooks", "cardinality", "weights_sha256") if got.get(k) != desc.get(k)]
        if diff:
            raise AudiogenError(f"codec={codec_path} is not the codec the dataset was tokenized with "
                                f"({', '.join(diff)} differ)")
        return "codec", codec
    if name in PRETRAINED_FILES:
        return name, None
    if name == "tiny-seed0" and desc.get("weights_sha256") is None:
        return "tiny", None
    raise AudiogenError(f"the dataset was tokenized with codec '{name}', which is not a named codec: set "
                        "codec=PATH to the codec folder it was prepared with")


def build_conditioner_config(cfg: TrainConfig, train_ds):
    """ConditionerConfig with vocabularies from the train split (values seen >= ``vocab_min_count`` times)."""
    from audiogen.conditioning import ConditionerConfig, bpm_bucket_centres, build_vocab

    c = ConditionerConfig.from_dict(dict(cfg.conditioner))
    cols = train_ds.select_columns(["genre", "mood", "key", "instruments"])
    c.genres = build_vocab(cols["genre"], cfg.vocab_min_count)
    c.moods = build_vocab(cols["mood"], cfg.vocab_min_count)
    c.keys = build_vocab(cols["key"], cfg.vocab_min_count)
    c.instruments = build_vocab(cols["instruments"], cfg.vocab_min_count)
    c.bpm_buckets = bpm_bucket_centres(n=cfg.bpm_buckets) if cfg.bpm_buckets > 1 else []
    return c


def build_model(cfg: TrainConfig, train_ds, codec_desc: dict, saved: dict | None = None):
    """(lm, conditioner) for a run: from ``init_from``, ``saved`` configs (a resumed run), or the config.

    Returns modules in float32 on CPU.
    """
    from audiogen.conditioning import ConditionEncoder, ConditionerConfig
    from audiogen.lm import LM, LMConfig, named_config

    K, card = int(codec_desc["num_codebooks"]), int(codec_desc["cardinality"])
    if cfg.init_from:  # also when resuming: its text encoder may live inside the model dir
        from audiogen.checkpoint import load_model, read_config

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
    from audiogen.patterns import DelayPattern

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


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; matrices (linear and embedding weights) decay, biases and norms do not."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


@torch.no_grad()
def evaluate(model, accelerator, valid_ds, segment_frames: int, special: int, batch: int, max_rows: int) -> dict:
    """Per-codebook perplexity on fixed valid crops (no RNG used; every process runs the same number of batches)."""
    from audiogen.data import eval_batches

    was_training = model.training
    model.eval()
    sums = counts = None
    try:
        for b in eval_batches(valid_ds, segment_frames, special, batch, max_rows,
                              accelerator.num_processes, accelerator.process_index):
            b = b.to(accelerator.device)
            inputs, targets, tmask = delay_inputs(b.codes, b.mask, special)
            s, c = codebook_ce_sums(model(inputs, b.conds), targets, tmask)
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


def truncate_log(path: Path, step: int) -> None:
    """Keep the JSONL log lines of steps <= ``step`` (a resumed run rewrites what came after)."""
    from audiogen.audio import atomic_write_text

    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by kill -9
            continue
        if rec.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(x + "\n" for x in kept))


class _Stop:
    """Set by SIGTERM/SIGUSR1 (SLURM's warning signals) or by an ``OUT_DIR/STOP`` file."""

    def __init__(self, stop_file: Path):
        self.requested = False
        self.stop_file = stop_file

    def __call__(self, signum, frame):
        self.requested = True

    def poll(self, accelerator) -> bool:
        local = self.requested or self.stop_file.exists()
        if accelerator.num_processes > 1:  # every rank must stop (and save) at the same step
            flag = torch.tensor(float(local), device=accelerator.device)
            local = bool(accelerator.reduce(flag, reduction="sum") > 0)
        return local


def train(cfg: TrainConfig) -> int:
    """Run (or resume) the training described by ``cfg``; returns the exit status."""
    import yaml
    from accelerate.utils import set_seed

    from audiogen.audio import atomic_write_text, make_dir
    from audiogen.data import CropDataset, dataset_codec, load_prepared, make_loader

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out_dir)
    ckpt_root = out / "checkpoints"
    accelerator = make_accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
                                   log_with="tensorboard", project_dir=str(out))
    world = accelerator.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise AudiogenError(f"batch_size={cfg.batch_size} must be divisible by processes x grad_accum = "
                            f"{world} x {cfg.grad_accum}")

    cfg_file, build_file = out / "config.yaml", out / "build.json"
    check_resumable(out, cfg.to_dict(), RESUME_KEYS)

    dd = load_prepared(cfg.data_dir)
    train_ds, valid_ds = dd["train"], dd["valid"]
    desc = dataset_codec(train_ds)
    spec, codec_obj = codec_spec(desc, cfg.codec)
    frames = max(1, round(cfg.segment_s * float(desc["frame_rate"])))

    latest = resume_point(accelerator, ckpt_root)
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
        atomic_write_text(cfg_file, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_text(build_file, json.dumps({"lm": lm.cfg.to_dict(), "conditioner": conditioner.cfg.to_dict(),
                                                  "codec": desc, "segment_frames": frames}, indent=2))
    model = ConditionedLM(lm, conditioner)
    optimizer = make_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)

    start = 0
    if latest is not None:
        accelerator.load_state(str(latest))
        start = json.loads((latest / "trainer.json").read_text())["step"]
        accelerator.print(f"resuming from {latest} (step {start})")
    started = process_record(accelerator, start)
    if accelerator.is_main_process:
        truncate_log(out / "log.jsonl", start)
        with open(out / "log.jsonl", "a") as f:  # who ran: each rank's own view of the job
            f.write(json.dumps(started) + "\n")
    accelerator.print(f"{accelerator.num_processes} process(es), {accelerator.distributed_type.value}, "
                      f"on {accelerator.device}")

    dataset = CropDataset(train_ds, frames, special, cfg.seed, drop=conditioner.cfg)
    loader = make_loader(dataset, start, cfg.max_steps, cfg.batch_size, world, accelerator.process_index,
                         cfg.grad_accum, cfg.num_workers)
    ctx = _Run(cfg, accelerator, model, optimizer, loader, out, ckpt_root, special, frames, valid_ds,
               {"spec": spec, "num_codebooks": K, "describe": desc}, codec_obj)
    stop = _Stop(out / "STOP")
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return ctx.loop(start, stop)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class _Run:
    cfg: TrainConfig
    accelerator: object
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: object
    out: Path
    ckpt_root: Path
    special: int
    frames: int
    valid_ds: object
    codec_info: dict
    codec_obj: object

    def loop(self, start: int, stop: _Stop) -> int:
        from audiogen.progress import progress_bar

        from audiogen.curves import redraw

        cfg, acc = self.cfg, self.accelerator
        acc.init_trackers("tensorboard")
        self.model.train()
        log_file = self.out / "log.jsonl"
        bar = progress_bar(total=cfg.max_steps, initial=start, desc="lm", dynamic_ncols=True,
                   disable=not (acc.is_main_process and cfg.progress))
        batches = iter(self.loader)
        t_last, tokens_since = time.perf_counter(), 0
        step = start
        for step in range(start, cfg.max_steps):
            micro = [next(batches) for _ in range(cfg.grad_accum)]
            stats = train_step(self.model, self.optimizer, acc, micro, step, cfg, self.special)
            done = step + 1
            tokens_since += cfg.batch_size * self.frames * self.codec_info["num_codebooks"]
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                now = time.perf_counter()
                stats["tokens_per_s"] = tokens_since / max(now - t_last, 1e-9)
                t_last, tokens_since = now, 0
                acc.log(stats, step=done)
                if acc.is_main_process:
                    with open(log_file, "a") as f:
                        f.write(json.dumps({"step": done, **stats}) + "\n")
                bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}")
            if cfg.eval_every and done % cfg.eval_every == 0:
                scores = evaluate(self.model, acc, self.valid_ds, self.frames, self.special,
                                  max(1, cfg.batch_size // (acc.num_processes * cfg.grad_accum)), cfg.eval_rows)
                if scores:
                    acc.log(scores, step=done)
                    if acc.is_main_process:
                        with open(log_file, "a") as f:
                            f.write(json.dumps({"step": done, **scores}) + "\n")
                        ppl = ", ".join(f"{scores[f'eval/ppl_{k}']:.1f}" for k in range(self.codec_info["num_codebooks"]))
                        bar.write(f"step {done}: valid perplexity per codebook {ppl}")
            stopping = stop.poll(acc)
            if done % cfg.save_every == 0 or done == cfg.max_steps or stopping:
                # the data position is the step: samples [0, done * batch_size) have been seen
                save_checkpoint(acc, self.ckpt_root, done, cfg.keep_checkpoints,
                                extra={"samples_seen": done * cfg.batch_size})
                self.export(done)
                if acc.is_main_process:
                    redraw(log_file, bar.write)
            if cfg.kill_at_step and done == cfg.kill_at_step and cfg.kill_rank in (-1, acc.process_index):
                os.kill(os.getpid(), signal.SIGKILL)  # tests: an abrupt death mid-run
            if stopping:
                bar.close()
                acc.end_training()
                if acc.is_main_process and stop.stop_file.exists():
                    stop.stop_file.unlink()
                acc.print(f"stop requested: checkpoint saved at step {done}; rerun the same command to resume")
                return 0
            step = done
        bar.close()
        acc.end_training()
        if start >= cfg.max_steps:
            acc.print(f"nothing to do: {self.out} already trained {start} steps (max_steps={cfg.max_steps})")
        else:
            acc.print(f"trained {step} steps; model exported to {self.out / 'model'}")
        return 0

    def export(self, step: int) -> Path:
        """``OUT_DIR/model``: a model directory ``audiogen generate --model`` loads."""
        acc, cfg = self.accelerator, self.cfg
        path = self.out / "model"
        state = acc.get_state_dict(self.model)  # gathers FSDP shards (a collective: every rank calls it)
        if acc.is_main_process:
            export_model(acc.unwrap_model(self.model), state, path, self.codec_info, self.codec_obj, cfg, step,
                         self.frames / float(self.codec_info["describe"]["frame_rate"]))
        acc.wait_for_everyone()
        return path


def train_step(model, optimizer, acc, micro: list, step: int, cfg: TrainConfig, special: int) -> dict:
    """One optimizer step over this process's micro-batches (``audiogen.data.Batch``, ``grad_accum`` of them).

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
        prepared.append((inputs, targets, tmask, b.conds))
    # the loss is a mean over the *global* batch's valid tokens of each codebook, so it
    # (and its gradient) is the same for any number of processes and accumulation steps
    counts = acc.reduce(counts, "sum").clamp(min=1)
    K = counts.shape[0]
    ce_total = torch.zeros(K, device=acc.device)
    for i, (inputs, targets, tmask, conds) in enumerate(prepared):
        sync = i == len(prepared) - 1
        ctx = contextlib.nullcontext() if sync else acc.no_sync(model)
        with ctx:
            logits = model(inputs, conds)
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
                 step: int, window_s: float) -> Path:
    """Write the model directory from a full ``state`` dict (``lm.*``, ``conditioner.*``) without moving the RNG."""
    from audiogen.checkpoint import save_model_dir
    from audiogen.conditioning import ConditionEncoder
    from audiogen.lm import LM

    with torch.random.fork_rng(devices=[]):  # fresh modules draw init weights; training's RNG must not move
        lm = LM(model.lm.cfg)
        cond = ConditionEncoder(model.conditioner.cfg, text_encoder=model.conditioner.text_encoder)
    for prefix, module in (("lm.", lm), ("conditioner.", cond)):
        module.load_state_dict({k[len(prefix):]: v.detach().cpu().float() if v.is_floating_point() else v.cpu()
                                for k, v in state.items() if k.startswith(prefix)})
    dtype = getattr(torch, cfg.export_dtype)
    return save_model_dir(path, lm, cond, codec_info, codec=codec_obj, dtype=None if dtype == torch.float32 else dtype,
                          generation={"window_s": round(window_s, 3)},
                          extra={"training": {"name": cfg.name, "steps": step, "data_dir": str(cfg.data_dir),
                                              "batch_size": cfg.batch_size, "segment_s": cfg.segment_s}})
