"""The graded check cell: one ``with check("<cell id>") as c:`` block that observes the student's code.

A graded cell calls the student's functions on inputs drawn from ``c`` and states what it expects::

    import torch
    from llmscratch.grading import check

    with check("ex02-check") as c:                      # the name is the cell's id
        a, b = c.randn(5, 3), c.randn(7, 3)             # inputs: seeded per grading run
        c.expect_close("pairwise_sq_dists(a (5, 3), b (7, 3))", pairwise_sq_dists(a, b),
                       want=lambda: torch.cdist(a, b) ** 2, atol=1e-4)

The same cell behaves in two ways:

- **In the student's notebook** (Colab, no grader): each ``expect_*`` compares the value with ``want`` at once
  and raises an ``AssertionError`` that says what is wrong (expected vs got, shape, dtype, a likely cause).
  Inputs come from a fixed seed, so the student sees the same numbers on every run.
- **Under the grader** (``$LLMSCRATCH_GRADING_DIR`` set): the grader has removed every ``want=`` from the cell,
  so nothing here computes a reference; each ``expect_*`` only *records* the value (JSON + ``.npz``, never
  pickle) in ``<dir>/<cell id>.json``. The same cell runs on the instructor's solution, in its own clean kernel,
  with the same seed; the judge compares the two recordings (values within the tolerances of the instructor's
  cell, shapes, dtypes, properties). Nothing in the student's kernel decides a verdict.

Rules for authors (``llmscratch release --check`` enforces the first three):

1. One ``with check("<this cell's id>") as c:`` per graded cell; the cell imports and builds everything it
   uses (nothing from an editable cell except the exercise's own functions).
2. The reference goes into ``want=`` (a value, or a ``lambda`` when it takes work): it is for the student's
   feedback only and never reaches the student's kernel under the grader. Never compute it in a separate line.
3. Item names say what was called (they are the messages' subjects); a repeated name is numbered (``#2``).
4. Draw inputs from ``c`` (``c.randn``, ``c.randint``, ``c.random``, ``c.randomize(module)``); entering the
   block also seeds torch, ``random`` and numpy from the run's seed and the cell id, so models built inside
   get the same weights in the student's run and the instructor's.
5. ``expect_property`` checks a property of the student's values themselves (``"decreasing"``,
   ``"increasing"``, ``"spread_at_most"`` with ``limit=``, ``"all_finite"``); ``expect_raises`` an exception
   (and words its message must mention).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..utils import atomic_write
from . import compare

__all__ = ["check", "Check", "GRADING_DIR_ENV", "GRADING_SEED_ENV", "GRADING_ROLE_ENV", "DEFAULT_SEED"]

GRADING_DIR_ENV = "LLMSCRATCH_GRADING_DIR"  # where a graded run records observations
GRADING_SEED_ENV = "LLMSCRATCH_GRADING_SEED"  # this grading run's seed (unknown before the run)
GRADING_ROLE_ENV = "LLMSCRATCH_GRADING_ROLE"  # "reference" for the instructor's solution run
DEFAULT_SEED = 0  # the student's notebook: the published example inputs
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MAX_ITEMS, _MAX_ELEMENTS = 200, 5_000_000


def _encode(value: Any, arrays: dict, depth: int = 0) -> dict:
    """A value -> JSON-able dict (tensors' values go into ``arrays``); see :mod:`llmscratch.grading.compare`."""
    if depth > 20:
        return {"t": "object", "cls": type(value).__name__, "repr": "(nested too deep)"}
    if isinstance(value, torch.Tensor):
        enc = {"t": "tensor", "dtype": str(value.dtype), "shape": list(value.shape), "device": value.device.type}
        if value.device.type != "meta" and not value.is_sparse:
            if value.numel() > _MAX_ELEMENTS:
                raise ValueError(f"a tensor of {value.numel()} elements is too large to record")
            data = value.detach().cpu()
            if data.dtype in (torch.bfloat16, torch.float16):
                data = data.float()
            enc["ref"] = f"a{len(arrays)}"
            arrays[enc["ref"]] = data.resolve_conj().resolve_neg().numpy().copy()
        return enc
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        enc = {"t": "ndarray", "dtype": str(value.dtype), "shape": list(value.shape), "ref": f"a{len(arrays)}"}
        arrays[enc["ref"]] = np.array(value)
        return enc
    if isinstance(value, (bool, np.bool_)):
        return {"t": "bool", "v": bool(value)}
    if isinstance(value, int):
        return {"t": "int", "v": int(value)}
    if isinstance(value, float):
        v = float(value)
        return {"t": "float", "v": v if np.isfinite(v) else str(v)}
    if isinstance(value, str):
        return {"t": "str", "v": value[:10_000]}
    if value is None:
        return {"t": "none"}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return {"t": type(value).__name__, "items": [_encode(v, arrays, depth + 1) for v in value[:10_000]]}
    if isinstance(value, dict):
        return {"t": "dict", "items": [[_encode(k, arrays, depth + 1), _encode(v, arrays, depth + 1)]
                                      for k, v in list(value.items())[:10_000]]}
    try:
        text = repr(value)[:200]
    except Exception:
        text = "?"
    return {"t": "object", "cls": type(value).__name__, "repr": text}


def _decode_now(value: Any) -> Any:
    arrays: dict = {}
    return compare.decode(_encode(value, arrays), arrays)


def derive_seed(seed: int, name: str) -> int:
    """The seed of one check: independent of everything the notebook did before the check."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") % (2**63 - 1)


class Check:
    """What a graded cell uses; created by :func:`check`. See the module docstring for the format."""

    def __init__(self, name: str):
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"check({name!r}): the name must be the graded cell's id (letters, digits, - and _)")
        self.name = name
        self.out_dir = os.environ.get(GRADING_DIR_ENV) or None
        self.role = os.environ.get(GRADING_ROLE_ENV, "student") if self.out_dir else "notebook"
        try:
            run_seed = int(os.environ.get(GRADING_SEED_ENV, DEFAULT_SEED)) if self.out_dir else DEFAULT_SEED
        except ValueError:
            run_seed = DEFAULT_SEED
        self.seed = derive_seed(run_seed, name)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.random = random.Random(self.seed)
        self._items: dict[str, dict] = {}
        self._arrays: dict[str, np.ndarray] = {}  # every recorded array, keyed a0, a1, ...
        self._closed = False

    # -------------------------------------------------------------------------------------------- inputs
    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal values of ``shape`` from this check's generator."""
        return torch.randn(*shape, generator=self.gen, dtype=dtype)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform values in [0, 1) of ``shape`` from this check's generator."""
        return torch.rand(*shape, generator=self.gen)

    def randint(self, low: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Integers in [low, high) of ``shape`` (int64) from this check's generator."""
        return torch.randint(low, high, tuple(shape), generator=self.gen)

    def randomize(self, module: torch.nn.Module, std: float = 1.0) -> torch.nn.Module:
        """Fill every parameter of ``module`` with N(0, std²) values, in name order, from this check's generator.

        Use it when a check builds the student's module, so that its weights do not depend on the order in which
        the student's ``__init__`` created the layers.
        """
        with torch.no_grad():
            for _, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
                p.copy_(torch.randn(p.shape, generator=self.gen) * std)
        return module

    # ---------------------------------------------------------------------------------------- expectations
    def expect_close(self, name: str, got: Any, want: Any = None, *, atol: float = 1e-5, rtol: float = 1e-4,
                     hint: str = "") -> None:
        """``got`` equals the reference within ``atol``/``rtol`` (tensors: same shape, device, dtype family)."""
        self._expect(name, got, want, {"kind": "close", "atol": float(atol), "rtol": float(rtol), "hint": hint})

    def expect_equal(self, name: str, got: Any, want: Any = None, *, hint: str = "") -> None:
        """``got`` equals the reference exactly (same type; tensors: same shape, dtype, device and values)."""
        self._expect(name, got, want, {"kind": "equal", "hint": hint})

    def expect_raises(self, name: str, exc: type[BaseException], fn: Callable[[], Any], *,
                      mentions: tuple[str, ...] = (), hint: str = "") -> None:
        """Calling ``fn()`` raises ``exc`` (a subclass counts), whose message mentions every word in ``mentions``.

        ``NotImplementedError`` is never caught: an unsolved exercise fails as unsolved.
        """
        try:
            result = fn()
            observed = {"t": "returned", "value": _encode(result, self._arrays)}
        except NotImplementedError:
            raise
        except Exception as err:
            observed = {"t": "raised", "exc": [k.__name__ for k in type(err).__mro__], "msg": str(err)[:2000]}
        spec = {"kind": "raises", "exc": exc.__name__, "mentions": [str(m) for m in mentions], "hint": hint}
        self._store(name, observed, spec)
        if self.role != "student":
            self._fail_if(compare.judge_item(name, compare.decode(observed, self._arrays), spec, None))

    def expect_property(self, name: str, got: Any, prop: str, *, hint: str = "", **params: Any) -> None:
        """A property of ``got`` itself: ``"decreasing"``, ``"increasing"``, ``"all_finite"``,
        ``"spread_at_most"`` (with ``limit=``)."""
        if prop not in compare.PROPERTIES:
            raise ValueError(f"expect_property: unknown property {prop!r}; use one of {compare.PROPERTIES}")
        spec = {"kind": "property", "prop": prop, "params": params, "hint": hint}
        enc = _encode(got, self._arrays)
        self._store(name, enc, spec)
        if self.role != "student":
            self._fail_if(compare.judge_item(name, compare.decode(enc, self._arrays), spec, None))

    # ------------------------------------------------------------------------------------------- internals
    def _expect(self, name: str, got: Any, want: Any, spec: dict) -> None:
        enc = _encode(got, self._arrays)
        self._store(name, enc, spec)
        if self.role == "student":
            return  # under the grader the judge decides; `want` was removed from this cell anyway
        if want is None:
            raise ValueError(f"{self.name}: {name!r} needs want=<the reference> for the student's feedback")
        want = want() if callable(want) else want
        self._fail_if(compare.judge_item(name, compare.decode(enc, self._arrays), spec, _decode_now(want)))

    def _store(self, name: str, enc: dict, spec: dict) -> None:
        if self._closed:
            raise RuntimeError(f"check {self.name!r} is closed; record inside its `with` block")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.name}: an item needs a non-empty name (what was called), got {name!r}")
        if name in self._items:  # random cases can repeat a name: number the repeats, the same way in both runs
            k = 2
            while f"{name} #{k}" in self._items:
                k += 1
            name = f"{name} #{k}"
        if len(self._items) >= _MAX_ITEMS:
            raise ValueError(f"{self.name}: more than {_MAX_ITEMS} recorded items")
        self._items[name] = {**spec, "value": enc}

    def _fail_if(self, message: str | None) -> None:
        if message:
            raise AssertionError(message)

    def __enter__(self) -> "Check":
        # Models built inside the check get the same weights in the student's run and the instructor's.
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._closed = True
        if self.out_dir:
            self._write(None if exc is None else f"{exc_type.__name__}: {exc}"[:2000])
        elif exc is None:
            print(f"ok: {self.name} ({len(self._items)} checked)")
        return False

    def _write(self, error: str | None) -> None:
        out = Path(self.out_dir)
        record = {"check": self.name, "role": self.role, "items": self._items, "error": error,
                  "threads": threading.active_count()}
        with atomic_write(out / f"{self.name}.npz", "wb") as fh:
            np.savez(fh, **self._arrays)
        with atomic_write(out / f"{self.name}.json", "w", encoding="utf-8") as fh:
            json.dump(record, fh)


def check(name: str) -> Check:
    """Start a graded check named after its cell id: ``with check("ex01-check") as c: ...``."""
    return Check(name)
