"""What a training run records: losses, steps, tokens, learning rates."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .loss import perplexity



@dataclass
class History:
    """What a training run recorded.

    One entry per evaluation: ``steps`` (optimizer steps done), ``epochs`` (epoch number, 1-based, of the
    evaluation), ``tokens_seen`` (input tokens trained on), ``train_loss``, ``val_loss`` (``None`` without a
    validation loader) and ``lr``. One entry per optimizer step: ``step_loss`` (the training loss of that
    step's batch, a cheap running signal) and ``step_lr``. ``skipped_steps``: the optimizer steps that fp16 loss
    scaling skipped because a gradient overflowed (the scale is halved then; see ``Trainer(precision="fp16")``).
    ``wall_time`` is the training time in seconds.
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
    skipped_steps: list[int] = field(default_factory=list)

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
        from ..viz import plot_losses

        if x not in ("tokens", "steps"):
            raise ValueError(f"x must be 'tokens' or 'steps', got {x!r}")
        if not self.train_loss:
            raise ValueError("nothing to plot: the history has no evaluation yet (train first, or set eval_every)")
        xs = self.tokens_seen if x == "tokens" else self.steps
        val = self.val_loss if any(v is not None for v in self.val_loss) else None
        return plot_losses(self.train_loss, val, steps=xs, xlabel="tokens seen" if x == "tokens" else "step",
                           ax=ax, title=title)


