"""recipeset: recipes as sets of ingredients.

Public API (lazy, so ``import recipeset`` and ``recipeset --help`` stay fast)::

    from recipeset import load_dataset, Vocabulary, load_model, load_ensemble
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["load_dataset", "Vocabulary", "load_model", "load_ensemble", "Ensemble", "RecipesetError", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from recipeset.data.sources import load_dataset
    from recipeset.data.vocab import Vocabulary
    from recipeset.ensemble import Ensemble
    from recipeset.errors import RecipesetError
    from recipeset.runs import load_ensemble, load_model

_LAZY = {
    "load_dataset": "recipeset.data.sources",
    "Vocabulary": "recipeset.data.vocab",
    "load_model": "recipeset.runs",  # local directories and MLflow runs:/ or models:/ URIs
    "load_ensemble": "recipeset.runs",  # several of them averaged (recipeset.ensemble)
    "Ensemble": "recipeset.ensemble",
    "RecipesetError": "recipeset.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recipeset' has no attribute {name!r}")
