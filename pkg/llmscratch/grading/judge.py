"""The verdict of one graded cell: the student's recording compared with the reference's; run under nbval.

The grader writes a *judging notebook*: its first cell loads the facts of every submission in the batch (JSON
written by the grader: where each submission's recordings are, and what the worker saw: errors, timeouts) and
the reference recordings (the lab's solution, run on the same inputs); each further cell judges one
(submission, graded cell)::

    J.check("0003:alice", "ex01-check-shape")

``pytest --nbval-lax`` runs that notebook: one test item per cell, which passes when every item the reference
recorded for that cell was recorded by the student too and matches (``compare.judge_item``: values within the
lab's tolerances, shape, dtype, properties), and fails with ``LLMSCRATCH-VERDICT {"status": ..., "reason": ...}``
otherwise. The grader reads the items' outcomes from pytest's JUnit XML report. No student code runs in that
kernel: the recordings are JSON and ``.npz`` files read with ``allow_pickle=False``.

This file is loaded by path (it must not import the package, which would import torch); so is ``compare.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

VERDICT = "LLMSCRATCH-VERDICT"
_MAX_FILE = 64 * 2**20

_spec = importlib.util.spec_from_file_location("llmscratch_compare", os.path.join(os.path.dirname(__file__),
                                                                                   "compare.py"))
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def _first_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_recording(folder: str, cell_id: str) -> tuple[dict, dict] | None:
    """(record, arrays) of one graded cell, or None when it recorded nothing. Raises ValueError when unreadable."""
    jpath, npath = os.path.join(folder, f"{cell_id}.json"), os.path.join(folder, f"{cell_id}.npz")
    if not os.path.isfile(jpath):
        return None
    if os.path.getsize(jpath) > _MAX_FILE or (os.path.isfile(npath) and os.path.getsize(npath) > _MAX_FILE):
        raise ValueError("the recording is too large")
    with open(jpath, encoding="utf-8") as f:
        record = json.load(f)
    if not isinstance(record, dict) or not isinstance(record.get("items"), dict):
        raise ValueError("the recording has no items")
    arrays = {}
    if os.path.isfile(npath):
        with np.load(npath, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    return record, arrays


def _failure_context(sub: dict, cell_id: str) -> tuple[str, str] | None:
    """(status, reason) when the worker saw why this cell could not record (timeout, crash, error)."""
    fact = sub.get("cells", {}).get(cell_id)
    limits = sub.get("limits", {})
    if fact is None:
        if sub.get("total_timeout"):
            return "timeout", (f"the notebook ran past the total time limit ({limits.get('total')} s) before this "
                               "check ran; look for code that is slow or never ends")
        if sub.get("died"):
            return "error", (f"the kernel died before this check ran ({_first_line(sub['died'], 120)}): "
                             "os._exit, a crash, or the memory limit")
        if sub.get("failed"):
            return "error", f"the grader could not run the notebook: {_first_line(sub['failed'])}"
        return "error", "this check did not run"
    if fact.get("timeout"):
        return "timeout", (f"the check did not finish within the per-cell time limit ({limits.get('cell')} s); "
                           "look for an infinite loop in the code it calls")
    if fact.get("died") or not fact.get("completed"):
        return "error", "the kernel died while this check ran (os._exit, a crash, or the memory limit)"
    if fact.get("errors"):
        ename, evalue = fact["errors"][0]
        return "failed", _first_line(f"{ename}: {evalue}" if evalue else ename)
    return None


def verdict(sub: dict, cell_id: str, reference: tuple[dict, dict]) -> tuple[str, str]:
    """(status, reason) for one graded cell of one submission; status is passed/failed/error/timeout."""
    if sub.get("invalid"):
        return "error", sub["invalid"]
    ref_record, ref_arrays = reference
    context = _failure_context(sub, cell_id)
    try:
        got = load_recording(sub.get("obs", ""), cell_id) if sub.get("obs") else None
    except (OSError, ValueError, RecursionError) as err:
        return "failed", f"this check's recording cannot be read ({_first_line(err, 120)})"
    if got is None:
        return context or ("failed", "this check recorded nothing")
    record, arrays = got
    for name, ref_item in ref_record["items"].items():
        item = record["items"].get(name)
        if not isinstance(item, dict) or "value" not in item:
            if context:
                return context
            return "failed", _first_line(f"{name}: no value recorded" + (
                f" ({record['error']})" if record.get("error") else ""))
        try:
            ref_value = compare.decode(ref_item["value"], ref_arrays)
            value = compare.decode(item["value"], arrays)
            message = compare.judge_item(name, value, ref_item, ref_value)
        except (ValueError, KeyError, TypeError, RecursionError, IndexError) as err:
            return "failed", f"{name}: the recorded value cannot be read ({_first_line(err, 120)})"
        if message:
            return "failed", _first_line(message, 600)
    return "passed", ""


class CheckNotPassed(AssertionError):
    pass


class Judge:
    """Loaded in the judging notebook's first cell."""

    def __init__(self, facts_path: str, reference_folder: str):
        with open(facts_path, encoding="utf-8") as f:
            self.facts = json.load(f)
        self.reference_folder = reference_folder
        self._refs: dict[str, tuple[dict, dict]] = {}

    def check(self, key: str, cell_id: str) -> None:
        if cell_id not in self._refs:
            ref = load_recording(self.reference_folder, cell_id)
            if ref is None:
                raise RuntimeError(f"no reference recording for {cell_id}")
            self._refs[cell_id] = ref
        status, reason = verdict(self.facts[key], cell_id, self._refs[cell_id])
        if status != "passed":
            raise CheckNotPassed(VERDICT + " " + json.dumps({"status": status, "reason": reason}))
        print("passed")
