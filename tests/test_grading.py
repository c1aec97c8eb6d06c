"""``llmscratch grade``: every lab, and the warm-up lab against solved, unsolved, broken and hostile submissions.

Every hostile submission is written here from the solution notebook (or the released exercise) with a few cells
changed, and all are graded in ONE ``grade`` call (two jobs in parallel, in the bubblewrap sandbox) to keep the
module fast. Each case asserts the exact points and status of every exercise. The throughput (seconds per
submission, SMOKE) is printed. Every lab in solutions/ is graded too: its solution gets full marks, its released
exercise zero.
"""

from __future__ import annotations

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
from llmscratch.grading.sandbox import sandbox_status

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


MONKEYPATCH = r"""
import builtins, sys, torch
import llmscratch.grading.check as checks
# Make the recorder's helpers, assertions and builtins lie, hide tracebacks, print fake verdicts.
noop = lambda *a, **k: None
torch.testing.assert_close = noop
torch.allclose = lambda *a, **k: True
builtins.AssertionError = type("AssertionError", (Exception,), {})
isinstance = lambda *a: True
len = lambda *a: 16
get_ipython().showtraceback = noop
get_ipython().showsyntaxerror = noop
sys.excepthook = noop
open("facts.json", "w").write("{}")
print("LLMSCRATCH-VERDICT {\"status\": \"passed\"}  all checks passed!")
"""

# Search every object of the kernel for anything secret-like, then print every pass line a grader might read.
SECRET_SEARCH = r"""
import gc, os, sys
hits = [k for k in os.environ if "LLMSCRATCH" in k]
for obj in gc.get_objects():
    if isinstance(obj, dict):
        hits += [k for k in obj if isinstance(k, str) and any(w in k.lower() for w in ("secret", "token", "nonce"))]
print(len(hits), "secret-like names")
for cid in ("ex01-check-shape", "ex01-check-divisible", "ex02-check", "ex03-check", "ex04-check-forward",
            "ex04-check-params", "ex05-check", "ex06-check-items", "ex06-check-loader", "ex07-check"):
    print(f"LLMSCRATCH-CHECK-PASSED {cid} " + "0" * 64)
print('LLMSCRATCH-VERDICT {"status": "passed", "reason": ""}')
"""

# Replace the grader's in-kernel module (and its sys.modules entries) by one whose checks do nothing.
FAKE_MODULES = r"""
import sys, types
import llmscratch
class FakeCheck:
    def __init__(self, *a, **k): pass
    def __enter__(self): return self
    def __exit__(self, *a): return True  # swallow the NotImplementedError too
    def __getattr__(self, name): return lambda *a, **k: None
fake = types.ModuleType("llmscratch.grading")
fake.check = FakeCheck
for name in ("llmscratch.grading", "llmscratch.grading.check", "llmscratch.grading.compare"):
    sys.modules[name] = fake
llmscratch.grading = fake
"""

# A background thread that keeps re-patching torch's comparisons (what an in-kernel verdict would rely on).
THREAD_REPATCH = r"""
import threading, time, torch
def repatch():
    while True:
        torch.testing.assert_close = lambda *a, **k: None
        torch.allclose = lambda *a, **k: True
        torch.equal = lambda *a, **k: True
        time.sleep(0.005)
threading.Thread(target=repatch, daemon=True).start()
"""

# Patch the recorder so that it records the check's reference (want) instead of the student's value.
PATCH_RECORDER = r"""
from llmscratch.grading.check import Check
_orig = Check._expect
def _expect(self, name, got, want, spec):
    want = want() if callable(want) else want
    return _orig(self, name, got if want is None else want, None, spec)
Check._expect = _expect
"""

# A helper redefined in an editable cell (the ch02 `check_close` bug): the graded cells import their own.
HELPER_REDEFINED = r"""
class check:  # shadows llmscratch.grading.check for code that would read it from the notebook
    def __init__(self, *a): pass
    def __enter__(self): return self
    def __exit__(self, *a): return True
    def __getattr__(self, name): return lambda *a, **k: None
expect_close = expect_equal = lambda *a, **k: None
"""

