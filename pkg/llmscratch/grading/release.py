"""``llmscratch release``: write the student notebooks (``exercises/``) from the solution notebooks (``solutions/``).

The rules (the same ones ``tests/test_release.py`` checks):

- In every code cell, each block of lines from ``# BEGIN SOLUTION`` to ``# END SOLUTION`` (each marker alone on
  its line, indented like the code it wraps) is replaced by ONE line, at the markers' indentation::

      raise NotImplementedError("<hint>")

  The hint is the text of a ``# HINT: <text>`` line if that is the first line inside the block, else a generic
  hint naming the function the student has to write. The block must sit inside a function (or method) body, so
  that an unsolved notebook still runs every cell and fails exactly at the graded checks that call it.
- Outputs and execution counts are cleared; the records a run leaves in metadata (papermill's and Jupyter's
  ``execution`` timings, the notebook-level ``papermill`` block, widget state) are dropped with them.
  Everything else (cell ids, cell metadata such as tags and points, markdown, the notebook metadata) is kept.
- The JSON is written deterministically (sorted keys, one-space indent, sources split into lines, trailing
  newline), so releasing twice gives the same bytes and ``release --check`` can compare files.

``release`` and ``release --check`` also run the static checks of :mod:`llmscratch.grading.static` on every lab
(graded cells self-contained, in the check format; no exercise repeated across labs) and exit 1 on a problem.

A solution notebook that breaks a rule (markers unbalanced or nested, a block outside a function body, a cell
without an id, markers in a graded check cell) raises :class:`ReleaseError` naming the cell and the fix.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

from ..utils import atomic_write

__all__ = ["ReleaseError", "stub_source", "release_notebook", "release_all", "dumps_notebook", "add_cli"]

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
HINT = "# HINT:"
GRADED_TAG = "graded"

# Metadata a run writes (timings, widget state): cleared with the outputs so that exercises do not change when the
# solution notebook is merely re-executed.
_RUN_CELL_METADATA = ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled")
_RUN_NOTEBOOK_METADATA = ("papermill", "widgets")


class ReleaseError(ValueError):
    """A solution notebook breaks the release rules; the message names the notebook, the cell and the fix."""


def _cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _python_only(source: str) -> str:
    """The cell text with IPython magics (``%x``, ``!x``) turned into valid Python, line numbers unchanged."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        transformed = TransformerManager().transform_cell(source)
        if transformed.count("\n") == source.count("\n") + (0 if source.endswith("\n") else 1):
            return transformed
    except Exception:  # IPython missing or a transform it cannot do: parse the raw text
        pass
    return source


def _quote(hint: str) -> str:
    return '"' + hint.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _enclosing_function(tree: ast.AST, lineno: int) -> ast.AST | None:
    """The innermost function whose body holds the statement at ``lineno`` (1-based), or None."""
    found = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any(stmt.lineno <= lineno <= (stmt.end_lineno or stmt.lineno) for stmt in node.body):
                if found is None or node.lineno > found.lineno:
                    found = node
    return found


def stub_source(source: str, where: str = "cell") -> str:
    """Return ``source`` with every solution block replaced by its ``raise NotImplementedError`` stub.

    ``where`` names the cell in error messages (e.g. ``"solutions/ch00.ipynb, cell 'ex01-solution'"``).
    Raises :class:`ReleaseError` for unbalanced or nested markers and for a block outside a function body.
    """
    lines = source.splitlines(keepends=True)
    out: list[str] = []
    stubs: list[tuple[int, str | None]] = []  # (index in `out` of the raise line, hint or None)
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped == END:
            raise ReleaseError(f"{where}: line {i + 1} has {END!r} without a {BEGIN!r} before it")
        if stripped != BEGIN:
            if BEGIN in stripped or END in stripped:
                raise ReleaseError(
                    f"{where}: line {i + 1} mentions a solution marker but is not the marker alone on its line: "
                    f"{lines[i].rstrip()!r}. Put '{BEGIN}' / '{END}' on their own lines."
                )
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        start = i
        j = i + 1
        while j < len(lines) and lines[j].strip() != END:
            if lines[j].strip() == BEGIN:
                raise ReleaseError(
                    f"{where}: line {j + 1} opens a second {BEGIN!r} inside the block opened on line {start + 1}; "
                    "solution blocks cannot nest"
                )
            j += 1
        if j == len(lines):
            raise ReleaseError(f"{where}: the {BEGIN!r} on line {start + 1} has no {END!r}; close the block")
        end_indent = lines[j][: len(lines[j]) - len(lines[j].lstrip())]
        if end_indent != indent:
            raise ReleaseError(
                f"{where}: the markers on lines {start + 1} and {j + 1} are indented differently; "
                "indent both like the code they wrap"
            )
        body = lines[start + 1 : j]
        hint = None
        if body and body[0].strip().startswith(HINT):
            hint = body[0].strip()[len(HINT) :].strip() or None
        newline = "\n" if lines[j].endswith("\n") else ""
        stubs.append((len(out), hint))
        out.append(f"{indent}raise NotImplementedError(__HINT__){newline}")
        i = j + 1

    if not stubs:
        return source
    # Check that every stub sits in a function body, and name that function in the generic hint.
    text = "".join(out)
    try:
        tree = ast.parse(_python_only(text.replace("__HINT__", '""')))
    except SyntaxError as err:
        raise ReleaseError(f"{where}: the released cell is not valid Python ({err.msg}, line {err.lineno})") from err
    line_of = {}
    offset = 0
    for k, line in enumerate(out):
        line_of[k] = offset + 1
        offset += 1
    for idx, hint in stubs:
        func = _enclosing_function(tree, line_of[idx])
        if func is None:
            raise ReleaseError(
                f"{where}: a solution block (released line {line_of[idx]}) is not inside a function body. "
                "Wrap the solution in a function (or method) so that the unsolved notebook still runs."
            )
        if hint is None:
            hint = f"implement {func.name}() (replace this line with your solution)"
        out[idx] = out[idx].replace("__HINT__", _quote(hint))
    return "".join(out)


