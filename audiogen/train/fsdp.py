"""FSDP2 (PyTorch's ``fully_shard``) for the conditioned LM, driven without Accelerate.

Accelerate 1.x enables its FSDP plugin only on accelerator devices: a CPU job launched
with an FSDP config would quietly run DDP, so the recipe refuses it
(:func:`audiogen.train.loop.make_accelerator`). PyTorch's FSDP2 itself runs over gloo on
CPU. These pieces shard the LM, write and read sharded checkpoints
(``torch.distributed.checkpoint``: each rank writes its own shards, ``__{rank}_0.distcp``,
rank 0 the ``.metadata``) inside the N-rank checkpoint protocol of
:func:`audiogen.train.loop.save_checkpoint`, and gather the full weights for
:func:`audiogen.train.lm.export_model`. ``tests/fsdp2_job.py`` drives them with 2 CPU
ranks under ``torchrun`` (kill -9, resume, export); see docs/training.md for what has run.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

#: the folder inside a checkpoint that holds the sharded model and optimizer state
SHARDED = "sharded"


def shard(model: nn.Module, mesh=None) -> nn.Module:
    """Shard ``model`` in place: each transformer block (``audiogen.models.lm.Layer``) is one FSDP2 unit, the rest the root's.

    Every rank must hold the same initial weights (same seed). Returns ``model``.
    """
    from torch.distributed.fsdp import fully_shard

    from audiogen.models.lm import Layer

    for module in model.modules():
        if isinstance(module, Layer):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def save_sharded(folder: Path, model: nn.Module, optimizer) -> None:
    """Each rank writes its shards of the model and optimizer state under ``folder/sharded``. A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(Path(folder) / SHARDED))


def load_sharded(folder: Path, model: nn.Module, optimizer) -> None:
    """Load what :func:`save_sharded` wrote into an identically sharded ``model`` and ``optimizer``. A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(Path(folder) / SHARDED))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def full_state(model: nn.Module) -> dict:
    """The whole model's weights gathered to rank 0 as CPU tensors (``{}`` on the other ranks). A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
