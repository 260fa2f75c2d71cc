"""RecipeTable: recipes as ingredient sets in a pandas frame, with lineage and a cleaning report.

Columns: ``recipe_id`` (str, unique), ``ingredients`` (list[str], normalised names), ``cuisine`` (str or None),
``source`` (str). Every transformation (``clean``, ``map_cuisines``, ``subset``) returns a new table; the
cleaning report travels with it, so ``describe()`` can always say what was dropped and why.

Inside, the ingredient sets are :class:`CodedSets` — integer codes into the distinct names, with offsets
(CSR) — and the other columns a frame (``meta``); the ``frame`` with its per-recipe lists is built only when
asked for. Cleaning, counting, encoding, ``describe()`` and the split work on the integer arrays, and names
are normalised once per distinct raw string (:func:`normalize_names`), so a million recipes cost seconds.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recipeset.data.sets import EncodedSets, csr_kept_offsets, csr_sort_within, csr_take
from recipeset.data.vocab import UNK, UnknownIngredientError, Vocabulary, normalize_ingredient
from recipeset.errors import RecipesetError

COLUMNS = ("recipe_id", "ingredients", "cuisine", "source")


def parse_ingredient_list(text: str) -> list[str]:
    """A user's ingredients written as one string, comma- or semicolon-separated: ``"tomato, basil"`` ->
    ``["tomato", "basil"]`` (names as given; the vocabulary says whether it knows them). None is one line."""
    names = [x.strip() for x in text.replace(";", ",").split(",") if x.strip()]
    if not names:
        raise RecipesetError("give at least one ingredient, comma-separated (e.g. \"tomato, basil\")")
    return names


def normalize_names(raw: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a flat sequence of raw ingredient names, each DISTINCT string once.

    Returns ``(codes, names)``: int32 ``codes[i]`` indexes the object array ``names`` of distinct normalised
    names (in order of first appearance), ``names[codes[i]] == normalize_ingredient(raw[i])``.
    """
    raw_codes, uniques = pd.factorize(np.asarray(raw, dtype=object), use_na_sentinel=False)
    codes, names = _factorize_names([normalize_ingredient(u) for u in uniques])
    return codes[raw_codes].astype(np.int32), names


