"""One submission's execution, in its own process: ``python _worker.py`` with the job as JSON on stdin.

Runs the prepared notebook with papermill's nbclient engine (parameters injected by papermill: ``SMOKE=True``),
with a per-cell time limit (the kernel is interrupted and the next cell runs), output capped per cell and in
total, and reports each finished cell as one JSON line on a pipe whose file descriptor only this process holds
(the kernel is started with ``close_fds``, so student code cannot write to it). Resource limits (address space,
file size) are set by the grader before this process starts and are inherited by the kernel.

Started by file path (not ``-m``) so that it does not import the package, and with it torch.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

TRUNCATED = "\n[... output truncated by the grader ...]\n"


def _subreaper() -> None:
    """Become the parent of every orphan below us (Linux), so a kernel's stray children can be found and killed."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def _kill_descendants() -> None:
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass


def main() -> int:
    # The job comes on stdin, which the kernel does not share. Nothing reported here decides a verdict: the
    # judge compares the graded cells' recordings; these facts only explain failures (errors, timeouts).
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    channel = os.fdopen(int(job["fd"]), "w", buffering=1)

    def emit(**event):
        channel.write(json.dumps(event) + "\n")
        channel.flush()

    _subreaper()
    import nbformat
    import nbclient.client
    from nbclient.exceptions import DeadKernelError
    from nbclient.util import run_sync
    from papermill.engines import papermill_engines
    from papermill.parameterize import parameterize_notebook

    cap_cell, cap_total = int(job["max_output_cell"]), int(job["max_output_total"])
    sizes: dict[int, int] = {}
    truncated: set[int] = set()
    timed_out: set[int] = set()
    total = [0]

    original_output = nbclient.client.NotebookClient.output

    def capped_output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        size = len(json.dumps(content.get("data", content.get("text", "")), default=str))
        if msg["msg_type"] != "error" and (sizes.get(cell_index, 0) + size > cap_cell or total[0] + size > cap_total):
            if cell_index not in truncated:
                truncated.add(cell_index)
                outs.append(nbformat.v4.new_output("stream", name="stderr", text=TRUNCATED))
            return None
        sizes[cell_index] = sizes.get(cell_index, 0) + size
        total[0] += size
        return original_output(self, outs, msg, display_id, cell_index)

    original_timeout = nbclient.client.NotebookClient._async_handle_timeout

    async def record_timeout(self, timeout, cell=None):
        if cell is not None:
            timed_out.add(id(cell))
        return await original_timeout(self, timeout, cell)

    original_execute = nbclient.client.NotebookClient.async_execute_cell

    async def reporting_execute(self, cell, cell_index, execution_count=None, store_history=True):
        start = time.monotonic()
        died = None
        try:
            return await original_execute(self, cell, cell_index, execution_count, store_history)
        except DeadKernelError as err:
            died = str(err) or "kernel died"
            raise
        finally:
            if cell.cell_type == "code":
                errors = [[o.get("ename", ""), str(o.get("evalue", ""))[:2000]]
                          for o in cell.get("outputs", []) if o.get("output_type") == "error"]
                emit(event="cell", id=cell.get("id"), index=cell_index,
                     completed=died is None and cell.get("execution_count") is not None,
                     errors=errors, timeout=id(cell) in timed_out, truncated=cell_index in truncated, died=died,
                     seconds=round(time.monotonic() - start, 3))

    nbclient.client.NotebookClient.output = capped_output
    nbclient.client.NotebookClient._async_handle_timeout = record_timeout
    nbclient.client.NotebookClient.async_execute_cell = reporting_execute
    nbclient.client.NotebookClient.execute_cell = run_sync(reporting_execute)  # the sync alias papermill calls

    nb = nbformat.read(job["notebook"], as_version=4)
    nb = parameterize_notebook(nb, job["parameters"], report_mode=False)
    emit(event="start")
    status = "done"
    try:
        os.chdir(job["cwd"])
        nb = papermill_engines.execute_notebook_with_engine(
            "nbclient", nb, kernel_name=job.get("kernel", "python3"), input_path=job["notebook"],
            output_path=None, progress_bar=False, log_output=False, start_timeout=120,
            execution_timeout=job["cell_timeout"], interrupt_on_timeout=True, allow_errors=True,
        )
    except DeadKernelError as err:
        status = "died"
        emit(event="died", message=str(err) or "kernel died")
    except Exception as err:  # the engine itself failed (kernel did not start, ...)
        status = "failed"
        emit(event="failed", message=f"{type(err).__name__}: {err}"[:2000])
    finally:
        _kill_descendants()
    if job.get("output"):
        try:
            nbformat.write(nb, job["output"])
        except Exception:
            pass
    emit(event="end", status=status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
