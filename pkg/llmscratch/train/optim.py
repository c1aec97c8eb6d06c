"""AdamW with decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn



def configure_optimizer(model: nn.Module, lr: float = 4e-4, weight_decay: float = 0.1,
                        betas: tuple[float, float] = (0.9, 0.95), device=None) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2: linear and embedding weights) and none on biases and
    norm weights, as in GPT-2/nanoGPT: decaying a LayerNorm gain towards 0 only hurts.

    ``fused=True`` where the installed PyTorch has a fused AdamW kernel for the parameters' device (CUDA; the
    CPU since PyTorch 2.4): one kernel updates every parameter; otherwise ``foreach=True`` (one multi-tensor op
    per step instead of a Python loop over parameters). Parameters shared between modules (tied embeddings)
    appear once. ``device`` is only a hint kept for compatibility; the parameters' own device decides.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields a shared tensor once
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False); unfreeze some first")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / dtype / PyTorch version
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


def lr_at(step: int, lr: float, warmup_steps: int = 0, total_steps: int | None = None,
          min_lr: float = 0.0, schedule: str = "cosine") -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    - ``schedule="constant"``: ``lr`` after an optional linear warmup;
    - ``schedule="cosine"``: linear warmup from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` steps,
      then a half cosine from ``lr`` down to ``min_lr`` at ``total_steps`` (and ``min_lr`` after it).
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if total_steps is None:
        raise ValueError("the cosine schedule needs total_steps (the number of optimizer steps of the run)")
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


