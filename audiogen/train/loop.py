"""The training loop both trainers run (the LM, :mod:`audiogen.train.lm`; the codec,
:mod:`audiogen.train.codec`) and what it stands on: recipe configs, the Accelerate job,
checkpoints, resume and stop requests. Each trainer supplies its step, evaluation and export.

:func:`run_loop` runs steps ``start .. max_steps`` of a :class:`Trainer`, one plain loop on
1 or N processes:

- logging every ``log_every`` steps: TensorBoard (``OUT_DIR/tensorboard``) and one JSON line
  per logged step in ``OUT_DIR/log.jsonl`` (main process only); evaluation every ``eval_every``;
- a checkpoint every ``save_every`` steps and at the end (:func:`save_checkpoint`: every rank
  writes its part into a temporary folder that is renamed once complete, so a ``kill -9``
  never leaves half a checkpoint; the newest ``keep_checkpoints`` kept), then an export and
  ``OUT_DIR/curves.png`` redrawn;
- SIGTERM, SIGUSR1 (SLURM's warning signal) or a file ``OUT_DIR/STOP``: every rank stops at
  the same step after a checkpoint, and the run exits 0;
- resume: rerunning the same command continues from the newest complete checkpoint
  (:func:`resume_point`, :func:`restore`) after :func:`check_resumable` compared the config
  keys that fix a run (the config class's ``RESUME_KEYS``) with the saved ``config.yaml``.

Tests kill a rank at a chosen step with ``AUDIOGEN_TEST_KILL_AT_STEP=N`` (and
``AUDIOGEN_TEST_KILL_RANK=R``, default every rank): an abrupt death right after step N.
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
from pathlib import Path
from typing import Protocol

import torch

from audiogen.errors import AudiogenError, yaml_problem

#: environment variables of the tests' kill hook (see the module docstring)
KILL_AT_STEP_ENV, KILL_RANK_ENV = "AUDIOGEN_TEST_KILL_AT_STEP", "AUDIOGEN_TEST_KILL_RANK"

# ------------------------------------------------------------------------------ configs and recipes


def config_from_yaml(cls, path: str | os.PathLike | None, overrides: list[str] = ()):
    """A config dataclass ``cls`` from a YAML file plus ``key=value`` overrides, checked key by key.

    Overrides are YAML values; nested keys use a dot (``lm.dim=128``). Unknown keys and
    values of the wrong type raise :class:`AudiogenError` naming the key.
    """
    data = _read_yaml_mapping(path)
    for item in overrides:
        _apply_override(data, item)
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
        if want is list and isinstance(v, (str, int, float)) and not isinstance(v, bool) and v != "":
            v = [v]  # one item given as key=value
        if want is str and v is None:
            v = ""
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool)) if want is float else (
            isinstance(v, want) and (want is bool or not isinstance(v, bool)))
        if not ok:
            raise AudiogenError(f"config key {k}: expected {want.__name__}, got {v!r}")
        data[k] = float(v) if want is float else v
    return cls(**data)


def _read_yaml_mapping(path: str | os.PathLike | None) -> dict:
    import yaml

    if path is None:
        return {}
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
    return data


def _apply_override(data: dict, item: str) -> None:
    import yaml

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


def load_config(cls, path: str | os.PathLike | None, overrides: list[str] = ()):
    """:func:`config_from_yaml`, then the config's own ``validate()`` (impossible values are user errors)."""
    cfg = config_from_yaml(cls, path, overrides)
    cfg.validate()
    return cfg


