"""Multi-head attention, the fast version the models use (Vaswani et al., 2017; GQA: Ainslie et al., 2023).

One module, :class:`MultiHeadAttention`:

- a *fused* QKV projection (one matmul instead of three),
- ``torch.nn.functional.scaled_dot_product_attention`` (SDPA), which dispatches to FlashAttention or the
  memory-efficient kernel on a GPU and never materialises the ``(T, T)`` weight matrix there,
- causal or bidirectional, with an optional padding mask,
- an optional :class:`KVCache` for generation (the GPT chapter), preallocated so a decoding step writes in place,
- optional grouped-query attention (``num_kv_heads < num_heads``): fewer K/V heads, same output shape, a cache
  ``num_heads / num_kv_heads`` times smaller.

Chapter 2 of the book builds attention by hand, step by step, and checks it against this module. What it builds
is kept here too, as the readable reference the tests compare with:

- :func:`reference_attention`: scores ``q @ k^T``, scaled by ``1/sqrt(head_dim)``, ``masked_fill(-inf)``,
  softmax, dropout on the weights, weights ``@ v``; it returns the ``(T, T_k)`` weights as well;
- :class:`ReferenceMultiHeadAttention`: the same parameters as :class:`MultiHeadAttention` (a state dict loads
  into either) with :func:`reference_attention` inside and ``forward(..., return_weights=True)`` for plots.

:func:`benchmark_attention` times the three implementations (reference, SDPA module, ``nn.MultiheadAttention``);
``benchmarks/attention.py`` and the chapter's notebook both call it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "MultiHeadAttention",
    "KVCache",
    "ReferenceMultiHeadAttention",
    "reference_attention",
    "check_attention_mask",
    "attention_matrix_bytes",
    "benchmark_attention",
    "format_benchmark",
]


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


# Key lengths up to this use the written-out attention on the CPU instead of the fused SDPA kernel (see forward).
SHORT_CPU_SEQ = 32


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
        b, t, past = self._check_input(x, cache)
        # Checked before the cache is written, so an error leaves it intact; returned as a bool mask.
        attention_mask = self._check_mask(attention_mask, b, past + t)
        q, k, v = self.split_qkv(x)
        if cache is not None:
            k, v = cache.append(k, v)
        t_k = k.shape[2]
        mask = self._mask(attention_mask, b, t, t_k, past, x.device)
        k, v = self._expand_kv(k, v)
        # is_causal lets SDPA pick FlashAttention and skip building a (T, T) mask; it aligns the mask top-left,
        # which is right only when queries and keys are the same positions (no cache, or one query at a time).
        use_is_causal = self.causal and mask is None and past == 0 and t > 1
        dropout_p = self.dropout if self.training else 0.0
        if x.device.type == "cpu" and t_k <= SHORT_CPU_SEQ and not torch.compiler.is_compiling():
            # Short sequences on the CPU: the fused kernel's fixed cost per call outweighs what it saves, and
            # the (T, T_k) scores are tiny, so the written-out form is faster (a ViT-MNIST training step, 17
            # tokens: 68 -> 48 ms; benchmarks/vit.py). Same function: the tests compare both paths.
            blocked = None if mask is None else ~mask
            if use_is_causal:
                blocked = torch.ones(t, t_k, dtype=torch.bool, device=x.device).triu(diagonal=1)
            y = reference_attention(q, k, v, blocked, dropout_p, training=self.training)[0]
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=use_is_causal
            )  # (B, num_heads, T, hd)
        y = y.transpose(1, 2).reshape(b, t, self.d_out)
        return self.proj(y)

    def _check_input(self, x: torch.Tensor, cache: KVCache | None) -> tuple[int, int, int]:
        """Validate ``x`` and the context length; return ``(batch, seq, past)``."""
        if x.dim() != 3 or x.shape[-1] != self.d_in:
            raise ValueError(f"expected x of shape (batch, seq, {self.d_in}), got {tuple(x.shape)}")
        b, t, _ = x.shape
        w = self.qkv.weight
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"x is {x.dtype} but this module's weights are {w.dtype}; convert the input (x.to({w.dtype})) or "
                f"the module (module.to({x.dtype})), or run under torch.autocast for mixed precision")
        if cache is not None and cache.k.shape[0] != b:
            raise ValueError(
                f"the KV cache was made for a batch of {cache.k.shape[0]} but x has a batch of {b}; make a new one "
                f"for this batch (new_cache({b}, ...)), or reorder it with cache.reorder(index) (beam search)")
        past = cache.length if cache is not None else 0
        if past + t > self.context_length:
            raise ValueError(
                f"sequence of {past + t} positions ({past} cached + {t} new) is longer than the context length "
                f"{self.context_length}; crop the input to the last {self.context_length} tokens"
            )
        return b, t, past

    @staticmethod
    def _check_mask(attention_mask: torch.Tensor | None, b: int, t_k: int) -> torch.Tensor | None:
        """Validate a padding mask; return it as a bool tensor (True = real token), or None."""
        if attention_mask is None:
            return None
        if tuple(attention_mask.shape) != (b, t_k):
            raise ValueError(
                f"attention_mask must have shape (batch, cached + new positions) = {(b, t_k)}, got "
                f"{tuple(attention_mask.shape)}; pass 1 for real tokens and 0 for padding"
            )
        return check_attention_mask(attention_mask)

    def _expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GQA: repeat each K/V head for the ``num_heads // num_kv_heads`` query heads it serves."""
        if self.num_kv_heads == self.num_heads:
            return k, v
        rep = self.num_heads // self.num_kv_heads
        # Query head h reads K/V head h // rep (the grouping of Ainslie et al. and of Llama's repeat_kv).
        return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)

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
            allowed = allowed & attention_mask.to(torch.bool)[:, None, None, :]
            # A query that may see nothing (a padding position with left padding) would give NaN, which then
            # spreads through later layers; let it see itself. Its output is padding and is ignored anyway.
            # (Done without a data-dependent `if`, so there is no GPU sync and no torch.compile graph break.)
            empty = ~allowed.any(dim=-1, keepdim=True)
            diag = torch.ones(t, t_k, dtype=torch.bool, device=device).tril(diagonal=past).triu(diagonal=past)
            allowed = allowed | (empty & diag)
        return allowed

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_out={self.d_out}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, causal={self.causal}, context_length={self.context_length}")


