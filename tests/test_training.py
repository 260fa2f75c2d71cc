"""The Trainer (recipeset/training.py): schedules, AdamW groups, atomic checkpoints, in-process resume,
early stopping, the curriculum and dataset mixing."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recipeset.config import RunConfig, resolve_objectives
from recipeset.data.batching import real_fraction
from recipeset.data.prepare import prepare_data
from recipeset.errors import RecipesetError
from recipeset.objectives.tasks import Objectives
from recipeset.pipeline import build_model
from recipeset.training import (
    STATE_FILE,
    Trainer,
    curriculum_pool,
    epoch_batches,
    load_trainer_state,
    lr_multiplier,
    make_optimizer,
    seed_all,
)

TINY = {"data.n_recipes": 300, "model.d_model": 16, "model.n_layers": 1, "train.batch_size": 32,
        "train.warmup_steps": 2, "train.device": "cpu", "eval.max_queries": 30}


def make_trainer(out: Path, log=None, data=None, **over) -> Trainer:
    cfg = RunConfig().override({**TINY, **over}, source="test")
    weights = resolve_objectives(cfg)
    cfg.objectives.weights = weights
    data = data or prepare_data(cfg.data)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, data.vocab, weights, int(data.train.lengths.max()))
    return Trainer(cfg, model, Objectives(cfg, weights), data.train, data.val, out, log=log, progress=False,
                   train_weights=data.train_weights)


@pytest.fixture(scope="module")
def data():
    return prepare_data(RunConfig().override(TINY, source="test").data)


@pytest.fixture
def deterministic():
    seed_all(0, deterministic=True)
    yield
    torch.use_deterministic_algorithms(False)


# ---- schedules -----------------------------------------------------------------------------------------
def test_warmup_is_linear_to_one():
    assert [lr_multiplier(s, 4, 20, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [lr_multiplier(s, 4, 20, "inverse-sqrt") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_decays_to_a_ten_percent_floor():
    # warmup 4, total 20: progress = (s - 4) / 16
    assert lr_multiplier(4, 4, 20, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(12, 4, 20, "cosine") == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert lr_multiplier(8, 4, 20, "cosine") == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier(20, 4, 20, "cosine") == pytest.approx(0.1)
    assert lr_multiplier(500, 4, 20, "cosine") == pytest.approx(0.1)  # never below the floor
    values = [lr_multiplier(s, 4, 20, "cosine") for s in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_inverse_sqrt_and_constant():
    assert lr_multiplier(15, 4, 100, "inverse-sqrt") == pytest.approx(0.5)       # sqrt(4 / 16)
    assert lr_multiplier(99, 4, 100, "inverse-sqrt") == pytest.approx(0.2)       # sqrt(4 / 100)
    assert lr_multiplier(8, 0, 100, "inverse-sqrt") == pytest.approx(1 / 3)      # no warmup: sqrt(1 / 9)
    assert lr_multiplier(0, 0, 100, "constant") == 1.0
    assert lr_multiplier(77, 10, 100, "constant") == 1.0
    with pytest.raises(RecipesetError, match="schedule"):
        lr_multiplier(10, 0, 100, "linear")


def test_trainer_applies_the_schedule_step_by_step(tmp_path, data):
    logged: dict[int, float] = {}
    trainer = make_trainer(tmp_path, data=data, log=lambda m, s: logged.update({s: m["train/lr"]} if "train/lr" in m
                                                                               else {}),
                           **{"train.max_steps": 8, "train.warmup_steps": 3, "train.lr": 0.01})
    trainer.fit()
    # the lr used by the optimizer at step s (logged at s + 1) is lr · multiplier(s)
    assert [logged[s + 1] for s in range(8)] == pytest.approx([0.01 * lr_multiplier(s, 3, 8, "cosine")
                                                               for s in range(8)])


# ---- AdamW -------------------------------------------------------------------------------------------------
def test_adamw_decays_only_matrices(data):
    cfg = RunConfig().override(TINY, source="test")
    model = build_model(cfg, data.vocab, {"clm": 1.0}, 20)
    opt = make_optimizer(model, lr=0.1, weight_decay=0.5)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters() if p.dim() >= 2}
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in model.parameters() if p.dim() < 2}
    assert any(p.dim() == 1 for p in no_decay["params"])
    # with zero gradients Adam's update is 0: only the decoupled decay p ← p·(1 − lr·wd) acts
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.5) if p.dim() >= 2 else before[n]
        torch.testing.assert_close(p.detach(), expected, msg=n)


# ---- checkpoints ----------------------------------------------------------------------------------------
def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_checkpoint_is_atomic_when_saving_fails(tmp_path, data, monkeypatch):
    trainer = make_trainer(tmp_path, data=data, **{"train.max_steps": 2, "train.checkpoint_every": 1})
    trainer.fit()
    ckpt = trainer.checkpoint_dir
    old = _snapshot(ckpt)
    assert {"model/weights.pt", STATE_FILE} <= set(old)
    # change the weights, then fail midway: the model files are written, the trainer state is not
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    real_save = torch.save

    def failing_save(obj, f, *a, **kw):
        if str(getattr(f, "name", f)).endswith(STATE_FILE):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RecipesetError, match="no space left on the device.*checkpoint of step 2 is intact"):
        trainer.save()
    assert _snapshot(ckpt) == old                       # the previous checkpoint is intact
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []                              # no partial temporary directory left behind
    monkeypatch.setattr(torch, "save", real_save)
    state = load_trainer_state(ckpt)[2]
    assert state.step == 2


def test_corrupt_or_missing_trainer_state_is_a_clear_error(tmp_path):
    with pytest.raises(RecipesetError, match="without --resume"):
        load_trainer_state(tmp_path)
    (tmp_path / STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(RecipesetError, match="cannot read the checkpoint"):
        load_trainer_state(tmp_path)


class Crash(Exception):
    pass


@pytest.mark.parametrize(("model", "order", "pack", "ema"), [
    ("decoder", "shuffle", None, 0.0), ("decoder", "frequency", False, 0.0),
    ("set-transformer", "frequency", None, 0.0),  # None: both pack
    ("decoder", "shuffle", None, 0.9)])          # the weight average is checkpointed too
def test_resume_in_process_gives_identical_weights(tmp_path, data, deterministic, model, order, pack, ema):
    over = {"model.name": model, "train.max_steps": 13, "train.checkpoint_every": 5, "data.order": order,
            "train.deterministic": True, "train.eval_every": 4, "model.dropout": 0.1, "train.pack": pack,
            "train.ema_decay": ema}
    straight = make_trainer(tmp_path / "a", data=data, **over)
    assert straight.objectives.pack == (pack is None)
    straight.fit()

    def crash_after_checkpoint(metrics, step):
        if step == 7 and "train/loss" in metrics:  # after the step-5 checkpoint, mid-way in epoch 0 (8 steps)
            raise Crash()

    first = make_trainer(tmp_path / "b", data=data, log=crash_after_checkpoint, **over)
    with pytest.raises(Crash):
        first.fit()
    checkpointed = load_trainer_state(first.checkpoint_dir)[2]
    assert checkpointed.step == 5
    resumed = make_trainer(tmp_path / "b", data=data, **over)
    state = resumed.fit(resume=True)
    assert state.step == 13 and state.epoch == straight.state.epoch
    # the training time and recipes continue the checkpoint's: steps 1-5 there, 6-13 (7 replayed) here
    assert 0 < checkpointed.train_recipes == 5 * 32 and state.train_recipes == straight.state.train_recipes
    assert 0 < checkpointed.train_s < state.train_s
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    if ema:
        averaged = zip(straight.averaged.state_dict().items(), resumed.averaged.state_dict().values(), strict=True)
        for (name, a), b in averaged:
            assert torch.equal(a, b), name
    assert state.history == straight.state.history  # (step, value) tuples, also for the restored part
    assert state.best_step == straight.state.best_step and state.best_metric == straight.state.best_metric


def test_early_stopping_stops_after_patience(tmp_path, data):
    # a learning rate this small leaves the validation loss unchanged (within 1e-6): no evaluation improves
    logged = []
    trainer = make_trainer(tmp_path, data=data, log=lambda m, s: logged.append(s) if "val/loss" in m else None,
                           **{"train.max_steps": 50, "train.lr": 1e-12, "train.eval_every": 2,
                              "train.early_stopping_patience": 3})
    state = trainer.fit()
    assert logged == [2, 4, 6, 8]        # the first evaluation sets the best, then 3 without improvement
    assert state.step == 8 and state.best_step == 2 and state.bad_evals == 3
    assert (tmp_path / "best" / "weights.pt").exists()
    assert load_trainer_state(trainer.checkpoint_dir)[2].step == 8  # the stop is checkpointed


def test_early_stopping_on_validation_mrr_keeps_the_model_with_the_best_mrr(tmp_path, data):
    """``val/completion/mrr`` is computed at every validation (the same seeded queries each time), maximised: the
    best step is the one with the highest MRR, and the saved best model scores exactly that MRR."""
    from recipeset.evaluation import evaluate_completion
    from recipeset.protocol import eval_subset
    from recipeset.runs import load_model

    history = []
    trainer = make_trainer(tmp_path, data=data, log=lambda m, s: history.append((s, m)) if "val/loss" in m else None,
                           **{"train.max_steps": 24, "train.lr": 3e-3, "train.eval_every": 4,
                              "train.early_stopping_metric": "val/completion/mrr", "eval.val_max_queries": 40})
    state = trainer.fit()
    mrr = {step: m["val/completion/mrr"] for step, m in history}
    assert len(mrr) == 6 and all("val/completion/recall@10" in m for _, m in history)
    best = max(mrr, key=lambda step: (mrr[step], -step))  # the first of equal ones
    assert state.best_step == best and state.best_metric == -mrr[best]
    again = evaluate_completion(load_model(tmp_path / "best"), eval_subset(data.val, 40, 0), seed=0)["mrr"]
    assert again == pytest.approx(mrr[best], abs=1e-9)


def test_ema_update_is_the_warmed_up_moving_average():
    from recipeset.training import ema_update
    averaged, update = [torch.tensor([0.0, 10.0])], ema_update(0.5)
    update(averaged, [torch.tensor([1.0, 0.0])], torch.tensor(1))  # decay min(0.5, 2/11) = 2/11
    assert torch.allclose(averaged[0], torch.tensor([9 / 11, 20 / 11]))
    update(averaged, [torch.tensor([0.0, 0.0])], torch.tensor(100))  # decay 0.5
    assert torch.allclose(averaged[0], torch.tensor([9 / 22, 10 / 11]))


def test_ema_validates_and_keeps_the_average_and_trains_the_raw_weights(tmp_path, data):
    """With ``train.ema_decay`` the periodic validation and the best model are the weight average's, and
    training goes on from the optimizer's own weights (validation swaps the average in and back out)."""
    from recipeset.models.io import read_weights

    over = {"train.max_steps": 6, "train.eval_every": 3, "train.lr": 3e-3}
    plain = make_trainer(tmp_path / "plain", data=data, **over)
    plain.fit()
    averaged = make_trainer(tmp_path / "ema", data=data, **over, **{"train.ema_decay": 0.5})
    state = averaged.fit()
    for (name, a), b in zip(plain.model.state_dict().items(), averaged.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the trained weights are those of a run without the average
    assert int(averaged.averaged.n_averaged) == 6
    expected = [p.detach() for p in averaged.averaged.module.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(expected, averaged.model.parameters(), strict=True))
    with averaged.averaged_weights():
        assert averaged.validate() == pytest.approx(
            {k: v[-1][1] for k, v in state.history.items() if k.startswith("val/")})
    assert state.best_step == 6  # the loss still falls: the best model is the last validation's average
    best = read_weights(tmp_path / "ema" / "best" / "weights.pt", "cpu")
    for (name, _), e in zip(averaged.model.named_parameters(), expected, strict=True):
        assert torch.equal(best[name], e), name


def test_higher_is_better_for_ranking_metrics_only():
    from recipeset.training import higher_is_better

    assert higher_is_better("val/completion/mrr") and higher_is_better("val/completion/recall@10")
    assert not higher_is_better("val/loss") and not higher_is_better("val/completion/mean_rank")
    assert not higher_is_better("val/loss/mlm")


def test_early_stopping_metric_must_exist_before_any_step(tmp_path, data):
    with pytest.raises(RecipesetError, match="'val/nope' is not computed by this run; choose from val/loss, "
                                             "val/loss/clm, val/ppl/clm") as e:
        make_trainer(tmp_path, data=data, **{"train.max_steps": 2, "train.early_stopping_metric": "val/nope"})
    assert "val/completion/mrr" in str(e.value) and not (tmp_path / "checkpoint").exists()
    with pytest.raises(RecipesetError, match="'val/loss/mlm'"):  # a real loss, but not this run's (decoder: clm)
        make_trainer(tmp_path, data=data, **{"train.early_stopping_metric": "val/loss/mlm"})


@pytest.mark.parametrize("metric", ["val/loss", "val/loss/clm", "val/ppl/clm", "val/completion/recall@10"])
def test_every_offered_early_stopping_metric_is_one_validation_computes(tmp_path, data, metric):
    trainer = make_trainer(tmp_path, data=data, **{"train.early_stopping_metric": metric,
                                                   "eval.val_max_queries": 20})
    assert metric in trainer.validate()


# ---- curriculum and batches -------------------------------------------------------------------------------
def test_curriculum_pool_grows_from_the_smallest_sets():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 20, size=200)
    pools = [curriculum_pool(lengths, e, epochs=10, start=0.3) for e in range(10)]
    sizes = [len(p) for p in pools]
    assert sizes[0] == 60 and sizes[-1] == 200
    assert all(a <= b for a, b in zip(sizes, sizes[1:], strict=False)) and sizes[0] < sizes[3] < sizes[5]
    assert sizes[5:] == [200] * 5                       # the ramp covers the first half of training
    for p in pools:                                     # every pool is a prefix in size order
        assert lengths[p].max() <= np.sort(lengths)[len(p) - 1]
        assert len(set(p.tolist())) == len(p)


