"""Batched Hungarian matching and the Hungarian loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from recipeset.data.vocab import NULL, NUM_SPECIALS
from recipeset.errors import RecipesetError
from recipeset.objectives import IGNORE, HungarianMatcher, hungarian_loss, standard_loss

torch.set_num_threads(1)


def slot_logits_from_probs(probs: list[list[dict[int, float]]], V: int) -> torch.Tensor:
    """[B, K, V] logits = log p (−inf where p = 0) from per-slot {id: prob} dicts."""
    out = torch.full((len(probs), len(probs[0]), V), float("-inf"))
    for b, row in enumerate(probs):
        for k, d in enumerate(row):
            for i, p in d.items():
                out[b, k, i] = math.log(p)
    return out


def random_slot_logits(B: int, K: int, V: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, V, generator=g) * 2
    logits[..., :NUM_SPECIALS] = float("-inf")  # as the model does: specials -inf except NULL
    logits[..., NULL] = torch.randn(B, K, generator=g)
    return logits


def random_targets(B: int, K: int, V: int, seed: int) -> torch.Tensor:
    """[B, K] distinct ingredient ids per row, padded with IGNORE (at random places, not only at the end)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.rand(B, V - NUM_SPECIALS, generator=g).argsort(1)[:, :K] + NUM_SPECIALS
    m = torch.randint(0, K + 1, (B,), generator=g)
    keep = torch.arange(K)[None, :] < m[:, None]
    keep = keep.gather(1, torch.rand(B, K, generator=g).argsort(1))  # scatter the padding
    return torch.where(keep, ids, IGNORE)


# ---- hand-computed ------------------------------------------------------------------------------------
V = 10  # specials 0..7, ingredients 8 and 9


def test_hungarian_one_target_hand_computed():
    # slot 0: ∅ .2, 8 .6, 9 .2 ; slot 1: ∅ .5, 8 .1, 9 .4 ; target {9}
    logits = slot_logits_from_probs([[{NULL: .2, 8: .6, 9: .2}, {NULL: .5, 8: .1, 9: .4}]], V)
    targets = torch.tensor([[9]])
    # cost(slot0, 9) = -log .2 + .1 log .2 = 1.448 > cost(slot1, 9) = -log .4 + .1 log .5 = 0.847
    assert HungarianMatcher()(logits, targets).tolist() == [[-1, 0]]
    expected = (-math.log(.4) + 0.1 * -math.log(.2)) / (1 + 0.1)
    assert hungarian_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_hungarian_two_targets_hand_computed_and_truncation():
    logits = slot_logits_from_probs([[{NULL: .2, 8: .6, 9: .2}, {NULL: .5, 8: .1, 9: .4}]], V)
    targets = torch.tensor([[9, 8]])
    # K = m: slot0<-8, slot1<-9 costs -log .6 - log .4 (+ equal ∅ terms) < -log .2 - log .1
    assert HungarianMatcher()(logits, targets).tolist() == [[1, 0]]
    expected = (-math.log(.6) - math.log(.4)) / 2
    assert hungarian_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    # truncation at log .5: the match with log p = log .4 is dropped (numerator and denominator)
    assert hungarian_loss(logits, targets, truncate_logp=math.log(.5)).item() == pytest.approx(-math.log(.6))
    # truncating everything leaves a zero loss, not NaN
    assert hungarian_loss(logits, targets, truncate_logp=0.0).item() == 0.0


def test_hungarian_label_smoothing_hand_computed():
    logits = slot_logits_from_probs([[{NULL: .5, 8: .25, 9: .25}]], V)
    eps = 0.1
    smooth = (-math.log(.5) - 2 * math.log(.25)) / 3  # uniform over the 3 finite classes
    expected = (1 - eps) * -math.log(.25) + eps * smooth
    loss = hungarian_loss(logits, torch.tensor([[8]]), label_smoothing=eps)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# ---- properties -----------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), data=st.data())
def test_hungarian_invariant_to_target_permutation(seed, data):
    B, K, Vr = 3, 6, 30
    logits = random_slot_logits(B, K, Vr, seed)
    targets = random_targets(B, K, Vr, seed + 1)
    perms = [data.draw(st.permutations(range(K))) for _ in range(B)]
    permuted = torch.stack([targets[b, list(p)] for b, p in enumerate(perms)])
    a = hungarian_loss(logits, targets)
    b = hungarian_loss(logits, permuted)
    assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-6)
    # the matched ingredient of every slot is the same too
    def matched_ids(t):
        idx = HungarianMatcher()(logits, t)
        return torch.where(idx >= 0, t.gather(1, idx.clamp_min(0)), -1)
    assert torch.equal(matched_ids(targets), matched_ids(permuted))


