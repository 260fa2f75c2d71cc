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
import difflib
import hashlib
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipeset.errors import RecipesetError
from recipeset.io_utils import atomic_write_text

# The names shared by the CLI, config files, MLflow params and code (DESIGN.md, "Names").
MODELS = ("decoder", "set-transformer", "deep-sets")
LOSSES = ("standard", "hungarian", "set-ar", "min-perm", "pooled", "multilabel")
OBJECTIVES = ("clm", "mlm", "cls", "rtd", "coherence", "set")
ORDERS = ("frequency", "alphabetical", "random-fixed", "shuffle", "k-perms", "given")  # given: the data's own
SCHEDULES = ("cosine", "inverse-sqrt", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CLASS_WEIGHTS = ("none", "balanced")  # balanced: w_c = N / (C · n_c) over the training split, as scikit-learn's
EVAL_TASKS = ("completion", "set-completion", "cuisine", "order-sensitivity", "likelihood")


# ---- error helpers --------------------------------------------------------------------------------------
def suggest(word: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _fail(source: str, key: str, message: str) -> RecipesetError:
    where = f"{source}: {key}" if key else source
    return RecipesetError(f"{where}: {message}")


def check_name(kind: str, value: Any, valid: Iterable[str], key: str = "", source: str = "config") -> str:
    """Return ``value`` if it is one of ``valid``, else raise "unknown <kind> 'x' (did you mean 'y'?) — valid: ..."."""
    valid = tuple(valid)
    if value not in valid:
        raise _fail(source, key, f"unknown {kind} {value!r}{suggest(value, valid)} — valid: {', '.join(valid)}")
    return value


def validate_model_params(name: str, params: Mapping[str, Any], known_fields: Iterable[str],
                          source: str = "config") -> None:
    """Raise if ``params`` (the ``[model]`` section minus ``name``) has a key the model's config lacks.

    The model registry calls this with the field names of the model's config dataclass, e.g.
    ``validate_model_params("decoder", cfg.model.params, [f.name for f in dataclasses.fields(DecoderConfig)])``.
    """
    known = tuple(known_fields)
    for key in params:
        if key not in known:
            raise _fail(source, f"model.{key}", f"unknown parameter for model '{name}'{suggest(key, known)}"
                        f" — valid: {', '.join(sorted(known))}")


# ---- sections --------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    dataset: str = "synthetic"        # a dataset name (synthetic, flavornet, whatscooking) or a .csv/.jsonl path
    path: str | None = None           # where the dataset's files are (None: the default data directory)
    order: str = "frequency"          # ingredient order fed to sequence models (ORDERS)
    k_perms: int = 4                  # permutations per recipe for order = "k-perms"
    min_count: int = 1                # vocabulary: minimum training count of an ingredient
    split_seed: int = 0               # the 80/10/10 group split; study seeds never change it
    max_len: int | None = None        # drop recipes with more ingredients than this
    n_recipes: int | None = None      # synthetic generator size / cap on loaded recipes
    ordered: bool = False             # synthetic: emit ingredients in cooking order (order carries information)
    lenient: bool = False             # skip malformed rows (with a count) instead of failing
    mix: list[dict] = field(default_factory=list)  # weighted mixing: [{dataset, path, weight}, ...]


@dataclass
class ModelConfig:
    name: str = "decoder"             # MODELS
    params: dict = field(default_factory=dict)  # the model config dataclass's fields (checked by the registry)


@dataclass
class LossConfig:
    name: str = "standard"            # LOSSES
    null_weight: float = 0.1          # hungarian: down-weight of the ∅ class (DETR's eos_coef)
    k: int = 4                        # min-perm: sampled orders per recipe
    label_smoothing: float = 0.0      # for every cross-entropy
    truncate_logp: float | None = None  # hungarian: OAXE-style truncation of low-probability matches
    stop_weight: float = 1.0          # pooled: weight of the class-balanced stop loss
    cardinality_weight: float = 0.0   # pooled: weight of the set-size penalty


@dataclass
class ObjectivesConfig:
    weights: dict = field(default_factory=lambda: {"clm": 1.0})  # objective name -> loss weight
    detach: bool = False              # train the task heads on detached features ("detach_CLS")
    alpha: float | None = None        # fine-tuning: L = α·L_task + (1−α)·L_LM (None: plain weighted sum)
    mlm_prob: float = 0.15            # MLM: fraction of each set masked (at least one)
    rtd_prob: float = 0.15            # RTD: fraction of each set replaced
    null_prob: float = 0.1            # MLM on an encoder: chance of a [MASK] slot whose target is [NULL]
    cls_class_weight: str = "none"    # CLASS_WEIGHTS: the cuisine loss's per-class weights


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None      # stop after this many optimizer steps (matched compute); wins over epochs
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01        # AdamW, only on >= 2-D weights
    warmup_steps: int = 100
    schedule: str = "cosine"          # SCHEDULES
    clip: float = 1.0                 # gradient-norm clipping (0: off)
    seed: int = 0                     # initialisation and data order (not the split)
    deterministic: bool = False       # torch deterministic kernels
    eval_every: int | None = None     # validation every N steps (None: every epoch)
    checkpoint_every: int = 200       # atomic checkpoint every N steps
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    early_stopping_metric: str = "val/loss"
    curriculum: bool = False          # small sets first
    num_workers: int = 0              # DataLoader workers
    device: str = "auto"              # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"           # PRECISIONS (bf16/fp16 autocast only on GPU)
    init_from: str | None = None      # fine-tuning: a model dir (relative to the cwd) to start from; "{seed}" in
    #                                   it becomes train.seed (grid variants); the CLI's --init-from wins


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: list(EVAL_TASKS))
    seed: int = 0                     # held-out ingredients and queries (same for every model)
    joint: bool = True                # decoders: also report `joint` scoring
    max_queries: int | None = None    # cap on evaluation queries (None: all)
    joint_max_queries: int = 500      # decoders' `joint` scoring costs a forward pass per candidate
    val_max_queries: int | None = 2000  # the validation evaluation (model selection) on this many recipes


@dataclass
class TrackingConfig:
    experiment: str = "recipeset"     # MLflow experiment name
    tracking_uri: str | None = None   # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    run_name: str | None = None


SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "loss": LossConfig, "objectives": ObjectivesConfig,
    "train": TrainConfig, "eval": EvalConfig, "tracking": TrackingConfig,
}


