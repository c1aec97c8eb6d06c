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
  destroys the previous checkpoint; loading checks the checkpoint against the model and names what differs.

Usage::

    from llmscratch.train import train
    history = train(model, train_loader, val_loader, epochs=10, lr=4e-4, eval_every=5)
    history.plot()
"""

from __future__ import annotations

import math
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from .utils import atomic_write, autocast, autocast_dtype, get_device

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


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model (missing, unexpected, or differently shaped)."""


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps the model; save and load the original module so names carry no "_orig_mod." prefix.
    return getattr(model, "_orig_mod", model)


def _atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`llmscratch.utils.atomic_write`: a crash mid-save leaves the old file intact."""
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(obj, f)
    return path


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    step: int = 0, **extra: Any) -> Path:
    """Write ``{"model", "optimizer", "step", **extra}`` to ``path`` atomically; return the path.

    Tensors are saved as they are (``torch.load(..., map_location=...)`` moves them); a compiled model is
    saved under its original parameter names.
    """
    state = {
        "format": "llmscratch.checkpoint/1",
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        **extra,
    }
    return _atomic_torch_save(state, path)


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


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    map_location=None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``); return the dict.

    Raises :class:`CheckpointMismatchError` naming the tensors that differ when the checkpoint was written for
    another model, and ``FileNotFoundError`` with the path when there is no file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first, or check the path")
    if map_location is None:
        map_location = _model_device(model)
    # weights_only=True: a checkpoint is data, never code to execute (safe to open one from elsewhere).
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the path and the likely cause
        raise ValueError(f"could not read the checkpoint {path}: {err}. Is it a file written by save_checkpoint?") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not an llmscratch checkpoint (a dict with a 'model' state dict)")
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
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (see :func:`llmscratch.utils.get_device`).
        precision: ``"auto"`` (:func:`llmscratch.utils.autocast_dtype`: bf16/fp16 on GPUs, float32 on the CPU)
            or ``"fp32"`` to switch autocast off.
        callback: called as ``callback(trainer)`` at the end of every epoch, after the evaluation.
        optimizer: your own optimizer instead of AdamW.
        loss_fn: ``loss_fn(model, inputs, targets, device) -> scalar``; default :func:`calc_loss_batch`.
        progress: show a ``tqdm.auto`` progress bar.

    State: ``step`` (optimizer steps done), ``epoch`` (epochs completed), ``tokens_seen``, ``history``.
    """

    def __init__(self, model: nn.Module, train_loader: Iterable, val_loader: Iterable | None = None, *,
                 lr: float = 4e-4, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                 grad_clip: float | None = 1.0, warmup_steps: int = 0, schedule: str = "constant",
                 min_lr: float = 0.0, accumulation_steps: int = 1, eval_every: int | None = None,
                 eval_batches: int | None = None, device="auto", precision: str = "auto",
                 callback: Callable[["Trainer"], None] | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 loss_fn: Callable[..., torch.Tensor] = calc_loss_batch, progress: bool = True):
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be a positive int, got {accumulation_steps!r}")
        if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
            raise ValueError(f"eval_every must be a positive int (optimizer steps) or None, got {eval_every!r}")
        if grad_clip is not None and grad_clip < 0:
            raise ValueError(f"grad_clip must be a positive max norm, 0 or None (off), got {grad_clip}")
        if precision not in ("auto", "fp32"):
            raise ValueError(f"precision must be 'auto' or 'fp32', got {precision!r}")
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
        self.step = 0
        self.epoch = 0
        self.tokens_seen = 0
        self.total_steps: int | None = None
        self.history = History()

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
        for inputs, targets in (_unpack(b) for b in micro_batches):
            with self._autocast():
                loss = self.loss_fn(self.model, inputs, targets, self.device)
            self.scaler.scale(loss / k).backward()
            total += loss.item()
            self.tokens_seen += inputs.numel()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        mean = total / k
        if not math.isfinite(mean):
            raise FloatingPointError(
                f"training loss became {mean} at step {self.step}: lower the learning rate, enable grad_clip, "
                "or use bf16 instead of fp16"
            )
        self.history.step_loss.append(mean)
        self.history.step_lr.append(lr)
        return mean

    # ---- evaluation ------------------------------------------------------------------------------------------

    def evaluate(self) -> tuple[float, float | None]:
        """Train and validation loss on ``eval_batches`` batches, appended to the history."""
        train_loss, val_loss = evaluate(self.model, self.train_loader, self.val_loader, self.device,
                                         self.eval_batches, amp=self.amp_dtype is not None)
        h = self.history
        h.steps.append(self.step)
        h.epochs.append(self.epoch + 1)
        h.tokens_seen.append(self.tokens_seen)
        h.train_loss.append(train_loss)
        h.val_loss.append(val_loss)
        h.lr.append(self.history.step_lr[-1] if self.history.step_lr else self.current_lr())
        return train_loss, val_loss

    # ---- the loop --------------------------------------------------------------------------------------------

    def fit(self, epochs: int = 1, max_steps: int | None = None) -> History:
        """Train for ``epochs`` more epochs (or until ``max_steps`` optimizer steps in total); return the history.

        Calling ``fit`` again (or after :meth:`load_checkpoint`) continues where training stopped: steps,
        tokens, the learning-rate schedule and the history carry on.
        """
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        try:
            n_batches = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            n_batches = None
        if n_batches == 0:
            raise ValueError("the training loader is empty: use a smaller batch_size or drop_last=False, or more data")
        steps_per_epoch = math.ceil(n_batches / self.accumulation_steps) if n_batches else None
        planned = self.step + epochs * steps_per_epoch if steps_per_epoch else None
        if max_steps is not None:
            planned = min(planned, max_steps) if planned is not None else max_steps
        if self.total_steps is None:
            self.total_steps = planned  # the cosine schedule spans the first planned run (kept when resuming)
        if self.schedule == "cosine" and self.total_steps is None:
            raise ValueError("the cosine schedule needs a loader with len() or max_steps")

        from tqdm.auto import tqdm

        bar = tqdm(total=(planned - self.step) if planned is not None else None, disable=not self.progress,
                   desc="training", unit="step")
        start = time.perf_counter()
        try:
            for _ in range(epochs):
                if max_steps is not None and self.step >= max_steps:
                    break
                buffer: list = []
                for batch in self.train_loader:
                    buffer.append(_unpack(batch))
                    if len(buffer) < self.accumulation_steps:
                        continue
                    loss = self.train_step(buffer)
                    buffer = []
                    bar.update(1)
                    postfix = {"epoch": self.epoch + 1, "loss": f"{loss:.3f}"}
                    if self.eval_every is not None and self.step % self.eval_every == 0:
                        tr, va = self.evaluate()
                        postfix.update(train=f"{tr:.3f}", val=f"{va:.3f}" if va is not None else "-")
                    bar.set_postfix(postfix)
                    if max_steps is not None and self.step >= max_steps:
                        break
                if buffer and not (max_steps is not None and self.step >= max_steps):
                    self.train_step(buffer)  # a short last group: still one step, mean over what is there
                    bar.update(1)
                if not self.history.steps or self.history.steps[-1] != self.step:
                    self.evaluate()
                self.epoch += 1
                if self.callback is not None:
                    self.callback(self)
        finally:
            bar.close()
            self.history.wall_time += time.perf_counter() - start
        return self.history

    # ---- checkpoints -----------------------------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path) -> Path:
        """Model, optimizer, grad scaler, counters, history and RNG state, written atomically."""
        return save_checkpoint(
            path, self.model, self.optimizer, self.step,
            epoch=self.epoch, tokens_seen=self.tokens_seen, total_steps=self.total_steps,
            scaler=self.scaler.state_dict(), history=self.history.to_dict(),
            rng={"torch": torch.get_rng_state(),
                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        )

    def load_checkpoint(self, path: str | Path, restore_rng: bool = True) -> dict:
        """Restore everything :meth:`save_checkpoint` wrote, so the next step is the one the saved run would
        have taken."""
        ckpt = load_checkpoint(path, self.model, self.optimizer, map_location=self.device)
        self.step = ckpt["step"]
        self.epoch = ckpt.get("epoch", 0)
        self.tokens_seen = ckpt.get("tokens_seen", 0)
        self.total_steps = ckpt.get("total_steps")
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("history"):
            self.history = History.from_dict(ckpt["history"])
        rng = ckpt.get("rng")
        if restore_rng and rng:
            torch.set_rng_state(rng["torch"].cpu())
            if rng.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
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
