"""Kept so that ``from llmscratch.dedup import ...`` (chapter 4) still works: the code lives in
:mod:`llmscratch.data.dedup`, with chapter 7's exact and near-duplicate (MinHash + LSH) detection."""

from .data.dedup import drop_overlapping, normalize_text, overlap_mask  # noqa: F401

__all__ = ["normalize_text", "overlap_mask", "drop_overlapping"]
