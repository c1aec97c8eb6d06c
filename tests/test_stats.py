"""llmscratch.stats.paired_interval against scipy's paired t-test and a t quantile from a table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmscratch.stats import PairedInterval, paired_interval

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("n,confidence", [(2, 0.95), (3, 0.95), (5, 0.9), (12, 0.99)])
def test_equals_scipy_paired_t_test(n, confidence):
    rng = np.random.default_rng(n)
    a, b = rng.normal(0.7, 0.02, n), rng.normal(0.68, 0.02, n)
    got = paired_interval(a, b, confidence)
    ref = stats.ttest_rel(a, b).confidence_interval(confidence)
    assert got.n == n
    assert got.mean == pytest.approx(float(np.mean(a - b)), abs=1e-12)
    assert got.lo == pytest.approx(ref.low, abs=1e-12)
    assert got.hi == pytest.approx(ref.high, abs=1e-12)


def test_three_seeds_by_hand():
    # t_{0.975, 2} = 4.302652729911275 (a t table); differences 1, 2, 3: mean 2, s = 1
    got = paired_interval([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert got == pytest.approx((2.0, 2.0 - half, 2.0 + half, 3))
    assert got.verdict() == "includes zero: no gain shown"


def test_verdicts():
    assert PairedInterval(1.0, 0.5, 1.5, 3).verdict().startswith("above zero")
    assert PairedInterval(-1.0, -1.5, -0.5, 3).verdict().startswith("below zero")
    assert PairedInterval(0.0, -1.0, 1.0, 3).verdict().startswith("includes zero")


def test_identical_runs_give_a_zero_width_interval():
    got = paired_interval([0.7, 0.8, 0.9], [0.6, 0.7, 0.8])
    assert got.mean == pytest.approx(0.1) and got.lo == pytest.approx(0.1) and got.hi == pytest.approx(0.1)


@pytest.mark.parametrize("a,b,conf,match", [
    ([1.0, 2.0], [1.0], 0.95, "equal length"),
    ([1.0], [0.0], 0.95, "at least 2"),
    ([1.0, float("nan")], [0.0, 0.0], 0.95, "finite"),
    ([1.0, 2.0], [0.0, 0.0], 95, "confidence"),
    ([[1.0, 2.0]], [[0.0, 0.0]], 0.95, "1-d"),
])
def test_bad_input_names_the_fix(a, b, conf, match):
    with pytest.raises(ValueError, match=match):
        paired_interval(a, b, conf)
