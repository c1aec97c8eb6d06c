"""The verdict of one graded cell, from the facts the execution worker reported; run under nbval by the grader.

The grader writes a *judging notebook*: its first cell loads the facts of every submission in the batch (JSON
written by the grader, never by student code), and each further cell judges one (submission, graded cell)::

    J.check("alice.ipynb", "ex01-check-shape")

``pytest --nbval-lax`` runs that notebook: one test item per cell, which passes when the check passed and fails
with ``LLMSCRATCH-VERDICT {"status": ..., "reason": ...}`` otherwise. The grader reads the items' outcomes from
pytest's JUnit XML report. No student code runs in that kernel.

This file is loaded by path (it must not import the package, which would import torch).
"""

from __future__ import annotations

import json

VERDICT = "LLMSCRATCH-VERDICT"


def _first_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def verdict(sub: dict, cell_id: str) -> tuple[str, str]:
    """(status, reason) for one graded cell of one submission; status is passed/failed/error/timeout."""
    if sub.get("invalid"):
        return "error", sub["invalid"]
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
    if not fact.get("token"):
        return "failed", ("the check did not report success: its output, or the way the kernel reports errors, "
                          "was changed by code in the notebook")
    return "passed", ""


class CheckNotPassed(AssertionError):
    pass


class Judge:
    """Loaded in the judging notebook's first cell."""

    def __init__(self, facts_path: str):
        with open(facts_path, encoding="utf-8") as f:
            self.facts = json.load(f)

    def check(self, key: str, cell_id: str) -> None:
        status, reason = verdict(self.facts[key], cell_id)
        if status != "passed":
            raise CheckNotPassed(VERDICT + " " + json.dumps({"status": status, "reason": reason}))
        print("passed")