def _split_lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def dumps_notebook(nb: dict) -> str:
    """Deterministic notebook JSON, the layout Jupyter itself writes (sorted keys, indent 1, sources as lines)."""
    nb = json.loads(json.dumps(nb))  # deep copy
    for cell in nb.get("cells", []):
        if isinstance(cell.get("source"), str):
            cell["source"] = _split_lines(cell["source"])
        for out in cell.get("outputs", []) or []:
            if isinstance(out.get("text"), str):
                out["text"] = _split_lines(out["text"])
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def _load(path: Path) -> dict:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReleaseError(f"{path}: cannot read it as a notebook ({err})") from err
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ReleaseError(f"{path}: not a Jupyter notebook (no 'cells' list)")
    return nb


def release_notebook(solution: dict | str | Path, name: str | None = None) -> str:
    """Return the released (student) notebook of one solution notebook, as the JSON text to write.

    ``solution`` is a path or an already loaded notebook dict (nbformat 4.5+, every cell with an ``id``).
    """
    if isinstance(solution, (str, Path)):
        name = name or str(solution)
        nb = _load(Path(solution))
    else:
        nb = json.loads(json.dumps(solution))
    name = name or "notebook"
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) < (4, 5):
        raise ReleaseError(
            f"{name}: nbformat {nb.get('nbformat')}.{nb.get('nbformat_minor')} has no cell ids; save it with "
            "Jupyter >= 3 (nbformat 4.5) so that graded cells keep stable ids"
        )
    for n, cell in enumerate(nb["cells"]):
        cid = cell.get("id")
        if not cid:
            raise ReleaseError(f"{name}: cell {n} has no 'id'; give every cell a stable id")
        where = f"{name}, cell {n} (id {cid!r})"
        meta = cell.get("metadata", {})
        for key in _RUN_CELL_METADATA:
            meta.pop(key, None)
        if cell.get("cell_type") != "code":
            continue
        src = _cell_source(cell)
        if GRADED_TAG in meta.get("tags", []) and (BEGIN in src or END in src):
            raise ReleaseError(f"{where}: a graded check cell holds solution markers; checks are never stubbed")
        cell["source"] = stub_source(src, where)
        cell["outputs"] = []
        cell["execution_count"] = None
    for key in _RUN_NOTEBOOK_METADATA:
        nb.get("metadata", {}).pop(key, None)
    return dumps_notebook(nb)


def release_all(
    solutions: str | Path = "solutions",
    exercises: str | Path = "exercises",
    check: bool = False,
    notebooks: list[str | Path] | None = None,
) -> list[Path]:
    """Release every ``solutions/*.ipynb`` (or just ``notebooks``) into ``exercises/``.

    Returns the exercise files that were (``check=False``) or would be (``check=True``) changed; with
    ``check=True`` nothing is written, and an exercise with no solution left is reported as stale too.
    """
    solutions, exercises = Path(solutions), Path(exercises)
    if notebooks:
        sources = [Path(p) for p in notebooks]
    else:
        if not solutions.is_dir():
            raise ReleaseError(
                f"no solutions folder at {solutions.resolve()}: run from the repository root or pass --solutions"
            )
        sources = sorted(p for p in solutions.glob("*.ipynb"))
    changed: list[Path] = []
    expected_names = set()
    for src in sources:
        text = release_notebook(src)
        target = exercises / src.name
        expected_names.add(src.name)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        changed.append(target)
        if not check:
            exercises.mkdir(parents=True, exist_ok=True)
            with atomic_write(target, "w", encoding="utf-8") as fh:
                fh.write(text)
    if check and not notebooks and exercises.is_dir():
        changed += [p for p in sorted(exercises.glob("*.ipynb")) if p.name not in expected_names]
    return changed


def _cmd_release(args) -> int:
    from .static import all_problems

    try:
        changed = release_all(args.solutions, args.exercises, check=args.check, notebooks=args.notebooks)
    except ReleaseError as err:
        print(f"release failed: {err}", file=sys.stderr)
        return 2
    problems = all_problems(args.solutions) if Path(args.solutions).is_dir() else []
    if problems:  # graded cells that are not self-contained, or an exercise repeated across labs
        print("the labs' graded cells break the check format (see llmscratch.grading.check):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
    if args.check:
        if changed:
            print("exercises/ is out of date; run `llmscratch release`. Files that differ:", file=sys.stderr)
            for p in changed:
                print(f"  {p}", file=sys.stderr)
            return 1
        print("exercises/ is up to date")
        return 1 if problems else 0
    for p in changed:
        print(f"wrote {p}")
    if not changed:
        print("exercises/ already up to date")
    return 1 if problems else 0


def add_cli(sub: Any) -> None:
    p = sub.add_parser("release", help="write exercises/ (student versions) from solutions/")
    p.add_argument("notebooks", nargs="*", help="solution notebooks to release (default: every solutions/*.ipynb)")
    p.add_argument("--solutions", default="solutions", help="folder of solution notebooks (default: solutions)")
    p.add_argument("--exercises", default="exercises", help="folder to write (default: exercises)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 and list the files that differ")
    p.set_defaults(func=_cmd_release)
