"""Labs an instructor can trust: ``release`` the student version, ``grade`` a folder of submissions.

- :mod:`llmscratch.grading.check` is what a lab's graded cell uses: ONE block per graded cell, for example::

      import torch
      from llmscratch.grading import check

      with check("ex02-check") as c:                  # the graded cell's id
          a, b = c.randn(5, 3), c.randn(7, 3)         # inputs drawn from the run's seed
          c.expect_close("pairwise_sq_dists(a (5, 3), b (7, 3))", pairwise_sq_dists(a, b),
                         want=lambda: torch.cdist(a, b) ** 2, atol=1e-4)

  In the student's notebook it compares with ``want`` and says what is wrong; under the grader it only records
  the student's values (``want=`` is removed), and the verdict is made elsewhere (see the module's docstring).
- :mod:`llmscratch.grading.release` writes ``exercises/`` from ``solutions/``: the code between
  ``# BEGIN SOLUTION`` and ``# END SOLUTION`` becomes ``raise NotImplementedError("<hint>")``, outputs are cleared,
  everything else is kept byte for byte (cell ids, metadata, markdown). :mod:`llmscratch.grading.static` checks
  the graded cells (self-contained, in the check format, no exercise repeated across labs).
- :mod:`llmscratch.grading.grader` grades submitted notebooks against the lab: graded cells restored from the
  instructor's copy, execution with papermill in a bubblewrap sandbox (:mod:`llmscratch.grading.sandbox`) with
  time and memory limits, the lab itself run once on the same inputs for the reference, the two recordings
  compared by a judging notebook under nbval (:mod:`llmscratch.grading.judge`, :mod:`llmscratch.grading.compare`),
  and a pandas gradebook written atomically.

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
