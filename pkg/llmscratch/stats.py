"""Small statistics for experiments repeated over a few seeds.

:func:`paired_interval` is the confidence interval of a *paired* difference: the same seed (the same training
sample, the same initialisation) run with and without a change, so the run-to-run noise the two share cancels
in the difference. With few seeds the interval uses Student's t with ``n - 1`` degrees of freedom, which makes it
wide; that is the honest answer when few runs were made.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["PairedInterval", "paired_interval"]


class PairedInterval(NamedTuple):
    """Mean paired difference and the bounds of its confidence interval (same units as the inputs)."""

    mean: float
    lo: float
    hi: float
    n: int

    def verdict(self) -> str:
        """In words: whether the interval lies above zero, below zero, or includes it."""
        if self.lo > 0:
            return "above zero: a measured gain"
        if self.hi < 0:
            return "below zero: a measured loss"
        return "includes zero: no gain shown"


def paired_interval(treated: Sequence[float], control: Sequence[float],
                    confidence: float = 0.95) -> PairedInterval:
    """Student-t confidence interval of ``mean(treated - control)``, pairs matched by position.

    Args:
        treated, control: ``(n,)`` scores of the same ``n`` seeds (``n >= 2``), pair ``i`` from seed ``i``.
        confidence: the interval's coverage, in (0, 1).

    Returns: :class:`PairedInterval` ``(mean, lo, hi, n)``: ``mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n)``
    with ``s`` the sample standard deviation (``ddof=1``) of the differences.
    """
    a = np.asarray(treated, dtype=float)
    b = np.asarray(control, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"treated and control must be two 1-d sequences of equal length (one score per seed), "
                         f"got shapes {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"an interval needs at least 2 paired runs (seeds), got {len(a)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("treated and control must be finite numbers (a NaN is often a run that failed)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")
    try:
        from scipy import stats
    except ImportError as err:  # pragma: no cover - scipy comes with the [data] and [test] extras
        raise ImportError("paired_interval needs scipy for Student's t: pip install 'llmscratch[data]'") from err
    d = a - b
    n = len(d)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    mean = float(d.mean())
    return PairedInterval(mean, mean - half, mean + half, n)
