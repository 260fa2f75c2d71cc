"""Kaggle "What's Cooking" (Yummly): a JSON list of ``{"id", "cuisine", "ingredients"}`` objects.

The competition's ``test.json`` has no ``cuisine``: those recipes load with cuisine None. Ingredient
names are free text ("1% low-fat milk"); they are normalised like every other loader's, nothing more.
"""

from __future__ import annotations

import os

from recipeset.data.sources.tabular import load_json
from recipeset.data.table import RecipeTable


def load_whatscooking(path: str | os.PathLike, lenient: bool = False) -> RecipeTable:
    """Read a What's Cooking ``train.json``/``test.json``; recipe ids are the file's ``id`` values."""
    return load_json(path, ingredients_column="ingredients", cuisine_column="cuisine", id_column="id",
                     lenient=lenient, name="whatscooking", source="whatscooking")
