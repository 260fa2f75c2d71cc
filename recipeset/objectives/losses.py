"""Set losses as pure tensor functions: standard, hungarian, set-ar, min-perm, pooled, and the MLM set loss.

Conventions shared by every function here:

- ``-100`` (``IGNORE``) marks target positions that do not count;
- logits may hold ``-inf`` (decoders mask specials and ingredients already present; slot heads mask the
  specials except [NULL]): every loss is finite and NaN-free as long as each *target* has a finite logit;
- ``label_smoothing`` ε mixes the one-hot (or set) target with the uniform distribution over the classes the
  model can output (those with a finite logit). With all logits finite this is exactly torch's
  ``label_smoothing``; over ``-inf`` logits torch's version would be infinite.

The definitions follow DESIGN.md, "Losses, precisely".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from recipeset.data.vocab import EOS, NULL, NUM_SPECIALS
from recipeset.errors import RecipesetError
from recipeset.objectives.matching import IGNORE, HungarianMatcher

__all__ = [
    "IGNORE",
    "item_cross_entropy",
    "standard_loss",
    "hungarian_loss",
    "set_ar_loss",
    "min_perm_loss",
    "pooled_loss",
    "mlm_set_loss",
    "next_token_targets",
]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise RecipesetError(f"loss reduction must be one of {', '.join(_REDUCTIONS)}, not {reduction!r}")


def _smoothing_term(logp: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log p`` over the finite classes: ``[..., V] -> [...]`` (CE against uniform over them)."""
    finite = torch.isfinite(logp)
    # where (not multiply): -inf * 0 would be NaN, in the forward and in the backward pass.
    return -torch.where(finite, logp, 0.0).sum(-1) / finite.sum(-1).clamp_min(1)


