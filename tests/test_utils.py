"""llmscratch.utils: seeding, device choice, autocast dtype, environment report."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from llmscratch import utils


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(3)

    utils.seed_everything(7)
    a = draw()
    utils.seed_everything(7)
    b = draw()
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    utils.seed_everything(8)
    assert not torch.equal(draw()[2], a[2])


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True])
def test_seed_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="non-negative int"):
        utils.seed_everything(bad)


def test_auto_device_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(utils, "_mps_available", lambda: False)
    assert utils.get_device("auto") == torch.device("cpu")
    assert utils.get_device(None) == torch.device("cpu")
    monkeypatch.setattr(utils, "_mps_available", lambda: True)
    assert utils.get_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert utils.get_device("auto") == torch.device("cuda")


def test_explicit_missing_device_names_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="DEVICE='auto'"):
        utils.get_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        utils.get_device("tpu")
    with pytest.raises(TypeError):
        utils.get_device(3)
    assert utils.get_device(torch.device("cpu")) == torch.device("cpu")


def test_autocast_dtype(monkeypatch):
    assert utils.autocast_dtype("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert utils.autocast_dtype("cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert utils.autocast_dtype("cuda") is torch.float16


def test_autocast_is_a_noop_on_cpu():
    with utils.autocast("cpu"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


def test_env_report():
    report = utils.env_report("cpu")
    assert report["torch"] == torch.__version__ and report["device"] == "cpu"
    assert report["autocast_dtype"] == "None"
    text = utils.format_env_report("cpu")
    assert "torch" in text and str(torch.__version__) in text


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with utils.atomic_write(target, "w", encoding="utf-8") as f:
        f.write("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with utils.atomic_write(target, "w", encoding="utf-8") as f:
            f.write("half of the sec")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "first", "a failed write must leave the old file untouched"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"], "temporary file left behind"
    with pytest.raises(ValueError, match="mode must contain 'w'"):
        with utils.atomic_write(target, "r"):
            pass


def test_write_weights_folder_round_trips_and_keeps_the_old_folder_on_failure(tmp_path):
    import json

    from safetensors.torch import load_file

    folder = tmp_path / "model"
    tensors = {"w": torch.arange(6.0).view(2, 3), "b": torch.ones(2)}
    assert utils.write_weights_folder(folder, tensors, {"width": 3}) == folder
    assert json.loads((folder / "config.json").read_text()) == {"width": 3}
    back = load_file(folder / "model.safetensors")
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) for k, v in tensors.items())
    # safetensors refuses a non-contiguous tensor: the write fails and the folder stays as it was
    with pytest.raises(ValueError):
        utils.write_weights_folder(folder, {"w": torch.ones(3, 4).t()}, {"width": 4})
    assert json.loads((folder / "config.json").read_text()) == {"width": 3}
    assert torch.equal(load_file(folder / "model.safetensors")["w"], tensors["w"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_keeps_the_users_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        with utils.atomic_write(tmp_path / "new.bin") as f:
            f.write(b"x")
        # the reference: what a plain open() creates under the same umask
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode) == expected


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    target = tmp_path / "shared.csv"
    target.write_text("old")
    target.chmod(0o640)
    with utils.atomic_write(target, "w", encoding="utf-8") as f:
        f.write("new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640


_KILLED_WRITER = """
import os, signal, sys
from llmscratch.utils import atomic_write
with atomic_write(sys.argv[1]) as f:
    f.write(b"half of a file")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write: no except/finally runs
"""


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_a_write_killed_by_sigkill_leaves_an_orphan_that_the_next_write_removes(tmp_path):
    target = tmp_path / "data.csv.gz"
    target.write_bytes(b"old")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    orphans = [p for p in tmp_path.iterdir() if p.name != target.name]
    assert len(orphans) == 1 and orphans[0].read_bytes() == b"half of a file"
    assert target.read_bytes() == b"old"  # the kill never reached the rename

    # temporary files that must survive: a live writer's (this process), another machine's (a shared disk)
    live = tmp_path / f".data.csv.gz.~{os.getpid()}@{utils._host_tag()}.abcd1234.tmp"
    other_host = tmp_path / ".data.csv.gz.~1@00000000.abcd1234.tmp"
    unrelated = tmp_path / ".other.txt.~1@00000000.abcd1234.tmp"
    for p in (live, other_host, unrelated):
        p.write_bytes(b"busy")
    with utils.atomic_write(target) as f:  # the next start writes the file again
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, live.name, other_host.name, unrelated.name])
    # a day-old temporary file of another machine counts as an orphan
    os.utime(other_host, (time.time() - 2 * 86400,) * 2)
    assert utils.remove_orphaned_temp_files(folder=tmp_path) == [other_host]
    with pytest.raises(ValueError, match="exactly one"):
        utils.remove_orphaned_temp_files()
