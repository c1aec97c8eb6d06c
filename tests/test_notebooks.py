"""Every notebook in book/, solutions/ and exercises/ follows the conventions and runs with SMOKE=True.

How each kind is judged:
- book/ and solutions/: executed with papermill, SMOKE=True, in a temporary folder; any error fails the test.
- exercises/ (released from solutions/, stubs unsolved): executed with errors allowed. The notebook must fail
  *only at its stubs*: every cell that raised must have raised ``NotImplementedError``, and only in a cell that
  holds a released stub or in a graded check cell; and every graded check cell must fail (an unsolved exercise
  that passes its checks is a check that cannot fail).
- stored outputs: cells tagged ``nbval-check-output`` hold outputs that do not depend on the machine or on
  SMOKE; nbval (``--nbval-lax``) re-runs such notebooks in SMOKE mode and compares those cells' outputs with the
  committed ones, after the substitutions of ``tests/nbval_sanitize.cfg``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, notebooks
from llmscratch.notebooks import check_conventions, colab_url, execute, read_notebook

ALL = notebooks("book", "solutions", "exercises", "templates")
RUNNABLE = notebooks("book", "solutions")
EXERCISES = notebooks("exercises")


def _id(p):
    return str(p.relative_to(REPO))


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_conventions(path):
    problems = check_conventions(path)
    assert not problems, f"{_id(path)} breaks the notebook conventions:\n  " + "\n  ".join(problems)


def test_every_folder_has_notebooks():
    assert notebooks("book"), "book/ has no notebook"


def _run(path, tmp_path, allow_errors=False):
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / path.name
    nb = execute(path, out, parameters={"SMOKE": True}, cwd=work, allow_errors=allow_errors, timeout=900)
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNNABLE, ids=_id)
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    _run(path, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXERCISES, ids=_id)
def test_exercise_fails_only_at_its_stubs(path, tmp_path):
    nb = _run(path, tmp_path, allow_errors=True)
    bad, graded_passed = [], []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        is_stub = "NotImplementedError" in cell.source
        if "graded" in tags and not errors:
            graded_passed.append(i)
        for err in errors:
            if err["ename"] != "NotImplementedError" or not (is_stub or "graded" in tags):
                bad.append(f"cell {i}: {err['ename']}: {err['evalue'][:200]}")
    assert not bad, f"{_id(path)} fails outside its stubs:\n  " + "\n  ".join(bad)
    assert not graded_passed, f"{_id(path)}: graded cells {graded_passed} pass although the exercise is unsolved"


CHECKED_OUTPUTS = [p for p in RUNNABLE if any("nbval-check-output" in c.get("metadata", {}).get("tags", [])
                                              for c in read_notebook(p).cells)]


@pytest.mark.slow
@pytest.mark.parametrize("path", CHECKED_OUTPUTS, ids=_id)
def test_stored_outputs_match_with_nbval(path, tmp_path):
    import nbformat

    nb = read_notebook(path)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += "\nSMOKE = True  # injected by tests/test_notebooks.py\n"
    copy = tmp_path / path.name
    nbformat.write(nb, copy)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "--nbval-lax",
         "--nbval-current-env", "--sanitize-with", str(REPO / "tests" / "nbval_sanitize.cfg"), str(copy)],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )
    assert proc.returncode == 0, f"stored outputs of {_id(path)} differ from a fresh run:\n{proc.stdout[-4000:]}"
