"""Runs INSIDE the kernel that executes a submission: protects the graded checks from earlier student code.

The grader inserts, right after the parameters, a cell that calls :func:`install` before any student code runs;
it snapshots what a check relies on (the builtins, ``sys``/``os``, torch's modules and core classes, the check
helpers, and the IPython shell / kernel / session classes that report errors). Each graded cell is executed as::

    run_check("<the instructor's check source>", "<cell id>")

which restores that snapshot, runs the check in a fresh namespace whose builtins are a pristine copy (so student
globals named ``len`` or ``isinstance`` cannot shadow them), and, only when the check finishes without raising,
prints ``LLMSCRATCH-CHECK-PASSED <cell id> <token>``, where the token is an HMAC of the cell id under a secret
that :func:`install` read from a file and deleted before any student code ran. The grader (outside this process)
counts a check as passed only when the cell completed, produced no error, and printed the right token.

This is a defence in depth, not a sandbox: code in the same process can, with enough effort, reach anything here
(see the known limits in the book's instructor page). The module is imported by file path in the grader too, so
it must stay free of package-relative imports.
"""

from __future__ import annotations

import sys

TOKEN = "LLMSCRATCH-CHECK-PASSED"

_MODULES = (
    "builtins", "sys", "os", "math", "copy", "random", "linecache", "threading",
    "torch", "torch.testing", "torch.testing._comparison", "torch.nn", "torch.nn.functional",
    "torch.nn.modules.module", "torch.nn.modules.linear", "torch.nn.modules.activation", "torch.optim",
    "torch.optim.sgd", "torch.optim.optimizer", "torch.autograd", "torch.utils", "torch.utils.data",
    "torch.utils.data.dataloader", "torch.utils.data.dataset", "numpy", "numpy.testing",
    "llmscratch", "llmscratch.grading", "llmscratch.grading.checks",
)
_SHELL_NAMES = (
    "run_cell", "run_cell_async", "run_code", "run_ast_nodes", "showtraceback", "_showtraceback",
    "showsyntaxerror", "showindentationerror", "excepthook", "transform_cell", "ex", "ev", "system",
    "custom_exceptions", "CustomTB", "InteractiveTB", "SyntaxTB", "displayhook", "display_pub",
    "do_execute", "execute_request", "send_response", "send", "serialize", "_publish_execution_error",
    "write", "flush", "_flush", "session",
)
_state: dict | None = None


def _class_targets():
    import torch
    from torch import nn
    from torch.utils import data

    classes = [torch.Tensor, nn.Module, nn.Linear, nn.ReLU, nn.Sequential, nn.Parameter,
               torch.optim.Optimizer, torch.optim.SGD, torch.optim.Adam, data.Dataset, data.DataLoader]
    try:  # the objects that turn an exception into the kernel's error reply and the iopub error message
        shell = get_ipython()  # noqa: F821 - defined in an IPython kernel
    except NameError:
        shell = None
    instances = []
    if shell is not None:
        instances.append(shell)
        kernel = getattr(shell, "kernel", None)
        for obj in (kernel, getattr(kernel, "session", None), getattr(kernel, "iopub_socket", None),
                    getattr(shell, "displayhook", None), getattr(shell, "display_pub", None),
                    sys.stdout, sys.stderr):
            if obj is not None:
                instances.append(obj)
    for obj in instances:
        for cls in type(obj).__mro__:
            if cls is not object and cls not in classes:
                classes.append(cls)
    return classes, instances, shell


def token(secret: bytes, cell_id: str) -> str:
    import hashlib
    import hmac

    return hmac.new(secret, cell_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def install(secret_path: str) -> None:
    """Snapshot the pristine state and read (then delete) the secret; once: later calls are ignored."""
    global _state
    if _state is not None:
        return
    import importlib
    import os

    with open(secret_path, "rb") as f:
        secret = f.read()
    os.unlink(secret_path)

    modules = {}
    for name in _MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        modules[name] = (mod, dict(vars(mod)))
    classes, instances, shell = _class_targets()
    class_snap = {}
    for cls in classes:
        try:
            class_snap[cls] = dict(vars(cls))
        except TypeError:
            pass
    inst_snap = []
    for obj in instances:
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            inst_snap.append((obj, {k: d[k] for k in _SHELL_NAMES if k in d}))
    import builtins
    import threading

    _state = {
        "modules": modules,
        "classes": class_snap,
        "instances": inst_snap,
        "builtins": dict(vars(builtins)),
        "user_ns": shell.user_ns if shell is not None else None,
        "threads": {t.ident for t in threading.enumerate()},
        "stdout": sys.stdout,
        "secret": secret,
    }


_MISSING = object()


def restore() -> None:
    """Put back everything :func:`install` snapshotted (no-op before install)."""
    state = _state
    if state is None:
        return
    sys.settrace(None)
    sys.setprofile(None)
    for name, (mod, snap) in state["modules"].items():
        sys.modules[name] = mod
        d = mod.__dict__
        for key, value in snap.items():
            if d.get(key, _MISSING) is not value:
                d[key] = value
    for cls, snap in state["classes"].items():
        current = vars(cls)
        for key, value in snap.items():
            if current.get(key, _MISSING) is not value:
                try:
                    setattr(cls, key, value)
                except (AttributeError, TypeError):
                    pass
        for key in [k for k in current if k not in snap and not k.startswith("_abc")]:
            try:
                delattr(cls, key)
            except (AttributeError, TypeError):
                pass
    for obj, snap in state["instances"]:
        d = obj.__dict__
        for key in _SHELL_NAMES:
            if key in snap:
                if d.get(key, _MISSING) is not snap[key]:
                    d[key] = snap[key]
            elif key in d:
                del d[key]
    if state["user_ns"] is not None:
        state["user_ns"]["__builtins__"] = state["modules"]["builtins"][0]


def run_check(source: str, cell_id: str) -> None:
    """Run one graded check on a restored, pristine state; print the pass token only if it finishes."""
    state = _state
    if state is None:
        raise RuntimeError("the grader's guard was not installed; this submission cannot be graded")
    restore()
    builtins_copy = dict(state["builtins"])
    user_ns = state["user_ns"] if state["user_ns"] is not None else {}
    ns = {k: v for k, v in list(user_ns.items()) if k not in builtins_copy and not k.startswith("_llmscratch")}
    ns["__builtins__"] = builtins_copy
    ns["__name__"] = "__main__"
    filename = f"<graded cell {cell_id}>"
    state["modules"]["linecache"][0].cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = builtins_copy["compile"](source, filename, "exec")
    builtins_copy["exec"](code, ns)
    restore()  # the student's functions ran inside the check: undo anything they changed before reporting
    # Threads started since install (tqdm's monitor thread excepted) could re-patch things while a check runs.
    extra = {t.ident for t in state["modules"]["threading"][0].enumerate()
             if type(t).__module__ != "tqdm._monitor"} - state["threads"]
    out = state["stdout"]
    out.write(f"\n{TOKEN} {cell_id} {token(state['secret'], cell_id)}{' threads' if extra else ''}\n")
    out.flush()
