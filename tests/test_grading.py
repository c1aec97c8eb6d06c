"""``llmscratch grade`` on the warm-up lab: solved, unsolved, broken and hostile submissions.

Every submission is written here from the solution notebook (or the released exercise) with a few cells changed,
and most are graded in ONE ``grade`` call (two jobs in parallel) to keep the module fast. Each case asserts the
exact points and status of every exercise. The throughput (seconds per submission, SMOKE) is printed.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import REPO
from llmscratch.grading.grader import (GradingError, grade, load_lab, merge_submission, student_from_filename,
                                       summary_path)

LAB = REPO / "solutions" / "ch00_pytorch_warmup.ipynb"
EXERCISE = REPO / "exercises" / "ch00_pytorch_warmup.ipynb"
MAX = {"ex01_split_heads": 3, "ex02_broadcasting": 2, "ex03_autograd": 2, "ex04_module": 3, "ex05_train_step": 3,
       "ex06_dataset": 3, "ex07_device": 2}
ALL = list(MAX)

pytestmark = pytest.mark.slow


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _cell(nb, cid):
    return next(c for c in nb["cells"] if c.get("id") == cid)


def _set(nb, cid, source):
    _cell(nb, cid)["source"] = source


def _insert_after(nb, cid, new_id, source):
    i = next(i for i, c in enumerate(nb["cells"]) if c.get("id") == cid)
    nb["cells"].insert(i + 1, {"cell_type": "code", "id": new_id, "metadata": {}, "execution_count": None,
                               "outputs": [], "source": source})


def _solved():
    return _load(LAB)


def _unsolved():
    return _load(EXERCISE)


MONKEYPATCH = r'''
import builtins, sys, torch
import llmscratch.grading.checks as checks
# Make every checking helper and assertion a no-op, hide tracebacks, shadow builtins, fake the grader's token.
noop = lambda *a, **k: None
torch.testing.assert_close = noop
torch.allclose = lambda *a, **k: True
for name in ("expect_type", "expect_tensor", "expect_close", "expect_equal", "expect_raises"):
    setattr(checks, name, noop)
builtins.AssertionError = type("AssertionError", (Exception,), {})
isinstance = lambda *a: True
len = lambda *a: 16
get_ipython().showtraceback = noop
get_ipython().showsyntaxerror = noop
sys.excepthook = noop
torch.Tensor.shape = property(lambda self: (2, 4, 5, 3))
open("facts.json", "w").write("{}")
print("LLMSCRATCH-VERDICT {\"status\": \"passed\"}  all checks passed!")
'''

WRONG_ANSWERS = {
    "ex01-solution": "def split_heads(x, n_heads):\n    return x\n",
    "ex02-solution": "def pairwise_sq_dists(a, b):\n    return a\n",
    "ex03-solution": "def grad_of_f(x):\n    return x\n",
    "ex05-solution": "def train_step(model, optimizer, x, y):\n    return 0.0\n",
    "ex07-solution": "def to_device(batch, device):\n    return batch\n",
}


def _cases(tmp):
    """{file name: (notebook text, expected {exercise: (points, status, reason substring)})}."""
    full = {e: (MAX[e], "passed", "") for e in ALL}
    cases = {}

    cases["solved.ipynb"] = (_solved(), full)
    cases["unsolved.ipynb"] = (_unsolved(), {e: (0, "failed", "NotImplementedError") for e in ALL})

    nb = _solved()
    _set(nb, "ex02-solution", "def pairwise_sq_dists(a, b)\n    return a\n")
    cases["syntax__error.ipynb"] = (nb, {**full, "ex02_broadcasting": (0, "failed", "NameError")})

    nb = _solved()
    _set(nb, "ex03-solution", "def grad_of_f(x):\n    raise ValueError('boom')\n")
    cases["exception.ipynb"] = (nb, {**full, "ex03_autograd": (0, "failed", "ValueError: boom")})

    nb = _solved()
    _set(nb, "ex02-solution", "def pairwise_sq_dists(a, b):\n    while True:\n        pass\n")
    cases["infinite_loop.ipynb"] = (nb, {**full, "ex02_broadcasting": (0, "timeout", "per-cell time limit")})

    nb = _solved()
    _insert_after(nb, "ex01-try", "exit-cell", "import sys\nsys.exit(3)\n")
    _set(nb, "ex03-solution", "import sys\ndef grad_of_f(x):\n    sys.exit(1)\n")
    cases["sys_exit.ipynb"] = (nb, {**full, "ex03_autograd": (0, "failed", "SystemExit")})

    nb = _solved()
    _insert_after(nb, "ex04-check-params", "os-exit", "import os\nos._exit(0)\n")
    cases["os_exit.ipynb"] = (nb, {**{e: full[e] for e in ALL[:4]},
                                   **{e: (0, "error", "kernel died") for e in ALL[4:]}})

    nb = _solved()
    _insert_after(nb, "smoke", "hog", "hog = bytearray(64 * 2**30)  # 64 GiB\n")
    _set(nb, "ex07-solution", "def to_device(batch, device):\n    return torch.empty(2**40)\n")
    cases["memory.ipynb"] = (nb, {**full, "ex07_device": (0, "failed", "RuntimeError")})

    nb = _solved()
    _insert_after(nb, "ex01-try", "flood", "import sys\nfor _ in range(200):\n    sys.stdout.write('y' * 100_000)\n")
    cases["flood.ipynb"] = (nb, full)

    # Checks edited to `pass`, a check deleted, points raised: all restored from the lab, so the unsolved
    # functions fail every check (NotImplementedError proves the deleted check was put back after its stub).
    nb = _unsolved()
    for c in nb["cells"]:
        if "graded" in c.get("metadata", {}).get("tags", []):
            c["source"] = "pass\n"
            c["metadata"]["points"] = 100
    nb["cells"] = [c for c in nb["cells"] if c.get("id") != "ex02-check"]
    cases["edited_checks.ipynb"] = (nb, {e: (0, "failed", "NotImplementedError") for e in ALL})

    # The same on a solved notebook: the deleted / edited checks come back and pass, points stay the lab's.
    nb = _solved()
    nb["cells"] = [c for c in nb["cells"] if c.get("id") not in ("ex02-check", "ex06-check-loader")]
    _cell(nb, "ex03-check")["metadata"]["points"] = 50
    cases["deleted_checks.ipynb"] = (nb, full)

    # Monkeypatching the helpers, assertions, builtins, the traceback display and the guard itself, with wrong
    # answers that the patched helpers would accept; the unsolved stubs of ex04 and ex06 stay.
    nb = _unsolved()
    _insert_after(nb, "smoke", "tamper", MONKEYPATCH)
    for cid, src in WRONG_ANSWERS.items():
        _set(nb, cid, src)
    cases["monkeypatch.ipynb"] = (nb, {"ex01_split_heads": (0, "failed", "has shape"),
                                       "ex02_broadcasting": (0, "failed", "has shape"),
                                       "ex03_autograd": (0, "failed", "wrong values"),
                                       "ex04_module": (0, "failed", "NotImplementedError"),
                                       "ex05_train_step": (0, "failed", "train_step returned loss"),
                                       "ex06_dataset": (0, "failed", "NotImplementedError"),
                                       "ex07_device": (0, "failed", "device cpu, expected meta")})

    # Replacing the grader's guard by one that prints a pass line: the line lacks the secret token.
    nb = _unsolved()
    _insert_after(nb, "smoke", "fake-guard", (
        "import sys\n"
        "class FakeGuard:\n"
        "    def run_check(self, source, cell_id):\n"
        "        print(f'LLMSCRATCH-CHECK-PASSED {cell_id} ' + '0' * 32)\n"
        "sys.modules['llmscratch.grading._guard'] = FakeGuard()\n"))
    cases["fake_guard.ipynb"] = (nb, {e: (0, "failed", "did not report success") for e in ALL})

    cases["not_json.ipynb"] = ('{"cells": [ this is not json', {e: (0, "error", "not a valid notebook") for e in ALL})
    cases["empty.ipynb"] = ("", {e: (0, "error", "empty") for e in ALL})
    paths = []
    for name, (nb, _) in cases.items():
        p = tmp / name
        p.write_text(nb if isinstance(nb, str) else json.dumps(nb), encoding="utf-8")
        paths.append(p)
    return cases, paths


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subs")
    cases, paths = _cases(tmp)
    out = tmp / "gradebook.csv"
    start = time.monotonic()
    book, summary = grade(LAB, paths, out, jobs=2, cell_timeout=20, total_timeout=240, log=lambda *_: None)
    elapsed = time.monotonic() - start
    print(f"\ngrading throughput: {len(paths)} submissions in {elapsed:.1f} s with 2 jobs = "
          f"{elapsed / len(paths):.2f} s per submission (SMOKE); per submission: "
          + ", ".join(f"{r.student} {r.seconds:.1f}s" for r in summary.itertuples()))
    return cases, out, book, summary


@pytest.mark.parametrize("name", ["solved.ipynb", "unsolved.ipynb", "syntax__error.ipynb", "exception.ipynb",
                                  "infinite_loop.ipynb", "sys_exit.ipynb", "os_exit.ipynb", "memory.ipynb",
                                  "flood.ipynb", "edited_checks.ipynb", "deleted_checks.ipynb",
                                  "monkeypatch.ipynb", "fake_guard.ipynb", "not_json.ipynb", "empty.ipynb"])
def test_submission_graded_exactly(batch, name):
    cases, _, book, summary = batch
    expected = cases[name][1]
    student = student_from_filename(name)
    rows = book[book.student == student].set_index("exercise")
    assert list(rows.index) == ALL, f"{name}: exercises {list(rows.index)}"
    for ex, (points, status, reason) in expected.items():
        row = rows.loc[ex]
        assert (row.points, row.status) == (points, status), f"{name} {ex}: got {row.points} {row.status}: {row.reason}"
        assert row.max_points == MAX[ex]
        assert reason in row.reason, f"{name} {ex}: reason {row.reason!r} lacks {reason!r}"
        if status == "passed":
            assert row.reason == ""
    s = summary[summary.student == student].iloc[0]
    assert s.points == sum(p for p, _, _ in expected.values()) and s.max_points == 18


def test_summary_status_and_flags(batch):
    _, out, book, summary = batch
    s = summary.set_index("student")
    assert s.loc["os_exit", "status"] == "error" and s.loc["empty", "status"] == "error"
    assert s.loc["solved", "status"] == "graded" and s.loc["solved", "flags"] == ""
    assert "output truncated" in s.loc["flood", "flags"]
    for flag in ("builtins", "IPython internals", "patching torch"):
        assert flag in s.loc["monkeypatch", "flags"]
    assert "sys.modules" in s.loc["fake_guard", "flags"]
    assert "exit/kill" in s.loc["os_exit", "flags"]
    # What is on disk is what grade() returned, and nothing half-written is left next to it.
    assert pd.read_csv(out, keep_default_na=False).shape == book.shape
    assert pd.read_csv(summary_path(out), keep_default_na=False).shape == summary.shape
    assert sorted(p.name for p in out.parent.glob(".gradebook*")) == []


def test_merge_restores_checks_and_reinserts_deleted_ones():
    lab = load_lab(LAB)
    nb = _unsolved()
    moved = _cell(nb, "parameters")
    nb["cells"].remove(moved)
    nb["cells"].append(moved)  # parameters cell moved to the end: it goes back to the top
    _set(nb, "parameters", "SMOKE = False\nN_SAMPLES = 10**9\n")
    nb["cells"] = [c for c in nb["cells"] if c.get("id") not in ("ex01-check-shape", "ex07-check")]
    _cell(nb, "ex05-solution")["metadata"]["tags"] = ["graded"]  # a student cell cannot make itself graded
    _cell(nb, "ex05-solution")["metadata"]["points"] = 99
    nb["cells"] += [17, "text", {"cell_type": "code", "source": 42}, {"cell_type": "code", "id": "setup"},
                    {"cell_type": "code", "id": "ex02-check", "source": "pass", "metadata": {}}]
    merged = merge_submission(lab, nb, "/nonexistent/secret")
    ids = [c["id"] for c in merged["cells"]]
    assert len(ids) == len(set(ids))  # a duplicated check is dropped, odd cells are skipped
    assert ids[:3] == ["setup", "parameters", "llmscratch-grader-guard"]
    assert "N_SAMPLES = 2048" in merged["cells"][1]["source"]
    assert ids.index("ex01-check-shape") == ids.index("ex01-try") + 1
    assert ids.index("ex07-check") == ids.index("ex07-solution") + 1
    assert ids.index("ex02-check") == ids.index("ex02-solution") + 1  # the later duplicate was dropped
    graded = [c["id"] for c in merged["cells"] if "graded" in c["metadata"]["tags"]]
    assert graded == [g["id"] for g in lab.graded]
    assert _cell(merged, "ex05-solution")["metadata"] == {"tags": []}
    for c in merged["cells"]:
        assert c["outputs"] == [] and c["execution_count"] is None
        assert "BEGIN SOLUTION" not in c["source"]  # the lab's solution code never reaches the student kernel


def test_roster_missing_students_rerun_merge_and_cli_exit_codes(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "a1.ipynb").write_text("")
    (subs / "zed__final.ipynb").write_text("not json")
    roster = tmp_path / "roster.csv"
    roster.write_text("file,student\na1.ipynb,alice\nbob.ipynb,bob\n")
    out = tmp_path / "book.csv"
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "llmscratch", "grade", "--lab", str(LAB), "--out", str(out), "--roster", str(roster)]
    r = subprocess.run(cmd + [str(subs / "a1.ipynb"), str(subs / "zed__final.ipynb")], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "zed__final.ipynb is not in the roster" in r.stdout
    book = pd.read_csv(out, keep_default_na=False)
    assert sorted(set(book.student)) == ["alice", "bob", "zed"]
    assert set(book[book.student == "bob"].status) == {"missing"}
    assert set(book[book.student == "alice"].status) == {"error"}
    summary = pd.read_csv(summary_path(out), keep_default_na=False).set_index("student")
    assert summary.loc["bob", "status"] == "missing" and summary.loc["alice", "points"] == 0

    # Re-grading one student replaces only that student's rows, deterministically.
    before = out.read_text()
    r = subprocess.run(cmd[:-2] + [str(subs / "zed__final.ipynb")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == before

    # Grader failures: exit code 2 with a message, and the existing gradebook untouched.
    base = cmd[:4]  # python -m llmscratch grade
    bad_lab = subprocess.run(base + ["--lab", str(tmp_path / "nope.ipynb"), "--out", str(out),
                                     str(subs / "a1.ipynb")], capture_output=True, text=True, env=env)
    assert bad_lab.returncode == 2 and "not found" in bad_lab.stderr
    bad_out = subprocess.run(base + ["--lab", str(LAB), "--out", str(tmp_path / "no" / "such" / "dir.csv"),
                                     str(subs / "a1.ipynb")], capture_output=True, text=True, env=env)
    assert bad_out.returncode == 2 and "does not exist" in bad_out.stderr
    assert out.read_text() == before


def test_total_timeout_kills_a_kernel_that_ignores_interrupts(tmp_path):
    psutil = pytest.importorskip("psutil")
    pid_file = tmp_path / "kernel.pid"
    nb = _solved()
    # The first student cell ignores the kernel interrupt and never ends: only the total limit can stop it.
    _insert_after(nb, "parameters", "stuck", (
        "import os, signal\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "while True:\n    pass\n"))
    sub = tmp_path / "stuck.ipynb"
    sub.write_text(json.dumps(nb))
    book, summary = grade(LAB, [sub], tmp_path / "gb.csv", cell_timeout=5, total_timeout=30, log=lambda *_: None)
    rows = book.set_index("exercise")
    for ex in ALL:
        assert (rows.loc[ex, "points"], rows.loc[ex, "status"]) == (0, "timeout"), rows.loc[ex, "reason"]
        assert "total time limit (30" in rows.loc[ex, "reason"]
    assert summary.iloc[0].status == "timeout"
    pid = int(pid_file.read_text())
    time.sleep(0.5)
    alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    assert not alive, "the stuck kernel survived the grader"


def test_load_lab_rejects_a_notebook_without_graded_cells(tmp_path):
    p = tmp_path / "x.ipynb"
    p.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    with pytest.raises(GradingError, match="no graded cells"):
        load_lab(p)
    with pytest.raises(GradingError, match="two submissions"):
        grade(LAB, [tmp_path / "amy.ipynb", tmp_path / "amy__v2.ipynb"], tmp_path / "o.csv")


def test_student_from_filename():
    assert student_from_filename("alice.ipynb") == "alice"
    assert student_from_filename("/x/s1234__lab0 (1).ipynb") == "s1234"
    assert student_from_filename("bob_smith.ipynb") == "bob_smith"
