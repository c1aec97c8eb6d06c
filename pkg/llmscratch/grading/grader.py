"""``llmscratch grade``: grade submitted lab notebooks into a gradebook (CSV), safely.

For each submission:

1. **Merge.** The submission's cells are matched to the lab's by cell id. Every graded check cell and the
   setup/parameters cells are taken from the instructor's lab (a student cannot edit, weaken or delete a check,
   or change its points); a graded cell the student deleted is put back after the nearest lab cell that is still
   there. Student cells keep their code but lose their outputs and tags. The lab's own solution code never enters
   the merged notebook.
2. **Execute.** The merged notebook runs with papermill (``SMOKE=True`` injected) in a separate worker process
   (``_worker.py``) with a per-cell time limit (the kernel is interrupted and the next cell runs), a total
   wall-clock limit enforced here (the worker and every process below it are killed), an address-space and a
   file-size limit (``setrlimit`` before the worker starts; the kernel inherits them), and capped output.
   A guard cell inserted before any student code snapshots what the checks rely on; each check runs on that
   restored state and prints an HMAC pass token only it can compute (see ``_guard.py``).
3. **Judge.** A judging notebook with one cell per (submission, graded cell) runs under ``pytest --nbval-lax``;
   each cell passes or fails with the verdict (status and reason) computed from the worker's report
   (``judge.py``); the outcomes are read from pytest's JUnit XML report.
4. **Gradebook.** One row per (student, exercise): points, max points, status (passed / failed / error /
   timeout / missing) and the reason; plus ``<out>_summary.csv`` with one row per student. Both are written
   atomically (temporary file + ``os.replace``); rows already in the gradebook for other students (or other labs)
   are kept, rows for re-graded students are replaced.

Student identity comes from the file name, ``<student_id>.ipynb`` or ``<student_id>__<anything>.ipynb``, unless
a roster CSV (columns ``file,student``) maps file names to students; roster students with no submission get
``missing`` rows.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import json
import os
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._guard import token  # the HMAC pass token the in-kernel guard prints

__all__ = ["GradingError", "Lab", "load_lab", "student_from_filename", "read_roster", "merge_submission",
           "suspicious_code", "grade", "add_cli", "STATUSES"]

STATUSES = ("passed", "failed", "error", "timeout", "missing")
HERE = Path(__file__).resolve().parent
GUARD_ID = "llmscratch-grader-guard"
_PROTECTED_TAGS = ("setup", "parameters")
_DROP_TAGS = ("injected-parameters", "papermill-error-cell-tag")


class GradingError(RuntimeError):
    """The grader itself cannot work (bad lab, unwritable output, bad roster); the message names the fix."""


# ----------------------------------------------------------------------------------------------------------- lab
@dataclass
class Lab:
    path: Path
    nb: dict
    graded: list[dict]  # [{"id", "exercise", "points", "index"}] in lab order
    protected: dict[str, dict] = field(default_factory=dict)  # setup / parameters cells by id

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def exercises(self) -> dict[str, int]:
        """Exercise name -> max points, in lab order."""
        out: dict[str, int] = {}
        for g in self.graded:
            out[g["exercise"]] = out.get(g["exercise"], 0) + g["points"]
        return out


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else str(s)


def _tags(cell: dict) -> list:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return tags if isinstance(tags, list) else []


def load_lab(path: str | Path) -> Lab:
    """Read the instructor's lab (the solution notebook) and list its graded cells."""
    path = Path(path)
    if not path.is_file():
        raise GradingError(f"lab notebook {path} not found; pass --lab solutions/chNN_name.ipynb")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GradingError(f"lab notebook {path} cannot be read as a notebook: {err}") from err
    graded, protected, seen = [], {}, set()
    for i, cell in enumerate(cells):
        cid = cell.get("id")
        if cell.get("cell_type") != "code":
            continue
        tags = _tags(cell)
        if "graded" in tags or any(t in tags for t in _PROTECTED_TAGS):
            if not cid or cid in seen:
                raise GradingError(f"{path}: graded/setup/parameters cell {i} needs a unique cell id")
            seen.add(cid)
        if "graded" in tags:
            meta = cell.get("metadata", {})
            points, exercise = meta.get("points"), meta.get("exercise")
            if not isinstance(points, int) or isinstance(points, bool) or points < 0:
                raise GradingError(f"{path}: graded cell {cid!r} needs integer metadata 'points' (got {points!r})")
            if not isinstance(exercise, str) or not exercise:
                raise GradingError(f"{path}: graded cell {cid!r} needs metadata 'exercise' (e.g. 'ex01_shapes')")
            graded.append({"id": cid, "exercise": exercise, "points": points, "index": i})
        elif any(t in tags for t in _PROTECTED_TAGS):
            protected[cid] = cell
    if not graded:
        raise GradingError(f"{path} has no graded cells (code cells tagged 'graded'); is it the lab notebook?")
    if {"setup", "parameters"} - {t for c in protected.values() for t in _tags(c)}:
        raise GradingError(f"{path} lacks a setup or parameters cell (see llmscratch.notebooks)")
    return Lab(path=path, nb=nb, graded=graded, protected=protected)


