"""MLM masking, RTD corruption and coherence pairs: statistics over many draws, and never a duplicate."""

import pytest
import torch

from recipeset.data.vocab import MASK, NULL, NUM_SPECIALS, PAD
from recipeset.errors import RecipesetError
from recipeset.objectives import IGNORE, coherence_pairs, mlm_mask, rtd_corrupt

torch.set_num_threads(1)


def random_sets(B: int, T: int, V: int, seed: int, min_len: int = 0, max_len: int | None = None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.rand(B, V - NUM_SPECIALS, generator=g).argsort(1)[:, :T] + NUM_SPECIALS
    n = torch.randint(min_len, (max_len or T) + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < n[:, None]
    return torch.where(mask, ids, PAD), mask


def has_duplicates(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B] True where a row repeats a valid id."""
    same = (tokens[:, :, None] == tokens[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    return (same & ~torch.eye(tokens.shape[1], dtype=torch.bool)).any((1, 2))


def in_row(values: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T'] True where values[b, i] is one of row b's valid tokens."""
    return ((values[:, :, None] == tokens[:, None, :]) & mask[:, None, :]).any(-1)


# ---- MLM ------------------------------------------------------------------------------------------------
def test_mlm_statistics_and_invariants():
    B, T, V, p = 4000, 10, 60, 0.15
    tokens, mask = random_sets(B, T, V, seed=0)
    out = mlm_mask(tokens, mask, V, prob=p, generator=torch.Generator().manual_seed(1))
    assert out.tokens.shape == (B, T) and torch.equal(out.mask, mask)
    labelled = out.labels != IGNORE
    n = mask.sum(1)
    # labels only on real positions; at least one per non-empty set, none on empty sets
    assert not (labelled & ~mask).any()
    assert (labelled.sum(1)[n > 0] >= 1).all() and (labelled.sum(1)[n == 0] == 0).all()
    assert torch.equal(out.labels[labelled], tokens[labelled])
    # rate: each position with prob p, plus one forced position when none was drawn: E = n·p + (1 − p)^n
    expected = (n * p + torch.where(n > 0, (1 - p) ** n, 0.0)).sum()
    assert labelled.sum().item() == pytest.approx(expected.item(), rel=0.05)
    # 80 / 10 / 10
    as_mask = out.masked_with_token
    random = labelled & ~as_mask & (out.tokens != tokens)
    unchanged = labelled & (out.tokens == tokens)
    total = labelled.sum().item()
    assert as_mask.sum().item() / total == pytest.approx(0.8, abs=0.03)
    assert random.sum().item() / total == pytest.approx(0.1, abs=0.025)
    assert unchanged.sum().item() / total == pytest.approx(0.1, abs=0.025)
    assert torch.equal(as_mask, out.tokens == MASK) and not (as_mask & ~labelled).any()
    # random replacements: never a special, never an ingredient of the set, never a duplicate
    assert (out.tokens[random] >= NUM_SPECIALS).all()
    assert not (in_row(out.tokens, tokens, mask) & random).any()
    assert not has_duplicates(out.tokens, mask & ~as_mask).any()
    # everything else is untouched
    assert torch.equal(out.tokens[~labelled], tokens[~labelled])


def test_mlm_small_sets_follow_the_at_least_one_rule():
    # sets of one ingredient: always masked, whatever prob
    tokens, mask = torch.full((500, 1), 8), torch.ones(500, 1, dtype=torch.bool)
    out = mlm_mask(tokens, mask, 20, prob=0.01, generator=torch.Generator().manual_seed(2))
    assert (out.labels == 8).all()


def test_mlm_random_replacement_when_the_vocabulary_is_exhausted():
    # every ingredient of the vocabulary is in the set: a "random" position must stay unchanged
    tokens, mask = torch.tensor([[8, 9]]).repeat(300, 1), torch.ones(300, 2, dtype=torch.bool)
    out = mlm_mask(tokens, mask, 10, prob=1.0, generator=torch.Generator().manual_seed(3))
    assert ((out.tokens == MASK) | (out.tokens == tokens)).all()
    assert not has_duplicates(out.tokens, ~out.masked_with_token).any()


def test_mlm_null_positions():
    B, T, V = 3000, 6, 40
    tokens, mask = random_sets(B, T, V, seed=4)
    out = mlm_mask(tokens, mask, V, generator=torch.Generator().manual_seed(5), null_prob=0.3)
    assert out.tokens.shape == (B, T + 1)
    is_null = (out.labels == NULL).any(1)
    n = mask.sum(1)
    assert not is_null[n == 0].any()
    assert is_null[n > 0].float().mean().item() == pytest.approx(0.3, abs=0.03)
    rows = is_null.nonzero().squeeze(1)
    # a null set: all its ingredients visible, one [MASK] labelled NULL right after them
    assert ((out.labels[rows] != IGNORE).sum(1) == 1).all()
    assert (out.labels[rows, n[rows]] == NULL).all() and (out.tokens[rows, n[rows]] == MASK).all()
    assert out.masked_with_token[rows, n[rows]].all() and (out.mask[rows].sum(1) == n[rows] + 1).all()
    assert torch.equal(out.tokens[rows, :T][mask[rows]], tokens[rows][mask[rows]])
    # the other sets keep the ordinary rule and their width-T part
    others = (~is_null & (n > 0)).nonzero().squeeze(1)
    assert ((out.labels[others] != IGNORE).sum(1) >= 1).all() and not out.mask[others, T].any()


def test_mlm_is_deterministic_under_a_seed():
    tokens, mask = random_sets(50, 8, 40, seed=6)
    a = mlm_mask(tokens, mask, 40, generator=torch.Generator().manual_seed(7), null_prob=0.2)
    b = mlm_mask(tokens, mask, 40, generator=torch.Generator().manual_seed(7), null_prob=0.2)
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values(), strict=True))


