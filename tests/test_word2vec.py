"""llmscratch.data.word2vec: pairs against a plain loop, the loss against its formula, and training on a tiny
two-topic corpus (the loss falls, neighbours share a topic, an analogy works)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from llmscratch.data.word2vec import SkipGram, analogy, build_vocab, nearest, skipgram_pairs, train_skipgram

ANIMALS = ["cat", "dog", "horse", "cow", "sheep", "goat"]
VEHICLES = ["car", "bus", "truck", "train", "bike", "van"]


def _corpus(n_sentences=800, seed=0):
    rng = np.random.default_rng(seed)
    tokens = []
    for _ in range(n_sentences):
        topic = ANIMALS if rng.random() < 0.5 else VEHICLES
        for _ in range(6):
            tokens += [str(rng.choice(topic)), "the"]
        tokens.append(".")
    return tokens


def test_pairs_match_a_plain_loop():
    ids = np.arange(30) % 7
    window = 3
    pairs = skipgram_pairs(ids, window, np.random.default_rng(5), subsample=None)
    b = np.random.default_rng(5).integers(1, window + 1, size=len(ids))  # the same draws
    expected = [(ids[i], ids[j]) for i in range(len(ids)) for j in range(i - b[i], i + b[i] + 1)
                if j != i and 0 <= j < len(ids)]
    assert Counter(map(tuple, pairs.tolist())) == Counter((int(a), int(c)) for a, c in expected)


def test_loss_is_the_negative_sampling_formula():
    torch.manual_seed(0)
    model = SkipGram(10, 4)
    torch.nn.init.normal_(model.context.weight)
    c, o, neg = torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[5, 6, 7], [8, 9, 0]])
    u, v = model.center.weight.detach().double(), model.context.weight.detach().double()
    sig = lambda x: 1 / (1 + torch.exp(-x))  # noqa: E731
    ref = torch.stack([-torch.log(sig(u[c[b]] @ v[o[b]])) - sum(torch.log(sig(-(u[c[b]] @ v[n]))) for n in neg[b])
                       for b in range(2)]).mean()
    assert model(c, o, neg).item() == pytest.approx(ref.item(), abs=1e-6)


def test_training_on_two_topics():
    torch.set_num_threads(1)  # tiny matrices: threads only spin on a loaded machine
    tokens = _corpus()
    vocab = build_vocab(tokens, min_count=1)
    assert vocab.itos[0] == "the" and len(vocab) == 14
    model, losses = train_skipgram(vocab.encode(tokens), vocab, dim=16, window=2, negatives=4, epochs=3,
                                   batch_size=256, lr=0.02, subsample=None, seed=0)
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])
    w = model.center.weight
    for word, topic in [("cat", ANIMALS), ("bus", VEHICLES)]:
        top = [x for x, _ in nearest(w, vocab, word, k=4)]
        assert set(top) <= set(topic), (word, top)
    # cat : dog :: car : ? -> a vehicle
    assert analogy(w, vocab, "cat", "dog", "car", k=1)[0][0] in VEHICLES
    model2, losses2 = train_skipgram(vocab.encode(tokens), vocab, dim=16, window=2, negatives=4, epochs=1,
                                     batch_size=256, lr=0.02, subsample=None, seed=0)
    assert losses2 == losses[:len(losses2)], "the same seed gives the same run"


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="lower min_count"):
        build_vocab(["a", "b"], min_count=2)
    vocab = build_vocab(["a", "b", "a"], min_count=1)
    with pytest.raises(KeyError, match="not in the vocabulary"):
        nearest(torch.zeros(2, 3), vocab, "zebra")