# ------------------------------------------------------------------------------------------- identity, roster
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def student_from_filename(path: str | Path) -> str:
    """``alice.ipynb`` -> ``alice``; ``alice__lab0_final.ipynb`` -> ``alice`` (the part before ``__``)."""
    stem = Path(path).name
    stem = stem[: -len(".ipynb")] if stem.endswith(".ipynb") else Path(stem).stem
    student = stem.split("__", 1)[0].strip()
    return student or stem


def read_roster(path: str | Path) -> dict[str, str]:
    """Roster CSV with columns ``file`` (a submission's file name) and ``student`` -> {file name: student}."""
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise GradingError(f"roster {path} cannot be read: {err}") from err
    cols = {c.strip().lower(): c for c in df.columns}
    if "file" not in cols or "student" not in cols:
        raise GradingError(f"roster {path} needs the columns 'file' and 'student' (found {list(df.columns)})")
    mapping = {}
    for f, s in zip(df[cols["file"]], df[cols["student"]]):
        f, s = Path(str(f).strip()).name, str(s).strip()
        if f and s:
            mapping[f] = s
    return mapping


# --------------------------------------------------------------------------------------------------- merging
def _read_submission(path: Path) -> tuple[dict | None, str | None]:
    try:
        raw = path.read_bytes()
    except OSError as err:
        return None, f"cannot read the file: {err.strerror or err}"
    if not raw.strip():
        return None, "the file is empty, not a notebook"
    if len(raw) > 50 * 2**20:
        return None, f"the file is {len(raw) / 2**20:.0f} MiB; a lab notebook is far smaller (is this the right file?)"
    try:
        nb = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        return None, f"not a valid notebook: the JSON cannot be read ({str(err)[:120]})"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return None, "not a valid notebook: no list of cells"
    return nb, None


def _fresh_code_cell(cid: str, source: str, tags=(), **meta) -> dict:
    md = {"tags": list(tags)}
    md.update(meta)
    return {"cell_type": "code", "id": cid, "metadata": md, "execution_count": None, "outputs": [], "source": source}


