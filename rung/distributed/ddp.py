"""The thin layer over torch.distributed for data-parallel training under torchrun.

Each rank steps its own envs; gradients are all-reduced by DistributedDataParallel. Everything
that normalises across samples (advantage mean/std, observation statistics) is computed over the
global batch, so N ranks on shards compute the gradient one process would on the whole batch."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from rung.envs.wrappers import RunningMeanStd


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init(device: str = "cpu") -> DistInfo:
    """Join the process group torchrun describes in the environment; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DDP around the model when there is more than one rank. DDP broadcasts rank 0's
    parameters at construction, so every rank starts from the same network."""
    if info.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.local_rank] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(model, device_ids=ids)


def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (Bessel-corrected) std of `x` over every rank's elements."""
    if not is_distributed():
        return x.mean(), x.std()
    # Summed in float64: sum of squares minus n * mean^2 cancels badly in float32 when the mean is
    # large against the std (mean 1e4, std 1 gave a std of 0).
    x64 = x.double()
    s = torch.stack([x64.sum(), x64.pow(2).sum(), torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)])
    dist.all_reduce(s)
    total, sq, n = s.unbind()
    mean = total / n
    var = (sq - n * mean**2) / (n - 1)
    return mean.to(x.dtype), var.clamp_min(0).sqrt().to(x.dtype)


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """`x` averaged over every rank (itself on one process), on the rank's device: for a value
    that all ranks must act on alike."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def broadcast_params(params) -> None:
    """Every rank takes rank 0's values of `params`, for weights that start random outside DDP."""
    if not is_distributed():
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def all_reduce_grads(params) -> None:
    """Average gradients over ranks by hand, for updates that do not go through DDP's forward."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_object(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's `obj` as a list on rank 0 (None elsewhere); [obj] without distribution."""
    if not is_distributed():
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_running_stats(rms: RunningMeanStd) -> None:
    """Make every rank's statistics the pooled statistics of all ranks. The pooled count is divided
    by the number of ranks, so that repeated syncs weigh each rank's history once, not N times."""
    if not is_distributed():
        return
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, rms.state_dict())
    device = rms.mean.device if isinstance(rms.mean, torch.Tensor) else None
    pooled = RunningMeanStd(tuple(rms.mean.shape), device=device)
    pooled.load_state_dict(states[0])
    for state in states[1:]:
        other = RunningMeanStd(tuple(rms.mean.shape), device=device)
        other.load_state_dict(state)
        pooled.merge(other.mean, other.var, other.count)
    rms.mean, rms.var, rms.count = pooled.mean, pooled.var, pooled.count / len(states)


def sync_normalizer(normalizer) -> None:
    """Pool observation and return statistics over ranks, so every rank normalises alike."""
    if is_distributed():
        sync_running_stats(normalizer.obs_rms)
        sync_running_stats(normalizer.ret_rms)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
