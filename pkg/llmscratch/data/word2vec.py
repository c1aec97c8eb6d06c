"""Word vectors from scratch: skip-gram with negative sampling (Mikolov et al. 2013).

Each word ``w`` at position ``t`` predicts the words within a window around it. Instead of a softmax over the
whole vocabulary, each (centre, context) pair is a binary task against ``k`` *negative* words drawn from the
unigram distribution raised to 3/4:

    loss = -log sigmoid(u_c . v_o) - sum_{n=1..k} log sigmoid(-u_c . v_n)

with ``u`` the centre ("input") embeddings and ``v`` the context ("output") embeddings. Frequent words are
subsampled (kept with probability ``sqrt(t / f) + t / f``, as in the word2vec code), and the window size is drawn
per position between 1 and ``window`` so that near words count more.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Vocab", "build_vocab", "skipgram_pairs", "SkipGram", "train_skipgram", "nearest", "analogy"]


@dataclass
class Vocab:
    """Words by id (most frequent first) and their counts; ``stoi`` maps a word to its id."""

    itos: list[str]
    counts: np.ndarray
    stoi: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Ids of the tokens in the vocabulary (unknown tokens are dropped)."""
        return np.array([self.stoi[t] for t in tokens if t in self.stoi], dtype=np.int64)


def build_vocab(tokens: Iterable[str], min_count: int = 5, max_size: int | None = None) -> Vocab:
    """Words seen at least ``min_count`` times, most frequent first (ties alphabetical), at most ``max_size``."""
    counts = Counter(tokens)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[:max_size]
    if not words:
        raise ValueError(f"no word occurs {min_count} times or more: lower min_count or use a longer corpus")
    return Vocab(words, np.array([counts[w] for w in words], dtype=np.int64))


def skipgram_pairs(ids: np.ndarray, window: int, rng: np.random.Generator, counts: np.ndarray | None = None,
                   subsample: float | None = 1e-4) -> np.ndarray:
    """(centre, context) id pairs of one pass over ``ids``: an ``(n_pairs, 2)`` int64 array.

    With ``counts`` and ``subsample`` (the threshold ``t``), frequent words are first dropped at random.
    Each position draws its window ``b`` uniformly in ``1..window`` and pairs with the ``b`` words on each side.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if subsample and counts is not None:
        f = counts / counts.sum()
        keep_p = np.minimum(1.0, np.sqrt(subsample / f[ids]) + subsample / f[ids])
        ids = ids[rng.random(len(ids)) < keep_p]
    b = rng.integers(1, window + 1, size=len(ids))
    pairs = []
    for off in range(1, window + 1):
        # position i pairs with i + off when i's window reaches it, and i + off pairs with i likewise
        fwd = np.flatnonzero(b[:-off] >= off) if len(ids) > off else np.zeros(0, np.int64)
        bwd = np.flatnonzero(b[off:] >= off) + off if len(ids) > off else np.zeros(0, np.int64)
        pairs.append(np.stack([ids[fwd], ids[fwd + off]], 1))
        pairs.append(np.stack([ids[bwd], ids[bwd - off]], 1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


class SkipGram(nn.Module):
    """Two embedding tables: ``center`` (the word vectors one keeps) and ``context``; both ``(vocab, dim)``."""

    def __init__(self, vocab_size: int, dim: int = 100):
        super().__init__()
        self.center = nn.Embedding(vocab_size, dim)
        self.context = nn.Embedding(vocab_size, dim)
        # word2vec's initialisation: centre vectors uniform in +-0.5/dim, context vectors zero
        nn.init.uniform_(self.center.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.context.weight)

    def forward(self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Mean negative-sampling loss. ``center``, ``context``: ``(B,)`` ids; ``negatives``: ``(B, k)`` ids."""
        u = self.center(center)  # (B, D)
        pos = (u * self.context(context)).sum(-1)  # (B,)
        neg = torch.bmm(self.context(negatives), u.unsqueeze(-1)).squeeze(-1)  # (B, k)
        return -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean()


def train_skipgram(ids: Sequence[int] | np.ndarray, vocab: Vocab, dim: int = 100, window: int = 5,
                   negatives: int = 5, epochs: int = 1, batch_size: int = 1024, lr: float = 0.01,
                   subsample: float | None = 1e-4, seed: int = 0, log_every: int = 0):
    """Train a :class:`SkipGram` on a corpus of token ids; returns ``(model, losses)`` (one loss per batch).

    Adam (sparse-friendly choices matter little at this size); negatives are drawn per batch from
    ``counts ** 0.75``. ``log_every`` > 0 prints the mean loss every that many batches.
    """
    if len(vocab) < 2:
        raise ValueError("the vocabulary needs at least two words")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SkipGram(len(vocab), dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    noise = torch.as_tensor(vocab.counts, dtype=torch.float) ** 0.75
    noise /= noise.sum()
    losses = []
    for _ in range(epochs):
        pairs = skipgram_pairs(np.asarray(ids), window, rng, vocab.counts, subsample)
        pairs = torch.from_numpy(pairs[rng.permutation(len(pairs))])
        for s in range(0, len(pairs), batch_size):
            batch = pairs[s:s + batch_size]
            neg = torch.multinomial(noise, len(batch) * negatives, replacement=True, generator=gen)
            loss = model(batch[:, 0], batch[:, 1], neg.view(len(batch), negatives))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if log_every and len(losses) % log_every == 0:
                print(f"batch {len(losses)}: loss {np.mean(losses[-log_every:]):.3f}")
    return model, losses


def _unit(weight: torch.Tensor) -> torch.Tensor:
    return F.normalize(weight.detach().float(), dim=-1)


def nearest(weight: torch.Tensor, vocab: Vocab, word: str | torch.Tensor, k: int = 5,
            exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
    """The ``k`` words whose vectors (rows of ``weight``, ``(vocab, dim)``) have the highest cosine similarity
    to ``word`` (a word of the vocabulary, or a ``(dim,)`` vector), without the word itself and ``exclude``."""
    unit = _unit(weight)
    if isinstance(word, str):
        if word not in vocab.stoi:
            raise KeyError(f"{word!r} is not in the vocabulary ({len(vocab)} words); try a more frequent word")
        query, exclude = unit[vocab.stoi[word]], {*exclude, word}
    else:
        query = F.normalize(word.detach().float(), dim=-1)
    sims = unit @ query
    for w in exclude:
        if w in vocab.stoi:
            sims[vocab.stoi[w]] = -2.0
    top = torch.topk(sims, k)
    return [(vocab.itos[i], float(s)) for s, i in zip(top.values, top.indices)]


def analogy(weight: torch.Tensor, vocab: Vocab, a: str, b: str, c: str, k: int = 5) -> list[tuple[str, float]]:
    """``a`` is to ``b`` as ``c`` is to ...? The words nearest to ``b - a + c`` (unit vectors), without a, b, c."""
    unit = _unit(weight)
    for w in (a, b, c):
        if w not in vocab.stoi:
            raise KeyError(f"{w!r} is not in the vocabulary ({len(vocab)} words)")
    query = unit[vocab.stoi[b]] - unit[vocab.stoi[a]] + unit[vocab.stoi[c]]
    return nearest(weight, vocab, query, k, exclude=(a, b, c))
