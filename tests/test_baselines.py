"""Classical baselines: Scorer protocol, they learn structure popularity cannot, tuning by validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recipeset.baselines import (
    BASELINES,
    ItemKNNBaseline,
    PopularityBaseline,
    RecipeKNNBaseline,
    fit_baseline,
    multi_hot,
    run_baselines,
)
from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import NUM_SPECIALS, UNK, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.evaluation import evaluate_completion, evaluate_set_completion
from recipeset.protocol import tune_stop_rule

N_CLUSTERS, PER_CLUSTER, N_COMMON = 6, 8, 4
N_ING = N_CLUSTERS * PER_CLUSTER + N_COMMON
VOCAB = Vocabulary([f"i{j}" for j in range(N_ING)], cuisines=[f"c{j}" for j in range(3)])


def clustered_sets(n: int, seed: int) -> EncodedSets:
    """Each recipe = 3-6 ingredients of one cluster + 1-2 of a few very common ingredients ("salt").

    The common ingredients make popularity a reasonable guess; the clusters reward anything that conditions
    on the query. Cuisine = cluster mod 3 (learnable from the bag of ingredients).
    """
    rng = np.random.default_rng(seed)
    sets, cuisine = [], []
    for _ in range(n):
        c = int(rng.integers(N_CLUSTERS))
        own = rng.choice(PER_CLUSTER, size=int(rng.integers(3, 7)), replace=False) + c * PER_CLUSTER
        common = rng.choice(N_COMMON, size=int(rng.integers(1, 3)), replace=False) + N_CLUSTERS * PER_CLUSTER
        s = np.concatenate([own, common]) + NUM_SPECIALS
        sets.append(rng.permutation(s).tolist())
        cuisine.append(c % 3)
    return EncodedSets.from_lists(sets, cuisine)


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    return clustered_sets(1500, 0), clustered_sets(300, 1), clustered_sets(300, 2)


@pytest.fixture(scope="module")
def results(data):
    train, val, test = data
    return run_baselines(train, val, test, VOCAB, seed=0)


def test_every_baseline_beats_popularity(results):
    pop = results["popularity"]["test"]
    for name, r in results.items():
        if name in ("popularity", "logistic-cuisine"):
            continue
        t = r["test"]
        assert t["completion/mrr"] > pop["completion/mrr"] + 0.05, (name, t["completion/mrr"])
        assert t["completion/recall@10"] > pop["completion/recall@10"], name
        assert t["set/micro_f1"] > pop["set/micro_f1"], (name, t["set/micro_f1"])
        assert t["order/tv"] == pytest.approx(0.0, abs=1e-6), name  # bag-of-ingredients input


def test_cuisine_baseline_learns(results):
    r = results["logistic-cuisine"]
    assert r["test"]["cuisine/accuracy"] > 0.9 and r["test"]["cuisine/macro_f1"] > 0.9
    assert set(r["params"]) >= {"C", "class_weight"}
    assert not any(k.startswith("completion/") for k in r["test"])


def test_results_layout(results):
    assert set(results) == set(BASELINES)
    for r in results.values():
        assert set(r) >= {"params", "val", "test"}
        assert all(np.isscalar(v) for v in r["test"].values())


@pytest.mark.parametrize("name", [n for n in BASELINES if n != "logistic-cuisine"])
def test_scorer_protocol(name, data):
    train, _, _ = data
    b, _ = fit_baseline(name, train, VOCAB, seed=0)
    tokens = torch.tensor([[8, 9, 10], [20, UNK, 0], [0, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [False, False, False]])
    s = b.completion_scores_ids(tokens, mask)
    assert s.shape == (3, len(VOCAB))
    assert torch.isneginf(s[:, :NUM_SPECIALS]).all()
    assert torch.isneginf(s[0, [8, 9, 10]]).all() and torch.isneginf(s[1, 20])
    allowed = torch.ones_like(s, dtype=torch.bool)
    allowed[:, :NUM_SPECIALS] = False
    allowed[0, [8, 9, 10]] = False
    allowed[1, 20] = False
    assert torch.isfinite(s[allowed]).all()  # every candidate is rankable (empty query included)
    # order of the query does not matter, exactly
    perm = torch.tensor([[2, 0, 1], [1, 0, 2], [0, 1, 2]])
    assert torch.equal(b.completion_scores_ids(tokens.gather(1, perm), mask.gather(1, perm)), s)
    gen = b.complete_ids(tokens, mask, max_new=3)
    for row, g in enumerate(gen):
        assert len(g) <= 3 and len(set(g)) == len(g)
        assert all(i >= NUM_SPECIALS and i not in tokens[row][mask[row]].tolist() for i in g)


def test_tuning_picks_by_validation(data):
    train, val, _ = data
    grid = [{"k": 1}, {"k": None}, {"k": 3}]
    b, params = fit_baseline("item-knn", train, VOCAB, val, grid=grid)
    mrrs = [evaluate_completion(ItemKNNBaseline(VOCAB, **g).fit(train), val)["mrr"] for g in grid]
    assert params["k"] == grid[int(np.argmax(mrrs))]["k"]
    assert params["val_mrr"] == pytest.approx(max(mrrs))
    # the chosen stop rule is at least as good on validation as other fixed sizes
    chosen = evaluate_set_completion(b, val)["micro_f1"]
    for m in (1, 3, 8):
        b.stop, b.stop_value = "size", m
        assert chosen >= evaluate_set_completion(b, val)["micro_f1"] - 1e-12


def test_stop_rule_threshold_and_size(data):
    train, val, _ = data
    b = RecipeKNNBaseline(VOCAB, k=20).fit(train)
    rule, value, f1 = tune_stop_rule(b, val, sizes=(2,), thresholds=(0.9,))
    assert (rule, value) in (("size", 2.0), ("threshold", 0.9))
    assert evaluate_set_completion(b, val)["micro_f1"] == pytest.approx(f1)
    b.stop, b.stop_value = "threshold", 1.1  # nothing reaches p >= 1.1: empty predictions, F1 0
    assert evaluate_set_completion(b, val)["micro_f1"] == 0.0


def test_popularity_is_frequency_order(data):
    train, _, _ = data
    b = PopularityBaseline(VOCAB).fit(train)
    counts = np.asarray(multi_hot(train, VOCAB.num_ingredients).sum(0)).ravel()
    s = b.completion_scores_ids(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.bool))[0, 8:]
    assert np.array_equal(np.argsort(-s.numpy(), kind="stable"), np.argsort(-counts, kind="stable"))


def test_bad_names():
    with pytest.raises(RecipesetError, match="unknown baseline"):
        fit_baseline("knn", clustered_sets(10, 0), VOCAB)
    with pytest.raises(RecipesetError, match="unknown baseline"):
        run_baselines(clustered_sets(10, 0), clustered_sets(10, 1), clustered_sets(10, 2), VOCAB, names=["nope"])


def test_mlp_epochs_are_chosen_on_validation(data):
    """With validation queries the MLP keeps the weights of its best validation MRR and stops after
    ``patience`` epochs without a better one."""
    from recipeset.baselines import MLPCompletionBaseline

    train, val, _ = data
    b = MLPCompletionBaseline(VOCAB, hidden=64, layers=2, label_smoothing=0.1, epochs=12, patience=2, lr=3e-3,
                              seed=0).fit(train, val=val)
    curve = b.val_curve
    assert b.best_epoch == int(np.argmax(curve)) + 1
    assert len(curve) == 12 or len(curve) == b.best_epoch + 2  # stopped after 2 epochs without a better one
    assert evaluate_completion(b, val)["mrr"] == pytest.approx(max(curve), abs=1e-9)
    assert b.params()["epochs"] == b.best_epoch and b.params()["layers"] == 2
    assert sum(isinstance(m, torch.nn.Linear) for m in b.net.modules()) == 2  # 64→64, 64→ingredients
