"""The notebook conventions every chapter, lab and exercise follows, and the tools that check and run them.

A notebook of this course has, as its first two *code* cells (markdown such as the title may come before):

1. the **setup** cell (tag ``setup``): installs this package when the notebook runs in Colab, and does nothing
   anywhere else. Its text is exactly :func:`setup_cell_source` (the tests compare), so the install line and
   the repository URL are the same in every notebook;
2. the **parameters** cell (tag ``parameters``, the tag papermill looks for): ``SMOKE``, ``DEVICE``, ``SEED``
   and the sizes the chapter trains with. CI runs ``papermill -p SMOKE True``; SMOKE only shrinks sizes and
   step counts, it never switches to other code.

``templates/chapter.ipynb`` is a notebook that follows these rules; copy it to start a chapter.
:func:`check_conventions` lists what a notebook gets wrong; :func:`execute` runs one with papermill.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

__all__ = [
    "REPO_URL",
    "PIP_SPEC",
    "SETUP_TAG",
    "PARAMETERS_TAG",
    "REQUIRED_PARAMETERS",
    "setup_cell_source",
    "parameters_cell_source",
    "colab_url",
    "read_notebook",
    "check_conventions",
    "parameter_names",
    "execute",
]

#: The course repository. The one other place that names it is ``_config.yml`` (``repository.url``), which the
#: book's launch buttons use; a test keeps the two equal.
REPO_URL = "https://github.com/llmscratch/build-large-models-from-scratch"
REPO_BRANCH = "main"
#: What the setup cell installs in Colab: the package from the repository, with the grading extras absent
#: (a student only needs the package; Colab already has torch, which ``torch>=2.2`` keeps).
PIP_SPEC = f"llmscratch @ git+{REPO_URL}@{REPO_BRANCH}"

SETUP_TAG = "setup"
PARAMETERS_TAG = "parameters"
REQUIRED_PARAMETERS = ("SMOKE", "DEVICE", "SEED")


def setup_cell_source() -> str:
    """The exact text of every notebook's setup cell."""
    return (
        "# Setup: in Colab, install the course package; elsewhere it is installed already (see the README).\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{PIP_SPEC}"], check=True)\n'
    )


def parameters_cell_source(**sizes: Any) -> str:
    """A parameters cell: the three required names, then the chapter's sizes (``name=value`` pairs)."""
    lines = [
        "# Parameters (papermill). SMOKE=True shrinks sizes and steps so CI runs this notebook in seconds;",
        "# it never changes which code runs.",
        "SMOKE = False",
        'DEVICE = "auto"  # "auto" picks cuda, then mps, then cpu',
        "SEED = 123",
    ]
    lines += [f"{name} = {value!r}" for name, value in sizes.items()]
    return "\n".join(lines) + "\n"


def colab_url(relpath: str) -> str:
    """The 'Open in Colab' address of a notebook in the repository, e.g. ``colab_url("exercises/ch00_x.ipynb")``."""
    owner_repo = REPO_URL.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{REPO_BRANCH}/{relpath}"


def read_notebook(path: str | Path):
    """Read a notebook with nbformat (version 4), with a clear error for a file that is not one."""
    import nbformat

    path = Path(path)
    try:
        return nbformat.read(path, as_version=4)
    except (json.JSONDecodeError, nbformat.reader.NotJSONError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a valid notebook (JSON could not be read: {err})") from err


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def parameter_names(source: str) -> list[str]:
    """Names assigned at the top level of a parameters cell, in order."""
    names = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def check_conventions(nb_or_path) -> list[str]:
    """Return the list of convention violations of a notebook (empty when it follows them all)."""
    nb = read_notebook(nb_or_path) if isinstance(nb_or_path, (str, Path)) else nb_or_path
    problems: list[str] = []
    code = [c for c in nb.cells if c.get("cell_type") == "code"]
    if len(code) < 2:
        return [f"needs at least two code cells (setup, parameters); found {len(code)}"]
    setup, params = code[0], code[1]
    tags = lambda c: c.get("metadata", {}).get("tags", [])  # noqa: E731
    if SETUP_TAG not in tags(setup):
        problems.append(f"first code cell must carry the tag {SETUP_TAG!r} (tags: {tags(setup)})")
    if _source(setup) != setup_cell_source():
        problems.append("setup cell text differs from llmscratch.notebooks.setup_cell_source(); paste it again")
    if PARAMETERS_TAG not in tags(params):
        problems.append(f"second code cell must carry the tag {PARAMETERS_TAG!r} (tags: {tags(params)})")
    try:
        names = parameter_names(_source(params))
    except SyntaxError as err:
        problems.append(f"parameters cell is not valid Python: {err}")
        names = []
    missing = [n for n in REQUIRED_PARAMETERS if n not in names]
    if missing:
        problems.append(f"parameters cell must assign {', '.join(missing)}")
    for i, c in enumerate(code[2:], start=2):
        if SETUP_TAG in tags(c) or PARAMETERS_TAG in tags(c):
            problems.append(f"code cell {i} repeats the setup/parameters tag; only the first two cells carry them")
    return problems


def execute(
    path: str | Path,
    output_path: str | Path,
    parameters: dict[str, Any] | None = None,
    cwd: str | Path | None = None,
    allow_errors: bool = False,
    timeout: int = 600,
    kernel_name: str = "python3",
):
    """Run a notebook with papermill (parameters injected after the ``parameters`` cell); return the result.

    With ``allow_errors=False`` papermill stops at the first failing cell and raises
    ``papermill.PapermillExecutionError`` naming the cell; with ``True`` every cell runs and errors stay in the
    outputs (exercise notebooks are run that way: their stubs must raise).
    """
    import os

    import nbformat
    import papermill as pm

    # A kernel inherits the environment; with MPLBACKEND=Agg (common on headless machines) matplotlib's inline
    # backend is bypassed and plt.show() records no figure, so notebooks would be saved without their plots.
    saved_backend = os.environ.pop("MPLBACKEND", None)
    try:
        return pm.execute_notebook(
            str(path),
            str(output_path),
            parameters=parameters or {},
            cwd=str(cwd) if cwd else None,
            kernel_name=kernel_name,
            progress_bar=False,
            execution_timeout=timeout,
            request_save_on_cell_execute=False,
            **({"allow_errors": True} if allow_errors else {}),
        )
    except pm.PapermillExecutionError:
        if not allow_errors:
            raise
        # papermill raises after the run even when errors were allowed; the executed notebook is complete.
        nb = nbformat.read(str(output_path), as_version=4)
        nb.cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
        return nb
    finally:
        if saved_backend is not None:
            os.environ["MPLBACKEND"] = saved_backend
