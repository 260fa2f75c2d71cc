"""Orderings of ingredient sets for sequence models (the set has none; the model needs one).

- ``frequency``: ascending id == descending training frequency (the vocabulary sorts ids that way).
- ``alphabetical``: by ingredient name.
- ``random-fixed``: one random order per recipe, a function of (seed, the set) only: the same recipe gets
  the same order in every epoch, in any subset and whatever order its ingredients came in.
- ``shuffle``: a fresh random order per (seed, epoch) — the "CE + shuffle augmentation" baseline.
- ``k-perms``: k fixed random orders per recipe, made by :func:`expand_k_perms` (k copies of each recipe);
  :func:`reorder` then keeps a fixed order per copy (positional, seeded, independent of the epoch).
- ``given``: keep the dataset's own order (an extension of DESIGN.md's names). Only meaningful for data whose
  order means something — the synthetic generator's ordered mode (``data.ordered = true``) lists each recipe
  in its cooking sequence; on real recipe files the listed order is arbitrary and ``given`` is just one more
  fixed order.

All of :func:`reorder` is one ``np.lexsort`` on (segment id, key): no Python loop over recipes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recipeset.data.sets import EncodedSets, csr_sort_within
from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.registry import ORDERS, OrderEntry


def _check(strategy: str) -> OrderEntry:
    return ORDERS.get(strategy)


def alphabetical_rank(vocab: Vocabulary) -> np.ndarray:
    """int64 ``[len(vocab)]``: rank of each id when ingredients are sorted by name (specials first)."""
    names = np.asarray(vocab.ingredients, dtype=object)
    rank = np.arange(len(vocab), dtype=np.int64)
    rank[NUM_SPECIALS + np.argsort(names, kind="stable")] = np.arange(NUM_SPECIALS, len(vocab))
    return rank


def order_ids(ids: Sequence[int], strategy: str, vocab: Vocabulary,
              rng: np.random.Generator | None = None) -> list[int]:
    """One set in the order of ``strategy``; the random orders draw from ``rng`` (default: seed 0);
    ``given`` returns the ids as they came."""
    entry = _check(strategy)
    ids = [int(i) for i in ids]
    if entry.kind == "random":
        rng = rng if rng is not None else np.random.default_rng(0)
        return [ids[j] for j in rng.permutation(len(ids))]
    one = EncodedSets.from_lengths(np.asarray(ids, dtype=np.int64), np.array([len(ids)]), np.full(1, -1))
    key = entry.key(one, vocab, 0, 0)
    return ids if key is None else [ids[j] for j in np.argsort(key, kind="stable")]


# splitmix64 finaliser: a cheap, well-mixed 64-bit hash, vectorised over uint64 arrays (wrap-around intended).
_C0, _C1, _C2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64) + _C0
    x = (x ^ (x >> np.uint64(30))) * _C1
    x = (x ^ (x >> np.uint64(27))) * _C2
    return x ^ (x >> np.uint64(31))


def _set_keys(sets: EncodedSets, seed: int) -> np.ndarray:
    """uint64 ``[total]`` sort keys that depend only on (seed, the recipe's set, the ingredient)."""
    salt = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    vh = _mix(sets.values.astype(np.uint64) ^ salt)
    # Order-invariant fingerprint of each set: the (wrapping) sum of its hashed ids.
    cs = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(vh, dtype=np.uint64)])
    fingerprint = cs[sets.offsets[1:]] - cs[sets.offsets[:-1]]
    return _mix(vh ^ _mix(fingerprint)[sets.segment_ids])


def _sort_within(sets: EncodedSets, key: np.ndarray) -> EncodedSets:
    return sets.with_values(sets.values[csr_sort_within(sets.offsets, key)])


def reorder(sets: EncodedSets, strategy: str, vocab: Vocabulary, seed: int = 0, epoch: int = 0) -> EncodedSets:
    """Every set of ``sets`` in the order of ``strategy`` (same layout, same cuisines; values permuted
    inside each set). ``epoch`` matters only for ``shuffle``; ``given`` returns ``sets`` unchanged."""
    entry = _check(strategy)
    if sets.values.size and (sets.values.min() < 0 or sets.values.max() >= len(vocab)):
        raise RecipesetError(f"reorder: ids outside the vocabulary (0..{len(vocab) - 1}); encode with this vocab")
    key = entry.key(sets, vocab, seed, epoch)
    return sets if key is None else _sort_within(sets, key)


# ---- the orders: a sort key per ingredient position, ``key(sets, vocab, seed, epoch) -> [total] | None`` ------
def _register(name: str, kind: str, help: str, per_epoch: bool = False, copies: bool = False):
    def deco(key):
        ORDERS.register(name, OrderEntry(name, key, kind, per_epoch, copies, help))
        return key

    return deco


@_register("frequency", "canonical", "ascending id = descending training frequency")
def _frequency_key(sets, vocab, seed, epoch):
    return sets.values


@_register("alphabetical", "canonical", "by ingredient name")
def _alphabetical_key(sets, vocab, seed, epoch):
    return alphabetical_rank(vocab)[sets.values]


@_register("random-fixed", "random", "one random order per recipe, fixed by (seed, the set)")
def _random_fixed_key(sets, vocab, seed, epoch):
    return _set_keys(sets, seed)


@_register("shuffle", "random", "a fresh random order every epoch (shuffle augmentation)", per_epoch=True)
def _shuffle_key(sets, vocab, seed, epoch):
    return np.random.default_rng([seed, epoch]).random(len(sets.values))


@_register("k-perms", "random", "data.k_perms fixed random orders per recipe (k copies)", copies=True)
def _k_perms_key(sets, vocab, seed, epoch):
    # copies from expand_k_perms each keep one fixed order (positional, epoch-independent)
    return np.random.default_rng([seed, 0x6B]).random(len(sets.values))


@_register("given", "given", "the dataset's own order (meaningful for ordered data only)")
def _given_key(sets, vocab, seed, epoch):
    return None


def expand_k_perms(sets: EncodedSets, k: int, seed: int = 0) -> tuple[EncodedSets, np.ndarray]:
    """``k`` copies of every recipe, each in its own random order fixed by ``seed``.

    Returns the expanded sets (recipe ``i``'s copies at rows ``i*k .. i*k+k-1``) and ``source_index``
    int64 ``[N*k]``, the original row of each copy. (Small sets may repeat an order: 2 ingredients have 2.)
    """
    if k < 1:
        raise RecipesetError(f"k-perms needs k >= 1, not {k}")
    source = np.repeat(np.arange(len(sets), dtype=np.int64), k)
    expanded = sets.take(source)
    key = np.random.default_rng([seed, k]).random(len(expanded.values))
    return _sort_within(expanded, key), source
