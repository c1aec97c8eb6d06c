"""Masked-language-model inputs (BERT, Devlin et al., 2019): choose tokens to predict, corrupt them, make labels.

:func:`mask_tokens` picks each ordinary token (never ``[CLS]``, ``[SEP]``, ``[PAD]``, ...) with probability
``mlm_probability`` (15%); of the picked tokens 80% become ``[MASK]``, 10% a random token and 10% stay as they
are. Labels hold the original id at the picked positions and -100 (ignored by the loss) everywhere else.

Why not always ``[MASK]``: ``[MASK]`` never occurs in fine-tuning text, so a model that only ever predicted at
``[MASK]`` positions would have no reason to build good representations of ordinary tokens. The random 10%
forces it to doubt every token; the unchanged 10% teaches it that the observed token is often right.

Random replacements are drawn from the *ordinary* vocabulary only. ``transformers``'
``DataCollatorForLanguageModeling`` draws from the whole vocabulary, special tokens included, so it sometimes
puts a ``[PAD]`` or a second ``[CLS]``/``[SEP]`` into a sentence: an input that never occurs in real text and
that breaks the segment structure the model relies on. With BERT's 30,522 ids and 5 special tokens this is
rare (0.016% of the random replacements), with a small course vocabulary less so; either way it teaches nothing.

Whole-word masking (``whole_word=True``, Google's 2019 update of BERT): a word split into several WordPiece
tokens ("un ##aff ##able") is picked or left as a whole, so the model cannot recover "##able" from its visible
neighbours "un ##aff" by spelling alone.

:class:`MLMCollator` applies it per batch (dynamic masking as in RoBERTa: a new mask every time a sequence is
seen) and yields ``(input_ids, labels)`` pairs for :class:`llmscratch.train.Trainer`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

__all__ = ["mask_tokens", "MLMCollator", "IGNORE_INDEX"]

IGNORE_INDEX = -100


def mask_tokens(input_ids: torch.Tensor, *, mask_token_id: int, vocab_size: int, special_ids: Iterable[int],
                mlm_probability: float = 0.15, mask_ratio: float = 0.8, random_ratio: float = 0.1,
                continuation: torch.Tensor | None = None, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a batch.

    Args:
        input_ids: ``(batch, seq)`` token ids (not modified).
        mask_token_id, vocab_size: the ``[MASK]`` id and the number of ids.
        special_ids: ids never picked and never used as random replacements (``[CLS]``, ``[SEP]``, ``[PAD]``,
            ``[MASK]``, ``[UNK]``, ...).
        mlm_probability: chance that an ordinary token is picked.
        mask_ratio, random_ratio: of the picked tokens, the share replaced by ``[MASK]`` and by a random ordinary
            token; the rest (``1 - mask_ratio - random_ratio``) is left unchanged.
        continuation: for whole-word masking, a ``(vocab_size,)`` bool tensor, True for ids that continue a word
            (WordPiece's ``##`` tokens); a word is then picked with ``mlm_probability`` as a whole.
        generator: a ``torch.Generator`` for reproducible masks.

    Returns: ``(masked_ids, labels)``, both ``(batch, seq)`` long tensors; ``labels`` is the original id where a
    token was picked and -100 elsewhere.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a (batch, seq) tensor of token ids")
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    if mask_ratio < 0 or random_ratio < 0 or mask_ratio + random_ratio > 1:
        raise ValueError(f"mask_ratio ({mask_ratio}) and random_ratio ({random_ratio}) must be >= 0 and sum to at "
                         "most 1 (BERT: 0.8 and 0.1)")
    device = input_ids.device
    special = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    special[torch.as_tensor(list(special_ids), dtype=torch.long, device=device)] = True
    if bool(special.all()):
        raise ValueError("every id is special: there is no ordinary token to mask or to draw at random")
    ids = input_ids.long()
    if bool(((ids < 0) | (ids >= vocab_size)).any()):
        raise ValueError(f"input_ids has ids outside [0, {vocab_size}); is vocab_size the tokenizer's?")
    candidate = ~special[ids]  # (B, T)

    def rand(shape):
        return torch.rand(shape, generator=generator, device=device)

    draw = rand(ids.shape)
    if continuation is not None:
        if continuation.shape != (vocab_size,):
            raise ValueError(f"continuation must be a ({vocab_size},) bool tensor, one entry per id")
        # Every token uses the draw of the first token of its word: the last position <= it that starts a word.
        starts = candidate & ~continuation.to(device)[ids]
        positions = torch.arange(ids.shape[1], device=device).expand_as(ids)
        word_start = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
        draw = draw.gather(1, word_start)
    picked = candidate & (draw < mlm_probability)
    labels = torch.where(picked, ids, torch.full_like(ids, IGNORE_INDEX))

    how = rand(ids.shape)  # one more uniform per token decides [MASK] / random / unchanged
    to_mask = picked & (how < mask_ratio)
    to_random = picked & (how >= mask_ratio) & (how < mask_ratio + random_ratio)
    ordinary = (~special).nonzero().squeeze(1)  # the ids a random replacement may take
    random_ids = ordinary[torch.randint(len(ordinary), ids.shape, generator=generator, device=device)]
    masked = torch.where(to_mask, torch.full_like(ids, mask_token_id), ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


class MLMCollator:
    """A ``collate_fn``: a list of token-id sequences -> ``(masked_ids, labels)``, masked afresh every call.

    Sequences of unequal length are right-padded with ``[PAD]`` (which is never masked; pass an attention mask
    built from ``input_ids != pad_id`` to the model in that case). For pretraining, fixed-length blocks of
    concatenated text (no padding at all) are simplest.

    Args:
        tokenizer: a :class:`llmscratch.tokenizers.WordPieceTokenizer` (its special ids, ``[MASK]``, vocabulary).
        whole_word: whole-word masking (continuations are the vocabulary's ``##`` tokens).
        seed: seeds the collator's own generator, so a run is reproducible; other arguments: :func:`mask_tokens`.
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, whole_word: bool = False,
                 mask_ratio: float = 0.8, random_ratio: float = 0.1, seed: int | None = None):
        self.tokenizer = tokenizer
        self.kwargs = dict(mask_token_id=tokenizer.mask_id, vocab_size=len(tokenizer),
                           special_ids=sorted(tokenizer.special_ids), mlm_probability=mlm_probability,
                           mask_ratio=mask_ratio, random_ratio=random_ratio)
        self.continuation = (torch.tensor([t.startswith("##") for t in tokenizer.tokens]) if whole_word else None)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, sequences: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [torch.as_tensor(s, dtype=torch.long) for s in sequences]
        if not rows:
            raise ValueError("MLMCollator got an empty batch")
        batch = torch.full((len(rows), max(len(r) for r in rows)), self.tokenizer.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            batch[i, : len(r)] = r
        return mask_tokens(batch, continuation=self.continuation, generator=self.generator, **self.kwargs)