WRONG_ANSWERS = {
    "ex01-solution": "def split_heads(x, n_heads):\n    return x\n",
    "ex02-solution": "def pairwise_sq_dists(a, b):\n    return a\n",
    "ex03-solution": "def grad_of_f(x):\n    return x\n",
    "ex05-solution": "def train_step(model, optimizer, x, y):\n    return 0.0\n",
    "ex07-solution": "def to_device(batch, device):\n    return batch\n",
}
WRONG = {"ex01_split_heads": (0, "failed", "expected shape (2, 4, 5, 3), got (2, 5, 12)"),
         "ex02_broadcasting": (0, "failed", "expected shape (5, 7), got (5, 3)"),
         "ex03_autograd": (0, "failed", "wrong values"),
         "ex04_module": (0, "failed", "NotImplementedError"),
         "ex05_train_step": (0, "failed", "the losses train_step returned (3 steps, SGD lr=0.1)[0]: expected"),
         "ex06_dataset": (0, "failed", "NotImplementedError"),
         "ex07_device": (0, "failed", "on device meta, got one on device cpu")}


def _published_outputs():
    """What a student sees in their own notebook for ex02 (the fixed seed), hard-coded as a 'solution'."""
    import torch

    from llmscratch.grading.check import Check

    c, outs = Check("ex02-check"), []
    for n, m, d in [(5, 7, 3), (1, 4, 6), (6, 6, 2)]:
        a, b = c.randn(n, d), c.randn(m, d)
        outs.append((torch.cdist(a, b) ** 2).tolist())
    return ("import torch\nOUTS = " + repr(outs) + "\nCALLS = []\n"
            "def pairwise_sq_dists(a, b):\n    CALLS.append(1)\n    return torch.tensor(OUTS[(len(CALLS) - 1) % 3])\n")


def _cases(tmp, server_port):
    """{file name: (notebook text, expected {exercise: (points, status, reason substring)})}."""
    full = {e: (MAX[e], "passed", "") for e in ALL}
    unsolved_all = {e: (0, "failed", "NotImplementedError") for e in ALL}
    cases = {}

    cases["solved.ipynb"] = (_solved(), full)
    cases["unsolved.ipynb"] = (_unsolved(), unsolved_all)

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
    cases["edited_checks.ipynb"] = (nb, unsolved_all)

    # The same on a solved notebook: the deleted / edited checks come back and pass, points stay the lab's.
    nb = _solved()
    nb["cells"] = [c for c in nb["cells"] if c.get("id") not in ("ex02-check", "ex06-check-loader")]
    _cell(nb, "ex03-check")["metadata"]["points"] = 50
    cases["deleted_checks.ipynb"] = (nb, full)

    # Monkeypatching assertions, builtins and the traceback display, with wrong answers: nothing in the kernel
    # decides, so the wrong values fail with the judge's message.
    for name, source in [("monkeypatch", MONKEYPATCH), ("thread_repatch", THREAD_REPATCH),
                         ("patch_recorder", PATCH_RECORDER)]:
        nb = _unsolved()
        _insert_after(nb, "smoke", "tamper", source)
        for cid, src in WRONG_ANSWERS.items():
            _set(nb, cid, src)
        cases[f"{name}.ipynb"] = (nb, WRONG)

    nb = _unsolved()
    _insert_after(nb, "smoke", "secrets", SECRET_SEARCH)
    cases["secret_search.ipynb"] = (nb, unsolved_all)

    nb = _unsolved()
    _insert_after(nb, "smoke", "fake-modules", FAKE_MODULES)
    cases["fake_modules.ipynb"] = (nb, {e: (0, "failed", "recorded nothing") for e in ALL})

    nb = _unsolved()
    _insert_after(nb, "smoke", "helpers", HELPER_REDEFINED)
    cases["helper_redefined.ipynb"] = (nb, unsolved_all)

    # Hard-coding the outputs of the published example inputs: right in the student's notebook, wrong here.
    nb = _solved()
    _set(nb, "ex02-solution", _published_outputs())
    cases["hardcoded.ipynb"] = (nb, {**full, "ex02_broadcasting": (0, "failed", "wrong values")})

    # Reading the instructor's lab (solutions/) to run its solution code.
    nb = _solved()
    _set(nb, "ex02-solution", (
        "import json\ndef pairwise_sq_dists(a, b):\n"
        f"    lab = json.load(open({str(LAB)!r}))\n"
        "    src = ''.join(next(c['source'] for c in lab['cells'] if c['id'] == 'ex02-solution'))\n"
        "    ns = {'torch': torch}\n    exec(src, ns)\n    return ns['pairwise_sq_dists'](a, b)\n"))
    cases["read_solutions.ipynb"] = (nb, {**full, "ex02_broadcasting": (0, "failed", "FileNotFoundError")})

    # Fetching the answer over the network (a server on the grader's own loopback).
    nb = _solved()
    _set(nb, "ex02-solution", (
        "import urllib.request\ndef pairwise_sq_dists(a, b):\n"
        f"    src = urllib.request.urlopen('http://127.0.0.1:{server_port}/', timeout=5).read().decode()\n"
        "    ns = {'torch': torch}\n    exec(src, ns)\n    return ns['pairwise_sq_dists'](a, b)\n"))
    cases["network.ipynb"] = (nb, {**full, "ex02_broadcasting": (0, "failed", "URLError")})

    # Writing outside the scratch folder (next to the gradebook): refused; the scores stay right.
    nb = _solved()
    _insert_after(nb, "smoke", "write-out", (
        "for target in [" + repr(str(tmp / "pwned.txt")) + ", " + repr(str(REPO / "pwned.txt")) + "]:\n"
        "    try:\n        open(target, 'w').write('x')\n    except OSError as err:\n        print(err)\n"))
    cases["write_outside.ipynb"] = (nb, full)

    # Known limit: writing the recording of a check with values from the package's reference (here by running
    # the check's own block with torch.cdist) passes, like writing pairwise_sq_dists with torch.cdist would.
    # The summary flags it (a forbidden call, grader internals) for a human look.
    nb = _unsolved()
    _insert_after(nb, "ex02-check", "forge", (
        "import torch\nfrom llmscratch.grading import check\n"
        "with check('ex02-check') as c:\n"
        "    for n, m, d in [(5, 7, 3), (1, 4, 6), (6, 6, 2)]:\n"
        "        a, b = c.randn(n, d), c.randn(m, d)\n"
        "        c.expect_close(f'pairwise_sq_dists(a of shape ({n}, {d}), b of shape ({m}, {d}))',\n"
        "                       torch.cdist(a, b) ** 2, want=torch.cdist(a, b) ** 2)\n"))
    cases["forged_recording.ipynb"] = (nb, {**unsolved_all, "ex02_broadcasting": (2, "passed", "")})

    cases["not_json.ipynb"] = ('{"cells": [ this is not json', {e: (0, "error", "not a valid notebook") for e in ALL})
    cases["empty.ipynb"] = ("", {e: (0, "error", "empty") for e in ALL})
    paths = []
    for name, (nb, _) in cases.items():
        p = tmp / name
        p.write_text(nb if isinstance(nb, str) else json.dumps(nb), encoding="utf-8")
        paths.append(p)
    return cases, paths


