"""Objectives: set losses, batched Hungarian matching and input corruption (pure tensor functions)."""

from recipeset.objectives.losses import (
    IGNORE,
    hungarian_loss,
    min_perm_loss,
    mlm_set_loss,
    next_token_targets,
    pooled_loss,
    set_ar_loss,
    standard_loss,
)
from recipeset.objectives.masking import MLMBatch, coherence_pairs, mlm_mask, rtd_corrupt
from recipeset.objectives.matching import HungarianMatcher

__all__ = [
    "IGNORE",
    "HungarianMatcher",
    "MLMBatch",
    "coherence_pairs",
    "hungarian_loss",
    "min_perm_loss",
    "mlm_mask",
    "mlm_set_loss",
    "next_token_targets",
    "pooled_loss",
    "rtd_corrupt",
    "set_ar_loss",
    "standard_loss",
]
