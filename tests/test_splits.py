"""Group split: identical ingredient sets never straddle splits; ~80/10/10 of recipes per cuisine stratum;
deterministic; independent of row order; save/load refuses a different table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recipeset.data.splits import Split, ingredient_set_groups, split_table
from recipeset.data.table import RecipeTable
from recipeset.errors import RecipesetError

FLAVORNET = Path(os.environ.get("RECIPESET_FLAVORNET_DIR") or "/work/shared/data/flavornet")
needs_flavornet = pytest.mark.skipif(not (FLAVORNET / "allr_recipes.txt").is_file(),
                                     reason="flavornet files not available")

NAMES = [f"i{k}" for k in range(6)]
recipes = st.lists(st.tuples(st.sets(st.sampled_from(NAMES), min_size=1, max_size=3),
                             st.sampled_from(["A", "B", None])), min_size=1, max_size=60)


def make_table(rows) -> RecipeTable:
    return RecipeTable.from_records([sorted(s) for s, _ in rows], [c for _, c in rows], name="h")


def random_table(n: int, n_ingr: int, seed: int) -> RecipeTable:
    """A flavornet-like table: Zipf-ish ingredient popularity, skewed cuisines, many repeated sets."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_ingr + 1)
    p /= p.sum()
    sizes = np.clip(rng.poisson(6, n), 1, 20)
    flat = rng.choice(n_ingr, size=int(sizes.sum()), p=p)
    sets = [sorted(set(x.tolist())) for x in np.split(flat, np.cumsum(sizes)[:-1])]
    cuisines = rng.choice(["NA", "SE", "LA", "EA", "AF"], size=n, p=[0.72, 0.1, 0.08, 0.07, 0.03])
    return RecipeTable.from_records([[f"i{x}" for x in s] for s in sets], cuisines.tolist(), name="r")


def assert_partition(split: Split, n: int) -> None:
    allidx = np.concatenate([split.train, split.val, split.test])
    assert np.array_equal(np.sort(allidx), np.arange(n))


@settings(max_examples=60, deadline=None)
@given(recipes, st.integers(0, 3))
def test_identical_sets_never_straddle(rows, seed):
    t = make_table(rows)
    s = split_table(t, seed=seed)
    assert_partition(s, len(t))
    keys = [frozenset(r) for r in t.ingredients]
    where = {}
    for name in ("train", "val", "test"):
        for i in s[name]:
            assert where.setdefault(keys[i], name) == name
    # deterministic given the seed
    s2 = split_table(t, seed=seed)
    assert all(np.array_equal(s[n], s2[n]) for n in ("train", "val", "test"))


@settings(max_examples=25, deadline=None)
@given(recipes, st.randoms(use_true_random=False))
def test_split_independent_of_row_order(rows, rnd):
    t = make_table(rows)
    perm = list(range(len(t)))
    rnd.shuffle(perm)
    shuffled = t.subset(perm)
    a, b = split_table(t, seed=5), split_table(shuffled, seed=5)
    for name in ("train", "val", "test"):
        assert sorted(t.recipe_ids[i] for i in a[name]) == sorted(shuffled.recipe_ids[i] for i in b[name])


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 2**16))
def test_fractions_on_flavornet_sized_tables(seed):
    t = random_table(56_000, 380, seed)
    s = split_table(t, seed=seed)
    n = len(t)
    assert abs(len(s.train) / n - 0.8) < 0.005
    assert abs(len(s.val) / n - 0.1) < 0.005 and abs(len(s.test) / n - 0.1) < 0.005
    cu = np.asarray(t.cuisines)
    for c in np.unique(cu):  # each stratum (the smallest has ~1.7k recipes) within 2 points
        total = (cu == c).sum()
        for name, f in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            assert abs((cu[s[name]] == c).sum() / total - f) < 0.02


@needs_flavornet
def test_flavornet_split():
    from recipeset.data.sources.flavornet import load_flavornet

    t = load_flavornet(FLAVORNET)
    s = split_table(t)
    assert_partition(s, len(t))
    sizes = s.sizes()
    assert abs(sizes["train"] / len(t) - 0.8) < 0.002 and abs(sizes["test"] / len(t) - 0.1) < 0.002
    g = ingredient_set_groups(t)
    assert not (set(g[s.train]) & set(g[s.val]) or set(g[s.train]) & set(g[s.test]) or set(g[s.val]) & set(g[s.test]))
    cu = np.asarray(t.cuisines)
    for c in np.unique(cu):  # every region, even NorthernEuropean (250 recipes), is in every split
        assert all((cu[s[n]] == c).any() for n in ("train", "val", "test"))


def test_majority_cuisine_and_ties_are_deterministic():
    # group {a,b}: 2x X, 1x Y -> stratum X; group {c}: X vs Y tie -> X (smallest label); all same for any seed
    t = RecipeTable.from_records([["a", "b"], ["b", "a"], ["a", "b"], ["c"], ["c"]],
                                 ["X", "X", "Y", "Y", "X"])
    for seed in range(5):
        s = split_table(t, seed=seed)
        assert_partition(s, 5)
        for name in ("train", "val", "test"):
            idx = set(s[name].tolist())
            assert idx & {0, 1, 2} in (set(), {0, 1, 2}) and idx & {3, 4} in (set(), {3, 4})


def test_bad_fractions():
    t = RecipeTable.from_records([["a"]])
    for fr in ((0.8, 0.1), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1)):
        with pytest.raises(RecipesetError, match="fractions"):
            split_table(t, fractions=fr)
    s = split_table(t, fractions=(1.0, 0.0, 0.0))
    assert s.sizes() == {"train": 1, "val": 0, "test": 0}


def test_save_load_roundtrip_and_table_check(tmp_path):
    t = random_table(500, 30, 0)
    s = split_table(t, seed=3)
    p = tmp_path / "split.json"
    s.save(p)
    d = json.loads(p.read_text())
    assert d["seed"] == 3 and d["fractions"] == [0.8, 0.1, 0.1] and len(d["recipe_ids"]) == 500
    back = Split.load(p, t)
    assert all(np.array_equal(s[n], back[n]) for n in ("train", "val", "test"))
    train, val, test = back.tables(t)
    assert len(train) + len(val) + len(test) == 500

    other = t.subset(np.arange(499, -1, -1))  # same recipes, other order
    with pytest.raises(RecipesetError, match=r"split.json: recipe ids differ from table 'r' \(row 0: split has "
                                             r"'r:0', table has 'r:499'\)"):
        Split.load(p, other)
    with pytest.raises(RecipesetError, match="made for 500 recipes but table 'r' has 10"):
        s.check(t.subset(range(10)))


def test_load_bad_files(tmp_path):
    p = tmp_path / "s.json"
    with pytest.raises(RecipesetError, match="split file not found"):
        Split.load(p)
    p.write_text("{")
    with pytest.raises(RecipesetError, match="not a valid split file"):
        Split.load(p)
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(RecipesetError, match="not a recipeset split file"):
        Split.load(p)
    good = split_table(RecipeTable.from_records([["a"], ["b"], ["c"]]), seed=0).to_dict()
    p.write_text(json.dumps({**good, "train": [0, 0]}))
    with pytest.raises(RecipesetError, match="must partition"):
        Split.load(p)
    bad = dict(good)
    del bad["seed"]
    p.write_text(json.dumps(bad))
    with pytest.raises(RecipesetError, match="malformed split file"):
        Split.load(p)
