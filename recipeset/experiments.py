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

[[ensemble]]                         # after the grid: the average of these variants' trained models (every
name = "decoder-3-seeds"             # seed of each), evaluated on the same queries as one more child run
variants = ["decoder-ce-frequency"]  # (tag variant=<name>); combine = "logprob" (default) | "prob"

[quick]                              # what `--quick` runs (every key optional)
variants = ["decoder-ce-frequency"]  # default: all variants
seeds = [0]                          # default: the first seed
overrides = { "train.max_steps" = 50 }   # default: { "train.epochs" = 1 }

[tune]                               # `recipeset tune FILE`: a hyper-parameter search (recipeset.tune)
metric = "val/loss"                  # val/loss[/<objective>] (periodic validation) or val_eval/<task>/<metric>
direction = "minimize"               # default: minimize for losses and mean ranks, else maximize
trials = 40                          # the study's finished trials, and/or
minutes = 120                        # start no new trial after this long (per command)
sampler = "tpe"                      # tpe | random, seeded with `seed` (default 0)
pruner = "median"                    # median | none; `pruner_startup_trials` (default 5) are never pruned
[tune.space]                         # dotted RunConfig keys: a range (ints when low/high are) or choices
"train.lr" = { low = 1e-4, high = 3e-3, log = true }
"train.batch_size" = { choices = [64, 128] }
```

Every variant's resolved config is validated when the file is loaded, so a typo fails before any training.
A run is named ``<experiment>/<variant>/seed<seed>`` and identified by ``params_hash`` (the resolved config's
hash), which the grid runner uses to skip a child run that already finished. Quick runs are tracked in a
separate MLflow experiment, ``<name>-quick``, so they never mix with the study's results. The ``[tune]`` search
space is checked against every variant's config when the file is loaded, too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recipeset.config import SECTIONS, RunConfig, read_table_file, resolve_objectives
from recipeset.errors import RecipesetError
from recipeset.registry import suggest

TOP_LEVEL = ("experiment", "base", "grid", "seeds", "quick", "tune", "ensemble")
ENSEMBLE_KEYS = ("name", "variants", "combine")
COMBINES = ("logprob", "prob")  # recipeset.ensemble.COMBINES (not imported: loading a file stays torch-free)
TUNE_KEYS = ("metric", "direction", "trials", "minutes", "sampler", "seed", "pruner", "pruner_startup_trials",
             "space")
SPACE_KEYS = ("low", "high", "log", "type", "choices")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
DIRECTIONS = ("minimize", "maximize")
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


@dataclass(frozen=True)
class EnsembleSpec:
    """``[[ensemble]]``: a named average of the trained models of some variants (every seed of each)."""

    name: str
    variants: tuple[str, ...]
    combine: str = "logprob"


@dataclass
class QuickSpec:
    variants: list[str] | None = None
    seeds: list[int] | None = None
    overrides: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_QUICK_OVERRIDES))


@dataclass(frozen=True)
class SearchParam:
    """One dimension of a tuning search space: a dotted config key with a range or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None


@dataclass
class TuneSpec:
    """``[tune]``: what a hyper-parameter search optimises, over which space, with which budget."""

    metric: str
    direction: str
    trials: int | None
    minutes: float | None
    space: list[SearchParam]
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "median"
    pruner_startup_trials: int = 5

    @property
    def periodic(self) -> bool:
        """Whether the metric is one of the trainer's periodic validation losses (``val/...``), rather than the
        validation evaluation after training (``val_eval/...``)."""
        return self.metric.startswith("val/")


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
    tune: TuneSpec | None = None  # the [tune] section, if any
    ensembles: list[EnsembleSpec] = field(default_factory=list)  # the [[ensemble]] entries

    def ensemble_members(self, spec: EnsembleSpec, quick: bool = False,
                         seeds: list[int] | None = None) -> list[PlannedRun]:
        """The runs whose models ``spec`` averages: its variants' runs of the (quick) grid, at ``seeds`` only
        when given; none when a variant of it is not in the quick grid."""
        runs = [r for r in self.runs(quick=quick) if r.variant in spec.variants and (seeds is None or r.seed in seeds)]
        return runs if {r.variant for r in runs} == set(spec.variants) else []

    def variant(self, name: str | None) -> Variant:
        """The grid variant ``name`` (None: ``[base]`` alone, no overrides)."""
        if name is None:
            return Variant("base", {})
        names = [v.name for v in self.variants]
        if name not in names:
            raise RecipesetError(f"{self.path}: unknown variant '{name}'{suggest(name, names)} — valid: "
                                 f"{', '.join(names)}")
        return self.variants[names.index(name)]

    def fixed_config(self, variant: str | None = None, quick: bool = False) -> RunConfig:
        """The fixed part of a search: ``[base]`` (with one variant's overrides) at the first seed (and the
        ``[quick]`` overrides with ``quick``)."""
        return self._resolve(self.variant(variant), self.seeds[0], quick)

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
    exp.ensembles = _parse_ensembles(raw.get("ensemble", []), exp, path)
    if "tune" in raw:
        exp.tune = _parse_tune(raw["tune"], path)
        for variant in (None, *(v.name for v in variants)):
            _check_tune(exp.tune, exp.fixed_config(variant), path)
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


def _parse_ensembles(raw: Any, exp: Experiment, path: Path) -> list[EnsembleSpec]:
    """``[[ensemble]]`` entries: a new name, known variants whose runs share the data and evaluation settings (so
    the ensemble's members were trained and are scored on the same split and queries), a combination rule."""
    if not isinstance(raw, list):
        raise RecipesetError(f"{path}: ensemble: use [[ensemble]] entries (an array of tables)")
    names = [v.name for v in exp.variants]
    specs: list[EnsembleSpec] = []
    for i, entry in enumerate(raw):
        where = f"{path}: ensemble[{i}]"
        if not isinstance(entry, Mapping):
            raise RecipesetError(f"{where}: expected a table")
        _check_keys(entry, ENSEMBLE_KEYS, where)
        name, variants = entry.get("name"), entry.get("variants")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (*names, "baselines"):
            raise RecipesetError(f"{where}.name: every ensemble needs a new name (letters, digits, . _ + -; not a "
                                 f"variant's), got {name!r}")
        if any(s.name == name for s in specs):
            raise RecipesetError(f"{where}.name: duplicate ensemble name '{name}'")
        if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
            raise RecipesetError(f"{where}.variants: expected a non-empty list of variant names")
        for v in variants:
            exp.variant(v)  # an unknown name fails with a suggestion
        combine = entry.get("combine", "logprob")
        if combine not in COMBINES:
            raise RecipesetError(f"{where}.combine: expected one of {', '.join(COMBINES)}, got {combine!r}")
        spec = EnsembleSpec(name, tuple(dict.fromkeys(variants)), combine)
        members = exp.ensemble_members(spec)
        for section in ("data", "eval"):
            if any(_shared(r.config, section) != _shared(members[0].config, section) for r in members):
                raise RecipesetError(f"{where}: its variants' [{section}] settings differ; an ensemble's members "
                                     "must share the split and the queries")
        specs.append(spec)
    return specs


def _shared(config: RunConfig, section: str) -> dict[str, Any]:
    """A config section as the members of an ensemble must share it: ``[data]`` without the training order."""
    values = asdict(getattr(config, section))
    return {k: v for k, v in values.items() if section != "data" or k not in ("order", "k_perms")}


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


# ---- [tune] ---------------------------------------------------------------------------------------------------
def _parse_tune(raw: Any, path: Path) -> TuneSpec:
    """``[tune]``: the metric, budget, sampler, pruner and search space (each a one-line error naming the key)."""
    where = f"{path}: tune"
    if not isinstance(raw, Mapping):
        raise RecipesetError(f"{where}: [tune] must be a table")
    _check_keys(raw, TUNE_KEYS, where)
    metric = raw.get("metric", "val/loss")
    periodic = isinstance(metric, str) and (metric == "val/loss" or metric.startswith("val/loss/"))
    if not periodic and not (isinstance(metric, str) and metric.startswith("val_eval/")):
        raise RecipesetError(f"{where}.metric: {metric!r} is not a validation metric — use val/loss or "
                             "val/loss/<objective> (the periodic validation, which feeds the pruner), or "
                             "val_eval/<task>/<metric> (the validation evaluation after training, e.g. "
                             "val_eval/completion/mrr)")
    lower_is_better = periodic or metric.endswith(("mean_rank", "/loss", "nll"))
    direction = _tune_choice(raw, "direction", "minimize" if lower_is_better else "maximize", DIRECTIONS, where)
    if periodic and direction != "minimize":
        raise RecipesetError(f"{where}.direction: {metric} is a loss of the periodic validation: minimize it")
    trials = _tune_number(raw, "trials", int, where)
    minutes = _tune_number(raw, "minutes", float, where)
    if trials is None and minutes is None:
        raise RecipesetError(f"{where}: no budget — give trials = N and/or minutes = M")
    space = raw.get("space")
    if not isinstance(space, Mapping) or not space:
        raise RecipesetError(f"{where}.space: expected a table of dotted config keys, e.g. "
                             '"train.lr" = { low = 1e-4, high = 3e-3, log = true }')
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RecipesetError(f"{where}.seed: expected an integer, got {seed!r}")
    startup = _tune_number(raw, "pruner_startup_trials", int, where, minimum=0)
    return TuneSpec(metric=metric, direction=direction, trials=trials, minutes=minutes, seed=seed,
                    sampler=_tune_choice(raw, "sampler", "tpe", SAMPLERS, where),
                    pruner=_tune_choice(raw, "pruner", "median", PRUNERS, where),
                    pruner_startup_trials=5 if startup is None else startup,
                    space=[_parse_space_entry(str(k), v, f"{where}.space") for k, v in _dotted(space).items()])


def _tune_choice(raw: Mapping[str, Any], key: str, default: str, valid: tuple[str, ...], where: str) -> str:
    value = raw.get(key, default)
    if value not in valid:
        raise RecipesetError(f"{where}.{key}: unknown value {value!r}{suggest(value, valid)} — valid: "
                             f"{', '.join(valid)}")
    return value


def _tune_number(raw: Mapping[str, Any], key: str, kind: type, where: str, minimum: int = 1) -> Any:
    """An optional int ``>= minimum`` (``trials``) or positive number (``minutes``); None when not given."""
    if key not in raw:
        return None
    value = raw[key]
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise RecipesetError(f"{where}.{key}: expected an integer >= {minimum}, got {value!r}")
    elif not _number(value) or value <= 0:
        raise RecipesetError(f"{where}.{key}: expected a positive number, got {value!r}")
    return kind(value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_space_entry(key: str, entry: Any, where: str) -> SearchParam:
    """One search dimension: ``{low, high[, log][, type]}`` or ``{choices = [...]}``."""
    where = f"{where}.{key}"
    if not isinstance(entry, Mapping):
        raise RecipesetError(f"{where}: expected {{ low = ..., high = ... }} or {{ choices = [...] }}, got {entry!r}")
    _check_keys(entry, SPACE_KEYS, where)
    if "choices" in entry:
        choices = entry["choices"]
        if set(entry) != {"choices"}:
            raise RecipesetError(f"{where}: give either choices or low/high, not both")
        if not isinstance(choices, list) or not choices:
            raise RecipesetError(f"{where}.choices: expected a non-empty list")
        if not all(isinstance(c, str | bool) or _number(c) for c in choices):
            raise RecipesetError(f"{where}.choices: only numbers, strings and booleans can be choices")
        return SearchParam(key, choices=tuple(choices))
    low, high = entry.get("low"), entry.get("high")
    if not (_number(low) and _number(high)):
        raise RecipesetError(f"{where}: expected numbers low and high (or choices = [...]), got low={low!r}, "
                             f"high={high!r}")
    kind = entry.get("type", "int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise RecipesetError(f"{where}.type: unknown type {kind!r} — valid: int, float")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise RecipesetError(f"{where}.log: expected true or false")
    if low >= high:
        raise RecipesetError(f"{where}: low must be < high, got low={low}, high={high}")
    if log and low <= 0:
        raise RecipesetError(f"{where}: a log range needs low > 0, got low={low}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise RecipesetError(f"{where}: an int range needs whole low and high, got {low}, {high}")
    integer = kind == "int"
    return SearchParam(key, low=int(low) if integer else float(low), high=int(high) if integer else float(high),
                       log=log, integer=integer)


def _check_tune(spec: TuneSpec, config: RunConfig, path: Path) -> None:
    """Every search key is a valid config key, and the ends of every range and every choice valid values of it;
    a ``val/loss/<objective>`` metric names an objective the run trains."""
    source = f"{path} [tune.space]"
    for p in spec.space:
        for value in p.choices if p.choices is not None else (p.low, p.high):
            config.override({p.key: value}, source=source)
    if spec.metric.startswith("val/loss/"):
        objective = spec.metric.removeprefix("val/loss/")
        trained = resolve_objectives(config)
        if objective not in trained:
            raise RecipesetError(f"{path}: tune.metric: the run trains no objective '{objective}'"
                                 f"{suggest(objective, trained)} — valid: val/loss, "
                                 + ", ".join(f"val/loss/{o}" for o in trained))
