"""Where a training run executes: the device of each rank, the data-parallel process group, gradient averaging.

Data parallelism is plain all-reduce DDP without ``DistributedDataParallel``: every rank reads a disjoint
slice of each global batch (the activation sources promise that), computes a per-token *mean* loss with a
constant denominator, and the gradients are averaged over ranks before the optimiser step, so a run on
``world_size`` ranks takes the steps a single process would take on the whole batch.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from sae_hub.training.config import TrainConfig

__all__ = ["all_reduce_mean_", "fused_adam_kwargs", "init_distributed", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"``: cuda if available, else cpu; a bare ``"cuda"`` is ``cuda:LOCAL_RANK`` (one GPU per rank under
    torchrun), made the current device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:  # one GPU per rank under torchrun
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def fused_adam_kwargs(device: torch.device) -> dict[str, Any]:
    """Fused Adam where torch has it (CUDA; CPU since torch 2.4): one kernel instead of ~10 passes per tensor."""
    if device.type == "cuda" or (device.type == "cpu" and tuple(int(v) for v in
                                                             torch.__version__.split(".")[:2]) >= (2, 4)):
        return {"fused": True}
    return {}


def init_distributed(cfg: TrainConfig) -> tuple[int, int]:
    """(rank, world_size). Data-parallel when launched by torchrun (RANK and WORLD_SIZE set, world > 1), when
    ``cfg.distributed``, or when a process group already exists.

    A group created here stays up for later runs in the same process (torchrun's store cannot host a second
    one after a teardown) and is destroyed at interpreter exit.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if not (cfg.distributed or ("RANK" in os.environ and env_world > 1)):
        return 0, 1
    cuda = resolve_device(cfg.device).type == "cuda"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    atexit.register(lambda: dist.destroy_process_group() if dist.is_initialized() else None)
    return dist.get_rank(), dist.get_world_size()


def all_reduce_mean_(tensors: Iterable[torch.Tensor | None], world_size: int) -> None:
    """Average each tensor over the ranks, in place (``None`` entries skipped).

    The mean of per-rank means is the global mean because every rank's loss is a per-token mean over the same
    number of tokens.
    """
    for t in tensors:
        if t is not None:
            dist.all_reduce(t)
            t /= world_size
