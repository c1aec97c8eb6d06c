"""A GRU encoder-decoder (Sutskever et al., 2014; Cho et al., 2014), with and without additive attention
(Bahdanau et al., 2015): the model that attention grew out of.

The encoder reads the source with a bidirectional GRU. The decoder writes the target one token at a time with a
GRU cell; at every step it is given a *context vector*:

- without attention (Cho et al.), the context is the same fixed vector at every step: the encoder's final
  states. Everything the decoder will ever know about the source must squeeze through it (the bottleneck);
- with attention (Bahdanau et al.), the context is recomputed at every step as a weighted average of all the
  encoder states, the weights given by how well each state matches the decoder's current state.

Both variants are the same class (``Seq2SeqConfig(attention=...)``), so a comparison changes one flag.
Batches are padded with ``pad_id``: the encoder packs sequences so padding never enters its final state, and
attention gives padding zero weight. Training uses teacher forcing (:meth:`Seq2Seq.forward` is fed the true
previous tokens); :meth:`Seq2Seq.greedy_decode` feeds back its own argmax.

The end of the file generates the course's toy task, sequence reversal, with no download.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = [
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "Seq2SeqConfig",
    "Encoder",
    "AdditiveAttention",
    "Decoder",
    "Seq2Seq",
    "reversal_pairs",
    "collate_pairs",
    "exact_match",
]

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    d_emb: int = 32  # token embedding size (source and target)
    d_hidden: int = 128  # GRU state size; the encoder has two directions, so its states are 2 * d_hidden
    d_attn: int = 128  # size of the space in which additive attention compares query and keys
    attention: bool = True  # False: the fixed-context model of Cho et al. (2014)
    dropout: float = 0.0
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def __post_init__(self):
        for name in ("src_vocab_size", "tgt_vocab_size", "d_emb", "d_hidden", "d_attn"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Seq2SeqConfig.{name} must be a positive int, got {v!r}")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.tgt_vocab_size:
                raise ValueError(f"Seq2SeqConfig.{name}={getattr(self, name)} is outside the target vocabulary (size {self.tgt_vocab_size})")


class Encoder(nn.Module):
    """Embedding + bidirectional GRU.

    ``forward(src, src_mask)``: ``src`` ``(batch, src_len)`` ids, ``src_mask`` ``(batch, src_len)`` bool (True
    for real tokens, padding at the end). Returns ``outputs`` ``(batch, src_len, 2*d_hidden)`` (zeros at padding)
    and ``summary`` ``(batch, 2*d_hidden)``: the forward GRU's state after the last real token concatenated with
    the backward GRU's state after the first token, the "fixed vector" of a Seq2Seq model.
    """

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.src_vocab_size, cfg.d_emb, padding_idx=cfg.pad_id)
        self.rnn = nn.GRU(cfg.d_emb, cfg.d_hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor):
        lengths = src_mask.sum(1)
        if (lengths == 0).any():
            raise ValueError("every source sequence needs at least one non-padding token")
        x = self.dropout(self.embedding(src))  # (B, S, d_emb)
        # Packing makes each direction stop at the real length: padding never leaks into the summary.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.rnn(packed)  # h_n: (2, B, d_hidden) = last state of each direction
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # (B, S, 2H)
        summary = torch.cat([h_n[0], h_n[1]], dim=-1)  # (B, 2H)
        return out, summary


class AdditiveAttention(nn.Module):
    """Bahdanau's additive attention: ``score(q, k_j) = v^T tanh(W_q q + W_k k_j)``, softmax over j.

    ``forward(query, keys, mask, keys_proj=None)``: ``query`` ``(batch, d_query)``, ``keys`` ``(batch, src_len,
    d_key)`` (also the values), ``mask`` ``(batch, src_len)`` bool. Returns ``context`` ``(batch, d_key)`` and
    ``weights`` ``(batch, src_len)`` (each row sums to 1, zero at padding). ``W_k keys`` does not depend on the
    decoder step: compute it once with :meth:`project_keys` and pass it as ``keys_proj``.
    """

    def __init__(self, d_query: int, d_key: int, d_attn: int):
        super().__init__()
        self.W_q = nn.Linear(d_query, d_attn, bias=False)
        self.W_k = nn.Linear(d_key, d_attn)
        self.v = nn.Linear(d_attn, 1, bias=False)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.W_k(keys)  # (B, S, d_attn)

    def forward(self, query, keys, mask, keys_proj=None):
        if keys_proj is None:
            keys_proj = self.project_keys(keys)
        scores = self.v(torch.tanh(self.W_q(query).unsqueeze(1) + keys_proj)).squeeze(-1)  # (B, S)
        scores = scores.masked_fill(~mask, float("-inf"))  # padding gets exactly zero weight
        weights = torch.softmax(scores, dim=-1)  # (B, S)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # (B, d_key)
        return context, weights


class Decoder(nn.Module):
    """One GRU step per target token: ``s_i = GRU([emb(y_{i-1}); c_i], s_{i-1})``, logits from ``[s_i; c_i; emb]``.

    The context ``c_i`` is the encoder summary (no attention) or ``attention(s_{i-1}, encoder outputs)``.
    """

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        d_ctx = 2 * cfg.d_hidden
        self.embedding = nn.Embedding(cfg.tgt_vocab_size, cfg.d_emb, padding_idx=cfg.pad_id)
        self.attention = AdditiveAttention(cfg.d_hidden, d_ctx, cfg.d_attn) if cfg.attention else None
        self.cell = nn.GRUCell(cfg.d_emb + d_ctx, cfg.d_hidden)
        self.out = nn.Linear(cfg.d_hidden + d_ctx + cfg.d_emb, cfg.tgt_vocab_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def step(self, y_prev, state, enc_out, summary, src_mask, keys_proj=None):
        """One decoding step. ``y_prev`` ``(batch,)`` ids, ``state`` ``(batch, d_hidden)``.

        Returns ``logits`` ``(batch, tgt_vocab)``, the new state, and the attention weights ``(batch, src_len)``
        (None without attention).
        """
        emb = self.dropout(self.embedding(y_prev))  # (B, d_emb)
        if self.attention is not None:
            context, weights = self.attention(state, enc_out, src_mask, keys_proj)
        else:
            context, weights = summary, None
        state = self.cell(torch.cat([emb, context], dim=-1), state)
        logits = self.out(self.dropout(torch.cat([state, context, emb], dim=-1)))
        return logits, state, weights


class Seq2Seq(nn.Module):
    """Encoder + decoder + the bridge from the encoder summary to the decoder's first state.

    - ``forward(src, tgt_in)`` -> ``(logits (batch, tgt_len, tgt_vocab), weights (batch, tgt_len, src_len) or
      None)``, teacher forcing: ``tgt_in`` starts with ``bos_id`` and is the target shifted right by one.
    - ``loss(src, tgt)``: ``tgt`` = ``[bos, y_1, ..., y_n, eos, pad...]``; mean cross-entropy over real tokens.
    - ``greedy_decode(src, max_len)`` -> ``(ids (batch, <=max_len), weights)``: ids after ``bos``, ending with
      ``eos`` and padded with ``pad_id`` once a row has finished.
    """

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.bridge = nn.Linear(2 * cfg.d_hidden, cfg.d_hidden)
        self.decoder = Decoder(cfg)

    def _check(self, x, name, vocab):
        if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be a (batch, seq) tensor of token ids, got {tuple(x.shape)} {x.dtype}")
        if x.numel() and (x.min() < 0 or x.max() >= vocab):
            raise ValueError(f"{name} has ids outside 0..{vocab - 1}: check the vocabulary sizes in Seq2SeqConfig")

    def encode(self, src, src_mask=None):
        self._check(src, "src", self.cfg.src_vocab_size)
        src_mask = src != self.cfg.pad_id if src_mask is None else src_mask.bool()
        enc_out, summary = self.encoder(src, src_mask)
        state = torch.tanh(self.bridge(summary))  # (B, d_hidden)
        keys_proj = self.decoder.attention.project_keys(enc_out) if self.decoder.attention is not None else None
        return enc_out, summary, state, src_mask, keys_proj

    def forward(self, src, tgt_in, src_mask=None):
        self._check(tgt_in, "tgt_in", self.cfg.tgt_vocab_size)
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"src has batch {src.shape[0]} but tgt_in has batch {tgt_in.shape[0]}")
        enc_out, summary, state, src_mask, keys_proj = self.encode(src, src_mask)
        logits, weights = [], []
        for t in range(tgt_in.shape[1]):  # teacher forcing: always feed the true previous token
            lg, state, w = self.decoder.step(tgt_in[:, t], state, enc_out, summary, src_mask, keys_proj)
            logits.append(lg)
            weights.append(w)
        logits = torch.stack(logits, dim=1)  # (B, T, V)
        return logits, (torch.stack(weights, dim=1) if weights[0] is not None else None)

    def loss(self, src, tgt, src_mask=None):
        logits, _ = self(src, tgt[:, :-1], src_mask)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1), ignore_index=self.cfg.pad_id)

    @torch.no_grad()
    def greedy_decode(self, src, max_len: int, src_mask=None):
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        enc_out, summary, state, src_mask, keys_proj = self.encode(src, src_mask)
        B = src.shape[0]
        y = torch.full((B,), self.cfg.bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        ids, weights = [], []
        for _ in range(max_len):
            logits, state, w = self.decoder.step(y, state, enc_out, summary, src_mask, keys_proj)
            y = logits.argmax(-1)
            y = y.masked_fill(done, self.cfg.pad_id)  # finished rows only emit padding
            ids.append(y)
            weights.append(w)
            done |= y == self.cfg.eos_id
            if done.all():
                break
        ids = torch.stack(ids, dim=1)
        return ids, (torch.stack(weights, dim=1) if weights[0] is not None else None)


# ------------------------------------------------------------------------------------------------------------
# The toy task: reverse a random sequence of symbols (generated, no download)
# ------------------------------------------------------------------------------------------------------------

N_SPECIAL = 3  # ids 0, 1, 2 are pad, bos, eos; symbols start at 3


def reversal_pairs(n: int, min_len: int, max_len: int, n_symbols: int = 10, seed: int = 0, exclude=None):
    """``n`` random (source, target) pairs: source = ``length`` symbol ids, target = the source reversed.

    Lengths are uniform in ``[min_len, max_len]``; symbols are ids ``3 .. 3 + n_symbols - 1`` (after pad, bos,
    eos). ``exclude`` is a set of source tuples to skip, so a held-out set never repeats a training example.
    Returns a list of ``(src, tgt)`` tuples of ints.
    """
    if not (1 <= min_len <= max_len):
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    if n_symbols < 2:
        raise ValueError(f"n_symbols must be at least 2, got {n_symbols}")
    rng = random.Random(seed)
    exclude = exclude or set()
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError("cannot find enough new sequences: too few possible sequences for min_len/max_len/n_symbols")
        L = rng.randint(min_len, max_len)
        src = tuple(rng.randrange(N_SPECIAL, N_SPECIAL + n_symbols) for _ in range(L))
        if src in exclude:
            continue
        out.append((src, src[::-1]))
    return out


def collate_pairs(pairs, pad_id: int = PAD_ID, bos_id: int = BOS_ID, eos_id: int = EOS_ID):
    """Pad a list of ``(src, tgt)`` pairs into ``src`` ``(batch, max_src)`` and ``tgt`` ``(batch, max_tgt + 2)``
    tensors; ``tgt`` rows are ``[bos, y..., eos, pad...]``."""
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    S = max(len(s) for s, _ in pairs)
    T = max(len(t) for _, t in pairs) + 2
    src = torch.full((len(pairs), S), pad_id, dtype=torch.long)
    tgt = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        tgt[i, : len(t) + 2] = torch.tensor([bos_id, *t, eos_id], dtype=torch.long)
    return src, tgt


def exact_match(pred: torch.Tensor, tgt: torch.Tensor, pad_id: int = PAD_ID, eos_id: int = EOS_ID) -> torch.Tensor:
    """Per-example exact match ``(batch,)`` bool: ``pred`` (ids after bos, from greedy decoding) equals the
    target ``tgt`` (``[bos, y..., eos, pad...]``) up to and including eos."""
    ref = tgt[:, 1:]
    L = max(pred.shape[1], ref.shape[1])
    pred = F.pad(pred, (0, L - pred.shape[1]), value=pad_id)
    ref = F.pad(ref, (0, L - ref.shape[1]), value=pad_id)
    # Everything after the first eos in the prediction is ignored (greedy_decode pads it anyway).
    after_eos = (pred == eos_id).int().cumsum(1) - (pred == eos_id).int() > 0
    pred = pred.masked_fill(after_eos, pad_id)
    return (pred == ref).all(dim=1)
