"""``llmscratch release``: the stub rules, determinism, the errors, ``--check``, and exercises/ being up to date."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, notebooks
from llmscratch.grading.release import ReleaseError, release_all, release_notebook, stub_source

SETUP = "import sys\n"


def _nb(*cells, minor=5):
    return {
        "cells": list(cells),
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "papermill": {"duration": 1.5}},
        "nbformat": 4,
        "nbformat_minor": minor,
    }


def _code(cid, source, tags=(), **meta):
    md = {"tags": list(tags), **meta} if tags or meta else {}
    md["papermill"] = {"duration": 0.1, "status": "completed"}
    return {"cell_type": "code", "id": cid, "metadata": md, "execution_count": 7, "source": source,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]}


SOLVED = '''def double(x):
    """Return 2 * x."""
    # BEGIN SOLUTION
    # HINT: multiply by two
    y = x * 2
    return y
    # END SOLUTION


class Net:
    def forward(self, x):
        if x is not None:
            # BEGIN SOLUTION
            return x + 1
            # END SOLUTION
        return None
'''


def test_stub_replaces_block_with_hint_or_generic_message():
    out = stub_source(SOLVED)
    assert out == '''def double(x):
    """Return 2 * x."""
    raise NotImplementedError("multiply by two")


class Net:
    def forward(self, x):
        if x is not None:
            raise NotImplementedError("implement forward() (replace this line with your solution)")
        return None
'''
    ns = {}
    exec(out, ns)  # the released cell runs; calling the stub raises
    with pytest.raises(NotImplementedError, match="multiply by two"):
        ns["double"](3)


def test_stub_leaves_cells_without_markers_alone_and_quotes_hints():
    assert stub_source("x = 1  # BEGIN nothing\n") == "x = 1  # BEGIN nothing\n"
    out = stub_source('def f():\n    # BEGIN SOLUTION\n    # HINT: say "hi" \\ there\n    return 1\n    # END SOLUTION\n')
    ns = {}
    exec(out, ns)
    with pytest.raises(NotImplementedError) as info:
        ns["f"]()
    assert str(info.value) == 'say "hi" \\ there'


@pytest.mark.parametrize(
    "source, message",
    [
        ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "not inside a function body"),
        ("class A:\n    # BEGIN SOLUTION\n    x = 1\n    # END SOLUTION\n", "not inside a function body"),
        ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n", "cannot nest"),
        ("def f():\n    return 1\n    # END SOLUTION\n", "without a '# BEGIN SOLUTION'"),
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "has no '# END SOLUTION'"),
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n  # END SOLUTION\n", "indented differently"),
        ("def f():\n    return 1  # BEGIN SOLUTION\n", "not the marker alone"),
    ],
)
def test_stub_rejects_broken_markers(source, message):
    with pytest.raises(ReleaseError, match=message):
        stub_source(source, where="lab.ipynb, cell 'x'")


def test_release_notebook_clears_outputs_keeps_ids_metadata_and_is_deterministic():
    nb = _nb(
        {"cell_type": "markdown", "id": "intro", "metadata": {"tags": ["x"]}, "source": "# Title\n\ntext"},
        _code("setup", SETUP, tags=["setup"]),
        _code("ex01-solution", SOLVED),
        _code("ex01-check", "assert double(2) == 4\n", tags=["graded"], points=2, exercise="ex01_double"),
    )
    text = release_notebook(nb, name="lab.ipynb")
    assert text == release_notebook(json.loads(text), name="lab.ipynb")  # idempotent on its own output
    out = json.loads(text)
    assert [c["id"] for c in out["cells"]] == ["intro", "setup", "ex01-solution", "ex01-check"]
    assert out["cells"][0] == {"cell_type": "markdown", "id": "intro", "metadata": {"tags": ["x"]},
                               "source": ["# Title\n", "\n", "text"]}
    for cell in out["cells"][1:]:
        assert cell["outputs"] == [] and cell["execution_count"] is None
        assert "papermill" not in cell["metadata"]
    assert out["cells"][3]["metadata"] == {"tags": ["graded"], "points": 2, "exercise": "ex01_double"}
    assert "".join(out["cells"][3]["source"]) == "assert double(2) == 4\n"
    assert "NotImplementedError" in "".join(out["cells"][2]["source"])
    assert "papermill" not in out["metadata"] and out["metadata"]["kernelspec"]["name"] == "python3"
    assert text.endswith("}\n") and text == json.dumps(json.loads(text), sort_keys=True, indent=1,
                                                       ensure_ascii=False) + "\n"


def test_release_notebook_errors_name_the_cell():
    with pytest.raises(ReleaseError, match="no cell ids"):
        release_notebook(_nb(_code("a", "x = 1\n"), minor=4), name="old.ipynb")
    bad = _nb(_code("a", "x = 1\n"))
    del bad["cells"][0]["id"]
    with pytest.raises(ReleaseError, match="cell 0 has no 'id'"):
        release_notebook(bad, name="lab.ipynb")
    graded = _nb(_code("chk", "def f():\n    # BEGIN SOLUTION\n    pass\n    # END SOLUTION\n", tags=["graded"]))
    with pytest.raises(ReleaseError, match="graded check cell holds solution markers"):
        release_notebook(graded, name="lab.ipynb")
    with pytest.raises(ReleaseError, match=r"lab.ipynb, cell 0 \(id 'a'\).*not inside a function"):
        release_notebook(_nb(_code("a", "# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n")), name="lab.ipynb")


def test_release_all_writes_and_check_lists_stale_files(tmp_path):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    (sol / "ch99_lab.ipynb").write_text(json.dumps(_nb(_code("s", SOLVED))))
    assert release_all(sol, ex, check=True) == [ex / "ch99_lab.ipynb"]  # missing -> differs, nothing written
    assert not ex.exists()
    assert release_all(sol, ex) == [ex / "ch99_lab.ipynb"]
    first = (ex / "ch99_lab.ipynb").read_bytes()
    assert release_all(sol, ex) == [] and release_all(sol, ex, check=True) == []
    assert (ex / "ch99_lab.ipynb").read_bytes() == first
    (ex / "ch99_lab.ipynb").write_text("edited by hand")
    (ex / "ch98_orphan.ipynb").write_text("{}")
    assert release_all(sol, ex, check=True) == [ex / "ch99_lab.ipynb", ex / "ch98_orphan.ipynb"]


def test_cli_check_exit_codes(tmp_path):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    (sol / "ch99_lab.ipynb").write_text(json.dumps(_nb(_code("s", SOLVED))))
    cmd = [sys.executable, "-m", "llmscratch", "release"]
    r = subprocess.run(cmd + ["--check"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 1 and "ch99_lab.ipynb" in r.stderr
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and "wrote" in r.stdout
    r = subprocess.run(cmd + ["--check"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (sol / "ch97_bad.ipynb").write_text(json.dumps(_nb(_code("s", "# BEGIN SOLUTION\nx=1\n# END SOLUTION\n"))))
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "ch97_bad.ipynb" in r.stderr and "function body" in r.stderr


def test_exercises_folder_is_what_release_writes():
    if not notebooks("solutions"):
        pytest.skip("no solution notebooks yet")
    stale = release_all(REPO / "solutions", REPO / "exercises", check=True)
    assert not stale, "exercises/ is out of date; run `python -m llmscratch release`. Differs: " + ", ".join(
        str(p.relative_to(REPO)) for p in stale
    )


# ------------------------------------------------------------------------- the static checks of graded cells
from llmscratch.grading.static import (KNOWN_REPEATS, all_problems, exercise_names,  # noqa: E402
                                       lab_problems, repeated_exercises, strip_wants)

EXERCISE = "def norm2(x):\n    # BEGIN SOLUTION\n    return (x**2).sum()\n    # END SOLUTION\n"
HELPERS = "import torch\nSCALE = 2\n\ndef check_close(a, b):\n    assert a == b\n"


def _graded(cid, source, **meta):
    return _code(cid, source, tags=("graded",), points=1, exercise="ex01_norm", **meta)


def _lab(*graded):
    return _nb(_code("setup", SETUP, tags=("setup",)), _code("parameters", "SMOKE = False\nN = 3\n",
                                                              tags=("parameters",)),
               _code("helpers", HELPERS), _code("ex01", EXERCISE), *graded)


GOOD = ('import torch\nfrom llmscratch.grading import check\n\nwith check("ex01-check") as c:\n'
        '    x = c.randn(N)\n    c.expect_close("norm2(x)", norm2(x), want=lambda: x.dot(x), atol=1e-4)\n')


def test_static_check_accepts_a_self_contained_check():
    assert lab_problems(_lab(_graded("ex01-check", GOOD))) == []


@pytest.mark.parametrize("source, message", [
    (GOOD.replace("c.randn(N)", "c.randn(N) * SCALE"), "reads 'SCALE', which only cell 'helpers' defines"),
    (GOOD.replace('c.expect_close("norm2(x)", norm2(x), want=lambda: x.dot(x), atol=1e-4)',
                  'check_close(norm2(x), x.dot(x))'), "reads 'check_close', which only cell 'helpers'"),
    (GOOD.replace("want=lambda: x.dot(x), ", "x.dot(x), "), "as want=..., not positionally"),
    (GOOD.replace('check("ex01-check")', 'check("ex02-check")'), "needs exactly one `with check('ex01-check')"),
    ("import torch\nprint(norm2(torch.ones(2)))\n", "needs exactly one"),
])
def test_static_check_names_what_is_wrong(source, message):
    problems = lab_problems(_lab(_graded("ex01-check", source)), "ch99")
    assert any(message in p for p in problems), problems


def test_static_check_graded_cells_do_not_share_names_and_uses_allows_a_name():
    # ch01's old bug: the second check read `_tok`, which only the first check defined.
    first = GOOD + "_tok = 3\n"
    second = GOOD.replace("ex01-check", "ex01-check-b").replace("c.randn(N)", "c.randn(_tok)")
    problems = lab_problems(_lab(_graded("ex01-check", first), _graded("ex01-check-b", second)))
    assert problems == ["lab, graded cell 'ex01-check-b': reads '_tok', but only graded cell 'ex01-check' defines "
                        "it; import or build it in this check"]
    # A parameter that an editable cell re-binds (a SMOKE override) counts as editable.
    nb = _lab(_graded("ex01-check", GOOD))
    nb["cells"][2]["source"] += "N = 1\n"
    assert any("reads 'N'" in p for p in lab_problems(nb))
    # An explicit allow-list in the cell's metadata: a name the student writes outside a solution block.
    uses = _graded("ex01-check", GOOD.replace("c.randn(N)", "c.randn(N) * SCALE"), uses=["SCALE"])
    assert lab_problems(_lab(uses)) == []


def test_repeated_exercises_across_labs():
    a, b = _lab(_graded("ex01-check", GOOD)), _lab(_graded("ex01-check", GOOD))
    b["cells"][-1]["metadata"]["exercise"] = "ex01_other"
    assert repeated_exercises({"ch98_a": a, "ch99_b": b}) == [
        "function norm2 appears in more than one lab: ch98_a, ch99_b; no two labs repeat an exercise"]
    b["cells"][3]["source"] = EXERCISE.replace("norm2", "norm2_b")
    b["cells"][-1]["source"] = GOOD.replace("norm2", "norm2_b")
    b["cells"][-1]["metadata"]["exercise"] = "ex01_norm"
    assert repeated_exercises({"ch98_a": a, "ch99_b": b}) == [
        "exercise ex01_norm appears in more than one lab: ch98_a, ch99_b; no two labs repeat an exercise"]


def test_the_labs_pass_the_static_checks_and_the_waived_repeats_still_exist():
    assert all_problems(REPO / "solutions") == []
    labs = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((REPO / "solutions").glob("*.ipynb"))}
    for key, where in KNOWN_REPEATS.items():  # when a lab rewrite removes a repeat, delete its waiver
        name = key.split(" ", 1)[1]
        assert [lab for lab in labs if name in exercise_names(labs[lab])] == list(where), key


def test_strip_wants_removes_every_reference_from_the_students_kernel():
    stripped = strip_wants(GOOD + '    c.expect_equal("n", 3, want=3)\n')
    assert "want" not in stripped and "x.dot" not in stripped
    assert "c.expect_close('norm2(x)', norm2(x), atol=0.0001)" in stripped


def test_cli_release_check_fails_on_a_check_that_reads_an_editable_cell(tmp_path):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    (sol / "ch99_lab.ipynb").write_text(json.dumps(_lab(_graded("ex01-check", GOOD.replace("(N)", "(SCALE)")))))
    cmd = [sys.executable, "-m", "llmscratch", "release"]
    assert subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True).returncode == 1
    r = subprocess.run(cmd + ["--check"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 1 and "reads 'SCALE'" in r.stderr
