"""Grading throughput on the warm-up lab (SMOKE), against plain papermill runs of the same notebook.

    python benchmarks/grading.py [N]

Grades N copies of the solved lab with ``llmscratch.grading.grade`` (``--jobs 2``, with the bubblewrap sandbox,
then without it) and runs the same notebook N times with plain ``papermill -p SMOKE True`` (the reference:
execution without merging, sandbox, limits, the lab's own reference run or judging). Prints seconds per
submission and the ratio to the reference, measured in this run, with the load average before and after.
One ``grade`` call runs the lab once more for the reference, so its cost per submission falls as N grows.
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


def main(n: int = 6) -> None:
    import papermill as pm

    from llmscratch.grading import grade
    from llmscratch.grading.sandbox import sandbox_status

    load_before = os.getloadavg()
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
        rows = [("papermill -p SMOKE True, one after another (reference)", ref)]
        for sandbox in (True, False):
            if sandbox and not sandbox_status()[0]:
                print(f"skipping the sandboxed run: {sandbox_status()[1]}")
                continue
            start = time.perf_counter()
            book, _ = grade(LAB, subs, tmp / f"gb{sandbox}.csv", jobs=2, sandbox=sandbox, require_sandbox=sandbox,
                            log=lambda *_: None)
            assert (book.status == "passed").all(), book[book.status != "passed"]
            label = "with the bubblewrap sandbox" if sandbox else "without a sandbox"
            rows.append((f"llmscratch grade --jobs 2, {label}", (time.perf_counter() - start) / n))
    load_after = os.getloadavg()
    print(f"warm-up lab, SMOKE, {n} submissions, {os.cpu_count()} CPU(s), load average (1 min) "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"| {'method':<56} | s / submission | ratio to reference |")
    print(f"|{'-' * 58}|---------------:|-------------------:|")
    for name, sec in rows:
        print(f"| {name:<56} | {sec:14.2f} | {sec / ref:18.2f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
