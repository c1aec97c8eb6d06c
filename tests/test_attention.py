"""llmscratch.models.attention against independent references.

- a naive loop (one batch row, one head, one query at a time, plain Python softmax over allowed keys) that
  shares no code with the package;
- ``torch.nn.MultiheadAttention`` with the weights copied (Q, K, V stacked in the same order);
- the package's own :class:`ReferenceMultiHeadAttention` (explicit weights) against the SDPA module, values and
  gradients, which is the claim the book makes.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmscratch.models.attention import (
    KVCache,
    MultiHeadAttention,
    ReferenceMultiHeadAttention,
    attention_matrix_bytes,
    benchmark_attention,
    format_benchmark,
    reference_attention,
)

D, H, CTX = 32, 4, 24


@pytest.fixture(autouse=True, params=["sdpa", "written-out"])
def cpu_path(request, monkeypatch):
    """Every test twice: with the fused SDPA kernel and with the written-out path that short CPU sequences take
    (``SHORT_CPU_SEQ``); the sequences here are short, so the default would test only the second."""
    import llmscratch.models.attention as attention

    monkeypatch.setattr(attention, "SHORT_CPU_SEQ", 0 if request.param == "sdpa" else 10**9)
    return request.param


def make_pair(causal=True, num_kv_heads=None, dropout=0.0, seed=0, d_in=D, d_out=D, heads=H, ctx=CTX, bias=True):
    torch.manual_seed(seed)
    fast = MultiHeadAttention(d_in, d_out, heads, ctx, dropout=dropout, qkv_bias=bias, causal=causal,
                              num_kv_heads=num_kv_heads)
    ref = ReferenceMultiHeadAttention(d_in, d_out, heads, ctx, dropout=dropout, qkv_bias=bias, causal=causal,
                                      num_kv_heads=num_kv_heads)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def left_padding_mask(batch, seq, pads):
    """(batch, seq) with 0 on the first ``pads[b]`` positions of row b."""
    m = torch.ones(batch, seq, dtype=torch.long)
    for b, p in enumerate(pads):
        m[b, :p] = 0
    return m


def naive_attention(module: MultiHeadAttention, x, attention_mask=None):
    """One query at a time, one head at a time, one batch row at a time; shares no code with the package
    (only its weights). Queries that may see no key attend to themselves (the package's documented rule)."""
    b_, t, _ = x.shape
    hd, nh, nkv = module.head_dim, module.num_heads, module.num_kv_heads
    w, bias = module.qkv.weight, module.qkv.bias
    qkv = x @ w.T + (bias if bias is not None else 0)
    q_all, k_all, v_all = qkv[..., : nh * hd], qkv[..., nh * hd : (nh + nkv) * hd], qkv[..., (nh + nkv) * hd :]
    out = torch.zeros(b_, t, nh * hd, dtype=x.dtype)
    for b in range(b_):
        for h in range(nh):
            g = h // (nh // nkv)  # the K/V head that query head h shares
            q = q_all[b, :, h * hd : (h + 1) * hd]
            k = k_all[b, :, g * hd : (g + 1) * hd]
            v = v_all[b, :, g * hd : (g + 1) * hd]
            for i in range(t):
                keys = [j for j in range(t) if (not module.causal or j <= i)
                        and (attention_mask is None or bool(attention_mask[b, j]))]
                keys = keys or [i]
                s = torch.stack([q[i] @ k[j] / math.sqrt(hd) for j in keys])
                p = torch.exp(s - s.max())
                p = p / p.sum()
                out[b, i, h * hd : (h + 1) * hd] = sum(p[n] * v[j] for n, j in enumerate(keys))
    return module.proj(out)


# --- values and gradients: SDPA module == explicit reference ---------------------------------------------------

@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "padding"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sdpa_module_equals_reference_values_and_gradients(causal, padded, dtype):
    fast, ref = make_pair(causal=causal)
    fast.to(dtype), ref.to(dtype)
    torch.manual_seed(1)
    x = torch.randn(3, 10, D, dtype=dtype)
    mask = left_padding_mask(3, 10, [0, 3, 9]) if padded else None
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = fast(x1, attention_mask=mask), ref(x2, attention_mask=mask)
    # bf16 keeps 8 bits of mantissa: the two orders of summation differ by a few units in the last place
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(y1, y2, **tol)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **tol)
    for (name, p1), p2 in zip(fast.named_parameters(), ref.parameters()):
        if dtype == torch.float32:
            torch.testing.assert_close(p1.grad, p2.grad, atol=1e-4, rtol=1e-4, msg=lambda s, n=name: f"{n}: {s}")
        else:  # compare as a relative error of the whole gradient: single bf16 entries may round either way
            err = (p1.grad.float() - p2.grad.float()).norm() / p2.grad.float().norm()
            assert err < 3e-2, f"gradient of {name} differs by {err:.3g} (relative)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bf16_close_to_fp32(dtype):
    """Both implementations in bf16 stay close to the fp32 result (bf16 is not silently broken in both)."""
    fast, _ = make_pair()
    x = torch.randn(2, 12, D)
    want = fast(x)
    got = make_pair()[0].to(dtype)(x.to(dtype)).float()
    tol = 1e-6 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("num_kv_heads", [None, 2, 1], ids=["mha", "gqa2", "mqa"])
