"""The evaluation protocol module: task names, query subsets, the one stop-rule tuner, and the baselines on the
models' queries (the study's baselines child and ``recipeset baselines`` alike)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import recipeset.baselines
import recipeset.config
import recipeset.pipeline
from recipeset import protocol
from recipeset.cli import cli
from recipeset.config import RunConfig, resolve_objectives
from recipeset.data.prepare import prepare_data
from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.evaluation import evaluate_set_completion, half_queries
from recipeset.objectives.tasks import Objectives
from recipeset.pipeline import build_model
from recipeset.protocol import STOP_SIZES, STOP_THRESHOLDS, StopRule, tune_stop_rule
from recipeset.training import Trainer

VOCAB = Vocabulary([f"i{j}" for j in range(12)])


def test_eval_task_names_are_the_registry_names():
    cfg = RunConfig().override({"eval.tasks": ["nll", "set", "completion", "order", "cuisine"]}, source="test")
    assert cfg.eval.tasks == ["nll", "set", "completion", "order", "cuisine"]
    with pytest.raises(RecipesetError, match="unknown evaluation task 'set-completion'"):
        RunConfig().override({"eval.tasks": ["set-completion"]}, source="test")


def test_the_moved_functions_live_in_protocol_only():
    for name in ("evaluate_model", "eval_subset", "val_subset", "joint_subset", "tune_stop_threshold",
                 "oracle_metrics", "oracle_references", "joint_subset_oracle_metrics", "EVAL_TASK_NAMES"):
        assert not hasattr(recipeset.pipeline, name), name
    assert not hasattr(recipeset.baselines, "THRESHOLD_GRID") and not hasattr(recipeset.baselines, "SIZE_GRID")


def test_subsets_are_seeded_nested_and_capped():
    sets = EncodedSets.from_lists([[NUM_SPECIALS + i % 12, NUM_SPECIALS + (i + 1) % 12] for i in range(100)])
    cfg = RunConfig().override({"eval.max_queries": 30, "eval.val_max_queries": 50, "eval.joint_max_queries": 7},
                               source="test")
    test = protocol.test_subset(sets, cfg)
    assert len(test) == 30 and test.to_lists() == protocol.eval_subset(sets, 30, cfg.eval.seed).to_lists()
    assert len(protocol.val_subset(sets, cfg)) == 30  # val_max_queries, then the max_queries cap
    assert len(protocol.joint_subset(sets, cfg)) == 7
    uncapped = RunConfig()
    assert protocol.test_subset(sets, uncapped) is sets


# ---- the one stop-rule tuner ------------------------------------------------------------------------------------
def test_one_threshold_grid_the_union_of_the_former_two():
    models_before = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    baselines_before = (0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3)
    decoders = (0.6, 0.7, 0.8, 0.9)  # the decoders' [EOS] rule needs higher ones
    assert STOP_THRESHOLDS == tuple(sorted(set(models_before) | set(baselines_before) | set(decoders)))
    assert STOP_SIZES == tuple(range(1, 16))


class TableModel:
    """A model that stops on ``config.stop_threshold``: every query has a fixed table of (id, probability) and
    completes with the ids whose probability reaches the threshold. Records the thresholds it is run with."""

    can_classify = False
    tunes_stop_threshold = True

    def __init__(self, table: dict[frozenset, list[tuple[int, float]]]) -> None:
        self.vocab = VOCAB
        self.table = table
        self.config = type("Config", (), {"stop_threshold": 0.5})()
        self.seen: list[float] = []

    def complete_ids(self, tokens, mask, max_new=20, cuisine=None):
        self.seen.append(self.config.stop_threshold)
        out = []
        for row, keep in zip(tokens.tolist(), mask.tolist(), strict=True):
            cands = self.table[frozenset(t for t, k in zip(row, keep, strict=True) if k)]
            size = getattr(self.config, "stop_size", None)  # a size rule caps it, as RecipeModel.stop_budget
            out.append([i for i, p in cands if p >= self.config.stop_threshold][:min(max_new, size or max_new)])
        return out


def test_the_model_tuner_picks_the_best_validation_f1_on_a_hand_built_case():
    ids = [NUM_SPECIALS + j for j in range(12)]
    val = EncodedSets.from_lists([ids[:6], ids[6:]])
    queries, truths, _ = half_queries(val, seed=0)
    table = {}
    for q, t in zip(queries.to_lists(), truths.to_lists(), strict=True):
        wrong = [i for i in ids if i not in q and i not in t][:2]
        # three right ingredients (0.6, 0.35, 0.16) and two wrong ones (0.12, 0.03): the threshold that keeps
        # exactly the right ones is in (0.12, 0.16] -- only 0.15 on the grid (F1 1; 0.1 also keeps a wrong one)
        table[frozenset(q)] = list(zip(t, (0.6, 0.35, 0.16), strict=True)) + list(zip(wrong, (0.12, 0.03),
                                                                                       strict=True))
    model = TableModel(table)
    best = tune_stop_rule(model, val, seed=0)
    assert best == StopRule("threshold", 0.15, pytest.approx(1.0))
    assert model.config.stop_threshold == 0.15
    assert tuple(dict.fromkeys(model.seen)) == STOP_THRESHOLDS  # the one grid, in order
    # by hand: 0.1 keeps 3 right + 1 wrong of 3 truths: P 3/4, R 1 -> F1 6/7; 0.2 keeps 2 right: F1 0.8
    model.config.stop_threshold = 0.1
    assert evaluate_set_completion(model, val)["micro_f1"] == pytest.approx(6 / 7)


class StubBaseline:
    """A baseline as the tuner sees it: a fixed-size or threshold rule scored by ``stop_rule_f1s``."""

    def __init__(self, f1: dict[tuple[str, float], float]) -> None:
        self.f1, self.rules = f1, None
        self.stop, self.stop_value = "size", 4

    def stop_rule_f1s(self, val, rules, seed=0):
        self.rules = list(rules)
        return [self.f1.get(r, 0.1) for r in rules]


def test_the_baseline_tuner_uses_the_same_grid_and_keeps_the_first_best():
    b = StubBaseline({("size", 3.0): 0.4, ("threshold", 0.4): 0.5, ("threshold", 0.5): 0.5})
    best = tune_stop_rule(b, val=None)
    assert best == StopRule("threshold", 0.4, 0.5) and (b.stop, b.stop_value) == ("threshold", 0.4)
    assert [v for r, v in b.rules if r == "size"] == list(STOP_SIZES)
    assert tuple(v for r, v in b.rules if r == "threshold") == STOP_THRESHOLDS
    assert b.rules.index(("size", 15.0)) < b.rules.index(("threshold", 0.01))  # sizes first: they win ties


class TracedTableModel(TableModel):
    """The table model returning its stop probabilities: the tuner completes once, at the lowest threshold."""

    returns_stop_probs = True

    def complete_ids(self, tokens, mask, max_new=20, cuisine=None, return_probs=False):
        ids = super().complete_ids(tokens, mask, max_new, cuisine)
        if not return_probs:
            return ids
        probs = [[dict(self.table[frozenset(t for t, k in zip(row, keep, strict=True) if k)])[i] for i in out]
                 for row, keep, out in zip(tokens.tolist(), mask.tolist(), ids, strict=True)]
        return ids, probs


def test_the_model_tuner_scores_every_rule_from_one_pass_on_the_hand_built_case():
    ids = [NUM_SPECIALS + j for j in range(12)]
    val = EncodedSets.from_lists([ids[:6], ids[6:]])
    queries, truths, _ = half_queries(val, seed=0)
    table = {frozenset(q): list(zip(t, (0.6, 0.35, 0.16), strict=True))
             + list(zip([i for i in ids if i not in q and i not in t][:2], (0.12, 0.03), strict=True))
             for q, t in zip(queries.to_lists(), truths.to_lists(), strict=True)}
    model = TracedTableModel(table)
    model.config.stop_size = None
    # size 3 and threshold 0.15 both keep exactly the three right ones (F1 1): sizes come first, as for baselines
    assert tune_stop_rule(model, val, seed=0) == StopRule("size", 3.0, pytest.approx(1.0))
    assert model.seen == [min(STOP_THRESHOLDS)]  # one pass
    assert (model.config.stop_threshold, model.config.stop_size) == (min(STOP_THRESHOLDS), 3)
    assert tune_stop_rule(model, val, seed=0, sizes=()) == StopRule("threshold", 0.15, pytest.approx(1.0))
    assert (model.config.stop_threshold, model.config.stop_size) == (0.15, None)


def test_a_size_rule_wins_where_no_threshold_separates_right_from_wrong():
    ids = [NUM_SPECIALS + j for j in range(12)]
    val = EncodedSets.from_lists([ids[:6], ids[6:]])
    queries, truths, _ = half_queries(val, seed=0)
    # the first query's third right one is below its wrong ones, the second's wrong ones are above 0.3: every
    # threshold keeps a wrong one or loses a right one; the best two of each are right
    probs = [(0.6, 0.5, 0.02, 0.3, 0.2), (0.9, 0.8, 0.7, 0.6, 0.5)]
    table = {frozenset(q): sorted(zip(t + [i for i in ids if i not in q and i not in t][:2], p, strict=True),
                                  key=lambda c: -c[1])
             for q, t, p in zip(queries.to_lists(), truths.to_lists(), probs, strict=True)}
    model = TracedTableModel(table)
    model.config.stop_size = None
    best = tune_stop_rule(model, val, seed=0)
    assert best.rule == "size" and model.config.stop_size == int(best.value)
    thresholds_only = tune_stop_rule(TracedTableModel(table), val, seed=0, sizes=())
    assert best.micro_f1 > thresholds_only.micro_f1


def test_a_threshold_keeps_the_prefix_whose_probabilities_all_reach_it():
    ids = np.array([[10, 11, 12, 13], [14, 15, 0, 0]])
    probs = np.array([[0.5, 0.2, 0.3, 0.05], [0.04, 0.9, -1, -1]], dtype=np.float32)  # greedy: not monotone
    truths = EncodedSets.from_lists([[10, 11, 12], [14, 15]])
    f1_low, f1_mid, f1_high, size2 = protocol.prefix_rule_f1s(
        ids, probs, truths, [("threshold", 0.04), ("threshold", 0.1), ("threshold", 0.6), ("size", 2)])
    assert f1_low == pytest.approx(2 * 5 / (2 * 5 + 1))     # everything: 5 right, 1 wrong
    assert f1_mid == pytest.approx(2 * 3 / (2 * 3 + 2))     # row 0 stops at 0.05 (keeps 0.3 after 0.2); row 1 none
    assert f1_high == pytest.approx(0.0)
    assert size2 == pytest.approx(2 * 4 / (2 * 4 + 1))
    # compared in float32, as a model's own stop test (a float32 probability equal to float32(0.01) passes 0.01)
    edge = np.array([[np.float32(0.01)]], dtype=np.float32)
    assert protocol.prefix_rule_f1s(np.array([[10]]), edge, EncodedSets.from_lists([[10]]),
                                    [("threshold", 0.01)]) == [1.0]


def old_threshold_loop(model, val, seed=0) -> tuple[list[float], StopRule]:
    """The tuner before one-pass scoring, kept as the reference: one greedy completion per threshold."""
    f1s = []
    for th in STOP_THRESHOLDS:
        model.config.stop_threshold = th
        f1s.append(evaluate_set_completion(model, val, seed=seed)["micro_f1"])
    best = max(range(len(f1s)), key=lambda i: (f1s[i], -i))  # the first best
    return f1s, StopRule("threshold", STOP_THRESHOLDS[best], f1s[best])


def trained_tiny(over: dict, out_dir):
    """A tiny model trained for 40 steps on the synthetic default (its probabilities spread over the grid)."""
    cfg = RunConfig().override({"data.n_recipes": 400, "model.d_model": 16, "train.batch_size": 32,
                                "train.warmup_steps": 2, "train.device": "cpu", "train.max_steps": 40,
                                "train.lr": 1e-2, "train.eval_every": 40, **over}, source="test")
    weights = resolve_objectives(cfg)
    cfg.objectives.weights = weights
    data = prepare_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg, data.vocab, weights, int(data.train.lengths.max()))
    Trainer(cfg, model, Objectives(cfg, weights), data.train, data.val, out_dir, progress=False).fit()
    return model, data.val_eval


@pytest.mark.parametrize("over", [
    {"model.name": "deep-sets"},
    {"model.name": "deep-sets", "loss.name": "multilabel"},
    {"model.name": "set-transformer", "model.n_layers": 1, "objectives.weights": {"mlm": 1.0}},
    {"model.name": "deep-sets", "model.null_stop": True},
], ids=["deep-sets-softmax", "deep-sets-multilabel", "set-transformer-mlm", "deep-sets-null-stop"])
def test_one_pass_tuning_equals_the_per_threshold_loop_on_trained_models(over, tmp_path):
    model, val = trained_tiny(over, tmp_path)
    assert model.tunes_stop_threshold and model.returns_stop_probs
    f1s, old = old_threshold_loop(model, val)
    assert len(set(f1s)) > 3  # the thresholds really differ on this model
    thresholds = [("threshold", t) for t in STOP_THRESHOLDS]
    assert protocol._model_rule_f1s(model, val, thresholds, seed=0) == f1s  # bit-identical, every threshold
    assert tune_stop_rule(model, val, seed=0, sizes=()) == old and model.config.stop_threshold == old.value
    # a size rule from the same pass is what the model completes with that size at the lowest threshold
    sizes = [("size", 1.0), ("size", 2.0), ("size", 4.0)]
    one_pass = protocol._model_rule_f1s(model, val, sizes + thresholds, seed=0)[:3]
    for (_, m), f1 in zip(sizes, one_pass, strict=True):
        model.config.stop_threshold, model.config.stop_size = min(STOP_THRESHOLDS), int(m)
        assert evaluate_set_completion(model, val, seed=0)["micro_f1"] == f1


def test_a_scorer_without_a_stop_rule_is_not_tuned():
    assert tune_stop_rule(type("NoStop", (), {"tunes_stop_threshold": False})(), val=None) is None


# ---- the baselines on the models' queries -----------------------------------------------------------------------
EXPERIMENT = """
[experiment]
name = "protocol-baselines"
baselines = true

