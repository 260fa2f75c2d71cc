"""Collation: vectorised padding == a naive loop; masks; EncodedSets.take/padded; DataLoader with workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recipeset.data.collate import Batch, SetCollator, SetDataset, collate
from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import PAD

set_lists = st.lists(st.lists(st.integers(8, 60), max_size=10), min_size=1, max_size=25)


def naive_pad(sets: list[list[int]], max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    T = max((len(s) for s in sets), default=0) if max_len is None else max_len
    tokens = np.full((len(sets), T), PAD, dtype=np.int64)
    mask = np.zeros((len(sets), T), dtype=bool)
    for b, s in enumerate(sets):
        for t, x in enumerate(s[:T]):
            tokens[b, t] = x
            mask[b, t] = True
    return tokens, mask


@settings(max_examples=100, deadline=None)
@given(set_lists, st.data())
def test_padded_and_collate_match_naive_loop(sets, data):
    cuisine = data.draw(st.lists(st.integers(-1, 5), min_size=len(sets), max_size=len(sets)))
    e = EncodedSets.from_lists(sets, cuisine)
    idx = data.draw(st.lists(st.integers(0, len(sets) - 1), min_size=1, max_size=12))
    picked = [sets[i] for i in idx]
    tokens, mask = e.padded(idx)
    want_t, want_m = naive_pad(picked)
    assert np.array_equal(tokens, want_t) and np.array_equal(mask, want_m)

    b = collate(e, idx)
    assert isinstance(b, Batch) and len(b) == len(idx)
    assert b.tokens.dtype == torch.int64 and b.mask.dtype == torch.bool
    assert torch.equal(b.tokens, torch.from_numpy(want_t)) and torch.equal(b.mask, torch.from_numpy(want_m))
    assert b.lengths.tolist() == [len(s) for s in picked]
    assert b.cuisine.tolist() == [cuisine[i] for i in idx]
    assert b.index.tolist() == idx
    assert (b.tokens[~b.mask] == PAD).all()  # padding is PAD, and only padding is masked out

    max_len = data.draw(st.integers(0, 6))
    tt, mm = e.padded(idx, max_len=max_len)
    nt, nm = naive_pad(picked, max_len)
    assert np.array_equal(tt, nt) and np.array_equal(mm, nm)
    assert collate(e, idx, max_len=max_len).lengths.tolist() == [min(len(s), max_len) for s in picked]


@settings(max_examples=60, deadline=None)
@given(set_lists, st.data())
def test_take_matches_python(sets, data):
    e = EncodedSets.from_lists(sets)
    idx = data.draw(st.lists(st.integers(0, len(sets) - 1), max_size=15))
    sub = e.take(idx)
    assert sub.to_lists() == [sets[i] for i in idx]
    assert sub.lengths.tolist() == [len(sets[i]) for i in idx]
    assert e.to_lists() == sets
    assert e.segment_ids.tolist() == [i for i, s in enumerate(sets) for _ in s]


def test_hand_case_and_empty_set():
    e = EncodedSets.from_lists([[8, 9, 10], [], [11]], cuisine=[2, -1, 0])
    b = collate(e, [2, 1, 0])
    assert b.tokens.tolist() == [[11, 0, 0], [0, 0, 0], [8, 9, 10]]
    assert b.mask.tolist() == [[True, False, False], [False, False, False], [True, True, True]]
    assert b.lengths.tolist() == [1, 0, 3] and b.cuisine.tolist() == [0, -1, 2]
    tokens, mask = e.padded()
    assert tokens.shape == (3, 3) and mask.sum() == 4
    moved = b.to("cpu")
    assert torch.equal(moved.tokens, b.tokens)


def test_encoded_sets_validation():
    with pytest.raises(ValueError):
        EncodedSets(np.array([8, 9]), np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError):
        EncodedSets(np.array([8]), np.array([0, 1]), np.array([0, 1]))


def test_dataloader_with_workers_and_no_pin_memory():
    rng = np.random.default_rng(0)
    sets = [rng.choice(np.arange(8, 100), size=rng.integers(1, 12), replace=False).tolist() for _ in range(103)]
    e = EncodedSets.from_lists(sets, cuisine=rng.integers(-1, 4, len(sets)))
    loader = torch.utils.data.DataLoader(SetDataset(e), batch_size=16, shuffle=False, num_workers=2,
                                         pin_memory=False, collate_fn=SetCollator(e))
    seen = []
    for b in loader:
        assert isinstance(b, Batch)
        want_t, want_m = naive_pad([sets[i] for i in b.index.tolist()])
        assert torch.equal(b.tokens, torch.from_numpy(want_t)) and torch.equal(b.mask, torch.from_numpy(want_m))
        seen += b.index.tolist()
    assert seen == list(range(len(sets)))
    assert len(SetDataset(e)) == 103
