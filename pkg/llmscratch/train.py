"""Training utilities every chapter reuses: losses, perplexity, a training loop, and safe checkpoints.

The loop is model-agnostic: a model maps token ids ``(batch, seq)`` to logits ``(batch, seq, vocab)`` (a
language model) or inputs to ``(batch, classes)`` (a classifier); the loss is cross-entropy over the last
dimension. Anything that returns a tuple or an object with ``.logits`` (a ``transformers`` model) works too.

What the loop does, and why (Raschka, *Build a Large Language Model (From Scratch)*, ch. 5; nanoGPT's
``train.py``):

- **AdamW** (Loshchilov & Hutter, 2019) with weight decay on matrices only (biases, LayerNorm and other 1-D
  parameters are not decayed), ``fused=True`` where PyTorch has the kernel (CUDA, CPU) and ``foreach`` elsewhere;
- **gradient clipping** by global norm (Pascanu et al., 2013), which keeps one bad batch from blowing up training;
- an optional **linear warmup + cosine decay** of the learning rate (Loshchilov & Hutter, 2017);
- **mixed precision** through :func:`llmscratch.utils.autocast`: bf16 on GPUs that have it, fp16 with a
  ``GradScaler`` on older GPUs, plain float32 on the CPU;
- **gradient accumulation**: ``accumulation_steps`` micro-batches per optimizer step, each loss divided by
  that number, so k micro-batches of size b give the gradient of one batch of size k*b;
- periodic **evaluation** (train and validation loss on a few batches) recorded in a :class:`History` together
  with steps, tokens seen and the learning rate; an optional **callback** at the end of every epoch (for
  example :func:`sample_callback`, which prints a generated sample);
- **checkpoints** written atomically (temporary file, then ``os.replace``), so a crash while saving never
  destroys the previous checkpoint. They describe themselves (model class, config, a sha256 per tensor): loading
  names the config field or tensor that differs, and notices a flipped bit. ``Trainer(checkpoint_dir=...,
  checkpoint_every=k)`` keeps ``last.pt`` (and ``best.pt``) with the position inside the epoch and every
  random-number state, so a killed run resumed with ``load_checkpoint`` and the same ``fit`` call ends with the
  very weights of an uninterrupted run (bit for bit on the CPU);
- a **non-finite loss** stops training *before* the optimizer step, naming the cause (NaN inputs, a batch whose
  targets are all ignored, overflowing logits).

Usage::

    from llmscratch.train import train
    history = train(model, train_loader, val_loader, epochs=10, lr=4e-4, eval_every=5)
    history.plot()

A script that survives being killed (run it again, unchanged, after a crash)::

    trainer = Trainer(model, train_loader, val_loader, checkpoint_dir="ckpt", checkpoint_every=50)
    if Path("ckpt/last.pt").exists():
        trainer.load_checkpoint("ckpt/last.pt")
    trainer.fit(epochs=10)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
import random
import time
import types
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .utils import atomic_write, autocast, autocast_dtype, get_device, remove_orphaned_temp_files

__all__ = [
    "logits_of",
    "calc_loss_batch",
    "calc_loss_loader",
    "evaluate",
    "perplexity",
    "configure_optimizer",
    "lr_at",
    "History",
    "Trainer",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointMismatchError",
    "CheckpointCorruptError",
    "sample_callback",
]

IGNORE_INDEX = -100  # the target id that cross-entropy skips (padding), as in PyTorch and transformers


# --------------------------------------------------------------------------------------------------------------
# Losses and perplexity
# --------------------------------------------------------------------------------------------------------------


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
             num_batches: int | None = None, amp: bool = True) -> tuple[float | None, float | None]:
    """Train and validation loss (``None`` for a missing loader) in eval mode, restoring the model's mode.

    ``amp=True`` runs under :func:`llmscratch.utils.autocast` (bf16/fp16 on a GPU, a no-op on the CPU)."""
    was_training = model.training
    model.eval()
    try:
        with autocast(device if device is not None else _model_device(model), enabled=amp):
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


# --------------------------------------------------------------------------------------------------------------
# Optimizer and learning-rate schedule
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------------------------


@dataclass
class History:
    """What a training run recorded.

    One entry per evaluation: ``steps`` (optimizer steps done), ``epochs`` (epoch number, 1-based, of the
    evaluation), ``tokens_seen`` (input tokens trained on), ``train_loss``, ``val_loss`` (``None`` without a
    validation loader) and ``lr``. One entry per optimizer step: ``step_loss`` (the training loss of that
    step's batch, a cheap running signal) and ``step_lr``. ``wall_time`` is the training time in seconds.
    """

    steps: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    tokens_seen: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    step_lr: list[float] = field(default_factory=list)
    wall_time: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)

    def epoch_end(self) -> list[int]:
        """Indices of the last evaluation of each epoch."""
        return [i for i in range(len(self.epochs)) if i + 1 == len(self.epochs) or self.epochs[i + 1] != self.epochs[i]]

    def table(self) -> str:
        """Per-epoch train/val loss and perplexity, as aligned text."""
        rows = [f"{'epoch':>5} {'step':>6} {'tokens':>9} {'train':>7} {'val':>7} {'ppl(train)':>11} {'ppl(val)':>9}"]
        for i in self.epoch_end():
            val = self.val_loss[i]
            rows.append(
                f"{self.epochs[i]:>5} {self.steps[i]:>6} {self.tokens_seen[i]:>9} {self.train_loss[i]:>7.3f} "
                f"{val if val is not None else float('nan'):>7.3f} {perplexity(self.train_loss[i]):>11.1f} "
                f"{perplexity(val) if val is not None else float('nan'):>9.1f}"
            )
        return "\n".join(rows)

    def plot(self, x: str = "tokens", ax=None, title: str | None = None):
        """Train/validation loss curves (via :func:`llmscratch.viz.plot_losses`) against ``"tokens"`` or ``"steps"``."""
        from .viz import plot_losses

        if x not in ("tokens", "steps"):
            raise ValueError(f"x must be 'tokens' or 'steps', got {x!r}")
        if not self.train_loss:
            raise ValueError("nothing to plot: the history has no evaluation yet (train first, or set eval_every)")
        xs = self.tokens_seen if x == "tokens" else self.steps
        val = self.val_loss if any(v is not None for v in self.val_loss) else None
        return plot_losses(self.train_loss, val, steps=xs, xlabel="tokens seen" if x == "tokens" else "step",
                           ax=ax, title=title)


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "llmscratch.checkpoint/2"


class CheckpointMismatchError(ValueError):
    """A checkpoint was written for another model: another class, config, or tensors (missing, unexpected, or
    differently shaped)."""


class CheckpointCorruptError(ValueError):
    """A checkpoint file that cannot be read (empty, truncated, not a checkpoint) or whose tensors no longer match
    the sha256 checksums stored in it when it was saved."""


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps the model; save and load the original module so names carry no "_orig_mod." prefix.
    return getattr(model, "_orig_mod", model)


def _atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`llmscratch.utils.atomic_write`: a crash mid-save leaves the old file intact."""
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(obj, f)
    return path


def _model_identity(model: nn.Module) -> tuple[str, dict | None]:
    """``("package.module.Class", config as a plain dict or None)`` of a model.

    The config is ``model.cfg`` or ``model.config``: a dataclass (``GPTConfig``), a ``transformers`` config
    (``to_dict()``) or a dict. It is stored as JSON-like data, so a checkpoint stays loadable with
    ``weights_only=True``; private keys and ``transformers_version`` are left out (they do not change the model).
    """
    m = _unwrap(model)
    name = f"{type(m).__module__}.{type(m).__qualname__}"
    cfg = getattr(m, "cfg", None)
    if cfg is None:
        cfg = getattr(m, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        d = dataclasses.asdict(cfg)
    elif callable(getattr(cfg, "to_dict", None)):
        d = cfg.to_dict()
    elif isinstance(cfg, dict):
        d = dict(cfg)
    else:
        return name, None
    d = {str(k): v for k, v in d.items() if not str(k).startswith("_") and k != "transformers_version"}
    return name, json.loads(json.dumps(d, default=str, sort_keys=True))


def _config_field_ignored(name: str) -> bool:
    # Dropout rates are a training-time choice (fine-tuning with another dropout is normal): they do not change
    # what the weights mean, so a difference there is not a mismatch. GPTConfig: dropout; GPT-2: *_pdrop.
    return "dropout" in name or name.endswith("pdrop") or name.endswith("drop_rate")


def _tensor_items(obj: Any, prefix: str = ""):
    """``(dotted name, tensor)`` for every tensor inside nested dicts / lists / tuples."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensor_items(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensor_items(v, f"{prefix}.{i}" if prefix else str(i))


def _tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (any dtype, bf16 included: the bytes are viewed as uint8)."""
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _checksums(state: dict) -> dict[str, str]:
    return {name: _tensor_sha256(t) for name, t in _tensor_items({k: v for k, v in state.items() if k != "checksums"})}


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    step: int = 0, **extra: Any) -> Path:
    """Write a checkpoint that describes itself to ``path`` atomically; return the path.

    The file holds ``model_class`` (``"llmscratch.models.gpt.GPTModel"``), ``config`` (the model's ``cfg`` as a
    dict, when it has one), ``model`` (the state dict), ``optimizer`` (its state dict or ``None``), ``step``,
    everything in ``extra``, and ``checksums``: the sha256 of every tensor in it, so that :func:`load_checkpoint`
    notices a flipped bit. A compiled model is saved under its original parameter names.
    """
    model_class, config = _model_identity(model)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_class": model_class,
        "config": config,
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        **extra,
    }
    state["checksums"] = _checksums(state)
    return _atomic_torch_save(state, path)