def item_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-item CE ``[N, V], [N] -> [N]``, 0 where the target is ``IGNORE``; ``weight`` (``[V]``) multiplies
    each item's loss by the weight of its target class, as ``F.cross_entropy(weight=...)`` does without
    smoothing. (With smoothing torch weights each class of the smoothing term separately; here the target's
    weight scales the whole item, so a ∅ slot stays down-weighted as a whole.)"""
    if label_smoothing == 0.0:
        return F.cross_entropy(logits, targets, weight=weight, ignore_index=IGNORE, reduction="none")
    logp = F.log_softmax(logits.float(), dim=-1)
    valid = targets != IGNORE
    safe = targets.clamp_min(0)
    nll = -logp.gather(-1, safe[:, None]).squeeze(-1)
    loss = (1.0 - label_smoothing) * nll + label_smoothing * _smoothing_term(logp)
    if weight is not None:
        loss = loss * weight[safe]
    return torch.where(valid, loss, 0.0)


def next_token_targets(tokens: torch.Tensor, mask: torch.Tensor, eos_id: int = EOS) -> torch.Tensor:
    """Shifted decoder targets ``[B, T+1]`` for a decoder fed ``[BOS] + tokens``: the ingredients, then
    ``eos_id`` at step ``n``, ``IGNORE`` after. ``tokens``/``mask``: ``[B, T]``, right-padded."""
    B, T = tokens.shape
    targets = torch.full((B, T + 1), IGNORE, dtype=torch.long, device=tokens.device)
    targets[:, :T] = torch.where(mask, tokens, IGNORE)
    n = mask.sum(1)
    targets.scatter_(1, n[:, None], eos_id)
    return targets


# ---- standard ----------------------------------------------------------------------------------------------
def standard_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> torch.Tensor:
    """Position-wise cross-entropy on the given order.

    logits ``[B, T, V]``, targets ``[B, T]`` (``IGNORE`` = -100 does not count).
    reduction: ``mean`` (over the counted positions of the batch), ``sum``, or ``none`` -> per-example
    sums ``[B]`` (what :func:`min_perm_loss` needs from its ``nll_fn``).
    """
    _check_reduction(reduction)
    B, T, V = logits.shape
    if targets.shape != (B, T):
        raise RecipesetError(f"standard_loss: targets shape {tuple(targets.shape)} != logits [B, T] = {(B, T)}")
    loss = item_cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T), label_smoothing).view(B, T)
    if reduction == "none":
        return loss.sum(1)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (targets != IGNORE).sum().clamp_min(1)


# ---- hungarian ---------------------------------------------------------------------------------------------
def hungarian_loss(slot_logits: torch.Tensor, targets: torch.Tensor, null_id: int = NULL, null_weight: float = 0.1,
                   label_smoothing: float = 0.0, truncate_logp: float | None = None,
                   matcher: HungarianMatcher | None = None) -> torch.Tensor:
    """DETR-style set loss over K parallel slots.

    slot_logits ``[B, K, V]`` (``null_id`` = ∅), targets ``[B, M]`` ingredient ids padded with ``IGNORE``.

    1. :class:`HungarianMatcher` assigns each target to one slot (cost −log p_i(y_j) + w·log p_i(∅), under
       ``no_grad``); unmatched slots get the target ∅.
    2. Ordinary cross-entropy over all B·K slots with class weight ``null_weight`` on ∅ and 1 elsewhere,
       reduced as a weighted mean (Σ w_{y_i}·ℓ_i / Σ w_{y_i}), exactly DETR's ``loss_ce``.

    ``truncate_logp`` (OAXE's truncation, a log-probability ≤ 0 such as ``math.log(0.01)``): a slot matched
    to an ingredient y whose log p_slot(y) (at matching time, no gradient) is below it contributes nothing —
    it leaves both the numerator and the denominator of the weighted mean (it is *not* pushed towards ∅).
    ∅ slots are never truncated. Early in training this keeps hopeless matches from dominating the gradient.
    """
    B, K, V = slot_logits.shape
    matcher = matcher if matcher is not None else HungarianMatcher(null_id=null_id, null_weight=null_weight)
    slot_index = matcher(slot_logits, targets)  # [B, K], -1 = ∅
    matched = slot_index >= 0
    if targets.shape[1] > 0:
        gathered = targets.gather(1, slot_index.clamp_min(0))
    else:
        gathered = torch.zeros_like(slot_index)
    slot_targets = torch.where(matched, gathered, null_id)
    if truncate_logp is not None:
        with torch.no_grad():
            logp_target = slot_logits.float().gather(-1, slot_targets[..., None]).squeeze(-1) \
                - torch.logsumexp(slot_logits.float(), dim=-1)
            drop = matched & (logp_target < truncate_logp)
        slot_targets = slot_targets.masked_fill(drop, IGNORE)
    weight = torch.ones(V, dtype=torch.float32, device=slot_logits.device)
    weight[null_id] = null_weight
    flat_targets = slot_targets.reshape(B * K)
    loss = item_cross_entropy(slot_logits.reshape(B * K, V), flat_targets, label_smoothing, weight)
    denom = torch.where(flat_targets != IGNORE, weight[flat_targets.clamp_min(0)], 0.0).sum()
    return loss.sum() / denom.clamp_min(1e-12)


# ---- set-ar ------------------------------------------------------------------------------------------------
def _set_ar_steps(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                  eos_id: int = EOS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step set-ar losses ``[B, T+1]`` and the mask of counted steps ``[B, T+1]`` (steps 0..n)."""
    B, T1, V = logits.shape
    T = tokens.shape[1]
    if T1 != T + 1 or mask.shape != (B, T):
        raise RecipesetError(f"set_ar_loss: logits must be [B, T+1, V] for tokens [B, T]; got logits "
                             f"{tuple(logits.shape)}, tokens {tuple(tokens.shape)}, mask {tuple(mask.shape)}")
    logp = F.log_softmax(logits.float(), dim=-1)  # [B, T+1, V]
    steps = torch.arange(T + 1, device=tokens.device)
    pos = torch.arange(T, device=tokens.device)
    # remaining[b, t, j]: ingredient j not yet fed after t steps (the order is the given one).
    remaining = mask[:, None, :] & (pos[None, None, :] >= steps[None, :, None])  # [B, T+1, T]
    g = logp.gather(-1, tokens.clamp_min(0)[:, None, :].expand(B, T + 1, T))  # log p_t(y_j)
    g = g.masked_fill(~remaining, float("-inf"))
    # One extra column: 0 on steps with nothing remaining (so logsumexp is finite there and its gradient is
    # not NaN), -inf elsewhere (adds nothing). Those steps use the EOS term or are not counted.
    none_left = ~remaining.any(-1, keepdim=True)
    extra = torch.zeros_like(g[..., :1]).masked_fill(~none_left, float("-inf"))
    any_remaining = -torch.logsumexp(torch.cat([g, extra], dim=-1), dim=-1)  # [B, T+1]
    n = mask.sum(1)
    eos_loss = -logp[..., eos_id]  # [B, T+1]
    is_eos_step = steps[None, :] == n[:, None]
    loss = torch.where(is_eos_step, eos_loss, any_remaining)
    counted = steps[None, :] <= n[:, None]
    return torch.where(counted, loss, 0.0), counted


def set_ar_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, eos_id: int = EOS,
                reduction: str = "mean") -> torch.Tensor:
    """Autoregressive loss that is exact for sets.

    logits ``[B, T+1, V]`` (step t has been fed t ingredients: the decoder's input is ``[BOS] + tokens``),
    tokens ``[B, T]`` right-padded, mask ``[B, T]`` True on real ingredients.
    Step t < n: the target is *any* not-yet-fed ingredient: −log Σ_{y ∈ remaining_t} p_t(y); step n: −log p(EOS).
    The remaining sets are built for all steps at once with a ``[B, T+1, T]`` mask and one gather.
    It is ≤ the standard CE of the same order and equal to it on a step with one ingredient remaining.
    reduction: ``mean`` over all counted steps (ingredients + the EOS step) of the batch, ``sum``, or
    ``none`` -> per-example sums ``[B]``.
    """
    _check_reduction(reduction)
    loss, counted = _set_ar_steps(logits, tokens, mask, eos_id)
    if reduction == "none":
        return loss.sum(1)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / counted.sum().clamp_min(1)