def test_trainer_curriculum_feeds_small_recipes_first(tmp_path, data):
    trainer = make_trainer(tmp_path, data=data, **{"train.curriculum": True, "train.epochs": 6})
    sets = trainer.epoch_sets(0)
    first = np.concatenate(trainer.epoch_plan(0, sets))
    last = np.concatenate(trainer.epoch_plan(5, sets))
    assert len(first) < len(last) == len(sets)
    assert sets.lengths[first].max() <= np.median(sets.lengths) + 1
    assert sets.lengths[first].mean() < sets.lengths[last].mean()


def test_trainer_plans_group_every_path_by_length(tmp_path):
    for over in ({}, {"train.curriculum": True}, {"data.order": "k-perms", "data.k_perms": 2}):
        trainer = make_trainer(tmp_path / str(len(over)), **over, **{"train.bucket_pool": 2})
        sets = trainer.epoch_sets(0)
        grouped = trainer.epoch_plan(0, sets)
        trainer.bucket_pool = 0
        plain = trainer.epoch_plan(0, sets)
        assert np.array_equal(np.sort(np.concatenate(grouped)), np.sort(np.concatenate(plain)))
        assert real_fraction(grouped, sets.lengths) > real_fraction(plain, sets.lengths)


def test_epoch_batches_are_a_seeded_permutation():
    a = epoch_batches(100, 32, seed=1, epoch=0)
    assert [len(b) for b in a] == [32, 32, 32, 4]
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    assert all(np.array_equal(x, y) for x, y in zip(a, epoch_batches(100, 32, seed=1, epoch=0), strict=True))
    assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_batches(100, 32, seed=1, epoch=1)))


