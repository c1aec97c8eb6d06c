"""Losses, evaluation and perplexity: the mean cross-entropy of a batch and of a loader."""

from __future__ import annotations

import math
import types
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..utils import autocast

IGNORE_INDEX = -100  # the target id that cross-entropy skips (padding), as in PyTorch and transformers



def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model's output: the tensor itself, ``output.logits``, or ``output[0]``."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"the model returned {type(output).__name__}; the training utilities need logits: a tensor, a tuple "
        "whose first item is the logits, or an object with a .logits attribute"
    )


def _check_pair(inputs: torch.Tensor, targets: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"inputs and targets must be tensors, got {type(inputs).__name__} and {type(targets).__name__}; "
            "a data loader for these utilities yields (inputs, targets) pairs"
        )
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"targets must be integer class/token ids, got dtype {targets.dtype}")


def calc_loss_batch(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, device=None,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of one batch (a scalar tensor that carries gradients).

    Args:
        model: maps ``inputs`` to logits ``(batch, seq, vocab)`` (language model) or ``(batch, classes)``.
        inputs: ``(batch, seq)`` token ids (or whatever the model takes).
        targets: ``(batch, seq)`` next-token ids, or ``(batch,)`` class ids; ``ignore_index`` (-100) is skipped.
        device: where to move the batch (``None``: the model's device).

    The logits are flattened to ``(batch * seq, vocab)`` and the targets to ``(batch * seq,)``: next-token
    prediction is a classification over the vocabulary at every position.

    Duck typing: a model with a ``loss(inputs, targets, ignore_index=...)`` *method* (such as
    :meth:`llmscratch.models.gpt.GPTModel.loss`, which fuses the LM head with the cross-entropy and never stores
    the full logits) is asked for its loss directly; it must return the same mean cross-entropy. Any other model
    goes through ``model(inputs)`` and ``F.cross_entropy``. A ``torch.compile``-wrapped model always takes the
    logits path, so that its compiled ``forward`` is the one that runs.
    """
    _check_pair(inputs, targets)
    if device is None:
        device = _model_device(model)
    inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    if _has_loss_method(model):
        return model.loss(inputs, targets, ignore_index=ignore_index)
    logits = logits_of(model(inputs))
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} do not fit targets {tuple(targets.shape)}: targets must have the "
            "logits' shape without the last (vocabulary/class) dimension, e.g. (batch, seq) for (batch, seq, vocab)"
        )
    # float(): under autocast the logits may be bf16/fp16; the loss is computed in float32 for accuracy.
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten().long(), ignore_index=ignore_index)


def _has_loss_method(model: nn.Module) -> bool:
    # A bound method, not e.g. an nn.CrossEntropyLoss stored as ``self.loss`` (that one takes logits).
    if hasattr(model, "_orig_mod"):  # torch.compile wrapper: getattr would reach the *uncompiled* module
        return False
    return isinstance(getattr(model, "loss", None), types.MethodType)


def calc_loss_loader(model: nn.Module, loader: Iterable, device=None, num_batches: int | None = None,
                     ignore_index: int = IGNORE_INDEX) -> float:
    """Average cross-entropy per target over the first ``num_batches`` batches of ``loader`` (all by default).

    The average is weighted by the number of (non-ignored) targets in each batch, so it is the true per-token
    loss even when the last batch is smaller; with batches of equal size it equals the mean of the batch means.
    Runs without gradients; the caller chooses ``model.eval()`` (see :func:`evaluate`).
    """
    if num_batches is not None and (not isinstance(num_batches, int) or num_batches < 1):
        raise ValueError(f"num_batches must be a positive int or None (all batches), got {num_batches!r}")
    if device is None:
        device = _model_device(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if num_batches is not None and i >= num_batches:
                break
            inputs, targets = _unpack(batch)
            loss = calc_loss_batch(model, inputs, targets, device, ignore_index=ignore_index)
            n = int((targets != ignore_index).sum())
            total += loss.item() * n
            count += n
    if count == 0:
        raise ValueError(
            "the loader gave no batches (or only ignored targets): it is empty. Use a smaller batch_size, "
            "drop_last=False for the validation loader, or more data"
        )
    return total / count


def evaluate(model: nn.Module, train_loader: Iterable | None, val_loader: Iterable | None, device=None,
             num_batches: int | None = None, amp: bool | torch.dtype = True) -> tuple[float | None, float | None]:
    """Train and validation loss (``None`` for a missing loader) in eval mode, restoring the model's mode.

    ``amp=True`` runs under :func:`llmscratch.utils.autocast` (bf16/fp16 on a GPU, a no-op on the CPU); a dtype
    (``torch.bfloat16``, ``torch.float16``) autocasts to it on any device; ``False``: float32."""
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else _model_device(model)
    if isinstance(amp, torch.dtype):
        context = torch.autocast(dev.type, dtype=amp)
    else:
        context = autocast(dev, enabled=amp)
    try:
        with context:
            train_loss = calc_loss_loader(model, train_loader, device, num_batches) if train_loader is not None else None
            val_loss = calc_loss_loader(model, val_loader, device, num_batches) if val_loader is not None else None
    finally:
        model.train(was_training)
    return train_loss, val_loss


def perplexity(loss):
    """Perplexity ``exp(loss)`` of a mean cross-entropy (in nats): the effective number of equally likely
    next tokens the model hesitates between. A float gives a float (``inf`` past overflow), a tensor a tensor.
    A uniform guess over a vocabulary of V tokens has loss ``log V`` and perplexity V."""
    if isinstance(loss, torch.Tensor):
        return torch.exp(loss)
    loss = float(loss)
    if math.isnan(loss):
        raise ValueError("loss is NaN: training diverged (lower the learning rate or enable gradient clipping)")
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf



def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if hasattr(batch, "__len__") else "")
        + "; wrap your data in a Dataset whose items are (input_ids, target_ids)"
    )


