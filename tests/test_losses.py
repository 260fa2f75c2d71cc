"""standard, set-ar, min-perm, pooled and MLM-set losses: hand-computed values, bounds, invariances, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from recipeset.data.vocab import EOS, NULL, NUM_SPECIALS
from recipeset.errors import RecipesetError
from recipeset.objectives import (
    IGNORE,
    hungarian_loss,
    min_perm_loss,
    mlm_set_loss,
    next_token_targets,
    pooled_loss,
    set_ar_loss,
    standard_loss,
)
from recipeset.objectives.losses import _set_ar_steps

torch.set_num_threads(1)
V = 11  # specials 0..7, ingredients 8, 9, 10


def logits_from_probs(rows: list[list[dict[int, float]]], V: int = V) -> torch.Tensor:
    """[B, T, V] logits = log p (−inf where p = 0)."""
    out = torch.full((len(rows), len(rows[0]), V), float("-inf"))
    for b, row in enumerate(rows):
        for t, d in enumerate(row):
            for i, p in d.items():
                out[b, t, i] = math.log(p)
    return out


def decoder_like_logits(tokens: torch.Tensor, mask: torch.Tensor, V: int, seed: int) -> torch.Tensor:
    """Random [B, T+1, V] logits masked like the decoder's: specials -inf except EOS, fed ingredients -inf."""
    B, T = tokens.shape
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T + 1, V, generator=g) * 2
    logits[..., :NUM_SPECIALS] = float("-inf")
    logits[..., EOS] = torch.randn(B, T + 1, generator=g)
    fed = F.one_hot(torch.where(mask, tokens, 0), V).bool() & mask[..., None]  # [B, T, V]
    seen = torch.cat([torch.zeros(B, 1, V, dtype=torch.bool), fed.cumsum(1).bool()], 1)  # fed before step t
    seen[..., :NUM_SPECIALS] = False
    return logits.masked_fill(seen, float("-inf"))


def random_sets(B: int, T: int, V: int, seed: int, min_len: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.rand(B, V - NUM_SPECIALS, generator=g).argsort(1)[:, :T] + NUM_SPECIALS
    n = torch.randint(min_len, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < n[:, None]
    return torch.where(mask, ids, 0), mask


# ---- standard ------------------------------------------------------------------------------------------
def test_standard_loss_hand_computed():
    logits = logits_from_probs([[{8: .25, 9: .5, 10: .25}, {8: .25, 9: .25, 10: .5}, {8: 1.0}]])
    targets = torch.tensor([[9, 8, IGNORE]])
    assert standard_loss(logits, targets).item() == pytest.approx((-math.log(.5) - math.log(.25)) / 2)
    assert standard_loss(logits, targets, reduction="sum").item() == pytest.approx(-math.log(.5) - math.log(.25))
    assert standard_loss(logits, targets, reduction="none").tolist() == pytest.approx([-math.log(.5) - math.log(.25)])
    # smoothing over the 3 classes the model can output (the -inf specials are not classes it can predict)
    eps = 0.1
    smooth0 = -(2 * math.log(.25) + math.log(.5)) / 3
    expected = ((1 - eps) * -math.log(.5) + eps * smooth0 + (1 - eps) * -math.log(.25) + eps * smooth0) / 2
    assert standard_loss(logits, targets, label_smoothing=eps).item() == pytest.approx(expected)


def test_standard_label_smoothing_matches_torch_when_all_logits_finite():
    logits = torch.randn(3, 4, 7)
    targets = torch.tensor([[1, 2, IGNORE, 0], [6, 5, 4, 3], [IGNORE] * 4])
    ours = standard_loss(logits, targets, label_smoothing=0.2)
    ref = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), label_smoothing=0.2, ignore_index=IGNORE)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_bad_reduction_is_a_clear_error():
    with pytest.raises(RecipesetError, match="reduction"):
        standard_loss(torch.zeros(1, 1, 9), torch.zeros(1, 1, dtype=torch.long), reduction="avg")


# ---- set-ar --------------------------------------------------------------------------------------------
def test_set_ar_hand_computed():
    # tokens 8, 9 fed in this order; step t has seen t ingredients (fed ones are -inf, as in the decoder)
    logits = logits_from_probs([[{8: .3, 9: .2, 10: .4, EOS: .1},
                                 {9: .5, 10: .3, EOS: .2},
                                 {10: .6, EOS: .4}]])
    tokens, mask = torch.tensor([[8, 9]]), torch.tensor([[True, True]])
    expected_set_ar = (-math.log(.3 + .2) - math.log(.5) - math.log(.4)) / 3
    assert set_ar_loss(logits, tokens, mask).item() == pytest.approx(expected_set_ar)
    expected_standard = (-math.log(.3) - math.log(.5) - math.log(.4)) / 3
    assert standard_loss(logits, next_token_targets(tokens, mask)).item() == pytest.approx(expected_standard)