def merge_submission(lab: Lab, sub: dict, secret_path: str) -> dict:
    """The notebook to execute: the student's cells, with the lab's checks, setup and parameters restored."""
    graded_by_id = {g["id"]: g for g in lab.graded}
    lab_cells = {c.get("id"): c for c in lab.nb["cells"] if c.get("id")}
    used, merged, n = set(), [], 0
    reserved = set(graded_by_id) | set(lab.protected) | {GUARD_ID}
    for cell in sub["cells"]:
        if not isinstance(cell, dict):
            continue
        cid = cell.get("id") if isinstance(cell.get("id"), str) else None
        if cid in graded_by_id:
            if cid not in used:
                used.add(cid)
                merged.append(("graded", cid))
            continue
        if cid in lab.protected:  # setup / parameters: re-added at the top from the lab
            continue
        if cell.get("cell_type") != "code":
            continue  # markdown never runs; dropping it keeps the executed notebook small
        source = cell.get("source", "")
        source = "".join(s for s in source if isinstance(s, str)) if isinstance(source, list) else source
        if not isinstance(source, str):
            continue
        if cid is None or cid in reserved or cid in used or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cid):
            n += 1
            cid = f"student-{n}"
            while cid in used or cid in lab_cells:
                n += 1
                cid = f"student-{n}"
        used.add(cid)
        merged.append(("student", _fresh_code_cell(cid, source)))

    # Put back the graded cells the student deleted, after the nearest lab cell still present (else before the
    # nearest following one).
    present = lambda: [x[1] if x[0] == "graded" else x[1]["id"] for x in merged]  # noqa: E731
    order = [c.get("id") for c in lab.nb["cells"]]
    for g in lab.graded:
        if g["id"] in used:
            continue
        ids = present()
        pos = len(merged)
        before = [order[j] for j in range(g["index"] - 1, -1, -1) if order[j] in ids]
        after = [order[j] for j in range(g["index"] + 1, len(order)) if order[j] in ids]
        if before:
            pos = ids.index(before[0]) + 1
        elif after:
            pos = ids.index(after[0])
        merged.insert(pos, ("graded", g["id"]))
        used.add(g["id"])

    cells = []
    for cid, lab_cell in lab.protected.items():  # setup, then parameters (lab order), always first
        cells.append(_fresh_code_cell(cid, _src(lab_cell), tags=[t for t in _tags(lab_cell) if t in _PROTECTED_TAGS]))
    cells.sort(key=lambda c: 0 if "setup" in c["metadata"]["tags"] else 1)
    cells.append(_fresh_code_cell(GUARD_ID, (
        "# Inserted by the grader before any student code: snapshot what the checks rely on.\n"
        "import llmscratch.grading._guard as _llmscratch_guard\n"
        f"_llmscratch_guard.install({secret_path!r})\n"
        "del _llmscratch_guard\n")))
    for kind, item in merged:
        if kind == "student":
            cells.append(item)
            continue
        g = graded_by_id[item]
        check = _src(lab_cells[item])
        cells.append(_fresh_code_cell(item, (
            "# Graded check (the instructor's copy), run by the grader on a restored state.\n"
            "import sys as _llmscratch_sys\n"
            f"_llmscratch_sys.modules['llmscratch.grading._guard'].run_check({check!r}, {item!r})\n"),
            tags=["graded"], points=g["points"], exercise=g["exercise"]))
    return {"cells": cells, "metadata": copy.deepcopy(lab.nb.get("metadata", {})), "nbformat": 4, "nbformat_minor": 5}


#: Code a lab never needs but an attempt to tamper with the grader would: flagged in the summary for a human look.
_SUSPICIOUS = {
    "builtins": r"\b(__builtins__|builtins)\b",
    "sys.modules": r"sys\s*\.\s*modules",
    "grader internals": r"llmscratch\s*\.\s*grading|_llmscratch|LLMSCRATCH",
    "IPython internals": r"get_ipython|run_cell|showtraceback|excepthook|\.kernel\b|\bInteractiveShell\b",
    "frame/GC introspection": r"\bgc\s*\.|_getframe|\bf_back\b|\bf_locals\b|__closure__|settrace|setprofile|\bctypes\b",
    "exit/kill": r"os\s*\.\s*_exit|sys\s*\.\s*exit|\bos\s*\.\s*kill|signal\s*\.|\bquit\s*\(|\bexit\s*\(",
    "patching torch": r"torch\s*\.\s*(testing|Tensor|allclose|equal)\s*(\.\s*\w+\s*)?=(?!=)|setattr\s*\(\s*torch",
    "file system": r"\bopen\s*\(|os\s*\.\s*(listdir|walk|scandir|remove|unlink)|glob\s*\.|shutil\s*\.|Path\s*\(",
    "subprocess": r"\bsubprocess\b|os\s*\.\s*(system|popen|fork|exec)",
    "threads": r"\bthreading\b|\bmultiprocessing\b",
}


def suspicious_code(sub: dict, lab: Lab) -> list[str]:
    """Names of the tampering patterns found in the student's own code cells (not in cells from the lab)."""
    lab_sources = {_src(c) for c in lab.nb["cells"]}
    text = "\n".join(_src(c) for c in sub.get("cells", []) if isinstance(c, dict) and c.get("cell_type") == "code"
                     and c.get("id") not in {g["id"] for g in lab.graded} | set(lab.protected)
                     and _src(c) not in lab_sources)
    return [name for name, pattern in _SUSPICIOUS.items() if re.search(pattern, text)]


# ------------------------------------------------------------------------------------------------ execution
@dataclass
class Limits:
    cell_timeout: float = 60
    total_timeout: float = 600
    memory_mb: int = 4096
    max_output_cell: int = 200_000
    max_output_total: int = 2_000_000
    file_size_mb: int = 64


