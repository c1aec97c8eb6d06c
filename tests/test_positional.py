"""Positional encodings: the sinusoidal table against the paper's formula, RoPE against transformers' Llama."""

from __future__ import annotations

import math

import pytest
import torch

from llmscratch.models.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rope,
    rope_cos_sin,
    rotate_half,
    sinusoidal_table,
)


def test_sinusoidal_table_equals_the_formula():
    T, d = 50, 16
    pe = sinusoidal_table(T, d)
    ref = torch.zeros(T, d, dtype=torch.float64)
    for pos in range(T):
        for i in range(d // 2):
            ref[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / d))
            ref[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / d))
    torch.testing.assert_close(pe, ref.float(), atol=1e-5, rtol=0)


def test_sinusoidal_shift_is_a_rotation():
    # PE[pos + k] = R_k PE[pos] with R_k the same for every pos: the property Vaswani et al. point out.
    pe = sinusoidal_table(64, 8).double()
    k = 5
    R, *_ = torch.linalg.lstsq(pe[:-k], pe[k:])
    torch.testing.assert_close(pe[:-k] @ R, pe[k:], atol=1e-6, rtol=0)


def test_absolute_modules_add_their_table():
    x = torch.randn(2, 7, 16)
    sin = SinusoidalPositionalEncoding(16, max_len=32)
    torch.testing.assert_close(sin(x), x + sinusoidal_table(32, 16)[:7])
    torch.testing.assert_close(sin(x, offset=3), x + sinusoidal_table(32, 16)[3:10])
    learned = LearnedPositionalEmbedding(16, max_len=10)
    torch.testing.assert_close(learned(x), x + learned.weight[:7])
    assert list(dict(learned.named_parameters())) == ["weight"]
    assert "pe" not in sin.state_dict()
    with pytest.raises(ValueError, match="max_len"):
        learned(torch.randn(1, 11, 16))
    with pytest.raises(ValueError, match="shape"):
        learned(torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match="even"):
        sinusoidal_table(10, 7)


def _hf_llama_rope(head_dim, base, position_ids, x):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim, rope_theta=base,
                      max_position_embeddings=4096)
    if getattr(cfg, "rope_parameters", None) is not None:
        cfg.rope_parameters["rope_theta"] = base
    return LlamaRotaryEmbedding(cfg)(x, position_ids)


@pytest.mark.parametrize("head_dim,base", [(16, 10000.0), (64, 500000.0)])
def test_rope_equals_transformers_llama(head_dim, base):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    B, H, T = 2, 3, 11
    q, k = torch.randn(B, H, T, head_dim), torch.randn(B, H, T, head_dim)
    position_ids = torch.arange(5, 5 + T).expand(B, T)
    cos_ref, sin_ref = _hf_llama_rope(head_dim, base, position_ids, q)
    cos, sin = rope_cos_sin(position_ids, head_dim, base)
    torch.testing.assert_close(cos, cos_ref)
    torch.testing.assert_close(sin, sin_ref)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos_ref, sin_ref)
    torch.testing.assert_close(apply_rope(q, cos, sin), q_ref)
    torch.testing.assert_close(apply_rope(k, cos, sin), k_ref)
    rope = RotaryEmbedding(head_dim, max_len=64, base=base)
    q2, k2 = rope(q, k, offset=5)
    torch.testing.assert_close(q2, q_ref)
    torch.testing.assert_close(k2, k_ref)


def test_rope_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    d = 32
    q, k = torch.randn(d), torch.randn(d)
    cos, sin = rope_cos_sin(torch.arange(100), d)
    rot = lambda x, p: x * cos[p] + rotate_half(x) * sin[p]  # noqa: E731
    s1 = rot(q, 10) @ rot(k, 3)
    s2 = rot(q, 57) @ rot(k, 50)
    torch.testing.assert_close(s1, s2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rot(q, 10).norm(), q.norm())  # a rotation keeps the length


def test_rope_errors():
    rope = RotaryEmbedding(8, max_len=16)
    with pytest.raises(ValueError, match="larger max_len"):
        rope(torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8), offset=10)
    with pytest.raises(ValueError, match=r"\(batch, n_head, seq, 8\)"):
        rope(torch.randn(2, 10, 8), torch.randn(2, 10, 8))
    with pytest.raises(ValueError, match="same offset"):
        rope(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7)