def check_attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """A padding mask (1/True = real token, 0/False = padding) as a bool tensor; anything else raises.

    A float mask is refused: the Hugging Face additive form (0 for tokens, -inf for padding) would be read
    backwards, and any non-0/1 value would shift the positions computed from the mask. An integer mask must hold
    only 0 and 1: checked with one min/max reduction (one sync), skipped inside a ``torch.compile`` graph. A bool
    mask needs no check, which is why the models convert once and pass bool masks to every layer.
    """
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(
            f"attention_mask must be 0/1 integers or bools (1 = real token, 0 = padding), got a {mask.dtype} "
            "tensor: a float mask is ambiguous (an additive mask of 0 / -inf would be read backwards). Pass "
            "(mask > 0.5) for a 0/1 float mask, or (mask == 0) for an additive one")
    if mask.numel() and not torch.compiler.is_compiling():
        lo, hi = torch.aminmax(mask)
        lo, hi = torch.stack([lo, hi]).tolist()
        if lo < 0 or hi > 1:
            raise ValueError(
                f"attention_mask must hold only 0 (padding) and 1 (real token), found {lo if lo < 0 else hi}; "
                "were token ids passed as the mask? build it as (ids != pad_id).long(), or from the tokenizer's "
                "attention_mask")
    return mask.to(torch.bool)


def _divisor_hint(d: int, near: int) -> int:
    divisors = [h for h in range(1, d + 1) if d % h == 0]
    return min(divisors, key=lambda h: abs(h - near)) if divisors else 1


