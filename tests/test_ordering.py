"""Orderings: every order is a permutation of each set; canonical orders are right; random orders are
deterministic given the seed; shuffle changes with the epoch, random-fixed does not; k-perms expansion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recipeset.data.ordering import ORDERS, alphabetical_rank, expand_k_perms, order_ids, reorder
from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError

# names deliberately not in frequency (id) order, so alphabetical != frequency
VOCAB = Vocabulary([f"{c}{k}" for k, c in zip(range(40), "qwertyuiopasdfghjklzxcvbnm" * 2, strict=False)])
ids = st.integers(NUM_SPECIALS, len(VOCAB) - 1)
set_lists = st.lists(st.sets(ids, max_size=12).map(list), min_size=1, max_size=30)


def encoded(sets) -> EncodedSets:
    return EncodedSets.from_lists(sets, cuisine=list(range(len(sets))))


def big_sets(n: int = 200, seed: int = 0) -> EncodedSets:
    rng = np.random.default_rng(seed)
    return encoded([rng.choice(np.arange(NUM_SPECIALS, len(VOCAB)), size=rng.integers(3, 15), replace=False).tolist()
                    for _ in range(n)])


def test_orders_names():
    assert ORDERS.names() == ("frequency", "alphabetical", "random-fixed", "shuffle", "k-perms", "given")


@settings(max_examples=80, deadline=None)
@given(set_lists, st.sampled_from(ORDERS.names()), st.integers(0, 10), st.integers(0, 5))
def test_every_order_is_a_permutation_of_each_set(sets, strategy, seed, epoch):
    e = encoded(sets)
    r = reorder(e, strategy, VOCAB, seed=seed, epoch=epoch)
    assert np.array_equal(r.offsets, e.offsets) and np.array_equal(r.cuisine, e.cuisine)
    for a, b in zip(e.to_lists(), r.to_lists(), strict=True):
        assert sorted(a) == sorted(b)
    # deterministic given (seed, epoch)
    assert np.array_equal(r.values, reorder(e, strategy, VOCAB, seed=seed, epoch=epoch).values)


@settings(max_examples=40, deadline=None)
@given(set_lists)
def test_canonical_orders_match_order_ids(sets):
    e = encoded(sets)
    freq = reorder(e, "frequency", VOCAB).to_lists()
    alpha = reorder(e, "alphabetical", VOCAB).to_lists()
    for s, f, a in zip(sets, freq, alpha, strict=True):
        assert f == sorted(s) == order_ids(s, "frequency", VOCAB)
        assert VOCAB.decode(a) == sorted(VOCAB.decode(s))
        assert a == order_ids(s, "alphabetical", VOCAB)


def test_alphabetical_rank_hand_case():
    v = Vocabulary(["onion", "apple", "milk"])
    rank = alphabetical_rank(v)
    assert rank[:NUM_SPECIALS].tolist() == list(range(NUM_SPECIALS))
    assert rank[NUM_SPECIALS:].tolist() == [NUM_SPECIALS + 2, NUM_SPECIALS, NUM_SPECIALS + 1]
    e = EncodedSets.from_lists([[8, 9, 10]])
    assert v.decode(reorder(e, "alphabetical", v)[0]) == ["apple", "milk", "onion"]


def test_shuffle_differs_across_epochs_random_fixed_does_not():
    e = big_sets()
    s0, s1 = (reorder(e, "shuffle", VOCAB, seed=0, epoch=k).values for k in (0, 1))
    assert not np.array_equal(s0, s1)
    f0, f1 = (reorder(e, "random-fixed", VOCAB, seed=0, epoch=k).values for k in (0, 1))
    assert np.array_equal(f0, f1)
    k0, k1 = (reorder(e, "k-perms", VOCAB, seed=0, epoch=k).values for k in (0, 1))
    assert np.array_equal(k0, k1)
    # ...but the seed matters, and random orders are not the canonical one
    assert not np.array_equal(f0, reorder(e, "random-fixed", VOCAB, seed=1).values)
    assert not np.array_equal(f0, reorder(e, "frequency", VOCAB).values)
    assert not np.array_equal(s0, f0)


def test_random_fixed_is_a_function_of_the_set():
    e = big_sets()
    r = reorder(e, "random-fixed", VOCAB, seed=7)
    # the same recipe gets the same order in a subset, and whatever order its ingredients came in
    idx = np.array([5, 3, 150])
    assert reorder(e.take(idx), "random-fixed", VOCAB, seed=7).to_lists() == r.take(idx).to_lists()
    shuffled = reorder(e, "shuffle", VOCAB, seed=3)
    assert np.array_equal(reorder(shuffled, "random-fixed", VOCAB, seed=7).values, r.values)


def test_random_orders_look_uniform():
    # the first position of a 3-set under random-fixed/shuffle: each element ~1/3 of the time
    e = encoded([[8, 9, 10]] * 3000)
    firsts = reorder(e, "shuffle", VOCAB, seed=0).values[::3]
    assert np.allclose(np.bincount(firsts, minlength=11)[8:] / 3000, 1 / 3, atol=0.04)
    # random-fixed is a function of the set, so it needs distinct sets: all 3-subsets of 32 ingredients
    triples = [list(c) for c in itertools.combinations(range(NUM_SPECIALS, NUM_SPECIALS + 32), 3)]
    r = reorder(encoded(triples), "random-fixed", VOCAB, seed=0).values.reshape(-1, 3)
    first_rank = (r[:, :1] > r).sum(1)  # 0: the smallest id came first, 1: the middle one, 2: the largest
    assert np.allclose(np.bincount(first_rank, minlength=3) / len(triples), 1 / 3, atol=0.03)


def test_expand_k_perms():
    e = big_sets(50)
    x, src = expand_k_perms(e, 4, seed=2)
    assert len(x) == 200 and src.tolist() == np.repeat(np.arange(50), 4).tolist()
    assert np.array_equal(x.cuisine, e.cuisine[src])
    for i in range(200):
        assert sorted(x[i].tolist()) == sorted(e[src[i]].tolist())
    distinct = [len({tuple(x[4 * i + j].tolist()) for j in range(4)}) for i in range(50)]
    assert np.mean(distinct) > 3.5  # sets of >= 3 ingredients: the 4 copies are (almost always) different orders
    x2, _ = expand_k_perms(e, 4, seed=2)
    assert np.array_equal(x.values, x2.values)
    # reorder(..., "k-perms") keeps each copy fixed over epochs
    a = reorder(x, "k-perms", VOCAB, seed=2, epoch=0)
    assert np.array_equal(a.values, reorder(x, "k-perms", VOCAB, seed=2, epoch=9).values)
    with pytest.raises(RecipesetError, match="k >= 1"):
        expand_k_perms(e, 0)


def test_order_ids_random_uses_rng():
    s = list(range(8, 20))
    a = order_ids(s, "random-fixed", VOCAB, np.random.default_rng(1))
    b = order_ids(s, "random-fixed", VOCAB, np.random.default_rng(1))
    assert a == b and sorted(a) == s
    assert order_ids(s, "shuffle", VOCAB, np.random.default_rng(2)) != a


def test_bad_inputs():
    e = encoded([[8, 9]])
    with pytest.raises(RecipesetError, match="unknown order 'random'"):
        reorder(e, "random", VOCAB)
    with pytest.raises(RecipesetError, match="unknown order"):
        order_ids([8], "sorted", VOCAB)
    with pytest.raises(RecipesetError, match="outside the vocabulary"):
        reorder(encoded([[8, 999]]), "frequency", VOCAB)


def test_empty_sets_and_vectorised_speed():
    e = encoded([[], [8], []])
    for strategy in ORDERS:
        assert reorder(e, strategy, VOCAB).to_lists() == [[], [8], []]
    import time

    big = EncodedSets.from_lengths(np.random.default_rng(0).integers(8, len(VOCAB), 500_000),
                                   np.full(50_000, 10), np.zeros(50_000))
    t = time.perf_counter()
    reorder(big, "random-fixed", VOCAB)
    assert time.perf_counter() - t < 2.0  # no Python loop over recipes
