"""Experiment files: a base RunConfig, a grid of named variants, seeds and a ``--quick`` shrink, in TOML.

```toml
[experiment]
name = "order_study"                 # MLflow experiment name (default: the file's stem)
description = "..."
baselines = true                     # also run the classical baselines on the base data (one child run)

[base]                               # a RunConfig: the same sections as a config file
data.dataset = "flavornet"
train.max_steps = 3000

[[grid]]                             # one entry per variant: a name plus dotted overrides of the base
name = "decoder-ce-frequency"
"data.order" = "frequency"

[[grid]]
name = "set-transformer-mlm"
model.name = "set-transformer"       # unquoted dotted keys work too
"objectives.weights" = { mlm = 1.0 }

[seeds]
values = [0, 1, 2]                   # set train.seed: initialisation and data order, never the split

[quick]                              # what `--quick` runs (every key optional)
variants = ["decoder-ce-frequency"]  # default: all variants
seeds = [0]                          # default: the first seed
overrides = { "train.max_steps" = 50 }   # default: { "train.epochs" = 1 }
```

Every variant's resolved config is validated when the file is loaded, so a typo fails before any training.
A run is named ``<experiment>/<variant>/seed<seed>`` and identified by ``params_hash`` (the resolved config's
hash), which the grid runner uses to skip a child run that already finished. Quick runs are tracked in a
separate MLflow experiment, ``<name>-quick``, so they never mix with the study's results.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipeset.config import SECTIONS, RunConfig, read_table_file
from recipeset.errors import RecipesetError
from recipeset.registry import suggest

TOP_LEVEL = ("experiment", "base", "grid", "seeds", "quick")
DEFAULT_QUICK_OVERRIDES = {"train.epochs": 1}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a grid: its MLflow run name, variant, seed, resolved config and config hash."""

    name: str
    variant: str
    seed: int
    config: RunConfig
    params_hash: str


@dataclass
class Variant:
    name: str
    overrides: dict[str, Any]


@dataclass
class QuickSpec:
    variants: list[str] | None = None
    seeds: list[int] | None = None
    overrides: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_QUICK_OVERRIDES))


@dataclass
class Experiment:
    """A parsed, validated experiment file; :meth:`runs` expands it into :class:`PlannedRun` s."""

    name: str
    description: str
    path: Path
    base: RunConfig
    variants: list[Variant]
    seeds: list[int]
    quick: QuickSpec
    baselines: bool = False  # also run the classical baselines on the base config's data (one child run)

    def tracking_experiment(self, quick: bool = False) -> str:
        """The MLflow experiment the runs go to (``<name>-quick`` for quick runs)."""
        return f"{self.name}-quick" if quick else self.name

    def runs(self, quick: bool = False) -> list[PlannedRun]:
        """Every (variant, seed) run in file order, variants outer and seeds inner."""
        variants, seeds = self.variants, self.seeds
        if quick:
            if self.quick.variants is not None:
                variants = [v for v in self.variants if v.name in self.quick.variants]
            if self.quick.seeds is not None:
                seeds = self.quick.seeds
            else:
                seeds = seeds[:1]
        planned = []
        for variant in variants:
            for seed in seeds:
                config = self._resolve(variant, seed, quick)
                planned.append(PlannedRun(name=f"{self.name}/{variant.name}/seed{seed}", variant=variant.name,
                                          seed=seed, config=config, params_hash=config.config_hash()))
        return planned

    def _resolve(self, variant: Variant, seed: int, quick: bool) -> RunConfig:
        source = f"{self.path} [grid '{variant.name}']"
        overrides = {**variant.overrides, "train.seed": seed}
        if quick:
            overrides.update(self.quick.overrides)
        overrides["tracking.experiment"] = self.tracking_experiment(quick)
        overrides["tracking.run_name"] = f"{self.name}/{variant.name}/seed{seed}"
        return self.base.override(overrides, source=source)


