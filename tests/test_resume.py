"""Exact resume of llmscratch.train.Trainer: from every checkpoint of a run, after a fit(max_steps=...) stop, and
after SIGKILLs of a real training process (at random steps and in the middle of a save).

The reference is always the same run without interruption; "exact" means bit-identical final weights on the CPU
(torch.equal), with dropout, a shuffled DataLoader (seeded generator= and the global RNG), gradient accumulation
with a short last group, warmup+cosine, mid-epoch evaluations and best.pt.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from llmscratch.train import Trainer

try:  # as a test module (pytest puts tests/ on sys.path) and in the forked workers, which import it by name
    from test_train import TinyLM, _data
except ImportError:  # pragma: no cover
    from tests.test_train import TinyLM, _data

# Two runs: A shuffles with a seeded generator=, B with the global RNG and stops at max_steps inside an epoch.
# 44 sequences in batches of 4 = 11 micro-batches per epoch; accumulation 2 = 6 steps, the last one short.
RUNS = {
    "A": dict(generator=True, schedule="cosine", epochs=3, max_steps=None),
    "B": dict(generator=False, schedule="constant", epochs=4, max_steps=20),
}


def _trainer(run: str, checkpoint_dir=None, checkpoint_every=None) -> Trainer:
    spec = RUNS[run]
    torch.manual_seed(0)
    model = TinyLM(dropout=0.3)
    gen = torch.Generator().manual_seed(7) if spec["generator"] else None
    loader = DataLoader(_data(44), batch_size=4, shuffle=True, generator=gen)
    val = DataLoader(_data(8, seed=1), batch_size=4)
    torch.manual_seed(42)  # the global RNG: dropout, and run B's shuffle
    return Trainer(model, loader, val, lr=5e-3, warmup_steps=2, schedule=spec["schedule"], accumulation_steps=2,
                   eval_every=4, progress=False, device="cpu", checkpoint_dir=checkpoint_dir,
                   checkpoint_every=checkpoint_every, keep_best=checkpoint_dir is not None)


def _fit(trainer: Trainer, run: str):
    return trainer.fit(RUNS[run]["epochs"], max_steps=RUNS[run]["max_steps"])


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _weights(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def references(one_thread):
    out = {}
    for run in RUNS:
        t = _trainer(run)
        _fit(t, run)
        out[run] = (_weights(t), t.step, t.epoch, list(t.history.steps))
    return out


# ---- in one process --------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", list(RUNS))
def test_resuming_from_every_checkpoint_of_a_run_is_bit_identical(run, references, tmp_path):
    ref_weights, ref_step, ref_epoch, ref_eval_steps = references[run]
    trainer = _trainer(run, tmp_path / "ckpt", checkpoint_every=1)
    saved = []
    save = trainer.save_checkpoint

    def keep_a_copy(path):  # every last.pt the run writes, including mid-epoch and end-of-epoch ones
        path = save(path)
        if path.name == "last.pt":
            saved.append(shutil.copy(path, tmp_path / f"step{trainer.step:02d}-{len(saved)}.pt"))
        return path

    trainer.save_checkpoint = keep_a_copy
    _fit(trainer, run)
    assert _same(_weights(trainer), ref_weights), "writing checkpoints changed the run"
    assert len(saved) == ref_step + 1  # one per step, and one when fit returns
    for i, path in enumerate(saved):
        resumed = _trainer(run)
        torch.manual_seed(999)  # another RNG state and a fresh loader generator, which loading must undo
        resumed.load_checkpoint(path)
        if i == len(saved) - 1 and RUNS[run]["max_steps"] is None:
            # written when the run had finished its epochs: the same call is a no-op, and says so
            with pytest.warns(UserWarning, match="nothing is left to train"):
                _fit(resumed, run)
        else:
            _fit(resumed, run)  # the SAME call as the saved run
        assert _same(_weights(resumed), ref_weights), f"resuming from {path.name} changed the result"
        assert (resumed.step, resumed.epoch, resumed.history.steps) == (ref_step, ref_epoch, ref_eval_steps)


def test_a_max_steps_stop_inside_an_epoch_is_not_a_finished_epoch(references):
    ref_weights, ref_step, ref_epoch, _ = references["B"]
    t = _trainer("B")
    t.fit(4, max_steps=9)  # 6 steps per epoch: stops after 3 of epoch 2's 6 steps
    assert (t.step, t.epoch) == (9, 1)
    t.fit(4, max_steps=20)  # the natural continuation: same epochs, a later max_steps
    assert (t.step, t.epoch) == (ref_step, ref_epoch) == (20, 3)
    # evaluating at the stop puts the random-number states back, so the result is the uninterrupted one
    assert _same(_weights(t), ref_weights)
    t.fit(4)  # the run's 4 epochs: finishes epoch 4 (24 steps), not 4 more epochs
    assert (t.step, t.epoch) == (24, 4)
    t.fit(1)  # a finished run: one more epoch
    assert (t.step, t.epoch) == (30, 5)
    t.fit(1)
    assert (t.step, t.epoch) == (36, 6)


def test_evaluating_more_often_does_not_change_training():
    a = _trainer("A")  # (_trainer seeds the global RNG: build each trainer just before its run)
    _fit(a, "A")
    b = _trainer("A")
    b.eval_every, b.eval_batches = 1, 2  # evaluations iterate the shuffled training loader too
    _fit(b, "A")
    assert len(b.history.steps) > len(a.history.steps)
    assert _same(_weights(a), _weights(b))


def test_resume_needs_the_same_loader_and_accumulation(tmp_path):
    t = _trainer("A", tmp_path, checkpoint_every=1)
    t.fit(3, max_steps=3)  # inside epoch 1
    path = tmp_path / "last.pt"
    other = _trainer("A")
    other.accumulation_steps = 1
    with pytest.raises(ValueError, match="accumulation_steps=2"):
        other.load_checkpoint(path)
    shorter = _trainer("A")
    shorter.train_loader = DataLoader(_data(40), batch_size=4, shuffle=True, generator=torch.Generator())
    with pytest.raises(ValueError, match="epoch of 11 batches, and this training loader has 10"):
        shorter.load_checkpoint(path)
    lower_lr = _trainer("A")
    lower_lr.lr = 1e-3
    with pytest.warns(UserWarning, match=r"other training settings: lr 0\.001 \(saved run: 0\.005\)"):
        lower_lr.load_checkpoint(path)
    unseeded = _trainer("A")
    unseeded.train_loader = DataLoader(_data(44), batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match="1 data-loader generator.*has 0"):
        unseeded.load_checkpoint(path)


# ---- SIGKILL of a real training process ------------------------------------------------------------------


def _worker(conn, run: str, folder: str, out: str) -> None:
    """A training process: resume from last.pt if there is one, then the run's fit call. It tells the parent
    where it resumed, gets the next kill point (an event and a step), and waits there for the parent's go (the
    parent may SIGKILL it instead); a "saving" kill point stops it with half of the file written."""
    torch.set_num_threads(1)
    folder = Path(folder)
    trainer = _trainer(run, folder, checkpoint_every=1)  # removes the temporary files of a killed save
    if (folder / "last.pt").exists():
        trainer.load_checkpoint(folder / "last.pt")
    conn.send(("started", sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")), trainer.step))
    kill_at = conn.recv()
    real_save, real_step = torch.save, trainer.train_step

    def reporting_save(obj, f, *args, **kwargs):
        if kill_at != ("saving", trainer.step):
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])  # half of the file is in the temporary file when the parent kills
        f.flush()
        conn.send(kill_at)
        conn.recv()
        f.write(data[len(data) // 2 :])

    def reporting_step(micro_batches):
        loss = real_step(micro_batches)
        if kill_at == ("step", trainer.step):
            conn.send(kill_at)
            conn.recv()
        return loss

    torch.save = reporting_save
    trainer.train_step = reporting_step
    _fit(trainer, run)
    real_save(trainer.model.state_dict(), out)
    conn.send(("done", trainer.step))


def _run_chain(ctx, run: str, folder: Path, out: Path, kills: list[tuple[str, int]], last_step: int,
               rng: random.Random) -> dict:
    """Start the worker, SIGKILL it at each planned (event, step) in turn, restart it, until it finishes.

    Half of the "step" kills land at once, half after a random delay of up to 20 ms (anywhere in the steps,
    evaluations and saves that follow). A kill point the resumed worker has already passed (a delayed kill let
    it run on) moves to the step after the one it resumed at."""
    kills = list(kills)
    stats = {"kills": 0, "kills_mid_save": 0, "restarts": 0, "orphans_left_by_kills": 0}
    while True:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, run, str(folder), str(out)), daemon=True)
        proc.start()
        child.close()
        try:
            if not parent.poll(120):
                raise AssertionError("the worker did not start within 120 s")
            _, leftovers, resumed_at = parent.recv()
            assert leftovers == [], f"temporary files left after the trainer started: {leftovers}"
            previous = resumed_at
            for i, (event, step) in enumerate(kills):
                kills[i] = (event, max(step, previous + 1))
                previous = kills[i][1]
            kills = [k for k in kills if k[1] <= last_step]
            parent.send(kills[0] if kills else None)
            if not parent.poll(120):
                raise AssertionError(f"worker silent for 120 s (kills left {kills})")
            message = parent.recv()
            if message[0] == "done":
                proc.join(30)
                assert not kills, f"the worker finished before the kills {kills}"
                return stats
            assert message == kills[0], (message, kills)
            event, _ = kills.pop(0)
            if event == "step" and rng.random() < 0.5:
                parent.send("go")
                time.sleep(rng.uniform(0.0, 0.02))
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(30)  # reaped: its pid is gone, so its temporary file counts as an orphan
            assert proc.exitcode == -signal.SIGKILL
            stats["kills"] += 1
            stats["kills_mid_save"] += event == "saving"
            stats["orphans_left_by_kills"] += sum(p.name.endswith(".tmp") for p in folder.iterdir())
        finally:
            parent.close()
            if proc.is_alive():
                proc.kill()
                proc.join()
        stats["restarts"] += 1


@pytest.mark.skipif(os.name == "nt" or "forkserver" not in multiprocessing.get_all_start_methods(),
                    reason="SIGKILL and the forkserver start method are POSIX")
def test_sigkilled_training_resumes_bit_identically(tmp_path):
    # A forkserver imports torch once; every worker is a fresh fork of it (a real process, started in ms).
    ctx = multiprocessing.get_context("forkserver")
    # (torch._dynamo: the first optimizer of a process imports it, ~10 s on a loaded machine; import it once too)
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "llmscratch.train", "test_resume"])
    rng = random.Random(int(os.environ.get("RESUME_TEST_SEED", "2026")))
    start = time.perf_counter()
    totals = {"chains": 0, "processes": 0, "kills": 0, "kills_mid_save": 0, "bit_identical": 0,
              "orphans_removed": 0}
    for run in RUNS:
        ref_out = tmp_path / f"ref-{run}.pt"
        last_step = 18 if run == "A" else 20
        _run_chain(ctx, run, tmp_path / f"ref-{run}", ref_out, [], last_step, rng)
        reference = torch.load(ref_out, weights_only=True)
        for chain in range(3):
            steps = sorted(rng.sample(range(1, last_step - 3), 3))
            in_save = rng.choice(steps)  # one kill per chain lands in the middle of writing a checkpoint
            kills = [("saving" if s == in_save else "step", s) for s in steps]
            folder, out = tmp_path / f"{run}{chain}", tmp_path / f"{run}{chain}.pt"
            stats = _run_chain(ctx, run, folder, out, kills, last_step, rng)
            assert stats["kills"] == 3 and stats["kills_mid_save"] == 1, stats
            assert stats["orphans_left_by_kills"] >= 1  # the killed save did leave one behind ...
            assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt"]  # ... and it is gone
            totals["chains"] += 1
            totals["kills"] += stats["kills"]
            totals["processes"] += stats["restarts"] + 1
            totals["kills_mid_save"] += stats["kills_mid_save"]
            totals["orphans_removed"] += stats["orphans_left_by_kills"]
            same = _same(torch.load(out, weights_only=True), reference)
            totals["bit_identical"] += same
            assert same, f"run {run}, chain {chain} (kills {kills}): final weights differ from the uninterrupted run"
    print(f"\nkill-and-resume: {totals}, {time.perf_counter() - start:.1f} s")