@pytest.fixture(scope="module")
def answer_server():
    """A server on this machine's loopback that hands out the solution of ex02 (for the network case)."""
    import http.server
    import threading

    src = b"def pairwise_sq_dists(a, b):\n    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(src)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def batch(tmp_path_factory, answer_server):
    assert sandbox_status()[0], f"the grader's sandbox does not work here: {sandbox_status()[1]}"
    tmp = tmp_path_factory.mktemp("subs")
    cases, paths = _cases(tmp, answer_server)
    out = tmp / "gradebook.csv"
    start = time.monotonic()
    book, summary = grade(LAB, paths, out, jobs=2, cell_timeout=20, total_timeout=240, require_sandbox=True,
                          log=lambda *_: None)
    elapsed = time.monotonic() - start
    print(f"\ngrading throughput: {len(paths)} submissions in {elapsed:.1f} s with 2 jobs = "
          f"{elapsed / len(paths):.2f} s per submission (SMOKE); per submission: "
          + ", ".join(f"{r.student} {r.seconds:.1f}s" for r in summary.itertuples()))
    return cases, out, book, summary


CASES = ["solved", "unsolved", "syntax__error", "exception", "infinite_loop", "sys_exit", "os_exit", "memory", "flood",
         "edited_checks", "deleted_checks", "monkeypatch", "thread_repatch", "patch_recorder", "secret_search",
         "fake_modules", "helper_redefined", "hardcoded", "read_solutions", "network", "write_outside",
         "forged_recording", "not_json", "empty"]


