"""Several training processes through torchrun: who this process is, and the few collectives
the stages need beyond DDP's own gradient all-reduce (training.loop).

The launcher is torchrun (`torch.distributed.run`), which sets RANK, WORLD_SIZE and LOCAL_RANK
(and the rendezvous address) for each process:

    torchrun --nproc-per-node N --no-python tagi train ...                      # one node
    torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d \\
             --rdzv-endpoint HOST:PORT --no-python tagi train ...               # several nodes

Without those variables this is one process, World(0, 1, 0), and every function here is a
no-op: the same code trains in one process and in many. The backend is NCCL when CUDA is
available (each process on cuda:LOCAL_RANK), else gloo (CPU: how CI tests it).

A rank that dies must not leave the others waiting forever: torchrun ends the other processes
of its node when one exits, and every collective has a timeout (`--dist-timeout`, default
DEFAULT_TIMEOUT_S) after which a process blocked in it raises instead of hanging (the case of a
node whose peer on another node is gone). The timeout must exceed the longest phase that only
rank 0 runs while the others wait at a barrier (an evaluation, writing a checkpoint).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from hypernet.errors import UserError

# torch is imported where it is used: the CLI reads DEFAULT_TIMEOUT_S to build --help without it.

DEFAULT_TIMEOUT_S = 600.0
"""Seconds a collective (barrier, gradient all-reduce) may wait for a peer before it fails."""

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int
    """0 .. world_size - 1 over all nodes; rank 0 is the one that writes files and prints results."""
    world_size: int
    local_rank: int
    """Index on this node: the CUDA device the process uses."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name} must be an integer, got {value!r}") from None


def world() -> World:
    """This process's World, from torchrun's environment (one process without it)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"RANK={rank} and WORLD_SIZE={size} do not describe a process group (need 0 <= RANK < WORLD_SIZE)")
    return World(rank, size, _env_int("LOCAL_RANK", 0))


def active() -> bool:
    """True when this process is one of several joined in a process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group torchrun set up (once; a second call returns the same World).

    Called by `tagi train` before anything else runs, so that every stage, the loop and the
    writes see the same World. The group is destroyed at exit, as torch asks."""
    import torch
    import torch.distributed as dist

    if timeout_s <= 0:
        raise UserError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
    current = world()
    if current.world_size == 1 or dist.is_initialized():
        return current
    if not dist.is_available():
        raise UserError(f"WORLD_SIZE={current.world_size} but this torch build has no torch.distributed")
    if torch.cuda.is_available():
        torch.cuda.set_device(current.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    atexit.register(_shutdown)
    return current


def is_main() -> bool:
    """Rank 0: the only process that writes files, logs and prints results."""
    return world().rank == 0


def barrier() -> None:
    """Wait until every process got here (no-op in one process): what rank 0 wrote before it
    is complete for whoever reads it after."""
    if active():
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank (JSON-like values: metrics, scores; torch pickles them on
    the wire between our own processes; never weights)."""
    import torch.distributed as dist

    if not active():
        return value
    box: list[Any] = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: T) -> list[T]:
    """Every rank's `value`, in rank order (one process: [value])."""
    import torch.distributed as dist

    if not active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