def test_mlm_bad_probability_is_a_clear_error():
    with pytest.raises(RecipesetError, match="prob"):
        mlm_mask(torch.tensor([[8]]), torch.tensor([[True]]), 10, prob=0.0)


# ---- RTD ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prob", [0.15, 0.5])
def test_rtd_balance_and_no_duplicates(prob):
    B, T, V = 3000, 10, 80
    tokens, mask = random_sets(B, T, V, seed=8)
    out, labels = rtd_corrupt(tokens, mask, V, prob=prob, generator=torch.Generator().manual_seed(9))
    assert torch.equal(labels[~mask], torch.full_like(labels[~mask], -100.0))
    replaced = labels == 1.0
    assert ((labels[mask] == 0) | (labels[mask] == 1)).all()
    assert replaced[mask].float().mean().item() == pytest.approx(prob, abs=0.02)
    assert torch.equal(replaced, mask & (out != tokens))
    assert (out[replaced] >= NUM_SPECIALS).all()
    assert not (in_row(out, tokens, mask) & replaced).any()
    assert not has_duplicates(out, mask).any()
    assert torch.equal(out[~mask], tokens[~mask])


def test_rtd_popularity_and_cooccurrence_sampling():
    B, T, V = 500, 6, 40
    tokens, mask = random_sets(B, T, V, seed=10)
    popularity = torch.zeros(V)
    popularity[NUM_SPECIALS::2] = 1.0  # only even ids are ever popular
    out, labels = rtd_corrupt(tokens, mask, V, prob=0.3, generator=torch.Generator().manual_seed(11),
                              cooccurrence=popularity)
    replaced = labels == 1.0
    assert replaced.any() and (out[replaced] % 2 == 0).all()
    assert not has_duplicates(out, mask).any()
    # co-occurrence: ids below 24 co-occur only among themselves, ids from 24 only among themselves
    low = torch.arange(V) < 24
    cooc = (low[:, None] == low[None, :]).float()
    only_low = torch.where(mask, (tokens - NUM_SPECIALS) % 16 + NUM_SPECIALS, PAD)  # all ids in 8..23
    only_low_mask = mask & ~has_duplicates(only_low, mask)[:, None]
    only_low = torch.where(only_low_mask, only_low, PAD)
    out, labels = rtd_corrupt(only_low, only_low_mask, V, prob=0.3, generator=torch.Generator().manual_seed(12),
                              cooccurrence=cooc)
    replaced = labels == 1.0
    assert replaced.any() and (out[replaced] < 24).all()
    assert not has_duplicates(out, only_low_mask).any()
    with pytest.raises(RecipesetError, match="cooccurrence"):
        rtd_corrupt(tokens, mask, V, cooccurrence=torch.ones(V + 1))


