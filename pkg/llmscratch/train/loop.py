"""The training loop: :class:`Trainer`, :func:`train` and the :func:`sample_callback`."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..utils import get_device, remove_orphaned_temp_files
from . import distributed as D
from .checkpoints import (CheckpointMismatchError, _load_into, _loader_generators, _read_checkpoint, _rng_state,
                          _set_rng_state, _unwrap, save_checkpoint)
from .history import History
from .loss import IGNORE_INDEX, _unpack, calc_loss_batch, evaluate, logits_of
from .optim import configure_optimizer, lr_at
from .precision import amp_dtype_of, make_grad_scaler, resolve_precision

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
        precision: ``"auto"`` (bf16 on GPUs that have it, fp16 with loss scaling on older GPUs, float32 on the
            CPU; see :func:`llmscratch.train.precision.resolve_precision`), ``"bf16"``, ``"fp16"`` (autocast plus
            a ``torch.amp.GradScaler``; steps skipped on overflow are counted in ``skipped_steps`` and
            ``history.skipped_steps``) or ``"fp32"``.
        loss_weighting: how the micro-batches of one optimizer step are combined. ``"tokens"`` (exact): each
            micro-batch's mean loss is weighted by its number of targets (non-``ignore_index``) over the total of
            the whole accumulated batch (all processes included), so k micro-batches give the gradient of one
            batch of all their tokens even when padding differs. ``"micro_batch"``: the mean of the micro-batch
            means (what dividing each loss by k computes; it over-weights the tokens of short micro-batches),
            kept to show the difference.
        callback: called as ``callback(trainer)`` at the end of every epoch, after the evaluation.
        optimizer: your own optimizer instead of AdamW.
        loss_fn: ``loss_fn(model, inputs, targets, device) -> scalar``; default :func:`calc_loss_batch`.
        progress: show a ``tqdm.auto`` progress bar.
        checkpoint_dir: a folder for ``last.pt`` (and ``best.pt``), written atomically; temporary files that a
            killed save left there are removed when the trainer is built.
        checkpoint_every: write ``last.pt`` every that many optimizer steps (``None``: only when ``fit`` ends);
            ``fit`` always writes it when it returns.
        keep_best: also keep ``best.pt``, the checkpoint with the lowest validation loss seen at an evaluation.

    Under ``torchrun`` (after :func:`llmscratch.train.distributed.init_distributed`) the same code trains data
    parallel: the model is wrapped in ``DistributedDataParallel`` (not when it is already sharded by FSDP2), the
    training loader is sharded with a ``DistributedSampler``, gradients are all-reduced once per optimizer step
    (``no_sync`` on the other micro-batches), and only rank 0 shows progress and writes checkpoints.

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
                 keep_best: bool = False, loss_weighting: str = "tokens"):
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be a positive int, got {accumulation_steps!r}")
        if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
            raise ValueError(f"eval_every must be a positive int (optimizer steps) or None, got {eval_every!r}")
        if grad_clip is not None and grad_clip < 0:
            raise ValueError(f"grad_clip must be a positive max norm, 0 or None (off), got {grad_clip}")
        if loss_weighting not in ("tokens", "micro_batch"):
            raise ValueError(f"loss_weighting must be 'tokens' (exact) or 'micro_batch', got {loss_weighting!r}")
        if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be a positive int (optimizer steps) or None, "
                             f"got {checkpoint_every!r}")
        if checkpoint_dir is None and (checkpoint_every is not None or keep_best):
            raise ValueError("checkpoint_every and keep_best need checkpoint_dir= (the folder for last.pt/best.pt)")
        if keep_best and val_loader is None:
            raise ValueError("keep_best=True keeps the checkpoint with the lowest validation loss: pass a val_loader")
        lr_at(0, lr, warmup_steps, 1, min_lr, schedule)  # validates the schedule arguments early
        self.device = get_device(device)
        self.precision = resolve_precision(precision, self.device)
        # Under torchrun: one DDP replica per process, and this process's share of the training data.
        self.model = D.wrap_model(model.to(self.device), self.device)
        self.train_loader = D.shard_loader(train_loader)
        self.val_loader = val_loader
        self.loss_weighting = loss_weighting
        self.lr, self.warmup_steps, self.schedule, self.min_lr = lr, warmup_steps, schedule, min_lr
        self.grad_clip = grad_clip or None
        self.accumulation_steps = accumulation_steps
        self.eval_every, self.eval_batches = eval_every, eval_batches
        self.callback, self.loss_fn, self.progress = callback, loss_fn, progress
        self.optimizer = optimizer or configure_optimizer(self.model, lr, weight_decay, betas, self.device)
        self.amp_dtype = amp_dtype_of(self.precision)
        # fp16 has a narrow exponent range: scale the loss up so small gradients do not flush to zero.
        self.scaler = make_grad_scaler(self.precision, self.device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every, self.keep_best = checkpoint_every, keep_best
        if self.checkpoint_dir is not None and D.is_main_process():
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            remove_orphaned_temp_files(folder=self.checkpoint_dir)  # left by a save that was killed
        D.barrier()
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

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps that fp16 loss scaling skipped (a gradient overflowed); 0 outside fp16."""
        return len(self.history.skipped_steps)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def _micro_batch_weights(self, micro_batches: list) -> tuple[list[float], int]:
        """The factor of each micro-batch's mean loss, and the input tokens of the step (all processes).

        ``"tokens"``: ``n_i * world_size / N`` with ``n_i`` the targets of micro-batch ``i`` and ``N`` those of
        the whole step on every process: DDP averages the gradients over the ``world_size`` processes, so the
        sum is the gradient of the mean loss over all ``N`` targets. ``"micro_batch"``: ``1 / k``."""
        counts = [int((torch.as_tensor(t) != IGNORE_INDEX).sum()) for _, t in micro_batches]
        inputs = sum(torch.as_tensor(x).numel() for x, _ in micro_batches)
        world = D.world_size() if D.is_distributed() else 1
        totals = torch.tensor([sum(counts), inputs], dtype=torch.float64)
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(totals)  # one tiny collective per step: the global target and token counts
        total_targets, total_inputs = float(totals[0]), int(totals[1])
        if self.loss_weighting == "micro_batch" or total_targets == 0:
            return [1.0 / len(micro_batches)] * len(micro_batches), total_inputs
        return [n * world / total_targets for n in counts], total_inputs

    def current_lr(self) -> float:
        return lr_at(self.step, self.lr, self.warmup_steps, self.total_steps, self.min_lr, self.schedule)

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """One optimizer step over ``micro_batches`` (a list of ``(inputs, targets)``; its length is normally
        ``accumulation_steps``). Returns the training loss of the step (the mean over all its targets).

        Each micro-batch's mean loss is multiplied by its share of the step's targets before ``backward``
        (``loss_weighting="tokens"``), so the summed gradients are those of the mean loss over every target of
        the step: exactly one batch of all the micro-batches, even when they hold different numbers of
        non-padding tokens. Under DDP the gradients are all-reduced on the last micro-batch only.

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
        micro_batches = [_unpack(b) for b in micro_batches]
        k = len(micro_batches)
        weights, step_tokens = self._micro_batch_weights(micro_batches)
        total = 0.0
        tokens_before = self.tokens_seen
        try:
            for i, (inputs, targets) in enumerate(micro_batches):
                # Under DDP/FSDP: no gradient all-reduce until the last micro-batch (one per optimizer step).
                with D.no_gradient_sync(self.model, skip=i < k - 1):
                    with self._autocast():
                        loss = self.loss_fn(self.model, inputs, targets, self.device)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise FloatingPointError(self._explain_nonfinite_loss(value, inputs, targets, i, k))
                    self.scaler.scale(loss * weights[i]).backward()
                total += value * weights[i]
            self.tokens_seen += step_tokens
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                if hasattr(norm, "full_tensor"):  # a sharded (FSDP2) model: the norm is a DTensor
                    norm = norm.full_tensor()
                # With fp16 loss scaling an inf gradient is expected now and then: the scaler skips that step.
                if not self.scaler.is_enabled() and not math.isfinite(norm.item()):
                    raise FloatingPointError(
                        f"the gradients of optimizer step {self.step + 1} are not finite (norm {norm.item()}) "
                        f"although the loss ({total:.4g}) is: backward overflowed. Lower the learning rate or "
                        "use precision='fp32'. The weights were not updated"
                    )
        except BaseException:
            self.optimizer.zero_grad(set_to_none=True)  # nothing of the failed step may leak into the next one
            self.tokens_seen = tokens_before
            raise
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)  # skipped (weights unchanged) when an fp16 gradient overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if scale is not None and self.scaler.get_scale() < scale:  # the scaler halves its scale after a skip
            self.history.skipped_steps.append(self.step)
        mean = total
        if D.is_distributed():  # the weighted losses of all processes sum to world_size times the step's mean
            import torch.distributed as dist

            t = torch.tensor([total], dtype=torch.float64)
            dist.all_reduce(t)
            mean = float(t) / D.world_size()
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
                                             self.eval_batches, amp=self.amp_dtype or False)
        finally:
            _set_rng_state(saved, loaders)
        if D.is_distributed():  # each process evaluated its shard of the training data: average over them
            import torch.distributed as dist

            t = torch.tensor([train_loss, val_loss if val_loss is not None else 0.0], dtype=torch.float64)
            dist.all_reduce(t)
            train_loss = float(t[0]) / D.world_size()
            val_loss = float(t[1]) / D.world_size() if val_loss is not None else None
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

        bar = _progress_bar(max(0, planned - self.step) if planned is not None else None,
                            self.progress and D.is_main_process())
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
        if self.skipped_steps:
            postfix["skipped"] = self.skipped_steps  # fp16 overflow: reported, as the weights did not move
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
        the random-number states at the epoch's start, to replay its order) and every random-number state now.

        Under torchrun every process calls it: a ``ZeroRedundancyOptimizer`` first gathers its shards on rank 0,
        rank 0 writes the file (the other ranks wait at a barrier), and all continue once it is complete."""
        path = Path(path)
        if D.is_sharded(self.model):
            raise NotImplementedError(
                "Trainer checkpoints hold whole tensors, and this model is sharded (FSDP2 / tensor parallel): save "
                "it with torch.distributed.checkpoint (each rank writes its shards), or train with DDP or ZeRO-1 "
                "(ZeroRedundancyOptimizer) to use checkpoint_dir")
        if hasattr(self.optimizer, "consolidate_state_dict"):  # ZeRO-1: every rank must take part
            self.optimizer.consolidate_state_dict(to=0)
        D.barrier()
        if D.is_main_process():
            self._write_checkpoint(path)
        D.barrier()  # nobody reads or overwrites the file before it is complete
        return path

    def _write_checkpoint(self, path: Path) -> Path:
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
        from ..generate import generate
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