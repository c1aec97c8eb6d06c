"""Positional encodings, in one place: sinusoidal (Vaswani et al., 2017), learned absolute (GPT-2, BERT), rotary (RoPE).

Self-attention treats its input as a set: permute the tokens and the outputs permute the same way. Word order
must therefore be put into the vectors. Two families:

- **absolute**: add a vector per position to the token embedding, before the first block. Either a fixed
  table of sines and cosines (:func:`sinusoidal_table`, :class:`SinusoidalPositionalEncoding`), or a learned
  table (:class:`LearnedPositionalEmbedding`, GPT-2's ``wpe``). Both have a maximum length.
- **rotary** (Su et al., 2021): rotate each (query, key) pair of features by an angle proportional to the
  position, inside every attention layer. The dot product of a rotated query at position m and a rotated key at
  position n then depends on m - n only: attention sees *relative* positions, and nothing is added to the
  residual stream.

RoPE here uses the "rotate half" layout of Hugging Face's Llama (feature i is paired with feature i + d/2), so
that ``apply_rope`` equals ``transformers``' ``apply_rotary_pos_emb`` and Llama checkpoints load unchanged. An
attention layer uses it as::

    self.rope = RotaryEmbedding(head_dim, max_len)           # in __init__
    q, k = self.rope(q, k, offset=past_len)                   # q, k: (batch, n_head, seq, head_dim)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "sinusoidal_table",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "rope_inv_freq",
    "rope_cos_sin",
    "rotate_half",
    "apply_rope",
    "RotaryEmbedding",
]


def _check_positive(**kw):
    for name, v in kw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def sinusoidal_table(max_len: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed encoding of "Attention Is All You Need", a ``(max_len, d_model)`` float32 table.

    ``PE[pos, 2i] = sin(pos / base^(2i/d_model))`` and ``PE[pos, 2i+1] = cos(pos / base^(2i/d_model))``:
    each pair of features is a clock turning at its own speed, from one turn every 2*pi positions (i = 0) to
    one turn every ``2*pi*base`` positions, so every position up to a large length gets a distinct pattern, and
    ``PE[pos + k]`` is a fixed rotation of ``PE[pos]`` for every ``pos``.
    """
    _check_positive(max_len=max_len, d_model=d_model)
    if d_model % 2:
        raise ValueError(f"d_model must be even (features come in sin/cos pairs), got {d_model}")
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
    inv_freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # (d_model/2,)
    angles = pos * inv_freq  # (max_len, d_model/2)
    table = torch.empty(max_len, d_model)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


class _Absolute(nn.Module):
    def _check(self, x: torch.Tensor, offset: int) -> int:
        if x.dim() < 2 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected x of shape (batch, seq, {self.d_model}), got {tuple(x.shape)}")
        seq = x.shape[-2]
        if offset < 0 or offset + seq > self.max_len:
            raise ValueError(
                f"positions {offset}..{offset + seq - 1} exceed max_len={self.max_len}: "
                "truncate the input to the context length or build the encoding with a larger max_len"
            )
        return seq


