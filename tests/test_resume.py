"""Kill -9 a real training process and resume it: the same final metrics as an uninterrupted run, the same
MLflow run, and every metric step logged exactly once.

Two moments to kill at: when the MLflow store already holds metrics *after* the last checkpoint (a flush happened
after it), so the resumed run replays steps the store has seen and must not log them twice; and right after a
checkpoint, when the steps before it must already be in the store (the resumed run starts after them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recipeset.training import STATE_FILE

SETTINGS = ["model.name=decoder", "data.n_recipes=400", "model.d_model=16", "model.n_layers=1", "train.batch_size=32",
            "train.warmup_steps=2", "eval.max_queries=30", "eval.joint_max_queries=10", "train.device=cpu",
            "train.checkpoint_every=150", "train.eval_every=100", "eval.tasks=[\"completion\",\"set\"]"]
MAX_STEPS = 350  # checkpoints at 150, 300, 350; metric flushes every 100 logging calls


def train_cmd(out: Path, *extra: str, max_steps: int = MAX_STEPS) -> list[str]:
    sets = [x for kv in SETTINGS for x in ("--set", kv)]
    return [sys.executable, "-m", "recipeset.cli", "train", *sets, "--max-steps", str(max_steps), "--deterministic",
            "--quiet", "--experiment", "resume-test", "--out", str(out), *extra]


def train_env(mlflow_uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def sigkill_when(proc: subprocess.Popen, ready) -> int:
    """SIGKILL ``proc`` as soon as ``ready()`` returns a checkpoint step (polled every 10 ms); returns that step."""
    try:
        deadline = time.monotonic() + 120
        killed_at = None
        while time.monotonic() < deadline and proc.poll() is None:
            killed_at = ready()
            if killed_at is not None:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
        assert killed_at is not None, f"the run ended (rc={proc.returncode}) before it could be killed:\n" \
                                      f"{proc.stderr.read()[-2000:]}"
        assert proc.returncode == -signal.SIGKILL
        return killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def checkpoint_step(run_dir: Path) -> int:
    try:
        blob = torch.load(run_dir / "checkpoint" / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not written yet, or being swapped in right now
        return -1
    return int(json.loads(blob["state"])["step"])


def stored_max_step(db: Path) -> int:
    """The largest step of train/loss in the SQLite store (read-only; -1 when none or locked)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)
        try:
            row = con.execute("select max(step) from metrics where key = 'train/loss'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return -1
    return -1 if row is None or row[0] is None else int(row[0])


@pytest.mark.slow  # real processes killed and waited for (~20 s); .ci/run runs the slow tests too
def test_sigkill_then_resume_matches_an_uninterrupted_run(mlflow_uri: str, tmp_path: Path):
    from mlflow import MlflowClient

    env = train_env(mlflow_uri)
    db = tmp_path / "mlflow.db"
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"

    # The uninterrupted reference (untracked: the metrics do not depend on tracking) runs alongside.
    straight = subprocess.Popen(train_cmd(straight_dir, "--no-track"), cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(train_cmd(killed_dir), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)

    def store_ahead_of_the_checkpoint() -> int | None:
        ckpt = checkpoint_step(killed_dir)
        return ckpt if ckpt > 0 and stored_max_step(db) > ckpt else None

    killed_at = sigkill_when(proc, store_ahead_of_the_checkpoint)

    run_id = (killed_dir / "mlflow_run_id").read_text().strip()
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "RUNNING"   # a SIGKILLed run cannot mark itself
    before = {m.step for m in client.get_metric_history(run_id, "train/loss")}
    assert max(before) > killed_at                           # steps after the checkpoint are already stored
    assert not (killed_dir / "eval.json").exists()

    resumed = subprocess.run(train_cmd(killed_dir, "--resume"), cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"mlflow run: {run_id}" in resumed.stdout
    straight.wait(timeout=180)
    assert straight.returncode == 0, straight.stderr.read()[-3000:]

    # the same final test (and validation) metrics as the uninterrupted run
    assert json.loads((killed_dir / "eval.json").read_text()) == json.loads((straight_dir / "eval.json").read_text())
    w_killed = torch.load(killed_dir / "model" / "weights.pt", weights_only=True)
    w_straight = torch.load(straight_dir / "model" / "weights.pt", weights_only=True)
    assert all(torch.equal(w_killed[k], w_straight[k]) for k in w_straight)

    # one MLflow run, finished, with every step logged exactly once
    assert (killed_dir / "mlflow_run_id").read_text().strip() == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    for key in ("train/loss", "train/lr"):
        assert steps(client, run_id, key) == list(range(1, MAX_STEPS + 1)), key
    assert steps(client, run_id, "val/loss") == [100, 200, 300, MAX_STEPS]
    assert "test/completion/mrr" in run.data.metrics
    assert run.data.params["train.max_steps"] == str(MAX_STEPS)  # params were not re-logged (that would raise)


@pytest.fixture(autouse=True)
def _no_leftover_dirs(tmp_path: Path):
    yield
    shutil.rmtree(tmp_path / "straight", ignore_errors=True)


@pytest.mark.slow  # real processes killed and waited for (~15 s)
def test_sigkill_between_checkpoints_loses_no_step(mlflow_uri: str, tmp_path: Path):
    """Killed after a checkpoint, before the tracker's next periodic flush: the steps up to the checkpoint were
    flushed with it (before, the buffer died with the process and the resumed run, which starts after the
    checkpoint, never logged them: holes in every curve)."""
    from mlflow import MlflowClient

    env = train_env(mlflow_uri)
    run_dir, max_steps = tmp_path / "run", 240
    cmd = train_cmd(run_dir, "--set", "train.checkpoint_every=40", max_steps=max_steps)  # 40, 80, ..., 240
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def between_checkpoints() -> int | None:
        # from 120 on, a checkpoint follows a periodic flush (every 100 logging calls), the steps since buffered
        ckpt = checkpoint_step(run_dir)
        return ckpt if 120 <= ckpt < max_steps else None

    killed_at = sigkill_when(proc, between_checkpoints)
    assert 120 <= killed_at < max_steps

    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = MlflowClient(mlflow_uri)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("train/loss", "train/lr", "train/grad_norm"):
        assert steps(client, run_id, key) == list(range(1, max_steps + 1)), key  # no hole, no step twice
    assert steps(client, run_id, "val/loss") == [100, 200, max_steps]
