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
