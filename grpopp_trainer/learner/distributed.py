"""Multi-process training on torch.distributed: the process group, and the few collectives the
trainer needs.

grpopp runs on the runtime users already have: ``torchrun --nproc-per-node N`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; ``init_distributed`` then joins the process group (NCCL on CUDA,
gloo on CPU). Without those variables, or with one process, nothing is initialised and every helper
here is the identity, so single-process code paths stay as they are.

How the work is split (see ``Trainer``): every rank draws the same global batch of tasks (the
mixture is deterministic), generates and scores its share of the groups (whole groups, so group
statistics never cross ranks), and the scored groups are gathered on every rank in global order.
Dynamic sampling and the loss normaliser ``num_items`` are then computed from the same global
batch on every rank, so the sharded update equals the single-process one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes metrics, samples and checkpoints."""
        return self.rank == 0


SINGLE = DistInfo()
"""One process, no process group."""


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when there is one; return this rank's info and device.

    ``device_name``: "auto", "cpu" or "cuda" (``TrainConfig.device``); with CUDA each rank takes GPU
    ``LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if world_size <= 1:
        return SINGLE, torch.device("cuda" if use_cuda else "cpu")
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    global _OWN_GROUP
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        _OWN_GROUP = True
    return info, torch.device("cuda", info.local_rank) if use_cuda else torch.device("cpu")


_OWN_GROUP = False
"""Whether ``init_distributed`` created the default process group (and ``close_distributed`` may end it)."""


def close_distributed() -> None:
    """Leave the process group ``init_distributed`` created; one made by another library (vLLM makes
    its own in a single process) is that library's to end."""
    global _OWN_GROUP
    if _OWN_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _OWN_GROUP = False


def gather_objects(info: DistInfo, value: T) -> list[T]:
    """``value`` of every rank, in rank order (one element on a single process)."""
    if not info.enabled:
        return [value]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def broadcast_object(info: DistInfo, value: T) -> T:
    """Rank 0's ``value`` on every rank."""
    if not info.enabled:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    result: T = box[0]
    return result


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def my_share(info: DistInfo, items: list[T]) -> list[T]:
    """This rank's share of ``items``: those at rank, rank + world, rank + 2 world, ..."""
    return items[info.rank :: info.world_size]


def gather_shares(info: DistInfo, share: list[T]) -> list[T]:
    """Every rank's ``share`` (from ``my_share``, or computed from it), back in the original order."""
    if not info.enabled:
        return share
    shares = gather_objects(info, share)  # shares[q][j] is item q + j * world
    total = sum(len(s) for s in shares)
    return [shares[i % info.world_size][i // info.world_size] for i in range(total)]


def whole_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` detached and whole: an FSDP2 shard (``DTensor``) is gathered (a collective: every rank
    must call it, in the same order)."""
    whole = tensor.detach()
    return whole.full_tensor() if isinstance(whole, DTensor) else whole