def _factorize_names(values: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """``(int64 codes, object array of the distinct values)``, first-appearance order, None kept as a value."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    codes, uniques = pd.factorize(arr, use_na_sentinel=False)
    names = np.empty(len(uniques), dtype=object)
    names[:] = list(uniques)
    return codes.astype(np.int64), names


def _drops_only_empty(lengths: np.ndarray, idx: np.ndarray) -> bool:
    """True when ``idx`` keeps rows in order and leaves out empty ones only (the clean of empty recipes)."""
    if len(idx) == 0 or (len(idx) > 1 and (np.diff(idx) <= 0).any()):
        return False
    return int(lengths[idx].sum()) == int(lengths.sum())


@dataclass(frozen=True)
class CodedSets:
    """Ingredient sets as int32 ``codes`` into ``names`` (distinct names, object array), recipe ``i`` being
    ``names[codes[offsets[i]:offsets[i+1]]]`` in its written order. ``names`` may hold names no set uses."""

    codes: np.ndarray
    offsets: np.ndarray
    names: np.ndarray

    @classmethod
    def from_lists(cls, sets: Sequence[Sequence[str]]) -> CodedSets:
        """From Python lists of names (codes in order of first appearance)."""
        lengths = np.fromiter(map(len, sets), dtype=np.int64, count=len(sets))
        codes, names = _factorize_names(list(itertools.chain.from_iterable(sets)))
        return cls.from_lengths(codes, lengths, names)

    @classmethod
    def from_raw(cls, raw: Sequence[str] | np.ndarray, lengths: Sequence[int] | np.ndarray,
                 drop_empty: bool = True, indices: np.ndarray | None = None) -> CodedSets:
        """From flat raw names (set after set, ``lengths`` each), normalised by :func:`normalize_names`;
        with ``indices``, ``raw`` holds distinct raw names and ``indices`` the one of each piece.
        ``drop_empty`` drops the names that normalise to ``""`` (blank pieces of a delimited cell)."""
        codes, names = normalize_names(raw)
        if indices is not None:
            codes = codes[indices]
        lengths = np.asarray(lengths, dtype=np.int64)
        empty = np.flatnonzero(names == "")
        out = cls.from_lengths(codes, lengths, names)
        return out.keep(codes != empty[0]) if drop_empty and empty.size else out

    @classmethod
    def from_lengths(cls, codes: np.ndarray, lengths: np.ndarray, names: np.ndarray) -> CodedSets:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(np.asarray(codes, dtype=np.int32), offsets, names)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def to_lists(self) -> list[list[str]]:
        flat = self.names[self.codes].tolist()
        bounds = self.offsets.tolist()
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def take(self, idx: np.ndarray) -> CodedSets:
        """The sets at (non-negative) ``idx``."""
        if len(idx) == len(self) and np.array_equal(idx, np.arange(len(self))):
            return self
        if _drops_only_empty(self.lengths, idx):  # the codes stay as they are
            return CodedSets(self.codes, np.append(self.offsets[idx], self.offsets[-1]), self.names)
        positions, offsets = csr_take(self.offsets, idx)
        return CodedSets(self.codes[positions], offsets, self.names)

    def keep(self, mask: np.ndarray) -> CodedSets:
        """The same sets with only the codes where ``mask`` (``[total]`` bool) is True."""
        if mask.all():
            return self
        return CodedSets(self.codes[mask], csr_kept_offsets(self.offsets, mask), self.names)

    def counts(self) -> np.ndarray:
        """int64 ``[len(names)]``: occurrences of each name."""
        return np.bincount(self.codes, minlength=len(self.names)).astype(np.int64)

    def sort_within(self, rank: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Order each set by ``rank[code]`` (default: the code), sets in place: ``(permutation of the flat
        positions, the ranks in that order)``; stable, so equal ranks keep their written order."""
        value = self.codes if rank is None else rank[self.codes]
        order = csr_sort_within(self.offsets, value)
        return order, value[order]

    def repeats_sorted(self, sorted_values: np.ndarray) -> np.ndarray:
        """bool over the positions of :meth:`sort_within`'s order: True where the value equals the previous
        one of the same set."""
        out = np.zeros(len(sorted_values), dtype=bool)
        out[1:] = sorted_values[1:] == sorted_values[:-1]
        out[self.offsets[:-1][self.lengths > 0]] = False  # a set's first value repeats nothing
        return out

    def repeats(self) -> np.ndarray:
        """bool ``[total]``: True on a code that already occurred earlier in the same set."""
        order, values = self.sort_within()
        out = np.zeros(len(values), dtype=bool)
        out[order[self.repeats_sorted(values)]] = True
        return out


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
META_COLUMNS = ("recipe_id", "cuisine", "source")


def _meta_frame(recipe_id: object, cuisine: object, source: object) -> pd.DataFrame:
    """The non-ingredient columns, as object columns (missing cuisine -> None), index 0..N-1."""
    return pd.DataFrame({"recipe_id": pd.Series(recipe_id, dtype=object).reset_index(drop=True),
                         "cuisine": pd.Series(_none_for_missing(cuisine), dtype=object),
                         "source": pd.Series(source, dtype=object).reset_index(drop=True)})


def _none_for_missing(values: object) -> np.ndarray:
    """An object array of ``values`` with every missing value (None, NaN, NA) as None."""
    out = pd.Series(values, dtype=object).to_numpy(dtype=object, copy=True)
    out[pd.isna(out)] = None
    return out


class RecipeTable:
    """Recipes as ingredient sets (immutable by convention).

    ``frame`` is a DataFrame with the columns ``recipe_id``, ``ingredients``, ``cuisine``, ``source`` and a
    0..N-1 index (built on first use); ``coded`` holds the sets as integer codes (:class:`CodedSets`) and
    ``meta`` the other three columns. ``name`` names the dataset, ``source_path`` where it was read from,
    ``sha256`` the combined hash of the source files (lineage), ``report`` what loading and cleaning dropped.
    """

    def __init__(self, frame: pd.DataFrame, name: str, source_path: str | None = None,
                 sha256: str | None = None, report: CleaningReport | None = None) -> None:
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"RecipeTable frame lacks columns {missing}")
        meta = _meta_frame(frame["recipe_id"], frame["cuisine"], frame["source"])
        self._setup(meta, CodedSets.from_lists(frame["ingredients"].tolist()), name, source_path, sha256, report,
                    check_ids=True)

    def _setup(self, meta: pd.DataFrame, coded: CodedSets, name: str, source_path: str | None,
               sha256: str | None, report: CleaningReport | None, check_ids: bool) -> None:
        if len(meta) != len(coded):
            raise ValueError("RecipeTable: one ingredient set per row")
        if check_ids and not meta["recipe_id"].is_unique:
            dup = meta["recipe_id"][meta["recipe_id"].duplicated()].iloc[0]
            raise RecipesetError(f"{name}: duplicate recipe id {dup!r}; recipe ids must be unique")
        self.meta = meta
        self.coded = coded
        self.name = name
        self.source_path = source_path
        self.sha256 = sha256
        self.report = report if report is not None else CleaningReport()
        self._frame: pd.DataFrame | None = None

    @classmethod
    def from_coded(cls, coded: CodedSets, recipe_ids: Sequence[str] | np.ndarray,
                   cuisines: Sequence[str | None] | np.ndarray, source: str | Sequence[str] | np.ndarray,
                   name: str, source_path: str | None = None, sha256: str | None = None,
                   report: CleaningReport | None = None, check_ids: bool = True) -> RecipeTable:
        """A table straight from coded sets (names as given: not normalised) and per-recipe columns.
        ``check_ids=False`` skips the uniqueness check of ids the caller has already checked."""
        n = len(coded)
        src = source
        if isinstance(source, str):
            src = np.empty(n, dtype=object)
            src.fill(source)  # 30x np.full(n, source, dtype=object)
        table = cls.__new__(cls)
        table._setup(_meta_frame(recipe_ids, cuisines, src), coded, name, source_path, sha256, report, check_ids)
        return table

    @classmethod
    def from_records(cls, ingredients: Sequence[Sequence[str]], cuisines: Sequence[str | None] | None = None,
                     recipe_ids: Sequence[str] | None = None, source: str | Sequence[str] = "memory",
                     name: str = "memory", normalize: bool = True, source_path: str | None = None,
                     sha256: str | None = None, report: CleaningReport | None = None) -> RecipeTable:
        """Build a table from Python lists (ids default to ``"{name}:{i}"``, 0-based)."""
        n = len(ingredients)
        if normalize:
            coded = CodedSets.from_raw(list(itertools.chain.from_iterable(ingredients)),
                                       np.fromiter(map(len, ingredients), dtype=np.int64, count=n), drop_empty=False)
        else:
            coded = CodedSets.from_lists(ingredients)
        ids = [f"{name}:{i}" for i in range(n)] if recipe_ids is None else [str(r) for r in recipe_ids]
        cu = [None] * n if cuisines is None else [normalize_cuisine(c) for c in cuisines]
        src = [source] * n if isinstance(source, str) else list(source)
        if not (len(ids) == len(cu) == len(src) == n):
            raise ValueError("ingredients, cuisines, recipe_ids and source must have the same length")
        return cls.from_coded(coded, ids, cu, src, name=name, source_path=source_path, sha256=sha256,
                              report=report)

    def _replace(self, meta: pd.DataFrame, coded: CodedSets, report: CleaningReport | None = None) -> RecipeTable:
        table = RecipeTable.__new__(RecipeTable)
        table._setup(meta.reset_index(drop=True), coded, self.name, self.source_path, self.sha256,
                     self.report.copy() if report is None else report, check_ids=False)
        return table

    # ---- access -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.meta)

    def __repr__(self) -> str:
        return (f"RecipeTable({self.name!r}: {len(self)} recipes, {len(self.ingredient_counts())} ingredients, "
                f"{self.meta['cuisine'].nunique()} cuisines)")

    @property
    def frame(self) -> pd.DataFrame:
        """The table as a DataFrame (``ingredients``: a list of names per recipe); built once, on first use."""
        if self._frame is None:
            frame = self.meta.copy()
            frame.insert(1, "ingredients", pd.Series(self.coded.to_lists(), dtype=object))
            self._frame = frame
        return self._frame

    @property
    def recipe_ids(self) -> list[str]:
        return self.meta["recipe_id"].tolist()

    @property
    def ingredients(self) -> list[list[str]]:
        return self.coded.to_lists()

    @property
    def cuisines(self) -> list[str | None]:
        return self.meta["cuisine"].tolist()

    @property
    def set_sizes(self) -> np.ndarray:
        """int64 ``[N]``: ingredients per recipe."""
        return self.coded.lengths

    def ingredient_counts(self) -> pd.Series:
        """Number of recipes containing each ingredient, descending (ties by name)."""
        counts = self.coded.counts()
        names = self.coded.names
        present = [i for i in np.flatnonzero(counts).tolist() if names[i] is not None and names[i] == names[i]]
        if not present:
            return pd.Series(dtype=np.int64)
        order = sorted(present, key=lambda i: (-counts[i], names[i]))
        return pd.Series(counts[order].tolist(), index=names[order].tolist(), dtype=np.int64)

    def subset(self, indices: np.ndarray | Sequence[int]) -> RecipeTable:
        """The rows at ``indices`` (positional), re-indexed 0..len-1; name, lineage and report are kept."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset index out of range for a table of {len(self)} recipes")
        idx = np.where(idx < 0, idx + len(self), idx)
        return self._replace(self.meta.iloc[idx], self.coded.take(idx))

    # ---- cleaning -----------------------------------------------------------------------------------
    def map_cuisines(self, mapping: Mapping[str, str | None], keep_unmapped: bool = False,
                     where: str = "the cuisine map") -> RecipeTable:
        """Relabel cuisines with ``mapping``. Labels the mapping lacks (or maps to None/"") are dropped with
        their recipes — or kept with cuisine None when ``keep_unmapped`` — and counted in the report.
        Recipes without a cuisine are left as they are."""
        cu = self.meta["cuisine"]
        labels_of = {c: (mapping.get(c) or None) for c in cu.dropna().unique().tolist()}  # each label once
        mapped = cu.map(labels_of)
        unmapped = (cu.notna() & mapped.isna()).to_numpy()
        report = self.report.copy()
        n = int(unmapped.sum())
        labels = sorted(cu[unmapped].unique().tolist())
        meta = self.meta.assign(cuisine=pd.Series(_none_for_missing(mapped), dtype=object))
        if keep_unmapped:
            report.add("unmapped_cuisine", n, f"cuisine label not mapped by {where}; kept with cuisine None", labels)
            return self._replace(meta, self.coded, report)
        report.add("unmapped_cuisine", n, f"recipes dropped: cuisine label not mapped by {where} (--option "
                   "keep_unmapped=true, data.options.keep_unmapped = true in a run config, keeps them unlabelled)",
                   labels)
        keep = np.flatnonzero(~unmapped)
        return self._replace(meta.iloc[keep], self.coded.take(keep), report)

    def clean(self, min_count: int = 1, dedupe: bool = True, drop_empty: bool = True) -> RecipeTable:
        """A cleaned copy: duplicate ingredients inside a recipe removed (first occurrence kept), ingredients
        in fewer than ``min_count`` recipes removed, recipes left empty dropped. Counts go in the report.

        ``min_count`` counts recipes of *this* table: for a train/test protocol filter with the training
        vocabulary instead (``Vocabulary.build(..., min_count)`` then ``encode(unknown="skip")``).
        """
        if min_count < 1:
            raise RecipesetError(f"clean: min_count must be >= 1, not {min_count}")
        report = self.report.copy()
        coded = self.coded
        ids = self.meta["recipe_id"]
        if dedupe:
            deduped = coded.keep(~coded.repeats())
            removed = coded.lengths - deduped.lengths
            report.add("duplicate_ingredients", int(removed.sum()),
                       f"repeated ingredients removed inside {int((removed > 0).sum())} recipes (a recipe is a set)",
                       ids[removed > 0].head(5))
            coded = deduped
        if min_count > 1:
            coded = self._drop_rare(coded, min_count, report)
        if not drop_empty:
            return self._replace(self.meta, coded, report)
        empty = coded.lengths == 0
        report.add("empty_recipes", int(empty.sum()), "recipes without ingredients dropped", ids[empty].head(5))
        keep = np.flatnonzero(~empty)
        return self._replace(self.meta.iloc[keep], coded.take(keep), report)

    @staticmethod
    def _drop_rare(coded: CodedSets, min_count: int, report: CleaningReport) -> CodedSets:
        """``coded`` without the names in fewer than ``min_count`` sets (reported)."""
        counts = coded.counts()
        rare = (counts > 0) & (counts < min_count)
        if not rare.any():
            return coded
        rare_occurrence = rare[coded.codes]
        out = coded.keep(~rare_occurrence)
        emptied = (coded.lengths > 0) & (out.lengths == 0)
        report.add("rare_ingredients", int(rare.sum()),
                   f"ingredients in fewer than {min_count} recipes removed ({int(rare_occurrence.sum())} occurrences)",
                   sorted(coded.names[rare].tolist()))
        report.add("recipes_emptied_by_min_count", int(emptied.sum()),
                   f"recipes whose every ingredient was rarer than min_count={min_count}")
        return out

    # ---- summaries ----------------------------------------------------------------------------------
    def describe(self, top: int | None = 20) -> dict:
        """Summary statistics as a JSON-serialisable dict (``top``: how many ingredients ``top_ingredients``
        lists, None: all).

        Keys: ``name``, ``recipes``, ``ingredients``, ``cuisines`` (ints), ``unlabelled`` (recipes without a
        cuisine), ``set_size`` (min/mean/median/max and a ``{size: count}`` histogram), ``per_cuisine``,
        ``per_source``, ``top_ingredients`` (``[[name, count], ...]``), ``sha256``, ``cleaning``.
        """
        sizes = self.coded.lengths
        counts = self.ingredient_counts()
        per_cuisine = self.meta["cuisine"].value_counts()  # missing ones left out
        per_source = self.meta["source"].value_counts()
        hist = np.bincount(sizes) if sizes.size else np.zeros(0, dtype=np.int64)
        return {
            "name": self.name,
            "recipes": int(len(self)),
            "ingredients": int(len(counts)),
            "cuisines": int(len(per_cuisine)),
            "unlabelled": int(len(self) - per_cuisine.sum()),
            "set_size": {
                "min": int(sizes.min()) if sizes.size else 0,
                "mean": round(float(sizes.mean()), 3) if sizes.size else 0.0,
                "median": float(np.median(sizes)) if sizes.size else 0.0,
                "max": int(sizes.max()) if sizes.size else 0,
                "histogram": {str(s): int(c) for s, c in enumerate(hist) if c},
            },
            "per_cuisine": {str(k): int(v) for k, v in per_cuisine.items()},
            "per_source": {str(k): int(v) for k, v in per_source.items()},
            "top_ingredients": [[str(k), int(v)] for k, v in (counts if top is None else counts.head(top)).items()],
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
        coded = self.coded
        known = (vocab._lookup(n) for n in coded.names)  # as Vocabulary.encode looks names up
        lookup = np.fromiter((-1 if i is None else i for i in known), dtype=np.int64, count=len(coded.names))
        ids = lookup[coded.codes]
        lengths = coded.lengths
        missing = ids < 0
        if missing.any():
            if unknown == "error":
                pos = int(np.flatnonzero(missing)[0])
                row = int(np.searchsorted(coded.offsets[1:], pos, side="right"))
                try:
                    vocab.id(coded.names[coded.codes[pos]])
                except UnknownIngredientError as e:
                    raise UnknownIngredientError(
                        f"{self.name} recipe {self.meta['recipe_id'].iloc[row]}: {e} "
                        f"({int(missing.sum())} unknown occurrences; encode(unknown='skip') drops them)") from None
            if unknown == "unk":
                ids[missing] = UNK
            else:
                lengths = np.diff(csr_kept_offsets(coded.offsets, ~missing))
                ids = ids[~missing]
        cuisine = self._cuisine_ids(vocab, strict=unknown == "error")
        return EncodedSets.from_lengths(ids, lengths, cuisine)

    def _cuisine_ids(self, vocab: Vocabulary, strict: bool) -> np.ndarray:
        cu = self.meta["cuisine"]
        codes, labels = pd.factorize(cu)  # a lookup per distinct label, not per row (-1: missing)
        lut = np.array([vocab._cuisine_ids.get(label, -1) for label in labels] + [-1], dtype=np.int64)
        ids = lut[codes]
        bad = (codes >= 0) & (ids < 0)
        if bad.any() and strict and vocab.num_cuisines:
            row = int(np.flatnonzero(bad)[0])
            try:
                vocab.cuisine_id(cu.iloc[row])
            except RecipesetError as e:  # re-raise naming the recipe
                raise RecipesetError(f"{self.name} recipe {self.meta['recipe_id'].iloc[row]}: {e}") from None
        return ids
