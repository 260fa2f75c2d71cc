"""Data layer: RecipeTable, loaders, vocabulary, splits, orderings, collation."""
