"""MLM masking: exact invariants, the 15% / 80-10-10 statistics on a million tokens (with transformers'
DataCollatorForLanguageModeling measured the same way), whole-word masking; and the dedup helper."""

from __future__ import annotations

import pytest
import torch

from llmscratch.dedup import drop_overlapping, normalize_text, overlap_mask
from llmscratch.mlm import MLMCollator, mask_tokens
from llmscratch.tokenizers import BERT_SPECIAL_TOKENS, WordPieceTokenizer

V = 1000
SPECIAL = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK]
MASK = 4


def corpus(rows=1000, cols=1024, seed=0):
    """About a million ids: [CLS] ... [SEP] ... [SEP] rows, right padding, and some [UNK]s."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (rows, cols), generator=g)
    ids[:, 0] = 2
    ids[:, cols // 2] = 3
    lengths = torch.randint(cols // 2 + 2, cols + 1, (rows,), generator=g)
    for r, n in enumerate(lengths.tolist()):
        ids[r, n - 1] = 3
        ids[r, n:] = 0
    ids[torch.rand(ids.shape, generator=g) < 0.01] = 1
    return ids


def statistics(ids, masked, labels):
    special = torch.isin(ids, torch.tensor(SPECIAL))
    picked = labels != -100
    n = int(picked.sum())
    return {
        "picked": n / int((~special).sum()),
        "mask": int((picked & (masked == MASK)).sum()) / n,
        "random": int((picked & (masked != MASK) & (masked != ids)).sum()) / n,
        "same": int((picked & (masked == ids)).sum()) / n,
        "random_special": int((picked & (masked != ids) & (masked != MASK)
                               & torch.isin(masked, torch.tensor(SPECIAL))).sum()),
    }


@pytest.fixture(scope="module")
def masked_corpus():
    ids = corpus()
    masked, labels = mask_tokens(ids, mask_token_id=MASK, vocab_size=V, special_ids=SPECIAL,
                                 generator=torch.Generator().manual_seed(1))
    return ids, masked, labels


def test_invariants_exact(masked_corpus):
    ids, masked, labels = masked_corpus
    special = torch.isin(ids, torch.tensor(SPECIAL))
    picked = labels != -100
    assert not (picked & special).any()  # specials and padding are never picked ...
    assert torch.equal(masked[special], ids[special])  # ... nor changed
    assert torch.equal(masked[~picked], ids[~picked])  # only picked tokens change
    assert torch.equal(labels[picked], ids[picked])  # labels are the original ids
    assert not torch.isin(masked[picked & (masked != MASK)], torch.tensor(SPECIAL)).any()  # random = ordinary
    assert masked.dtype == labels.dtype == torch.long and masked.shape == ids.shape


def test_statistics_on_a_million_tokens(masked_corpus):
    ids, masked, labels = masked_corpus
    assert ids.numel() >= 1_000_000
    s = statistics(ids, masked, labels)
    # one standard deviation: 0.04 points for the selection, about 0.1 for the split; the bounds are ~5 sigma
    assert abs(s["picked"] - 0.15) <= 0.002, s
    assert abs(s["mask"] - 0.80) <= 0.005, s
    # a random draw can hit the original id (1 in 995): "random" then counts as "same"
    assert abs(s["random"] - 0.10 * (1 - 1 / (V - 5))) <= 0.005, s
    assert abs(s["same"] - (0.10 + 0.10 / (V - 5))) <= 0.005, s
    assert s["random_special"] == 0


def test_transformers_collator_measured_the_same_way(tmp_path):
    """transformers' collator has the same 15% / 80-10-10 statistics but draws random tokens from the whole
    vocabulary, special tokens included; ours never does (see llmscratch.mlm's docstring)."""
    transformers = pytest.importorskip("transformers")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(list(BERT_SPECIAL_TOKENS) + [f"w{i}" for i in range(V - 5)]) + "\n")
    hf_tok = transformers.BertTokenizer(str(vocab))
    assert [hf_tok.convert_tokens_to_ids(t) for t in BERT_SPECIAL_TOKENS] == SPECIAL
    collator = transformers.DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, seed=2)
    ids = corpus(seed=3)
    out = collator([{"input_ids": row.tolist()} for row in ids])
    # the collator keeps the row padding; padding positions count as special tokens
    s = statistics(ids, out["input_ids"], out["labels"])
    assert abs(s["picked"] - 0.15) <= 0.002, s
    assert abs(s["mask"] - 0.80) <= 0.005, s
    assert abs(s["same"] - 0.10) <= 0.005, s
    # its random draws include the 5 special ids: expected 5/1000 of ~15,000 random replacements = ~75
    assert s["random_special"] > 20, s


def test_whole_word_masking_picks_whole_words():
    tokens = list(BERT_SPECIAL_TOKENS) + ["un", "##aff", "##able", "movie", "good", "##ish", "a"]
    tok = WordPieceTokenizer(tokens=tokens)
    ids = torch.tensor([tok.encode_pair("unaffable movie a goodish unaffable a goodish movie")[0]] * 4000)
    cont = torch.tensor([t.startswith("##") for t in tokens])
    masked, labels = mask_tokens(ids, mask_token_id=tok.mask_id, vocab_size=len(tok), special_ids=tok.special_ids,
                                 continuation=cont, generator=torch.Generator().manual_seed(4))
    picked = labels != -100
    words = [[1, 2, 3], [4], [5], [6, 7], [8, 9, 10], [11], [12, 13], [14]]  # positions of each word
    for word in words:
        cols = picked[:, word]
        assert torch.all(cols.all(1) | ~cols.any(1)), f"word at {word} partly picked"
    word_rate = sum(picked[:, w[0]].float().mean().item() for w in words) / len(words)
    assert abs(word_rate - 0.15) < 0.02
    assert not picked[:, [0, 15]].any()  # [CLS] and [SEP]


def test_collator_pads_and_masks_reproducibly():
    tokens = list(BERT_SPECIAL_TOKENS) + [f"w{i}" for i in range(50)]
    tok = WordPieceTokenizer(tokens=tokens)
    seqs = [list(range(5, 55)), list(range(5, 25))]
    a = MLMCollator(tok, seed=7)(seqs)
    b = MLMCollator(tok, seed=7)(seqs)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (2, 50)
    assert torch.all(a[0][1, 20:] == tok.pad_id) and torch.all(a[1][1, 20:] == -100)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(torch.zeros(1, 3, dtype=torch.long), mask_token_id=4, vocab_size=V, special_ids=SPECIAL,
                    mlm_probability=1.5)
    with pytest.raises(ValueError, match="outside"):
        mask_tokens(torch.full((1, 3), V), mask_token_id=4, vocab_size=V, special_ids=SPECIAL)


def test_dedup_exact_after_normalisation():
    test = ["A great  film.", "Terrible\nmovie"]
    texts = ["a great film.", "A great film!", "terrible movie", "TERRIBLE   MOVIE", "new review"]
    assert normalize_text(" Hello \t World ") == "hello world"
    assert overlap_mask(texts, test) == [True, False, True, True, False]
    assert drop_overlapping(texts, test) == ([1, 4], 3)
    with pytest.raises(TypeError):
        overlap_mask([None], test)
