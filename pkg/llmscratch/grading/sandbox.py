"""The sandbox around the kernel that runs student code: bubblewrap (``bwrap``) on Linux.

Inside, the process sees a read-only view of only what a kernel needs (the system's ``/usr``, ``/lib*``,
``/bin``, ``/etc``; the Python installation and virtual environment; the folder that holds the ``llmscratch``
package; the data folder ``$LLMSCRATCH_DATA`` and the user's data cache), one writable folder (the submission's scratch folder), a private ``/tmp``, its own
``/proc`` and ``/dev``, no network (a new network namespace with only loopback, which the kernel's ZMQ sockets
need), and new PID/IPC/UTS namespaces; it dies with the grader. The instructor's checkout (``solutions/``),
the gradebook and the other submissions are simply not there. The time, memory and file-size limits are set by
the grader (``setrlimit``) and inherited.

:func:`sandbox_status` says whether bwrap is installed *and works* here (it needs user namespaces, which some
containers disable); the grader refuses to grade without it under ``--require-sandbox`` and warns otherwise.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["sandbox_status", "bwrap_command", "read_only_paths"]

_SYSTEM = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc")


@functools.lru_cache(maxsize=1)
def sandbox_status() -> tuple[bool, str]:
    """(works, message): whether ``bwrap`` can build the grader's sandbox on this machine, and why not."""
    if not sys.platform.startswith("linux"):
        return False, f"no sandbox on {sys.platform}: bubblewrap runs on Linux only; grade on Linux for assessed work"
    exe = shutil.which("bwrap")
    if exe is None:
        return False, ("bubblewrap (bwrap) is not installed: install it (Debian/Ubuntu: apt-get install bubblewrap) "
                       "to grade in a sandbox")
    cmd = [exe, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
           "--tmpfs", "/tmp", "true"]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"bwrap is installed but did not run: {err}"
    if run.returncode != 0:
        why = " ".join(run.stderr.split())[:300]
        return False, (f"bwrap is installed but cannot create its namespaces here ({why}); user namespaces are "
                       "probably disabled (sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces, or "
                       "a container without CAP_SYS_ADMIN)")
    return True, f"bubblewrap sandbox ({exe})"


def read_only_paths(data_dirs: list[str] = ()) -> list[Path]:
    """The folders the kernel needs to read: Python, the venv, the package's parent folder, the data folders."""
    import llmscratch

    paths = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent,
             Path(llmscratch.__file__).resolve().parent.parent]
    paths += [Path(d).resolve() for d in data_dirs if d and Path(d).is_dir()]
    out = []
    for p in paths:  # keep the outermost folders only, without duplicates
        if p.is_dir() and not any(p == q or q in p.parents for q in out) and str(p) not in _SYSTEM:
            out = [q for q in out if p not in q.parents] + [p]
    return out


def bwrap_command(cmd: list[str], scratch: Path, data_dirs: list[str] = ()) -> list[str]:
    """``cmd`` wrapped in bwrap: read-only system and Python, ``scratch`` writable, private /tmp, no network."""
    exe = shutil.which("bwrap") or "bwrap"
    args = [exe, "--unshare-all", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    for p in _SYSTEM:
        if os.path.exists(p):
            args += ["--ro-bind", p, p] if not os.path.islink(p) else ["--symlink", os.readlink(p), p]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
    for p in read_only_paths(data_dirs):
        args += ["--ro-bind", str(p), str(p)]
    scratch = Path(scratch).resolve()
    args += ["--bind", str(scratch), str(scratch), "--chdir", str(scratch), "--"]
    return args + list(cmd)