def test_hungarian_equals_standard_in_optimal_order():
    B, K, Vr = 4, 5, 25
    logits = random_slot_logits(B, K, Vr, 0)
    targets = random_targets(B, K, Vr, 1)
    # with ∅ weight 1 the weighted mean is the plain mean over the B·K slots, as in standard_loss
    idx = HungarianMatcher(null_weight=1.0)(logits, targets)
    optimal = torch.where(idx >= 0, targets.gather(1, idx.clamp_min(0)), NULL)  # the optimal per-slot order
    h = hungarian_loss(logits, targets, null_weight=1.0)
    assert h.item() == pytest.approx(standard_loss(logits, optimal).item(), rel=1e-6)
    # and the standard CE of any other order is not lower
    shuffled = optimal[:, torch.randperm(K, generator=torch.Generator().manual_seed(3))]
    assert standard_loss(logits, shuffled).item() >= h.item() - 1e-6
    # K == m (no ∅ slot): equal for any ∅ weight
    full = torch.arange(NUM_SPECIALS, NUM_SPECIALS + K).repeat(B, 1)
    idx = HungarianMatcher()(logits, full)
    assert (idx >= 0).all()
    optimal_full = full.gather(1, idx)
    assert hungarian_loss(logits, full).item() == pytest.approx(standard_loss(logits, optimal_full).item(), rel=1e-6)


def test_batch_matches_each_item_alone():
    B, K, Vr = 7, 8, 40
    logits = random_slot_logits(B, K, Vr, 5)
    targets = random_targets(B, K, Vr, 6)
    batched = HungarianMatcher()(logits, targets)
    for b in range(B):
        alone = HungarianMatcher()(logits[b : b + 1], targets[b : b + 1])
        assert torch.equal(batched[b], alone[0])
        # the same matching with the padding stripped away
        keep = targets[b] != IGNORE
        stripped = HungarianMatcher()(logits[b : b + 1], targets[b : b + 1, keep])
        positions = keep.nonzero().squeeze(1)
        remapped = torch.where(stripped[0] >= 0, positions[stripped[0].clamp_min(0)], -1)
        assert torch.equal(batched[b], remapped)


def test_empty_and_one_element_targets():
    K, Vr = 4, 20
    logits = random_slot_logits(3, K, Vr, 9).requires_grad_()
    only_null = torch.full((3, K), NULL)
    for empty in (torch.zeros(3, 0, dtype=torch.long), torch.full((3, 2), IGNORE)):
        assert (HungarianMatcher()(logits, empty) == -1).all()
        loss = hungarian_loss(logits, empty)
        assert loss.item() == pytest.approx(standard_loss(logits, only_null).item(), rel=1e-6)
    one = torch.tensor([[8], [IGNORE], [12]])
    idx = HungarianMatcher()(logits, one)
    assert (idx >= 0).sum(1).tolist() == [1, 0, 1]
    # the single target goes to the slot with the lowest cost −log p(y) + w log p(∅)
    logp = F.log_softmax(logits.detach(), -1)
    cost = -logp[0, :, 8] + 0.1 * logp[0, :, NULL]
    assert idx[0, cost.argmin()] == 0
    loss = hungarian_loss(logits, one)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_too_few_slots_is_a_clear_error():
    logits = random_slot_logits(2, 2, 20, 0)
    targets = torch.tensor([[8, 9, IGNORE], [8, 9, 10]])
    with pytest.raises(RecipesetError, match=r"K=2.*m=3"):
        hungarian_loss(logits, targets)


class TransferCounter(TorchFunctionMode):
    """Counts host transfers / syncs and records whether grad was enabled at every torch call."""

    SYNCS = {"cpu", "tolist", "item", "numpy", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self.grad_enabled: list[tuple[str, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        kwargs = kwargs or {}
        # .to(dtype) stays on the device; .to(device) / .to("cpu") / .to(other_tensor) is a transfer
        moves = name == "to" and (any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:])
                                  or "device" in kwargs)
        if name in self.SYNCS or moves:
            self.syncs.append(name)
        self.grad_enabled.append((name, torch.is_grad_enabled()))
        return func(*args, **kwargs)


def test_matching_moves_to_cpu_once_and_runs_without_grad():
    logits = random_slot_logits(16, 8, 50, 1).requires_grad_()
    targets = random_targets(16, 8, 50, 2)
    matcher = HungarianMatcher()
    with TransferCounter() as counter:
        idx = matcher(logits, targets)
    assert counter.syncs == ["cpu"]
    # every op of the matching runs under no_grad (the first call is no_grad switching grad off)
    assert counter.grad_enabled[0] == ("_set_grad_enabled", True)
    assert len(counter.grad_enabled) > 10 and not any(enabled for _, enabled in counter.grad_enabled[1:])
    assert not idx.requires_grad
    # the whole loss adds no further transfer
    with TransferCounter() as counter:
        loss = hungarian_loss(logits, targets, matcher=matcher)
    assert counter.syncs == ["cpu"]
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[..., NUM_SPECIALS:].abs().sum() > 0 and logits.grad[..., NULL].abs().sum() > 0