def _read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load and verify a checkpoint file: readable, a checkpoint dict, every tensor matching its checksum."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first, or check the path")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointCorruptError(
            f"{path} is empty (0 bytes): the save or copy that wrote it was interrupted. Use another checkpoint "
            "(an earlier last.pt or best.pt), or train again"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointCorruptError(
            f"{path} is not a checkpoint: torch.save writes a zip archive and this {size:,}-byte file is not one "
            "(it is truncated, or another kind of file). Check the path, or use another checkpoint"
        )
    # weights_only=True: a checkpoint is data, never code to execute (safe to open one from elsewhere).
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # PyTorch's message here advises weights_only=False, i.e. running whatever code the file holds: not that.
        raise CheckpointCorruptError(
            f"{path} holds Python objects other than tensors and plain containers, so save_checkpoint did not "
            "write it; llmscratch reads checkpoints with weights_only=True and never runs code stored in one. "
            "If you trust the file, load it yourself and re-save what you need with save_checkpoint"
        ) from None
    except Exception as err:  # noqa: BLE001 - re-raised with the path and the likely cause
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointCorruptError(
            f"could not read the checkpoint {path} ({type(err).__name__}: {first}): the file is damaged "
            "(truncated or partly overwritten). Use another checkpoint (an earlier last.pt or best.pt)"
        ) from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise ValueError(
                f"{path} holds a bare state dict (torch.save(model.state_dict())), not a checkpoint: load it with "
                "model.load_state_dict(torch.load(path, weights_only=True)); save_checkpoint writes files that "
                "also carry the config and checksums"
            )
        raise ValueError(f"{path} is not an llmscratch checkpoint (a dict with a 'model' state dict); "
                         f"it holds a {type(ckpt).__name__}")
    stored = ckpt.get("checksums")
    if stored is not None:
        now = _checksums(ckpt)
        bad = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
        if bad:
            raise CheckpointCorruptError(
                f"{path} is corrupted: {len(bad)} tensor(s) differ from the sha256 recorded when it was saved "
                f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}): a flipped bit on the disk or in a copy. "
                "Use another checkpoint (an earlier last.pt or best.pt), or copy the file again"
            )
    return ckpt


