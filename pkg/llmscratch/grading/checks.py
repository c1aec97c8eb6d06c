"""Helpers for graded check cells: each raises ``AssertionError`` with a message that tells the student what is wrong.

A check cell compares the student's result with a reference it computes itself (PyTorch's own op, the package's
version, a formula), and says what was expected and what came back::

    from llmscratch.grading.checks import expect_tensor, expect_close
    got = split_heads(x, n_heads=4)
    expect_tensor(got, "split_heads(x, 4)", shape=(2, 4, 5, 3))
    expect_close(got, reference, "split_heads(x, 4)")
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["expect_type", "expect_tensor", "expect_close", "expect_equal", "expect_raises"]


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype}, device {value.device}"
    text = repr(value)
    return f"{type(value).__name__} {text[:120] + '...' if len(text) > 120 else text}"


def expect_type(value: Any, kind: type | tuple[type, ...], what: str) -> None:
    """Fail unless ``value`` is an instance of ``kind``."""
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        hint = " (did you forget a `return`?)" if value is None else ""
        raise AssertionError(f"{what} should be a {names}, but it returned {_describe(value)}{hint}")


def expect_tensor(
    value: Any,
    what: str,
    shape: tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> None:
    """Fail unless ``value`` is a tensor with the given shape, dtype and device type."""
    expect_type(value, torch.Tensor, what)
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise AssertionError(f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    if dtype is not None and value.dtype != dtype:
        raise AssertionError(f"{what} has dtype {value.dtype}, expected {dtype}")
    if device is not None and value.device.type != torch.device(device).type:
        raise AssertionError(f"{what} is on device {value.device}, expected {torch.device(device).type}")


def expect_close(got: Any, expected: torch.Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Fail unless ``got`` is a tensor equal to ``expected`` within tolerances (shape first, then values)."""
    expect_tensor(got, what, shape=tuple(expected.shape))
    try:
        torch.testing.assert_close(got.detach().to(expected.dtype), expected, atol=atol, rtol=rtol)
    except AssertionError as err:
        raise AssertionError(f"{what} has the right shape but wrong values:\n{err}") from None


def expect_equal(got: Any, expected: Any, what: str) -> None:
    """Fail unless ``got == expected`` (for plain Python values: ints, tuples, strings)."""
    if type(got) is not type(expected) or got != expected:
        raise AssertionError(f"{what} returned {_describe(got)}, expected {_describe(expected)}")


def expect_raises(exc: type[BaseException], fn: Callable[[], Any], what: str) -> BaseException:
    """Fail unless calling ``fn()`` raises ``exc``; return the exception so a check can look at its message."""
    try:
        result = fn()
    except exc as err:
        return err
    except NotImplementedError:
        raise
    except Exception as err:
        raise AssertionError(f"{what} should raise {exc.__name__}, but it raised {type(err).__name__}: {err}") from None
    raise AssertionError(f"{what} should raise {exc.__name__}, but it returned {_describe(result)}")