def _preexec(limits: Limits):
    def apply():
        os.setsid()
        mem = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        fsize = limits.file_size_mb * 2**20
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _kill_tree(pid: int) -> None:
    try:
        import psutil

        proc = psutil.Process(pid)
        procs = proc.children(recursive=True) + [proc]
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
    except Exception:
        pass
    try:
        os.killpg(pid, 9)
    except OSError:
        pass


def _kernel_env(workdir: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "HOME": str(workdir),  # keeps the kernel's ~ (caches, configs) out of the instructor's home
        "CUDA_VISIBLE_DEVICES": "",  # SMOKE grading runs on the CPU; CUDA's address-space reservation defeats RLIMIT_AS
        "MPLBACKEND": "Agg",
        "PYTHONDONTWRITEBYTECODE": "1",
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": str(workdir / ".ipython"),
        "JUPYTER_RUNTIME_DIR": str(workdir / ".jupyter"),
    })
    for key in list(env):
        if key.startswith("LLMSCRATCH_GRADE"):
            del env[key]
    return env


def run_submission(exec_nb: dict, tokens: dict[str, str], workdir: Path, limits: Limits,
                   keep: Path | None = None) -> dict:
    """Execute one merged notebook in a worker process; return the facts the judge needs."""
    nb_path = workdir / "submission.ipynb"
    nb_path.write_text(json.dumps(exec_nb), encoding="utf-8")
    cwd = workdir / "cwd"
    cwd.mkdir()
    read_fd, write_fd = os.pipe()
    job = {"fd": write_fd, "notebook": str(nb_path), "cwd": str(cwd), "parameters": {"SMOKE": True},
           "cell_timeout": limits.cell_timeout, "tokens": tokens, "kernel": "python3",
           "max_output_cell": limits.max_output_cell, "max_output_total": limits.max_output_total,
           "output": str(keep) if keep else None}
    facts: dict[str, Any] = {"cells": {}, "limits": {"cell": limits.cell_timeout, "total": limits.total_timeout}}
    start = time.monotonic()
    with open(workdir / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(HERE / "_worker.py")],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, pass_fds=(write_fd,),
                                cwd=cwd, env=_kernel_env(workdir), preexec_fn=_preexec(limits))
    os.close(write_fd)
    try:
        proc.stdin.write(json.dumps(job).encode())
        proc.stdin.close()
    except OSError:
        pass
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(read_fd, selectors.EVENT_READ)
    buf = b""
    eof = False
    while not eof:
        left = limits.total_timeout - (time.monotonic() - start)
        if left <= 0:
            facts["total_timeout"] = True
            break
        if not sel.select(timeout=min(left, 1.0)):
            if proc.poll() is not None and not sel.select(timeout=0):
                break
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            eof = True
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "cell":
                facts["cells"][event["id"]] = event
            elif kind == "died":
                facts["died"] = event.get("message") or "kernel died"
            elif kind == "failed":
                facts["failed"] = event.get("message")
            elif kind == "end":
                facts["finished"] = True
    sel.close()
    os.close(read_fd)
    if not facts.get("total_timeout"):
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    _kill_tree(proc.pid)  # the worker, its kernel, and anything they left behind
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass
    if not facts.get("finished") and not facts.get("total_timeout") and not facts.get("died"):
        tail = (workdir / "worker.log").read_bytes()[-2000:].decode("utf-8", "replace").strip().splitlines()
        facts["died"] = f"the grading process ended early (exit code {proc.returncode}): {' | '.join(tail[-3:])}"
    facts["seconds"] = round(time.monotonic() - start, 2)
    return facts


