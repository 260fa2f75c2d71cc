"""Registries: one per extension point. Adding a model, a loss, an objective, an order, a dataset or an
evaluation task is one definition plus one registration, and everything else — config validation, the CLI's
choices and help, the README's "what runs with what" table — is derived from the registries::

    from recipeset.registry import register_loss, register_model

    @register_loss("my-loss", heads=("pooled",), help="...")
    def my_loss(objectives, model, batch, generator, cache) -> torch.Tensor: ...

    @register_model
    class MyModel(RecipeModel):          # model_type, config_class, objectives, set_head (see RecipeModel)
        ...

What runs with what is a relation between *capabilities*, not names: a model declares the objectives it trains
with and its ``set_head`` (how it predicts a set: ``sequence`` — a decoder's next-ingredient steps; ``slots`` —
K parallel slot distributions; ``pooled`` — one ``[B, V]`` vector of candidate logits); a set loss declares the
heads it trains. So a new loss runs with every model whose head it names, and a new model with every loss of its
head, without editing either.

This module is the bottom layer (it imports no torch): the built-in entries register themselves when their
modules are imported, which :func:`load_builtins` does on the first lookup (the one deliberate function-level
import of the package: the plug-in loader). It then imports the plug-ins: the modules named in
``$RECIPESET_PLUGINS`` (comma-separated) and those an installed package declares under the entry-point group
``recipeset.plugins`` — so ``recipeset train --loss my-loss`` works from the shell.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from recipeset.errors import RecipesetError, shown

T = TypeVar("T")

#: How a model predicts a set (see the module docstring); a set loss names the heads it trains.
SET_HEADS = ("sequence", "slots", "pooled")
#: Modules whose import registers the built-in entries.
BUILTIN_MODULES = ("recipeset.models", "recipeset.objectives.tasks", "recipeset.data.ordering",
                   "recipeset.data.sources", "recipeset.evaluation")
PLUGINS_ENV = "RECIPESET_PLUGINS"
PLUGIN_GROUP = "recipeset.plugins"
_loaded = False


def load_builtins() -> None:
    """Import the modules that register the built-in entries, then the plug-ins (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise RecipesetError(f"${PLUGINS_ENV}: cannot import plug-in module {module!r} ({e}); put it on "
                                 "PYTHONPATH or fix the name") from None
    for entry_point in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        entry_point.load()


def suggest(word: Any, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or an empty string."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Name → entry for one extension point. Lookups load the built-ins first; :meth:`get` of an unknown name
    raises a one-line :class:`RecipesetError` with a suggestion and the valid names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "model", "loss", ... (used in messages)
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if not isinstance(name, str) or not name or name != name.strip():
            raise RecipesetError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries:
            raise RecipesetError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a temporary one)."""
        self._entries.pop(name, None)

    def get(self, name: Any, key: str = "", source: str = "") -> T:
        """The entry called ``name``; else "<source>: <key>: unknown <kind> 'x' (did you mean 'y'?) — valid: ..."."""
        load_builtins()
        if not isinstance(name, str) or name not in self._entries:
            where = ": ".join(p for p in (source, key) if p)
            raise RecipesetError(f"{where + ': ' if where else ''}unknown {self.kind} {shown(name)}"
                                 f"{suggest(name, self._entries)} — valid: {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        load_builtins()
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        load_builtins()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


# ---- entries ---------------------------------------------------------------------------------------------
Packs = bool | Callable[[type], bool]  # ObjectiveEntry.packs: a declaration, or a test of the model class


@dataclass(frozen=True)
class LossEntry:
    """A loss of the ``set`` objective. ``fn(objectives, model, batch, generator, cache) -> scalar tensor``."""

    name: str
    fn: Callable[..., Any]
    heads: tuple[str, ...]                 # the set heads (SET_HEADS) it trains
    params: type | None = None             # dataclass of its own config fields (``loss.<field>``), with ranges
    perplexity: bool = False               # exp(loss) is a per-ingredient perplexity (logged as ppl/set)
    help: str = ""
    model_params: tuple[tuple[str, Any], ...] = ()  # model config fields it sets (multilabel: sigmoid outputs)
    positions: Callable[..., Any] | None = None  # terms per recipe, see ObjectiveEntry.positions
    packs: Packs = False  # computed on packed rows when the run packs, see ObjectiveEntry.packs

    def defaults(self) -> dict[str, Any]:
        if self.params is None:
            return {}
        return {f.name: f.default for f in dataclasses.fields(self.params)}


@dataclass(frozen=True)
class ObjectiveEntry:
    """A training objective. ``fn(objectives, model, batch, generator, cache) -> scalar tensor``."""

    name: str
    fn: Callable[..., Any]
    head: str | None = None                # the model config flag it needs switched on (e.g. cuisine_head)
    task: bool = False                     # a supervised task: ``objectives.alpha`` weighs it against the rest
    perplexity: bool = False
    help: str = ""
    # How the loss weighs a batch's recipes, for length-grouped batches (``train.bucket_pool``):
    # ``positions(n, cfg, model_cls)`` -> the expected number of terms a recipe of ``n`` ingredients (float tensor
    # ``[B]``) adds to a loss that is the mean over a batch's terms (a [B] tensor), or None when the loss is one
    # term per recipe (:data:`PER_RECIPE`). Undeclared (None): length-grouped batches stay off by default.
    positions: Callable[..., Any] | None = None
    # True: it runs the model through ``Objectives.run`` only and uses its per-position outputs only (logits,
    # hidden states, RTD logits; not pooled vectors or per-set heads), so a run can pack several recipes a row
    # (``train.pack``) and get the same loss. ``packs(model_cls) -> bool`` when that depends on the model (the
    # element MLM, not a held-out model's; pooled on a sequence head, not on slots): see :func:`runs_packed`.
    packs: Packs = False


@dataclass(frozen=True)
class OrderEntry:
    """An ingredient order for sequence models. ``key(sets, vocab, seed, epoch) -> [total] sort key`` (None:
    keep the order as given)."""

    name: str
    key: Callable[..., Any]
    kind: str                              # "canonical" (a total order of the vocabulary) | "random" | "given"
    per_epoch: bool = False                # a fresh order every epoch (shuffle augmentation)
    copies: bool = False                   # data.k_perms copies of each recipe, each in its own fixed order
    help: str = ""


@dataclass(frozen=True)
class DatasetEntry:
    """A named dataset. ``load(path, lenient, **options) -> RecipeTable``."""

    name: str
    load: Callable[..., Any]
    help: str = ""


@dataclass(frozen=True)
class EvalTaskEntry:
    """An evaluation task. ``run(scorer, sets, options) -> {"metric": value}`` (``options``: seed, modes, ...);
    its metrics are logged as ``<name>/<metric>``."""

    name: str
    run: Callable[..., Any]
    oracle: bool = True                    # the synthetic generator's Bayes-optimal scorer reports it too
    help: str = ""
    min_size: int = 1                      # the smallest recipe it makes a query of (smaller ones are skipped)


MODELS: Registry[Any] = Registry("model")              # name -> RecipeModel subclass
LOSSES: Registry[LossEntry] = Registry("loss")
OBJECTIVES: Registry[ObjectiveEntry] = Registry("objective")
ORDERS: Registry[OrderEntry] = Registry("order")
DATASETS: Registry[DatasetEntry] = Registry("dataset")
EVAL_TASKS: Registry[EvalTaskEntry] = Registry("evaluation task")


# ---- registration decorators ---------------------------------------------------------------------------------
def register_model(cls: T) -> T:
    """Class decorator: register a :class:`~recipeset.models.base.RecipeModel` subclass under its ``model_type``."""
    for attr in ("model_type", "config_class", "objectives", "set_head"):
        if not getattr(cls, attr, None):
            raise RecipesetError(f"model class {getattr(cls, '__name__', cls)} needs a {attr}")
    if cls.set_head not in SET_HEADS:
        raise RecipesetError(f"{cls.__name__}.set_head must be one of {SET_HEADS}, got {cls.set_head!r}")
    MODELS.register(cls.model_type, cls)
    return cls


def runs_packed(entry: LossEntry | ObjectiveEntry, model_cls: type) -> bool:
    """Whether objective or loss ``entry`` computes its loss on packed rows for a model of ``model_cls`` (its
    ``packs`` declaration)."""
    return entry.packs(model_cls) if callable(entry.packs) else bool(entry.packs)


def PER_RECIPE(n: Any, cfg: Any, model_cls: Any) -> None:
    """``positions`` of a loss that is one term per recipe (the mean over the batch's recipes)."""
    return None


def register_loss(name: str, *, heads: tuple[str, ...], params: type | None = None, perplexity: bool = False,
                  help: str = "", model_params: dict[str, Any] | None = None,
                  positions: Callable[..., Any] | None = None, packs: Packs = False) -> Callable[[Callable], Callable]:
    """Decorator: register a set loss for the models whose ``set_head`` is in ``heads``; ``model_params`` are
    model config fields a run with this loss sets (under the user's own); ``positions`` and ``packs`` as for
    :class:`ObjectiveEntry`."""
    bad = [h for h in heads if h not in SET_HEADS]
    if not heads or bad:
        raise RecipesetError(f"loss {name!r}: heads must be a non-empty subset of {SET_HEADS}, got {heads}")

    def deco(fn: Callable) -> Callable:
        LOSSES.register(name, LossEntry(name, fn, tuple(heads), params, perplexity, help,
                                        tuple((model_params or {}).items()), positions, packs))
        return fn

    return deco


def register_objective(name: str, *, head: str | None = None, task: bool = False, perplexity: bool = False,
                       help: str = "", positions: Callable[..., Any] | None = None,
                       packs: Packs = False) -> Callable[[Callable], Callable]:
    """Decorator: register a training objective (``positions``, ``packs``: see :class:`ObjectiveEntry`)."""

    def deco(fn: Callable) -> Callable:
        OBJECTIVES.register(name, ObjectiveEntry(name, fn, head, task, perplexity, help, positions, packs))
        return fn

    return deco


# ---- derived views -------------------------------------------------------------------------------------------
def losses_for(model_cls: Any) -> tuple[str, ...]:
    """The set losses a model class runs with (the losses that train its ``set_head``)."""
    return tuple(name for name, entry in LOSSES.items() if model_cls.set_head in entry.heads)


def what_runs_with_what() -> str:
    """The README's "what runs with what" table (Markdown), from the model and loss registries."""
    rows = ["| model | what it is | objectives | losses of the `set` objective | `complete` stops |",
            "|---|---|---|---|---|"]
    for name, cls in MODELS.items():
        about = getattr(cls, "about", {})
        losses = ", ".join(f"`{x}`" for x in losses_for(cls)) if "set" in cls.objectives else "—"
        rows.append(f"| `{name}` | {about.get('what', '')} | {', '.join(f'`{o}`' for o in cls.objectives)} | "
                    f"{losses} | {about.get('stops', '')} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m recipeset.registry: print the README table
    # the entries register into the imported module recipeset.registry, not into this __main__ copy
    from recipeset.registry import what_runs_with_what as table

    print(table())
