"""Labs an instructor can trust: ``release`` the student version, ``grade`` a folder of submissions.

- :mod:`llmscratch.grading.release` writes ``exercises/`` from ``solutions/``: the code between
  ``# BEGIN SOLUTION`` and ``# END SOLUTION`` becomes ``raise NotImplementedError("<hint>")``, outputs are cleared,
  everything else is kept byte for byte (cell ids, metadata, markdown).
- :mod:`llmscratch.grading.grader` grades submitted notebooks against the lab: graded cells restored from the
  instructor's copy, execution with papermill in a separate, time- and memory-limited process, each graded cell
  judged with nbval (pytest), and a pandas gradebook written atomically.

The command line (``llmscratch release`` / ``llmscratch grade``) is registered by :func:`add_cli`.
"""

from __future__ import annotations

from .check import Check, check
from .release import ReleaseError, release_notebook, release_all, stub_source

__all__ = ["Check", "check", "ReleaseError", "release_notebook", "release_all", "stub_source", "add_cli", "grade"]


def grade(*args, **kwargs):
    """Grade submissions; see :func:`llmscratch.grading.grader.grade`."""
    from .grader import grade as _grade

    return _grade(*args, **kwargs)


def add_cli(sub) -> None:
    """Register the ``release`` and ``grade`` sub-commands on an argparse sub-parsers object."""
    from . import release as _release

    _release.add_cli(sub)
    try:
        from . import grader
    except ImportError:  # pragma: no cover - grading needs pandas; release does not
        return
    grader.add_cli(sub)