# ---- mixing -------------------------------------------------------------------------------------------------
def _write_csv(path: Path, prefix: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = ["ingredients,cuisine"]
    for _ in range(n):
        k = int(rng.integers(2, 6))
        items = rng.choice(12, size=k, replace=False)
        rows.append(";".join(f"{prefix}_{i}" for i in items) + f",{prefix}cuisine")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_mixing_samples_datasets_in_proportion_to_their_weights(tmp_path):
    _write_csv(tmp_path / "alpha.csv", "a", 400, 0)
    _write_csv(tmp_path / "beta.csv", "b", 100, 1)
    mix = [{"dataset": str(tmp_path / "alpha.csv"), "weight": 1.0},
           {"dataset": str(tmp_path / "beta.csv"), "weight": 3.0}]
    cfg = RunConfig().override({**TINY, "data.mix": mix, "data.n_recipes": None}, source="test")
    data = prepare_data(cfg.data)
    # a shared vocabulary from both files
    names = data.vocab.ingredients
    assert any(n.startswith("a_") for n in names) and any(n.startswith("b_") for n in names)
    w = data.train_weights
    assert w is not None and len(w) == len(data.train) and w.sum() == pytest.approx(1.0)
    from_beta = np.array([data.vocab.token(int(data.train.values[o])).startswith("b_")
                          for o in data.train.offsets[:-1]])
    assert from_beta.sum() < (~from_beta).sum()          # beta is the smaller file ...
    assert w[from_beta].sum() == pytest.approx(0.75)     # ... but gets 3/4 of the draws
    trainer = make_trainer(tmp_path / "run", data=data, **{"data.mix": mix, "data.n_recipes": None,
                                                           "train.bucket_pool": 64})
    drawn = np.concatenate([np.concatenate(trainer.epoch_plan(e, data.train)) for e in range(20)])
    assert from_beta[drawn].mean() == pytest.approx(0.75, abs=0.03)
    grouped = np.concatenate(trainer.epoch_plan(0, data.train))  # length grouping keeps each epoch's draws
    trainer.bucket_pool = 0
    assert np.array_equal(np.sort(grouped), np.sort(np.concatenate(trainer.epoch_plan(0, data.train))))


def test_kill_during_the_checkpoint_swap_is_recovered(tmp_path, data, monkeypatch):
    """atomic_write_dir moves the old checkpoint aside before renaming the new one in; a kill between the two
    renames leaves only ``.checkpoint.old``. ``recover_checkpoint`` (called before every resume) puts it back."""
    import os

    import recipeset.io_utils as io_utils
    from recipeset.pipeline import run_training
    from recipeset.training import recover_checkpoint

    trainer = make_trainer(tmp_path, data=data, **{"train.max_steps": 2, "train.checkpoint_every": 1})
    trainer.fit()
    old = _snapshot(trainer.checkpoint_dir)
    real_replace = os.replace

    def killed_mid_swap(src, dst):
        if Path(dst) == trainer.checkpoint_dir:  # the new directory's rename: the process "dies" here
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(io_utils.os, "replace", killed_mid_swap)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    monkeypatch.setattr(io_utils.os, "replace", real_replace)
    assert not trainer.checkpoint_dir.exists() and (tmp_path / ".checkpoint.old").exists()
    assert recover_checkpoint(trainer.checkpoint_dir)
    assert _snapshot(trainer.checkpoint_dir) == old and not (tmp_path / ".checkpoint.old").exists()
    assert not recover_checkpoint(trainer.checkpoint_dir)  # nothing to do the second time
    # through the pipeline: a run directory in that state resumes instead of reporting "nothing to resume"
    cfg = RunConfig().override({**TINY, "train.max_steps": 3, "train.checkpoint_every": 1,
                                "eval.tasks": ["completion"]}, source="test")
    first = run_training(cfg, out_dir=tmp_path / "run", track=False, progress=False)
    ckpt = first.out_dir / "checkpoint"
    real_replace(ckpt, first.out_dir / ".checkpoint.old")
    resumed = run_training(cfg, out_dir=first.out_dir, resume=True, track=False, progress=False)
    assert resumed.metrics == first.metrics


def test_mixing_two_files_with_the_same_name_is_an_error(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    _write_csv(tmp_path / "x" / "recipes.csv", "a", 50, 0)
    _write_csv(tmp_path / "y" / "recipes.csv", "b", 50, 1)
    mix = [{"dataset": str(tmp_path / "x" / "recipes.csv"), "weight": 1.0},
           {"dataset": str(tmp_path / "y" / "recipes.csv"), "weight": 3.0}]
    cfg = RunConfig().override({**TINY, "data.mix": mix, "data.n_recipes": None}, source="test")
    with pytest.raises(RecipesetError, match="distinct"):
        prepare_data(cfg.data)