def _check_identity(path: Path, model: nn.Module, ckpt: dict) -> None:
    """Raise :class:`CheckpointMismatchError` naming the class or the config fields that differ."""
    model_class, config = _model_identity(model)
    saved_class, saved_config = ckpt.get("model_class"), ckpt.get("config")
    if saved_class is not None and saved_class != model_class:
        raise CheckpointMismatchError(
            f"{path.name} was saved from a {saved_class}, and this model is a {model_class}: load it into a "
            f"{saved_class.rsplit('.', 1)[-1]}, or pass check_config=False to load tensors whose names and shapes "
            "fit anyway"
        )
    if saved_config is None or config is None:
        return
    missing = object()
    diffs = [f"{k}: checkpoint {saved_config.get(k, '(absent)')!r} vs model {config.get(k, '(absent)')!r}"
             for k in sorted(set(saved_config) | set(config))
             if not _config_field_ignored(k) and saved_config.get(k, missing) != config.get(k, missing)]
    if diffs:
        name = model_class.rsplit(".", 1)[-1]
        raise CheckpointMismatchError(
            f"{path.name} was saved from a {name} with another config ({'; '.join(diffs)}). Build the model with "
            f"the saved config, which is load_checkpoint(path)['config'] (e.g. GPTModel(GPTConfig(**config))), or "
            "pass check_config=False to load tensors whose names and shapes fit anyway"
        )


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = _unwrap(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
        if missing:
            parts.append(f"missing in checkpoint: {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"not in model: {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else ""))
        raise CheckpointMismatchError(
            "the checkpoint does not match the model (" + " | ".join(parts) + "). Build the model with the "
            "same config as the one that was saved (e.g. the same GPTConfig), then load again"
        )


def _load_into(ckpt: dict, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
               check_config: bool = True) -> None:
    if check_config:
        _check_identity(path, model, ckpt)
    _check_state_dict(model, ckpt["model"])
    _unwrap(model).load_state_dict(ckpt["model"])
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise ValueError(f"{path} holds no optimizer state; pass optimizer=None to load the weights only")
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as err:
            raise CheckpointMismatchError(
                f"the optimizer state in {path} does not fit this optimizer ({err}); build the optimizer with the "
                "same parameter groups (configure_optimizer on the same model) before loading"
            ) from err


def load_checkpoint(path: str | Path, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, map_location="cpu",
                    check_config: bool = True) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, load it into ``model`` (and ``optimizer``), and
    return the dict. With ``model=None`` it only reads and verifies the file (e.g. to get ``["config"]``).

    Checks, each with an error that names the fix: the file is readable (an empty, truncated or foreign file gets
    :class:`CheckpointCorruptError`); every tensor matches its stored sha256 (a flipped bit: the same error,
    naming the tensor); the model class and config are the saved ones (:class:`CheckpointMismatchError` naming
    the fields, e.g. ``n_heads: checkpoint 4 vs model 8``; dropout rates may differ; ``check_config=False``
    skips this check); the tensors' names and shapes fit (the same error, naming the tensors). Checkpoints of
    the older format (no config, no checksums) load with the shape check only. Tensors are read onto
    ``map_location`` (the CPU by default); ``load_state_dict`` copies them to the model's device.
    """
    path = Path(path)
    ckpt = _read_checkpoint(path, map_location)
    if model is None:
        if optimizer is not None:
            raise ValueError("an optimizer state can only be loaded together with its model: pass model=")
        return ckpt
    _load_into(ckpt, path, model, optimizer, check_config)
    return ckpt


# --------------------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------------------


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


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects that decide a loader's order: ``DataLoader(generator=...)``, and its
    sampler's (``RandomSampler`` keeps the one the loader passed; a sampler built by hand may have its own)."""
    found: list[torch.Generator] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def _rng_state(loaders: Iterable = ()) -> dict:
    """Every random-number state a training step can draw from, as tensors and plain values (a checkpoint
    stays loadable with ``weights_only=True``): PyTorch's CPU and CUDA generators (dropout; a ``DataLoader``
    without ``generator=`` seeds its shuffle from the CPU one), Python's and NumPy's (datasets that augment),
    and the generators of ``loaders``."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "loaders": [g.get_state() for loader in loaders for g in _loader_generators(loader)],
    }


def _set_rng_state(state: dict, loaders: Iterable = ()) -> None:
    """Restore what :func:`_rng_state` captured (states a checkpoint of the older format lacks are skipped)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if (py := state.get("python")) is not None:
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    if (npy := state.get("numpy")) is not None:
        np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                             npy["cached"]))
    if "loaders" in state:
        generators = [g for loader in loaders for g in _loader_generators(loader)]
        if len(generators) != len(state["loaders"]):
            raise CheckpointMismatchError(
                f"the checkpoint holds the state of {len(state['loaders'])} data-loader generator(s) but this "
                f"training loader has {len(generators)}: build the loader as in the saved run (the same "
                "shuffle= and generator=) so the data order can be replayed"
            )
        for g, s in zip(generators, state["loaders"]):
            g.set_state(s.cpu())


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int | None, show: bool):
    if not show:  # a disabled tqdm still makes a multiprocessing lock; none at all is lighter
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="step")


