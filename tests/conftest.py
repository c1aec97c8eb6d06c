"""Shared test set-up: the data folder, no network, and the list of notebooks.

``$LLMSCRATCH_DATA`` points at ``../shared/data`` when the caller has not set it and that folder exists (the
layout of CI and of a developer checkout). ``$LLMSCRATCH_OFFLINE=1`` makes any accidental download fail at
once; tests of the download code unset it for a server on 127.0.0.1 that they start themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if not os.environ.get("LLMSCRATCH_DATA") and SHARED_DATA.is_dir():
    os.environ["LLMSCRATCH_DATA"] = str(SHARED_DATA)
os.environ.setdefault("LLMSCRATCH_OFFLINE", "1")
# Tests that plot in this process must not need a display (kernels started by papermill use the inline backend:
# llmscratch.notebooks.execute removes MPLBACKEND from their environment).
os.environ.setdefault("MPLBACKEND", "Agg")


def notebooks(*folders: str) -> list[Path]:
    """Every .ipynb under the given top-level folders, sorted, checkpoints excluded."""
    found = []
    for folder in folders:
        found += [p for p in sorted((REPO / folder).rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts]
    return found


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("LLMSCRATCH_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("needs the data folder: set LLMSCRATCH_DATA to the shared data folder (see README)")
    return Path(value)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Tiny models are as fast on one thread on a quiet machine and far faster on a loaded one: two threads on two
    busy cores spin-wait (a 1 s training run took 25 s). Results, bit-identity included, do not depend on it.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



# Scheduling under pytest-xdist (`scripts/test.sh` runs `-n 2 --dist loadfile`). A file's tests stay together on
# one worker, because module- and session-scoped fixtures (the built book, the hostile grading batch, saved
# reference models) would otherwise be built once per worker. The long, independent notebook runs are the
# exception, shared between the two workers one by one: every test of tests/test_notebooks.py (SMOKE runs, nbval)
# and tests/test_grading.py's per-lab test (one grade call per lab). xdist's own `loadgroup` mode cannot do this
# under pytest 9 (it renames node ids through an attribute pytest no longer reads), hence this scheduler.
SPREAD = ("tests/test_notebooks.py::", "tests/test_grading.py::test_every_lab_solution_full_marks_exercise_zero[")


@pytest.hookimpl(optionalhook=True)  # known only when pytest-xdist is loaded (not under -p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None  # any other mode is xdist's own
    from xdist.scheduler import LoadFileScheduling

    class LoadFileSpreadingNotebookRuns(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if nodeid.startswith(SPREAD) else super()._split_scope(nodeid)

    return LoadFileSpreadingNotebookRuns(config, log)
