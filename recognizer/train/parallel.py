"""Data-parallel training under ``torchrun`` (gloo on CPU, NCCL on GPU); a plain run is rank 0 of 1.

The sampler's batch list does not depend on the world size and rank r takes every N-th batch,
so one step of N ranks x ``sampler.batch_size`` B sees the photos of one step of a single
process with batch N x B; DDP averages the ranks' gradients of their mean losses, which is the
gradient of the mean over all N x B. The two runs train alike (same weights up to float
rounding, tested) as long as

* the loss is a mean of per-sample terms (ArcFace and the other classification losses; pair
  and triplet losses and miners see only their rank's batch),
* the features are the same: the feature cache's clean copy is (gathered in one process's
  order); augmented copies and streamed augmentation are drawn per rank, other draws,
* no BatchNorm trains: in stage 2 an unfrozen block's BatchNorm normalises each rank's batch
  on its own (SyncBatchNorm does not run on CPU); after every epoch rank 0's running
  statistics are broadcast.

Per-element optimisers (Adam/AdamW) scale each weight's step by its gradient's own size, so
where a gradient is near zero float rounding can change a step by up to the learning rate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch


@dataclass
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def setup_distributed() -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(rank, world, device)


def data_parallel(module: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel when there are several ranks, else itself."""
    if dist.world_size == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
        find_unused_parameters=False,
    )  # fmt: skip


def broadcast_buffers(model: torch.nn.Module, dist: Dist) -> None:
    """BatchNorm running statistics drift per rank: take rank 0's."""
    if dist.world_size > 1:
        for b in model.buffers():
            torch.distributed.broadcast(b, 0)


def ranks_in_sync(model, dist: Dist) -> bool:
    """Whether every rank holds the same weights (DDP must have kept them identical)."""
    if dist.world_size == 1:
        return True
    hashes: list = [None] * dist.world_size
    torch.distributed.all_gather_object(hashes, model.weights_sha256())
    return len(set(hashes)) == 1


def sum_over_ranks(values: list[float], dist: Dist) -> list[float]:
    """Each value summed over the ranks: an epoch's statistics over all ranks' batches."""
    if dist.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(t)
    return t.tolist()