def test_next_token_targets():
    tokens = torch.tensor([[8, 9, 0], [10, 0, 0], [0, 0, 0]])
    targets = next_token_targets(tokens, tokens > 0)
    assert targets.tolist() == [[8, 9, EOS, IGNORE], [10, EOS, IGNORE, IGNORE], [EOS, IGNORE, IGNORE, IGNORE]]


def test_set_ar_bounded_by_standard_and_equal_when_one_remains():
    tokens, mask = random_sets(16, 6, 30, seed=0)
    logits = decoder_like_logits(tokens, mask, 30, seed=1)
    targets = next_token_targets(tokens, mask)
    set_ar = set_ar_loss(logits, tokens, mask, reduction="none")
    standard = standard_loss(logits, targets, reduction="none")
    assert torch.isfinite(set_ar).all()
    assert (set_ar <= standard + 1e-5).all()
    assert set_ar_loss(logits, tokens, mask).item() <= standard_loss(logits, targets).item() + 1e-6
    # step by step: equal on the last ingredient step (one remains) and on the EOS step
    steps, counted = _set_ar_steps(logits, tokens, mask)
    per_position = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    n = mask.sum(1)
    for b in range(16):
        for t in (n[b].item() - 1, n[b].item()):
            if t >= 0:
                assert steps[b, t].item() == pytest.approx(per_position[b, t].item(), rel=1e-5, abs=1e-6)
    assert torch.equal(counted, targets != IGNORE)
    # recipes of one ingredient: set-ar == standard
    one = mask & (torch.arange(6)[None, :] < 1)
    logits1 = decoder_like_logits(tokens, one, 30, seed=2)
    assert torch.allclose(set_ar_loss(logits1, tokens, one, reduction="none"),
                          standard_loss(logits1, next_token_targets(tokens, one), reduction="none"))


def test_set_ar_empty_sets_and_gradients():
    tokens = torch.tensor([[8, 9], [0, 0]])
    mask = tokens > 0
    logits = decoder_like_logits(tokens, mask, 12, seed=3).requires_grad_()
    loss = set_ar_loss(logits, tokens, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[1, 0, EOS] != 0  # the empty set learns to stop at once
    assert (logits.grad[1, 1:] == 0).all()  # steps after EOS do not count


# ---- min-perm ------------------------------------------------------------------------------------------
def test_min_perm_hand_computed():
    tokens, mask = torch.tensor([[9, 8]]).repeat(8, 1), torch.ones(8, 2, dtype=torch.bool)

    def nll_fn(p):  # NLL 1 when the order starts with 8, 3 otherwise
        return torch.where(p[:, 0] == 8, 1.0, 3.0)

    g = torch.Generator().manual_seed(0)
    # the given order starts with 9 (NLL 3); among 10 orders of each row one starts with 8 (chance 1 − 2^−9
    # per row; the seed is fixed); n + 1 = 3
    assert min_perm_loss(nll_fn, tokens, mask, k=10, generator=g).item() == pytest.approx(1 / 3)
    assert min_perm_loss(nll_fn, tokens, mask, k=1).item() == pytest.approx(3 / 3)


def test_min_perm_below_each_order_and_gradients():
    B, T, Vr = 8, 5, 20
    tokens, mask = random_sets(B, T, Vr, seed=4)
    bigram = torch.randn(Vr, Vr, generator=torch.Generator().manual_seed(5), requires_grad=True)
    start = torch.randn(Vr, generator=torch.Generator().manual_seed(6), requires_grad=True)
    seen_orders, seen_nlls = [], []

    def nll_fn(perm_tokens):
        # a tiny bigram "decoder": step 0 from `start`, step t from the previous ingredient
        logits = torch.cat([start.expand(B, 1, Vr), bigram[perm_tokens]], 1)  # [B, T+1, V]
        nll = standard_loss(logits, next_token_targets(perm_tokens, mask), reduction="none")
        seen_orders.append(perm_tokens)
        seen_nlls.append(nll.detach())
        return nll

    loss = min_perm_loss(nll_fn, tokens, mask, k=4, generator=torch.Generator().manual_seed(7))
    assert len(seen_orders) == 4 and torch.equal(seen_orders[0], tokens)
    for order in seen_orders:  # each order is a permutation of the valid prefix; padding stays put
        assert torch.equal(order.sort(1).values, tokens.sort(1).values)
        assert torch.equal(order > 0, mask)
    denom = (mask.sum(1) + 1).sum()
    for nll in seen_nlls:  # ≤ the standard CE of each of its k orders
        assert loss.item() <= nll.sum().item() / denom + 1e-6
    assert loss.item() == pytest.approx(torch.stack(seen_nlls).min(0).values.sum().item() / denom.item(), rel=1e-6)
    loss.backward()
    assert bigram.grad.abs().sum() > 0 and start.grad.abs().sum() > 0


def test_min_perm_rejects_left_padding():
    with pytest.raises(RecipesetError, match="right-padded"):
        min_perm_loss(lambda p: torch.zeros(1), torch.tensor([[0, 8]]), torch.tensor([[False, True]]))


# ---- pooled --------------------------------------------------------------------------------------------
def test_pooled_loss_hand_computed():
    Vp = 10  # ingredients 8, 9
    logits = logits_from_probs([[{EOS: .1, 8: .7, 9: .2}, {EOS: .6, 8: .1, 9: .3}]], Vp)
    steps = torch.ones(1, 2, dtype=torch.bool)
    one = torch.zeros(1, Vp)
    one[0, 8] = 1
    # pooled: p(8) = .7, p(9) = .3; n = 1; step 0 has the lower p(EOS): the ingredient step; step 1 stops
    bce = (-math.log(.7) - math.log(1 - .3)) / 2
    stop = 0.5 * -math.log(.6) + 0.5 * -math.log(1 - .1)
    assert pooled_loss(logits, one, steps).item() == pytest.approx(bce + stop, rel=1e-6)
    assert pooled_loss(logits, one.bool(), steps, stop_weight=0.0).item() == pytest.approx(bce, rel=1e-6)
    assert pooled_loss(logits, one, steps, stop_targets="position").item() == pytest.approx(bce + stop, rel=1e-6)
    # both ingredients: n = 2, no stop step (that class contributes 0), cardinality |(.7 + .3) − 2| = 1
    both = one.clone()
    both[0, 9] = 1
    bce2 = (-math.log(.7) - math.log(.3)) / 2
    stop2 = 0.5 * (-math.log(1 - .1) - math.log(1 - .6)) / 2
    got = pooled_loss(logits, both, steps, cardinality_weight=0.5).item()
    assert got == pytest.approx(bce2 + stop2 + 0.5 * 1.0, rel=1e-5)
    # a masked-out step does not pool: only step 0 counts, p(9) = .2
    only0 = torch.tensor([[True, False]])
    bce3 = (-math.log(.7) - math.log(.2)) / 2
    stop3 = 0.5 * -math.log(1 - .1)  # n = 2 > 1 valid step: the single step is an ingredient step
    assert pooled_loss(logits, both, only0).item() == pytest.approx(bce3 + stop3, rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), data=st.data())
