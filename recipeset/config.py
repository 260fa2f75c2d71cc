"""Run configuration: one ``RunConfig`` describes a training run, read from TOML or JSON.

A config file has the sections of :class:`RunConfig`; every key is optional (defaults below)::

    [data]
    dataset = "flavornet"
    path = "../shared/data/flavornet"
    order = "shuffle"

    [model]                  # ``name`` plus the model's own config fields (validated by the model registry)
    name = "decoder"
    d_model = 128

    [loss]
    name = "set-ar"

    [objectives]
    weights = { clm = 1.0, cls = 0.5 }

    [train]
    epochs = 5

Dotted keys (``"model.d_model"``, ``"loss.name"``, ``"objectives.weights.cls"``) address one field; they are
the names of the MLflow params (:meth:`RunConfig.flatten`), of overrides (:meth:`RunConfig.override`) and of
the grid entries in experiment files. Every mistake (unknown key or name, wrong type, out-of-range value)
raises :class:`~recipeset.errors.RecipesetError` naming the file and the dotted key, with a suggestion.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipeset.errors import RecipesetError, shown
from recipeset.fields import check_fields, check_params, check_plain, check_value, coerce, fail, spec
from recipeset.io_utils import atomic_write_text, parse_json, parse_toml
from recipeset.registry import EVAL_TASKS, LOSSES, MODELS, OBJECTIVES, ORDERS, losses_for, runs_packed, suggest

# The config's own names; models, losses, objectives, orders, datasets and evaluation tasks live in their
# registries (recipeset.registry), which the fields below name as their choices.
SCHEDULES = ("cosine", "inverse-sqrt", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CLASS_WEIGHTS = ("none", "balanced")  # balanced: w_c = N / (C · n_c) over the training split, as scikit-learn's
DEFAULT_OBJECTIVES = {"clm": 1.0}     # left as is, a run trains its model's natural objective (resolve_objectives)
DEFAULT_LOSS = "standard"             # the loss of plain next-ingredient training; any other is a `set` loss


# ---- sections --------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    dataset: str = "synthetic"        # a dataset name (synthetic, flavornet, whatscooking) or a .csv/.jsonl path
    path: str | None = None           # where the dataset's files are (None: the default data directory)
    order: str = spec("frequency", choices=ORDERS)  # ingredient order fed to sequence models
    k_perms: int = spec(4, ge=1)      # permutations per recipe for order = "k-perms"
    min_count: int = spec(1, ge=1)    # vocabulary: minimum training count of an ingredient
    split_seed: int = spec(0, ge=0)   # the 80/10/10 group split; study seeds never change it
    max_len: int | None = spec(None, ge=1)     # drop recipes with more ingredients than this
    n_recipes: int | None = spec(None, ge=1)   # synthetic generator size / cap on loaded recipes
    ordered: bool = False             # synthetic: emit ingredients in cooking order (order carries information)
    lenient: bool = False             # skip malformed rows (with a count) instead of failing
    options: dict = spec(factory=dict)  # the loader's own options: CSV/JSONL ingredients_column, delimiter,
    #                                 cuisine_column, id_column, sep; flavornet keep_unmapped, verify
    mix: list[dict] = spec(factory=list)  # weighted mixing: [{dataset, path, weight}, ...]


@dataclass
class ModelConfig:
    name: str = spec("decoder", choices=MODELS)
    params: dict = spec(factory=dict)  # the model's config_class fields (checked against it by validate)


@dataclass
class LossConfig:
    name: str = spec(DEFAULT_LOSS, choices=LOSSES)
    label_smoothing: float = spec(0.0, ge=0, lt=1)  # for every cross-entropy
    params: dict = spec(factory=dict)  # the loss's own fields (its registry entry's params dataclass)


@dataclass
class ObjectivesConfig:
    weights: dict = spec(factory=lambda: dict(DEFAULT_OBJECTIVES))  # objective name -> loss weight
    detach: bool = False              # train the task heads on detached features ("detach_CLS")
    alpha: float | None = spec(None, ge=0, le=1)  # fine-tuning: L = α·L_task + (1−α)·L_LM (None: weighted sum)
    mlm_prob: float = spec(0.15, gt=0, le=1)  # MLM: fraction of each set masked (at least one)
    held_out: str = spec("all", choices=("one", "all", "all+part"), kind="held-out mode")  # MLM of a model that
    #                                 holds ingredients out (deep-sets; the others mask elements, mlm_prob): one
    #                                 random ingredient per set, every ingredient of every set from one sum, or
    #                                 that plus a random part of each set hidden and predicted from the rest
    rtd_prob: float = spec(0.15, gt=0, le=1)  # RTD: fraction of each set replaced
    null_prob: float = spec(0.1, ge=0, le=1)  # MLM on an encoder: chance of a [MASK] slot whose target is [NULL]
    cls_class_weight: str = spec("none", choices=CLASS_WEIGHTS, kind="class weighting")  # cuisine loss weights


@dataclass
class TrainConfig:
    epochs: int = spec(10, ge=1)
    max_steps: int | None = spec(None, ge=1)  # stop after this many optimizer steps (matched compute); wins
    batch_size: int = spec(64, ge=1)
    lr: float = spec(1e-3, gt=0)
    weight_decay: float = spec(0.01, ge=0)  # AdamW, only on >= 2-D weights
    warmup_steps: int = spec(100, ge=0)
    schedule: str = spec("cosine", choices=SCHEDULES, kind="schedule")
    clip: float = spec(1.0, ge=0)      # gradient-norm clipping (0: off)
    seed: int = spec(0, ge=0)         # initialisation and data order (not the split)
    deterministic: bool = False       # torch deterministic kernels
    eval_every: int | None = spec(None, ge=1)  # validation every N steps (None: every epoch)
    val_max_recipes: int | None = spec(20000, ge=1)  # the validation loss (early stopping, the best model) on a
    #                                 seeded subset of this many validation recipes (None: all; flavornet's
    #                                 whole split fits, a 1M-recipe dataset's 100k do not)
    checkpoint_every: int = spec(200, ge=1)  # atomic checkpoint every N steps
    early_stopping_patience: int | None = spec(None, ge=1)  # evaluations without improvement before stopping
    early_stopping_metric: str = "val/loss"  # or any val/loss/<objective>, or val/completion/mrr|recall@10|...
    #                                 (leave-one-out completion on eval.val_max_queries recipes at every validation;
    #                                 recall and MRR are maximised, the rest minimised)
    ema_decay: float = spec(0.0, ge=0, lt=1)  # an exponential moving average of the weights (0: off), updated
    #                                 after every step (decay min(ema_decay, (1 + n) / (10 + n)) at update n);
    #                                 validation, the best model and the final model use the average
    curriculum: bool = False          # small sets first
    # Length-grouped batches: sort by set size inside random pools of this many batches, then shuffle the batches
    # (recipeset.data.batching; 97% real positions instead of 46% on flavornet). 0: a plain permutation cut into
    # batches (the trainer before this field existed); also groups the validation batches.
    bucket_pool: int | None = spec(None, ge=0)  # length-grouped batches in pools of this many batches (0: off);
    #                                 None: BUCKET_POOL where every loss is one term per recipe, else 0 (see
    #                                 bucket_pool_for; grouped position-averaged losses are rescaled per batch)
    pack: bool | None = None          # several recipes per row of a training batch (sequence packing: the same
    #                                 batches and losses, less padding); None: on where the model and every
    #                                 objective support it (pack_for: decoders with clm or a sequence set loss,
    #                                 the Set Transformer with mlm/rtd)
    threads: int | None = spec(None, ge=1)  # torch threads (None: the available cores ÷ concurrent grid jobs)
    num_workers: int = spec(0, ge=0)  # DataLoader workers
    device: str = "auto"              # auto, cpu, cuda, cuda:N, mps
    precision: str = spec("auto", choices=PRECISIONS, kind="precision")  # bf16/fp16 autocast only on GPU
    init_from: str | None = None      # fine-tuning: a model dir (relative to the cwd) to start from; "{seed}" in
    #                                   it becomes train.seed (grid variants); the CLI's --init-from wins


CUISINE_MAX_ACCURACY_DROP = 0.0  # eval.cuisine_max_accuracy_drop's default (recipeset.protocol's too)


@dataclass
class EvalConfig:
    tasks: list[str] = spec(factory=lambda: list(EVAL_TASKS.names()))  # evaluation tasks (registry names)
    seed: int = spec(0, ge=0)         # held-out ingredients and queries (same for every model)
    joint: bool = True                # decoders: also report `joint` scoring
    max_queries: int | None = spec(None, ge=1)  # cap on evaluation queries (None: all)
    joint_max_queries: int = spec(500, ge=1)  # decoders' `joint` scoring costs a forward pass per candidate
    val_max_queries: int | None = spec(2000, ge=1)  # after training, the stop-threshold tuning and the
    #                                 validation evaluation (model selection) use a seeded subset of this many
    #                                 validation recipes (default 2000; None: the whole split)
    query_draws: int = spec(5, ge=1)  # completion: held-out draws per recipe (metrics are their mean; 1: the
    #                                 single seeded draw of before). Test and validation alike; `joint`: 1 draw
    cuisine_max_accuracy_drop: float = spec(CUISINE_MAX_ACCURACY_DROP, ge=0, le=1)  # the cuisine decision
    #                                 rule (tuned for macro-F1 on the whole validation split) may lower validation
    #                                 accuracy by at most this much below the plain argmax's (0: not at all; 1: any)


@dataclass
class TrackingConfig:
    experiment: str = "recipeset"     # MLflow experiment name
    tracking_uri: str | None = None   # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    run_name: str | None = None
    pyfunc: bool = True               # also log the model as an MLflow pyfunc model (runs:/<id>/pyfunc): a second
                                      # copy of the weights in the store; needed by --register


SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "loss": LossConfig, "objectives": ObjectivesConfig,
    "train": TrainConfig, "eval": EvalConfig, "tracking": TrackingConfig,
}
_HINTS: dict[type, dict[str, Any]] = {cls: typing.get_type_hints(cls) for cls in SECTIONS.values()}
_NAMED = {"model": "name", "loss": "name"}  # sections whose other keys are the named entry's own parameters


# ---- the run config ----------------------------------------------------------------------------------------
@dataclass
class RunConfig:
    """Everything a run needs; see the section dataclasses for the fields and defaults."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    objectives: ObjectivesConfig = dataclasses.field(default_factory=ObjectivesConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)

    # ---- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> RunConfig:
        """Build and validate from nested sections (``{"model": {"name": ..., "d_model": ...}, ...}``)."""
        if not isinstance(d, Mapping):
            raise fail(source, "", f"expected a table of sections, got {type(d).__name__}")
        cfg = cls()
        for section, values in d.items():
            if section not in SECTIONS:
                raise fail(source, str(section), f"unknown section{suggest(section, SECTIONS)}"
                            f" — valid: {', '.join(SECTIONS)}")
            if not isinstance(values, Mapping):
                raise fail(source, section, f"expected a table, got {type(values).__name__} {shown(values)}")
            for key, value in values.items():
                cfg._set(f"{section}.{key}", value, source)
        cfg.validate(source)
        return cfg

    def override(self, dotted: Mapping[str, Any], source: str = "overrides") -> RunConfig:
        """A validated copy with dotted keys replaced, e.g. ``{"model.d_model": 64, "train.epochs": 2}``.

        ``"model.<key>"`` sets a model parameter; ``"objectives.weights"`` replaces the whole weight table and
        ``"objectives.weights.<name>"`` sets one entry.
        """
        cfg = copy.deepcopy(self)
        for key, value in dotted.items():
            cfg._set(str(key), value, source)
        cfg.validate(source)
        return cfg

    def _set(self, dotted: str, value: Any, source: str) -> None:
        parts = dotted.split(".")
        section = parts[0]
        if section not in SECTIONS:
            raise fail(source, dotted, f"unknown section '{section}'{suggest(section, SECTIONS)}"
                       f" — valid: {', '.join(SECTIONS)}")
        if len(parts) < 2 or not all(parts):
            raise fail(source, dotted, "expected a dotted key like 'section.field'")
        obj = getattr(self, section)
        name = parts[1]
        hints = _HINTS[type(obj)]
        if section in _NAMED and (name not in hints or name == "params"):
            # Any other key of [model] / [loss] is a parameter of the named model / loss; validate() checks it
            # against that entry's dataclass. `model.params.x` is accepted as a long spelling.
            if name == "params" and len(parts) == 2:
                obj.params = coerce(value, dict, dotted, source)
                return
            obj.params[".".join(parts[2:] if name == "params" else parts[1:])] = value
            return
        if name not in hints:
            raise fail(source, dotted, f"unknown key{suggest(name, hints)} — valid: {', '.join(hints)}")
        if len(parts) == 2:
            setattr(obj, name, coerce(value, hints[name], dotted, source))
        elif len(parts) == 3 and typing.get_origin(hints[name]) is None and hints[name] is dict:
            getattr(obj, name)[parts[2]] = value  # one entry of a dict field (objectives.weights.cls)
        else:
            raise fail(source, dotted, f"'{section}.{name}' has no sub-keys")

    # ---- validation: the one place a run config is checked ------------------------------------------------
    def validate(self, source: str = "config") -> RunConfig:
        """Check every field (types, ranges, names from the registries), the named model's and loss's own
        parameters, and what runs with what; raise RecipesetError naming ``source`` and the dotted key."""
        for section in SECTIONS:
            check_fields(getattr(self, section), section, source, skip=("params", "weights", "mix", "tasks"))
        d, t = self.data, self.train
        if not isinstance(d.dataset, str) or not d.dataset:
            raise fail(source, "data.dataset", "expected a dataset name or a file path")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", t.device):
            raise fail(source, "train.device", f"unknown device {t.device!r} — valid: auto, cpu, cuda, cuda:N, mps")
        for i, task in enumerate(self.eval.tasks):
            EVAL_TASKS.get(task, f"eval.tasks[{i}]", source)
        check_plain(d.options, "data.options", source)
        for i, entry in enumerate(d.mix):
            d.mix[i] = _check_mix_entry(entry, f"data.mix[{i}]", source)
        model_cls = MODELS.get(self.model.name)
        self.model.params = check_params(self.model.params, model_cls.config_class, "model",
                                         f"model '{self.model.name}'", source)
        try:
            model_cls.check_config(model_cls.config_class(**self.model.params))
        except RecipesetError as e:  # its messages name the model.* keys
            raise fail(source, "", str(e)) from None
        self.loss.params = self._loss_params(source)
        self._check_weights(source)
        resolve_objectives(self, source)
        if t.pack and (why := packing_refusal(self)):
            raise fail(source, "train.pack", f"{why}; set train.pack = false")
        return self

    def _loss_params(self, source: str) -> dict[str, Any]:
        entry = LOSSES.get(self.loss.name)
        own = list(entry.defaults())
        for key in self.loss.params:
            if key not in own:
                valid = [*(k for k in _HINTS[LossConfig] if k != "params"), *own]
                others = [n for n, e in LOSSES.items() if key in e.defaults()]
                hint = f" ('{key}' is a parameter of loss {', '.join(repr(n) for n in others)})" if others else ""
                raise fail(source, f"loss.{key}", f"unknown key for loss '{self.loss.name}'{suggest(key, valid)}"
                           f"{hint} — valid: {', '.join(valid)}")
        return check_params(self.loss.params, entry.params, "loss", f"loss '{self.loss.name}'", source)

    def _check_weights(self, source: str) -> None:
        ob = self.objectives
        for name, w in ob.weights.items():
            OBJECTIVES.get(name, f"objectives.weights.{name}", source)
            w = coerce(w, float, f"objectives.weights.{name}", source)
            check_value(w, {"ge": 0}, f"objectives.weights.{name}", source)
            ob.weights[name] = w
        if not any(w > 0 for w in ob.weights.values()):
            raise fail(source, "objectives.weights", "at least one objective needs a positive weight")

    def loss_params(self) -> Any:
        """The loss's own parameters as its dataclass (defaults filled in), or None for a loss without any."""
        entry = LOSSES.get(self.loss.name)
        return None if entry.params is None else entry.params(**self.loss.params)

    # ---- views ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict in the file format (model/loss params inline in their section); ``from_dict``
        inverts it."""
        out = {}
        for section in SECTIONS:
            values = dataclasses.asdict(getattr(self, section))
            if section in _NAMED:
                values = {**{k: v for k, v in values.items() if k != "params"}, **values["params"]}
            out[section] = values
        return out

    def flatten(self) -> dict[str, Any]:
        """``{"data.dataset": ..., "model.name": ..., "model.d_model": ..., "loss.name": ...}`` for MLflow params.

        Dict fields become one key per entry (``objectives.weights.clm``); lists stay lists (the tracker
        serialises them as JSON).
        """
        flat: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                if isinstance(value, dict):
                    for sub, v in value.items():
                        flat[f"{section}.{key}.{sub}"] = v
                else:
                    flat[f"{section}.{key}"] = value
        return flat

    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON of the fields that differ from their defaults, ``tracking`` (where
        results go) left out. Leaving out defaults keeps a config's hash when a later version adds a field, so
        the finished children of a grid are still recognised (and skipped) after an upgrade. A loss parameter
        counts as a default when it equals its loss's declared default (model parameters always count); a field of
        :data:`HASH_BASELINES` counts as one when it has the value listed there (``train.bucket_pool = 0``,
        ``train.pack = False``, ``objectives.held_out = "one"``, ``eval.query_draws = 1``)."""
        d, default = self.to_dict(), RunConfig().to_dict()
        d.pop("tracking")
        d["train"]["bucket_pool"] = bucket_pool_for(self)  # "auto" hashes as what it trains with
        d["train"]["pack"] = pack_for(self)  # likewise; False (every run before packing) leaves the hash alone
        if d["train"]["bucket_pool"] and position_averaged(self):  # rescaled per batch since grouping was made safe
            d["train"]["positions_rescaled"] = True
        if MODELS.get(self.model.name).masked_prediction != "held-out":  # held_out does not apply: as before it
            d["objectives"]["held_out"] = HASH_BASELINES["objectives"]["held_out"]
        default["loss"].update(LOSSES.get(self.loss.name).defaults())
        for section, values in HASH_BASELINES.items():
            default[section].update(values)
        changed = {section: {k: v for k, v in values.items() if default[section].get(k, _MISSING) != v}
                   for section, values in d.items()}
        return hashlib.sha256(canonical_json(changed).encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write the resolved config as JSON (atomically); ``load_config`` reads it back."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


BUCKET_POOL = 64


def positions_of(cfg: RunConfig, name: str) -> Any:
    """Objective ``name``'s ``positions`` declaration (the ``set`` objective: its loss's; see
    :class:`~recipeset.registry.ObjectiveEntry`): None when undeclared."""
    return (LOSSES.get(cfg.loss.name) if name == "set" else OBJECTIVES.get(name)).positions


def position_averaged(cfg: RunConfig) -> list[str]:
    """The objectives of ``cfg`` whose loss is a mean over a batch's positions (not one term per recipe): with
    length-grouped batches the trainer rescales them (``Objectives.weigh_positions``)."""
    model_cls = MODELS.get(cfg.model.name)
    return [name for name, weight in resolve_objectives(cfg).items()
            if weight > 0 and (fn := positions_of(cfg, name)) is not None and fn(1.0, cfg, model_cls) is not None]


def bucket_pool_for(cfg: RunConfig) -> int:
    """The run's ``train.bucket_pool``: as set, or, when None, :data:`BUCKET_POOL` when every objective it trains
    is one term per recipe (its ``positions`` declaration says so: Deep Sets' held-out MLM, cls, coherence, the
    multilabel and Hungarian set losses; ``pooled`` is not declared, see its registration), else 0. A loss
    averaged over positions is rescaled per batch when grouped (each position keeps one weight), but
    length-grouped batches still cost a 2000-step shuffle-order decoder on flavornet test MRR (seed 0: 0.330
    grouped, 0.335 grouped and rescaled, 0.360 plain), so grouping those stays a choice (``train.bucket_pool =
    64``)."""
    if cfg.train.bucket_pool is not None:
        return cfg.train.bucket_pool
    model_cls = MODELS.get(cfg.model.name)
    per_recipe = all((fn := positions_of(cfg, name)) is not None and fn(1.0, cfg, model_cls) is None
                     for name, weight in resolve_objectives(cfg).items() if weight > 0)
    return BUCKET_POOL if per_recipe else 0


def packing_refusal(cfg: RunConfig) -> str | None:
    """Why the run of ``cfg`` cannot pack several recipes a row (``train.pack``), in a few words; None when it
    can: its model accepts packed rows (:meth:`~recipeset.models.base.RecipeModel.packing_refusal`) and every
    objective it computes declares ``packs`` for that model (the ``set`` objective: its loss's;
    :func:`~recipeset.registry.runs_packed`)."""
    model_cls = MODELS.get(cfg.model.name)
    why = model_cls.packing_refusal(cfg.model.params)
    if why:
        return why
    for name in resolve_objectives(cfg):
        entry = LOSSES.get(cfg.loss.name) if name == "set" else OBJECTIVES.get(name)
        if not runs_packed(entry, model_cls):
            what = f"loss {cfg.loss.name!r}" if name == "set" else f"objective {name!r}"
            return f"{what} does not run on packed rows"
    return None


def resolve_run(cfg: RunConfig) -> RunConfig:
    """``cfg`` as a run saves it (``run_training``), in place: the objectives its model trains
    (:func:`resolve_objectives`) and ``train.pack`` decided (:func:`pack_for`). What a ``--resume`` and a grid's
    finished child are compared with; returns ``cfg``."""
    cfg.objectives.weights = resolve_objectives(cfg)
    cfg.train.pack = pack_for(cfg)  # a resumed run packs as it started, whatever a later version's default
    return cfg


def pack_for(cfg: RunConfig) -> bool:
    """The run's ``train.pack``: as set, or, when None, True where the run can pack (:func:`packing_refusal`:
    a decoder whose objectives are clm or a sequence set loss (standard, set-ar, min-perm, pooled), a Set
    Transformer whose objectives are the element mlm and rtd). Packing keeps each batch's recipes and its loss
    (tested to 1e-5), so unlike length grouping it changes nothing but the padding (and dropout's draws)."""
    if cfg.train.pack is not None:
        return cfg.train.pack
    return packing_refusal(cfg) is None


# The main job (`recipeset train` without --model or --config): the study's best recipe for completion, not the
# library default (RunConfig() is the GPT-style decoder, which the order study shows is the weakest set model).
# Dropout 0.3: the synthetic split puts every copy of a set in one split, so a frequent test set never occurs in
# training and an unregularised model learns it is improbable (78% of its MRR gap to the Bayes-optimal came from
# 5% of the test queries, such sets); dropout 0.3 took the test MRR from 0.855 / 0.849 to 0.873 / 0.872 / 0.864
# (seeds 0 / 1 / 2) and set micro-F1 from 0.62 to 0.69-0.70 (README, "Towards models worth using").
MAIN_JOB: dict[str, Any] = {"model.name": "deep-sets", "model.dropout": 0.3}

_MISSING = object()
# Fields whose default changed what a run trains: config_hash compares them with the value that reproduces the
# runs from before the change, not with today's default, so a finished run from before is not taken for one of
# today's defaults (a grid re-trains it) and a config that sets the old value still matches those runs.
# eval.query_draws: runs from before it scored one draw (and saved no per-query ranks), so a grid re-runs them.
# train.pack: runs from before packing trained on one recipe a row.
HASH_BASELINES: dict[str, dict[str, Any]] = {"train": {"bucket_pool": 0, "pack": False},
                                             "objectives": {"held_out": "one"}, "eval": {"query_draws": 1}}


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal configs give equal strings (and hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def resolve_objectives(cfg: RunConfig, source: str = "") -> dict[str, float]:
    """The objective weights a run trains, checked against its model and loss (one clear error otherwise).

    Left at the default ``{clm: 1}``, a run trains its model's natural objective for the loss (a decoder with
    ``set-ar`` trains ``set``; a set transformer ``mlm``). Every objective must be one the model trains with;
    the ``set`` objective's loss must train the model's set head.
    """
    model_cls = MODELS.get(cfg.model.name, "model.name", source)
    model, loss = cfg.model.name, cfg.loss.name
    weights = dict(cfg.objectives.weights)
    if weights == DEFAULT_OBJECTIVES:
        weights = model_cls.natural_objectives(loss != DEFAULT_LOSS, cfg.model.params)
    for name in weights:
        if name not in model_cls.objectives:
            raise fail(source, "", f"objective {name!r} does not run with model {model!r}; "
                       f"valid: {', '.join(model_cls.objectives)} (see README, 'What runs with what')")
    uses_loss = "set" in weights
    losses = losses_for(model_cls)
    if uses_loss and loss not in losses:
        raise fail(source, "", f"loss {loss!r} does not run with model {model!r}; "
                   f"valid: {', '.join(losses) or 'none'}")
    fields = {f.name for f in dataclasses.fields(model_cls.config_class)}
    needs = [k for k, _ in LOSSES.get(loss).model_params if k not in fields] if uses_loss else []
    if needs:
        raise fail(source, "", f"loss {loss!r} sets model field(s) {', '.join(needs)}, which model {model!r} lacks")
    if not uses_loss and loss != DEFAULT_LOSS:
        raise fail(source, "", f"loss {loss!r} is only used by the 'set' objective; add --objective set "
                   f"(objectives now: {', '.join(weights)})")
    try:
        model_cls.check_objectives(weights)
    except RecipesetError as e:
        raise fail(source, "", str(e)) from None
    if cfg.objectives.alpha is not None:
        tasks = [n for n in weights if OBJECTIVES.get(n).task]
        if not tasks or len(tasks) == len(weights):
            raise fail(source, "", "objectives.alpha needs a task objective (cls) and at least one LM objective")
    return weights


def _check_mix_entry(entry: Any, key: str, source: str) -> dict:
    if not isinstance(entry, Mapping):
        raise fail(source, key, f"expected a table {{dataset, path, weight}}, got {shown(entry)}")
    valid = ("dataset", "path", "weight", "options")
    for k in entry:
        if k not in valid:
            raise fail(source, f"{key}.{k}", f"unknown key{suggest(k, valid)} — valid: {', '.join(valid)}")
    if not isinstance(entry.get("dataset"), str) or not entry["dataset"]:
        raise fail(source, f"{key}.dataset", "every mix entry needs a dataset name or path")
    out = {"dataset": entry["dataset"], "path": entry.get("path"), "weight": entry.get("weight", 1.0)}
    if out["path"] is not None and not isinstance(out["path"], str):
        raise fail(source, f"{key}.path", f"expected str, got {shown(out['path'])}")
    out["weight"] = coerce(out["weight"], float, f"{key}.weight", source)
    if "options" in entry:  # only when given: the entries of configs from before keep their hash
        out["options"] = coerce(entry["options"], dict, f"{key}.options", source)
        check_plain(out["options"], f"{key}.options", source)
    if out["weight"] <= 0:
        raise fail(source, f"{key}.weight", f"must be > 0, got {out['weight']}")
    return out


def read_table_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a TOML or JSON file into a dict; a missing file or a syntax error is a RecipesetError."""
    path = Path(path)
    if not path.is_file():
        raise RecipesetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise RecipesetError(f"{path}: unsupported config format '{suffix}' — use .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
        data = parse_toml(text) if suffix == ".toml" else parse_json(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipesetError(f"{path}: invalid TOML: {e}") from None
    except json.JSONDecodeError as e:
        raise RecipesetError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except UnicodeDecodeError:
        raise RecipesetError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise RecipesetError(f"{path}: expected a table of sections at the top level")
    return data


def load_config(path: str | os.PathLike) -> RunConfig:
    """Read and validate a run config from TOML or JSON (unknown keys and names raise, naming file and key)."""
    return RunConfig.from_dict(read_table_file(path), source=str(path))