@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "padding"])
def test_both_equal_naive_loop(causal, num_kv_heads, padded):
    fast, ref = make_pair(causal=causal, num_kv_heads=num_kv_heads)
    x = torch.randn(2, 7, D)
    mask = left_padding_mask(2, 7, [0, 4]) if padded else None
    with torch.no_grad():
        want = naive_attention(fast, x, mask)
        torch.testing.assert_close(fast(x, attention_mask=mask), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ref(x, attention_mask=mask), want, atol=1e-5, rtol=1e-5)


def test_gqa_gradients_equal_reference():
    fast, ref = make_pair(num_kv_heads=2)
    x1 = torch.randn(2, 9, D, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    fast(x1).pow(2).sum().backward()
    ref(x2).pow(2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.qkv.weight.grad, ref.qkv.weight.grad, atol=1e-4, rtol=1e-4)


def test_gqa_equals_mha_with_shared_kv_heads():
    """GQA with 2 K/V heads == plain MHA whose K/V heads are copies (query head h uses K/V head h // 2)."""
    torch.manual_seed(0)
    gqa = MultiHeadAttention(D, D, H, CTX, num_kv_heads=2, qkv_bias=True)
    mha = MultiHeadAttention(D, D, H, CTX, qkv_bias=True)
    hd = D // H
    with torch.no_grad():
        wq, wk, wv = gqa.qkv.weight.split([H * hd, 2 * hd, 2 * hd])
        bq, bk, bv = gqa.qkv.bias.split([H * hd, 2 * hd, 2 * hd])
        rep = lambda w: w.view(2, hd, *w.shape[1:]).repeat_interleave(2, dim=0).reshape(H * hd, *w.shape[1:])  # noqa: E731
        mha.qkv.weight.copy_(torch.cat([wq, rep(wk), rep(wv)]))
        mha.qkv.bias.copy_(torch.cat([bq, rep(bk), rep(bv)]))
        mha.proj.load_state_dict(gqa.proj.state_dict())
    x = torch.randn(2, 11, D)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_gqa_cache_is_smaller_and_output_shape_same():
    mha = MultiHeadAttention(D, D, H, CTX)
    gqa = MultiHeadAttention(D, D, H, CTX, num_kv_heads=1)
    x = torch.randn(2, 5, D)
    assert gqa(x).shape == mha(x).shape == (2, 5, D)
    assert mha.new_cache(2).nbytes() == H * gqa.new_cache(2).nbytes()
    assert gqa.qkv.weight.shape == ((H + 2) * (D // H), D)


# --- an independent library: torch.nn.MultiheadAttention ---------------------------------------------------------

def torch_mha_from(module: MultiHeadAttention) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(module.d_out, module.num_heads, bias=True, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(module.qkv.weight)
        mha.in_proj_bias.copy_(module.qkv.bias)
        mha.out_proj.weight.copy_(module.proj.weight)
        mha.out_proj.bias.copy_(module.proj.bias)
    return mha


@pytest.mark.parametrize("impl", [MultiHeadAttention, ReferenceMultiHeadAttention])
@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "padding"])
def test_bidirectional_equals_torch_multihead_attention(impl, padded):
    torch.manual_seed(0)
    module = impl(D, D, H, CTX, qkv_bias=True, causal=False)
    mha = torch_mha_from(module)
    x = torch.randn(3, 9, D)
    mask = left_padding_mask(3, 9, [0, 2, 5]) if padded else None
    # PyTorch's key_padding_mask is True where a key is IGNORED: the opposite of the Hugging Face convention
    want, want_w = mha(x, x, x, key_padding_mask=None if mask is None else mask == 0, need_weights=True,
                       average_attn_weights=False)
    torch.testing.assert_close(module(x, attention_mask=mask), want, atol=1e-5, rtol=1e-5)
    if impl is ReferenceMultiHeadAttention:
        _, weights = module(x, attention_mask=mask, return_weights=True)
        torch.testing.assert_close(weights, want_w, atol=1e-6, rtol=1e-5)


def test_causal_equals_torch_multihead_attention_with_mask():
    torch.manual_seed(0)
    module = MultiHeadAttention(D, D, H, CTX, qkv_bias=True, causal=True)
    mha = torch_mha_from(module)
    x = torch.randn(2, 12, D)
    blocked = torch.ones(12, 12, dtype=torch.bool).triu(1)
    want = mha(x, x, x, attn_mask=blocked, need_weights=False)[0]
    torch.testing.assert_close(module(x), want, atol=1e-5, rtol=1e-5)


def test_gradients_equal_torch_multihead_attention():
    torch.manual_seed(0)
    module = MultiHeadAttention(D, D, H, CTX, qkv_bias=True, causal=False)
    mha = torch_mha_from(module)
    x = torch.randn(2, 6, D)
    module(x).sum().backward()
    mha(x, x, x, need_weights=False)[0].sum().backward()
    torch.testing.assert_close(module.qkv.weight.grad, mha.in_proj_weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(module.proj.weight.grad, mha.out_proj.weight.grad, atol=1e-5, rtol=1e-4)


# --- the reference itself --------------------------------------------------------------------------------------

def test_reference_attention_formula():
    q, k, v = torch.randn(5, 4), torch.randn(7, 4), torch.randn(7, 3)
    blocked = torch.rand(5, 7) < 0.3
    blocked[:, 0] = False
    y, w = reference_attention(q, k, v, blocked)
    scores = (q @ k.T) / 2.0  # sqrt(4)
    e = torch.exp(scores) * (~blocked)
    want_w = e / e.sum(-1, keepdim=True)
    torch.testing.assert_close(w, want_w)
    torch.testing.assert_close(y, want_w @ v)


def test_reference_weights_are_causal_and_sum_to_one():
    _, ref = make_pair(causal=True)
    _, w = ref(torch.randn(2, 8, D), return_weights=True)
    assert w.shape == (2, H, 8, 8)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, H, 8))
    assert (w.triu(1) == 0).all(), "a query attends to a later position"


def test_dropout_applies_in_training_only():
    fast, ref = make_pair(dropout=0.5)
    x = torch.randn(2, 8, D)
    fast.eval(), ref.eval()
    torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-5)
    ref.train()
    torch.manual_seed(0)
    _, w_drop = ref(x, return_weights=True)
    ref.eval()
    _, w = ref(x, return_weights=True)
    kept = w_drop != 0
    assert 0 < kept[w != 0].float().mean() < 1, "dropout dropped nothing or everything"
    torch.testing.assert_close(w_drop[kept], 2 * w[kept])  # inverted dropout: survivors scaled by 1/(1-p)
    fast.train()
    assert not torch.allclose(fast(x), fast.eval()(x)), "dropout had no effect in training mode"


