"""Dataset loaders behind one entry point, :func:`load_dataset`.

Every loader returns a cleaned :class:`~recipeset.data.table.RecipeTable` (normalised ingredient names,
no duplicate ingredient inside a recipe, no empty recipe) whose ``report`` says what was dropped.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path

from recipeset.data.table import RecipeTable
from recipeset.errors import RecipesetError

DATASETS = ("flavornet", "whatscooking", "synthetic")
FILE_SUFFIXES = (".csv", ".jsonl", ".json")


def load_dataset(name_or_path: str | os.PathLike, path: str | os.PathLike | None = None, lenient: bool = False,
                 **kw) -> RecipeTable:
    """Load a dataset by name or a recipe file by path.

    - ``"flavornet"``: ``path`` = directory of the files (default: ``$RECIPESET_FLAVORNET_DIR`` or
      ``<data dir>/flavornet``); options ``keep_unmapped``, ``download``, ``verify``, ``base_url``.
    - ``"whatscooking"``: ``path`` = the Kaggle JSON file (required).
    - ``"synthetic"``: the generated benchmark; ``**kw`` go to ``load_synthetic``.
    - a ``.csv`` / ``.jsonl`` / ``.json`` path: options ``ingredients_column``, ``delimiter``,
      ``cuisine_column``, ``id_column`` (and ``sep`` for CSV).

    ``lenient=True`` skips malformed lines (counted in ``table.report``) instead of raising.
    """
    name = str(name_or_path)
    if name == "flavornet":
        from recipeset.data.sources.flavornet import load_flavornet

        return _call(load_flavornet, name, path, lenient=lenient, **kw)
    if name == "whatscooking":
        if path is None:
            raise RecipesetError("whatscooking needs path=... (--path): the Kaggle What's Cooking train.json")
        from recipeset.data.sources.whatscooking import load_whatscooking

        return _call(load_whatscooking, name, path, lenient=lenient, **kw)
    if name == "synthetic":
        from recipeset.data.sources.synthetic import load_synthetic

        if path is not None:
            kw["path"] = path
        return _call(load_synthetic, name, **kw)
    suffix = Path(name).suffix.lower()
    if suffix in FILE_SUFFIXES:
        from recipeset.data.sources import tabular

        loader = {".csv": tabular.load_csv, ".jsonl": tabular.load_jsonl, ".json": tabular.load_json}[suffix]
        return _call(loader, name, name, lenient=lenient, **kw)
    raise RecipesetError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} "
                         f"or a path ending in {', '.join(FILE_SUFFIXES)}")


def _call(loader: Callable[..., RecipeTable], label: str, *args, **kw) -> RecipeTable:
    """Call ``loader``, turning an option it does not take into a RecipesetError listing the ones it does."""
    params = inspect.signature(loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        bad = [k for k in kw if k not in params]
        if bad:
            options = [n for n, q in params.items() if q.kind is not q.VAR_POSITIONAL][len(args):]
            raise RecipesetError(f"{label}: unknown loader option(s) {', '.join(bad)}; "
                                 f"options: {', '.join(options) or 'none'}")
    return loader(*args, **kw)


__all__ = ["DATASETS", "load_dataset"]