def test_pooled_invariant_to_slot_permutation(seed, data):
    B, S, Vr = 3, 6, 25
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, Vr, generator=g) * 2
    logits[..., :NUM_SPECIALS] = float("-inf")
    logits[..., NULL] = torch.randn(B, S, generator=g)
    target = torch.rand(B, Vr, generator=g) < 0.2
    step_mask = torch.rand(B, S, generator=g) < 0.8
    perm = torch.tensor(data.draw(st.permutations(range(S))))
    kwargs = dict(stop_id=NULL, cardinality_weight=0.3)
    a = pooled_loss(logits, target, step_mask, **kwargs)
    b = pooled_loss(logits[:, perm], target, step_mask[:, perm], **kwargs)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_pooled_gradients():
    logits = torch.randn(2, 4, 15, requires_grad=True)
    target = torch.zeros(2, 15, dtype=torch.bool)
    target[0, [8, 9]] = True
    target[1, 12] = True
    loss = pooled_loss(logits, target, torch.ones(2, 4, dtype=torch.bool), cardinality_weight=1.0)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[..., EOS].abs().sum() > 0
    assert logits.grad[..., NUM_SPECIALS:].abs().sum() > 0


# ---- MLM on a set encoder ------------------------------------------------------------------------------
def test_mlm_set_loss_hand_computed():
    # positions 0, 1: input [MASK] hiding {8, 9}; position 2: unlabelled; position 3: random replacement, label 10
    logits = logits_from_probs([[{8: .5, 9: .25, 10: .25}, {8: .2, 9: .4, 10: .4},
                                 {8: .3, 9: .3, 10: .4}, {8: .1, 9: .1, 10: .8}]])
    labels = torch.tensor([[8, 9, IGNORE, 10]])
    masked = torch.tensor([[True, True, False, False]])
    pos0 = -(math.log(.5) + math.log(.25)) / 2
    pos1 = -(math.log(.2) + math.log(.4)) / 2
    pos3 = -math.log(.8)
    assert mlm_set_loss(logits, labels, masked).item() == pytest.approx((pos0 + pos1 + pos3) / 3)
    eps = 0.2
    smooth = [-(math.log(.5) + 2 * math.log(.25)) / 3, -(math.log(.2) + 2 * math.log(.4)) / 3,
              -(2 * math.log(.1) + math.log(.8)) / 3]
    expected = sum((1 - eps) * x + eps * s for x, s in zip((pos0, pos1, pos3), smooth, strict=True)) / 3
    assert mlm_set_loss(logits, labels, masked, label_smoothing=eps).item() == pytest.approx(expected)