[base]
"model.d_model" = 16
"eval.max_queries" = 40
"eval.val_max_queries" = 60

[[grid]]
name = "dec"

[seeds]
values = [0]
"""


def test_study_baselines_child_and_cli_baselines_evaluate_identical_queries(mlflow_uri, tmp_path, monkeypatch):
    """The study's baselines child and ``recipeset baselines`` (default eval settings: here capped for speed,
    the same caps as the experiment's) tune and evaluate on the same queries: the same numbers."""
    import mlflow

    from recipeset.experiments import load_experiment
    from recipeset.study import _run_baselines_child

    torch.manual_seed(0)
    path = tmp_path / "protocol-baselines.toml"
    path.write_text(EXPERIMENT, encoding="utf-8")
    exp = load_experiment(path)
    planned = exp.runs()[0]
    outcome = _run_baselines_child(exp, planned, None, mlflow_uri, quick=True)
    child = mlflow.artifacts.load_dict(f"runs:/{outcome.run_id}/baselines.json")

    real = recipeset.config.RunConfig

    def default_eval_capped() -> RunConfig:  # the CLI's RunConfig(), with the experiment's eval caps
        cfg = real()
        cfg.eval.max_queries, cfg.eval.val_max_queries = 40, 60
        return cfg

    monkeypatch.setattr(recipeset.config, "RunConfig", default_eval_capped)
    out = CliRunner().invoke(cli, ["baselines", "--name", "popularity", "--name", "item-knn", "--json"])
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output)
    for name in ("popularity", "item-knn"):
        assert listed[name]["completion/n"] == child[name]["test"]["completion/n"] == 40
        assert child[name]["val"]["completion/n"] == 40  # val_max_queries (60), capped at max_queries
        assert {k: v for k, v in listed[name].items() if k != "params"} == child[name]["test"]
        assert listed[name]["params"] == child[name]["params"]  # tuned on the same validation queries
    assert np.isfinite(child["popularity"]["test"]["set/micro_f1"])

