"""Chapter 8 on two processes: ``torchrun --nproc-per-node 2`` (gloo, CPU) runs ``llmscratch.train.launch``,
which trains with the unchanged Trainer (DDP, ZeRO-1, FSDP2), checks tensor and pipeline parallelism against the
full model, resumes a one-process checkpoint and stops a run half-way with its own checkpoint. The one-process
reference (the same global batch, and its half-way checkpoint) and the one-process resume of the two-process
checkpoint run in this test process: one launch of two processes in all (a module fixture), so the CI time
stays small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-6


def _run(args: list[str], tmp: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "pkg") + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(args, env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from llmscratch.train import launch

    tmp = tmp_path_factory.mktemp("dist")
    one, two, back = tmp / "one", tmp / "two", tmp / "back"
    launch.main(["data-parallel", "--out", str(one)])  # 1 process: the reference, and ckpt/ at half-way
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          "-m", "llmscratch.train.launch", "all", "--out", str(two), "--resume-from", str(one / "ckpt" / "last.pt")],
         tmp)
    launch.main(["resume", "--out", str(back), "--resume-from", str(two / "ckpt" / "last.pt")])
    return {"one": one, "two": two, "back": back}


def _max_diff(a: Path, b: Path) -> float:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def test_ddp_on_two_processes_equals_one_process_with_the_same_global_batch(runs):
    assert _max_diff(runs["two"] / "ddp.pt", runs["one"] / "ddp.pt") <= TOL
    # and it trained: the weights moved away from the initial ones
    from llmscratch.train.launch import tiny_gpt

    init = tiny_gpt().state_dict()
    trained = torch.load(runs["one"] / "ddp.pt", weights_only=True)
    assert max((trained[k] - init[k]).abs().max().item() for k in init) > 1e-3


@pytest.mark.parametrize("kind", ["zero1", "fsdp"])
def test_zero1_and_fsdp_equal_ddp_and_halve_the_optimizer_state(runs, kind):
    assert _max_diff(runs["two"] / f"{kind}.pt", runs["two"] / "ddp.pt") <= TOL
    results = json.loads((runs["two"] / "results.json").read_text())
    full = results["ddp"]["optimizer_bytes_per_rank"]
    assert full[0] == full[1]  # DDP: every rank holds all of Adam's state
    sharded = results[kind]["optimizer_bytes_per_rank"]
    assert len(sharded) == 2 and all(0.4 * full[0] <= b <= 0.6 * full[0] for b in sharded)


def test_a_checkpoint_resumes_exactly_on_another_number_of_processes(runs):
    one_proc = torch.load(runs["one"] / "ckpt" / "last.pt", weights_only=False)
    two_proc = torch.load(runs["two"] / "ckpt" / "last.pt", weights_only=False)
    assert one_proc["step"] == two_proc["step"] == 2  # stopped half-way through the 4 steps of ddp.pt
    # 1 process -> 2 processes, and 2 processes -> 1 process: both continue to the uninterrupted weights
    assert _max_diff(runs["two"] / "resumed.pt", runs["one"] / "ddp.pt") <= TOL
    assert _max_diff(runs["back"] / "resumed.pt", runs["one"] / "ddp.pt") <= TOL
    results = json.loads((runs["two"] / "results.json").read_text())
    assert results["resumed"]["world_size"] == 2 and results["resumed"]["from"].startswith(str(runs["one"]))
    # the two-process run logged the two steps after the checkpoint on top of the one-process history
    assert len(results["resumed"]["step_loss"]) == 4


def test_tensor_and_pipeline_parallel_equal_one_process(runs):
    mp = json.loads((runs["two"] / "results.json").read_text())["model_parallel"]
    for part in ("mlp_by_hand", "attention_by_hand", "mlp_dtensor", "pipeline_gpipe"):
        assert mp[part], part
        assert all(v <= TOL for k, v in mp[part].items() if k != "n_microbatches"), (part, mp[part])
