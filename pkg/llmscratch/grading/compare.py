"""How one observation is compared with the reference: plain data in, a message (or None) out. numpy only.

The same functions give the student's in-notebook feedback (``llmscratch.grading.check``) and the judge's
verdict (``judge.py``, which loads this file by path so that it never imports torch or the package).

An observation is stored as JSON plus one ``.npz`` of arrays (never pickle). Encoded values:

- ``{"t": "tensor", "dtype": "torch.float32", "shape": [2, 3], "device": "cpu", "ref": "a0"}`` (values in the
  ``.npz`` under ``a0``; a tensor on the ``meta`` device has no values and no ``ref``);
- ``{"t": "ndarray", "dtype": "float64", "shape": [...], "ref": "a1"}``;
- ``{"t": "float", "v": 1.5}`` (``"nan"``, ``"inf"``, ``"-inf"`` as strings), ``{"t": "int", "v": 3}``,
  ``{"t": "bool", "v": true}``, ``{"t": "str", "v": "x"}``, ``{"t": "none"}``;
- ``{"t": "list" | "tuple", "items": [...]}``, ``{"t": "dict", "items": [[key, value], ...]}`` (keys encoded too);
- ``{"t": "object", "cls": "Foo", "repr": "..."}`` for anything else (compared by class name only);
- ``{"t": "raised", "exc": ["ValueError", "Exception", ...], "msg": "..."}`` or ``{"t": "returned", "value": ...}``
  for :meth:`Check.expect_raises`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

KINDS = ("close", "equal", "raises", "property")
PROPERTIES = ("decreasing", "increasing", "spread_at_most", "all_finite")


class Arr:
    """A decoded tensor / ndarray: the facts the judge compares (no torch needed)."""

    def __init__(self, t: str, dtype: str, shape: tuple, device: str | None, data: np.ndarray | None):
        self.t, self.dtype, self.shape, self.device, self.data = t, dtype, tuple(shape), device, data

    def describe(self) -> str:
        where = f", device {self.device}" if self.device not in (None, "cpu") else ""
        return f"a {self.t} of shape {self.shape}, dtype {self.dtype}{where}"


def decode(enc: Any, arrays: dict, depth: int = 0) -> Any:
    """Encoded JSON (+ arrays) -> Python values with :class:`Arr` for tensors. Raises ValueError on bad data."""
    if depth > 50 or not isinstance(enc, dict):
        raise ValueError("malformed observation")
    t = enc.get("t")
    if t in ("tensor", "ndarray"):
        ref = enc.get("ref")
        data = None
        if ref is not None:
            data = np.asarray(arrays[str(ref)])
            if list(data.shape) != list(enc.get("shape", [])):
                raise ValueError("malformed observation (shape)")
        return Arr(t, str(enc.get("dtype")), tuple(int(s) for s in enc.get("shape", [])), enc.get("device"), data)
    if t == "float":
        v = enc.get("v")
        return float(v) if isinstance(v, (int, float, str)) else float("nan")
    if t in ("int", "bool", "str"):
        v = enc.get("v")
        if {"int": int, "bool": bool, "str": str}[t] is not type(v):
            raise ValueError("malformed observation (scalar)")
        return v
    if t == "none":
        return None
    if t in ("list", "tuple"):
        items = [decode(e, arrays, depth + 1) for e in enc.get("items", [])]
        return items if t == "list" else tuple(items)
    if t == "dict":
        return {_key(decode(k, arrays, depth + 1)): decode(v, arrays, depth + 1) for k, v in enc.get("items", [])}
    if t == "object":
        return _Object(str(enc.get("cls")), str(enc.get("repr", ""))[:200])
    if t == "raised":
        return _Raised([str(e) for e in enc.get("exc", [])], str(enc.get("msg", ""))[:2000])
    if t == "returned":
        return _Returned(decode(enc.get("value", {"t": "none"}), arrays, depth + 1))
    raise ValueError(f"malformed observation (type {t!r})")


def _key(k):
    return k if isinstance(k, (str, int, float, bool, type(None), tuple)) else repr(k)


class _Object:
    def __init__(self, cls: str, text: str):
        self.cls, self.text = cls, text


class _Raised:
    def __init__(self, exc: list[str], msg: str):
        self.exc, self.msg = exc, msg


class _Returned:
    def __init__(self, value):
        self.value = value


def describe(v: Any) -> str:
    if v is None:
        return "None"
    if isinstance(v, Arr):
        return v.describe()
    if isinstance(v, _Object):
        return f"a {v.cls} ({v.text[:80]})"
    if isinstance(v, _Raised):
        return f"{v.exc[0] if v.exc else 'an exception'}: {v.msg[:150]}"
    if isinstance(v, _Returned):
        return f"returned {describe(v.value)}"
    if isinstance(v, (list, tuple, dict)):
        text = repr(_plain(v))
        return f"{type(v).__name__} {text[:150] + '...' if len(text) > 150 else text}"
    return f"{type(v).__name__} {v!r}"[:200]


def _plain(v):
    if isinstance(v, Arr):
        return f"<{v.t} {v.shape}>"
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (_Object, _Raised, _Returned)):
        return describe(v)
    return v


def _family(dtype: str) -> str:
    d = dtype.replace("torch.", "")
    if d == "bool":
        return "bool"
    if d.startswith(("int", "uint", "long", "short")):
        return "integer"
    if d.startswith("complex"):
        return "complex"
    return "floating"


def _diff_arrays(name: str, got: Arr, want: Arr, atol: float, rtol: float, exact: bool) -> str | None:
    if got.t != want.t:
        return f"{name}: expected {want.describe()}, got {got.describe()}"
    if got.shape != want.shape:
        hint = ""
        if sorted(got.shape) == sorted(want.shape):
            hint = " (the same sizes in another order: a transpose or view in the wrong order?)"
        elif math.prod(got.shape) == math.prod(want.shape):
            hint = " (the same number of elements: a reshape to the wrong shape?)"
        return f"{name}: expected shape {want.shape}, got {got.shape}{hint}"
    if (got.device or "cpu") != (want.device or "cpu"):
        return f"{name}: expected a {want.t} on device {want.device}, got one on device {got.device}"
    if exact and got.dtype != want.dtype:
        return f"{name}: expected dtype {want.dtype}, got {got.dtype}"
    if _family(got.dtype) != _family(want.dtype):
        return f"{name}: expected a {_family(want.dtype)} dtype like {want.dtype}, got {got.dtype}"
    if want.data is None or got.data is None:  # meta tensors: shape, dtype and device are all there is
        return None
    g, w = got.data, want.data
    if exact:
        if g.shape == w.shape and np.array_equal(g, w, equal_nan=g.dtype.kind == "f"):
            return None
    else:
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        ok = np.isclose(g64, w64, atol=atol, rtol=rtol, equal_nan=True)
        if ok.all():
            return None
    g64, w64 = g.astype(np.float64), w.astype(np.float64)
    bad = ~np.isclose(g64, w64, atol=atol, rtol=rtol, equal_nan=True) if not exact else (g != w)
    n_bad = int(bad.sum())
    idx = tuple(int(i) for i in np.argwhere(bad)[0]) if n_bad else ()
    with np.errstate(invalid="ignore"):
        err = np.abs(g64 - w64)
        max_err = float(np.nanmax(err)) if err.size and not np.isnan(err).all() else float("nan")
    where = f" first at index {idx}: got {g[idx].item()!r}, expected {w[idx].item()!r}" if n_bad else ""
    tol = "exactly" if exact else f"within atol={atol:g}, rtol={rtol:g}"
    hint = ""
    if g.ndim >= 2 and g.shape[-1] == g.shape[-2] and np.allclose(np.swapaxes(g64, -1, -2), w64, atol=atol, rtol=rtol):
        hint = " (the transpose of the expected values: are the last two dimensions swapped?)"
    elif np.isnan(g64).any() and not np.isnan(w64).any():
        hint = " (your result holds NaN: a 0/0 or inf - inf, e.g. exp of large numbers?)"
    return (f"{name}: right shape {got.shape}, wrong values: {n_bad} of {g.size} differ {tol}{where}; "
            f"largest difference {max_err:.3g}{hint}")


def diff(name: str, got: Any, want: Any, atol: float = 0.0, rtol: float = 0.0, exact: bool = True) -> str | None:
    """None when ``got`` matches ``want`` (decoded values), else what differs, said for a student."""
    if isinstance(want, Arr):
        if not isinstance(got, Arr):
            hint = " (did you forget a `return`?)" if got is None else ""
            return f"{name}: expected {want.describe()}, got {describe(got)}{hint}"
        return _diff_arrays(name, got, want, atol, rtol, exact)
    if isinstance(want, bool) or isinstance(got, bool):
        if type(got) is not type(want) or got != want:
            return f"{name}: expected {describe(want)}, got {describe(got)}"
        return None
    if isinstance(want, (int, float)):
        if type(got) is not type(want):
            hint = " (did you forget a `return`?)" if got is None else ""
            if isinstance(got, Arr) and got.shape == ():
                hint = " (a 0-d tensor: call .item(), or float()/int() on it)"
            return f"{name}: expected {describe(want)}, got {describe(got)}{hint}"
        if exact and isinstance(want, int):
            return None if got == want else f"{name}: expected {want!r}, got {got!r}"
        if (math.isnan(want) and math.isnan(got)) or math.isclose(got, want, rel_tol=rtol, abs_tol=atol) or got == want:
            return None
        tol = "exactly" if exact else f"within atol={atol:g}, rtol={rtol:g}"
        return f"{name}: expected {want!r}, got {got!r} (not equal {tol})"
    if isinstance(want, (list, tuple)):
        if type(got) is not type(want):
            return f"{name}: expected a {type(want).__name__} of {len(want)} items, got {describe(got)}"
        if len(got) != len(want):
            return f"{name}: expected {len(want)} items, got {len(got)}"
        for i, (g, w) in enumerate(zip(got, want)):
            m = diff(f"{name}[{i}]", g, w, atol, rtol, exact)
            if m:
                return m
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{name}: expected a dict, got {describe(got)}"
        if list(got) != list(want) and set(got) != set(want):
            return f"{name}: expected the keys {sorted(map(repr, want))}, got {sorted(map(repr, got))}"
        for k in want:
            m = diff(f"{name}[{k!r}]", got[k], want[k], atol, rtol, exact)
            if m:
                return m
        return None
    if isinstance(want, _Object):
        if not isinstance(got, _Object) or got.cls != want.cls:
            return f"{name}: expected a {want.cls}, got {describe(got)}"
        return None
    if type(got) is not type(want) or got != want:
        return f"{name}: expected {describe(want)}, got {describe(got)}"
    return None


def raises_diff(name: str, got: Any, want_exc: str, mentions: list[str]) -> str | None:
    """``got`` is what :meth:`Check.expect_raises` recorded; ``want_exc`` the exception class name expected."""
    if isinstance(got, _Returned):
        return f"{name}: should raise {want_exc}, but it returned {describe(got.value)}"
    if not isinstance(got, _Raised):
        return f"{name}: malformed observation"
    if want_exc not in got.exc:
        return f"{name}: should raise {want_exc}, but it raised {got.exc[0] if got.exc else '?'}: {got.msg[:200]}"
    missing = [m for m in mentions if m not in got.msg]
    if missing:
        return f"{name}: the {want_exc} message should mention {missing}; it says: {got.msg[:200]!r}"
    return None


def property_diff(name: str, got: Any, prop: str, params: dict) -> str | None:
    """A property of the observed value itself (no reference): decreasing, increasing, spread_at_most, all_finite."""
    if prop not in PROPERTIES:
        return f"{name}: unknown property {prop!r} (one of {PROPERTIES})"
    values = got.data if isinstance(got, Arr) else got
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return f"{name}: expected numbers, got {describe(got)}"
    if isinstance(got, Arr) and got.data is None:
        return f"{name}: expected values, got {describe(got)}"
    shown = np.array2string(arr[:12], precision=4)
    if prop == "all_finite":
        return None if np.isfinite(arr).all() else f"{name}: expected only finite values, got {shown}"
    if prop == "spread_at_most":
        limit = float(params.get("limit", 0))
        spread = float(arr.max() - arr.min()) if arr.size else 0.0
        return None if spread <= limit else f"{name}: expected values within {limit:g} of each other, got {shown}"
    if arr.size < 2:
        return f"{name}: expected at least two values, got {shown}"
    steps = np.diff(arr)
    ok = (steps < 0).all() if prop == "decreasing" else (steps > 0).all()
    return None if ok else f"{name}: expected strictly {prop} values, got {shown}"


def judge_item(name: str, got: Any, ref_item: dict, ref_value: Any) -> str | None:
    """The verdict of one recorded item against the reference run's item (kind and tolerances from there)."""
    kind = ref_item.get("kind")
    hint = ref_item.get("hint") or ""
    if kind == "close":
        msg = diff(name, got, ref_value, float(ref_item.get("atol", 0)), float(ref_item.get("rtol", 0)), exact=False)
    elif kind == "equal":
        msg = diff(name, got, ref_value, exact=True)
    elif kind == "raises":
        msg = raises_diff(name, got, str(ref_item.get("exc")), list(ref_item.get("mentions", [])))
    elif kind == "property":
        msg = property_diff(name, got, str(ref_item.get("prop")), dict(ref_item.get("params", {})))
    else:
        msg = f"{name}: unknown check kind {kind!r}"
    return f"{msg}. Hint: {hint}" if msg and hint else msg
