"""Small helpers every chapter uses: seeding, device choice, autocast dtype and an environment report.

One place for these, so that a notebook's second cell reads the same in every chapter::

    from llmscratch.utils import seed_everything, get_device
    seed_everything(SEED)
    device = get_device(DEVICE)
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import platform
import random
import re
import socket
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
import torch

__all__ = ["atomic_write", "write_weights_folder", "remove_orphaned_temp_files", "seed_everything", "get_device", "autocast_dtype", "autocast", "env_report", "format_env_report", "in_colab"]


def seed_everything(seed: int = 123, deterministic: bool = False) -> int:
    """Seed Python, NumPy and PyTorch (all devices) so a run can be repeated.

    ``deterministic=True`` also asks PyTorch for deterministic kernels (slower on a GPU; some ops then raise).
    Returns the seed, so ``SEED = seed_everything(SEED)`` reads naturally.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA and MPS generators too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return seed


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def get_device(device: str | torch.device | None = "auto") -> torch.device:
    """Resolve a device request.

    ``"auto"`` (or ``None``) picks CUDA, then Apple's MPS, then the CPU. An explicit request for a device that
    is not there raises with the fix, instead of failing later inside a kernel.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, str):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device, got {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} was requested but CUDA is not available here. "
            "Use DEVICE='auto' (falls back to the CPU), or in Colab choose Runtime > Change runtime type > GPU."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not _mps_available():
        raise RuntimeError(f"device {device!r} was requested but MPS is not available; use DEVICE='auto' or 'cpu'")
    return dev


def autocast_dtype(device: str | torch.device = "auto") -> torch.dtype | None:
    """The mixed-precision dtype to use on ``device``, or ``None`` for full float32.

    bfloat16 where the hardware supports it (Ampere and newer GPUs): same exponent range as float32, so no
    loss scaling is needed. float16 on older GPUs (use it with ``torch.amp.GradScaler``). On the CPU and MPS we
    return ``None``: CPU autocast is slower than float32 for the small models of this course.
    """
    dev = get_device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: str | torch.device = "auto", enabled: bool = True):
    """A ``torch.autocast`` context with :func:`autocast_dtype`; a no-op where that is ``None``.

    Usage: ``with autocast(device): loss = model(x)``.
    """
    dev = get_device(device)
    dtype = autocast_dtype(dev)
    return torch.autocast(device_type=dev.type, dtype=dtype, enabled=enabled and dtype is not None)


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules


def env_report(device: str | torch.device = "auto") -> dict[str, Any]:
    """Versions, device and memory, as a dict (see :func:`format_env_report` for the printed form)."""
    dev = get_device(device)
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(dev),
        "cpu_threads": torch.get_num_threads(),
        "autocast_dtype": str(autocast_dtype(dev)).replace("torch.", ""),
        "colab": in_colab(),
    }
    for name in ("tiktoken", "pandas", "matplotlib", "transformers"):
        try:
            module = __import__(name)
            report[name] = getattr(module, "__version__", "?")
        except ImportError:
            report[name] = "not installed"
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        report["ram_gb"] = round(pages * page_size / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        report["ram_gb"] = None
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        report["gpu"] = props.name
        report["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
        report["cuda"] = torch.version.cuda
        report["flash_sdp_enabled"] = torch.backends.cuda.flash_sdp_enabled()
    return report


def format_env_report(device: str | torch.device = "auto") -> str:
    """The environment report as aligned ``key: value`` lines, for printing in a notebook."""
    report = env_report(device)
    width = max(len(k) for k in report)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in report.items())


# Temporary files of atomic_write are named ".<target>.~<pid>@<host>.<random>.tmp": the writer's process id and a
# short hash of the machine's name let a later write tell an orphan (its writer was killed, e.g. by SIGKILL or a
# power cut, so its ``except`` never ran) from a file that a live process is still writing.
_TMP_MARK = "~"


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


_ORPHAN_AGE_S = 24 * 3600.0  # where liveness cannot be checked (other host, Windows): older than a day


def remove_orphaned_temp_files(target: str | Path | None = None, folder: str | Path | None = None) -> list[Path]:
    """Delete temporary files that :func:`atomic_write` left behind when its process was killed mid-write.

    Give ``target`` (the file being written: only its own temporary files are looked at) or ``folder`` (every
    file written atomically in it). A temporary file is an orphan when the process that wrote it, on this
    machine, no longer exists; files of live writers are left alone, and those of other machines (a shared
    disk) only once they are a day old. Returns the paths removed. :func:`atomic_write` calls this for its
    target before every write, so a killed save or download is cleaned up the next time the file is written.
    """
    if (target is None) == (folder is None):
        raise ValueError("give exactly one of target= (a file) or folder=")
    if target is not None:
        target = Path(target)
        folder, pattern = target.parent, f".{glob.escape(target.name)}.{_TMP_MARK}*.tmp"
    else:
        folder, pattern = Path(folder), f".*.{_TMP_MARK}*.tmp"
    if not folder.is_dir():
        return []
    host, removed = _host_tag(), []
    for tmp in folder.glob(pattern):
        # name: .<target>.~<pid>@<host>.<random>.tmp (the target's name may itself contain dots and "~")
        match = re.search(rf"\.{re.escape(_TMP_MARK)}(\d+)@([0-9a-f]{{8}})\.[^.]+\.tmp$", tmp.name)
        if match is None:
            continue
        pid, tag = int(match.group(1)), match.group(2)
        try:
            # On Windows os.kill(pid, 0) would send CTRL_C_EVENT: there only the age decides.
            if tag == host and os.name != "nt":
                orphan = not _pid_alive(pid)
            else:
                orphan = time.time() - tmp.stat().st_mtime > _ORPHAN_AGE_S
            if orphan:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another process cleaned it up first
            continue
    return removed


def _umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it: do it under a lock and put it back at once
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = None, newline: str | None = None
                 ) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success, flush, fsync and rename it into place.

    ``os.replace`` within one folder is atomic on POSIX and Windows: a reader (or a crash) sees the old file or
    the new one, never half of one. If the block raises, the temporary file is removed and ``path`` is untouched.
    Every file the package writes for a user (data, checkpoints, gradebooks, exercises, tokenizers) goes
    through here::

        with atomic_write("model.pt") as f:
            torch.save(state, f)

    The new file gets the permissions an ordinary ``open(path, "w")`` would give it: those of the file it
    replaces, or ``0o666`` minus the user's umask for a new file (``tempfile.mkstemp`` alone would make it
    private, 0600). A process killed inside the block cannot remove its temporary file; the next
    ``atomic_write`` of the same path does (see :func:`remove_orphaned_temp_files`).
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write opens files for writing; mode must contain 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temp_files(target=path)
    try:
        file_mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        file_mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_TMP_MARK}{os.getpid()}@{_host_tag()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), file_mode)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if not hasattr(os, "fchmod"):
            os.chmod(tmp, file_mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_weights_folder(folder: str | Path, tensors: dict[str, torch.Tensor], config: dict,
                         weights_name: str = "model.safetensors", config_name: str = "config.json") -> Path:
    """Write a Hugging Face style folder: ``tensors`` as safetensors (``format: pt``, the metadata
    ``transformers`` and ``peft`` expect) and ``config`` as indented JSON, each file atomically.

    The weights are written first, so a folder whose config is new never holds weights older than it.
    Tensors must be on the CPU and contiguous (safetensors refuses others). Returns the folder."""
    import json

    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / weights_name) as f:
        f.write(save(tensors, metadata={"format": "pt"}))
    with atomic_write(folder / config_name, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return folder