def test_mlm_set_loss_equals_hungarian_among_identical_masked_outputs():
    g = torch.Generator().manual_seed(8)
    shared = torch.randn(20, generator=g)
    shared[:NUM_SPECIALS] = float("-inf")
    logits = shared.expand(1, 3, 20).clone()  # an equivariant encoder: identical outputs at [MASK] inputs
    labels = torch.tensor([[8, 13, 17]])
    masked = torch.ones(1, 3, dtype=torch.bool)
    ours = mlm_set_loss(logits, labels, masked)
    hungarian = hungarian_loss(logits, labels)  # K = m: no ∅ slot, plain mean over the matched positions
    assert ours.item() == pytest.approx(hungarian.item(), rel=1e-6)
    # and with distinct outputs it is not the per-position CE of the given (arbitrary) assignment
    logits2 = torch.randn(1, 3, 20, generator=g)
    per_position = standard_loss(logits2, labels)
    assert mlm_set_loss(logits2, labels, masked).item() != pytest.approx(per_position.item())
    assert mlm_set_loss(logits2, labels, torch.zeros_like(masked)).item() == pytest.approx(per_position.item())


def test_mlm_set_loss_batched_and_gradients():
    B, T, Vr = 4, 6, 30
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(B, T, Vr, generator=g, requires_grad=True)
    labels = torch.where(torch.rand(B, T, generator=g) < 0.5, torch.randint(8, Vr, (B, T), generator=g), IGNORE)
    labels[3] = IGNORE  # a set with nothing to predict
    masked = (torch.rand(B, T, generator=g) < 0.7) & (labels != IGNORE)
    loss = mlm_set_loss(logits, labels, masked)
    # batched == the count-weighted mean of the examples alone
    counts = (labels != IGNORE).sum(1)
    alone = [mlm_set_loss(logits[b : b + 1], labels[b : b + 1], masked[b : b + 1]) * counts[b] for b in range(B)]
    assert loss.item() == pytest.approx((sum(alone) / counts.sum()).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[:3].abs().sum() > 0
    assert (logits.grad[3] == 0).all()


def test_every_loss_passes_gradients_to_logits():
    g = torch.Generator().manual_seed(10)
    tokens, mask = random_sets(3, 4, 20, seed=11, min_len=1)
    cases = {
        "standard": lambda x: standard_loss(x[:, :4], torch.where(mask, tokens, IGNORE), label_smoothing=0.1),
        "hungarian": lambda x: hungarian_loss(x[:, :4], torch.where(mask, tokens, IGNORE), label_smoothing=0.1),
        "set-ar": lambda x: set_ar_loss(x, tokens, mask),
        "min-perm": lambda x: min_perm_loss(
            lambda p: standard_loss(x, next_token_targets(p, mask), reduction="none"), tokens, mask, k=3, generator=g),
        "pooled": lambda x: pooled_loss(x, F.one_hot(tokens, 20).amax(1), torch.ones(3, 5, dtype=torch.bool)),
        "mlm-set": lambda x: mlm_set_loss(x[:, :4], torch.where(mask, tokens, IGNORE), mask),
    }
    for name, fn in cases.items():
        logits = torch.randn(3, 5, 20, generator=g, requires_grad=True)
        loss = fn(logits)
        assert loss.requires_grad, name
        loss.backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0, name


def test_multilabel_loss_by_hand():
    from recipeset.objectives.losses import multilabel_loss

    inf = float("-inf")
    logits = torch.tensor([[inf, 0.0, math.log(3.0), inf], [inf, 0.0, 0.0, 0.0]])
    target = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 0]])
    # row 0: −log σ(0) − log(1 − σ(ln 3)) = ln 2 + ln 4 (the two -inf ids left out); row 1: 3 ln 2
    per = multilabel_loss(logits, target, reduction="none")
    torch.testing.assert_close(per, torch.tensor([math.log(2) + math.log(4), 3 * math.log(2)]))
    assert float(multilabel_loss(logits, target)) == pytest.approx(float(per.mean()))
    # sum over the batch: (ln 2 + ln 4) + 3 ln 2 = 6 ln 2 (it returned the mean, 3 ln 2, before)
    assert float(multilabel_loss(logits, target, reduction="sum")) == pytest.approx(6 * math.log(2))
    smoothed = multilabel_loss(logits[1:], target[1:], label_smoothing=0.2)
    assert float(smoothed) == pytest.approx(3 * math.log(2))  # σ(0) = ½ whatever the target
    with pytest.raises(RecipesetError, match="-inf"):
        multilabel_loss(logits, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]))
