"""Batched Hungarian matching of K parallel slots to a target set (DETR's matcher, without its waste).

DETR builds a cost over every prediction × every target of the whole batch and throws most of it away. Here
the cost is a padded ``[B, K, M]`` tensor built with one ``gather``, moved to the CPU once per call, and
``scipy.optimize.linear_sum_assignment`` solves each example's valid ``[K, m_b]`` block.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from recipeset.data.vocab import NULL
from recipeset.errors import RecipesetError

IGNORE = -100
# linear_sum_assignment rejects NaN and may reject ±inf (an "infeasible" matrix): an impossible match
# (a target with a -inf logit) becomes a very large but finite cost instead.
_COST_CLAMP = 1e9


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of target ingredients to slots.

    cost[i, j] = −log p_i(y_j) + w·log p_i(∅): the change in the loss when slot i takes y_j instead of ∅
    (``w`` = ``null_weight``, the ∅ class weight of the loss). Slots left unassigned predict ∅.
    """

    def __init__(self, null_id: int = NULL, null_weight: float = 0.1) -> None:
        super().__init__()
        self.null_id = null_id
        self.null_weight = null_weight

    @torch.no_grad()
    def forward(self, slot_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """slot_logits ``[B, K, V]``, targets ``[B, M]`` ingredient ids padded with -100 (anywhere) ->
        slot_index ``[B, K]`` long: the target *position* (column of ``targets``) each slot is matched to,
        or -1 for ∅. Raises :class:`RecipesetError` when a set has more ingredients than there are slots."""
        B, K, V = slot_logits.shape
        if targets.dim() != 2 or targets.shape[0] != B:
            raise RecipesetError(f"hungarian matching: targets must be [B={B}, M], got {tuple(targets.shape)}")
        device = slot_logits.device
        M = targets.shape[1]
        slot_index = torch.full((B, K), -1, dtype=torch.long, device=device)
        if M == 0 or B == 0:
            return slot_index
        if K == 0:  # degenerate: no cost to read the lengths from
            if bool((targets != IGNORE).any()):
                raise RecipesetError("hungarian matching: K=0 slots but a set has m>0 ingredients; "
                                     "use n_slots >= the largest target set")
            return slot_index

        # Valid targets first (a stable sort), so each example's block is the leading [K, m_b] columns.
        valid = targets != IGNORE
        order = (~valid).to(torch.int8).argsort(dim=1, stable=True)  # [B, M]
        sorted_targets = targets.gather(1, order)
        sorted_valid = valid.gather(1, order)

        logits = slot_logits.float()
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [B, K, 1]; no [B, K, V] log-softmax needed
        logp_y = logits.gather(-1, sorted_targets.clamp_min(0)[:, None, :].expand(B, K, M)) - lse  # ONE gather
        logp_null = logits[..., self.null_id : self.null_id + 1] - lse  # [B, K, 1]
        cost = (-logp_y + self.null_weight * logp_null).clamp(-_COST_CLAMP, _COST_CLAMP)
        cost = torch.nan_to_num(cost, nan=_COST_CLAMP)
        # Invalid columns carry NaN: the host reads each example's m_b off the cost itself, so the lengths
        # need no transfer of their own.
        cost = cost.masked_fill(~sorted_valid[:, None, :], float("nan"))

        cost_np = np.asarray(cost.cpu(), dtype=np.float64)  # the one device -> host transfer
        m = (~np.isnan(cost_np[:, 0, :])).sum(1)  # [B] set sizes
        m_max = int(m.max())
        if m_max > K:
            raise RecipesetError(f"hungarian matching: K={K} slots but a set has m={m_max} ingredients; "
                                 f"use n_slots >= the largest target set ({m_max})")

        cols = np.full((B, K), -1, dtype=np.int64)  # sorted-target column of each slot
        for b in range(B):  # the solver is sequential; the cost is already on the host
            mb = int(m[b])
            if mb:
                rows, c = linear_sum_assignment(cost_np[b, :, :mb])
                cols[b, rows] = c
        cols_t = torch.as_tensor(cols, device=device)
        # Map sorted columns back to positions of the caller's targets.
        slot_index = torch.where(cols_t >= 0, order.gather(1, cols_t.clamp_min(0)), -1)
        return slot_index
