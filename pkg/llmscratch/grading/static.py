"""Static checks of the labs' graded cells, and the one rewrite the grader makes to them.

- :func:`lab_problems` — each graded cell is one ``with check("<its id>") as c:`` block, draws inputs from ``c``
  (values fixed in every run could be hard-coded), passes references as ``want=`` (never positionally), and
  reads no name that only an editable cell defines: it may read the names
  it defines itself, builtins, names of the protected ``setup``/``parameters`` cells that no editable cell
  rebinds (a SMOKE override makes a parameter editable), the exercise functions
  (names a cell holding ``# BEGIN SOLUTION`` defines at top level) and the names listed in the cell's
  metadata ``uses``. A helper (``check_close``) or object (``cfg``, ``_tok``) from an editable cell, or from
  another graded cell, is an error: the student can redefine it, or it is missing when that cell failed.
- :func:`repeated_exercises` — no two labs share an exercise id or an exercise function name.
- :func:`strip_wants` — the grader removes every ``want=`` argument from a graded cell before the student's
  kernel runs it, so that no reference value exists in that kernel (a patched recorder has nothing to copy).

``llmscratch release`` and ``release --check`` run the first two on every lab; ``tests/test_release.py`` too.
"""

from __future__ import annotations

import ast
import builtins
import json
from pathlib import Path

__all__ = ["lab_problems", "repeated_exercises", "strip_wants", "exercise_names", "KNOWN_REPEATS"]

BEGIN = "# BEGIN SOLUTION"
EXPECTS = ("expect_close", "expect_equal")
INPUTS = ("randn", "rand", "randint", "random", "randomize", "gen", "seed")
_BUILTINS = set(dir(builtins)) | {"get_ipython", "display", "__file__"}

#: Repeats that exist today and are waived until the lab rewrite (another issue) removes them. The test of this
#: module fails when a waived repeat disappears, so that the waiver is deleted with it.
KNOWN_REPEATS = {
    "function split_heads": ("ch00_pytorch_warmup", "ch02_attention"),
    "function make_windows": ("ch01_text_to_vectors", "ch03_gpt"),
}


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else str(s)


def _tags(cell: dict) -> list:
    return list((cell.get("metadata") or {}).get("tags") or [])


def _parse(source: str) -> ast.Module | None:
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)
    except Exception:
        pass
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def _defined(tree: ast.AST) -> set[str]:
    """Every name the code binds anywhere (assignments, imports, defs, loop/with/except targets, arguments)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
    return out


def _top_level_defs(tree: ast.Module) -> set[str]:
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
    return out


def exercise_names(nb: dict) -> set[str]:
    """The functions/classes the student writes: defined at top level in cells holding ``# BEGIN SOLUTION``."""
    out: set[str] = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and BEGIN in _src(cell):
            tree = _parse(_src(cell))
            if tree is not None:
                out |= _top_level_defs(tree)
    return out


def _check_calls(tree: ast.AST) -> list[ast.Call]:
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", "")) == "check":
                    calls.append(call)
    return calls