class Trainer:
    """A training loop with evaluation, AdamW, clipping, warmup+cosine, autocast, accumulation and checkpoints.

    Args:
        model: maps inputs to logits (see the module docstring). Moved to ``device``.
        train_loader, val_loader: iterables of ``(inputs, targets)``; ``val_loader`` may be ``None``.
        lr, weight_decay, betas: AdamW's settings (see :func:`configure_optimizer`).
        grad_clip: maximum global gradient norm (``None`` or 0: no clipping).
        warmup_steps, schedule, min_lr: the learning-rate schedule of :func:`lr_at` (``schedule="constant"``
            with ``warmup_steps=0`` is a fixed learning rate, as in Raschka's chapter 5).
        accumulation_steps: micro-batches per optimizer step.
        eval_every: evaluate every that many optimizer steps (``None``: only at the end of each epoch; the end
            of every epoch is always evaluated). ``eval_batches``: batches per evaluation (``None``: all).
            Evaluation never changes the training run: it puts every random-number state back afterwards.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (see :func:`llmscratch.utils.get_device`).
        precision: ``"auto"`` (:func:`llmscratch.utils.autocast_dtype`: bf16/fp16 on GPUs, float32 on the CPU)
            or ``"fp32"`` to switch autocast off.
        callback: called as ``callback(trainer)`` at the end of every epoch, after the evaluation.
        optimizer: your own optimizer instead of AdamW.
        loss_fn: ``loss_fn(model, inputs, targets, device) -> scalar``; default :func:`calc_loss_batch`.
        progress: show a ``tqdm.auto`` progress bar.
        checkpoint_dir: a folder for ``last.pt`` (and ``best.pt``), written atomically; temporary files that a
            killed save left there are removed when the trainer is built.
        checkpoint_every: write ``last.pt`` every that many optimizer steps (``None``: only when ``fit`` ends);
            ``fit`` always writes it when it returns.
        keep_best: also keep ``best.pt``, the checkpoint with the lowest validation loss seen at an evaluation.

    State: ``step`` (optimizer steps done), ``epoch`` (epochs completed), ``tokens_seen``, ``history``, and the
    position inside the current epoch (micro-batches trained on), so that ``load_checkpoint(DIR / "last.pt")``
    followed by the same ``fit`` call as the interrupted run continues exactly where it stopped.
    """

    def __init__(self, model: nn.Module, train_loader: Iterable, val_loader: Iterable | None = None, *,
                 lr: float = 4e-4, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                 grad_clip: float | None = 1.0, warmup_steps: int = 0, schedule: str = "constant",
                 min_lr: float = 0.0, accumulation_steps: int = 1, eval_every: int | None = None,
                 eval_batches: int | None = None, device="auto", precision: str = "auto",
                 callback: Callable[["Trainer"], None] | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 loss_fn: Callable[..., torch.Tensor] = calc_loss_batch, progress: bool = True,
                 checkpoint_dir: str | Path | None = None, checkpoint_every: int | None = None,
                 keep_best: bool = False):
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be a positive int, got {accumulation_steps!r}")
        if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
            raise ValueError(f"eval_every must be a positive int (optimizer steps) or None, got {eval_every!r}")
        if grad_clip is not None and grad_clip < 0:
            raise ValueError(f"grad_clip must be a positive max norm, 0 or None (off), got {grad_clip}")
        if precision not in ("auto", "fp32"):
            raise ValueError(f"precision must be 'auto' or 'fp32', got {precision!r}")
        if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be a positive int (optimizer steps) or None, "
                             f"got {checkpoint_every!r}")
        if checkpoint_dir is None and (checkpoint_every is not None or keep_best):
            raise ValueError("checkpoint_every and keep_best need checkpoint_dir= (the folder for last.pt/best.pt)")
        if keep_best and val_loader is None:
            raise ValueError("keep_best=True keeps the checkpoint with the lowest validation loss: pass a val_loader")
        lr_at(0, lr, warmup_steps, 1, min_lr, schedule)  # validates the schedule arguments early
        self.device = get_device(device)
        self.model = model.to(self.device)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.lr, self.warmup_steps, self.schedule, self.min_lr = lr, warmup_steps, schedule, min_lr
        self.grad_clip = grad_clip or None
        self.accumulation_steps = accumulation_steps
        self.eval_every, self.eval_batches = eval_every, eval_batches
        self.callback, self.loss_fn, self.progress = callback, loss_fn, progress
        self.optimizer = optimizer or configure_optimizer(self.model, lr, weight_decay, betas, self.device)
        self.amp_dtype = autocast_dtype(self.device) if precision == "auto" else None
        # fp16 has a narrow exponent range: scale the loss up so small gradients do not flush to zero.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every, self.keep_best = checkpoint_every, keep_best
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            remove_orphaned_temp_files(folder=self.checkpoint_dir)  # left by a save that was killed
        self.step = 0
        self.epoch = 0
        self.tokens_seen = 0
        self.total_steps: int | None = None
        self.best_val: float | None = None
        self.history = History()
        # Where the loop is inside the current epoch: micro-batches consumed by finished optimizer steps, and the
        # random-number states at the epoch's start (to replay its shuffle). _run_origin: the epoch at which the
        # unfinished fit call started (None when no fit is under way), so that repeating that call resumes it.
        self._batches_done = 0
        self._epoch_rng: dict | None = None
        self._exhausted = False  # the epoch's iterator has raised StopIteration (before a short last group)
        self._run_origin: int | None = None
        self._call: tuple[int, int | None] | None = None  # (epochs, max_steps) of the latest fit call
        self._finished_call: tuple[int, int | None] | None = None  # set by load_checkpoint: see fit

    # ---- one optimizer step ----------------------------------------------------------------------------------

    def _autocast(self):
        return autocast(self.device, enabled=self.amp_dtype is not None)

    def current_lr(self) -> float:
        return lr_at(self.step, self.lr, self.warmup_steps, self.total_steps, self.min_lr, self.schedule)

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """One optimizer step over ``micro_batches`` (a list of ``(inputs, targets)``; its length is normally
        ``accumulation_steps``). Returns the mean training loss of the micro-batches.

        Each micro-batch loss is divided by the number of micro-batches before ``backward``, so the summed
        gradients are those of the mean loss over all of them (one big batch, when the sizes are equal).

        A non-finite loss (or, with ``grad_clip``, a non-finite gradient norm outside fp16 loss scaling) raises
        ``FloatingPointError`` *before* the optimizer step, naming the cause (NaN/inf inputs, a micro-batch whose
        targets are all ``ignore_index``, non-finite weights, overflowing logits): weights, optimizer state and
        counters stay as they were.
        """
        if isinstance(micro_batches, tuple) and len(micro_batches) == 2 and isinstance(micro_batches[0], torch.Tensor):
            micro_batches = [micro_batches]
        if not micro_batches:
            raise ValueError("train_step needs at least one (inputs, targets) micro-batch")
        self.model.train()
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        k = len(micro_batches)
        total = 0.0
        tokens_before = self.tokens_seen
        try:
            for i, (inputs, targets) in enumerate(_unpack(b) for b in micro_batches):
                with self._autocast():
                    loss = self.loss_fn(self.model, inputs, targets, self.device)
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(self._explain_nonfinite_loss(value, inputs, targets, i, k))
                self.scaler.scale(loss / k).backward()
                total += value
                self.tokens_seen += inputs.numel()
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                # With fp16 loss scaling an inf gradient is expected now and then: the scaler skips that step.
                if not self.scaler.is_enabled() and not math.isfinite(norm.item()):
                    raise FloatingPointError(
                        f"the gradients of optimizer step {self.step + 1} are not finite (norm {norm.item()}) "
                        f"although the loss ({total / k:.4g}) is: backward overflowed. Lower the learning rate or "
                        "use precision='fp32'. The weights were not updated"
                    )
        except BaseException:
            self.optimizer.zero_grad(set_to_none=True)  # nothing of the failed step may leak into the next one
            self.tokens_seen = tokens_before
            raise
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        mean = total / k
        self.history.step_loss.append(mean)
        self.history.step_lr.append(lr)
        return mean

    def _explain_nonfinite_loss(self, value: float, inputs: torch.Tensor, targets: torch.Tensor, i: int,
                                k: int) -> str:
        """Why a micro-batch's loss is NaN/inf, checked in the order of the likely causes."""
        where = f"the batch of optimizer step {self.step + 1}" if k == 1 else \
            f"micro-batch {i + 1} of {k} of optimizer step {self.step + 1}"
        head = f"the training loss is {value} for {where}"
        tail = "The weights were not updated."
        if torch.is_floating_point(inputs) and not bool(torch.isfinite(inputs).all()):
            n = int((~torch.isfinite(inputs)).sum())
            return (f"{head}: its inputs contain {n} NaN/inf value(s) out of {inputs.numel()}, so the data is broken, "
                    "not the optimisation. Find the examples (torch.isfinite(x).all() over the dataset) and fix or "
                    f"drop them. {tail}")
        if isinstance(targets, torch.Tensor) and not bool((targets != IGNORE_INDEX).any()):
            return (f"{head}: every target in it is ignore_index ({IGNORE_INDEX}), and a mean over 0 tokens is 0/0. "
                    "Drop examples without a single target (fully padded rows, or prompts that fill the context) "
                    f"from the dataset. {tail}")
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            return (f"{head}: the model's weights were already non-finite before this step ({', '.join(bad[:5])}"
                    f"{' ...' if len(bad) > 5 else ''}); they were loaded or set that way. Reload a good "
                    f"checkpoint. {tail}")
        try:
            with torch.no_grad(), self._autocast():
                logits = logits_of(self.model(inputs.to(self.device)))
            outputs_finite = bool(torch.isfinite(logits).all())
        except Exception:  # noqa: BLE001 - a custom loss_fn may call the model differently; skip this check
            outputs_finite = None
        if outputs_finite is False:
            precision = f" in {str(self.amp_dtype).replace('torch.', '')}" if self.amp_dtype is not None else ""
            return (f"{head}: the model's outputs (logits) overflow to NaN/inf{precision} although its inputs and "
                    "weights are finite: training diverged. Lower the learning rate, keep grad_clip on, or use "
                    f"bf16 / precision='fp32' instead of fp16. {tail}")
        return (f"{head}: the inputs, weights{' and logits' if outputs_finite else ''} are finite, so the loss "
                f"function made it (check loss_fn for a log of 0 or a division by a zero count). {tail}")

    # ---- evaluation ------------------------------------------------------------------------------------------

    def evaluate(self) -> tuple[float, float | None]:
        """Train and validation loss on ``eval_batches`` batches, appended to the history (and ``best.pt``
        written when ``keep_best`` and the validation loss is the lowest so far).

        Every random-number state (PyTorch's, Python's, NumPy's, the loaders' generators) is put back afterwards,
        so evaluating, or how often, never changes which batches or dropout masks training sees."""
        loaders = [x for x in (self.train_loader, self.val_loader) if x is not None]
        saved = _rng_state(loaders)
        try:
            train_loss, val_loss = evaluate(self.model, self.train_loader, self.val_loader, self.device,
                                             self.eval_batches, amp=self.amp_dtype is not None)
        finally:
            _set_rng_state(saved, loaders)
        h = self.history
        h.steps.append(self.step)
        h.epochs.append(self.epoch + 1)
        h.tokens_seen.append(self.tokens_seen)
        h.train_loss.append(train_loss)
        h.val_loss.append(val_loss)
        h.lr.append(self.history.step_lr[-1] if self.history.step_lr else self.current_lr())
        if self.keep_best and val_loss is not None and (self.best_val is None or val_loss < self.best_val):
            self.best_val = val_loss
            self.save_checkpoint(self.checkpoint_dir / "best.pt")
        return train_loss, val_loss

    # ---- the loop --------------------------------------------------------------------------------------------

    def fit(self, epochs: int = 1, max_steps: int | None = None) -> History:
        """Train until ``epochs`` epochs are done (or ``max_steps`` optimizer steps in total); return the history.

        ``epochs`` counts from the epoch where this run started. A run is finished when its epochs are done;
        until then (stopped by ``max_steps``, an exception, or a killed process resumed with
        :meth:`load_checkpoint`) the next ``fit`` call continues it, mid-epoch included: the same
        ``fit(epochs=E, max_steps=N)`` call as the interrupted run ends exactly where an uninterrupted run
        would. Once a run is finished, ``fit(1)`` trains one more epoch; only right after
        :meth:`load_checkpoint` of a checkpoint written at the end of a finished run, repeating the call that
        finished it does nothing (with a warning), so a script that loads ``last.pt`` and calls ``fit`` can be
        re-run after any interruption. Steps, tokens, the learning-rate schedule and the history carry on.

        With ``checkpoint_dir``, ``last.pt`` is written every ``checkpoint_every`` steps and when ``fit`` returns.
        """
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 0):
            raise ValueError(f"max_steps must be a non-negative int (optimizer steps in total) or None, "
                             f"got {max_steps!r}")
        n_batches = self._n_batches()
        if n_batches == 0:
            raise ValueError("the training loader is empty: use a smaller batch_size or drop_last=False, or more data")
        finished_call, self._finished_call = self._finished_call, None
        if finished_call == (epochs, max_steps):
            warnings.warn(
                f"fit(epochs={epochs}, max_steps={max_steps}) is the call that finished the run of the checkpoint "
                "just loaded: nothing is left to train (re-running a resume script is safe). Call fit again to "
                "train more", stacklevel=2)
            return self.history
        if self._run_origin is None:
            self._run_origin = self.epoch
        self._call = (epochs, max_steps)
        target = self._run_origin + epochs
        planned = None
        if n_batches is not None:
            steps_per_epoch = math.ceil(n_batches / self.accumulation_steps)
            left = 0
            if self.epoch < target:
                left = (math.ceil((n_batches - self._batches_done) / self.accumulation_steps)
                        + (target - self.epoch - 1) * steps_per_epoch)
            planned = self.step + left
        if max_steps is not None:
            planned = min(planned, max_steps) if planned is not None else max_steps
        if self.total_steps is None:
            self.total_steps = planned  # the cosine schedule spans the first planned run (kept when resuming)
        if self.schedule == "cosine" and self.total_steps is None:
            raise ValueError("the cosine schedule needs a loader with len() or max_steps")

        bar = _progress_bar(max(0, planned - self.step) if planned is not None else None, self.progress)
        start = time.perf_counter()
        try:
            while self.epoch < target and not self._reached(max_steps):
                self._train_epoch(max_steps, n_batches, bar)
            if self.epoch < target and (not self.history.steps or self.history.steps[-1] != self.step):
                self.evaluate()  # stopped by max_steps inside an epoch: record where it stopped
            if self.epoch >= target:
                self._run_origin = None  # the run is finished; the next fit starts a new one
            if self.checkpoint_dir is not None:
                self.save_checkpoint(self.checkpoint_dir / "last.pt")
        finally:
            bar.close()
            self.history.wall_time += time.perf_counter() - start
        return self.history

    def _n_batches(self) -> int | None:
        try:
            return len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            return None

    def _reached(self, max_steps: int | None) -> bool:
        return max_steps is not None and self.step >= max_steps

    def _epoch_batches(self) -> Iterable:
        """An iterator over the current epoch's batches, positioned after the ones already trained on.

        At the start of an epoch it records every random-number state first, because ``iter(loader)`` draws the
        shuffle from them. In the middle of an epoch (after :meth:`load_checkpoint`, or a ``fit`` that
        ``max_steps`` stopped) it replays the epoch: it sets those states back, makes the same iterator (same
        order), skips the batches already trained on without running the model, then restores the current
        states (dropout masks continue where they were)."""
        sampler = getattr(self.train_loader, "sampler", None)
        if self._batches_done == 0 or self._epoch_rng is None:
            self._batches_done, self._exhausted = 0, False
            self._epoch_rng = _rng_state([self.train_loader])
            if hasattr(sampler, "set_epoch"):  # DistributedSampler: its shuffle is seeded by seed + epoch
                sampler.set_epoch(self.epoch)
            return iter(self.train_loader)
        now = _rng_state([self.train_loader])
        _set_rng_state(self._epoch_rng, [self.train_loader])
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        batches = iter(self.train_loader)
        for i in range(self._batches_done):
            try:
                next(batches)
            except StopIteration:
                raise ValueError(
                    f"the training loader gave only {i} batches this epoch, but {self._batches_done} were already "
                    "trained on: resume with the same data, batch_size and drop_last as the saved run"
                ) from None
        if self._exhausted:
            # The saved run had already hit the end (a short last group was pending); ending an iterator can
            # draw from the generators too (RandomSampler does), so end it here as well.
            for _ in batches:
                pass
            batches = iter(())
        _set_rng_state(now, [self.train_loader])
        return batches

    def _train_epoch(self, max_steps: int | None, n_batches: int | None, bar) -> None:
        """Train on the rest of the current epoch; count it as done only if all of it was trained on."""
        buffer: list = []
        exhausted = True
        for batch in self._epoch_batches():
            buffer.append(_unpack(batch))
            if len(buffer) < self.accumulation_steps:
                continue
            self._optimizer_step(buffer, bar)
            buffer = []
            if self._reached(max_steps):
                exhausted = False
                break
        else:
            self._exhausted = True
            if buffer:
                self._optimizer_step(buffer, bar)  # a short last group: still one step, mean over what is there
        if not exhausted and (n_batches is None or self._batches_done < n_batches):
            return  # stopped by max_steps inside the epoch: it is not done, and the next fit continues it
        if not self.history.steps or self.history.steps[-1] != self.step:
            self.evaluate()
        self.epoch += 1
        self._batches_done, self._epoch_rng, self._exhausted = 0, None, False
        if self.callback is not None:
            self.callback(self)

    def _optimizer_step(self, buffer: list, bar) -> None:
        loss = self.train_step(buffer)
        self._batches_done += len(buffer)
        bar.update(1)
        postfix = {"epoch": self.epoch + 1, "loss": f"{loss:.3f}"}
        if self.eval_every is not None and self.step % self.eval_every == 0:
            tr, va = self.evaluate()
            postfix.update(train=f"{tr:.3f}", val=f"{va:.3f}" if va is not None else "-")
        bar.set_postfix(postfix)
        if self.checkpoint_every is not None and self.step % self.checkpoint_every == 0:
            self.save_checkpoint(self.checkpoint_dir / "last.pt")

    # ---- checkpoints -----------------------------------------------------------------------------------------

    def _settings(self) -> dict:
        return {"lr": self.lr, "warmup_steps": self.warmup_steps, "schedule": self.schedule, "min_lr": self.min_lr,
                "grad_clip": self.grad_clip, "precision": str(self.amp_dtype).replace("torch.", "")}

    def save_checkpoint(self, path: str | Path) -> Path:
        """Everything needed to continue exactly, written atomically: model (class, config, weights), optimizer,
        grad scaler, counters, schedule, history, the position inside the epoch (micro-batches trained on and
        the random-number states at the epoch's start, to replay its order) and every random-number state now."""
        return save_checkpoint(
            path, self.model, self.optimizer, self.step,
            epoch=self.epoch, tokens_seen=self.tokens_seen, total_steps=self.total_steps,
            scaler=self.scaler.state_dict(), history=self.history.to_dict(), best_val=self.best_val,
            rng=_rng_state([self.train_loader]),
            settings=self._settings(),
            position={"batches_done": self._batches_done, "epoch_rng": self._epoch_rng, "exhausted": self._exhausted,
                      "run_origin": self._run_origin,
                      "call": list(self._call) if self._call is not None else None,
                      "accumulation_steps": self.accumulation_steps,
                      "n_batches": self._n_batches()},
        )

    def load_checkpoint(self, path: str | Path, restore_rng: bool = True) -> dict:
        """Restore everything :meth:`save_checkpoint` wrote, so the next step is the one the saved run would
        have taken; the same ``fit`` call as the saved run then continues it (see :meth:`fit`).

        ``restore_rng=False`` keeps this process's random-number states (the data order of an epoch that was
        interrupted is still replayed)."""
        path = Path(path)
        ckpt = _read_checkpoint(path)
        if ckpt.get("optimizer") is None:
            raise ValueError(
                f"{path} holds model weights only (save_checkpoint without an optimizer), so there is no training "
                "state to resume. To start training from these weights, call "
                "llmscratch.train.load_checkpoint(path, trainer.model) and then trainer.fit(...)"
            )
        position = ckpt.get("position") or {}
        saved_accumulation = position.get("accumulation_steps", self.accumulation_steps)
        if saved_accumulation != self.accumulation_steps:
            raise CheckpointMismatchError(
                f"{path.name} was saved with accumulation_steps={saved_accumulation} and this trainer has "
                f"{self.accumulation_steps}: build the Trainer with accumulation_steps={saved_accumulation} to resume"
            )
        saved_batches, n_batches = position.get("n_batches"), self._n_batches()
        if position.get("batches_done") and saved_batches is not None and n_batches is not None \
                and saved_batches != n_batches:
            raise CheckpointMismatchError(
                f"{path.name} stopped inside an epoch of {saved_batches} batches, and this training loader has "
                f"{n_batches}: resume with the same data, batch_size and drop_last"
            )
        saved_generators = len((ckpt.get("rng") or {}).get("loaders", []))
        generators = len(_loader_generators(self.train_loader))
        if "loaders" in (ckpt.get("rng") or {}) and saved_generators != generators:
            raise CheckpointMismatchError(
                f"{path.name} holds the state of {saved_generators} data-loader generator(s) and this training "
                f"loader has {generators}: build the loader as in the saved run (the same shuffle= and "
                "generator=) so that its order can be replayed"
            )
        _load_into(ckpt, path, self.model, self.optimizer)  # every check passed: now change the trainer
        changed = [f"{k} {v!r} (saved run: {ckpt['settings'][k]!r})" for k, v in self._settings().items()
                   if k in (ckpt.get("settings") or {}) and ckpt["settings"][k] != v]
        if changed:  # allowed (e.g. a lower lr after a divergence), but then the run is not the saved one
            warnings.warn(f"resuming {path.name} with other training settings: {', '.join(changed)}; training "
                          "continues, but not as the saved run would have", stacklevel=2)
        self.step = ckpt["step"]
        self.epoch = ckpt.get("epoch", 0)
        self.tokens_seen = ckpt.get("tokens_seen", 0)
        self.total_steps = ckpt.get("total_steps")
        self.best_val = ckpt.get("best_val")
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("history"):
            self.history = History.from_dict(ckpt["history"])
        self._batches_done = position.get("batches_done", 0)
        self._epoch_rng = position.get("epoch_rng")
        self._exhausted = bool(position.get("exhausted", False))
        self._run_origin = position.get("run_origin")
        call = position.get("call")
        # A checkpoint written when its fit call had finished: repeating that very call must not train again.
        self._finished_call = tuple(call) if call is not None and self._run_origin is None else None
        if restore_rng and ckpt.get("rng"):
            _set_rng_state(ckpt["rng"], [self.train_loader])
        return ckpt