# --- The plain version the book builds: explicit (T, T_k) attention weights ------------------------------------


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor | None = None,
                        dropout_p: float = 0.0, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention written out: ``softmax(q k^T / sqrt(d_k) + mask) v``.

    Args:
        q: ``(..., T, d_k)``; k: ``(..., T_k, d_k)``; v: ``(..., T_k, d_v)``.
        blocked: boolean, broadcastable to ``(..., T, T_k)``; True where a query must NOT see a key.
        dropout_p, training: dropout on the attention weights (only when ``training``).

    Returns: ``(context (..., T, d_v), weights (..., T, T_k))``.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T, T_k)
    if blocked is not None:
        # -inf before the softmax: exp(-inf) = 0, so a blocked key gets exactly zero weight and the others
        # still sum to one (no renormalisation needed).
        scores = scores.masked_fill(blocked, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    weights = F.dropout(weights, p=dropout_p, training=training)
    return weights @ v, weights


class ReferenceMultiHeadAttention(MultiHeadAttention):
    """:class:`MultiHeadAttention` with the attention weights computed explicitly (:func:`reference_attention`).

    Same parameters, same names and layout (``qkv``, ``proj``): ``ref.load_state_dict(fast.state_dict())``
    gives the same function, which is what the tests check (values and gradients). It materialises the
    ``(batch, heads, T, T_k)`` weights, so it is slower and needs O(T²) memory; use it to learn, to test and to
    look at the weights (``return_weights=True``), not to train.
    """

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                return_weights: bool = False):
        """As :meth:`MultiHeadAttention.forward`; with ``return_weights`` also returns the weights
        ``(batch, num_heads, seq, past + seq)``."""
        b, t, past = self._check_input(x, cache)
        attention_mask = self._check_mask(attention_mask, b, past + t)
        q, k, v = self.split_qkv(x)  # q (B, H, T, hd), k and v (B, H_kv, T, hd)
        if cache is not None:
            k, v = cache.append(k, v)
        k, v = self._expand_kv(k, v)
        t_k = k.shape[2]
        blocked = torch.zeros(t, t_k, dtype=torch.bool, device=x.device)
        if self.causal:
            # query i sits at absolute position past + i and must not see keys after it
            blocked = torch.ones(t, t_k, dtype=torch.bool, device=x.device).triu(diagonal=past + 1)
        blocked = blocked[None, None]  # (1, 1, T, T_k)
        if attention_mask is not None:
            blocked = blocked | ~attention_mask.to(torch.bool)[:, None, None, :]  # (B, 1, T, T_k)
            # A query that may see no key at all (a left-padding position) would get NaN; let it see itself.
            nothing = blocked.all(dim=-1, keepdim=True)
            itself = torch.arange(t_k, device=x.device)[None, :] == (past + torch.arange(t, device=x.device))[:, None]
            blocked = blocked & ~(nothing & itself)
        y, weights = reference_attention(q, k, v, blocked, self.dropout, self.training)  # y (B, H, T, hd)
        y = y.transpose(1, 2).reshape(b, t, self.d_out)  # merge heads: (B, T, H * hd)
        out = self.proj(y)
        return (out, weights) if return_weights else out


# --- Speed and memory: the comparison of benchmarks/attention.py and of the chapter's notebook -------------------


