"""Dataset loaders behind one entry point, :func:`load_dataset`.

Every loader returns a cleaned :class:`~recipeset.data.table.RecipeTable` (normalised ingredient names,
no duplicate ingredient inside a recipe, no empty recipe) whose ``report`` says what was dropped.
"""

from __future__ import annotations

import inspect
import os
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from recipeset.data.sources import flavornet, synthetic, tabular, whatscooking
from recipeset.data.table import RecipeTable
from recipeset.errors import RecipesetError
from recipeset.fields import coerce
from recipeset.registry import DATASETS, DatasetEntry, suggest

FILE_SUFFIXES = (".csv", ".jsonl", ".json")


def load_dataset(name_or_path: str | os.PathLike, path: str | os.PathLike | None = None, lenient: bool = False,
                 options: Mapping[str, Any] | None = None, **kw) -> RecipeTable:
    """Load a registered dataset by name (:data:`recipeset.registry.DATASETS`) or a recipe file by path.

    - ``"flavornet"``: ``path`` = directory of the files (default: ``$RECIPESET_FLAVORNET_DIR`` or
      ``<data dir>/flavornet``); options ``keep_unmapped``, ``download``, ``verify``, ``base_url``.
    - ``"whatscooking"``: ``path`` = the Kaggle JSON file (required).
    - ``"synthetic"``: the generated benchmark; ``**kw`` go to ``load_synthetic``.
    - a ``.csv`` / ``.jsonl`` / ``.json`` path: options ``ingredients_column``, ``delimiter``,
      ``cuisine_column``, ``id_column`` (and ``sep`` for CSV).

    ``lenient=True`` skips malformed lines (counted in ``table.report``) instead of raising. ``options``: the
    loader's options as one mapping (``data.options``, ``--option``), merged with ``**kw``; an option of a plain
    type (bool, int, str) must have it.
    """
    name = str(name_or_path)
    kw = {**(options or {}), **kw}
    if "path" in kw:  # the loaders take it as their first argument: it is load_dataset's own
        raise RecipesetError(f"{name}: path is not a loader option; give it as --path / data.path")
    lenient = coerce(kw.pop("lenient", False), bool, "option lenient", name) or lenient  # data.options.lenient too
    if name in DATASETS:
        return _call(DATASETS.get(name).load, name, path, lenient=lenient, **kw)
    suffix = Path(name).suffix.lower()
    if suffix in FILE_SUFFIXES:
        loader = {".csv": tabular.load_csv, ".jsonl": tabular.load_jsonl, ".json": tabular.load_json}[suffix]
        return _call(loader, name, name, lenient=lenient, **kw)
    raise RecipesetError(f"unknown dataset {name!r}{suggest(name, DATASETS.names())}: use one of "
                         f"{', '.join(DATASETS.names())} or a path ending in {', '.join(FILE_SUFFIXES)}")


def dataset_label(name_or_path: str) -> str:
    """The name a dataset's table carries: a registered name as is, a file by its stem."""
    return name_or_path if name_or_path in DATASETS else Path(name_or_path).stem


def _call(loader: Callable[..., RecipeTable], label: str, *args, **kw) -> RecipeTable:
    """Call ``loader``, turning an option it does not take into a RecipesetError listing the ones it does."""
    params = inspect.signature(loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        bad = [k for k in kw if k not in params]
        if bad:
            options = [n for n, q in params.items() if q.kind is not q.VAR_POSITIONAL][len(args):]
            raise RecipesetError(f"{label}: unknown loader option(s) {', '.join(bad)} (--option, data.options); "
                                 f"options: {', '.join(options) or 'none'}")
        _check_types(loader, label, kw)
    return loader(*args, **kw)


def _check_types(loader: Callable[..., RecipeTable], label: str, kw: Mapping[str, Any]) -> None:
    """Options of a plain type in ``loader``'s signature (bool, int, float, str; None where allowed) must have it:
    the string "no" is not false, 5 is not a column name."""
    hints = typing.get_type_hints(loader)
    for key, value in kw.items():
        hint = hints.get(key)
        plain = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
        if len(plain) == 1 and plain[0] in (bool, int, float, str):
            coerce(value, hint, f"option {key}", label)


# ---- the named datasets ---------------------------------------------------------------------------------------
def _load_flavornet(path, lenient=False, **kw) -> RecipeTable:
    return _call(flavornet.load_flavornet, "flavornet", path, lenient=lenient, **kw)


def _load_whatscooking(path, lenient=False, **kw) -> RecipeTable:
    if path is None:
        raise RecipesetError("whatscooking needs --path (data.path in a run config): the Kaggle What's Cooking "
                             "train.json")
    return _call(whatscooking.load_whatscooking, "whatscooking", path, lenient=lenient, **kw)


def _load_synthetic(path, lenient=False, **kw) -> RecipeTable:
    if path is not None:
        kw["path"] = path
    return _call(synthetic.load_synthetic, "synthetic", **kw)


DATASETS.register("flavornet", DatasetEntry("flavornet", _load_flavornet,
                                            "Ahn et al. 2011 flavor network recipes (11 regions)"))
DATASETS.register("whatscooking", DatasetEntry("whatscooking", _load_whatscooking,
                                               "the Kaggle/Yummly What's Cooking JSON (--path)"))
DATASETS.register("synthetic", DatasetEntry("synthetic", _load_synthetic,
                                            "the embedded generator with known probabilities (default)"))

__all__ = ["DATASETS", "FILE_SUFFIXES", "dataset_label", "load_dataset"]
