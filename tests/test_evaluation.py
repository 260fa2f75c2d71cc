"""The evaluation protocol: metrics against hand-computed values, query builders, tasks, edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import NUM_SPECIALS, UNK, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.evaluation import (
    Scorer,
    candidate_distribution,
    cuisine_metrics,
    evaluate_all,
    evaluate_completion,
    evaluate_cuisine,
    evaluate_nll,
    evaluate_order_sensitivity,
    evaluate_set_completion,
    half_queries,
    leave_one_out_queries,
    mean_rank,
    metrics_table,
    metrics_table_to_json,
    mid_ranks,
    mrr,
    recall_at_k,
    save_metrics_table,
    set_prf,
    total_variation,
)

NEG = float("-inf")
VOCAB = Vocabulary([f"i{j}" for j in range(12)], cuisines=["a", "b", "c"])  # ids 8..19
V = len(VOCAB)


class FixedScorer:
    """Order-invariant: the same score vector for every query (higher for lower ids), protocol-respecting."""

    can_classify = False

    def __init__(self, vocab: Vocabulary = VOCAB, respect_protocol: bool = True, dead: bool = False) -> None:
        self.vocab, self.respect, self.dead = vocab, respect_protocol, dead

    def completion_scores_ids(self, tokens, mask, mode="next", cuisine=None):
        B = tokens.shape[0]
        s = -torch.arange(len(self.vocab), dtype=torch.float32).repeat(B, 1)
        if self.dead:
            return torch.full_like(s, NEG)
        if self.respect:
            s[:, :NUM_SPECIALS] = NEG
            s.scatter_(1, torch.where(mask, tokens, 0), NEG)
        return s

    def complete_ids(self, tokens, mask, max_new=20, cuisine=None):
        s = self.completion_scores_ids(tokens, mask)
        out = []
        for row in s:
            ids = [int(i) for i in row.argsort(descending=True) if torch.isfinite(row[i])]
            out.append(ids[:2])
        return out


class FirstTokenScorer(FixedScorer):
    """Order-sensitive: the score vector depends on which query token comes first."""

    def completion_scores_ids(self, tokens, mask, mode="next", cuisine=None):
        s = super().completion_scores_ids(tokens, mask)
        bump = torch.zeros_like(s)
        bump.scatter_(1, ((tokens[:, :1] + 3) % V).clamp(min=NUM_SPECIALS), 10.0)
        return torch.where(torch.isfinite(s), s + bump, s)


def toy_sets(n: int = 60, seed: int = 0, unk: bool = False) -> EncodedSets:
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n):
        k = int(rng.integers(1, 9))
        s = (rng.choice(12, size=k, replace=False) + NUM_SPECIALS).tolist()
        if unk and rng.random() < 0.3:
            s[int(rng.integers(len(s)))] = UNK
        sets.append(s)
    return EncodedSets.from_lists(sets, rng.integers(-1, 3, size=n))


# ---- metrics --------------------------------------------------------------------------------------
def test_mid_ranks_hand_computed():
    specials = [NEG] * NUM_SPECIALS
    scores = torch.tensor([specials + [3.0, 1.0, 1.0, 2.0, NEG]] * 5)
    targets = torch.tensor([8, 9, 11, 12, UNK])
    # 8: best -> 1; 9 and 10 tie below 8 and 11 -> 1 + 2 + ½ = 3.5; 11 -> 2; 12 is -inf and UNK is special ->
    # worst = the 4 finite candidates
    assert mid_ranks(scores, targets).tolist() == [1.0, 3.5, 2.0, 4.0, 4.0]
    # an explicit candidate count sets the worst rank; -1 is "unknown"
    r = mid_ranks(scores[:2], torch.tensor([12, -1]), n_candidates=torch.tensor([7, 9]))
    assert r.tolist() == [7.0, 9.0]


def test_mid_ranks_all_tied_and_all_dead():
    s = torch.zeros(1, 5)
    assert mid_ranks(s, torch.tensor([2])).item() == 1 + 0.5 * 4  # 5 candidates tied -> middle (3.0)
    dead = torch.full((2, 5), NEG)
    assert mid_ranks(dead, torch.tensor([0, 3])).tolist() == [1.0, 1.0]  # no candidate: worst = max(0, 1)
    assert mid_ranks(dead, torch.tensor([0, 3]), torch.tensor([5, 5])).tolist() == [5.0, 5.0]


def test_mid_ranks_rejects_nan():
    with pytest.raises(RecipesetError, match="NaN"):
        mid_ranks(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))


def test_ranking_metrics_hand_computed():
    ranks = np.array([1.0, 2.0, 10.0, 10.5, 40.0])
    assert recall_at_k(ranks, 1) == pytest.approx(0.2)
    assert recall_at_k(ranks, 10) == pytest.approx(0.6)  # the tie straddling 10 is a miss
    assert mrr(ranks) == pytest.approx((1 + 0.5 + 0.1 + 1 / 10.5 + 1 / 40) / 5)
    assert mean_rank(ranks) == pytest.approx(12.7)


def test_set_prf_hand_computed():
    # row 0: pred {8, 9}, truth {8, 10, UNK}: tp 1, fp 1, fn 2; row 1: empty pred, truth {9}: fn 1
    m = set_prf([[8, 9], []], [[8, 10, UNK], [9]])
    assert m["micro_iou"] == pytest.approx(1 / 5)
    assert m["micro_f1"] == pytest.approx(2 / 6)
    assert m["micro_precision"] == pytest.approx(0.5) and m["micro_recall"] == pytest.approx(0.25)
    assert m["mean_f1"] == pytest.approx((2 / 5 + 0.0) / 2)  # empty prediction -> F1 0 for that recipe
    assert m["pred_size"] == 1.0 and m["true_size"] == 2.0
    # duplicates in a prediction count once; EncodedSets input gives the same numbers
    assert set_prf([[8, 8, 9], []], EncodedSets.from_lists([[8, 10, UNK], [9]])) == m


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sets(st.integers(8, 20), max_size=6), st.sets(st.integers(8, 20), min_size=1,
                                                                           max_size=6)), min_size=1, max_size=8))
def test_set_prf_f1_is_a_function_of_iou(pairs):
    m = set_prf([sorted(p) for p, _ in pairs], [sorted(t) for _, t in pairs])
    iou = m["micro_iou"]
    assert m["micro_f1"] == pytest.approx(2 * iou / (1 + iou))
    tp = sum(len(p & t) for p, t in pairs)
    assert iou == pytest.approx(tp / sum(len(p | t) for p, t in pairs))


def test_total_variation_and_candidate_distribution():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = torch.tensor([[0.5, 0.0, 0.5], [1.0, 0.0, 0.0]])
    assert total_variation(p, q).tolist() == [0.5, 0.0]
    allowed = torch.tensor([[True, True, False], [True, True, True]])
    d = candidate_distribution(torch.tensor([[0.0, 0.0, 5.0], [NEG, NEG, NEG]]), allowed)
    assert torch.allclose(d, torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64))


def test_cuisine_metrics_hand_computed():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = cuisine_metrics(probs, np.array([0, 1, 1, 1]))  # predictions 0,1,0,1
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # class 0: P ½ R 1; class 1: P 1 R ⅔


# ---- queries --------------------------------------------------------------------------------------
def test_leave_one_out_queries_deterministic_and_leak_free():
    sets = toy_sets(80, unk=True)
    q, held, rows = leave_one_out_queries(sets, seed=3)
    q2, held2, rows2 = leave_one_out_queries(sets, seed=3)
    assert q.to_lists() == q2.to_lists() and np.array_equal(held, held2) and np.array_equal(rows, rows2)
    assert np.array_equal(rows, np.flatnonzero(sets.lengths >= 2))
    for i, r in enumerate(rows):
        original = sets[r].tolist()
        query = q[i].tolist()
        assert held[i] not in query and UNK not in query
        assert held[i] in original
        assert query == [x for x in original if x != UNK and x != held[i]]  # original order kept
    # another seed holds out other ingredients
    assert not np.array_equal(held, leave_one_out_queries(sets, seed=4)[1])


def test_half_queries_split_each_set():
    sets = toy_sets(80, unk=True)
    q, t, rows = half_queries(sets, seed=1)
    assert np.array_equal(rows, np.flatnonzero(sets.lengths >= 4))
    q2, t2, _ = half_queries(sets, seed=1)
    assert q.to_lists() == q2.to_lists() and t.to_lists() == t2.to_lists()
    for i, r in enumerate(rows):
        original = sets[r].tolist()
        n_unk_query = len(original) // 2 - len(q[i])
        assert 0 <= n_unk_query and UNK not in q[i].tolist()
        assert len(t[i]) == len(original) - len(original) // 2
        assert not set(q[i].tolist()) & set(t[i].tolist())
        assert sorted(q[i].tolist() + t[i].tolist() + [UNK] * n_unk_query) == sorted(original)


# ---- tasks ----------------------------------------------------------------------------------------
def test_scorer_protocol_runtime_check():
    assert isinstance(FixedScorer(), Scorer)


def test_completion_hand_computed():
    # FixedScorer ranks lower ids first. Sets of two: the held-out is ranked among 11 candidates.
    sets = EncodedSets.from_lists([[8, 9], [10, 8], [19, UNK]])
    q, held, _ = leave_one_out_queries(sets, seed=0)
    expect = []
    for i in range(3):
        h, query = int(held[i]), q[i].tolist()
        if h == UNK:
            expect.append(12 - len(query))
        else:
            expect.append(1 + sum(1 for c in range(8, h) if c not in query))
    m = evaluate_completion(FixedScorer(), sets)
    assert m["n"] == 3
    assert m["mean_rank"] == pytest.approx(np.mean(expect))
    assert m["mrr"] == pytest.approx(np.mean(1 / np.array(expect)))


def test_completion_batched_equals_one_by_one_and_protocol_enforced():
    sets = toy_sets(50, unk=True)
    a = evaluate_completion(FirstTokenScorer(), sets, batch_size=512)
    b = evaluate_completion(FirstTokenScorer(), sets, batch_size=1)
    assert a == pytest.approx(b)
    # a scorer that forgets the -inf on specials/query ids is masked by the evaluation: same numbers
    assert evaluate_completion(FixedScorer(respect_protocol=False), sets) == \
        pytest.approx(evaluate_completion(FixedScorer(), sets))


def test_completion_all_dead_scores_is_worst_rank():
    sets = EncodedSets.from_lists([[8, 9, 10], [11, 12]])
    m = evaluate_completion(FixedScorer(dead=True), sets)
    q, _, _ = leave_one_out_queries(sets)
    assert m["mean_rank"] == pytest.approx(np.mean(12 - q.lengths))
    assert m["mrr"] == pytest.approx(np.mean(1 / (12 - q.lengths))) and m["recall@1"] == 0.0


def test_set_completion_edge_cases():
    sets = EncodedSets.from_lists([[8, 9, 10, 11], [12, 13, 14, 15, 16], [8, 9]])
    m = evaluate_set_completion(FixedScorer(), sets)
    q, t, _ = half_queries(sets)
    preds = FixedScorer().complete_ids(*[torch.from_numpy(x) for x in q.padded()])
    assert m == {**set_prf(preds, t), "n": 2}

    class Empty(FixedScorer):
        def complete_ids(self, tokens, mask, max_new=20, cuisine=None):
            return [[] for _ in range(tokens.shape[0])]

    e = evaluate_set_completion(Empty(), sets)
    assert e["micro_f1"] == 0.0 and e["mean_f1"] == 0.0 and e["pred_size"] == 0.0

    class Cheater(FixedScorer):
        def complete_ids(self, tokens, mask, max_new=20, cuisine=None):
            return [[int(row[0])] for row in tokens]

    with pytest.raises(RecipesetError, match="query"):
        evaluate_set_completion(Cheater(), sets)


def test_order_sensitivity_zero_for_invariant_scorer():
    sets = toy_sets(60)
    m = evaluate_order_sensitivity(FixedScorer(), sets, n_perms=5)
    assert m["tv"] == 0.0 and m["recall@10_spread"] == 0.0
    s = evaluate_order_sensitivity(FirstTokenScorer(), sets, n_perms=5)
    assert s["tv"] > 0.05
    assert evaluate_order_sensitivity(FirstTokenScorer(), sets, n_perms=5) == s  # seeded


def test_nll_hand_computed():
    sets = EncodedSets.from_lists([[8, 9, 10], [11], [12, UNK]])

    def uniform_orders(tokens, mask):  # every order equally likely: p(order) = 1 / n!
        n = mask.sum(1).double()
        return -torch.lgamma(n + 1)

    m = evaluate_nll(uniform_orders, sets, k=3)
    assert m["n"] == 2  # the set with [UNK] is skipped
    assert m["nll_set"] == pytest.approx(0.0, abs=1e-12)
    assert m["nll_order_ingredient"] == pytest.approx(math.log(6) / 4)

    def first_is_8(tokens, mask):  # depends on the order: log-mean-exp differs from the mean
        return torch.where(tokens[:, 0] == 8, 0.0, -10.0).double()

    m = evaluate_nll(first_is_8, EncodedSets.from_lists([[8, 9]]), k=64, seed=0)
    # ~half of the 64 sampled orders start with 8: log-mean-exp ≈ log(½) -> nll ≈ -(log ½ + log 2) = 0
    assert abs(m["nll_set"]) < 0.3


def test_cuisine_task_and_confusion():
    class Oracle(FixedScorer):
        can_classify = True

        def classify_ids(self, tokens, mask):  # cuisine = (first id) mod 3
            return torch.nn.functional.one_hot(tokens[:, 0] % 3, 3).float()

    # predictions 2, 0, 1, (unlabelled), 0 against labels 2, 0, 0, -, 0
    sets = EncodedSets.from_lists([[8], [9], [10], [11], [12]], cuisine=[2, 0, 0, -1, 0])
    m = evaluate_cuisine(Oracle(), sets)
    assert m["n"] == 4 and m["accuracy"] == 0.75
    assert m["confusion"].tolist() == [[2, 1, 0], [0, 0, 0], [0, 0, 1]]  # rows true, columns predicted
    with pytest.raises(RecipesetError):
        evaluate_cuisine(FixedScorer(), sets)


def test_evaluate_all_keys_and_table(tmp_path):
    sets = toy_sets(60)
    out = evaluate_all(FixedScorer(), sets, tasks=("completion", "set", "cuisine", "order"),
                       modes=("next", "joint"), order_queries=20)
    assert {"completion/recall@10", "completion_joint/mrr", "set/micro_f1", "order/tv", "order_joint/tv"} <= set(out)
    assert not any(k.startswith("cuisine/") for k in out)  # FixedScorer cannot classify
    with pytest.raises(RecipesetError, match="unknown evaluation task"):
        evaluate_all(FixedScorer(), sets, tasks=("completoin",))
    table = metrics_table({"fixed": out, "nested": {"test": {"completion/mrr": 0.5}, "params": {"k": 3}}})
    assert list(table.index) == ["fixed", "nested"]
    assert table.loc["nested", "test/completion/mrr"] == 0.5 and table.loc["nested", "params/k"] == 3
    assert math.isnan(table.loc["fixed", "params/k"])
    back = json.loads(metrics_table_to_json(table))
    assert back["nested"]["params/k"] == 3 and back["fixed"]["params/k"] is None
    save_metrics_table(table, tmp_path / "t.csv")
    assert pd.read_csv(tmp_path / "t.csv", index_col="name").loc["fixed", "completion/mrr"] == \
        pytest.approx(out["completion/mrr"])
    save_metrics_table(table, tmp_path / "t.json")
    with pytest.raises(RecipesetError):
        save_metrics_table(table, tmp_path / "t.txt")


# ---- length grouping ----------------------------------------------------------------------------------------
def test_metrics_are_the_same_with_and_without_length_grouping(tmp_path, monkeypatch):
    """Queries scored in batches sorted by length, results put back per query: the same metrics as batches in
    split order, on a trained decoder that reads the query's order and classifies (`joint` scoring takes the same
    path as `next`). Ranks, generated sets and predicted
    cuisines are equal; the TV distances and NLLs to float rounding of differently padded batches."""
    import recipeset.evaluation as evaluation
    from recipeset.config import RunConfig, resolve_objectives
    from recipeset.data.prepare import prepare_data
    from recipeset.objectives.tasks import Objectives
    from recipeset.pipeline import build_model
    from recipeset.training import Trainer

    cfg = RunConfig().override({"data.n_recipes": 600, "data.order": "given", "model.d_model": 16,
                                "model.n_layers": 1, "objectives.weights": {"clm": 1.0, "cls": 0.5},
                                "train.max_steps": 40, "train.batch_size": 32, "train.warmup_steps": 2,
                                "train.device": "cpu"}, source="test")
    weights = resolve_objectives(cfg)
    data = prepare_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg, data.vocab, weights, int(data.train.lengths.max()))
    Trainer(cfg, model, Objectives(cfg, weights), data.train, data.val, tmp_path, progress=False).fit()
    model.eval()
    sets = data.test_eval

    def ll(tokens, mask):  # an order-sensitive log-likelihood (the models have none)
        pos = torch.arange(1, tokens.shape[1] + 1)
        return -((tokens * pos) % 7 * mask).sum(1).double() / 10

    def run():
        out = evaluate_all(model, sets, tasks=("completion", "set", "cuisine", "order"), batch_size=8,
                           order_queries=None)
        return {**out, **{f"nll/{k}": v for k, v in evaluate_nll(ll, sets, k=3, batch_size=8).items()}}

    grouped = run()
    monkeypatch.setattr(evaluation, "GROUP_BY_LENGTH", False)
    plain = run()
    assert grouped.keys() == plain.keys() and "cuisine/accuracy" in grouped
    assert grouped["order/tv"] > 0.01  # the order matters to this model: the sampled orders are the same
    for key, value in plain.items():
        if key.startswith("order") and key.endswith("/tv"):
            assert grouped[key] == pytest.approx(value, rel=1e-5)
        else:
            assert grouped[key] == value, key
