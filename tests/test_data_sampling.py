"""Sliding-window sampling for next-token prediction: windows checked against the loop written by hand."""

from __future__ import annotations

import pytest
import torch

from llmscratch.data import GPTDataset, create_dataloader, sliding_windows


def _by_hand(ids, max_length, stride):
    inputs, targets = [], []
    for i in range(0, len(ids) - max_length, stride):  # Raschka's loop
        inputs.append(ids[i : i + max_length])
        targets.append(ids[i + 1 : i + max_length + 1])
    return torch.tensor(inputs), torch.tensor(targets)


@pytest.mark.parametrize("n,max_length,stride", [(50, 4, 1), (50, 4, 4), (50, 8, 3), (50, 4, 9), (9, 8, 1), (100, 7, 7)])
def test_sliding_windows_equal_the_loop(n, max_length, stride):
    ids = list(range(1000, 1000 + n))
    x, y = sliding_windows(ids, max_length, stride)
    rx, ry = _by_hand(ids, max_length, stride)
    torch.testing.assert_close(x, rx)
    torch.testing.assert_close(y, ry)
    torch.testing.assert_close(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one


def test_too_short_text_names_the_fix():
    with pytest.raises(ValueError, match="smaller max_length"):
        sliding_windows(list(range(8)), 8, 1)
    with pytest.raises(ValueError, match="smaller max_length"):
        GPTDataset("Hello world", max_length=256, stride=128)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        sliding_windows(list(range(20)), 4, 0)
    with pytest.raises(ValueError, match="1-D"):
        sliding_windows([[1, 2], [3, 4]], 1, 1)


def test_dataset_on_the_verdict_matches_tiktoken_ids():
    from llmscratch.data import load_the_verdict
    from llmscratch.tokenizers import gpt2_tokenizer

    text = load_the_verdict()
    tok = gpt2_tokenizer()
    ids = tok.encode(text)
    ds = GPTDataset(text, tok, max_length=4, stride=4)
    assert len(ds) == (len(ids) - 5) // 4 + 1
    x, y = ds[1]
    assert x.tolist() == ids[4:8] and y.tolist() == ids[5:9]


def test_dataset_keeps_endoftext_and_accepts_other_tokenizers():
    from llmscratch.tokenizers import BPETokenizer, WordTokenizer

    text = "a b c d e f <|endoftext|> g h i j k l m"
    ds = GPTDataset(text, None, max_length=4, stride=1)
    assert 50256 in ds.input_ids
    word = WordTokenizer.from_text(text)
    ds = GPTDataset(text, word, max_length=4, stride=2)
    assert ds.input_ids.max() < word.vocab_size
    bpe = BPETokenizer.train(text * 3, 270)
    ds = GPTDataset(text, bpe, max_length=4, stride=2)
    assert bpe.special_tokens["<|endoftext|>"] in ds.input_ids


def test_dataloader_batches():
    ids = list(range(101))
    dl = create_dataloader(ids, batch_size=8, max_length=10, stride=10, shuffle=False)
    batches = list(dl)
    assert len(batches) == 1 and batches[0][0].shape == (8, 10)  # 10 windows, drop_last keeps one batch of 8
    g = torch.Generator().manual_seed(0)
    x, y = next(iter(create_dataloader(ids, batch_size=4, max_length=10, stride=5, generator=g)))
    torch.testing.assert_close(x + 1, y)  # ids are consecutive, so every target is input + 1
    with pytest.raises(ValueError, match="smaller batch_size"):
        create_dataloader(ids, batch_size=64, max_length=10, stride=10)