def test_padding_tokens_do_not_change_real_outputs():
    for impl in (MultiHeadAttention, ReferenceMultiHeadAttention):
        for causal in (True, False):
            torch.manual_seed(0)
            m = impl(D, D, H, CTX, causal=causal)
            x = torch.randn(2, 8, D)
            mask = left_padding_mask(2, 8, [3, 0])
            x2 = x.clone()
            x2[0, :3] = torch.randn(3, D) * 10  # change only the padding positions
            y1, y2 = m(x, attention_mask=mask), m(x2, attention_mask=mask)
            torch.testing.assert_close(y1[mask.bool()], y2[mask.bool()], atol=1e-5, rtol=1e-5)
            assert torch.isfinite(y1).all(), "a padding query gave NaN"


# --- KV cache ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", [MultiHeadAttention, ReferenceMultiHeadAttention])
@pytest.mark.parametrize("num_kv_heads", [None, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "padding"])
def test_kv_cache_incremental_equals_full(impl, num_kv_heads, padded):
    torch.manual_seed(0)
    m = impl(D, D, H, CTX, num_kv_heads=num_kv_heads).eval()
    x = torch.randn(2, 12, D)
    mask = left_padding_mask(2, 12, [0, 3]) if padded else None
    full = m(x, attention_mask=mask)
    cache = m.new_cache(2, max_len=16)
    pieces = []
    for start, stop in [(0, 5), (5, 6), (6, 9), (9, 10), (10, 11), (11, 12)]:  # a prompt, then chunks and tokens
        step_mask = None if mask is None else mask[:, :stop]
        pieces.append(m(x[:, start:stop], attention_mask=step_mask, cache=cache))
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_reorder_and_size():
    m = MultiHeadAttention(D, D, H, CTX)
    cache = m.new_cache(3, max_len=8)
    assert isinstance(cache, KVCache) and cache.max_len == 8 and cache.k.shape == (3, H, 8, D // H)
    m(torch.randn(3, 4, D), cache=cache)
    k_before = cache.k[:, :, :4].clone()
    cache.reorder(torch.tensor([2, 2, 0]))
    torch.testing.assert_close(cache.k[:, :, :4], k_before[[2, 2, 0]])
    assert cache.nbytes() == 2 * 3 * H * 8 * (D // H) * 4


# --- errors a user can make -------------------------------------------------------------------------------------

def test_error_heads_do_not_divide_d_out():
    with pytest.raises(ValueError, match=r"d_out \(30\) must be divisible by num_heads \(4\).*num_heads="):
        MultiHeadAttention(30, 30, 4, CTX)


def test_error_kv_heads_do_not_divide_heads():
    with pytest.raises(ValueError, match="num_kv_heads"):
        MultiHeadAttention(D, D, 4, CTX, num_kv_heads=3)


def test_error_dropout_out_of_range():
    with pytest.raises(ValueError, match="dropout"):
        MultiHeadAttention(D, D, 4, CTX, dropout=1.0)


@pytest.mark.parametrize("impl", [MultiHeadAttention, ReferenceMultiHeadAttention])
def test_error_sequence_longer_than_context(impl):
    m = impl(D, D, H, context_length=8)
    with pytest.raises(ValueError, match="longer than the context length 8; crop"):
        m(torch.randn(1, 9, D))
    cache = m.new_cache(1, max_len=16)
    m(torch.randn(1, 6, D), cache=cache)
    with pytest.raises(ValueError, match=r"6 cached \+ 3 new"):
        m(torch.randn(1, 3, D), cache=cache)


@pytest.mark.parametrize("impl", [MultiHeadAttention, ReferenceMultiHeadAttention])
def test_error_mask_of_wrong_shape_leaves_cache_intact(impl):
    m = impl(D, D, H, CTX)
    with pytest.raises(ValueError, match=r"attention_mask must have shape .* = \(2, 5\), got \(2, 4\)"):
        m(torch.randn(2, 5, D), attention_mask=torch.ones(2, 4))
    cache = m.new_cache(2)
    m(torch.randn(2, 3, D), cache=cache)
    with pytest.raises(ValueError, match=r"\(2, 4\), got \(2, 1\)"):  # must cover cached + new positions
        m(torch.randn(2, 1, D), attention_mask=torch.ones(2, 1), cache=cache)
    assert cache.length == 3, "a rejected call wrote into the cache"


def test_error_wrong_input_shape():
    m = MultiHeadAttention(D, D, H, CTX)
    with pytest.raises(ValueError, match=r"expected x of shape \(batch, seq, 32\)"):
        m(torch.randn(5, D))


def test_error_cache_full():
    m = MultiHeadAttention(D, D, H, CTX)
    cache = m.new_cache(1, max_len=4)
    with pytest.raises(ValueError, match="KV cache full"):
        m(torch.randn(1, 5, D), cache=cache)


# --- the benchmark helpers run (no timing asserted) ----------------------------------------------------------------

def test_benchmark_helpers_produce_a_table():
    rows = benchmark_attention(seq_lens=(8, 16), batch=1, d_model=16, num_heads=2, min_time=0.0, max_reps=3)
    assert len(rows) == 2 * 2 * 3
    assert all(r["ratio"] == 1.0 for r in rows if r["impl"].startswith("reference"))
    table = format_benchmark(rows)
    assert table.count("\n") == len(rows) + 1 and "nn.MultiheadAttention" in table
    assert attention_matrix_bytes(2, 3, 10) == 2 * 3 * 100 * 4
    assert attention_matrix_bytes(1, 1, 10, torch.bfloat16) == 200
    with pytest.raises(ValueError, match="unknown mode"):
        benchmark_attention(seq_lens=(8,), modes=("backward",))


# --- bad inputs: errors that name the fix -------------------------------------------------------------------------

@pytest.mark.parametrize("impl", [MultiHeadAttention, ReferenceMultiHeadAttention])
def test_error_float_or_non_binary_mask(impl):
    m = impl(D, D, H, CTX)
    x = torch.randn(2, 5, D)
    mask = left_padding_mask(2, 5, [2, 0])
    with pytest.raises(TypeError, match="0/1 integers or bools .* got a torch.float32 tensor"):
        m(x, attention_mask=mask.float())
    with pytest.raises(ValueError, match="only 0 .* found 3"):
        m(x, attention_mask=mask * 3)
    torch.testing.assert_close(m(x, attention_mask=mask), m(x, attention_mask=mask.bool()), rtol=0, atol=0)


@pytest.mark.parametrize("impl", [MultiHeadAttention, ReferenceMultiHeadAttention])
def test_error_cache_of_another_batch_and_float64_input(impl):
    m = impl(D, D, H, CTX)
    cache = m.new_cache(4)
    with pytest.raises(ValueError, match=r"made for a batch of 4 but x has a batch of 2; .*new_cache\(2"):
        m(torch.randn(2, 3, D), cache=cache)
    assert cache.length == 0
    with pytest.raises(TypeError, match=r"x is torch.float64 but this module's weights are torch.float32"):
        m(torch.randn(2, 3, D, dtype=torch.float64))