# ---- coherence ------------------------------------------------------------------------------------------
def check_pairs(tokens, mask, out, out_mask, segments, labels):
    B, T = tokens.shape
    n = mask.sum(1)
    half = n // 2
    pos = torch.arange(T)[None, :]
    # right-padded output, never a duplicate
    assert not (out_mask[:, 1:] & ~out_mask[:, :-1]).any()
    assert not has_duplicates(out, out_mask).any()
    assert (out[out_mask] >= NUM_SPECIALS).all() and (out[~out_mask] == PAD).all()
    small = n < 2
    assert (labels[small] == 1).all() and (segments[small] == 0).all()
    assert torch.equal(out[small], tokens[small]) and torch.equal(out_mask[small], mask[small])
    pos_rows = (labels == 1) & ~small
    assert torch.equal(out[pos_rows], tokens[pos_rows]) and torch.equal(out_mask[pos_rows], mask[pos_rows])
    assert torch.equal(segments[pos_rows], (mask & (pos >= half[:, None]))[pos_rows].long())
    neg = labels == 0
    first = pos < half[:, None]
    # a negative keeps its first half, has a non-empty second half with an ingredient foreign to the set
    assert torch.equal(torch.where(first, out, PAD)[neg], torch.where(first, tokens, PAD)[neg])
    second = out_mask & (segments == 1)
    assert torch.equal(second[neg].sum(1) > 0, torch.ones(int(neg.sum()), dtype=torch.bool))
    assert torch.equal(segments[out_mask & first], torch.zeros_like(segments[out_mask & first]))
    foreign = second & ~in_row(out, tokens, mask)
    assert foreign[neg].any(1).all()
    assert not (segments[~out_mask] != 0).any()


@pytest.mark.parametrize("neg_prob", [0.5, 0.2])
def test_coherence_balance_and_no_duplicates(neg_prob):
    B, T, V = 2000, 10, 200
    tokens, mask = random_sets(B, T, V, seed=13)
    result = coherence_pairs(tokens, mask, generator=torch.Generator().manual_seed(14), neg_prob=neg_prob)
    out, out_mask, segments, labels = result
    check_pairs(tokens, mask, *result)
    eligible = mask.sum(1) >= 2
    assert (1 - labels[eligible]).mean().item() == pytest.approx(neg_prob, abs=0.035)


def test_coherence_compensates_failed_swaps_in_a_crowded_vocabulary():
    # 6 ingredients and sets of 2..4: many swaps would only repeat the set's own ingredients
    B, T, V = 2000, 4, NUM_SPECIALS + 6
    tokens, mask = random_sets(B, T, V, seed=15, min_len=2)
    result = coherence_pairs(tokens, mask, generator=torch.Generator().manual_seed(16), neg_prob=0.5)
    check_pairs(tokens, mask, *result)
    assert (1 - result[3]).mean().item() == pytest.approx(0.5, abs=0.05)


def test_coherence_impossible_negatives_stay_positive():
    tokens = torch.tensor([[8, 9, 10, 11]]).repeat(10, 1)  # identical recipes: any swap is coherent
    mask = torch.ones(10, 4, dtype=torch.bool)
    result = coherence_pairs(tokens, mask, generator=torch.Generator().manual_seed(17), neg_prob=1.0)
    check_pairs(tokens, mask, *result)
    assert (result[3] == 1).all()
    # a batch of one cannot be swapped either
    single = coherence_pairs(tokens[:1], mask[:1], generator=torch.Generator().manual_seed(0), neg_prob=1.0)
    assert single[3].tolist() == [1.0]


def test_empty_batches_of_width_zero():
    tokens, mask = torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0, dtype=torch.bool)
    out = mlm_mask(tokens, mask, 20, null_prob=1.0)  # empty sets never get a [NULL] position
    assert out.tokens.shape == (3, 0) and out.labels.shape == (3, 0)
    assert rtd_corrupt(tokens, mask, 20)[1].shape == (3, 0)
    assert coherence_pairs(tokens, mask)[3].tolist() == [1.0, 1.0, 1.0]