def attention_matrix_bytes(batch: int, num_heads: int, seq: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one ``(batch, num_heads, seq, seq)`` attention matrix: what the reference materialises (several
    times: scores, weights, and their gradients), and what a fused SDPA kernel never stores."""
    return batch * num_heads * seq * seq * torch.empty((), dtype=dtype).element_size()


class _TorchMHA(nn.Module):
    """``nn.MultiheadAttention`` behind the ``(x) -> y`` interface, causal by an explicit ``(T, T)`` mask."""

    def __init__(self, d_model: int, num_heads: int, causal: bool):
        super().__init__()
        self.mha = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.causal = causal

    def forward(self, x):
        t = x.shape[1]
        mask = None
        if self.causal:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)  # True = blocked (PyTorch's rule)
        return self.mha(x, x, x, attn_mask=mask, need_weights=False, is_causal=self.causal)[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_interleaved(fns: list, device: torch.device, min_time: float, max_reps: int) -> list[float]:
    """Best (minimum) seconds per call of each function, after one warm-up call each.

    The functions take turns (a, b, c, a, b, c, ...), so a slow spell of the machine (another process, thermal
    throttling) hits all of them alike, and the minimum over rounds is the time the machine needs when nothing
    else interferes (noise only ever adds time; the advice of Python's ``timeit``). At least 5 and at most
    ``max_reps`` rounds, stopping once ``min_time`` seconds have passed.
    """
    for fn in fns:
        fn()
    _sync(device)
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < 5 or (time.perf_counter() - start < min_time and len(times[0]) < max_reps):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]


def benchmark_attention(seq_lens=(128, 256, 512, 1024), batch: int = 4, d_model: int = 256, num_heads: int = 4,
                        causal: bool = True, device=None, dtype: torch.dtype = torch.float32,
                        min_time: float = 0.5, max_reps: int = 50, modes=("forward", "forward+backward"),
                        progress: bool = False) -> list[dict]:
    """Time the reference (explicit weights), the SDPA module and ``nn.MultiheadAttention`` on the same input.

    All three get the same weights (checked equal before timing). Each row: ``seq``, ``mode``, ``impl``,
    ``ms`` (best of at least 5 calls), ``ratio`` (time / reference time, < 1 is faster), ``attn_matrix_MB`` (one
    ``(B, H, T, T)`` matrix, computed) and, on CUDA only, ``peak_MB`` (``torch.cuda.max_memory_allocated`` during
    one call, above what was allocated before it).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if not seq_lens or min(seq_lens) < 1:
        raise ValueError(f"seq_lens must be a non-empty list of positive lengths, got {seq_lens!r}")
    for mode in modes:
        if mode not in ("forward", "forward+backward"):
            raise ValueError(f"unknown mode {mode!r}; use 'forward' and/or 'forward+backward'")
    max_seq = max(seq_lens)
    fast = MultiHeadAttention(d_model, d_model, num_heads, max_seq, qkv_bias=True, causal=causal)
    ref = ReferenceMultiHeadAttention(d_model, d_model, num_heads, max_seq, qkv_bias=True, causal=causal)
    ref.load_state_dict(fast.state_dict())
    torch_mha = _TorchMHA(d_model, num_heads, causal)
    with torch.no_grad():  # nn.MultiheadAttention keeps Q, K, V stacked in the same order: copy one to one
        torch_mha.mha.in_proj_weight.copy_(fast.qkv.weight)
        torch_mha.mha.in_proj_bias.copy_(fast.qkv.bias)
        torch_mha.mha.out_proj.weight.copy_(fast.proj.weight)
        torch_mha.mha.out_proj.bias.copy_(fast.proj.bias)
    impls = {"reference (explicit T×T)": ref, "SDPA module": fast, "nn.MultiheadAttention": torch_mha}
    for m in impls.values():
        m.to(device=device, dtype=dtype).eval()  # eval: dropout off; the timings are of the attention itself

    rows = []
    for seq in seq_lens:
        x = torch.randn(batch, seq, d_model, device=device, dtype=dtype)
        with torch.no_grad():
            want = ref(x)
            for name, m in impls.items():
                tol = 1e-4 if dtype == torch.float32 else 5e-2
                torch.testing.assert_close(m(x), want, atol=tol, rtol=tol, msg=lambda s, n=name: f"{n}: {s}")
        for mode in modes:
            steps = []
            for m in impls.values():
                if mode == "forward":
                    def step(m=m):
                        with torch.no_grad():
                            m(x)
                else:
                    xg = x.detach().clone().requires_grad_(True)

                    def step(m=m, xg=xg):
                        m.zero_grad(set_to_none=True)
                        m(xg).sum().backward()
                steps.append(step)
            seconds = _time_interleaved(steps, device, min_time * len(steps), max_reps)
            for name, step, sec in zip(impls, steps, seconds):
                row = {"seq": seq, "mode": mode, "impl": name, "ms": sec * 1e3, "ratio": sec / seconds[0],
                       "attn_matrix_MB": attention_matrix_bytes(batch, num_heads, seq, dtype) / 2**20}
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    before = torch.cuda.memory_allocated(device)
                    step()
                    torch.cuda.synchronize(device)
                    row["peak_MB"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
                rows.append(row)
                if progress:
                    print(f"  seq {seq:5d} {mode:17s} {name:26s} {row['ms']:9.2f} ms  x{row['ratio']:.2f}", flush=True)
    return rows


def format_benchmark(rows: list[dict]) -> str:
    """The rows of :func:`benchmark_attention` as a Markdown table."""
    has_peak = any("peak_MB" in r for r in rows)
    head = ["seq", "mode", "implementation", "ms / call", "× reference", "one T×T matrix (MB)"]
    head += ["peak memory (MB)"] if has_peak else []
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        cells = [str(r["seq"]), r["mode"], r["impl"], f"{r['ms']:.2f}", f"{r['ratio']:.2f}",
                 f"{r['attn_matrix_MB']:.1f}"]
        if has_peak:
            cells.append(f"{r.get('peak_MB', float('nan')):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
