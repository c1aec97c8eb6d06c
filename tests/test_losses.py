"""Tests of llmscratch.losses.fused_linear_cross_entropy and GPTModel.loss against PyTorch's unfused
``F.cross_entropy(F.linear(hidden, weight), targets)``: loss and gradients, ignore_index, tied weights, chunking,
bf16, no-grad evaluation and error messages."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from llmscratch.losses import fused_linear_cross_entropy
from llmscratch.models.gpt import GPTConfig, GPTModel


def _reference(hidden, weight, targets, ignore_index=-100):
    logits = F.linear(hidden.float(), weight.float()) if hidden.dtype != torch.float32 else F.linear(hidden, weight)
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=ignore_index)


def _loss_and_grads(fn, hidden, weight, targets, **kw):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = fn(h, w, targets, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 37, 1000])
def test_equals_linear_plus_cross_entropy_float32(chunk_size):
    torch.manual_seed(0)
    hidden, weight = torch.randn(37, 16), torch.randn(53, 16)  # 37 rows: chunks of 5 and 8 leave a remainder
    targets = torch.randint(0, 53, (37,))
    targets[::4] = -100
    ref = _loss_and_grads(_reference, hidden, weight, targets)
    got = _loss_and_grads(fused_linear_cross_entropy, hidden, weight, targets, chunk_size=chunk_size)
    for r, g, name in zip(ref, got, ("loss", "grad hidden", "grad weight")):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_batched_shapes_custom_ignore_index_and_scaled_backward():
    torch.manual_seed(1)
    hidden, weight = torch.randn(3, 7, 8, dtype=torch.float64), torch.randn(11, 8, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 7))
    targets[1, 2:] = 5
    targets[0, 0] = 5
    loss_fn = lambda h, w, y, **kw: 2.5 * fused_linear_cross_entropy(h, w, y, **kw)  # noqa: E731
    ref_fn = lambda h, w, y, **kw: 2.5 * F.cross_entropy(F.linear(h, w).flatten(0, 1), y.flatten(), ignore_index=5)  # noqa: E731
    ref = _loss_and_grads(ref_fn, hidden, weight, targets)
    got = _loss_and_grads(loss_fn, hidden, weight, targets, chunk_size=4, ignore_index=5)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r)  # float64 tolerances
    assert got[1][1, 2:].abs().sum() == 0  # ignored tokens get no gradient


def test_tied_weight_used_by_an_embedding_too():
    torch.manual_seed(2)
    vocab, d = 29, 12
    ids, targets = torch.randint(0, vocab, (2, 9)), torch.randint(0, vocab, (2, 9))
    targets[0, -3:] = -100

    def run(fused):
        torch.manual_seed(3)
        emb, mix = nn.Embedding(vocab, d), nn.Linear(d, d)
        h = torch.tanh(mix(emb(ids)))
        loss = (fused_linear_cross_entropy(h, emb.weight, targets, chunk_size=7) if fused
                else F.cross_entropy(F.linear(h, emb.weight).flatten(0, 1), targets.flatten()))
        loss.backward()
        return loss.detach(), emb.weight.grad, mix.weight.grad

    for r, g in zip(run(False), run(True)):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_bfloat16_and_autocast_within_bf16_tolerance():
    torch.manual_seed(4)
    hidden, weight = torch.randn(20, 32), torch.randn(97, 32) * 0.3
    targets = torch.randint(0, 97, (20,))
    ref = _loss_and_grads(_reference, hidden, weight, targets)
    got = _loss_and_grads(fused_linear_cross_entropy, hidden.bfloat16(), weight.bfloat16(), targets, chunk_size=8)
    assert got[0].dtype == torch.float32  # the loss is reduced in float32
    for r, g in zip(ref, got):
        torch.testing.assert_close(g.float(), r, atol=2e-2, rtol=2e-2)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused_linear_cross_entropy(h, w, targets)
    loss.backward()
    assert w.grad.dtype == torch.float32
    torch.testing.assert_close(loss.detach(), ref[0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(w.grad, ref[2], atol=2e-2, rtol=2e-2)


def test_no_grad_and_all_ignored():
    torch.manual_seed(5)
    hidden, weight = torch.randn(10, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    targets = torch.randint(0, 6, (10,))
    with torch.no_grad():
        torch.testing.assert_close(fused_linear_cross_entropy(hidden, weight, targets, chunk_size=3),
                                   _reference(hidden, weight, targets))
    ignored = torch.full((10,), -100)
    assert math.isnan(fused_linear_cross_entropy(hidden, weight, ignored).item())
    assert math.isnan(F.cross_entropy(F.linear(hidden, weight), ignored).item())  # same convention


def test_errors_name_the_fix():
    h, w = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="weight must be"):
        fused_linear_cross_entropy(h, w.t(), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        fused_linear_cross_entropy(h, w, torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        fused_linear_cross_entropy(h, w, torch.zeros(4))
    with pytest.raises(IndexError, match="outside the vocabulary"):
        fused_linear_cross_entropy(h, w, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_cross_entropy(h, w, torch.zeros(4, dtype=torch.long), chunk_size=0)
    with pytest.raises(TypeError, match="same dtype"):
        fused_linear_cross_entropy(h.double(), w, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("padded", [None, 64])
def test_gpt_loss_equals_logits_path(padded):
    torch.manual_seed(6)
    cfg = GPTConfig.preset("gpt-nano", vocab_size=61, context_length=16, padded_vocab_size=padded)
    idx, targets = torch.randint(0, 61, (3, 16)), torch.randint(0, 61, (3, 16))
    targets[2, 10:] = -100

    def run(fused):
        torch.manual_seed(7)
        model = GPTModel(cfg)
        loss = (model.loss(idx, targets, chunk_size=20) if fused
                else F.cross_entropy(model(idx).flatten(0, 1), targets.flatten()))
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    ref_loss, ref_grads = run(False)
    loss, grads = run(True)
    torch.testing.assert_close(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    with pytest.raises(ValueError, match="shape of idx"):
        GPTModel(cfg).loss(idx, targets[:, :-1])
