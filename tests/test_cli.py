"""The `llmscratch` command: env and data sub-commands (release and grade are tested in test_grading.py)."""

from __future__ import annotations

import subprocess
import sys

from llmscratch.cli import main


def test_env(capsys):
    assert main(["env", "--device", "cpu"]) == 0
    assert "torch" in capsys.readouterr().out


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    assert "imdb/imdb_train.csv.gz" in capsys.readouterr().out


def test_data_verify(data_dir, capsys):
    assert main(["data", "verify", "text/the-verdict.txt", "gpt2/vocab.bpe"]) == 0
    assert capsys.readouterr().out.count("ok") == 2


def test_data_verify_reports_failures(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("LLMSCRATCH_DATA", raising=False)
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path))
    assert main(["data", "verify", "text/the-verdict.txt"]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "llmscratch", "--help"], capture_output=True, text=True, check=True)
    assert "env" in out.stdout and "data" in out.stdout
