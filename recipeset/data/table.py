"""RecipeTable: recipes as ingredient sets in a pandas frame, with lineage and a cleaning report.

Columns: ``recipe_id`` (str, unique), ``ingredients`` (list[str], normalised names), ``cuisine`` (str or None),
``source`` (str). Every transformation (``clean``, ``map_cuisines``, ``subset``) returns a new table; the
cleaning report travels with it, so ``describe()`` can always say what was dropped and why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import UNK, UnknownIngredientError, Vocabulary
from recipeset.errors import RecipesetError

COLUMNS = ("recipe_id", "ingredients", "cuisine", "source")


def normalize_ingredient(name: str) -> str:
    """Canonical ingredient name: stripped, lower case, runs of whitespace -> one underscore.

    ``" Soy Sauce "`` -> ``"soy_sauce"``. Every loader uses this, so names agree across datasets.
    """
    return "_".join(name.strip().lower().split())


def normalize_cuisine(label: object) -> str | None:
    """Cuisine labels are kept as written (stripped); empty or missing -> None."""
    if label is None or (isinstance(label, float) and label != label):
        return None
    text = str(label).strip()
    return text or None


def combined_sha256(files: Mapping[str, str]) -> str:
    """One lineage hash from ``{file name: sha256}`` (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\t{files[name]}\n".encode())
    return h.hexdigest()


# ---- cleaning report ---------------------------------------------------------------------------------
@dataclass
class CleaningEntry:
    """One kind of thing that was dropped or changed: how many, and why."""

    count: int
    reason: str
    examples: list[str] = field(default_factory=list)


class CleaningReport:
    """What cleaning/loading dropped or changed, keyed by kind.

    Kinds used by the library: ``skipped_lines`` (lenient mode), ``unmapped_cuisine``,
    ``empty_recipes``, ``duplicate_ingredients``, ``rare_ingredients``, ``recipes_emptied_by_min_count``.
    """

    def __init__(self, entries: Mapping[str, CleaningEntry] | None = None) -> None:
        self.entries: dict[str, CleaningEntry] = dict(entries or {})

    def add(self, kind: str, count: int, reason: str, examples: Iterable[object] = ()) -> None:
        """Record ``count`` items of ``kind`` (adds to an existing entry of the same kind). Zero is ignored."""
        if count <= 0:
            return
        examples = [str(e) for e in list(examples)[:5]]
        if kind in self.entries:
            old = self.entries[kind]
            self.entries[kind] = CleaningEntry(old.count + int(count), old.reason,
                                               (old.examples + examples)[:5])
        else:
            self.entries[kind] = CleaningEntry(int(count), reason, examples)

    def merged(self, other: CleaningReport) -> CleaningReport:
        out = CleaningReport(self.entries)
        for kind, e in other.entries.items():
            out.add(kind, e.count, e.reason, e.examples)
        return out

    def copy(self) -> CleaningReport:
        return CleaningReport(self.entries)

    def __contains__(self, kind: object) -> bool:
        return kind in self.entries

    def __getitem__(self, kind: str) -> CleaningEntry:
        return self.entries[kind]

    def __len__(self) -> int:
        return len(self.entries)

    def count(self, kind: str) -> int:
        return self.entries[kind].count if kind in self.entries else 0

    def to_dict(self) -> dict[str, dict]:
        return {k: {"count": e.count, "reason": e.reason, "examples": list(e.examples)}
                for k, e in self.entries.items()}

    def __str__(self) -> str:
        if not self.entries:
            return "cleaning: nothing dropped"
        lines = ["cleaning:"]
        for kind, e in self.entries.items():
            ex = f" (e.g. {', '.join(e.examples)})" if e.examples else ""
            lines.append(f"  {kind}: {e.count} — {e.reason}{ex}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"CleaningReport({self.to_dict()!r})"


# ---- the table ---------------------------------------------------------------------------------------
class RecipeTable:
    """Recipes as ingredient sets (a thin, immutable-by-convention wrapper over a DataFrame).

    ``frame`` has the columns ``recipe_id``, ``ingredients``, ``cuisine``, ``source`` and a 0..N-1 index.
    ``name`` names the dataset, ``source_path`` where it was read from, ``sha256`` the combined hash of the
    source files (lineage), ``report`` what loading and cleaning dropped.
    """

    def __init__(self, frame: pd.DataFrame, name: str, source_path: str | None = None,
                 sha256: str | None = None, report: CleaningReport | None = None) -> None:
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"RecipeTable frame lacks columns {missing}")
        frame = frame.loc[:, list(COLUMNS)].reset_index(drop=True)
        frame["recipe_id"] = frame["recipe_id"].astype(object)
        frame["cuisine"] = frame["cuisine"].astype(object).where(frame["cuisine"].notna(), None)
        frame["source"] = frame["source"].astype(object)
        if not frame["recipe_id"].is_unique:
            dup = frame["recipe_id"][frame["recipe_id"].duplicated()].iloc[0]
            raise RecipesetError(f"{name}: duplicate recipe id {dup!r}; recipe ids must be unique")
        self.frame = frame
        self.name = name
        self.source_path = source_path
        self.sha256 = sha256
        self.report = report if report is not None else CleaningReport()

    @classmethod
    def from_records(cls, ingredients: Sequence[Sequence[str]], cuisines: Sequence[str | None] | None = None,
                     recipe_ids: Sequence[str] | None = None, source: str | Sequence[str] = "memory",
                     name: str = "memory", normalize: bool = True, source_path: str | None = None,
                     sha256: str | None = None, report: CleaningReport | None = None) -> RecipeTable:
        """Build a table from Python lists (ids default to ``"{name}:{i}"``, 0-based)."""
        n = len(ingredients)
        sets = [[normalize_ingredient(x) for x in r] if normalize else list(r) for r in ingredients]
        ids = [f"{name}:{i}" for i in range(n)] if recipe_ids is None else [str(r) for r in recipe_ids]
        cu = [None] * n if cuisines is None else [normalize_cuisine(c) for c in cuisines]
        src = [source] * n if isinstance(source, str) else list(source)
        if not (len(ids) == len(cu) == len(src) == n):
            raise ValueError("ingredients, cuisines, recipe_ids and source must have the same length")
        frame = pd.DataFrame({"recipe_id": pd.Series(ids, dtype=object),
                              "ingredients": pd.Series(sets, dtype=object),
                              "cuisine": pd.Series(cu, dtype=object),
                              "source": pd.Series(src, dtype=object)})
        return cls(frame, name=name, source_path=source_path, sha256=sha256, report=report)

    def _replace(self, frame: pd.DataFrame, report: CleaningReport | None = None) -> RecipeTable:
        return RecipeTable(frame, name=self.name, source_path=self.source_path, sha256=self.sha256,
                           report=self.report.copy() if report is None else report)

    # ---- access -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return (f"RecipeTable({self.name!r}: {len(self)} recipes, {len(self.ingredient_counts())} ingredients, "
                f"{self.frame['cuisine'].nunique()} cuisines)")

    @property
    def recipe_ids(self) -> list[str]:
        return self.frame["recipe_id"].tolist()

    @property
    def ingredients(self) -> list[list[str]]:
        return self.frame["ingredients"].tolist()

    @property
    def cuisines(self) -> list[str | None]:
        return self.frame["cuisine"].tolist()

    def ingredient_counts(self) -> pd.Series:
        """Number of recipes containing each ingredient, descending (ties by name)."""
        flat = self.frame["ingredients"].explode().dropna()
        counts = flat.value_counts()
        if counts.empty:
            return pd.Series(dtype=np.int64)
        order = sorted(zip(counts.index, counts.to_numpy(), strict=True), key=lambda x: (-x[1], x[0]))
        return pd.Series([c for _, c in order], index=[n for n, _ in order], dtype=np.int64)

    def subset(self, indices: np.ndarray | Sequence[int]) -> RecipeTable:
        """The rows at ``indices`` (positional), re-indexed 0..len-1; name, lineage and report are kept."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset index out of range for a table of {len(self)} recipes")
        return self._replace(self.frame.iloc[idx])

    # ---- cleaning -----------------------------------------------------------------------------------
    def map_cuisines(self, mapping: Mapping[str, str | None], keep_unmapped: bool = False,
                     where: str = "the cuisine map") -> RecipeTable:
        """Relabel cuisines with ``mapping``. Labels the mapping lacks (or maps to None/"") are dropped with
        their recipes — or kept with cuisine None when ``keep_unmapped`` — and counted in the report.
        Recipes without a cuisine are left as they are."""
        cu = self.frame["cuisine"]
        mapped = cu.map(lambda c: (mapping.get(c) or None) if c is not None else None)
        unmapped = cu.notna() & mapped.isna()
        report = self.report.copy()
        n = int(unmapped.sum())
        labels = sorted(cu[unmapped].unique().tolist())
        frame = self.frame.assign(cuisine=mapped)
        if keep_unmapped:
            report.add("unmapped_cuisine", n, f"cuisine label not mapped by {where}; kept with cuisine None", labels)
        else:
            frame = frame[~unmapped.to_numpy()]
            report.add("unmapped_cuisine", n, f"recipes dropped: cuisine label not mapped by {where} "
                       f"(pass keep_unmapped=True to keep them unlabelled)", labels)
        return self._replace(frame, report)

    def clean(self, min_count: int = 1, dedupe: bool = True, drop_empty: bool = True) -> RecipeTable:
        """A cleaned copy: duplicate ingredients inside a recipe removed (first occurrence kept), ingredients
        in fewer than ``min_count`` recipes removed, recipes left empty dropped. Counts go in the report.

        ``min_count`` counts recipes of *this* table: for a train/test protocol filter with the training
        vocabulary instead (``Vocabulary.build(..., min_count)`` then ``encode(unknown="skip")``).
        """
        if min_count < 1:
            raise RecipesetError(f"clean: min_count must be >= 1, not {min_count}")
        report = self.report.copy()
        sets = self.frame["ingredients"]
        if dedupe:
            lengths = sets.map(len)
            deduped = sets.map(lambda r: list(dict.fromkeys(r)))
            removed = lengths - deduped.map(len)
            n_dup = int(removed.sum())
            report.add("duplicate_ingredients", n_dup,
                       f"repeated ingredients removed inside {int((removed > 0).sum())} recipes (a recipe is a set)",
                       self.frame["recipe_id"][removed > 0].head(5))
            sets = deduped
        if min_count > 1:
            counts = sets.explode().dropna().value_counts()
            rare = set(counts.index[counts < min_count])
            if rare:
                before = sets.map(len)
                sets = sets.map(lambda r: [x for x in r if x not in rare])
                n_rare_occ = int((before - sets.map(len)).sum())
                emptied = (before > 0) & (sets.map(len) == 0)
                report.add("rare_ingredients", len(rare),
                           f"ingredients in fewer than {min_count} recipes removed ({n_rare_occ} occurrences)",
                           sorted(rare))
                report.add("recipes_emptied_by_min_count", int(emptied.sum()),
                           f"recipes whose every ingredient was rarer than min_count={min_count}")
        frame = self.frame.assign(ingredients=sets)
        if drop_empty:
            empty = (sets.map(len) == 0).to_numpy()
            report.add("empty_recipes", int(empty.sum()), "recipes without ingredients dropped",
                       self.frame["recipe_id"][empty].head(5))
            frame = frame[~empty]
        return self._replace(frame, report)

    # ---- summaries ----------------------------------------------------------------------------------
    def describe(self, top: int = 20) -> dict:
        """Summary statistics as a JSON-serialisable dict.

        Keys: ``name``, ``recipes``, ``ingredients``, ``cuisines`` (ints), ``unlabelled`` (recipes without a
        cuisine), ``set_size`` (min/mean/median/max and a ``{size: count}`` histogram), ``per_cuisine``,
        ``per_source``, ``top_ingredients`` (``[[name, count], ...]``), ``sha256``, ``cleaning``.
        """
        sizes = self.frame["ingredients"].map(len).to_numpy(dtype=np.int64)
        counts = self.ingredient_counts()
        per_cuisine = self.frame["cuisine"].dropna().value_counts()
        per_source = self.frame["source"].value_counts()
        hist = np.bincount(sizes) if sizes.size else np.zeros(0, dtype=np.int64)
        return {
            "name": self.name,
            "recipes": int(len(self)),
            "ingredients": int(len(counts)),
            "cuisines": int(len(per_cuisine)),
            "unlabelled": int(self.frame["cuisine"].isna().sum()),
            "set_size": {
                "min": int(sizes.min()) if sizes.size else 0,
                "mean": round(float(sizes.mean()), 3) if sizes.size else 0.0,
                "median": float(np.median(sizes)) if sizes.size else 0.0,
                "max": int(sizes.max()) if sizes.size else 0,
                "histogram": {str(s): int(c) for s, c in enumerate(hist) if c},
            },
            "per_cuisine": {str(k): int(v) for k, v in per_cuisine.items()},
            "per_source": {str(k): int(v) for k, v in per_source.items()},
            "top_ingredients": [[str(k), int(v)] for k, v in counts.head(top).items()],
            "sha256": self.sha256,
            "source_path": self.source_path,
            "cleaning": self.report.to_dict(),
        }

    # ---- encoding -----------------------------------------------------------------------------------
    def encode(self, vocab: Vocabulary, unknown: str = "error") -> EncodedSets:
        """Ingredient ids for every recipe, aligned with the table's rows (row ``i`` -> set ``i``).

        unknown: ``error`` raises (naming the recipe and suggesting close names); ``skip`` drops unknown
        ingredients (a recipe may become empty: rows stay aligned); ``unk`` maps them to [UNK].
        Cuisines map to the vocabulary's label ids, -1 when missing; an unknown label raises under
        ``error`` and becomes -1 otherwise. Ingredient order is the table's order.
        """
        if unknown not in ("error", "skip", "unk"):
            raise RecipesetError(f"encode: unknown must be 'error', 'skip' or 'unk', not {unknown!r}")
        sets = self.frame["ingredients"]
        lengths = sets.map(len).to_numpy(dtype=np.int64)
        flat = pd.Series([x for r in sets for x in r], dtype=object)
        ids = flat.map(vocab._ids).to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        missing = np.isnan(ids)
        if missing.any():
            if unknown == "error":
                pos = int(np.flatnonzero(missing)[0])
                row = int(np.searchsorted(np.cumsum(lengths), pos, side="right"))
                try:
                    vocab.id(flat.iloc[pos])
                except UnknownIngredientError as e:
                    raise UnknownIngredientError(
                        f"{self.name} recipe {self.frame['recipe_id'].iloc[row]}: {e} "
                        f"({int(missing.sum())} unknown occurrences; encode(unknown='skip') drops them)") from None
            if unknown == "unk":
                ids[missing] = UNK
            else:
                seg = np.repeat(np.arange(len(lengths)), lengths)
                lengths = lengths - np.bincount(seg[missing], minlength=len(lengths))
                ids = ids[~missing]
        cuisine = self._cuisine_ids(vocab, strict=unknown == "error")
        return EncodedSets.from_lengths(ids.astype(np.int64), lengths, cuisine)

    def _cuisine_ids(self, vocab: Vocabulary, strict: bool) -> np.ndarray:
        cu = self.frame["cuisine"]
        ids = cu.map(vocab._cuisine_ids)
        bad = cu.notna() & ids.isna()
        if bad.any() and strict and vocab.num_cuisines:
            row = int(np.flatnonzero(bad.to_numpy())[0])
            try:
                vocab.cuisine_id(cu.iloc[row])
            except RecipesetError as e:  # re-raise naming the recipe
                raise RecipesetError(f"{self.name} recipe {self.frame['recipe_id'].iloc[row]}: {e}") from None
        return ids.fillna(-1).to_numpy(dtype=np.int64)
