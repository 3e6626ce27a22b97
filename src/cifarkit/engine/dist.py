"""Multi-process training under torchrun: process-group setup and the few collectives we need.

`torchrun --nproc_per_node=N -m cifarkit train CONFIG` sets RANK / WORLD_SIZE / LOCAL_RANK;
`init_from_env` turns them into a process group (gloo on CPU, nccl on GPU). Rank 0 alone
logs, evaluates and writes checkpoints; every rank trains on its own slice of each global batch.
Multi-node runs use torchrun's own rendezvous flags (see the README).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """This process's place in a torchrun job; the defaults (rank 0 of 1) mean not distributed.

    Attributes:
        rank: the global rank; rank 0 alone logs, evaluates and writes checkpoints.
        world: the number of processes.
        local_rank: the rank on this node, which picks the GPU.
    """
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on rank 0, the process that logs, evaluates and saves."""
        return self.rank == 0


def init_from_env(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK, if any.

    Returns:
        (DistInfo, device): without WORLD_SIZE > 1, a single-process `DistInfo` and `device`
        unchanged; else the process group is initialised (nccl on CUDA, gloo on the CPU) and a CUDA
        device becomes `cuda:LOCAL_RANK`, made current.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of `t` over all ranks, as a new tensor; `t` itself when not distributed."""
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's decision, on every rank (e.g. 'stop now')."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here (nothing when not distributed)."""
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Destroy the process group at the end of a distributed run (nothing otherwise)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
