"""Data parallelism across processes started by ``accelerate launch`` (or ``torchrun``).

Every process loads the model and tokenises the data the same way; what scales is the work over token
batches. Batch ``i`` of a split (cut exactly as a single process cuts it) goes to process ``i mod N``; each
process reduces its batches into sums and counts, and the sums are added across processes (``all_reduce``),
never means of means. Per-batch sums are float32 values added in float64, so the totals do not depend on how
the batches were spread: statistics, pruned neurons and metrics equal the single-process run's.

Process 0 writes the run folder; the others do the same computation and write nothing. Outside a launcher
(no ``WORLD_SIZE`` > 1 in the environment) everything here is a no-op.
"""

from __future__ import annotations

import os

import torch

from .errors import UnlearnError


def launched() -> bool:
    """True in a process started by a multi-process launcher (before or after :func:`setup`)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> str:
    """Join the process group of a multi-process launch (gloo on CPU, NCCL on GPUs) and return the device this
    process works on (``cuda:LOCAL_RANK`` on GPUs). Without a launcher: ``device`` unchanged."""
    if not launched():
        return device
    if not torch.distributed.is_initialized():
        from accelerate import PartialState

        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        try:
            PartialState(cpu=cpu)
        except Exception as exc:  # noqa: BLE001 - rendezvous failures come in many types
            raise UnlearnError(f"could not join the process group of this launch: {exc}".splitlines()[0]) from exc
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu" if device == "auto" else device


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main() -> bool:
    """Process 0 (or the only process): the one that writes files and shows progress."""
    return rank() == 0 if torch.distributed.is_initialized() else int(os.environ.get("RANK", "0")) == 0


def batches(split, batch_size: int):
    """This process's share of ``split.batches(batch_size)``: batch ``i`` goes to process ``i mod N``."""
    r, n = rank(), world_size()
    for i, batch in enumerate(split.batches(batch_size)):
        if i % n == r:
            yield batch


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (on its own device; gloo needs the CPU)."""
    if world_size() > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


def reduce_sums(sums: dict[str, float | int]) -> dict[str, float | int]:
    """Add a dict of Python numbers across processes (one float64 all_reduce; integers stay integers)."""
    if world_size() == 1:
        return dict(sums)
    keys = sorted(sums)
    packed = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=comm_device())
    all_reduce_(packed)
    return {k: int(v) if isinstance(sums[k], int) else float(v) for k, v in zip(keys, packed.tolist())}


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``tensor`` (same shape everywhere), in rank order."""
    if world_size() == 1:
        return [tensor]
    out = [torch.empty_like(tensor) for _ in range(world_size())]
    torch.distributed.all_gather(out, tensor.contiguous())
    return out


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def comm_device() -> torch.device:
    """Where tensors must live for collectives (CPU for gloo, the process's GPU for NCCL)."""
    if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
