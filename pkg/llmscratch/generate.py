"""Text generation for the GPT models: greedy, temperature, top-k, top-p (nucleus), beam search, KV cache.

A language model gives, at every position, scores (logits) for the next token. Generating is a loop: score
the sequence, pick one next token from the last position's scores, append it, repeat. The pieces:

- :func:`top_k_filter` / :func:`top_p_filter`: keep only the likeliest tokens (Fan et al., 2018;
  Holtzman et al., 2020); :func:`sample_next` picks one token (greedy when ``temperature == 0``);
- :func:`generate`: the loop, with a KV cache by default (each step feeds only the new token: the keys and
  values of the earlier positions are kept, not recomputed), stopping at an end-of-text id, and batches of
  left-padded prompts;
- :func:`beam_search`: keeps the ``num_beams`` best partial sequences by total log-probability;
- :func:`text_to_ids` / :func:`ids_to_text`: tokenizer round trips.

The model is anything called as ``model(idx, attention_mask=..., cache=...)`` returning ``(batch, seq, vocab)``
logits and offering ``new_cache(batch, max_len)`` and ``cfg.context_length`` (see
:class:`llmscratch.models.gpt.GPTModel`).
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch.nn import functional as F

from .models.gpt import check_token_ids

__all__ = ["generate", "beam_search", "sample_next", "top_k_filter", "top_p_filter", "sequence_log_prob",
           "text_to_ids", "ids_to_text"]


# ---------------------------------------------------------------------- choosing the next token
#: Temperatures in (0, MIN_TEMPERATURE) are refused: dividing logits by them overflows or leaves only the argmax,
#: so they are greedy decoding in disguise (use ``temperature=0``).
MIN_TEMPERATURE = 1e-4


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits in the last dimension, set the rest to ``-inf``. ``(..., vocab)`` -> same."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"top_k must be a positive int, got {k!r}")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest value
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probabilities sum to at least ``p``.

    The most likely token is always kept. ``(..., vocab)`` -> same dtype, dropped entries ``-inf``.

    The probabilities are computed in float64 whatever the logits' dtype, and the rule is written from the
    unlikely end ("ascending"): sort from least to most likely and drop the longest run whose total mass is at
    most ``1 - p``. The kept mass is then ``1 - dropped >= p``. The textbook form (sort descending, keep until
    the running sum reaches ``p``) computed in float32 is not safe at GPT-2's 50,257 tokens: the rounding of a
    long float32 cumulative sum drops tokens that are needed, and in bf16 thousands of them.
    """
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be a number in (0, 1], got {p!r}")
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending: least likely first
    probs = sorted_logits.double().softmax(-1)
    # Drop token i (in ascending order) when it and all less likely tokens together hold at most 1 - p.
    drop_sorted = probs.cumsum(-1) <= 1.0 - p
    drop_sorted[..., -1] = False  # the most likely token always stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None,
                check: bool = True) -> torch.Tensor:
    """Pick the next token from last-position logits ``(batch, vocab)``; returns ``(batch, 1)`` ids.

    ``temperature == 0`` is greedy (argmax; top-k/top-p change nothing then). Otherwise the logits are divided
    by the temperature (< 1 sharpens, > 1 flattens), filtered by top-k then top-p, and sampled. All of this runs
    in float32 (bf16 / fp16 logits are converted first: filtering in bf16 drops thousands of tokens).

    Raises ``ValueError`` for a NaN, negative or absurdly small (below :data:`MIN_TEMPERATURE`) temperature,
    and for a row whose logits are all ``-inf`` or hold a NaN (which greedy decoding would return as a token).
    That check costs one device sync; :func:`generate` passes ``check=False`` when decoding greedily and checks
    all steps at once at the end instead.
    """
    _check_temperature(temperature)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        what = f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a float tensor (batch, vocab), got {what}; "
                         "from model output (batch, seq, vocab) take the last position: logits[:, -1]")
    if check:
        _check_logits(logits)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def _check_temperature(temperature) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number (0 = greedy, 1 = the model's distribution), "
                        f"got {temperature!r}")
    if math.isnan(temperature) or temperature < 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy, 1 = the model's distribution), "
                         f"got {temperature}")
    if 0 < temperature < MIN_TEMPERATURE:
        raise ValueError(f"temperature={temperature:g} is so small that sampling is greedy decoding in disguise "
                         f"(and logits / temperature overflow to inf); use temperature=0 for greedy, or a "
                         f"temperature >= {MIN_TEMPERATURE:g}")


