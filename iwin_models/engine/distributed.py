"""torchrun / elastic set-up shared by evaluation and training: device choice, process group, collectives.

Under ``torchrun`` (``WORLD_SIZE > 1``) :func:`init_distributed` starts the process group (nccl on
GPUs, gloo on CPU); without it everything here is a no-op for a single process (rank 0 of 1).
:func:`local_device` only says which device this process uses (no side effect).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "local_device", "world", "any_process", "raise_if_any_failed", "gather",
           "restart_scoped_store"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _collective_device() -> torch.device:
    """Where a tensor for a collective must live: this process's GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true in any process (every process must call it; needs an initialised group)."""
    t = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def raise_if_any_failed(error: BaseException | None, what: str) -> None:
    """After work that may have failed in some processes (every process calls it, with the exception it caught or
    None): re-raise this process's ``error``, or, where only another process failed, a RuntimeError saying that
    ``what`` failed there. A process that raised at once would leave the others waiting at the next collective."""
    if world()[1] > 1 and any_process(error is not None) and error is None:
        raise RuntimeError(f"{what} failed in another process (see its message)")
    if error is not None:
        raise error


def gather(obj) -> list:
    """``obj`` of every process, in rank order (``[obj]`` for a single process; every process must call it)."""
    _, world_size = world()
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def restart_scoped_store():
    """torchrun's store for this generation of workers, or None to let torch.distributed make it.

    The elastic agent keeps one store for the whole job (``TORCHELASTIC_USE_AGENT_STORE``), and the
    process group writes the same keys in it on every start; after ``torchrun --max-restarts``
    restarts the workers, one of them can read the address its dead predecessor left and fail
    (gloo: ``connectFullMesh ... Connection refused``) or wait for it until the timeout. On one node
    every worker gets the same ``TORCHELASTIC_RESTART_COUNT``, so the keys are put under it. Across
    nodes that count is per node and cannot scope them: launch torchrun there with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (a new store for every restart).
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if (restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            or os.environ.get("LOCAL_WORLD_SIZE") != os.environ.get("WORLD_SIZE")):
        return None
    store, _, _ = next(dist.rendezvous("env://"))
    return dist.PrefixStore(f"iwin_models/restart_{restart}", store)


def local_device(device: str | torch.device | None = None) -> torch.device:
    """The device of this process, with no side effect: ``device`` (a bare ``cuda`` is cuda:LOCAL_RANK under
    torchrun, else cuda:0), or without it cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        chosen = torch.device(device) if device else (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu"))
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"bad device {device!r}: {e}") from None
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank if world_size > 1 else 0)
    return chosen


def init_distributed(device: str | None = None) -> tuple[torch.device, bool]:
    """The device of this process and whether this call started torch.distributed.

    Under torchrun (WORLD_SIZE > 1) the process group is initialised with nccl on GPUs, gloo on CPU;
    without ``device`` each process takes cuda:LOCAL_RANK when CUDA is available, else the CPU.
    On one node, workers that ``torchrun --max-restarts`` restarted form a fresh group (see
    :func:`restart_scoped_store`). The caller that got ``started=True`` destroys the group at the end.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = local_device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size <= 1 or dist.is_initialized():
        return chosen, False
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    store = restart_scoped_store()
    dist.init_process_group(backend, device_id=chosen if chosen.type == "cuda" else None, store=store,
                            rank=int(os.environ["RANK"]) if store is not None else -1,
                            world_size=world_size if store is not None else -1)
    return chosen, True