def lab_problems(nb: dict, name: str = "lab") -> list[str]:
    """Problems with the graded cells of one lab notebook (empty when it follows the check format)."""
    problems: list[str] = []
    exercises = exercise_names(nb)
    protected: set[str] = set()
    editable_defs: dict[str, str] = {}  # name -> id of an editable (or other graded) cell that binds it
    graded = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        tree = _parse(_src(cell))
        tags = _tags(cell)
        if tree is None:
            if "graded" in tags:
                problems.append(f"{name}: graded cell {cell.get('id')!r} is not valid Python")
            continue
        if "setup" in tags or "parameters" in tags:
            protected |= _defined(tree)
        elif "graded" in tags:
            graded.append((cell, tree))
        else:
            for n in _defined(tree):
                editable_defs.setdefault(n, str(cell.get("id")))
    for cell, tree in graded:
        cid = str(cell.get("id"))
        where = f"{name}, graded cell {cid!r}"
        calls = _check_calls(tree)
        names = [c.args[0].value for c in calls if c.args and isinstance(c.args[0], ast.Constant)]
        if names != [cid]:
            problems.append(f"{where}: needs exactly one `with check({cid!r}) as c:` block (found {names})")
        handles = {item.optional_vars.id for node in ast.walk(tree) if isinstance(node, ast.With)
                   for item in node.items if item.context_expr in calls and isinstance(item.optional_vars, ast.Name)}
        if calls and not any(isinstance(x, ast.Attribute) and isinstance(x.value, ast.Name) and x.value.id in handles
                             and x.attr in INPUTS for x in ast.walk(tree)):
            problems.append(f"{where}: draws no input from the check (c.randn, c.randint, c.random, c.randomize, "
                            "...): its expected values are the same in every run, so a student can hard-code them")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EXPECTS
                    and len(node.args) > 2):
                problems.append(f"{where}, line {node.lineno}: pass the reference of {node.func.attr} as want=..., "
                                "not positionally (the grader removes want= from the student's kernel)")
        own = _defined(tree)
        uses = set((cell.get("metadata") or {}).get("uses") or [])
        for n in sorted({x.id for x in ast.walk(tree) if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Load)}):
            if n in own or n in _BUILTINS or n in exercises or n in uses:
                continue
            if n in protected and n not in editable_defs:  # a parameter an editable cell rebinds is editable
                continue
            if n in editable_defs:
                problems.append(f"{where}: reads {n!r}, which only cell {editable_defs[n]!r} defines; a check imports "
                                f"and builds what it uses (or list {n!r} in the cell's metadata 'uses' if the "
                                "student writes it)")
            else:
                other = [str(c.get("id")) for c, t in graded if c is not cell and n in _defined(t)]
                src = f"only graded cell {other[0]!r} defines it" if other else "no cell of the lab defines it"
                problems.append(f"{where}: reads {n!r}, but {src}; import or build it in this check")
    return problems


def repeated_exercises(labs: dict[str, dict]) -> list[str]:
    """Exercise ids or exercise function names that more than one lab uses, except :data:`KNOWN_REPEATS`."""
    seen: dict[str, list[str]] = {}
    for lab, nb in sorted(labs.items()):
        keys = {f"function {n}" for n in exercise_names(nb)}
        keys |= {f"exercise {(c.get('metadata') or {}).get('exercise')}" for c in nb.get("cells", [])
                 if "graded" in _tags(c)}
        for k in keys:
            seen.setdefault(k, []).append(lab)
    out = []
    for k, where in sorted(seen.items()):
        if len(where) > 1 and tuple(where) != KNOWN_REPEATS.get(k):
            out.append(f"{k} appears in more than one lab: {', '.join(where)}; no two labs repeat an exercise")
    return out


def all_problems(solutions: str | Path) -> list[str]:
    """:func:`lab_problems` of every ``solutions/*.ipynb`` and :func:`repeated_exercises` across them."""
    labs = {}
    for p in sorted(Path(solutions).glob("*.ipynb")):
        labs[p.stem] = json.loads(p.read_text(encoding="utf-8"))
    problems = [m for stem, nb in labs.items() for m in lab_problems(nb, f"{Path(solutions).name}/{stem}.ipynb")]
    return problems + repeated_exercises(labs)


class _StripWants(ast.NodeTransformer):
    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Attribute) and node.func.attr in EXPECTS:
            node.keywords = [k for k in node.keywords if k.arg != "want"]
        return node


def strip_wants(source: str) -> str:
    """``source`` with every ``want=`` argument of ``expect_close``/``expect_equal`` removed (comments are lost)."""
    tree = _parse(source)
    if tree is None:
        raise ValueError("a graded cell is not valid Python")
    return ast.unparse(_StripWants().visit(tree)) + "\n"
