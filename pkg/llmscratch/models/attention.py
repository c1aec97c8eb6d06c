"""Multi-head attention, the fast version the models use (Vaswani et al., 2017; GQA: Ainslie et al., 2023).

One module, :class:`MultiHeadAttention`:

- a *fused* QKV projection (one matmul instead of three),
- ``torch.nn.functional.scaled_dot_product_attention`` (SDPA), which dispatches to FlashAttention or the
  memory-efficient kernel on a GPU and never materialises the ``(T, T)`` weight matrix there,
- causal or bidirectional, with an optional padding mask,
- an optional :class:`KVCache` for generation (the GPT chapter), preallocated so a decoding step writes in place,
- optional grouped-query attention (``num_kv_heads < num_heads``): fewer K/V heads, same output shape, a cache
  ``num_heads / num_kv_heads`` times smaller.

Chapter 2 of the book builds attention by hand, step by step, and checks it against this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MultiHeadAttention", "KVCache"]


@dataclass
class KVCache:
    """Keys and values of the positions seen so far, for one attention layer.

    Buffers are allocated once for ``max_len`` positions; ``length`` says how many are filled. Keeping the
    buffers un-expanded (``num_kv_heads``, not ``num_heads``) is what makes GQA's cache smaller.

    Shapes: ``k``, ``v``: ``(batch, num_kv_heads, max_len, head_dim)``.
    """

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, batch: int, num_kv_heads: int, max_len: int, head_dim: int,
              device=None, dtype=torch.float32) -> "KVCache":
        shape = (batch, num_kv_heads, max_len, head_dim)
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``(batch, num_kv_heads, T, head_dim)`` new keys/values; return all keys/values so far."""
        t = k.shape[2]
        if self.length + t > self.max_len:
            raise ValueError(
                f"KV cache full: it holds {self.length} of {self.max_len} positions and {t} more were added; "
                "allocate a larger cache (max_len) or crop the prompt to the context length"
            )
        self.k[:, :, self.length : self.length + t] = k
        self.v[:, :, self.length : self.length + t] = v
        self.length += t
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search reorders its beams every step)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with a fused QKV projection.

    Args:
        d_in: input feature size.
        d_out: output (and model) size; must be divisible by ``num_heads``. ``head_dim = d_out // num_heads``.
        num_heads: number of query heads.
        context_length: longest sequence (including cached positions) the module accepts.
        dropout: dropout on the attention weights during training.
        qkv_bias: bias in the Q/K/V projection (GPT-2 has one; many newer models do not).
        causal: mask future positions (decoder) or not (encoder).
        num_kv_heads: K/V heads for grouped-query attention; ``None`` means ``num_heads`` (plain MHA), 1 is
            multi-query attention. Must divide ``num_heads``.
        proj_bias: bias in the output projection.

    Shapes: ``x``: ``(batch, seq, d_in)`` -> ``(batch, seq, d_out)``.
    """

    def __init__(self, d_in: int, d_out: int, num_heads: int, context_length: int, dropout: float = 0.0,
                 qkv_bias: bool = False, causal: bool = True, num_kv_heads: int | None = None,
                 proj_bias: bool = True):
        super().__init__()
        if num_heads < 1 or d_out % num_heads != 0:
            raise ValueError(
                f"d_out ({d_out}) must be divisible by num_heads ({num_heads}); "
                f"for example num_heads={_divisor_hint(d_out, num_heads)}"
            )
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_in, self.d_out = d_in, d_out
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length
        self.causal = causal
        self.dropout = dropout
        # One matmul produces Q (num_heads heads), K and V (num_kv_heads heads each), concatenated in that order.
        self.qkv = nn.Linear(d_in, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=qkv_bias)
        self.proj = nn.Linear(d_out, d_out, bias=proj_bias)

    def new_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """An empty :class:`KVCache` sized for this layer (``max_len`` defaults to the context length)."""
        max_len = self.context_length if max_len is None else max_len
        w = self.qkv.weight
        return KVCache.empty(batch, self.num_kv_heads, max_len, self.head_dim,
                             device=device or w.device, dtype=dtype or w.dtype)

    def split_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project and split into heads: q ``(B, num_heads, T, hd)``, k and v ``(B, num_kv_heads, T, hd)``."""
        b, t, _ = x.shape
        hd, nq, nkv = self.head_dim, self.num_heads, self.num_kv_heads
        q, k, v = self.qkv(x).split([nq * hd, nkv * hd, nkv * hd], dim=-1)
        q = q.view(b, t, nq, hd).transpose(1, 2)
        k = k.view(b, t, nkv, hd).transpose(1, 2)
        v = v.view(b, t, nkv, hd).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Attend.

        Args:
            x: ``(batch, seq, d_in)``; with a cache, the new positions only.
            attention_mask: ``(batch, past + seq)``, 1/True for real tokens and 0/False for padding (the
                Hugging Face convention). Padding keys are never attended to.
            cache: a :class:`KVCache`; the new keys/values are appended to it and attention covers the cached
                positions plus the new ones.

        Returns: ``(batch, seq, d_out)``.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_in:
            raise ValueError(f"expected x of shape (batch, seq, {self.d_in}), got {tuple(x.shape)}")
        b, t, _ = x.shape
        past = cache.length if cache is not None else 0
        if past + t > self.context_length:
            raise ValueError(
                f"sequence of {past + t} positions ({past} cached + {t} new) is longer than the context length "
                f"{self.context_length}; crop the input to the last {self.context_length} tokens"
            )
        q, k, v = self.split_qkv(x)
        if cache is not None:
            k, v = cache.append(k, v)
        t_k = k.shape[2]
        mask = self._mask(attention_mask, b, t, t_k, past, x.device)
        if self.num_kv_heads != self.num_heads:
            # Each K/V head serves num_heads // num_kv_heads query heads.
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        # is_causal lets SDPA pick FlashAttention and skip building a (T, T) mask; it aligns the mask top-left,
        # which is right only when queries and keys are the same positions (no cache, or one query at a time).
        use_is_causal = self.causal and mask is None and past == 0 and t > 1
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=use_is_causal
        )  # (B, num_heads, T, hd)
        y = y.transpose(1, 2).reshape(b, t, self.d_out)
        return self.proj(y)

    def _mask(self, attention_mask, b, t, t_k, past, device) -> torch.Tensor | None:
        """A boolean ``(B, 1, T, T_k)`` mask (True = may attend), or None when SDPA's own causal flag suffices."""
        causal_needed = self.causal and t > 1 and past > 0  # queries offset by the cache
        if attention_mask is None and not causal_needed:
            return None
        allowed = torch.ones(t, t_k, dtype=torch.bool, device=device)
        if self.causal:
            # query i (absolute position past + i) may see keys 0 .. past + i
            allowed = torch.ones(t, t_k, dtype=torch.bool, device=device).tril(diagonal=past)
        allowed = allowed.expand(b, 1, t, t_k)
        if attention_mask is not None:
            if attention_mask.shape != (b, t_k):
                raise ValueError(
                    f"attention_mask must have shape (batch, cached + new positions) = {(b, t_k)}, got "
                    f"{tuple(attention_mask.shape)}; pass 1 for real tokens and 0 for padding"
                )
            allowed = allowed & attention_mask.to(torch.bool)[:, None, None, :]
            # A query that may see nothing (a padding position with left padding) would give NaN, which then
            # spreads through later layers; let it see itself. Its output is padding and is ignored anyway.
            empty = ~allowed.any(dim=-1, keepdim=True)
            if empty.any():
                diag = torch.zeros(t, t_k, dtype=torch.bool, device=device)
                diag[torch.arange(t), past + torch.arange(t)] = True
                allowed = allowed | (empty & diag)
        return allowed

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_out={self.d_out}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, causal={self.causal}, context_length={self.context_length}")


def _divisor_hint(d: int, near: int) -> int:
    divisors = [h for h in range(1, d + 1) if d % h == 0]
    return min(divisors, key=lambda h: abs(h - near)) if divisors else 1