# ---- min-perm ----------------------------------------------------------------------------------------------
def _check_prefix(mask: torch.Tensor, who: str) -> None:
    if mask.shape[1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise RecipesetError(f"{who}: mask must be right-padded (real ingredients first, as collate produces)")


def min_perm_loss(nll_fn: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor,
                  k: int = 4, generator: torch.Generator | None = None, include_given: bool = True) -> torch.Tensor:
    """The CE of the best of k orders of each recipe (minimal-loss alignment by re-feeding, PIT/MLA style).

    nll_fn: ``perm_tokens [B, T] -> [B]`` per-example *summed* NLL of the recipe fed in that order (e.g. the
    decoder + ``standard_loss(..., reduction="none")`` on ``next_token_targets``); the mask is unchanged
    because only the valid prefix is permuted. tokens/mask ``[B, T]``, right-padded.
    Order 0 is the given order when ``include_given`` (so the loss is never above the given order's), the
    others are uniform random permutations of each valid prefix (one vectorised argsort of random keys per
    order). nll_fn runs k times (k forward passes); the gradient flows through each recipe's best order only.
    Returns Σ_b min_k NLL_b / Σ_b (n_b + 1): the mean per predicted token, counting the EOS step, so it is
    on the same scale as ``standard_loss(reduction="mean")`` of a decoder.
    """
    if k < 1:
        raise RecipesetError(f"min_perm_loss: k must be >= 1, not {k}")
    _check_prefix(mask, "min_perm_loss")
    B, T = tokens.shape
    nlls = []
    for i in range(k):
        if i == 0 and include_given:
            perm_tokens = tokens
        else:
            keys = torch.rand(B, T, generator=generator, device=tokens.device)
            keys = keys.masked_fill(~mask, 2.0)  # padding sorts last and stays padding
            perm_tokens = tokens.gather(1, keys.argsort(dim=1))
        nll = nll_fn(perm_tokens)
        if nll.shape != (B,):
            raise RecipesetError(f"min_perm_loss: nll_fn must return per-example sums [B]={B}, got "
                                 f"{tuple(nll.shape)} (use reduction='none')")
        nlls.append(nll)
    best = torch.stack(nlls, 0).min(0).values  # [B]
    return best.sum() / (mask.sum(1) + 1).sum()


# ---- pooled ------------------------------------------------------------------------------------------------
def pooled_loss(step_logits: torch.Tensor, targets_multi_hot: torch.Tensor, step_mask: torch.Tensor,
                stop_id: int = EOS, stop_weight: float = 1.0, cardinality_weight: float = 0.0,
                stop_targets: str = "rank", num_specials: int = NUM_SPECIALS) -> torch.Tensor:
    """Inverse-Cooking-style set loss: max-pooled probabilities, a class-balanced stop loss, cardinality.

    step_logits ``[B, S, V]`` (decoder steps or K slots), targets_multi_hot ``[B, V]`` (bool or 0/1 float;
    only ingredient ids ``>= num_specials`` count), step_mask ``[B, S]`` True on the steps that count.
    ``stop_id``: [EOS] for a decoder, [NULL] (∅) for slots.

    - set term: p = softmax per step; pooled_v = max over valid steps of p_{s,v}; mean BCE(pooled, target) over
      the batch and the ingredient ids.
    - stop term (weight ``stop_weight``): BCE of p_s(stop) against 1 on "stop" steps and 0 on the n
      "ingredient" steps, the two classes weighted equally (½·mean over each class, per example, then mean
      over the batch). Which steps are the n ingredient steps:
      ``rank`` (default; permutation invariant, for slots): the n valid steps with the lowest p(stop) — the
      optimal assignment of the stop targets, so the loss is invariant to any permutation of the steps;
      ``position`` (Inverse Cooking's rule, for a decoder whose steps are ordered): steps 0..n-1, stop at ≥ n.
    - cardinality term (weight ``cardinality_weight``): mean over the batch of |Σ_v pooled_v − n| (L1).
    Every term is a function of the multiset of valid steps only (with ``rank``), hence invariant to any
    permutation of the steps/slots.
    """
    if stop_targets not in ("rank", "position"):
        raise RecipesetError(f"pooled_loss: stop_targets must be 'rank' or 'position', not {stop_targets!r}")
    B, S, V = step_logits.shape
    target = targets_multi_hot.to(torch.float32)[:, num_specials:]  # [B, V']
    n = target.sum(1)  # [B]
    probs = F.softmax(step_logits.float(), dim=-1)
    valid = step_mask[..., None]
    pooled = probs.masked_fill(~valid, 0.0).amax(1)[:, num_specials:]  # probs >= 0, so 0 is neutral for max
    set_term = F.binary_cross_entropy(pooled, target)

    p_stop = probs[..., stop_id]  # [B, S]
    if stop_targets == "position":
        ingredient_step = torch.arange(S, device=step_logits.device)[None, :] < n[:, None]
    else:
        with torch.no_grad():
            # rank of each valid step by p(stop), ascending; invalid steps rank last.
            keyed = p_stop.detach().masked_fill(~step_mask, float("inf"))
            rank = keyed.argsort(dim=1).argsort(dim=1)
        ingredient_step = rank < n[:, None]
    ingredient_step = ingredient_step & step_mask
    stop_step = step_mask & ~ingredient_step
    bce = F.binary_cross_entropy(p_stop, stop_step.float(), reduction="none")  # [B, S]
    # Class-balanced: each class is averaged on its own (an empty class contributes 0), then halved.
    eps = 1e-6
    stop_term = 0.5 * (torch.where(stop_step, bce, 0.0).sum(1) / (stop_step.sum(1) + eps)
                       + torch.where(ingredient_step, bce, 0.0).sum(1) / (ingredient_step.sum(1) + eps))
    loss = set_term + stop_weight * stop_term.mean()
    if cardinality_weight:
        loss = loss + cardinality_weight * (pooled.sum(1) - n).abs().mean()
    return loss


# ---- MLM on a permutation-equivariant encoder --------------------------------------------------------------
def mlm_set_loss(logits: torch.Tensor, labels: torch.Tensor, masked_with_token: torch.Tensor,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """MLM loss for an encoder without positions (DESIGN.md).

    logits ``[B, T, V]``, labels ``[B, T]`` (``IGNORE`` off the masked positions), masked_with_token ``[B, T]``
    True where the *input* was [MASK] (see :func:`recipeset.objectives.masking.mlm_mask`).

    - [MASK] positions of one recipe receive the same input and no position, so a permutation-equivariant
      encoder gives them identical outputs; no per-position target is learnable. Each of them is trained
      against the uniform distribution over the multiset G_b of labels hidden behind [MASK] in its recipe:
      ℓ_i = −(1/|G_b|) Σ_{j ∈ G_b} log p_i(y_j). Equivalence: when the |G_b| outputs are equal (p_i = p),
      every one-to-one matching has the same cost, so the Hungarian loss among them (without ∅) is
      Σ_j −log p(y_j) = Σ_{i ∈ G_b} ℓ_i — this loss is that Hungarian loss, computed without a matching.
    - labelled positions whose input is not [MASK] (the 10% random / 10% unchanged) show their own token and
      use ordinary per-position CE.
    Returns the mean over all labelled positions. Vectorised with one ``[B, T, T]`` gather.
    """
    B, T, V = logits.shape
    labelled = labels != IGNORE
    group = labelled & masked_with_token  # [B, T]
    logp = F.log_softmax(logits.float(), dim=-1)
    safe = labels.clamp_min(0)
    # g[b, i, j] = log p_i(y_j)
    g = logp.gather(-1, safe[:, None, :].expand(B, T, T))
    in_group = group[:, None, :]
    set_nll = -torch.where(in_group, g, 0.0).sum(-1) / group.sum(1, keepdim=True).clamp_min(1)  # [B, T]
    own_nll = -g.diagonal(dim1=1, dim2=2)  # [B, T]: −log p_i(y_i)
    nll = torch.where(masked_with_token, set_nll, own_nll)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll + label_smoothing * _smoothing_term(logp)
    loss = torch.where(labelled, nll, 0.0)
    return loss.sum() / labelled.sum().clamp_min(1)


# ---- independent per-ingredient probabilities (binary relevance) --------------------------------------------
def multilabel_loss(logits: torch.Tensor, targets_multi_hot: torch.Tensor, label_smoothing: float = 0.0,
                    reduction: str = "mean") -> torch.Tensor:
    """Binary relevance: each candidate ingredient is in the hidden part or not, independently.

    logits ``[B, V]`` — one logit per id; ``-inf`` marks an id that is not a candidate (specials, the query's
    own ingredients) and is left out. targets_multi_hot ``[B, V]`` (bool or 0/1): the hidden ingredients (every
    one of them must be a candidate). ℓ_b = Σ_{v candidate} BCE(σ(x_bv), t_bv) — a sum over the candidates, so
    each recipe's hidden ingredients weigh the same whatever the vocabulary size; ``mean`` averages ℓ_b over
    the batch, ``sum`` adds them, ``none`` returns ``[B]``. With label smoothing ε the targets are t(1−ε) + ε/2.
    σ(x_bv) is then a calibrated estimate of P(v hidden | query), the quantity a threshold rule needs.
    """
    _check_reduction(reduction)
    cand = torch.isfinite(logits)
    target = targets_multi_hot.to(torch.float32)
    if bool((target.bool() & ~cand).any()):
        raise RecipesetError("multilabel_loss: a target ingredient has logit -inf (it is in the query or special)")
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
    x = torch.where(cand, logits.float(), 0.0)
    bce = F.binary_cross_entropy_with_logits(x, target, reduction="none")
    per = torch.where(cand, bce, 0.0).sum(1)
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.mean()
