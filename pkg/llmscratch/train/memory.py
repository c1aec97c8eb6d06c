"""Where the memory of a training step goes: a budget by formula, and measurements to check it.

For ``N`` parameters trained with Adam(W) (Rajbhandari et al., 2020, "ZeRO", section 3):

- ``"fp32"``: weights 4N bytes, gradients 4N, optimizer states 8N (Adam's two moments);
- ``"mixed"``: the ZeRO paper's mixed-precision recipe: fp16/bf16 weights 2N and gradients 2N, and K=12N of
  float32 optimizer state (a master copy of the weights 4N, the two moments 8N);
- ``"autocast"``: ``torch.autocast`` as :class:`llmscratch.train.Trainer` does it: the weights, gradients and
  moments stay float32 (4N + 4N + 8N), only the activations are smaller.

ZeRO partitions these model states over the ``world_size`` data-parallel processes: stage 1 the optimizer
states, stage 2 also the gradients, stage 3 (= FSDP) also the weights. Activations are not partitioned by ZeRO;
they scale with batch and sequence length, and activation checkpointing cuts them to one tensor per block.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["memory_budget", "gpt_block_activation_bytes", "saved_activation_bytes", "tensor_bytes",
           "optimizer_state_bytes", "PRECISION_BYTES"]

#: Bytes per parameter of (weights, gradients, optimizer states) for Adam in each precision recipe.
PRECISION_BYTES = {"fp32": (4, 4, 8), "autocast": (4, 4, 8), "mixed": (2, 2, 12)}


def memory_budget(n_params: int, precision: str = "mixed", zero_stage: int = 0, world_size: int = 1,
                  activation_bytes: int = 0) -> dict[str, float]:
    """Bytes per device of a data-parallel Adam training step.

    Returns a dict with ``params``, ``grads``, ``optimizer``, ``activations`` and ``total``. ``zero_stage`` 0
    is plain data parallelism (every process holds everything); 1, 2, 3 partition the optimizer states, then
    the gradients, then the weights over ``world_size`` processes. ``activation_bytes`` (per device) is added
    as it is, e.g. from :func:`gpt_block_activation_bytes` times the number of blocks.

    ZeRO's Figure 1 (7.5B parameters, 64 GPUs, mixed precision): 120, 31.4, 16.6 and 1.9 GB for stages 0-3.
    """
    if precision not in PRECISION_BYTES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_BYTES)}, got {precision!r}")
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0 (plain data parallel), 1, 2 or 3, got {zero_stage!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    p, g, o = PRECISION_BYTES[precision]
    parts = {
        "params": p * n_params / (world_size if zero_stage >= 3 else 1),
        "grads": g * n_params / (world_size if zero_stage >= 2 else 1),
        "optimizer": o * n_params / (world_size if zero_stage >= 1 else 1),
        "activations": float(activation_bytes),
    }
    parts["total"] = sum(parts.values())
    return parts


def gpt_block_activation_bytes(batch: int, seq: int, d_model: int, n_heads: int, bytes_per_value: int = 4,
                               checkpointing: bool = False) -> int:
    """Bytes one :class:`llmscratch.models.gpt.TransformerBlock` keeps for backward (dropout 0, the fused SDPA
    kernel, which never stores the ``(seq, seq)`` attention matrix).

    Per token, in values: the block input ``d`` with LayerNorm's mean and 1/std (2); the LayerNorm output ``d``
    (input of the QKV projection); Q, K, V ``3d``; the attention output ``d`` (input of the output projection)
    and SDPA's log-sum-exp, one per head (``h``); the residual stream after attention ``d`` with its mean and
    1/std (2); the second LayerNorm's output ``d``; the MLP's hidden layer before (``4d``) and after (``4d``)
    GELU. Total ``16d + h + 4`` values per token. With activation checkpointing only the block input is kept:
    ``d`` values per token (the rest is recomputed in backward). On the CPU, attention over at most
    ``models.attention.SHORT_CPU_SEQ`` keys takes the written-out path instead of SDPA (faster there), which also
    keeps the ``(heads, seq, seq)`` weights: the formula describes the SDPA path.
    """
    per_token = d_model if checkpointing else 16 * d_model + n_heads + 4
    return batch * seq * per_token * bytes_per_value


def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages among ``tensors`` (a shared or tied tensor counts once); a sharded
    ``DTensor`` counts its local shard only."""
    seen: dict[int, int] = {}
    for t in tensors:
        if hasattr(t, "to_local"):
            t = t.to_local()
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer state held by this process (Adam's moments; the ``step`` counters included).

    For a ``ZeroRedundancyOptimizer`` that is the state of this rank's partition of the parameters."""
    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer wraps the local optimizer
    return tensor_bytes(v for state in inner.state.values() for v in state.values() if isinstance(v, torch.Tensor))


def saved_activation_bytes(fn: Callable[[], torch.Tensor], exclude: nn.Module | None = None) -> int:
    """Run ``fn()`` (a forward pass) and return the bytes of the tensors autograd saved for backward.

    Measured exactly with ``torch.autograd.graph.saved_tensors_hooks``: every tensor an operation saves passes
    through the pack hook; distinct storages are counted once (Q, K and V are views of one tensor), and the
    parameters of ``exclude`` are left out (they live in memory anyway). The graph is freed afterwards.
    """
    skip = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude is not None else set()
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())
