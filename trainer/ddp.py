"""Distributed helpers (torchrun): rank/world in one object; every helper is a no-op at world size 1."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from rtpulse.errors import RtpulseError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Only rank 0 writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """Average a tensor over ranks (returns a new tensor; the input unchanged at world size 1)."""
        if self.world == 1:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t / self.world

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def close(self, finished: bool = True) -> None:
        """``finished``: this rank's work ended normally, so every rank comes here. After an error or a stop signal
        the others may be anywhere (in a collective, decoding data): a barrier would pair with theirs or wait for
        them (torchrun learns of the failure only when this rank exits), so the group is torn down at once."""
        if self.world > 1 and dist.is_initialized():
            if finished:
                # every rank reaches here before any tears down: a gloo group destroyed while a peer still
                # works aborts that peer ("terminate called without an active exception", SIGABRT)
                dist.barrier()
            dist.destroy_process_group()


def global_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks of the running process group (``t`` itself without one). For decisions
    every rank must take alike within a step (nnPU's correction): called by all ranks, in the same order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def check_rank_device(device: str | None, world: int) -> None:
    """Under torchrun a GPU index would put every rank on that one GPU (NCCL then fails on the duplicate)."""
    if world > 1 and device not in (None, "", "auto") and torch.device(device).type == "cuda" \
            and torch.device(device).index is not None:
        raise RtpulseError(f"--device {device}: under torchrun give --device cuda (each rank takes the GPU of "
                           "its LOCAL_RANK); choose the GPUs with CUDA_VISIBLE_DEVICES")


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str | None = None) -> Dist:
    """Read torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK); start a process group when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    check_rank_device(device, world)
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local_rank, dev)


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, rank): the on-device analogue of
    DistributedSampler.set_epoch — every epoch sees new data, every rank different data."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101 + 12_345) % (2**63 - 1)
