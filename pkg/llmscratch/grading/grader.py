"""``llmscratch grade``: grade submitted lab notebooks into a gradebook (CSV), safely.

For each submission:

1. **Merge.** The submission's cells are matched to the lab's by cell id. Every graded check cell and the
   setup/parameters cells are taken from the instructor's lab (a student cannot edit, weaken or delete a check,
   or change its points); a graded cell the student deleted is put back after the nearest lab cell that is still
   there. Student cells keep their code but lose their outputs and tags. The lab's own solution code never enters
   the merged notebook.
   In the graded cells every ``want=`` (the in-cell reference, for the student's own feedback) is removed, so
   no reference value exists in the student's kernel.
2. **Execute.** The merged notebook runs with papermill (``SMOKE=True`` injected) in a separate worker process
   (``_worker.py``) inside a bubblewrap sandbox (``sandbox.py``: no network, read-only system, only its own
   scratch folder writable, no view of the lab, the gradebook or other submissions), with a per-cell time limit
   (the kernel is interrupted and the next cell runs), a total wall-clock limit enforced here (the worker and
   every process below it are killed), an address-space and a file-size limit (``setrlimit``, inherited) and
   capped output. The graded cells only *observe*: ``llmscratch.grading.check`` records the values the student's
   code returns, on inputs drawn from this run's seed, as JSON + ``.npz`` in the scratch folder.
   The lab itself (the instructor's solution) runs once per ``grade`` call the same way, with the same seed:
   its recordings are the reference, and it must pass its own checks.
3. **Judge.** A judging notebook with one cell per (submission, graded cell) runs under ``pytest --nbval-lax``;
   each cell loads the two recordings and compares them (``judge.py`` with ``compare.py``: values within the
   lab's tolerances, shapes, dtypes, properties). No student code runs there, and nothing the student's kernel
   printed or reported decides a verdict; the worker's report only explains a failure (the error, a timeout).
   The outcomes are read from pytest's JUnit XML report.
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
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .check import GRADING_DIR_ENV, GRADING_ROLE_ENV, GRADING_SEED_ENV
from .gradebook import GradingError, check_writable, summary_path, write_gradebook
from .sandbox import bwrap_command, sandbox_status
from .static import lab_problems, strip_wants

__all__ = ["GradingError", "summary_path", "Lab", "load_lab", "student_from_filename", "read_roster",
           "merge_submission", "reference_notebook", "suspicious_code", "grade", "add_cli", "STATUSES"]

STATUSES = ("passed", "failed", "error", "timeout", "missing")
HERE = Path(__file__).resolve().parent
_PROTECTED_TAGS = ("setup", "parameters")
_DROP_TAGS = ("injected-parameters", "papermill-error-cell-tag")


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
            forbidden = meta.get("forbidden") or []
            if not isinstance(forbidden, list) or not all(isinstance(f, str) for f in forbidden):
                raise GradingError(f"{path}: graded cell {cid!r}: metadata 'forbidden' must be a list of names")
            graded.append({"id": cid, "exercise": exercise, "points": points, "index": i, "forbidden": forbidden})
        elif any(t in tags for t in _PROTECTED_TAGS):
            protected[cid] = cell
    if not graded:
        raise GradingError(f"{path} has no graded cells (code cells tagged 'graded'); is it the lab notebook?")
    if {"setup", "parameters"} - {t for c in protected.values() for t in _tags(c)}:
        raise GradingError(f"{path} lacks a setup or parameters cell (see llmscratch.notebooks)")
    problems = lab_problems(nb, str(path))
    if problems:
        raise GradingError("the lab's graded cells break the check format (see llmscratch.grading.check):\n  "
                           + "\n  ".join(problems))
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


def reference_notebook(lab: Lab) -> dict:
    """The lab itself (the instructor's solution), code cells only, outputs cleared: run for the reference."""
    cells = []
    for c in lab.nb["cells"]:
        if c.get("cell_type") == "code":
            tags = [t for t in _tags(c) if t in _PROTECTED_TAGS or t == "graded"]
            cells.append(_fresh_code_cell(str(c.get("id")), _src(c), tags=tags))
    return {"cells": cells, "metadata": copy.deepcopy(lab.nb.get("metadata", {})), "nbformat": 4, "nbformat_minor": 5}


def merge_submission(lab: Lab, sub: dict) -> dict:
    """The notebook to execute: the student's cells, with the lab's checks, setup and parameters restored."""
    graded_by_id = {g["id"]: g for g in lab.graded}
    lab_cells = {c.get("id"): c for c in lab.nb["cells"] if c.get("id")}
    used, merged, n = set(), [], 0
    reserved = set(graded_by_id) | set(lab.protected)
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
    for kind, item in merged:
        if kind == "student":
            cells.append(item)
            continue
        g = graded_by_id[item]
        header = "# Graded check: the instructor's copy, its references removed by the grader\n"
        cells.append(_fresh_code_cell(item, header + strip_wants(_src(lab_cells[item])),
                                      tags=["graded"], points=g["points"], exercise=g["exercise"]))
    return {"cells": cells, "metadata": copy.deepcopy(lab.nb.get("metadata", {})), "nbformat": 4, "nbformat_minor": 5}


#: Code a lab never needs but an attempt to tamper with the grader would: flagged in the summary for a human look.
_SUSPICIOUS = {
    "builtins": r"\b(__builtins__|builtins)\b",
    "sys.modules": r"sys\s*\.\s*modules",
    "grader internals": r"llmscratch\s*\.\s*grading|_llmscratch|LLMSCRATCH|\.npz\b|np\s*\.\s*savez",
    "IPython internals": r"get_ipython|run_cell|showtraceback|excepthook|\.kernel\b|\bInteractiveShell\b",
    "frame/GC introspection": r"\bgc\s*\.|_getframe|\bf_back\b|\bf_locals\b|__closure__|settrace|setprofile|\bctypes\b",
    "exit/kill": r"os\s*\.\s*_exit|sys\s*\.\s*exit|\bos\s*\.\s*kill|signal\s*\.|\bquit\s*\(|\bexit\s*\(",
    "patching torch": r"torch\s*\.\s*(testing|Tensor|allclose|equal)\s*(\.\s*\w+\s*)?=(?!=)|setattr\s*\(\s*torch",
    "file system": r"\bopen\s*\(|os\s*\.\s*(listdir|walk|scandir|remove|unlink)|glob\s*\.|shutil\s*\.|Path\s*\(",
    "subprocess": r"\bsubprocess\b|os\s*\.\s*(system|popen|fork|exec)",
    "threads": r"\bthreading\b|\bmultiprocessing\b",
}


def suspicious_code(sub: dict, lab: Lab) -> list[str]:
    """Flags for the student's own code cells (not cells from the lab): tampering patterns, and the calls the lab
    names as ``forbidden`` for an exercise (e.g. ``torch.cdist`` where the exercise is to compute distances).

    A flag asks for a human look; it never changes a score.
    """
    lab_sources = {_src(c) for c in lab.nb["cells"]}
    text = "\n".join(_src(c) for c in sub.get("cells", []) if isinstance(c, dict) and c.get("cell_type") == "code"
                     and c.get("id") not in {g["id"] for g in lab.graded} | set(lab.protected)
                     and _src(c) not in lab_sources)
    flags = [name for name, pattern in _SUSPICIOUS.items() if re.search(pattern, text)]
    forbidden: dict[str, list[str]] = {}
    for g in lab.graded:
        for call in g.get("forbidden", []):
            pattern = r"(?<!\w)" + r"\s*\.\s*".join(map(re.escape, call.split("."))) + r"\b"
            if re.search(pattern, text) and call not in forbidden.setdefault(g["exercise"], []):
                forbidden[g["exercise"]].append(call)
    flags += [f"forbidden call in {ex}: {', '.join(calls)}" for ex, calls in forbidden.items() if calls]
    return flags


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


def _python() -> str:
    """The virtual environment's python, by a path without symlinked folders (the sandbox binds real paths)."""
    exe = Path(sys.prefix).resolve() / "bin" / Path(sys.executable).name
    return str(exe) if exe.exists() else sys.executable


def _kernel_env(workdir: Path, grading: dict[str, str]) -> dict:
    env = dict(os.environ)
    for key in list(env):  # no grading settings from the instructor's shell
        if key.startswith("LLMSCRATCH_GRADING"):
            env.pop(key)
    env.update(grading)
    env["PATH"] = os.pathsep.join([str(Path(_python()).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    env.update({
        "HOME": str(workdir),  # keeps the kernel's ~ (caches, configs) out of the instructor's home
        "CUDA_VISIBLE_DEVICES": "",  # SMOKE grading runs on the CPU; CUDA's address-space reservation defeats RLIMIT_AS
        "MPLBACKEND": "Agg",
        "PYTHONDONTWRITEBYTECODE": "1",
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": str(workdir / ".ipython"),
        "JUPYTER_RUNTIME_DIR": str(workdir / ".jupyter"),
    })
    for key in ("PWD", "OLDPWD"):  # do not tell student code where the instructor's checkout (and solutions/) is
        env.pop(key, None)
    return env


def run_submission(exec_nb: dict, workdir: Path, limits: Limits, seed: int, role: str = "student",
                   sandbox: bool = True, keep: Path | None = None) -> dict:
    """Execute one merged notebook in a (sandboxed) worker process; return the facts the judge needs.

    ``workdir`` is the submission's scratch folder, the only place the kernel can write; the graded cells
    record their observations in ``workdir/obs``.
    """
    workdir = workdir.resolve()
    nb_path = workdir / "submission.ipynb"
    nb_path.write_text(json.dumps(exec_nb), encoding="utf-8")
    cwd = workdir / "cwd"
    cwd.mkdir()
    obs = workdir / "obs"
    obs.mkdir()
    read_fd, write_fd = os.pipe()
    job = {"fd": write_fd, "notebook": str(nb_path), "cwd": str(cwd), "parameters": {"SMOKE": True},
           "cell_timeout": limits.cell_timeout, "kernel": "python3",
           "max_output_cell": limits.max_output_cell, "max_output_total": limits.max_output_total,
           "output": str(workdir / "executed.ipynb") if keep else None}
    facts: dict[str, Any] = {"cells": {}, "limits": {"cell": limits.cell_timeout, "total": limits.total_timeout},
                             "obs": str(obs)}
    from ..data import CACHE_ENV, cache_dir

    cache = cache_dir()  # the instructor's data cache, read-only for the kernel (its HOME is the scratch folder)
    env = _kernel_env(workdir, {GRADING_DIR_ENV: str(obs), GRADING_SEED_ENV: str(seed), GRADING_ROLE_ENV: role,
                                CACHE_ENV: str(cache)})
    cmd = [_python(), str(HERE / "_worker.py")]
    if sandbox:
        cmd = bwrap_command(cmd, workdir, data_dirs=[os.environ.get("LLMSCRATCH_DATA", ""), str(cache)])
    start = time.monotonic()
    with open(workdir / "worker.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                                pass_fds=(write_fd,), cwd=cwd, env=env, preexec_fn=_preexec(limits))
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
    if keep and (workdir / "executed.ipynb").is_file():
        import shutil

        shutil.copyfile(workdir / "executed.ipynb", keep)
    return facts


# ---------------------------------------------------------------------------------------------------- judging
def judge_with_nbval(facts: dict[str, dict], lab: Lab, workdir: Path, reference_obs: Path,
                     timeout: float = 300) -> dict:
    """Run the judging notebook under ``pytest --nbval-lax``; return {(key, cell id): (status, reason)}."""
    facts_path = workdir / "facts.json"
    facts_path.write_text(json.dumps(facts), encoding="utf-8")
    pairs = [(key, g["id"]) for key in sorted(facts) for g in lab.graded]
    cells = [_fresh_code_cell("load", (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('llmscratch_judge', {str(HERE / 'judge.py')!r})\n"
        "judge = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(judge)\n"
        f"J = judge.Judge({str(facts_path)!r}, {str(reference_obs)!r})\n"))]
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


# --------------------------------------------------------------------------------------------------- grade()
def secrets_seed() -> int:
    """A fresh seed for one grading run: the checks' inputs are not known before the run."""
    import secrets

    return secrets.randbelow(2**31)


def _threads_in(obs: str | None, cell_id: str) -> int:
    try:
        with open(Path(obs) / f"{cell_id}.json", encoding="utf-8") as fh:
            n = json.load(fh).get("threads", 0)
        return n if isinstance(n, int) else 0
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _more_threads(f: dict, ref: dict, lab: Lab) -> bool:
    """A flag (never a score): more threads alive during a check than in the solution's run."""
    return any(_threads_in(f.get("obs"), g["id"]) > _threads_in(ref["obs"], g["id"]) for g in lab.graded)


def _check_reference(ref: dict, lab: Lab) -> None:
    """The lab's own solution must run clean and record every graded cell; else grading cannot work."""
    problems = []
    for key in ("failed", "died", "total_timeout"):
        if ref.get(key):
            problems.append(f"{key}: {ref[key]}")
    for g in lab.graded:
        cell = ref.get("cells", {}).get(g["id"]) or {}
        if cell.get("errors"):
            ename, evalue = cell["errors"][0]
            problems.append(f"graded cell {g['id']!r} fails on the solution: {ename}: {evalue[:300]}")
        elif not (Path(ref["obs"]) / f"{g['id']}.json").is_file():
            problems.append(f"graded cell {g['id']!r} recorded nothing on the solution (no `with check(...)`?)")
    if problems:
        raise GradingError(f"the lab {lab.path} does not pass its own checks, so there is no reference:\n  "
                           + "\n  ".join(problems))



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
          keep: str | Path | None = None, require_sandbox: bool = False, sandbox: bool = True,
          seed: int | None = None, log=print):
    """Grade ``submissions`` against ``lab``; write ``out`` and ``<out stem>_summary.csv``; return both frames.

    Student code runs in the bubblewrap sandbox when it works here; otherwise (or with ``sandbox=False``) grading
    goes on with a warning, unless ``require_sandbox`` is set. ``seed`` (default: drawn at random) chooses the
    checks' inputs for this run; the lab's solution runs on the same inputs for the reference.

    Raises :class:`GradingError` only when grading itself cannot work; a broken submission gets rows with
    status ``error`` / ``timeout`` / ``failed`` and never stops the others.
    """
    lab_obj = load_lab(lab)
    out = Path(out)
    check_writable(out)
    if jobs < 1 or cell_timeout <= 0 or total_timeout <= 0 or memory_mb < 256:
        raise GradingError("need --jobs >= 1, positive time limits and --memory-mb >= 256")
    roster_map = read_roster(roster) if roster else None
    paths = [Path(p) for p in submissions]
    if not paths and not roster_map:
        raise GradingError("no submissions given: pass the .ipynb files to grade (and/or a --roster)")
    subs, warnings = _assign_students(paths, roster_map)
    for w in warnings:
        log(f"warning: {w}")
    keep_dir = Path(keep) if keep else None
    if keep_dir:
        keep_dir.mkdir(parents=True, exist_ok=True)
    limits = Limits(cell_timeout=cell_timeout, total_timeout=total_timeout, memory_mb=memory_mb)
    works, why = sandbox_status()
    use_sandbox = sandbox and works
    if not use_sandbox:
        if require_sandbox:
            raise GradingError(f"--require-sandbox: {why if not works else 'the sandbox was turned off'}")
        log(f"warning: grading WITHOUT a sandbox: {why if not works else 'turned off'}. Student code can read "
            "your files and reach the network; use --require-sandbox for assessed work.")
    seed = secrets_seed() if seed is None else int(seed)

    with tempfile.TemporaryDirectory(prefix="llmscratch-grade-") as tmp:
        tmp = Path(tmp)
        facts: dict[str, dict] = {}
        flags: dict[str, list[str]] = {}

        def reference() -> dict:
            work = tmp / "reference"
            work.mkdir()
            # The lab is trusted code: its run gets generous time limits, so that a tight --timeout meant for
            # students never leaves grading without a reference.
            ref_limits = Limits(cell_timeout=max(cell_timeout, 300), total_timeout=max(total_timeout, 1800),
                                memory_mb=memory_mb)
            return run_submission(reference_notebook(lab_obj), work, ref_limits, seed, role="reference",
                                  sandbox=use_sandbox)

        read = {s.key: _read_submission(s.path) for s in subs}

        def one(i: int, s: _Sub) -> tuple[str, dict]:
            nb, problem = read[s.key]
            if problem:
                return s.key, {"invalid": problem, "cells": {}, "seconds": 0.0}
            flags[s.key] = suspicious_code(nb, lab_obj)
            work = tmp / f"s{i:04d}"
            work.mkdir()
            try:
                exec_nb = merge_submission(lab_obj, nb)
            except Exception as err:  # a notebook so odd that merging fails is the submission's problem
                return s.key, {"invalid": f"not a valid notebook: {type(err).__name__}: {err}", "cells": {}}
            target = keep_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", s.student) + ".ipynb") if keep_dir else None
            return s.key, run_submission(exec_nb, work, limits, seed, sandbox=use_sandbox, keep=target)

        start = time.monotonic()
        with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
            # The reference runs once, alongside the students, unless no submission can be run at all.
            ref_future = pool.submit(reference) if any(p is None for _, p in read.values()) else None
            futures = {pool.submit(one, i, s): s for i, s in enumerate(subs)}
            for fut in cf.as_completed(futures):
                s = futures[fut]
                try:
                    key, f = fut.result()
                except Exception as err:  # grading one submission must never stop the others
                    key, f = s.key, {"failed": f"{type(err).__name__}: {err}", "cells": {}}
                facts[key] = f
                log(f"ran {s.path.name} ({s.student}) in {f.get('seconds', 0):.1f} s")
            ref = ref_future.result() if ref_future else None
        elapsed = time.monotonic() - start
        if ref is not None:
            _check_reference(ref, lab_obj)
            verdicts = judge_with_nbval(facts, lab_obj, tmp, Path(ref["obs"]))
            for f in facts.values():
                f["threads"] = _more_threads(f, ref, lab_obj)
        else:  # nothing ran: every submission is unreadable
            verdicts = {(key, g["id"]): ("error", f["invalid"]) for key, f in facts.items() for g in lab_obj.graded}

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
        if f.get("threads"):
            fl.append("threads running during checks")
        if not use_sandbox:
            fl.append("no sandbox")
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
    missing = set(roster_map.values()) - {s.student for s in subs} if roster_map else set()
    book, summ = write_gradebook(rows, summary_rows, out, weak=missing)
    if subs:
        log(f"graded {len(subs)} submission(s) in {elapsed:.1f} s ({elapsed / len(subs):.2f} s per submission, "
            f"{jobs} job(s)); gradebook: {out}, summary: {summary_path(out)}")
    return book, summ


# ------------------------------------------------------------------------------------------------------- CLI
def _cmd_grade(args: argparse.Namespace) -> int:
    try:
        grade(args.lab, args.submissions, args.out, roster=args.roster, jobs=args.jobs,
              cell_timeout=args.cell_timeout, total_timeout=args.timeout, memory_mb=args.memory_mb, keep=args.keep,
              require_sandbox=args.require_sandbox, seed=args.seed)
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
    p.add_argument("--require-sandbox", action="store_true",
                   help="refuse to grade unless the bubblewrap sandbox works here (use it for assessed work)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the checks' inputs (default: a fresh random seed per run)")
    p.set_defaults(func=_cmd_grade)
