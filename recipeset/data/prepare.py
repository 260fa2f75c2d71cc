"""From a run's ``[data]`` config to encoded train/val/test sets, following the evaluation protocol.

The split is a group split of the cleaned table (``split_seed``, saved with the run); the vocabulary is
built from the training split only; validation/test ingredients the vocabulary lacks become [UNK]
(a miss in evaluation) and are dropped from the sets the losses see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recipeset.config import DataConfig
from recipeset.data.sets import EncodedSets, csr_kept_offsets
from recipeset.data.sources import dataset_label, load_dataset
from recipeset.data.splits import Split, split_table
from recipeset.data.table import RecipeTable
from recipeset.data.vocab import UNK, Vocabulary
from recipeset.errors import RecipesetError


@dataclass
class PreparedData:
    table: RecipeTable
    split: Split
    vocab: Vocabulary
    train: EncodedSets          # training recipes (all ingredients known)
    val: EncodedSets            # unknown ingredients dropped (for losses)
    test: EncodedSets
    val_eval: EncodedSets       # unknown ingredients as [UNK] (for the evaluation protocol)
    test_eval: EncodedSets
    train_weights: np.ndarray | None = None  # per-recipe sampling weights when mixing datasets

    def counts(self) -> dict[str, int]:
        return {"recipes": len(self.table), "train": len(self.train), "val": len(self.val),
                "test": len(self.test), "ingredients": self.vocab.num_ingredients,
                "cuisines": self.vocab.num_cuisines}


def load_table(cfg: DataConfig) -> RecipeTable:
    """The cleaned table of the run (one dataset, or several mixed with weights)."""
    if cfg.mix:
        return _mixed_table(cfg)
    kw = dict(cfg.options)  # the loader's own options (data.options)
    if cfg.dataset == "synthetic":
        if cfg.n_recipes is not None:
            kw["n_recipes"] = cfg.n_recipes
        kw["ordered"] = cfg.ordered
    elif cfg.ordered:
        raise RecipesetError("data.ordered only applies to the synthetic dataset")
    table = load_dataset(cfg.dataset, path=cfg.path, lenient=cfg.lenient, options=kw)
    if cfg.dataset != "synthetic" and cfg.n_recipes is not None:
        table = table.subset(np.arange(min(cfg.n_recipes, len(table))))
    return _cap_length(table, cfg.max_len)


def _cap_length(table: RecipeTable, max_len: int | None) -> RecipeTable:
    if max_len is None:
        return table
    keep = np.flatnonzero(table.set_sizes <= max_len)
    dropped = len(table) - len(keep)
    out = table.subset(keep)
    if dropped:
        out.report.add("too_long", dropped, f"recipes with more than data.max_len={max_len} ingredients")
    return out


def _mixed_table(cfg: DataConfig) -> RecipeTable:
    frames, names = [], []
    for i, entry in enumerate(cfg.mix):  # entries are checked by RunConfig.validate
        t = load_dataset(entry["dataset"], path=entry.get("path"), lenient=cfg.lenient, options=entry.get("options"))
        if t.name in names:  # recipe ids and mix_weights tell the datasets apart by name
            raise RecipesetError(f"data.mix[{i}]: a second dataset named {t.name!r}; mixed datasets need distinct "
                                 "names (rename one of the files)")
        f = t.frame.copy()
        f["recipe_id"] = f"{t.name}/" + f["recipe_id"].astype(str)
        f["source"] = f"{t.name}:" + f["source"].astype(str)
        frames.append(f)
        names.append(t.name)
    frame = pd.concat(frames, ignore_index=True)
    return _cap_length(RecipeTable(frame, name="+".join(names), source_path=None), cfg.max_len)


def mix_weights(table: RecipeTable, cfg: DataConfig, rows: np.ndarray) -> np.ndarray | None:
    """Per-recipe sampling weights for mixing: dataset ``d`` gets ``weight_d`` of the draws in total."""
    if not cfg.mix:
        return None
    names = table.meta["recipe_id"].iloc[rows].str.split("/", n=1).str[0].to_numpy()
    w = np.zeros(len(rows))
    for entry in cfg.mix:
        sel = names == dataset_label(str(entry["dataset"]))
        if sel.any():
            w[sel] = float(entry.get("weight", 1.0)) / sel.sum()
    if w.sum() <= 0:
        raise RecipesetError("data.mix: every dataset weight is 0")
    return w / w.sum()


def prepare_data(cfg: DataConfig, split_path: str | Path | None = None,
                 vocab: Vocabulary | None = None) -> PreparedData:
    """Load, split (or reuse a saved split) and encode. ``vocab`` given = reuse a trained model's vocabulary."""
    table = load_table(cfg)
    if len(table) < 10:
        raise RecipesetError(f"dataset {table.name!r} has only {len(table)} recipes after cleaning; need at least 10")
    if split_path is not None and Path(split_path).exists():
        split = Split.load(split_path, table)
    else:
        split = split_table(table, seed=cfg.split_seed)
    train_t, val_t, test_t = split.tables(table)
    if vocab is None:
        vocab = Vocabulary.from_counts(train_t.ingredient_counts(), table.meta["cuisine"].dropna().unique(),
                                       min_count=cfg.min_count)
    train = train_t.encode(vocab, unknown="skip")
    keep = np.flatnonzero(train.lengths > 0)
    if len(keep) < len(train):  # recipes made only of rare ingredients (min_count > 1)
        train = train.take(keep)
    val_eval, test_eval = val_t.encode(vocab, unknown="unk"), test_t.encode(vocab, unknown="unk")
    return PreparedData(table=table, split=split, vocab=vocab, train=train,
                        val=drop_unk(val_eval), test=drop_unk(test_eval), val_eval=val_eval,
                        test_eval=test_eval, train_weights=mix_weights(table, cfg, split.train[keep]))


def drop_unk(sets: EncodedSets) -> EncodedSets:
    """The sets without [UNK] ids, and without sets left empty."""
    keep = sets.values != UNK
    if keep.all() and (sets.lengths > 0).all():
        return sets
    out = EncodedSets(sets.values[keep], csr_kept_offsets(sets.offsets, keep), sets.cuisine)
    return out.take(np.flatnonzero(out.lengths > 0))