class SinusoidalPositionalEncoding(_Absolute):
    """Adds :func:`sinusoidal_table` to the input: ``(batch, seq, d_model)`` -> same shape. No parameters.

    The table is a non-persistent buffer (rebuilt from the config, not stored in checkpoints).
    """

    def __init__(self, d_model: int, max_len: int = 4096, base: float = 10000.0, dropout: float = 0.0):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.register_buffer("pe", sinusoidal_table(max_len, d_model, base), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        seq = self._check(x, offset)
        return self.dropout(x + self.pe[offset : offset + seq].to(x.dtype))


class LearnedPositionalEmbedding(_Absolute):
    """A learned vector per position, added to the input: ``(batch, seq, d_model)`` -> same shape.

    The parameter is ``weight`` of shape ``(max_len, d_model)``, as in ``nn.Embedding`` (GPT-2's ``wpe``), so
    checkpoints map one to one. Initialised N(0, 0.02) like GPT-2. It cannot say anything about positions at or
    beyond ``max_len``: they were never trained.
    """

    def __init__(self, d_model: int, max_len: int, dropout: float = 0.0):
        super().__init__()
        _check_positive(d_model=d_model, max_len=max_len)
        self.d_model, self.max_len = d_model, max_len
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        seq = self._check(x, offset)
        return self.dropout(x + self.weight[offset : offset + seq])


# ------------------------------------------------------------------------------------------------------------
# Rotary position embedding (RoPE)
# ------------------------------------------------------------------------------------------------------------


def rope_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """The ``head_dim/2`` rotation speeds ``base^(-2i/head_dim)`` (float32), as in RoFormer and Llama."""
    _check_positive(head_dim=head_dim)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE (features are rotated in pairs), got {head_dim}")
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32):
    """cos and sin of the rotation angles for integer ``positions`` of shape ``(seq,)`` or ``(batch, seq)``.

    Returns two tensors of shape ``positions.shape + (head_dim,)``; the angles ``pos * inv_freq`` are repeated
    twice along the last dimension (the "rotate half" layout), exactly as Llama's rotary embedding. Angles are
    computed in float32 and cast at the end: in bf16 a position like 1000 loses its low bits.
    """
    positions = torch.as_tensor(positions)
    inv_freq = rope_inv_freq(head_dim, base).to(positions.device)
    angles = positions[..., None].float() * inv_freq  # (..., seq, head_dim/2)
    emb = torch.cat((angles, angles), dim=-1)  # (..., seq, head_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension: the 90-degree turn of each pair (x[i], x[i + d/2])."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys ``x`` of shape ``(batch, n_head, seq, head_dim)`` by their positions' angles.

    ``cos``/``sin`` come from :func:`rope_cos_sin`: ``(seq, head_dim)`` (same positions for the whole batch) or
    ``(batch, seq, head_dim)`` (per-example positions, e.g. left padding); they broadcast over the heads.
    ``x * cos + rotate_half(x) * sin`` is the 2-D rotation ``[[cos, -sin], [sin, cos]]`` of every feature pair.
    """
    if x.shape[-1] != cos.shape[-1] or x.shape[-2] != cos.shape[-2]:
        raise ValueError(
            f"x has (seq, head_dim) = {tuple(x.shape[-2:])} but cos/sin have {tuple(cos.shape[-2:])}; "
            "build cos/sin for the same positions and head_dim (x is (batch, n_head, seq, head_dim))"
        )
    if cos.dim() == 3:  # (batch, seq, head_dim) -> (batch, 1, seq, head_dim): one angle for all heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """RoPE for an attention layer: caches cos/sin for ``max_len`` positions and rotates q and k.

    ``rope(q, k, offset=0)`` with ``q``, ``k`` of shape ``(batch, n_head, seq, head_dim)`` (``k`` may have
    fewer heads, as in grouped-query attention, but the same positions) returns the rotated pair; ``offset`` is the position of the
    first token (the length of a KV cache). ``rope.cos_sin(seq, offset)`` gives the tables for custom use.
    """

    def __init__(self, head_dim: int, max_len: int = 4096, base: float = 10000.0):
        super().__init__()
        _check_positive(head_dim=head_dim, max_len=max_len)
        self.head_dim, self.max_len, self.base = head_dim, max_len, base
        cos, sin = rope_cos_sin(torch.arange(max_len), head_dim, base)
        # Non-persistent: derived from the config, so checkpoints need not (and HF's do not) carry them.
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def cos_sin(self, seq: int, offset: int = 0, dtype: torch.dtype | None = None):
        if offset < 0 or offset + seq > self.max_len:
            raise ValueError(
                f"positions {offset}..{offset + seq - 1} exceed max_len={self.max_len}; build RotaryEmbedding with a larger max_len"
            )
        cos, sin = self.cos[offset : offset + seq], self.sin[offset : offset + seq]
        return (cos, sin) if dtype is None else (cos.to(dtype), sin.to(dtype))

    def forward(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0):
        if q.dim() != 4 or k.dim() != 4 or q.shape[-1] != self.head_dim or k.shape[-1] != self.head_dim:
            raise ValueError(
                f"q and k must be (batch, n_head, seq, {self.head_dim}); got {tuple(q.shape)} and {tuple(k.shape)}"
            )
        if q.shape[-2] != k.shape[-2]:
            raise ValueError(
                f"q has {q.shape[-2]} positions but k has {k.shape[-2]}: rotate the new queries and keys together "
                "(same offset), then append the rotated keys to the KV cache"
            )
        cos, sin = self.cos_sin(q.shape[-2], offset, q.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_len={self.max_len}, base={self.base}"
