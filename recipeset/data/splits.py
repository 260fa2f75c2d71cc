"""Train/validation/test split by ingredient set, stratified by cuisine.

Identical ingredient sets recur (flavornet: ~49.6k distinct sets in 56.5k recipes), so a row split leaks test
sets into training. Recipes are grouped by their sorted ingredient set; each group takes its majority
cuisine (ties: a labelled cuisine over none, then the alphabetically first label); inside each cuisine
stratum the groups are shuffled (seeded) and dealt out whole, so that each stratum gets ~80/10/10 of its
*recipes*. The split is a function of the table's content and the seed, not of its row order.

Everything runs on integer arrays: a set's key is its sorted, de-duplicated ingredient ranks, and groups are
numbered in the order of the ``"\t"``-joined sorted names (see :func:`ingredient_set_groups`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recipeset.data.sets import csr_kept_offsets
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


_AT_MOST_TAB = re.compile("[\x00-\x09]")


def ingredient_set_groups(table: RecipeTable) -> np.ndarray:
    """int64 ``[N]``: group id of each recipe, equal iff the ingredient sets are equal; ids in the order of
    the key ``"\t".join(sorted(set(recipe)))``.

    That order is the lexicographic order of the sorted name sequences (a shorter prefix first) whenever no
    name holds a character <= ``"\t"``; it is computed on the integer ranks of the names (an MSD sort of
    packed rank words, see :func:`_lexicographic_groups`). Names with such characters (never produced by
    normalisation) fall back to the string keys.
    """
    coded = table.coded
    names = coded.names.tolist()
    if any(not isinstance(x, str) or _AT_MOST_TAB.search(x) for x in names):
        keys = pd.Series(["\t".join(sorted(set(r))) for r in coded.to_lists()], dtype=object)
        return pd.factorize(keys, sort=True)[0].astype(np.int64)
    rank = np.empty(len(names), dtype=np.int64)
    rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    _, ranks = coded.sort_within(rank)  # each set sorted by rank
    first = ~coded.repeats_sorted(ranks)  # a set: drop repeated names
    return _lexicographic_groups(ranks[first], csr_kept_offsets(coded.offsets, first), len(names))


def _rank_words(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray, word: int, per_word: int,
                bits: int) -> np.ndarray:
    """uint64 key of symbols ``word*per_word ..`` of each row: (rank + 1) per symbol, 0 past the row's end."""
    lengths = offsets[rows + 1] - offsets[rows]
    out = np.zeros(len(rows), dtype=np.uint64)
    for t in range(per_word):
        pos = word * per_word + t
        has = lengths > pos
        symbol = np.zeros(len(rows), dtype=np.uint64)
        symbol[has] = values[offsets[rows[has]] + pos].astype(np.uint64) + np.uint64(1)
        out = (out << np.uint64(bits)) | symbol
    return out


def _lexicographic_groups(values: np.ndarray, offsets: np.ndarray, n_symbols: int) -> np.ndarray:
    """Group ids of CSR rows of ranks in ``0..n_symbols-1``, numbered in lexicographic order of the rows
    (a proper prefix first). Rows are sorted by their first packed word, then only rows still tied with
    another are re-sorted, inside their tie, by the next word, until no tie is longer than what was compared.
    """
    n = len(offsets) - 1
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    bits = max(1, int(n_symbols).bit_length())
    per_word = max(1, 64 // bits)
    lengths = np.diff(offsets)
    everything = np.arange(n, dtype=np.int64)
    key = _rank_words(values, offsets, everything, 0, per_word, bits)
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.ones(n, dtype=bool)  # True where a run of equal keys begins
    starts[1:] = key[1:] != key[:-1]
    word = 1
    while True:
        run = np.cumsum(starts.view(np.int8), dtype=np.int64) - 1
        first = np.flatnonzero(starts)
        longest = np.maximum.reduceat(lengths[order], first)
        tied = (np.diff(np.append(first, n)) > 1) & (longest > word * per_word)
        if not tied.any():
            break
        positions = np.flatnonzero(tied[run])
        rows, runs = order[positions], run[positions]
        key = _rank_words(values, offsets, rows, word, per_word, bits)
        inner = np.lexsort((key, runs))  # runs are ascending: sorts each tie in place
        order[positions] = rows[inner]
        key, runs = key[inner], runs[inner]
        starts[positions[1:]] |= key[1:] != key[:-1]
        word += 1
    group = np.empty(n, dtype=np.int64)
    group[order] = np.cumsum(starts.view(np.int8), dtype=np.int64) - 1
    return group


def _majority_strata(table: RecipeTable, group: np.ndarray, n_groups: int) -> np.ndarray:
    """int64 ``[n_groups]``: each group's stratum, its majority cuisine (ties: a labelled cuisine over none,
    then the smallest label), as dense ids. A one-recipe group takes its recipe's cuisine; the others count
    votes in a ``[groups, cuisines]`` table whose first maximum per row is the winner (None coded last)."""
    codes, labels = pd.factorize(table.meta["cuisine"], sort=True)
    codes = np.where(codes < 0, len(labels), codes)  # recipes without a cuisine vote after every label
    stratum = np.empty(n_groups, dtype=np.int64)
    size = np.bincount(group, minlength=n_groups)
    single = size[group] == 1
    stratum[group[single]] = codes[single]
    shared, compact = np.unique(group[~single], return_inverse=True)
    votes = np.bincount(compact * (len(labels) + 1) + codes[~single], minlength=len(shared) * (len(labels) + 1))
    stratum[shared] = votes.reshape(len(shared), len(labels) + 1).argmax(axis=1)
    return np.unique(stratum, return_inverse=True)[1].astype(np.int64)


def split_table(table: RecipeTable, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> Split:
    """Group split by ingredient set, stratified by each group's majority cuisine (see module docstring)."""
    fr = _check_fractions(fractions)
    n = len(table)
    group = ingredient_set_groups(table)
    n_groups = int(group.max()) + 1 if n else 0
    size = np.bincount(group, minlength=n_groups)

    stratum = _majority_strata(table, group, n_groups)

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
