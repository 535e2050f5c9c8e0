"""torch.distributed plumbing for torchrun launches: init from the environment, rank/world, gather to rank 0."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Context:
    """Where this process stands in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


_CONTEXT: Context | None = None


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str = "cpu") -> Context:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); a one-process context otherwise."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    if not launched_by_torchrun():
        _CONTEXT = Context()
        return _CONTEXT
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run without torchrun")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=6))
    _CONTEXT = Context(rank=rank, world_size=world, local_rank=local_rank)
    return _CONTEXT


def context() -> Context:
    return _CONTEXT if _CONTEXT is not None else Context()


def device_for_rank(device: str, ctx: Context) -> str:
    """Each rank of a CUDA job takes the GPU of its local rank unless one was named."""
    if ctx.active and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return device


def gather_to_main(obj: Any, ctx: Context) -> list[Any] | None:
    """Every rank's object on rank 0 (in rank order), None elsewhere. Uses the CPU-capable object gather."""
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any, ctx: Context) -> Any:
    if not ctx.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    global _CONTEXT
    if _CONTEXT is not None and _CONTEXT.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _CONTEXT = None
