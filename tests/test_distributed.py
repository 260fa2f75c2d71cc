"""Distributed training (recipeset/distributed.py): 2 processes under ``torchrun`` on CPU (gloo) follow a single
process's loss trajectory; only rank 0 writes the run directory and the MLflow run; ``--resume`` works. Plus the
GPU-only precision machinery where it can run on CPU: the disabled GradScaler, the fused-AdamW choice, the
scaler state in checkpoints.

The trajectory test trains Deep Sets on the ``cls`` objective (cuisine cross-entropy, a mean over recipes,
every synthetic recipe labelled, no random draw, no dropout): DDP's gradient average of the ranks' weighted
per-recipe means is then the single process's gradient exactly, up to float summation order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recipeset.config import RunConfig, resolve_objectives
from recipeset.data.prepare import prepare_data
from recipeset.distributed import World, world
from recipeset.errors import RecipesetError
from recipeset.objectives.tasks import Objectives
from recipeset.pipeline import build_model, run_training
from recipeset.training import Trainer, load_trainer_state, make_grad_scaler, make_optimizer, use_fused_adamw

TORCHRUN = Path(sys.executable).parent / "torchrun"
SETTINGS = {"data.n_recipes": 400, "model.name": "deep-sets", "model.d_model": 16, "objectives.weights": {"cls": 1.0},
            "train.batch_size": 32, "train.warmup_steps": 2, "train.schedule": "constant", "train.lr": 3e-3,
            "train.device": "cpu", "train.eval_every": 10, "train.checkpoint_every": 10,
            "eval.tasks": ["cuisine"], "tracking.experiment": "ddp-test"}
STEPS = 20


def torchrun(out: Path, max_steps: int, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    sets = [x for k, v in SETTINGS.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "recipeset.cli", "train", *sets,
           "--max-steps", str(max_steps), "--deterministic", "--quiet", "--out", str(out), *extra]
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=run_env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def losses(run_dir: Path) -> np.ndarray:
    return np.array([v for _, v in load_trainer_state(run_dir / "checkpoint")[2].history["train/loss"]])


@pytest.mark.slow  # 3 torchrun launches of 2 processes each and a single-process run (~60 s on 2 busy cores)
def test_two_processes_follow_the_single_process_trajectory(mlflow_uri: str, tmp_path: Path):
    cfg = RunConfig().override({**SETTINGS, "train.max_steps": STEPS, "train.deterministic": True}, source="test")
    single = run_training(cfg, out_dir=tmp_path / "single", track=False, progress=False)
    torch.use_deterministic_algorithms(False)
    expected = losses(single.out_dir)
    assert len(expected) == STEPS

    done = torchrun(tmp_path / "ddp", STEPS)
    got = losses(tmp_path / "ddp")
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert done.stdout.count("run directory:") == 1  # rank 1 trained silently

    # rank 0 alone tracked: one MLflow run, holding the global batch's loss at every step
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("ddp-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert (tmp_path / "ddp" / "mlflow_run_id").read_text().strip() == runs[0].info.run_id
    tracked = sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, "train/loss"))
    np.testing.assert_allclose([v for _, v in tracked], expected, atol=1e-4, rtol=0)
    assert (tmp_path / "ddp" / "eval.json").exists() and (tmp_path / "ddp" / "model").is_dir()

    # --resume under torchrun: 10 steps, then the saved config asks for 20 (the constant schedule does not
    # depend on the number of steps) and both ranks continue from the checkpoint
    part = tmp_path / "part"
    torchrun(part, STEPS // 2, "--no-track")
    saved = json.loads((part / "config.json").read_text())
    saved["train"]["max_steps"] = STEPS
    (part / "config.json").write_text(json.dumps(saved))
    torchrun(part, STEPS, "--no-track", "--resume")
    np.testing.assert_allclose(losses(part), expected, atol=1e-4, rtol=0)


# ---- the rank helpers -----------------------------------------------------------------------------------------
def test_shards_of_a_global_batch_partition_it_with_weights_averaging_to_one():
    rows = np.arange(10, 17)
    shards = [World(rank=r, size=3).shard(rows) for r in range(3)]
    assert sorted(np.concatenate([s for s, _ in shards]).tolist()) == rows.tolist()
    assert shards[1][0].tolist() == [11, 14]
    assert sum(w for _, w in shards) / 3 == pytest.approx(1.0)  # DDP's mean of the weights: the global mean
    stand_in, weight = World(rank=2, size=3).shard(np.array([4, 5]))  # no row left: a weight-0 stand-in row
    assert stand_in.tolist() == [4] and weight == 0.0
    single = World()
    assert single.shard(rows) == (rows, 1.0) and single.stream == () and World(rank=1, size=2).stream == (1,)


def test_single_process_world_and_a_torchrun_launch_without_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world() == World() and world().is_main
    assert World().weighted_mean({"a": torch.tensor(2.5)}, 1.0) == {"a": 2.5}
    assert World(rank=1, size=2).device(torch.device("cuda")) == torch.device("cuda", 0)  # LOCAL_RANK 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipesetError, match="process group"):
        world()


# ---- GPU precision, as far as it runs on CPU ------------------------------------------------------------------
def test_fused_adamw_where_every_parameter_is_on_a_device_with_the_kernel():
    model = torch.nn.Linear(3, 2)
    params = list(model.parameters())
    assert use_fused_adamw(params, "cpu") and use_fused_adamw(params, None)
    assert not use_fused_adamw(params, torch.device("cuda"))  # the parameters are still on the CPU
    assert not use_fused_adamw([p.double() for p in params], "cpu") and not use_fused_adamw([], "cpu")
    assert make_optimizer(model, 1e-3, 0.0, torch.device("cpu")).defaults["fused"]


def test_fused_adamw_follows_the_default_implementation():
    """The fused kernel is a speed-up, not another optimizer: 20 steps of both from the same weights and
    gradients end at the same weights (to float rounding)."""
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Embedding(7, 5), torch.nn.Linear(5, 3)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optims = [make_optimizer(models[0], 1e-2, 0.1, "cpu"), make_optimizer(models[1], 1e-2, 0.1, "cpu")]
    for g in optims[1].param_groups:
        g["fused"] = None
    assert optims[0].defaults["fused"] and not optims[1].param_groups[0]["fused"]
    x = torch.randint(0, 7, (20, 4))
    for step in range(20):
        for model, opt in zip(models, optims, strict=True):
            opt.zero_grad()
            model(x[step]).square().sum().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def tiny_trainer(out: Path) -> Trainer:
    cfg = RunConfig().override({**SETTINGS, "data.n_recipes": 200, "train.max_steps": 2}, source="test")
    cfg.objectives.weights = resolve_objectives(cfg)
    data = prepare_data(cfg.data)
    model = build_model(cfg, data.vocab, cfg.objectives.weights, int(data.train.lengths.max()))
    return Trainer(cfg, model, Objectives(cfg, cfg.objectives.weights), data.train, data.val, out, progress=False)


def test_grad_scaler_is_enabled_only_for_fp16_on_cuda_and_its_state_is_checkpointed(tmp_path):
    for precision in ("auto", "fp16", "bf16", "fp32"):
        assert not make_grad_scaler(torch.device("cpu"), precision).is_enabled()
    loss = torch.tensor(2.0, requires_grad=True)
    assert make_grad_scaler(torch.device("cpu"), "fp16").scale(loss) is loss  # disabled: the plain backward
    trainer = tiny_trainer(tmp_path)
    trainer.fit()
    assert load_trainer_state(trainer.checkpoint_dir)[2].scaler == {}
    # an enabled scaler (CPU has one too) goes through scale, unscale before clipping, step, update ...
    trainer = tiny_trainer(tmp_path / "scaled")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    trainer.fit()
    assert trainer.scaler.get_scale() == 2.0**12 and all(p.grad.abs().max() < 1e2 for p in trainer.optimizer
                                                         .param_groups[0]["params"] if p.grad is not None)
    # ... and a resumed run continues with its scale
    resumed = tiny_trainer(tmp_path / "scaled")
    resumed.scaler = torch.amp.GradScaler("cpu", growth_interval=1)
    resumed.restore()
    assert resumed.scaler.state_dict() == trainer.scaler.state_dict()


def test_a_checkpoint_of_the_default_adamw_resumes_with_the_implementation_it_saved():
    """Runs checkpointed before AdamW was fused on the CPU resume exactly: the saved param groups (``fused``
    unset) replace the new optimizer's, so the resumed steps are the default loop's, as the run's first ones were."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(7, 5), torch.nn.Linear(5, 3))
    old = make_optimizer(model, 1e-2, 0.1, "cpu")
    for g in old.param_groups:
        g["fused"] = None  # what make_optimizer built on the CPU before
    model(torch.tensor([1, 2])).sum().backward()
    old.step()
    resumed = make_optimizer(model, 1e-2, 0.1, "cpu")
    assert resumed.defaults["fused"]
    resumed.load_state_dict(old.state_dict())
    assert all(not g["fused"] for g in resumed.param_groups)
    model(torch.tensor([3, 4])).sum().backward()
    resumed.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
