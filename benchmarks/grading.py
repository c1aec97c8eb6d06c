"""Grading throughput on the warm-up lab (SMOKE), against plain papermill runs of the same notebook.

    python benchmarks/grading.py [N]

Grades N copies of the solved lab with ``llmscratch.grading.grade`` (1 job, then 2 jobs) and runs the same
notebook N times with plain ``papermill -p SMOKE True`` (the reference: execution without merging, limits,
guard or judging). Prints seconds per submission and the ratio to the reference, measured in this run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "solutions" / "ch00_pytorch_warmup.ipynb"


def main(n: int = 4) -> None:
    import papermill as pm

    from llmscratch.grading import grade

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subs = []
        for i in range(n):
            p = tmp / f"student{i:02d}.ipynb"
            shutil.copy(LAB, p)
            subs.append(p)
        work = tmp / "work"
        work.mkdir()
        start = time.perf_counter()
        for i in range(n):
            pm.execute_notebook(str(LAB), str(tmp / f"ref{i}.ipynb"), parameters={"SMOKE": True}, cwd=str(work),
                                progress_bar=False, kernel_name="python3")
        ref = (time.perf_counter() - start) / n
        rows = [("papermill -p SMOKE True (reference)", ref)]
        for jobs in (1, 2):
            start = time.perf_counter()
            book, _ = grade(LAB, subs, tmp / f"gb{jobs}.csv", jobs=jobs, log=lambda *_: None)
            assert (book.status == "passed").all(), book[book.status != "passed"]
            rows.append((f"llmscratch grade --jobs {jobs}", (time.perf_counter() - start) / n))
    print(f"warm-up lab, SMOKE, {n} submissions, {os.cpu_count()} CPU(s), load {os.getloadavg()[0]:.1f}")
    print(f"| {'method':<40} | s / submission | ratio to reference |")
    print(f"|{'-' * 42}|---------------:|-------------------:|")
    for name, sec in rows:
        print(f"| {name:<40} | {sec:14.2f} | {sec / ref:18.2f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