def train(model: nn.Module, train_loader: Iterable, val_loader: Iterable | None = None, epochs: int = 1,
          max_steps: int | None = None, **kwargs: Any) -> History:
    """Train ``model`` for ``epochs`` epochs and return the :class:`History` (``kwargs`` go to :class:`Trainer`)."""
    return Trainer(model, train_loader, val_loader, **kwargs).fit(epochs, max_steps=max_steps)


# --------------------------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------------------------


def sample_callback(tokenizer, prompt: str = "Every effort moves you", max_new_tokens: int = 25,
                    context_length: int | None = None, printer: Callable[[str], None] = print,
                    **generate_kwargs: Any) -> Callable[[Trainer], None]:
    """A :class:`Trainer` callback that prints a greedy continuation of ``prompt`` after every epoch.

    It uses :func:`llmscratch.generate.generate` when the model has a KV cache (``generate_kwargs`` go there,
    e.g. ``temperature=0.8, top_k=40``), and a plain model-agnostic greedy loop otherwise, cropping to
    ``context_length`` tokens (default: ``model.cfg.context_length`` when the model has one). The samples
    are also kept in ``callback.samples`` as ``(epoch, text)`` pairs.
    """
    samples: list[tuple[int, str]] = []
    generate_kwargs.setdefault("crop", True)  # a sample must never stop training: slide past the context

    def callback(trainer: Trainer) -> None:
        model = trainer.model
        ctx = context_length or getattr(getattr(_unwrap(model), "cfg", None), "context_length", None)
        ids = torch.tensor([tokenizer.encode(prompt)], device=trainer.device)
        was_training = model.training
        model.eval()
        try:
            out = _generate_any(model, ids, max_new_tokens, ctx, **generate_kwargs)
        finally:
            model.train(was_training)
        text = tokenizer.decode(out[0].tolist())
        samples.append((trainer.epoch, text))
        printer(f"epoch {trainer.epoch}: {text!r}")

    callback.samples = samples  # type: ignore[attr-defined]
    return callback


def _generate_any(model: nn.Module, ids: torch.Tensor, max_new_tokens: int, context_length: int | None,
                  **generate_kwargs: Any) -> torch.Tensor:
    try:
        from .generate import generate
    except ImportError:  # pragma: no cover - generate ships with the package
        generate = None
    if generate is not None and hasattr(_unwrap(model), "new_cache"):
        with torch.no_grad():
            return generate(model, ids, max_new_tokens, **generate_kwargs)
    # Any ids -> logits model: greedy, one full forward pass per new token.
    generate_kwargs.pop("crop", None)
    if generate_kwargs:
        raise TypeError(f"{sorted(generate_kwargs)} need llmscratch.generate and a model with a KV cache (new_cache)")
    with torch.no_grad():
        for _ in range(max_new_tokens):
            window = ids if context_length is None else ids[:, -context_length:]
            logits = logits_of(model(window))[:, -1, :]
            ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return ids
