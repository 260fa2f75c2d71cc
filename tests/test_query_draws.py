"""Completion over several held-out draws per recipe, the per-query ranks every run saves, the paired bootstrap over
recipes, and the study's best-on-validation table with its paired interval."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from recipeset import protocol
from recipeset.config import RunConfig
from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import NUM_SPECIALS, UNK, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.evaluation import (
    _completion_ranks,
    _shuffled_positions,
    completion_ranks,
    evaluate_all,
    evaluate_completion,
    leave_one_out_draws,
    leave_one_out_queries,
    ranking_metrics,
)
from recipeset.experiments import PlannedRun
from recipeset.stats import paired_bootstrap, paired_ranks
from recipeset.study import (
    CI_COLUMN,
    EXCLUDES_COLUMN,
    baselines_hash,
    results_tables,
    run_experiment,
    run_per_query,
    selection_table,
)

VOCAB = Vocabulary([f"i{j}" for j in range(30)])  # ids 8..37


class HashScorer:
    """Order-invariant, query-dependent scores (a fixed function of the query's ids), protocol-respecting."""

    can_classify = False

    def __init__(self, shift: int = 0) -> None:
        self.vocab, self.shift = VOCAB, shift

    def completion_scores_ids(self, tokens, mask, mode="next", cuisine=None):
        ids = torch.arange(len(self.vocab), dtype=torch.float32)
        key = (torch.where(mask, tokens, 0).sum(1, keepdim=True) + self.shift).float()
        s = torch.sin(ids[None, :] * 0.37 + key * 0.11)
        s[:, :NUM_SPECIALS] = float("-inf")
        return s.scatter(1, torch.where(mask, tokens, 0), float("-inf"))

    def complete_ids(self, tokens, mask, max_new=20, cuisine=None):
        return [[] for _ in range(tokens.shape[0])]


def toy_sets(n: int = 60, seed: int = 0) -> EncodedSets:
    rng = np.random.default_rng(seed)
    sets = [list(rng.choice(np.arange(NUM_SPECIALS, len(VOCAB)), size=rng.integers(1, 9), replace=False))
            for _ in range(n)]
    sets[3] = [sets[3][0], UNK] if sets[3] else [UNK, UNK]  # an unknown ingredient: a guaranteed miss when held out
    return EncodedSets.from_lists(sets)


def old_leave_one_out(sets: EncodedSets, seed: int = 0):
    """The single-draw builder before query draws, kept as the reference."""
    rows = np.flatnonzero(sets.lengths >= 2)
    sub = sets.take(rows)
    _, rank = _shuffled_positions(sub, np.random.default_rng(seed))
    held = rank == 0
    keep = ~held & (sub.values >= NUM_SPECIALS)
    lengths = np.bincount(sub.segment_ids[keep], minlength=len(sub))
    return EncodedSets.from_lengths(sub.values[keep], lengths, sub.cuisine.copy()), sub.values[held], rows


# ---- the draws ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 7])
def test_one_draw_is_exactly_the_single_draw_of_before(seed):
    sets = toy_sets()
    q, held, rows = old_leave_one_out(sets, seed)
    q1, held1, rows1, draw = leave_one_out_draws(sets, seed, draws=1)
    assert q1.to_lists() == q.to_lists() and held1.tolist() == held.tolist() and rows1.tolist() == rows.tolist()
    assert (draw == 0).all()
    assert leave_one_out_queries(sets, seed)[0].to_lists() == q.to_lists()
    old = _completion_ranks(HashScorer(), q, held.astype(np.int64), "next", 512, False)
    before = {"recall@1": float((old <= 1).mean()), "recall@10": float((old <= 10).mean()),
              "mrr": float((1 / old).mean()), "mean_rank": float(old.mean()), "n": len(old)}
    assert evaluate_completion(HashScorer(), sets, seed=seed, draws=1) == {**before, "draws": 1}  # bit-identical


def test_every_recipe_appears_once_per_draw_and_its_draws_hold_out_different_ingredients():
    sets, D = toy_sets(), 4
    queries, held, rows, draw = leave_one_out_draws(sets, seed=3, draws=D)
    n = len(np.flatnonzero(sets.lengths >= 2))
    assert len(queries) == len(held) == len(rows) == D * n
    assert (np.bincount(rows, minlength=len(sets))[sets.lengths >= 2] == D).all()
    assert (np.bincount(rows, minlength=len(sets))[sets.lengths < 2] == 0).all()
    assert draw.tolist() == np.repeat(np.arange(D), n).tolist()  # draw-major
    first, held0, _ = leave_one_out_queries(sets, seed=3)
    assert queries.take(np.arange(n)).to_lists() == first.to_lists() and held[:n].tolist() == held0.tolist()
    by_recipe: dict[int, list[int]] = {}
    for r, h, q in zip(rows, held, queries.to_lists(), strict=True):
        by_recipe.setdefault(int(r), []).append(int(h))
        if UNK not in sets[int(r)].tolist():  # the query is the rest of the recipe
            assert sorted(q + [int(h)]) == sorted(sets[int(r)].tolist())
    for r, hs in by_recipe.items():
        size = int(sets.lengths[r])
        if UNK not in sets[r].tolist():
            # distinct as far as the size allows, then the same order again
            assert len(set(hs)) == min(size, D) and hs == [hs[d % size] for d in range(D)]
    assert any(len(set(hs)) > 1 for hs in by_recipe.values())


def test_the_draws_mean_is_the_mean_of_the_per_draw_metrics():
    sets, D = toy_sets(80), 5
    pooled = evaluate_completion(HashScorer(), sets, seed=1, draws=D)
    queries, held, _, draw = leave_one_out_draws(sets, seed=1, draws=D)
    per_draw = []
    for d in range(D):  # each draw scored on its own, in its own batches
        idx = np.flatnonzero(draw == d)
        per_draw.append(ranking_metrics(_completion_ranks(HashScorer(), queries.take(idx), held[idx], "next", 7,
                                                          False)))
    for key in ("recall@1", "recall@10", "mrr", "mean_rank"):
        assert pooled[key] == pytest.approx(np.mean([m[key] for m in per_draw]), abs=1e-12)
    assert pooled["n"] == per_draw[0]["n"] and pooled["draws"] == D
    assert len({m["mrr"] for m in per_draw}) > 1  # the draws really differ


def test_evaluate_model_collects_per_query_ranks_as_rows_of_the_split():
    sets = toy_sets(100)
    cfg = RunConfig().override({"eval.max_queries": 40, "eval.query_draws": 3, "eval.tasks": ["completion"]})
    frames: list[pd.DataFrame] = []
    metrics = protocol.evaluate_model(HashScorer(), sets, cfg, per_query=frames)
    table = protocol.per_query_table({"test": (frames, None)})
    assert list(table.columns) == list(protocol.PER_QUERY_COLUMNS)
    assert len(table) == 3 * metrics["completion/n"] and metrics["completion/draws"] == 3
    assert set(table["mode"]) == {"next"} and set(table["draw"]) == {0, 1, 2}
    assert set(table["recipe"]) <= set(protocol.subset_rows(len(sets), [40], cfg.eval.seed).tolist())
    for recipe, target in zip(table["recipe"], table["target"], strict=True):  # the held-out one of that recipe
        assert target in sets[int(recipe)].tolist()
    assert table["rank"].mean() == pytest.approx(metrics["completion/mean_rank"])
    # evaluate_all collects the same frames (recipe = row of the subset it was given)
    direct: list[pd.DataFrame] = []
    evaluate_all(HashScorer(), protocol.test_subset(sets, cfg), tasks=("completion",), draws=3, per_query=direct)
    assert direct[0]["rank"].tolist() == frames[0]["rank"].tolist()


def test_the_per_query_table_round_trips(tmp_path):
    sets = toy_sets()
    ranks = completion_ranks(HashScorer(), sets, draws=2).assign(mode="next")
    table = protocol.per_query_table({"test": ([ranks], None), "val": ([ranks], np.arange(len(sets)) + 1000)})
    path = protocol.save_per_query(table.assign(baseline="pop"), tmp_path / protocol.PER_QUERY_FILE)
    back = protocol.load_per_query(path)
    pd.testing.assert_frame_equal(back, table.assign(baseline="pop"))
    assert set(back.loc[back["split"] == "val", "recipe"]) == {r + 1000 for r in ranks["recipe"]}


# ---- the paired bootstrap ---------------------------------------------------------------------------------------
def test_identical_runs_differ_by_zero_with_a_zero_interval():
    ranks = np.random.default_rng(0).integers(1, 50, size=(200, 5)).astype(float)
    for metric in ("recall@10", "mrr", "mean_rank"):
        r = paired_bootstrap(ranks, ranks.copy(), metric)
        assert (r.difference, r.low, r.high) == (0.0, 0.0, 0.0) and not r.excludes_zero


def test_a_constant_improvement_excludes_zero():
    rng = np.random.default_rng(1)
    b = rng.integers(2, 60, size=(300, 5)).astype(float)
    a = b - 1  # every query one rank better
    r = paired_bootstrap(a, b, "mrr", n_boot=500)
    assert r.low > 0 and r.excludes_zero and r.low <= r.difference <= r.high
    assert r.difference == pytest.approx(np.mean(1 / a - 1 / b))
    worse = paired_bootstrap(b, a, "mrr", n_boot=500)
    assert worse.high < 0 and worse.difference == pytest.approx(-r.difference)
    assert paired_bootstrap(a[:, 0], b[:, 0], "recall_at_10").recipes == 300  # [R]: one draw


def test_resampling_keeps_a_recipes_draws_together():
    # 20 recipes, 10 draws: a recipe is all hits for one run and all misses for the other, half each way. The
    # draws of a recipe move together, so the interval is that of 20 recipes (sd 1/sqrt(20) ≈ 0.22), not of 200
    # independent queries (sd 0.07).
    hit, miss = np.ones((10, 10)), np.full((10, 10), 50.0)
    a, b = np.vstack([hit, miss]), np.vstack([miss, hit])
    r = paired_bootstrap(a, b, "recall@10", n_boot=2000)
    assert r.difference == 0.0 and r.draws == 10 and r.recipes == 20
    assert r.high - r.low > 0.6  # ≈ 4 × 0.22; queries resampled one by one would give ≈ 0.28
    assert not r.excludes_zero


def test_the_bootstrap_refuses_unpaired_input():
    with pytest.raises(RecipesetError, match="same shape|one shape"):
        paired_bootstrap(np.ones((3, 2)), np.ones((3, 1)), "mrr")
    with pytest.raises(RecipesetError, match="unknown metric"):
        paired_bootstrap(np.ones(3), np.ones(3), "recall")


def test_paired_ranks_needs_the_same_queries():
    sets = toy_sets()
    a = completion_ranks(HashScorer(), sets, draws=3).assign(mode="next", split="test")
    b = completion_ranks(HashScorer(shift=5), sets, draws=3).assign(mode="next", split="test")
    ra, rb = paired_ranks(a, b.sample(frac=1.0, random_state=0))  # row order does not matter
    assert ra.shape == rb.shape == (len(set(a["recipe"])), 3)
    other = completion_ranks(HashScorer(), sets, seed=9, draws=3).assign(mode="next", split="test")
    with pytest.raises(RecipesetError, match="same test queries"):
        paired_ranks(a, other)


# ---- the study's table ------------------------------------------------------------------------------------------
def test_the_selection_table_says_when_per_query_ranks_are_missing():
    neural = pd.DataFrame({"run_id": ["m0", "m1"], "variant": ["a", "a"],
                           "val_eval/completion/recall_at_10": [0.7, 0.7], "test/completion/recall_at_10": [0.6, 0.6],
                           "test/completion/mrr": [0.4, 0.4]})
    base = pd.DataFrame([{"run_id": "b", "pop/val_eval/completion/recall_at_10": 0.5,
                          "pop/test/completion/recall_at_10": 0.5, "pop/test/completion/mrr": 0.3}])
    sets = toy_sets()
    ranks = {"m0": HashScorer(), "b": HashScorer(shift=3)}
    tables = {rid: completion_ranks(s, sets, draws=2).assign(mode="next", split="test")
              for rid, s in ranks.items()}
    tables["b"] = tables["b"].assign(baseline="pop")
    table = selection_table(neural, base, tables.get).set_index("metric")  # m1 saved none
    assert table.loc["completion/mrr", CI_COLUMN] == "n/a: run(s) m1 saved no per-query ranks (from before " \
                                                     "eval.query_draws)"
    assert table.loc["completion/mrr", EXCLUDES_COLUMN] == ""
    tables["m1"] = tables["m0"]
    table = selection_table(neural, base, tables.get).set_index("metric")
    assert table.loc["completion/recall_at_10", CI_COLUMN].startswith("[")
    assert table.loc["completion/recall_at_10", EXCLUDES_COLUMN] in {"yes", "no"}


TINY = """
[experiment]
name = "draws-grid"
baselines = true

[base]
"data.n_recipes" = 300
"model.name" = "deep-sets"
"model.d_model" = 16
"train.max_steps" = 2
"train.warmup_steps" = 1
"train.batch_size" = 32
"train.device" = "cpu"
"eval.max_queries" = 30
"eval.val_max_queries" = 30
"eval.query_draws" = 3

[[grid]]
name = "ds"

[seeds]
values = [0]
"""


def test_a_tiny_study_reports_the_paired_interval(mlflow_uri, tmp_path):
    path = tmp_path / "draws-grid.toml"
    path.write_text(TINY, encoding="utf-8")
    outcomes = run_experiment(path, quick=False, out_root=tmp_path / "runs", echo=lambda *a: None)
    assert {o.status for o in outcomes} == {"finished"}
    saved = protocol.load_per_query(tmp_path / "runs" / "draws-grid" / "ds" / "seed0" / protocol.PER_QUERY_FILE)
    assert set(saved["split"]) == {"val", "test"} and set(saved["draw"]) == {0, 1, 2}
    logged = run_per_query(outcomes[0].run_id, mlflow_uri)
    pd.testing.assert_frame_equal(logged, saved)
    best = results_tables("draws-grid", mlflow_uri)["best_on_validation"].set_index("metric")
    for metric in ("completion/recall_at_10", "completion/mrr"):
        low, high = (float(x) for x in best.loc[metric, CI_COLUMN].strip("[]").split(", "))
        assert low <= float(best.loc[metric, "difference"]) <= high
        assert best.loc[metric, EXCLUDES_COLUMN] == ("yes" if low > 0 or high < 0 else "no")
    assert "CI" not in str(best.loc["set/micro_f1"].get(CI_COLUMN, ""))


def test_query_draws_re_run_the_children_of_before_unless_set_to_one():
    """A grid child from before query draws (one draw, no per-query ranks) has the hash of ``eval.query_draws = 1``:
    today's default (5) re-runs it; a config that keeps one draw still finds it."""
    before = RunConfig().override({"eval.query_draws": 1})
    assert RunConfig().config_hash() != before.config_hash()
    assert before.config_hash() == RunConfig().override({"eval.query_draws": 1, "train.lr": 1e-3}).config_hash()
    with pytest.raises(RecipesetError, match="eval.query_draws"):
        RunConfig().override({"eval.query_draws": 0})

    def planned(cfg):
        return PlannedRun(name="x/base/seed0", variant="base", seed=0, config=cfg, params_hash="")

    old = hashlib.sha256(f"baselines:{before.data}".encode()).hexdigest()  # the baselines child's hash of before
    assert baselines_hash(planned(before)) == old and baselines_hash(planned(RunConfig())) != old