# ---- type checking of values ------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int, float, bool, str, list, dict, X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    base = origin or tp
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, list | tuple),
        dict: isinstance(value, Mapping),
    }[base]
    if not ok:
        raise _fail(source, key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if base is float:
        value = float(value)
        if math.isnan(value):
            raise _fail(source, key, "NaN is not a valid value")
    elif base is list:
        value = list(value)
    elif base is dict:
        value = dict(value)
    return value


_HINTS: dict[type, dict[str, Any]] = {cls: typing.get_type_hints(cls) for cls in SECTIONS.values()}


# ---- the run config ----------------------------------------------------------------------------------------
@dataclass
class RunConfig:
    """Everything a run needs; see the section dataclasses for the fields and defaults."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    # ---- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> RunConfig:
        """Build and validate from nested sections (``{"model": {"name": ..., "d_model": ...}, ...}``)."""
        if not isinstance(d, Mapping):
            raise _fail(source, "", f"expected a table of sections, got {type(d).__name__}")
        cfg = cls()
        for section, values in d.items():
            if section not in SECTIONS:
                raise _fail(source, str(section), f"unknown section{suggest(section, SECTIONS)}"
                            f" — valid: {', '.join(SECTIONS)}")
            if not isinstance(values, Mapping):
                raise _fail(source, section, f"expected a table, got {type(values).__name__} {values!r}")
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
            raise _fail(source, dotted, f"unknown section '{section}'{suggest(section, SECTIONS)}"
                        f" — valid: {', '.join(SECTIONS)}")
        if len(parts) < 2 or not all(parts):
            raise _fail(source, dotted, "expected a dotted key like 'section.field'")
        obj = getattr(self, section)
        name = parts[1]
        if section == "model" and name != "name":
            # Every model key but `name` is a model parameter; the model registry checks it against the model's
            # config dataclass (validate_model_params). `model.params.x` is accepted as a long spelling.
            if name == "params" and len(parts) == 2:
                obj.params = _coerce(value, dict, dotted, source)
                return
            param = ".".join(parts[2:] if name == "params" else parts[1:])
            obj.params[param] = value
            return
        hints = _HINTS[type(obj)]
        if name not in hints:
            valid = list(hints) + (["<model parameter>"] if section == "model" else [])
            raise _fail(source, dotted, f"unknown key{suggest(name, hints)} — valid: {', '.join(valid)}")
        if len(parts) == 2:
            setattr(obj, name, _coerce(value, hints[name], dotted, source))
        elif len(parts) == 3 and typing.get_origin(hints[name]) is None and hints[name] is dict:
            getattr(obj, name)[parts[2]] = value  # one entry of a dict field (objectives.weights.cls)
        else:
            raise _fail(source, dotted, f"'{section}.{name}' has no sub-keys")

    # ---- validation --------------------------------------------------------------------------------------
    def validate(self, source: str = "config") -> RunConfig:
        """Check names and ranges; raise RecipesetError naming ``source`` and the dotted key."""
        d, m, lo, ob, t, ev = self.data, self.model, self.loss, self.objectives, self.train, self.eval
        check_name("order", d.order, ORDERS, "data.order", source)
        check_name("model", m.name, MODELS, "model.name", source)
        check_name("loss", lo.name, LOSSES, "loss.name", source)
        check_name("schedule", t.schedule, SCHEDULES, "train.schedule", source)
        check_name("precision", t.precision, PRECISIONS, "train.precision", source)
        check_name("class weighting", ob.cls_class_weight, CLASS_WEIGHTS, "objectives.cls_class_weight", source)
        if not isinstance(d.dataset, str) or not d.dataset:
            raise _fail(source, "data.dataset", "expected a dataset name or a file path")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", t.device):
            raise _fail(source, "train.device", f"unknown device {t.device!r} — valid: auto, cpu, cuda, cuda:N, mps")
        for i, task in enumerate(ev.tasks):
            check_name("evaluation task", task, EVAL_TASKS, f"eval.tasks[{i}]", source)
        for name, w in ob.weights.items():
            check_name("objective", name, OBJECTIVES, f"objectives.weights.{name}", source)
            w = _coerce(w, float, f"objectives.weights.{name}", source)
            if w < 0:
                raise _fail(source, f"objectives.weights.{name}", f"weight must be >= 0, got {w}")
            ob.weights[name] = w
        if not any(w > 0 for w in ob.weights.values()):
            raise _fail(source, "objectives.weights", "at least one objective needs a positive weight")
        for key, value in m.params.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise _fail(source, f"model.{key}", "a model parameter name must be an identifier")
            if value is None or isinstance(value, Mapping):
                raise _fail(source, f"model.{key}", f"expected a number, string, bool or list, got {value!r}")
        for i, entry in enumerate(d.mix):
            d.mix[i] = _check_mix_entry(entry, f"data.mix[{i}]", source)
        ranges = [  # (dotted key, value, lower bound, inclusive, upper bound)
            ("data.k_perms", d.k_perms, 1, True, None), ("data.min_count", d.min_count, 1, True, None),
            ("data.max_len", d.max_len, 1, True, None), ("data.n_recipes", d.n_recipes, 1, True, None),
            ("loss.null_weight", lo.null_weight, 0, True, None), ("loss.k", lo.k, 1, True, None),
            ("loss.label_smoothing", lo.label_smoothing, 0, True, 1),
            ("loss.stop_weight", lo.stop_weight, 0, True, None),
            ("loss.cardinality_weight", lo.cardinality_weight, 0, True, None),
            ("objectives.alpha", ob.alpha, 0, True, 1), ("objectives.mlm_prob", ob.mlm_prob, 0, False, 1),
            ("objectives.rtd_prob", ob.rtd_prob, 0, False, 1), ("objectives.null_prob", ob.null_prob, 0, True, 1),
            ("train.epochs", t.epochs, 1, True, None), ("train.max_steps", t.max_steps, 1, True, None),
            ("train.batch_size", t.batch_size, 1, True, None), ("train.lr", t.lr, 0, False, None),
            ("train.weight_decay", t.weight_decay, 0, True, None),
            ("train.warmup_steps", t.warmup_steps, 0, True, None), ("train.clip", t.clip, 0, True, None),
            ("train.eval_every", t.eval_every, 1, True, None),
            ("train.checkpoint_every", t.checkpoint_every, 1, True, None),
            ("train.early_stopping_patience", t.early_stopping_patience, 1, True, None),
            ("train.num_workers", t.num_workers, 0, True, None),
            ("eval.max_queries", ev.max_queries, 1, True, None),
        ]
        for key, value, lo_bound, inclusive, hi in ranges:
            if value is None:
                continue
            bad = value < lo_bound if inclusive else value <= lo_bound
            if bad or (hi is not None and value > hi):
                rel = ">=" if inclusive else ">"
                bound = f"{rel} {lo_bound}" + (f" and <= {hi}" if hi is not None else "")
                raise _fail(source, key, f"must be {bound}, got {value}")
        if lo.label_smoothing >= 1:
            raise _fail(source, "loss.label_smoothing", f"must be < 1, got {lo.label_smoothing}")
        return self

    # ---- views ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict in the file format (model params inline in ``model``); ``from_dict`` inverts it."""
        out = {}
        for section in SECTIONS:
            values = dataclasses.asdict(getattr(self, section))
            if section == "model":
                values = {"name": values["name"], **values["params"]}
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
        the finished children of a grid are still recognised (and skipped) after an upgrade."""
        d, default = self.to_dict(), RunConfig().to_dict()
        d.pop("tracking")
        changed = {section: {k: v for k, v in values.items() if default[section].get(k, _MISSING) != v}
                   for section, values in d.items()}
        return hashlib.sha256(canonical_json(changed).encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write the resolved config as JSON (atomically); ``load_config`` reads it back."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


_MISSING = object()


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal configs give equal strings (and hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _check_mix_entry(entry: Any, key: str, source: str) -> dict:
    if not isinstance(entry, Mapping):
        raise _fail(source, key, f"expected a table {{dataset, path, weight}}, got {entry!r}")
    valid = ("dataset", "path", "weight")
    for k in entry:
        if k not in valid:
            raise _fail(source, f"{key}.{k}", f"unknown key{suggest(k, valid)} — valid: {', '.join(valid)}")
    if not isinstance(entry.get("dataset"), str) or not entry["dataset"]:
        raise _fail(source, f"{key}.dataset", "every mix entry needs a dataset name or path")
    out = {"dataset": entry["dataset"], "path": entry.get("path"), "weight": entry.get("weight", 1.0)}
    if out["path"] is not None and not isinstance(out["path"], str):
        raise _fail(source, f"{key}.path", f"expected str, got {out['path']!r}")
    out["weight"] = _coerce(out["weight"], float, f"{key}.weight", source)
    if out["weight"] <= 0:
        raise _fail(source, f"{key}.weight", f"must be > 0, got {out['weight']}")
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
        if suffix == ".toml":
            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
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