def _bad_rows(logits: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` bool: the rows that hold a NaN or have no logit above ``-inf`` (no sync)."""
    return torch.isnan(logits).any(-1) | ~(logits > float("-inf")).any(-1)


def _check_logits(logits: torch.Tensor, bad: torch.Tensor | None = None, when: str = "") -> None:
    """One reduction and one sync: a row with a NaN, or with no finite logit, cannot be decoded."""
    bad = _bad_rows(logits) if bad is None else bad
    if bool(bad.any()):
        rows = bad.nonzero()[:, 0].tolist()
        what = "hold NaN" if bool(torch.isnan(logits[rows[0]]).any()) else "are all -inf"
        raise ValueError(
            f"the logits of row(s) {rows[:8]} {what}{when}, so there is no token to pick (greedy decoding would "
            "return an arbitrary index). Likely causes: a model that diverged in training (check the loss for "
            "NaN), a mask that blocks every position, or top-k/top-p/bad-word filters that removed every token.")


# ---------------------------------------------------------------------- the generation loop
def _check_prompt(model, idx: torch.Tensor, attention_mask, max_new_tokens: int, crop: bool):
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a LongTensor of token ids (batch, seq), got {shape}; "
                         "for one prompt use text_to_ids(text, tokenizer) or ids.unsqueeze(0)")
    if idx.shape[1] == 0:
        raise ValueError("the prompt is empty; give at least one token (e.g. <|endoftext|>, id 50256 for GPT-2)")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if attention_mask is not None and attention_mask.shape != idx.shape:
        raise ValueError(f"attention_mask must have the prompt's shape {tuple(idx.shape)}, got "
                         f"{tuple(attention_mask.shape)}; 1 for real tokens, 0 for (left) padding")
    vocab = model.cfg.vocab_size
    if idx.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(f"idx must hold integer token ids (torch.long), got {idx.dtype}; "
                        "build it with text_to_ids(text, tokenizer) or torch.tensor(ids, dtype=torch.long)")
    check_token_ids(idx, vocab, "the prompt")
    if attention_mask is None and idx.shape[0] > 1:
        _warn_if_padded(idx)
    ctx = model.cfg.context_length
    if idx.shape[1] > ctx:
        if not crop:
            raise ValueError(f"the prompt has {idx.shape[1]} tokens but the model's context length is {ctx}; "
                             f"shorten it, or pass crop=True to keep its last {ctx} tokens")
        idx = idx[:, -ctx:]
        attention_mask = attention_mask[:, -ctx:] if attention_mask is not None else None
    if idx.shape[1] + max_new_tokens > ctx and not crop:
        raise ValueError(f"prompt ({idx.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) is longer than the "
                         f"context length {ctx}; lower max_new_tokens, or pass crop=True to slide the window "
                         f"(the model then sees only the last {ctx} tokens)")
    return idx, attention_mask


def _check_eos(eos_id, vocab_size: int) -> None:
    if eos_id is None:
        return
    if isinstance(eos_id, bool) or not isinstance(eos_id, numbers.Integral):
        raise TypeError(f"eos_id must be an int token id (GPT-2's <|endoftext|> is 50256) or None, got {eos_id!r}; "
                        "for a string use tokenizer.encode(s, allowed_special='all')[0]")
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id={eos_id} is not a token id of this model (0 to {vocab_size - 1}), so generation "
                         "would never stop at it; use the tokenizer's end-of-text id (GPT-2: 50256) or None")


def _warn_if_padded(idx: torch.Tensor) -> None:
    """Warn when a batch without an attention mask looks padded: some rows (not all) start, or end, with a run
    of at least two equal ids. Without a mask the padding is read as text (and shifts the positions)."""
    if idx.shape[1] < 2:
        return
    for side, end, nxt in (("left", idx[:, 0], idx[:, 1]), ("right", idx[:, -1], idx[:, -2])):
        values, counts = end.unique(return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            if c == idx.shape[0]:
                continue  # every row has it: a shared first (or last) word, not padding
            rows = ((end == v) & (nxt == v)).nonzero()[:, 0].tolist()
            if rows:
                warnings.warn(
                    f"rows {rows[:8]} of the prompt batch {'start' if side == 'left' else 'end'} with a run of "
                    f"id {v} that other rows lack: this looks like {side} padding without an attention_mask, so "
                    "the padding is read as text. Pad on the left and pass attention_mask (1 = token, "
                    "0 = padding), or generate each prompt alone.", stacklevel=4)
                return


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, eos_id: int | None = None, use_cache: bool = True,
             attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
             crop: bool = False) -> torch.Tensor:
    """Continue each prompt by up to ``max_new_tokens`` tokens.

    Args:
        model: a :class:`~llmscratch.models.gpt.GPTModel` (put it in ``eval()`` mode for no dropout).
        idx: prompt ids ``(batch, seq)``. Prompts of different lengths: pad them on the *left* and pass
            ``attention_mask`` (1 = real token, 0 = padding); each row then continues as if alone.
        temperature: 0 = greedy (default); > 0 samples from ``softmax(logits / temperature)``.
        top_k, top_p: sample only from the ``top_k`` likeliest tokens / the nucleus of mass ``top_p``.
        eos_id: stop a row when it produces this id (GPT-2's ``<|endoftext|>`` is 50256); finished rows are
            padded with ``eos_id`` and the loop ends when every row has finished.
        use_cache: keep keys/values of past positions (KV cache) so each step costs one position instead of
            the whole sequence; the output is the same either way.
        generator: a ``torch.Generator`` for reproducible sampling.
        crop: a prompt longer than the context length is an error unless ``crop=True`` (keep its last
            tokens); likewise a total length past the context (then the window slides: the model sees the last
            ``context_length`` tokens, and the cache is rebuilt for each step past that point).

    Returns: ``(batch, seq + new)`` ids: the prompt (as given, after cropping) followed by the new tokens.
    """
    _check_temperature(temperature)
    _check_eos(eos_id, model.cfg.vocab_size)
    idx, attention_mask = _check_prompt(model, idx, attention_mask, max_new_tokens, crop)
    ctx = model.cfg.context_length
    b = idx.shape[0]
    finished = torch.zeros(b, dtype=torch.bool, device=idx.device)
    # Greedy steps are checked all at once at the end (no device sync per step); sampling checks each step,
    # because multinomial fails on NaN with a less helpful message.
    greedy = temperature == 0
    bad = torch.zeros(b, dtype=torch.bool, device=idx.device)
    out = idx
    mask = attention_mask
    cache = None
    if use_cache:
        cache = model.new_cache(b, max_len=min(ctx, idx.shape[1] + max_new_tokens))
        logits = model(idx, attention_mask=mask, cache=cache)[:, -1]  # prefill: the whole prompt at once
    for step in range(max_new_tokens):
        if not use_cache or cache is None:
            window = out[:, -ctx:]
            logits = model(window, attention_mask=mask[:, -ctx:] if mask is not None else None)[:, -1]
        if greedy:
            bad = bad | _bad_rows(logits)
        nxt = sample_next(logits, temperature, top_k, top_p, generator, check=not greedy)  # (B, 1)
        if eos_id is not None:
            nxt = nxt.masked_fill(finished[:, None], eos_id)
            finished = finished | (nxt[:, 0] == eos_id)
        out = torch.cat([out, nxt], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        if step == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
            break
        if cache is not None:
            if cache[0].length < cache[0].max_len:
                logits = model(nxt, attention_mask=mask, cache=cache)[:, -1]  # one new position
            else:
                cache = None  # past the context window: slide it, recomputing (as without a cache)
    if greedy and bool(bad.any()):
        _check_logits(logits, bad, when=" at some step")
    return out


@torch.no_grad()
def sequence_log_prob(model, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Sum of ``log p(token | previous tokens)`` over ``ids[:, prompt_len:]``, per row: ``(batch,)``."""
    if not 1 <= prompt_len <= ids.shape[1]:
        raise ValueError(f"prompt_len must be in [1, {ids.shape[1]}], got {prompt_len}")
    logp = F.log_softmax(model(ids).float(), dim=-1)  # (B, T, V)
    targets = ids[:, prompt_len:]  # token t is predicted at position t - 1
    return logp[:, prompt_len - 1 : -1].gather(-1, targets[..., None])[..., 0].sum(-1)


@torch.no_grad()
def beam_search(model, idx: torch.Tensor, max_new_tokens: int, num_beams: int, length_penalty: float = 1.0,
                eos_id: int | None = None, return_scores: bool = False):
    """Beam search: keep the ``num_beams`` partial continuations with the highest total log-probability.

    Greedy decoding commits to the single best token at each step; a beam search keeps ``num_beams``
    candidates, extends each by every token, and keeps the best ``num_beams`` of all extensions, so a token
    that looks worse now can win later (梁楠 2.2.2). ``num_beams=1`` is greedy decoding.

    Args:
        idx: prompt ids ``(batch, seq)`` (same length per row; no padding).
        num_beams: beams per prompt.
        length_penalty: the final ranking divides a finished beam's log-probability by
            ``(generated length) ** length_penalty`` (> 0 favours longer sequences); it matters only when beams
            end at different lengths, i.e. with ``eos_id``.
        eos_id: a beam that produces it is finished: it keeps its score and only appends ``eos_id``.
        return_scores: also return each best beam's log-probability (summed over the new tokens).

    Returns: ids ``(batch, seq + new)`` of the best beam per prompt (and scores ``(batch,)`` if asked).
    """
    _check_eos(eos_id, model.cfg.vocab_size)
    idx, _ = _check_prompt(model, idx, None, max_new_tokens, crop=False)
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be a positive int, got {num_beams!r}")
    b, t0 = idx.shape
    k = num_beams
    dev = idx.device
    # Every prompt is repeated k times: row r*k + j is beam j of prompt r.
    seqs = idx.repeat_interleave(k, dim=0)  # (B*k, T)
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # start from one beam, or the first step would pick the same token k times
    scores = scores.view(-1)  # (B*k,)
    done = torch.zeros(b * k, dtype=torch.bool, device=dev)
    lengths = torch.zeros(b * k, dtype=torch.long, device=dev)  # generated tokens up to and with eos
    cache = model.new_cache(b * k, max_len=t0 + max_new_tokens)
    logits = model(seqs, cache=cache)[:, -1]
    for step in range(max_new_tokens):
        logp = F.log_softmax(logits.float(), dim=-1)  # (B*k, V)
        vocab = logp.shape[-1]
        if eos_id is not None and done.any():
            # A finished beam can only continue with eos, at no cost: its score stays fixed.
            frozen = torch.full_like(logp[0], float("-inf"))
            frozen[eos_id] = 0.0
            logp = torch.where(done[:, None], frozen, logp)
        cand = (scores[:, None] + logp).view(b, k * vocab)  # every extension of every beam
        top_scores, top_idx = cand.topk(k, dim=-1)  # (B, k)
        beam = top_idx // vocab  # which beam each winner extends
        token = top_idx % vocab
        rows = (beam + torch.arange(b, device=dev)[:, None] * k).view(-1)  # (B*k,) rows into the flat layout
        seqs = torch.cat([seqs[rows], token.view(-1, 1)], dim=1)
        scores = top_scores.view(-1)
        was_done = done[rows]
        lengths = lengths[rows] + (~was_done).long()
        done = was_done | (token.view(-1) == eos_id if eos_id is not None else torch.zeros_like(was_done))
        for c in cache:
            c.reorder(rows)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        logits = model(seqs[:, -1:], cache=cache)[:, -1]
    final = scores / lengths.clamp(min=1).float() ** length_penalty if eos_id is not None else scores
    best = final.view(b, k).argmax(-1) + torch.arange(b, device=dev) * k  # (B,)
    out = seqs[best]
    return (out, scores[best]) if return_scores else out


# ---------------------------------------------------------------------- text <-> ids
def text_to_ids(text: str, tokenizer, device=None) -> torch.Tensor:
    """Encode one text to a ``(1, seq)`` LongTensor (``<|endoftext|>`` allowed as the special token)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    try:
        ids = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    except TypeError:  # a tokenizer without tiktoken's allowed_special argument
        ids = tokenizer.encode(text)
    return torch.tensor(ids, dtype=torch.long, device=device).unsqueeze(0)


def ids_to_text(ids, tokenizer) -> str:
    """Decode ``(1, seq)`` or ``(seq,)`` ids (tensor or list) back to text."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 2:
            if ids.shape[0] != 1:
                raise ValueError(f"ids_to_text decodes one sequence; got a batch of {ids.shape[0]}: "
                                 "decode rows one by one ([ids_to_text(row, tok) for row in ids])")
            ids = ids[0]
        ids = ids.tolist()
    return tokenizer.decode(list(ids))