# ---------------------------------------------------------------------------------------------------- judging
def judge_with_nbval(facts: dict[str, dict], lab: Lab, workdir: Path, timeout: float = 300) -> dict:
    """Run the judging notebook under ``pytest --nbval-lax``; return {(key, cell id): (status, reason)}."""
    facts_path = workdir / "facts.json"
    facts_path.write_text(json.dumps(facts), encoding="utf-8")
    pairs = [(key, g["id"]) for key in sorted(facts) for g in lab.graded]
    cells = [_fresh_code_cell("load", (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('llmscratch_judge', {str(HERE / 'judge.py')!r})\n"
        "judge = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(judge)\n"
        f"J = judge.Judge({str(facts_path)!r})\n"))]
    cells += [_fresh_code_cell(f"j{i}", f"J.check({key!r}, {cid!r})\n") for i, (key, cid) in enumerate(pairs)]
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                      "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    nb_path = workdir / "judging.ipynb"
    nb_path.write_text(json.dumps(nb), encoding="utf-8")
    report = workdir / "judging.xml"
    env = dict(os.environ, HOME=str(workdir), CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", str(nb_path), f"--junitxml={report}", "-q",
           "-p", "no:cacheprovider", "-o", "addopts=", "-o", "junit_family=xunit2", "--rootdir", str(workdir)]
    try:
        run = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise GradingError(f"judging with nbval did not finish in {timeout} s") from err
    if not report.exists():
        raise GradingError(f"nbval (pytest --nbval-lax) produced no report; is nbval installed?\n{run.stdout[-800:]}"
                           f"{run.stderr[-800:]}")
    cases = ET.parse(report).getroot().iter("testcase")
    outcome: dict[int, tuple[str, str]] = {}
    for case in cases:
        m = re.search(r"Cell (\d+)", case.get("name", ""))
        if not m:
            continue
        idx = int(m.group(1))
        fail = case.find("failure")
        if fail is None:
            fail = case.find("error")
        if fail is None:
            outcome[idx] = ("passed", "")
            continue
        text = (fail.get("message") or "") + "\n" + (fail.text or "")
        v = re.search(r"LLMSCRATCH-VERDICT (\{.*?\})(?:\n|$|\\n|\x1b)", text)
        if v:
            try:
                data = json.loads(v.group(1))
                outcome[idx] = (data["status"], data["reason"])
                continue
            except (ValueError, KeyError):
                pass
        outcome[idx] = ("error", "the judge could not read this check's verdict")
    if outcome.get(0, ("error",))[0] != "passed":
        raise GradingError(f"the judging notebook could not load the facts: {outcome.get(0)}\n{run.stdout[-1500:]}")
    return {pair: outcome.get(i + 1, ("error", "no verdict from the judge")) for i, pair in enumerate(pairs)}


# ---------------------------------------------------------------------------------------------------- gradebook
_COLUMNS = ["lab", "student", "exercise", "points", "max_points", "status", "reason", "submission"]
_SUMMARY_COLUMNS = ["lab", "student", "points", "max_points", "percent", "exercises_passed", "exercises",
                    "status", "flags", "seconds", "submission"]


def summary_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}_summary{out.suffix or '.csv'}")


