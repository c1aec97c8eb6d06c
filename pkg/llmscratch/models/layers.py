"""Building blocks shared by the transformer models: LayerNorm, GELU, the position-wise feed-forward network.

Each is written out (not ``nn.LayerNorm``/``nn.GELU``) because the book builds them by hand; the tests check
them against PyTorch's versions so that the models can rely on them.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LayerNorm", "GELU", "FeedForward"]


class LayerNorm(nn.Module):
    """Layer normalization over the last dimension (Ba et al., 2016) with a learned scale and shift.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, with the *biased* variance, as in GPT-2 and
    ``nn.LayerNorm``. Parameter names (``weight``, ``bias``) match ``nn.LayerNorm`` so Hugging Face checkpoints
    map one to one. The forward pass calls ``F.layer_norm``: the same arithmetic in one fused kernel.

    Shapes: ``(..., d)`` -> ``(..., d)``.
    """

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"


class GELU(nn.Module):
    """Gaussian Error Linear Unit (Hendrycks & Gimpel, 2016).

    ``approximate="tanh"`` is the curve GPT-2 and BERT's original code use:
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``; ``"none"`` is the exact ``x * Phi(x)``.
    """

    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"approximate must be 'tanh' or 'none', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)

    @staticmethod
    def by_hand(x: torch.Tensor) -> torch.Tensor:
        """The tanh formula written out; equal to ``GELU("tanh")(x)`` (the tests check it)."""
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class FeedForward(nn.Module):
    """Position-wise feed-forward network: ``Linear(d, hidden) -> GELU -> Linear(hidden, d) -> Dropout``.

    ``hidden`` defaults to ``4 * d`` as in GPT-2 and BERT. Shapes: ``(batch, seq, d)`` -> ``(batch, seq, d)``.
    Attribute names ``fc`` / ``proj`` follow nanoGPT's ``c_fc`` / ``c_proj`` roles.
    """

    def __init__(self, d: int, hidden: int | None = None, dropout: float = 0.0, bias: bool = True,
                 approximate: str = "tanh"):
        super().__init__()
        hidden = 4 * d if hidden is None else hidden
        self.fc = nn.Linear(d, hidden, bias=bias)
        self.act = GELU(approximate)
        self.proj = nn.Linear(hidden, d, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


# ==============================================================================================================
# Residual connections (He et al., 2016) with LayerNorm, in the two placements transformers use
# ==============================================================================================================

__all__ += ["ResidualSublayer"]


class ResidualSublayer(nn.Module):
    """A sublayer (attention, feed-forward, ...) wrapped with a residual connection and a LayerNorm.

    - ``norm="pre"`` (GPT-2, Llama, ViT): ``x + dropout(sublayer(norm(x)))``. The residual path is an identity
      from the input to the output of the whole stack, so gradients reach early layers undiminished; the stack
      needs one final LayerNorm after the last block.
    - ``norm="post"`` (the original Transformer, BERT): ``norm(x + dropout(sublayer(x)))``. Every block's output
      is normalized, but the gradient passes through a LayerNorm at every block, which makes deep post-LN stacks
      hard to train without learning-rate warm-up (Xiong et al., 2020).
    - ``norm="none"``: ``x + dropout(sublayer(x))``, a plain residual.

    Shapes: ``(batch, seq, d)`` -> ``(batch, seq, d)``; extra keyword arguments go to the sublayer (e.g. a mask).
    """

    def __init__(self, d: int, sublayer: nn.Module, norm: str = "pre", dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        if norm not in ("pre", "post", "none"):
            raise ValueError(f"norm must be 'pre', 'post' or 'none', got {norm!r}")
        if not isinstance(sublayer, nn.Module):
            raise TypeError(f"sublayer must be an nn.Module, got {type(sublayer).__name__}")
        self.norm_position = norm
        self.sublayer = sublayer
        self.norm = LayerNorm(d, eps=eps) if norm != "none" else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.norm_position == "pre":
            return x + self.dropout(self.sublayer(self.norm(x), **kwargs))
        y = x + self.dropout(self.sublayer(x, **kwargs))
        return self.norm(y) if self.norm_position == "post" else y

    def extra_repr(self) -> str:
        return f"norm={self.norm_position!r}"
