"""Vocabulary: special tokens at ids 0..k-1, ingredients after them, cuisines as a separate label set."""

from __future__ import annotations

import difflib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from recipeset.errors import RecipesetError
from recipeset.io_utils import atomic_write_text

SPECIALS: tuple[str, ...] = ("[PAD]", "[MASK]", "[BOS]", "[EOS]", "[SEP]", "[CLS]", "[UNK]", "[NULL]")
PAD, MASK, BOS, EOS, SEP, CLS, UNK, NULL = range(len(SPECIALS))
NUM_SPECIALS = len(SPECIALS)


INGREDIENT_LIST_HINT = "every name: `recipeset data stats DATASET --ingredients`"


def normalize_ingredient(name: str) -> str:
    """Canonical ingredient name: stripped, lower case, runs of whitespace -> one underscore.

    ``" Soy Sauce "`` -> ``"soy_sauce"``. Every loader uses this, and so does every lookup of a name a user typed
    (:meth:`Vocabulary.encode`), so names agree across datasets and queries.
    """
    return "_".join(name.strip().lower().split())


class UnknownIngredientError(RecipesetError):
    """An ingredient the vocabulary does not know (the message suggests close names)."""


class Vocabulary:
    """Ingredient ids (specials first) and cuisine label ids.

    Ingredient ``i`` of ``ingredients`` has id ``NUM_SPECIALS + i``; ``len(vocab)`` counts specials and
    ingredients. Cuisines are a separate label set with ids ``0..n_cuisines-1``.
    """

    def __init__(self, ingredients: Sequence[str], cuisines: Sequence[str] = (),
                 counts: Sequence[int] | None = None) -> None:
        ingredients = list(ingredients)
        if len(set(ingredients)) != len(ingredients):
            raise RecipesetError("vocabulary: duplicate ingredient names")
        clash = set(ingredients) & set(SPECIALS)
        if clash:
            raise RecipesetError(f"vocabulary: ingredient names clash with special tokens: {sorted(clash)}")
        self.ingredients: list[str] = ingredients
        self.cuisines: list[str] = list(cuisines)
        self.counts: list[int] = list(counts) if counts is not None else [0] * len(ingredients)
        self._ids = {name: NUM_SPECIALS + i for i, name in enumerate(ingredients)}
        self._cuisine_ids = {name: i for i, name in enumerate(self.cuisines)}

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, recipes: Iterable[Sequence[str]], cuisines: Iterable[str | None] = (),
              min_count: int = 1) -> Vocabulary:
        """Build from ingredient lists (normally the *training* split only).

        Ingredients are ordered by descending count, then name, so ids are deterministic.
        """
        counter: Counter[str] = Counter()
        for recipe in recipes:
            counter.update(recipe)
        return cls.from_counts(counter, cuisines, min_count)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], cuisines: Iterable[str | None] = (),
                    min_count: int = 1) -> Vocabulary:
        """Build from ``{ingredient: occurrences}`` (a dict, a Counter or ``RecipeTable.ingredient_counts()``)
        as :meth:`build` does after counting: descending count, then name; cuisines sorted."""
        kept = sorted(((n, int(c)) for n, c in counts.items() if c >= min_count), key=lambda x: (-x[1], x[0]))
        labels = sorted({c for c in cuisines if c is not None and c == c})
        return cls([n for n, _ in kept], labels, [c for _, c in kept])

    # ---- sizes ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return NUM_SPECIALS + len(self.ingredients)

    @property
    def num_specials(self) -> int:
        return NUM_SPECIALS

    @property
    def num_ingredients(self) -> int:
        return len(self.ingredients)

    @property
    def num_cuisines(self) -> int:
        return len(self.cuisines)

    def __contains__(self, name: object) -> bool:
        return name in self._ids

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Vocabulary) and self.ingredients == other.ingredients
                and self.cuisines == other.cuisines)

    def __repr__(self) -> str:
        return f"Vocabulary({self.num_ingredients} ingredients, {self.num_cuisines} cuisines)"

    # ---- ingredients ----------------------------------------------------------------------------
    def suggest(self, name: str, n: int = 3) -> list[str]:
        """Close ingredient names (of the normalised ``name``), for error messages."""
        return difflib.get_close_matches(normalize_ingredient(name), self.ingredients, n=n, cutoff=0.6)

    def _lookup(self, name: str) -> int | None:
        """The id of ``name`` as given or, failing that, of its normalised form (``"Olive Oil"`` -> ``olive_oil``,
        as the loaders write names); None when neither is known."""
        i = self._ids.get(name)
        if i is None and isinstance(name, str):
            i = self._ids.get(normalize_ingredient(name))
        return i

    def _unknown(self, name: str) -> UnknownIngredientError:
        canonical = normalize_ingredient(name) if isinstance(name, str) else name
        shown = repr(canonical) + (f" (from {name!r})" if canonical != name else "")
        close = self.suggest(name) if isinstance(name, str) else []
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return UnknownIngredientError(f"unknown ingredient {shown}{hint} ({INGREDIENT_LIST_HINT})")

    def id(self, name: str) -> int:
        """The id of an ingredient name, as typed (normalised like the loaders' names); raises
        :class:`UnknownIngredientError` suggesting close names."""
        i = self._lookup(name)
        if i is None:
            raise self._unknown(name)
        return i

    def encode(self, ingredients: Sequence[str], unknown: str = "error") -> list[int]:
        """Ingredient names (as typed: normalised like the loaders' names) -> ids. ``unknown``: ``error`` (raise,
        suggesting close names), ``unk`` (map to [UNK]) or ``skip`` (drop)."""
        if unknown not in ("error", "unk", "skip"):
            raise ValueError(f"unknown must be error, unk or skip, not {unknown!r}")
        out: list[int] = []
        for name in ingredients:
            i = self._lookup(name)
            if i is None:
                if unknown == "error":
                    raise self._unknown(name)
                if unknown == "unk":
                    out.append(UNK)
                continue
            out.append(i)
        return out

    def decode(self, ids: Iterable[int], skip_specials: bool = True) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i < NUM_SPECIALS:
                if not skip_specials:
                    out.append(SPECIALS[i])
                continue
            out.append(self.ingredients[i - NUM_SPECIALS])
        return out

    def token(self, i: int) -> str:
        i = int(i)
        return SPECIALS[i] if i < NUM_SPECIALS else self.ingredients[i - NUM_SPECIALS]

    # ---- cuisines -------------------------------------------------------------------------------
    def cuisine_id(self, name: str) -> int:
        try:
            return self._cuisine_ids[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.cuisines, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self.cuisines)}"
            raise RecipesetError(f"unknown cuisine {name!r}{hint}") from None

    def cuisine_name(self, i: int) -> str:
        return self.cuisines[int(i)]

    # ---- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": "recipeset.vocabulary/1", "specials": list(SPECIALS),
                "ingredients": self.ingredients, "counts": self.counts, "cuisines": self.cuisines}

    @classmethod
    def from_dict(cls, d: dict, source: str = "vocabulary") -> Vocabulary:
        if not isinstance(d, dict) or "ingredients" not in d:
            raise RecipesetError(f"{source}: not a recipeset vocabulary (no 'ingredients' key)")
        if list(d.get("specials", SPECIALS)) != list(SPECIALS):
            raise RecipesetError(f"{source}: special tokens differ from this version's {list(SPECIALS)}")
        return cls(d["ingredients"], d.get("cuisines", []), d.get("counts"))

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RecipesetError(f"{path}: vocabulary file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RecipesetError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))