def _dotted(table: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise overrides: ``{"data": {"order": "x"}}`` (TOML's unquoted ``data.order``) -> ``{"data.order": "x"}``.

    Only one level is unfolded (section -> field), so ``objectives.weights = {mlm = 1.0}`` replaces the whole
    weight table rather than adding to it.
    """
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in SECTIONS and isinstance(value, Mapping):
            for sub, v in value.items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


def _check_keys(table: Mapping[str, Any], valid: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in valid:
            raise RecipesetError(f"{where}.{key}: unknown key{suggest(key, valid)} — valid: {', '.join(valid)}")


def _int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in value):
        raise RecipesetError(f"{where}: expected a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise RecipesetError(f"{where}: duplicate seeds in {value}")
    return list(value)


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Parse and validate an experiment file (TOML); every variant × seed config is resolved up front."""
    path = Path(path)
    raw = read_table_file(path)
    _check_keys(raw, TOP_LEVEL, str(path))
    name, description, baselines = _parse_head(raw.get("experiment", {}), path)
    base_raw = raw.get("base", {})
    if not isinstance(base_raw, Mapping):
        raise RecipesetError(f"{path}: [base] must be a table of config sections")
    base = RunConfig.from_dict(_nest(_dotted(base_raw), path), source=f"{path} [base]")
    variants = _parse_grid(raw.get("grid", []), path)
    seeds_raw = raw.get("seeds", {})
    if not isinstance(seeds_raw, Mapping):
        raise RecipesetError(f"{path}: [seeds] must be a table with `values = [...]`")
    _check_keys(seeds_raw, ("values",), f"{path}: seeds")
    seeds = _int_list(seeds_raw["values"], f"{path}: seeds.values") if "values" in seeds_raw else [base.train.seed]
    exp = Experiment(name=name, description=description, path=path, base=base, variants=variants, seeds=seeds,
                     quick=_parse_quick(raw.get("quick", {}), variants, path), baselines=baselines)
    # Resolve everything now: a typo in any variant fails at load time, not hours into the grid.
    exp.runs(quick=False)
    exp.runs(quick=True)
    return exp


def _parse_head(head: Any, path: Path) -> tuple[str, str, bool]:
    """``[experiment]``: (name, description, baselines)."""
    if not isinstance(head, Mapping):
        raise RecipesetError(f"{path}: [experiment] must be a table")
    _check_keys(head, ("name", "description", "baselines"), f"{path}: experiment")
    baselines = head.get("baselines", False)
    if not isinstance(baselines, bool):
        raise RecipesetError(f"{path}: experiment.baselines: expected true or false")
    name = head.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RecipesetError(f"{path}: experiment.name: {name!r} is not a valid name (letters, digits, . _ + -)")
    description = head.get("description", "")
    if not isinstance(description, str):
        raise RecipesetError(f"{path}: experiment.description: expected a string")
    return name, description, baselines


def _parse_grid(grid_raw: Any, path: Path) -> list[Variant]:
    """``[[grid]]`` entries: named variants of dotted overrides (one ``base`` variant when there are none)."""
    if not isinstance(grid_raw, list):
        raise RecipesetError(f"{path}: grid: use [[grid]] entries (an array of tables)")
    variants: list[Variant] = []
    for i, entry in enumerate(grid_raw):
        if not isinstance(entry, Mapping):
            raise RecipesetError(f"{path}: grid[{i}]: expected a table")
        vname = entry.get("name")
        if not isinstance(vname, str) or not _NAME.fullmatch(vname):
            raise RecipesetError(f"{path}: grid[{i}].name: every variant needs a name (letters, digits, . _ + -),"
                                 f" got {vname!r}")
        if any(v.name == vname for v in variants):
            raise RecipesetError(f"{path}: grid[{i}].name: duplicate variant name '{vname}'")
        variants.append(Variant(vname, _dotted({k: v for k, v in entry.items() if k != "name"})))
    return variants or [Variant("base", {})]


def _parse_quick(quick_raw: Any, variants: list[Variant], path: Path) -> QuickSpec:
    """``[quick]``: what ``--quick`` runs."""
    if not isinstance(quick_raw, Mapping):
        raise RecipesetError(f"{path}: [quick] must be a table")
    _check_keys(quick_raw, ("variants", "seeds", "overrides"), f"{path}: quick")
    quick = QuickSpec()
    if "variants" in quick_raw:
        qv = quick_raw["variants"]
        if not isinstance(qv, list) or not qv or not all(isinstance(v, str) for v in qv):
            raise RecipesetError(f"{path}: quick.variants: expected a non-empty list of variant names")
        names = [v.name for v in variants]
        for v in qv:
            if v not in names:
                raise RecipesetError(f"{path}: quick.variants: unknown variant '{v}'{suggest(v, names)}"
                                     f" — valid: {', '.join(names)}")
        quick.variants = list(qv)
    if "seeds" in quick_raw:
        quick.seeds = _int_list(quick_raw["seeds"], f"{path}: quick.seeds")
    if "overrides" in quick_raw:
        if not isinstance(quick_raw["overrides"], Mapping):
            raise RecipesetError(f"{path}: quick.overrides: expected a table of dotted keys")
        quick.overrides = _dotted(quick_raw["overrides"])
    return quick


def _nest(dotted: Mapping[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """``{"data.dataset": x}`` -> ``{"data": {"dataset": x}}`` (for ``[base]``, which may use either form)."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in dotted.items():
        section, _, rest = key.partition(".")
        if not rest:
            if section in SECTIONS:
                raise RecipesetError(f"{path}: base.{section}: expected a table of fields")
            raise RecipesetError(f"{path}: base.{section}: unknown section{suggest(section, SECTIONS)}"
                                 f" — valid: {', '.join(SECTIONS)}")
        nested.setdefault(section, {})[rest] = value
    return nested
