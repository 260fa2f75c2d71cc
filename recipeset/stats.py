"""Paired comparisons of two runs on the same completion queries: is a difference bigger than the noise?

A run's per-query ranks (:func:`recipeset.protocol.per_query_table`: one row per recipe, held-out draw and
scoring mode) are paired with another run's on the same (recipe, draw) queries; :func:`paired_bootstrap`
resamples *recipes* — a resampled recipe brings all its draws — so the interval reflects which recipes the test
split happens to hold, not the (correlated) draws of the same recipe as if they were independent queries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recipeset.errors import RecipesetError

_RECALL = re.compile(r"recall(?:@|_at_)(\d+)")
_BOOT_CHUNK = 256  # bootstrap replicates drawn at a time (n_boot × n_recipes indices would not fit for big splits)


def query_values(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each query's contribution to ``metric`` — ``recall@k`` (or ``recall_at_k``): rank ≤ k; ``mrr``: 1/rank;
    ``mean_rank``: the rank — so the metric is their mean."""
    ranks = np.asarray(ranks, dtype=np.float64)
    m = _RECALL.fullmatch(metric)
    if m:
        return (ranks <= int(m.group(1))).astype(np.float64)
    if metric == "mrr":
        return 1.0 / ranks
    if metric == "mean_rank":
        return ranks
    raise RecipesetError(f"paired_bootstrap: unknown metric {metric!r} — valid: recall@k, mrr, mean_rank")


@dataclass(frozen=True)
class PairedDifference:
    """``a − b`` of a metric on the same queries and its percentile bootstrap interval over recipes."""

    metric: str
    difference: float
    low: float
    high: float
    recipes: int
    draws: int
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def interval(self) -> str:
        return f"[{self.low:+.4f}, {self.high:+.4f}]"


def paired_bootstrap(a_ranks: np.ndarray, b_ranks: np.ndarray, metric: str, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> PairedDifference:
    """The difference ``metric(a) − metric(b)`` of two runs' ranks on the same queries, with its ``level``
    percentile interval from ``n_boot`` bootstrap resamples of the recipes.

    ``a_ranks`` and ``b_ranks``: ``[R]`` (one query per recipe) or ``[R, D]`` (recipe × draw, row r of both the
    same recipe, column d the same held-out ingredient). A resample draws R recipes with replacement and keeps
    each one's D draws together: its per-recipe differences (mean over the draws) are averaged.
    """
    a, b = np.asarray(a_ranks, dtype=np.float64), np.asarray(b_ranks, dtype=np.float64)
    a, b = (a[:, None] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
        raise RecipesetError(f"paired_bootstrap: expected two non-empty [recipes, draws] rank arrays of one shape, "
                             f"got {a.shape} and {b.shape}")
    if n_boot < 1 or not 0 < level < 1:
        raise RecipesetError(f"paired_bootstrap: needs n_boot >= 1 and 0 < level < 1, not {n_boot} and {level}")
    per_recipe = (query_values(a, metric) - query_values(b, metric)).mean(1)  # [R]
    n = len(per_recipe)
    rng = np.random.default_rng(seed)
    boots = np.concatenate([per_recipe[rng.integers(0, n, size=(min(_BOOT_CHUNK, n_boot - i), n))].mean(1)
                            for i in range(0, n_boot, _BOOT_CHUNK)])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boots, [tail, 100 - tail])
    return PairedDifference(metric, float(per_recipe.mean()), float(low), float(high), n, a.shape[1], level)


def rank_matrix(table: pd.DataFrame, split: str = "test", mode: str = "next") -> tuple[pd.DataFrame, pd.DataFrame]:
    """A per-query table's ranks and held-out targets of ``split`` and ``mode`` as ``[recipe, draw]`` frames
    (recipes sorted)."""
    rows = table[(table["split"] == split) & (table["mode"] == mode)]
    if rows.empty:
        raise RecipesetError(f"no per-query ranks for split {split!r}, mode {mode!r}")
    if rows.duplicated(["recipe", "draw"]).any():
        raise RecipesetError(f"per-query ranks: a (recipe, draw) of split {split!r}, mode {mode!r} repeats")
    ranks = rows.pivot(index="recipe", columns="draw", values="rank").sort_index()
    targets = rows.pivot(index="recipe", columns="draw", values="target").sort_index()
    if ranks.isna().any().any():
        raise RecipesetError(f"per-query ranks: some recipe of split {split!r} lacks a draw")
    return ranks, targets


def paired_ranks(a: pd.DataFrame, b: pd.DataFrame, split: str = "test", mode: str = "next"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The ``[R, D]`` rank arrays of two runs' per-query tables on the same queries (for :func:`paired_bootstrap`);
    a RecipesetError when their queries differ (other recipes, draws or held-out ingredients)."""
    (ra, ta), (rb, tb) = rank_matrix(a, split, mode), rank_matrix(b, split, mode)
    if not (ra.index.equals(rb.index) and ra.columns.equals(rb.columns) and ta.equals(tb)):
        raise RecipesetError(f"the two runs were not scored on the same {split} queries (recipes, draws or held-out "
                             "ingredients differ): check eval.seed, eval.max_queries, eval.query_draws and the split")
    return ra.to_numpy(), rb.to_numpy()


__all__ = ["paired_bootstrap", "paired_ranks", "rank_matrix", "query_values", "PairedDifference"]
