"""Shared helpers for the multi-process tests: launching real ranks on this CPU and checking that they ran."""

from __future__ import annotations

import json
import os
import random
import socket
import sys
from pathlib import Path

from listening_helpers import free_port

#: seconds one recipe run in a subprocess may take (starting the Pythons that import torch is most of it);
#: raise it on a heavily loaded machine
LAUNCH_TIMEOUT_S = float(os.environ.get("AUDIOGEN_TEST_LAUNCH_TIMEOUT_S", "600"))


def kill_env(step: int, rank: int = -1) -> dict[str, str]:
    """The environment of the training loop's test hook: SIGKILL rank ``rank`` (-1: every rank) right after
    step ``step`` (``audiogen.train.loop``)."""
    from audiogen.train.loop import KILL_AT_STEP_ENV, KILL_RANK_ENV

    return {KILL_AT_STEP_ENV: str(step), KILL_RANK_ENV: str(rank)}


def free_port_in(lo: int, hi: int) -> int:
    """A TCP port in ``[lo, hi)`` nobody listens on now (SLURM's script derives its port from the job id)."""
    for _ in range(200):
        port = random.randrange(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{lo}, {hi})")


def two_ranks() -> list[str]:
    """``accelerate launch`` of 2 processes on this CPU: one gloo job (the recipes pass cpu=True without a GPU)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


def node_launcher(machine_rank: int, port: int, nodes: int = 2) -> list[str]:
    """One "node" of a ``nodes``-node job over loopback: 1 process on each, rank 0's at ``127.0.0.1:port``."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", str(nodes),
            "--num_processes", str(nodes), "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]


def start_records(log_file: Path) -> list[dict]:
    """The ``{"event": "start", "processes": [...]}`` lines of a run's ``log.jsonl``, one per (re)start."""
    recs = [json.loads(x) for x in Path(log_file).read_text().splitlines() if x.strip()]
    return [r for r in recs if r.get("event") == "start"]


def assert_ranks(out: Path, world: int = 2, runs: int = 1) -> None:
    """The premise of a multi-process test: ``runs`` starts, each by ``world`` distinct ranks that saw world size ``world``."""
    starts = start_records(Path(out) / "log.jsonl")
    assert len(starts) == runs, starts
    for rec in starts:
        procs = rec["processes"]
        assert sorted(p["rank"] for p in procs) == list(range(world)), procs
        assert all(p["world_size"] == world for p in procs) and len({p["pid"] for p in procs}) == world, procs