def _atomic_write_csv(df, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            df.to_csv(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _check_writable(out: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise GradingError(f"cannot write the gradebook: folder {parent} does not exist")
    if out.exists() and out.is_dir():
        raise GradingError(f"cannot write the gradebook: {out} is a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".llmscratch-write-test.", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise GradingError(f"cannot write the gradebook in {parent}: {err.strerror or err}") from err


def _write_gradebook(rows: list[dict], summary_rows: list[dict], out: Path):
    import pandas as pd

    new = pd.DataFrame(rows, columns=_COLUMNS)
    new_sum = pd.DataFrame(summary_rows, columns=_SUMMARY_COLUMNS)
    old, old_sum = None, None
    if out.exists():
        try:
            old = pd.read_csv(out, dtype={"student": str, "lab": str}, keep_default_na=False)
            if not set(_COLUMNS) <= set(old.columns):
                raise GradingError(f"{out} exists but is not a gradebook (columns {list(old.columns)}); "
                                   "choose another --out")
        except (ValueError, OSError) as err:
            raise GradingError(f"{out} exists but cannot be read as a gradebook ({err}); choose another --out") from err
    spath = summary_path(out)
    if spath.exists():
        try:
            old_sum = pd.read_csv(spath, dtype={"student": str, "lab": str, "flags": str}, keep_default_na=False)
        except (ValueError, OSError):
            old_sum = None
    keys = set(zip(new["lab"], new["student"]))

    def merged(old_df, new_df, columns, sort):
        if old_df is not None and len(old_df):
            mask = [(lab, st) not in keys for lab, st in zip(old_df["lab"].astype(str), old_df["student"].astype(str))]
            old_df = old_df.loc[mask, [c for c in columns if c in old_df.columns]]
            frames = [f for f in (old_df, new_df) if len(f)]
            new_df = pd.concat(frames, ignore_index=True) if frames else new_df
        return new_df.sort_values(sort, kind="stable").reset_index(drop=True)[columns]

    order = {}
    for r in rows:
        order.setdefault(r["exercise"], len(order))
    book = merged(old, new, _COLUMNS, ["lab", "student"])
    book = book.assign(_o=book["exercise"].map(lambda e: order.get(e, 10**6))).sort_values(
        ["lab", "student", "_o", "exercise"], kind="stable").drop(columns="_o").reset_index(drop=True)
    summ = merged(old_sum, new_sum, _SUMMARY_COLUMNS, ["lab", "student"])
    _atomic_write_csv(book, out)
    _atomic_write_csv(summ, spath)
    return book, summ


# --------------------------------------------------------------------------------------------------- grade()
@dataclass
class _Sub:
    path: Path
    student: str
    key: str


def _assign_students(submissions: list[Path], roster: dict[str, str] | None) -> tuple[list[_Sub], list[str]]:
    subs, by_student, warnings = [], {}, []
    for p in submissions:
        if roster is not None and p.name in roster:
            student = roster[p.name]
        else:
            student = student_from_filename(p)
            if roster is not None:
                warnings.append(f"{p.name} is not in the roster; graded as student {student!r} (from its name)")
        if student in by_student:
            raise GradingError(f"student {student!r} has two submissions: {by_student[student]} and {p}; "
                               "remove one, or map files to students with --roster")
        by_student[student] = p
        subs.append(_Sub(path=p, student=student, key=f"{len(subs):04d}:{student}"))
    return subs, warnings


def grade(lab: str | Path, submissions: list[str | Path], out: str | Path, roster: str | Path | None = None,
          jobs: int = 1, cell_timeout: float = 60, total_timeout: float = 600, memory_mb: int = 4096,
          keep: str | Path | None = None, log=print):
    """Grade ``submissions`` against ``lab``; write ``out`` and ``<out stem>_summary.csv``; return both frames.

    Raises :class:`GradingError` only when grading itself cannot work; a broken submission gets rows with
    status ``error`` / ``timeout`` / ``failed`` and never stops the others.
    """
    lab_obj = load_lab(lab)
    out = Path(out)
    _check_writable(out)
    if jobs < 1 or cell_timeout <= 0 or total_timeout <= 0 or memory_mb < 256:
        raise GradingError("need --jobs >= 1, positive time limits and --memory-mb >= 256")
    roster_map = read_roster(roster) if roster else None
    paths = [Path(p) for p in submissions]
    subs, warnings = _assign_students(paths, roster_map)
    for w in warnings:
        log(f"warning: {w}")
    keep_dir = Path(keep) if keep else None
    if keep_dir:
        keep_dir.mkdir(parents=True, exist_ok=True)
    limits = Limits(cell_timeout=cell_timeout, total_timeout=total_timeout, memory_mb=memory_mb)

    with tempfile.TemporaryDirectory(prefix="llmscratch-grade-") as tmp:
        tmp = Path(tmp)
        facts: dict[str, dict] = {}
        flags: dict[str, list[str]] = {}

        def one(i: int, s: _Sub) -> tuple[str, dict]:
            nb, problem = _read_submission(s.path)
            if problem:
                return s.key, {"invalid": problem, "cells": {}, "seconds": 0.0}
            flags[s.key] = suspicious_code(nb, lab_obj)
            work = tmp / f"s{i:04d}"
            work.mkdir()
            secret = secrets.token_bytes(32)
            secret_path = work / "secret"
            secret_path.write_bytes(secret)
            os.chmod(secret_path, 0o600)
            tokens = {g["id"]: token(secret, g["id"]) for g in lab_obj.graded}
            try:
                exec_nb = merge_submission(lab_obj, nb, str(secret_path))
            except Exception as err:  # a notebook so odd that merging fails is the submission's problem
                return s.key, {"invalid": f"not a valid notebook: {type(err).__name__}: {err}", "cells": {}}
            target = keep_dir / f"{s.student}.ipynb" if keep_dir else None
            return s.key, run_submission(exec_nb, tokens, work, limits, keep=target)

        start = time.monotonic()
        with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(one, i, s): s for i, s in enumerate(subs)}
            for fut in cf.as_completed(futures):
                s = futures[fut]
                try:
                    key, f = fut.result()
                except Exception as err:  # grading one submission must never stop the others
                    key, f = s.key, {"failed": f"{type(err).__name__}: {err}", "cells": {}}
                facts[key] = f
                log(f"ran {s.path.name} ({s.student}) in {f.get('seconds', 0):.1f} s")
        elapsed = time.monotonic() - start
        verdicts = judge_with_nbval(facts, lab_obj, tmp) if subs else {}

    rows, summary_rows = [], []
    exercises = lab_obj.exercises
    for s in subs:
        f = facts[s.key]
        per_ex: dict[str, dict] = {}
        for g in lab_obj.graded:
            status, reason = verdicts[(s.key, g["id"])]
            e = per_ex.setdefault(g["exercise"], {"points": 0, "status": "passed", "reasons": []})
            if status == "passed":
                e["points"] += g["points"]
            else:
                if e["status"] == "passed":
                    e["status"] = status
                e["reasons"].append(f"{g['id']}: {reason}")
        for ex, max_points in exercises.items():
            e = per_ex[ex]
            rows.append({"lab": lab_obj.name, "student": s.student, "exercise": ex, "points": e["points"],
                         "max_points": max_points, "status": e["status"], "reason": "; ".join(e["reasons"]),
                         "submission": s.path.name})
        pts = sum(per_ex[e]["points"] for e in exercises)
        total = sum(exercises.values())
        state = "error" if f.get("invalid") or f.get("died") or f.get("failed") else (
            "timeout" if f.get("total_timeout") else "graded")
        fl = list(flags.get(s.key, []))
        if any(c.get("threads") for c in f.get("cells", {}).values()):
            fl.append("threads running during checks")
        if any(c.get("truncated") for c in f.get("cells", {}).values()):
            fl.append("output truncated")
        summary_rows.append({"lab": lab_obj.name, "student": s.student, "points": pts, "max_points": total,
                             "percent": round(100 * pts / total, 1) if total else 0.0,
                             "exercises_passed": sum(per_ex[e]["status"] == "passed" for e in exercises),
                             "exercises": len(exercises), "status": state, "flags": "; ".join(fl),
                             "seconds": f.get("seconds", 0.0), "submission": s.path.name})
    if roster_map:
        graded_students = {s.student for s in subs}
        for student in sorted(set(roster_map.values()) - graded_students):
            for ex, max_points in exercises.items():
                rows.append({"lab": lab_obj.name, "student": student, "exercise": ex, "points": 0,
                             "max_points": max_points, "status": "missing", "reason": "no submission",
                             "submission": ""})
            summary_rows.append({"lab": lab_obj.name, "student": student, "points": 0,
                                 "max_points": sum(exercises.values()), "percent": 0.0, "exercises_passed": 0,
                                 "exercises": len(exercises), "status": "missing", "flags": "", "seconds": 0.0,
                                 "submission": ""})
    book, summ = _write_gradebook(rows, summary_rows, out)
    if subs:
        log(f"graded {len(subs)} submission(s) in {elapsed:.1f} s ({elapsed / len(subs):.2f} s per submission, "
            f"{jobs} job(s)); gradebook: {out}, summary: {summary_path(out)}")
    return book, summ


# ------------------------------------------------------------------------------------------------------- CLI
def _cmd_grade(args: argparse.Namespace) -> int:
    try:
        grade(args.lab, args.submissions, args.out, roster=args.roster, jobs=args.jobs,
              cell_timeout=args.cell_timeout, total_timeout=args.timeout, memory_mb=args.memory_mb, keep=args.keep)
    except GradingError as err:
        print(f"grading failed: {err}", file=sys.stderr)
        return 2
    return 0


def add_cli(sub: Any) -> None:
    p = sub.add_parser("grade", help="grade submitted lab notebooks into a gradebook CSV",
                       description="Grade submissions against a lab. Student ids come from file names "
                                   "(<student>.ipynb or <student>__anything.ipynb) unless --roster maps them.")
    p.add_argument("--lab", required=True, help="the instructor's lab notebook, e.g. solutions/ch00_pytorch_warmup.ipynb")
    p.add_argument("submissions", nargs="*", help="submitted .ipynb files")
    p.add_argument("--out", default="gradebook.csv", help="gradebook CSV (default gradebook.csv); the per-student "
                                                          "summary goes next to it as <stem>_summary.csv")
    p.add_argument("--roster", help="CSV with columns file,student (file = a submission's file name)")
    p.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel (default 1)")
    p.add_argument("--cell-timeout", type=float, default=60, help="seconds per cell (default 60)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per submission in all (default 600)")
    p.add_argument("--memory-mb", type=int, default=4096, help="address-space limit of the kernel, MiB (default 4096)")
    p.add_argument("--keep", help="folder to keep each executed notebook in (<student>.ipynb), as feedback")
    p.set_defaults(func=_cmd_grade)
