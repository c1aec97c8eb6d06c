"""Loaders that return ready objects (DataFrames, tensors, strings), and chapter 1's sliding-window sampling.

Every loader finds its file through :func:`llmscratch.data.registry.fetch` (verified, downloaded if needed).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .registry import fetch, read_idx

__all__ = ["load_the_verdict", "load_imdb", "load_mnist", "load_sms_spam"]

# --------------------------------------------------------------------------------------------------------------
# Loaders: ready objects
# --------------------------------------------------------------------------------------------------------------


def load_the_verdict(path: str | Path | None = None) -> str:
    """The short story *The Verdict* as one string (20,479 characters)."""
    return fetch("text/the-verdict.txt", path).read_text(encoding="utf-8")


def load_imdb(split: str = "train", path: str | Path | None = None, limit: int | None = None):
    """IMDB reviews as a pandas DataFrame with columns ``text`` (str) and ``label`` (1 pos, 0 neg, -1 unlabeled).

    ``split`` is ``"train"`` or ``"test"`` (25,000 rows each, balanced) or ``"unsup"`` (50,000 unlabeled rows).
    ``limit`` keeps the first rows only (the rows are shuffled, so the first rows mix both classes).
    """
    import pandas as pd

    if split not in ("train", "test", "unsup"):
        raise ValueError(f"IMDB split must be 'train', 'test' or 'unsup', got {split!r}")
    _check_limit(limit)
    file = fetch(f"imdb/imdb_{split}.csv.gz", path)
    return pd.read_csv(file, nrows=limit, dtype={"text": str, "label": "int64"}, keep_default_na=False)


def _check_limit(limit) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
        raise TypeError(f"limit must be a positive int (a number of rows) or None for all rows, got {limit!r} "
                        f"({type(limit).__name__}); e.g. limit=1000")
    if limit < 1:
        raise ValueError(f"limit must be a positive number of rows (or None for all rows), got {limit}")



def load_mnist(split: str = "train", path: str | Path | None = None):
    """MNIST digits as ``(images, labels)`` uint8 tensors: ``(N, 28, 28)`` and ``(N,)``; N = 60,000 or 10,000.

    Read from the original IDX files (no torchvision needed). Scale with ``images.float() / 255``.
    """
    import torch

    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}")
    images = read_idx(fetch(f"mnist/{prefix}-images-idx3-ubyte.gz", path))
    labels = read_idx(fetch(f"mnist/{prefix}-labels-idx1-ubyte.gz", path))
    if len(images) != len(labels):
        raise ValueError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def load_sms_spam(path: str | Path | None = None):
    """The SMS Spam Collection as a DataFrame with columns ``label`` ("ham"/"spam") and ``text``: 5,574 rows.

    Read with ``quoting=csv.QUOTE_NONE`` so that messages with quote characters stay separate rows (the
    default quoting merges a few lines and yields 5,572 rows, the count printed in Raschka's chapter 6).
    """
    import pandas as pd

    file = fetch("sms_spam/SMSSpamCollection.tsv", path)
    return pd.read_csv(
        file, sep="\t", header=None, names=["label", "text"], quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False
    )


# --------------------------------------------------------------------------------------------------------------
# Chapter 1: sliding-window sampling for next-token prediction
# --------------------------------------------------------------------------------------------------------------

__all__ += ["sliding_windows", "GPTDataset", "create_dataloader"]


def sliding_windows(ids, max_length: int, stride: int):
    """Input/target windows over a 1-D sequence of token ids, for next-token prediction.

    Window ``k`` starts at ``k * stride``: ``inputs[k] = ids[s : s + max_length]`` and
    ``targets[k] = ids[s + 1 : s + max_length + 1]`` (the same window shifted by one token). Windows overlap
    when ``stride < max_length`` and skip tokens when ``stride > max_length``. Returns two ``(n_windows,
    max_length)`` int64 tensors; ``n_windows = (len(ids) - max_length - 1) // stride + 1``.
    """
    import torch

    if isinstance(ids, torch.Tensor) and (ids.is_floating_point() or ids.is_complex()) or \
            isinstance(ids, np.ndarray) and ids.dtype.kind not in "iub":
        raise TypeError(f"token ids must be integers, got a {ids.dtype} array (as_tensor would truncate them "
                        "silently); convert with ids.long(), or pass the text and a tokenizer")
    if isinstance(ids, (list, tuple)) and any(isinstance(i, float) for i in ids[:1000]):
        bad = next(i for i in ids if isinstance(i, float))
        raise TypeError(f"token ids must be integers, got {bad!r} (float; as_tensor would truncate it silently); "
                        "convert them with int(), or pass the text and a tokenizer")
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D sequence of token ids, got shape {tuple(ids.shape)}")
    for name, value in (("max_length", max_length), ("stride", stride)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if len(ids) < max_length + 1:
        raise ValueError(
            f"the text has {len(ids)} tokens, fewer than one window needs (max_length + 1 = {max_length + 1}): "
            "use a longer text or a smaller max_length"
        )
    # unfold = the window loop without the loop: a view whose rows start 0, stride, 2*stride, ...
    windows = ids.unfold(0, max_length + 1, stride)  # (n_windows, max_length + 1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def _check_text_or_ids(text_or_ids) -> None:
    """Raise a TypeError naming the fix for what GPTDataset cannot take: bytes, None, a list of texts, floats."""
    if isinstance(text_or_ids, str):
        if not text_or_ids:
            raise ValueError("the text is empty: there is nothing to make windows from; check how it was read "
                             "(e.g. load_the_verdict())")
        return
    if text_or_ids is None:
        raise TypeError("text_or_ids is None: pass the text (a str, e.g. load_the_verdict()) or its token ids")
    if isinstance(text_or_ids, (bytes, bytearray)):
        raise TypeError("text_or_ids is bytes: decode it first (data.decode('utf-8')) and pass the str")
    if isinstance(text_or_ids, dict):
        raise TypeError("text_or_ids is a dict: pass one text (a str) or one sequence of token ids")
    import torch

    if hasattr(text_or_ids, "__len__") and not isinstance(text_or_ids, torch.Tensor):
        # a list or tuple, a pandas Series, a numpy array (iterating them does not consume them)
        first = next(iter(text_or_ids), None)
        if isinstance(first, str):
            raise TypeError(
                "text_or_ids is a sequence of texts; GPTDataset takes one text: join the documents with the "
                "end-of-text token, e.g. '<|endoftext|>'.join(texts), so the model sees where each one ends")


def _encode_for_dataset(text: str, tokenizer):
    if tokenizer is None:
        from ..tokenizers import gpt2_tokenizer

        tokenizer = gpt2_tokenizer()
    try:  # tiktoken and BPETokenizer: "<|endoftext|>" in a corpus marks a document boundary, so keep it as its id
        return tokenizer.encode(text, allowed_special="all")
    except TypeError:  # tokenizers without special-token options (WordTokenizer)
        return tokenizer.encode(text)


from torch.utils.data import Dataset as _TorchDataset  # noqa: E402  (torch is imported by the package anyway)


class GPTDataset(_TorchDataset):
    """Sliding-window input/target pairs over one text (or a list of token ids), as a PyTorch ``Dataset``.

    ``GPTDataset(text, tokenizer, max_length=256, stride=128)``; ``tokenizer`` defaults to GPT-2's (tiktoken)
    and needs an ``encode`` method. ``dataset[k]`` is ``(inputs, targets)``, two ``(max_length,)`` tensors.
    """

    def __init__(self, text_or_ids, tokenizer=None, max_length: int = 256, stride: int = 128):
        _check_text_or_ids(text_or_ids)
        if isinstance(text_or_ids, str):
            ids = _encode_for_dataset(text_or_ids, tokenizer)
        else:
            ids = text_or_ids
        self.input_ids, self.target_ids = sliding_windows(ids, max_length, stride)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]


def create_dataloader(
    text_or_ids,
    tokenizer=None,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    generator=None,
):
    """A ``DataLoader`` over :class:`GPTDataset`: batches of ``(inputs, targets)``, each ``(batch_size, max_length)``.

    ``drop_last=True`` drops a last short batch (a much smaller batch gives a noisy loss spike in training).
    """
    from torch.utils.data import DataLoader

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dataset = GPTDataset(text_or_ids, tokenizer, max_length=max_length, stride=stride)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"only {len(dataset)} windows for batch_size={batch_size} with drop_last=True, so no batch at all: "
            "use a smaller batch_size or stride, or drop_last=False"
        )
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, generator=generator)
