"""The gradebook files: ``<out>.csv`` (one row per student and exercise) and ``<out stem>_summary.csv``.

Both are written atomically (a temporary file in the same folder, then ``os.replace``), so a crash never leaves
a half-written gradebook; an existing gradebook is merged, not clobbered: rows of the students graded now replace
their old rows for the same lab, everything else is kept, and the rows are sorted.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..utils import atomic_write

__all__ = ["GradingError", "COLUMNS", "SUMMARY_COLUMNS", "summary_path", "check_writable", "write_gradebook"]


class GradingError(RuntimeError):
    """The grader itself cannot work (bad lab, unwritable output, bad roster); the message names the fix."""


COLUMNS = ["lab", "student", "exercise", "points", "max_points", "status", "reason", "submission"]
SUMMARY_COLUMNS = ["lab", "student", "points", "max_points", "percent", "exercises_passed", "exercises",
                    "status", "flags", "seconds", "submission"]


def summary_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}_summary{out.suffix or '.csv'}")


def _atomic_write_csv(df, path: Path) -> None:
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        df.to_csv(f, index=False)


def check_writable(out: Path) -> None:
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


def write_gradebook(rows: list[dict], summary_rows: list[dict], out: Path, weak: set[str] = frozenset()):
    """Merge with the gradebook already at ``out`` and write both files atomically.

    Rows of students graded now replace their old rows; ``weak`` students (roster students with no submission
    in this run) get their ``missing`` rows only if the gradebook has nothing for them yet.
    """
    import pandas as pd

    new = pd.DataFrame(rows, columns=COLUMNS)
    new_sum = pd.DataFrame(summary_rows, columns=SUMMARY_COLUMNS)
    old, old_sum = None, None
    if out.exists():
        try:
            old = pd.read_csv(out, dtype={"student": str, "lab": str}, keep_default_na=False)
            if not set(COLUMNS) <= set(old.columns):
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
    if old is not None and weak:
        have = set(zip(old["lab"].astype(str), old["student"].astype(str)))
        drop_new = lambda df: df[[(lab, st) not in have or st not in weak  # noqa: E731
                                  for lab, st in zip(df["lab"], df["student"])]]
        new, new_sum = drop_new(new), drop_new(new_sum)
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
    book = merged(old, new, COLUMNS, ["lab", "student"])
    book = book.assign(_o=book["exercise"].map(lambda e: order.get(e, 10**6))).sort_values(
        ["lab", "student", "_o", "exercise"], kind="stable").drop(columns="_o").reset_index(drop=True)
    summ = merged(old_sum, new_sum, SUMMARY_COLUMNS, ["lab", "student"])
    _atomic_write_csv(book, out)
    _atomic_write_csv(summ, spath)
    return book, summ
