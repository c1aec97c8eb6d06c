"""Seq2Seq: attention against its formula, padding that changes nothing, greedy decoding, a learning test."""

from __future__ import annotations

import pytest
import torch

from llmscratch.models.seq2seq import (
    AdditiveAttention,
    Seq2Seq,
    Seq2SeqConfig,
    collate_pairs,
    exact_match,
    reversal_pairs,
)


def test_additive_attention_equals_formula_and_ignores_padding():
    torch.manual_seed(0)
    attn = AdditiveAttention(6, 10, 5)
    q, keys = torch.randn(2, 6), torch.randn(2, 4, 10)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    ctx, w = attn(q, keys, mask)
    for b in range(2):
        n = int(mask[b].sum())
        scores = torch.stack([attn.v.weight[0] @ torch.tanh(attn.W_q.weight @ q[b] + attn.W_k.weight @ keys[b, j] + attn.W_k.bias)
                              for j in range(n)])
        ref_w = torch.softmax(scores, 0)
        torch.testing.assert_close(w[b, :n], ref_w)
        torch.testing.assert_close(ctx[b], ref_w @ keys[b, :n])
    assert w[0, 3] == 0
    torch.testing.assert_close(w.sum(-1), torch.ones(2))


@pytest.mark.parametrize("attention", [True, False])
def test_padding_does_not_change_outputs(attention):
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(13, 13, d_emb=8, d_hidden=16, d_attn=16, attention=attention)).eval()
    pairs = reversal_pairs(4, 2, 9, seed=3)
    src, tgt = collate_pairs(pairs)
    logits, w = model(src, tgt[:, :-1])
    for i, pair in enumerate(pairs):
        s1, t1 = collate_pairs([pair])
        l1, w1 = model(s1, t1[:, :-1])
        T = t1.shape[1] - 1
        torch.testing.assert_close(logits[i, :T], l1[0], atol=1e-5, rtol=1e-5)
        if attention:
            S = s1.shape[1]
            torch.testing.assert_close(w[i, :T, :S], w1[0], atol=1e-5, rtol=1e-5)
            assert (w[i, :, S:] == 0).all()
    assert (w is None) == (not attention)


def test_greedy_decode_agrees_with_teacher_forcing_on_its_own_output():
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(13, 13, d_emb=8, d_hidden=16, d_attn=16)).eval()
    src, _ = collate_pairs(reversal_pairs(3, 2, 6, seed=1))
    pred, weights = model.greedy_decode(src, max_len=7)
    assert pred.shape[0] == 3 and pred.shape[1] <= 7 and weights.shape[:2] == pred.shape
    bos = torch.full((3, 1), model.cfg.bos_id)
    logits, _ = model(src, torch.cat([bos, pred[:, :-1]], dim=1))
    # Feeding the greedy output back with teacher forcing must reproduce the same argmax until each row ends.
    am = logits.argmax(-1)
    for i in range(3):
        ended = (pred[i] == model.cfg.eos_id).nonzero()
        n = int(ended[0]) + 1 if len(ended) else pred.shape[1]
        assert am[i, :n].tolist() == pred[i, :n].tolist()


def test_exact_match_and_task_helpers():
    src, tgt = collate_pairs([((3, 4, 5), (5, 4, 3)), ((6,), (6,))])
    assert src.tolist() == [[3, 4, 5], [6, 0, 0]]
    assert tgt.tolist() == [[1, 5, 4, 3, 2], [1, 6, 2, 0, 0]]
    pred = torch.tensor([[5, 4, 3, 2, 7, 7], [6, 6, 2, 0, 0, 0]])
    assert exact_match(pred, tgt).tolist() == [True, False]
    assert exact_match(torch.tensor([[5, 4, 3], [6, 2, 0]]), tgt).tolist() == [False, True]
    train = reversal_pairs(200, 1, 3, n_symbols=3, seed=0)
    test = reversal_pairs(5, 3, 3, n_symbols=3, seed=1, exclude={s for s, _ in train})
    assert not {s for s, _ in test} & {s for s, _ in train}
    with pytest.raises(ValueError, match="too few possible"):
        reversal_pairs(10, 1, 1, n_symbols=2, exclude={(3,), (4,)})


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="d_hidden"):
        Seq2SeqConfig(10, 10, d_hidden=0)
    with pytest.raises(ValueError, match="outside the target vocabulary"):
        Seq2SeqConfig(10, 2)
    model = Seq2Seq(Seq2SeqConfig(5, 5, d_emb=4, d_hidden=4, d_attn=4))
    with pytest.raises(ValueError, match="vocabulary sizes"):
        model(torch.tensor([[7]]), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="at least one non-padding"):
        model(torch.tensor([[3], [0]]), torch.tensor([[1], [1]]))
    with pytest.raises(ValueError, match="max_len"):
        model.greedy_decode(torch.tensor([[3]]), 0)


@pytest.mark.parametrize("attention", [True, False])
def test_learns_a_tiny_reversal_task(attention):
    # 64 sequences of length 1-3 over 4 symbols: 30 full-batch Adam steps take the loss from about ln(7) = 1.95
    # to under a tenth of its start, and greedy decoding then reverses most training sequences.
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(7, 7, d_emb=8, d_hidden=24, d_attn=24, attention=attention))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    src, tgt = collate_pairs(reversal_pairs(64, 1, 3, n_symbols=4, seed=0))
    first = model.loss(src, tgt).item()
    for _ in range(30):
        loss = model.loss(src, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = model.loss(src, tgt).item()
    assert last < 0.1 * first, f"loss went from {first:.3f} to {last:.3f}"
    pred, _ = model.eval().greedy_decode(src, max_len=5)
    assert exact_match(pred, tgt).float().mean() > 0.8
