"""llmscratch.utils: seeding, device choice, autocast dtype, environment report."""

from __future__ import annotations

import random

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