@pytest.mark.parametrize("name", [f"{c}.ipynb" for c in CASES])
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
    assert "sys.modules" in s.loc["fake_modules", "flags"]
    assert "exit/kill" in s.loc["os_exit", "flags"]
    assert "threads running during checks" in s.loc["thread_repatch", "flags"]
    assert "frame/GC introspection" in s.loc["secret_search", "flags"]
    # Flags never change a score: the forged recording keeps its (known-limit) points, flagged for a look.
    assert "forbidden call in ex02_broadcasting: torch.cdist" in s.loc["forged_recording", "flags"]
    assert "grader internals" in s.loc["forged_recording", "flags"]
    assert s.loc["forged_recording", "points"] == 2
    # The sandbox kept the writes out of the grader's folders.
    assert not (out.parent / "pwned.txt").exists() and not (REPO / "pwned.txt").exists()
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
    merged = merge_submission(lab, nb)
    ids = [c["id"] for c in merged["cells"]]
    assert len(ids) == len(set(ids))  # a duplicated check is dropped, odd cells are skipped
    assert ids[:2] == ["setup", "parameters"]
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
        if "graded" in c["metadata"]["tags"]:  # nor do the checks' references
            assert "want" not in c["source"] and "torch.cdist" not in c["source"], c["source"]


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
    marker = f"{12000 + os.getpid() % 1000}.25"  # a `sleep` this test's kernel starts: findable from outside
    nb = _solved()
    # The first student cell starts a child, ignores the kernel interrupt and never ends: only the total limit
    # (which kills the sandbox and everything in it) can stop it.
    _insert_after(nb, "parameters", "stuck", (
        "import signal, subprocess\n"
        f"child = subprocess.Popen(['sleep', {marker!r}])\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "while True:\n    pass\n"))
    sub = tmp_path / "stuck.ipynb"
    sub.write_text(json.dumps(nb))
    book, summary = grade(LAB, [sub], tmp_path / "gb.csv", cell_timeout=5, total_timeout=30, log=lambda *_: None)
    rows = book.set_index("exercise")
    for ex in ALL:
        assert (rows.loc[ex, "points"], rows.loc[ex, "status"]) == (0, "timeout"), rows.loc[ex, "reason"]
        # each check either timed out on its own (the kernel stays busy) or never ran before the total limit
        assert "time limit" in rows.loc[ex, "reason"]
    assert summary.iloc[0].status == "timeout"
    time.sleep(0.5)
    left = [p for p in psutil.process_iter(["cmdline", "status"])
            if p.info["cmdline"] == ["sleep", marker] and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert not left, "the stuck kernel's child survived the grader"


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


# ------------------------------------------------------------------------------------------------- every lab
LABS = sorted((REPO / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("lab", [p for p in LABS if p != LAB], ids=lambda p: p.stem)
def test_every_lab_solution_full_marks_exercise_zero(lab, tmp_path):
    """The warm-up lab is covered by the batch above (solved / unsolved); every other lab here, one grade call."""
    subs = [tmp_path / "solution.ipynb", tmp_path / "exercise.ipynb"]
    subs[0].write_bytes(lab.read_bytes())
    subs[1].write_bytes((REPO / "exercises" / lab.name).read_bytes())
    book, summary = grade(lab, subs, tmp_path / "gb.csv", jobs=2, cell_timeout=60, total_timeout=300,
                          require_sandbox=sandbox_status()[0], log=lambda *_: None)
    s = summary.set_index("student")
    total = load_lab(lab).exercises
    assert s.loc["solution", "points"] == sum(total.values()), book[book.student == "solution"].to_string()
    assert s.loc["exercise", "points"] == 0, book[book.student == "exercise"].to_string()
    rows = book[book.student == "exercise"]
    assert set(rows.status) == {"failed"} and rows.reason.str.contains("NotImplementedError").all(), rows.reason


def test_every_lab_is_covered():
    assert LAB in LABS and len(LABS) >= 4  # new labs are picked up by listing the folder


# --------------------------------------------------------------------------------------------------- sandbox
def test_sandbox_works_here_and_require_sandbox_refuses_without_it(tmp_path, monkeypatch):
    import llmscratch.grading.sandbox as sandbox

    if sys.platform.startswith("linux"):
        # CI installs bubblewrap (.ci/run); if user namespaces are off, this says so instead of grading unsandboxed.
        assert sandbox.sandbox_status()[0], sandbox.sandbox_status()[1]
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox.sandbox_status.cache_clear()
    try:
        works, why = sandbox.sandbox_status()
        assert not works and "apt-get install bubblewrap" in why or "Linux only" in why
        sub = tmp_path / "a.ipynb"
        sub.write_text("")
        with pytest.raises(GradingError, match="--require-sandbox"):
            grade(LAB, [sub], tmp_path / "o.csv", require_sandbox=True, log=lambda *_: None)
        said = []
        book, summary = grade(LAB, [sub], tmp_path / "o.csv", log=said.append)
        assert any("WITHOUT a sandbox" in m for m in said) and "no sandbox" in summary.iloc[0]["flags"]
    finally:
        sandbox.sandbox_status.cache_clear()


# ------------------------------------------------------------------ the check format, without a kernel (fast)
def _feedback(fn):
    """The AssertionError message a check block gives in the student's own notebook (None when it passes)."""
    try:
        fn()
    except AssertionError as err:
        return str(err)
    return None


def test_check_feedback_in_the_students_notebook(monkeypatch):
    import torch

    from llmscratch.grading import check

    monkeypatch.delenv("LLMSCRATCH_GRADING_DIR", raising=False)

    def dists(f):
        def run():
            with check("ex02-check") as c:
                a, b = c.randn(5, 3), c.randn(7, 3)
                c.expect_close("pairwise_sq_dists(a, b)", f(a, b), want=lambda: torch.cdist(a, b) ** 2, atol=1e-4)
        return _feedback(run)

    assert dists(lambda a, b: ((a[:, None] - b[None]) ** 2).sum(-1)) is None
    assert "expected shape (5, 7), got (7, 5) (the same sizes in another order" in dists(lambda a, b: torch.zeros(7, 5))
    assert "got None (did you forget a `return`?)" in dists(lambda a, b: None)
    msg = dists(lambda a, b: torch.cdist(a, b) ** 2 + 1)
    assert "right shape (5, 7), wrong values: 35 of 35 differ" in msg and "largest difference 1" in msg
    assert "holds NaN" in dists(lambda a, b: torch.full((5, 7), float("nan")))

    def other(run):
        return _feedback(lambda: run(check("ex09-check").__enter__()))

    assert "a 0-d tensor: call .item()" in other(lambda c: c.expect_close("loss", torch.tensor(1.0), want=1.0))
    assert "expected int 3, got float 3.0" in other(lambda c: c.expect_equal("n", 3.0, want=3))
    assert "expected strictly decreasing values" in other(lambda c: c.expect_property("l", [3, 1, 2], "decreasing"))
    assert "should raise ValueError, but it returned int 1" in other(
        lambda c: c.expect_raises("f()", ValueError, lambda: 1))
    assert "message should mention ['42']" in other(
        lambda c: c.expect_raises("f()", ValueError, lambda: int("x"), mentions=("42",)))
    with pytest.raises(NotImplementedError):  # an unsolved exercise fails as unsolved, never as "did not raise"
        other(lambda c: c.expect_raises("f()", ValueError, lambda: (_ for _ in ()).throw(NotImplementedError())))
    with pytest.raises(ValueError, match="needs want="):
        other(lambda c: c.expect_close("x", 1.0))


def test_recordings_are_plain_data_and_the_judge_compares_them(tmp_path, monkeypatch):
    import importlib.util

    import numpy as np
    import torch

    from llmscratch.grading import check

    spec = importlib.util.spec_from_file_location("j", REPO / "pkg" / "llmscratch" / "grading" / "judge.py")
    judge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(judge)

    def record(folder, role, value):
        monkeypatch.setenv("LLMSCRATCH_GRADING_DIR", str(folder))
        monkeypatch.setenv("LLMSCRATCH_GRADING_SEED", "7")
        monkeypatch.setenv("LLMSCRATCH_GRADING_ROLE", role)
        folder.mkdir()
        with check("ex07-check") as c:
            x = c.randn(2, 3)
            c.expect_equal("to_device(batch)", value(x),
                           want=lambda: {"t": [x, ("a", 7)], "m": torch.empty(1, device="meta")})
            c.expect_close("loss", 1.5, want=1.5, atol=0.1)
        return str(folder)

    ref = judge.load_recording(record(tmp_path / "ref", "reference",
                                      lambda x: {"t": [x, ("a", 7)], "m": torch.empty(1, device="meta")}), "ex07-check")
    with np.load(tmp_path / "ref" / "ex07-check.npz", allow_pickle=False) as z:  # plain arrays, no objects
        assert z.files and all(z[k].dtype != object for k in z.files)
    good = record(tmp_path / "good", "student", lambda x: {"t": [x.clone(), ("a", 7)],
                                                          "m": torch.empty(1, device="meta")})
    bad = record(tmp_path / "bad", "student", lambda x: {"t": [x.T, ["a", 7]], "m": torch.empty(1)})
    assert judge.verdict({"obs": good, "cells": {}}, "ex07-check", ref) == ("passed", "")
    status, reason = judge.verdict({"obs": bad, "cells": {}}, "ex07-check", ref)
    assert status == "failed" and "to_device(batch)['t'][0]: expected shape (2, 3), got (3, 2)" in reason
    # A recording that is not plain data is refused, not unpickled; a missing one says why.
    (tmp_path / "bad" / "ex07-check.npz").write_bytes(b"not a zip")
    assert judge.verdict({"obs": bad, "cells": {}}, "ex07-check", ref)[1].startswith("this check's recording cannot")
    unsolved = {"obs": str(tmp_path), "cells": {"ex07-check": {"completed": True, "errors": [
        ["NotImplementedError", "implement it"]]}}}
    assert judge.verdict(unsolved, "ex07-check", ref) == ("failed", "NotImplementedError: implement it")
