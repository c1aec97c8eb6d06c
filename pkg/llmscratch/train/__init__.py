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
- **mixed precision** with ``torch.amp`` (:mod:`.precision`): bf16 on GPUs that have it, fp16 with a
  ``GradScaler`` on older GPUs (steps skipped on overflow are counted), float32 on the CPU unless asked;
- **exact gradient accumulation**: ``accumulation_steps`` micro-batches per optimizer step, each mean loss
  weighted by its share of the step's targets, so k micro-batches give the gradient of one batch of all their
  tokens, padding or not;
- **data parallelism** under ``torchrun`` (:mod:`.distributed`): the same ``Trainer`` wraps the model in DDP,
  shards the data, syncs gradients once per step and writes checkpoints on rank 0;
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

The package: :mod:`.loss` (losses, perplexity), :mod:`.optim` (AdamW, schedule), :mod:`.history`,
:mod:`.checkpoints`, :mod:`.loop` (the Trainer), :mod:`.precision`, :mod:`.distributed`, :mod:`.memory` (the
memory budget of a step and its measurement), :mod:`.parallel` (pipeline and tensor parallelism).

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


from .checkpoints import (CHECKPOINT_FORMAT, CheckpointCorruptError, CheckpointMismatchError, load_checkpoint,
                          save_checkpoint)
from .history import History
from .loss import IGNORE_INDEX, calc_loss_batch, calc_loss_loader, evaluate, logits_of, perplexity
from .loop import Trainer, sample_callback, train
from .optim import configure_optimizer, lr_at
from . import distributed, memory, precision  # noqa: E402  (submodules: llmscratch.train.distributed, ...)
from .memory import memory_budget, saved_activation_bytes


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
    "memory_budget",
    "saved_activation_bytes",
]