def recipe_main(description: str, config_cls, run, argv: list[str] | None = None,
                config_help: str = "YAML config") -> int:
    """A recipe's command line, ``--config FILE [key=value ...]``: ``run(load_config(config_cls, ...))``.

    User errors (:class:`AudiogenError`) print one line and return 1.
    """
    import argparse
    import sys

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. max_steps=100")
    args = p.parse_args(argv)
    try:
        return run(load_config(config_cls, args.config, args.overrides))
    except AudiogenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def check_resumable(cfg) -> None:
    """Refuse to continue the run in ``cfg.out_dir`` when its saved ``config.yaml`` differs in ``cfg.RESUME_KEYS``."""
    import yaml

    out = Path(cfg.out_dir)
    cfg_file = out / "config.yaml"
    if not cfg_file.is_file():
        return
    old = yaml.safe_load(cfg_file.read_text()) or {}
    new = cfg.to_dict()
    changed = [k for k in cfg.RESUME_KEYS if k in old and old[k] != new.get(k)]
    if changed:
        raise AudiogenError(f"{out} holds a run with different {', '.join(changed)}; use another out_dir")


def lr_at(step: int, cfg) -> float:
    """Linear warmup over ``cfg.warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# ------------------------------------------------------------------------------ processes


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


# ------------------------------------------------------------------------------ checkpoints


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


def restore(accelerator, ckpt: Path | None) -> int:
    """Load ``ckpt`` (Accelerate's ``save_state``: models, optimizers, each rank's RNG) and return its step.

    ``None`` (a fresh run) loads nothing and returns 0. A collective under FSDP.
    """
    if ckpt is None:
        return 0
    accelerator.load_state(str(ckpt))
    start = json.loads((ckpt / "trainer.json").read_text())["step"]
    accelerator.print(f"resuming from {ckpt} (step {start})")
    return start


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
    FSDP2 path of :mod:`audiogen.train.fsdp`) with ``write(folder)`` replacing ``save_state``.
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
        from audiogen.files import atomic_write_text

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


# ------------------------------------------------------------------------------ log and stop requests


def truncate_log(path: Path, step: int) -> None:
    """Keep the JSONL log lines of steps <= ``step`` (a resumed run rewrites what came after)."""
    from audiogen.files import atomic_write_text

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


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


class StopRequest:
    """Set by SIGTERM or SIGUSR1 (SLURM's warning signals) or by an ``OUT_DIR/STOP`` file."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, stop_file: Path):
        self.signal_name: str | None = None
        self.stop_file = stop_file

    def __call__(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    @contextlib.contextmanager
    def installed(self):
        """The signal handlers, in place for the ``with`` block; the previous ones restored after."""
        previous = {s: signal.signal(s, self) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def poll(self, accelerator) -> bool:
        """Whether any rank was asked to stop (a collective: every rank must stop, and save, at the same step)."""
        local = self.signal_name is not None or self.stop_file.exists()
        if accelerator.num_processes > 1:
            flag = torch.tensor(float(local), device=accelerator.device)
            local = bool(accelerator.reduce(flag, reduction="sum") > 0)
        return local

    def reason(self) -> str:
        if self.signal_name:
            return self.signal_name
        return "STOP file" if self.stop_file.exists() else "stop requested on another rank"


def _test_kill_step(rank: int) -> int:
    """The step after which the tests' kill hook SIGKILLs this rank (0 = never)."""
    at = int(os.environ.get(KILL_AT_STEP_ENV) or 0)
    who = int(os.environ.get(KILL_RANK_ENV) or -1)
    return at if who in (-1, rank) else 0


# ------------------------------------------------------------------------------ the loop


class Trainer(Protocol):
    """What a trainer supplies to :func:`run_loop`. Every method runs on every rank."""

    name: str  #: progress bar label
    progress: bool  #: draw a progress bar (main process only)
    global_batch: int  #: samples per optimizer step over all processes (``samples_seen`` in ``trainer.json``)
    tokens_per_step: int  #: audio tokens per optimizer step, logged as ``tokens_per_s`` (0 = not logged)
    export_dir: Path  #: where :meth:`export` writes

    def step(self, step: int) -> dict:
        """Train optimizer step ``step`` (0-based) on its batches; the figures to log."""

    def bar_figures(self, stats: dict) -> dict:
        """A few of ``stats``, formatted for the progress bar."""

    def evaluate(self, step: int) -> tuple[dict, str]:
        """Figures to log (``{}``: nothing on this rank) and a line to print."""

    def rank_state(self) -> dict | None:
        """This rank's own state to checkpoint beside Accelerate's (``rank_state_{rank}.pt``), or None."""

    def export(self, step: int) -> Path:
        """Write the usable result (``export_dir``) after ``step`` steps (a collective)."""


def run_loop(accelerator, cfg, trainer: Trainer, start: int) -> int:
    """Train ``trainer`` from step ``start`` (a resumed run's checkpoint step, else 0) to ``cfg.max_steps``.

    ``cfg`` gives ``out_dir``, ``max_steps``, ``log_every``, ``eval_every``, ``save_every`` and
    ``keep_checkpoints``. A collective: every rank calls it. Returns the exit status, 0 also
    after a stop request (the run is checkpointed and resumes when rerun).
    """
    out = Path(cfg.out_dir)
    with StopRequest(out / "STOP").installed() as stop:
        started = process_record(accelerator, start)
        if accelerator.is_main_process:
            truncate_log(out / "log.jsonl", start)  # a resumed run rewrites what came after its checkpoint
            _append_log(out / "log.jsonl", started)  # who ran: each rank's own view of the job
        accelerator.print(f"{accelerator.num_processes} process(es), {accelerator.distributed_type.value}, "
                          f"on {accelerator.device}")
        accelerator.init_trackers("tensorboard")  # OUT_DIR/tensorboard
        return _steps(accelerator, cfg, trainer, start, stop)


def _steps(acc, cfg, trainer: Trainer, start: int, stop: StopRequest) -> int:
    from audiogen.progress import progress_bar
    from audiogen.train.curves import redraw

    out = Path(cfg.out_dir)
    log_file = out / "log.jsonl"
    bar = progress_bar(total=cfg.max_steps, initial=start, desc=trainer.name, dynamic_ncols=True,
                       disable=not (acc.is_main_process and trainer.progress))
    kill_step = _test_kill_step(acc.process_index)
    t_last, step_last = time.perf_counter(), start
    step = start
    for step in range(start, cfg.max_steps):
        stats = trainer.step(step)
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            if trainer.tokens_per_step:
                now = time.perf_counter()
                stats["tokens_per_s"] = (done - step_last) * trainer.tokens_per_step / max(now - t_last, 1e-9)
                t_last, step_last = now, done
            acc.log(stats, step=done)
            if acc.is_main_process:
                _append_log(log_file, {"step": done, **stats})
            bar.set_postfix(trainer.bar_figures(stats))
        if cfg.eval_every and done % cfg.eval_every == 0:
            scores, line = trainer.evaluate(done)
            if scores:
                acc.log(scores, step=done)
                if acc.is_main_process:
                    _append_log(log_file, {"step": done, **scores})
                    bar.write(line)
        stopping = stop.poll(acc)
        if done % cfg.save_every == 0 or done == cfg.max_steps or stopping:
            save_checkpoint(acc, out / "checkpoints", done, cfg.keep_checkpoints,
                            extra={"samples_seen": done * trainer.global_batch}, rank_state=trainer.rank_state())
            trainer.export(done)  # a usable result at every checkpoint
            if acc.is_main_process:
                redraw(log_file, bar.write)
        if done == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)  # tests: an abrupt death mid-run
        if stopping:
            bar.close()
            acc.end_training()
            reason = stop.reason()
            if acc.is_main_process and stop.stop_file.exists():
                stop.stop_file.unlink()
            acc.print(f"{reason}: checkpoint saved at step {done}; rerun the same command to resume")
            return 0
        step = done
    bar.close()
    if start >= cfg.max_steps:
        # a finished run rerun: export its last checkpoint again, in case a kill cut the export after it
        trainer.export(start)  # a collective: before end_training ends the job
        acc.print(f"nothing to do: {out} already trained {start} steps (max_steps={cfg.max_steps}); "
                  f"exported to {trainer.export_dir}")
    else:
        acc.print(f"trained {step} steps; exported to {trainer.export_dir}")
    acc.end_training()
    return 0
