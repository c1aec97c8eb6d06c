"""Removing texts of one corpus that appear in another (exact match after whitespace/case normalisation); chapter 7 will extend it."""

from __future__ import annotations

from typing import Iterable

__all__ = ["normalize_text", "overlap_mask", "drop_overlapping"]


def normalize_text(text: str) -> str:
    """Lowercase and collapse every run of whitespace to one space: the key two texts are compared by."""
    if not isinstance(text, str):
        raise TypeError(f"texts must be strings, got {type(text).__name__}")
    return " ".join(text.lower().split())


def overlap_mask(texts: Iterable[str], reference: Iterable[str]) -> list[bool]:
    """For each of ``texts``, whether its normalised form is the normalised form of some ``reference`` text.

    Used for data hygiene: a pretraining or fine-tuning corpus must not contain the evaluation set's texts, or the
    test accuracy measures memory instead of generalisation.
    """
    keys = {normalize_text(r) for r in reference}
    return [normalize_text(t) in keys for t in texts]


def drop_overlapping(texts: Iterable[str], reference: Iterable[str]) -> tuple[list[int], int]:
    """Indices of ``texts`` to keep (those not found in ``reference``) and how many were dropped.

    Returning indices (not texts) lets a caller keep the labels that go with the texts:
    ``keep, dropped = drop_overlapping(df.text, test.text); df = df.iloc[keep]``.
    """
    mask = overlap_mask(texts, reference)
    keep = [i for i, hit in enumerate(mask) if not hit]
    return keep, len(mask) - len(keep)
