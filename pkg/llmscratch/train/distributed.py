"""Data parallelism on PyTorch's own engine (``torch.distributed``), for scripts launched with ``torchrun``.

``torchrun --nproc-per-node N script.py`` starts N copies of ``script.py`` and gives each its ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` and the address of a rendezvous in environment variables. Each copy calls
:func:`init_distributed` (one process group: NCCL between GPUs, gloo on CPUs) and then builds the same
:class:`llmscratch.train.Trainer` as a one-process script: the trainer sees the process group and

- wraps the model in ``DistributedDataParallel`` (one replica per process; gradients averaged by an
  all-reduce that overlaps the backward pass), unless the model is already wrapped or sharded (FSDP2);
- gives each process its share of the training data (:func:`shard_loader`: a ``DistributedSampler`` that
  deals the examples round-robin, so ``N`` processes with batch ``b`` see the batches of one process with
  batch ``N*b``);
- skips the gradient all-reduce on all micro-batches but the last of an accumulation (``no_sync``);
- logs and writes checkpoints on rank 0 only, with a barrier around each save.

Nothing here is a communication layer of our own: every collective is a ``torch.distributed`` call.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["init_distributed", "is_distributed", "rank", "world_size", "is_main_process", "barrier",
           "shard_loader", "wrap_model", "is_sharded", "unwrap_model", "no_gradient_sync", "cleanup"]


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group that ``torchrun`` set up (a no-op without ``torchrun`` or when already joined);
    return ``(rank, world_size)``.

    ``backend``: ``"nccl"`` (GPUs) or ``"gloo"`` (CPUs); default NCCL when CUDA is available, else gloo. On GPUs
    each process takes the GPU ``LOCAL_RANK``, so ``Trainer(device="cuda")`` lands on its own GPU.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def cleanup() -> None:
    """Leave the process group (call at the end of a ``torchrun`` script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that prints and writes files."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard_loader(loader, seed: int = 0):
    """The same ``DataLoader`` with a ``DistributedSampler``: this process's share of every epoch.

    The sampler shuffles when ``loader`` did (with ``seed + epoch``: every process draws the same permutation
    and takes every ``world_size``-th example of it, starting at its rank), and keeps ``drop_last``. A loader
    that already has a ``DistributedSampler``, or that is not a ``torch.utils.data.DataLoader`` with a plain
    sampler, is returned unchanged.
    """
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

    if not is_distributed() or not isinstance(loader, DataLoader):
        return loader
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)) or loader.batch_size is None:
        raise ValueError(
            "under torchrun the training loader must be a DataLoader(dataset, batch_size=..., shuffle=...) so that "
            "the trainer can shard it, or already use a torch.utils.data.DistributedSampler"
        )
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size(), rank=rank(),
                                 shuffle=isinstance(loader.sampler, RandomSampler), seed=seed,
                                 drop_last=loader.drop_last)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      drop_last=loader.drop_last)


def is_sharded(model: nn.Module) -> bool:
    """True when some parameter is a ``DTensor`` (the model went through FSDP2's ``fully_shard`` or tensor
    parallelism): such a model is not wrapped in DDP."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` under a process group of more than one process; the model itself
    otherwise, or when it is already a DDP model or sharded."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not is_distributed() or isinstance(model, DDP) or is_sharded(model):
        return model
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP and ``torch.compile`` wrappers (the one whose names a checkpoint stores)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    while True:
        if isinstance(model, DDP):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module, skip: bool = True):
    """Within the block, backward accumulates gradients locally without communicating: DDP's ``no_sync`` or,
    for an FSDP2 model, ``set_requires_gradient_sync(False)``. A no-op for other models or ``skip=False``.

    Used on all micro-batches but the last of an accumulation: one all-reduce per optimizer step instead of
    one per micro-batch, with the same result (the sum is all-reduced once)."""
    if skip and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif skip and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
