"""Train/validation/test split by ingredient set, stratified by cuisine.

Identical ingredient sets recur (flavornet: ~49.6k distinct sets in 56.5k recipes), so a row split leaks test
sets into training. Recipes are grouped by their sorted ingredient set; each group takes its majority
cuisine (ties: a labelled cuisine over none, then the alphabetically first label); inside each cuisine
stratum the groups are shuffled (seeded) and dealt out whole, so that each stratum gets ~80/10/10 of its
*recipes*. The split is a function of the table's content and the seed, not of its row order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recipeset.data.table import RecipeTable
from recipeset.errors import RecipesetError
from recipeset.io_utils import atomic_write_text

SPLIT_NAMES = ("train", "val", "test")
FORMAT = "recipeset.split/1"


def _check_fractions(fractions: tuple[float, ...]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise RecipesetError(f"split fractions must be three non-negative numbers summing to 1, not {fractions}")
    return fr  # type: ignore[return-value]


@dataclass(frozen=True)
class Split:
    """Row indices (int64, ascending) of the train/val/test recipes of one table.

    ``recipe_ids`` are the ids of the whole table the split was made for (in row order), so a split
    saved to disk can refuse a table it does not belong to.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    fractions: tuple[float, float, float]
    recipe_ids: tuple[str, ...]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in SPLIT_NAMES:
            raise KeyError(f"split name must be one of {SPLIT_NAMES}, not {name!r}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {n: int(len(self[n])) for n in SPLIT_NAMES}

    def check(self, table: RecipeTable, source: str = "split") -> None:
        """Raise unless ``table`` is the table this split was made for (same recipe ids, same order)."""
        ids = table.recipe_ids
        if len(ids) != len(self.recipe_ids):
            raise RecipesetError(f"{source}: made for {len(self.recipe_ids)} recipes but table {table.name!r} has "
                                 f"{len(ids)}; re-create the split for this table (split_table)")
        if tuple(ids) != self.recipe_ids:
            i = next(i for i, (a, b) in enumerate(zip(ids, self.recipe_ids, strict=True)) if a != b)
            raise RecipesetError(f"{source}: recipe ids differ from table {table.name!r} (row {i}: split has "
                                 f"{self.recipe_ids[i]!r}, table has {ids[i]!r}); the split was made for another "
                                 f"dataset or cleaning — re-create it with split_table")

    def tables(self, table: RecipeTable) -> tuple[RecipeTable, RecipeTable, RecipeTable]:
        """``(train, val, test)`` sub-tables of ``table`` (checked to be the table of this split)."""
        self.check(table)
        return table.subset(self.train), table.subset(self.val), table.subset(self.test)

    # ---- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "seed": self.seed, "fractions": list(self.fractions),
                "n_recipes": len(self.recipe_ids), "recipe_ids": list(self.recipe_ids),
                **{n: self[n].tolist() for n in SPLIT_NAMES}}

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str | os.PathLike, table: RecipeTable | None = None) -> Split:
        """Read a saved split; with ``table``, also check that it belongs to that table."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RecipesetError(f"{path}: split file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RecipesetError(f"{path}: not a valid split file ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise RecipesetError(f"{path}: not a recipeset split file (format should be {FORMAT!r})")
        try:
            ids = tuple(str(x) for x in d["recipe_ids"])
            parts = {n: np.asarray(d[n], dtype=np.int64).reshape(-1) for n in SPLIT_NAMES}
            split = cls(**parts, seed=int(d["seed"]), fractions=_check_fractions(tuple(d["fractions"])),
                        recipe_ids=ids)
        except (KeyError, TypeError, ValueError) as e:
            raise RecipesetError(f"{path}: malformed split file ({type(e).__name__}: {e})") from None
        allidx = np.concatenate([parts[n] for n in SPLIT_NAMES])
        if len(allidx) != len(ids) or not np.array_equal(np.sort(allidx), np.arange(len(ids))):
            raise RecipesetError(f"{path}: train/val/test indices must partition 0..{len(ids) - 1}")
        if table is not None:
            split.check(table, source=str(path))
        return split


def ingredient_set_groups(table: RecipeTable) -> np.ndarray:
    """int64 ``[N]``: group id of each recipe, equal iff the ingredient sets are equal (ids in key order)."""
    keys = table.frame["ingredients"].map(lambda r: "\t".join(sorted(set(r))))
    codes, _ = pd.factorize(keys, sort=True)
    return codes.astype(np.int64)


def split_table(table: RecipeTable, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> Split:
    """Group split by ingredient set, stratified by each group's majority cuisine (see module docstring)."""
    fr = _check_fractions(fractions)
    n = len(table)
    group = ingredient_set_groups(table)
    n_groups = int(group.max()) + 1 if n else 0
    size = np.bincount(group, minlength=n_groups)

    # Majority cuisine of each group; ties -> a labelled cuisine, then the smallest label.
    cu = table.frame["cuisine"]
    votes = (pd.DataFrame({"g": group, "none": cu.isna().to_numpy(), "c": cu.fillna("").to_numpy()})
             .groupby(["g", "none", "c"], sort=False).size().reset_index(name="n")
             .sort_values(["g", "n", "none", "c"], ascending=[True, False, True, True], kind="stable")
             .drop_duplicates("g"))
    stratum = np.empty(n_groups, dtype=np.int64)
    stratum[votes["g"].to_numpy()] = pd.factorize(votes["c"].where(~votes["none"], None), sort=True,
                                                  use_na_sentinel=False)[0]

    # Shuffle groups inside each stratum, then deal them out by the midpoint of their cumulative recipe
    # count, so each stratum's recipes split ~fr (whole groups, so approximately).
    rank = np.random.default_rng(seed).permutation(n_groups)
    order = np.lexsort((rank, stratum))
    s_sorted, size_sorted = stratum[order], size[order]
    cum = np.cumsum(size_sorted)
    total = np.bincount(s_sorted, weights=size_sorted)
    start = np.concatenate([[0], np.cumsum(total)])[:-1]
    mid = (cum - size_sorted / 2 - start[s_sorted]) / total[s_sorted]
    part_sorted = np.searchsorted(np.cumsum(fr)[:2], mid, side="right")
    part = np.empty(n_groups, dtype=np.int64)
    part[order] = part_sorted

    recipe_part = part[group] if n else np.zeros(0, dtype=np.int64)
    idx = [np.flatnonzero(recipe_part == k).astype(np.int64) for k in range(3)]
    return Split(*idx, seed=int(seed), fractions=fr, recipe_ids=tuple(table.recipe_ids))
