"""The evaluation protocol in one place: which queries every model and baseline is scored and selected on, how
the main job evaluates a model, the generator's reference ceilings, and the one stop-rule tuner.

- Queries: test on :func:`test_subset` (a seeded subset of ``eval.max_queries`` recipes), validation (model and
  baseline selection) on :func:`val_subset`, decoders' ``joint`` scoring on :func:`joint_subset`. The draws
  depend on ``eval.seed`` only, so models, baselines and the oracle see the same queries. Completion scores
  ``eval.query_draws`` held-out draws per recipe (decoders' ``joint``: one); a run's per-query ranks
  (:func:`per_query_table`, saved as :data:`PER_QUERY_FILE`) let :mod:`recipeset.stats` compare two runs paired.
- Stop rules: set completion stops on a probability threshold (models: ``config.stop_threshold``; baselines also
  on a fixed size). :func:`tune_stop_rule` picks, for both, the rule with the best validation set-completion
  micro-F1 from one grid (:data:`STOP_THRESHOLDS`, :data:`STOP_SIZES`), every rule scored from one pass
  (:func:`prefix_rule_f1s`: the baselines' ranking, or the models' greedy completion at the lowest threshold).
- Tasks: ``eval.tasks`` names the registered evaluation tasks (:data:`recipeset.registry.EVAL_TASKS`), one name
  each in the config, the code and the metric keys.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from recipeset.config import CUISINE_MAX_ACCURACY_DROP, RunConfig
from recipeset.data.prepare import PreparedData
from recipeset.data.sets import EncodedSets
from recipeset.data.sources.synthetic import SyntheticOracle
from recipeset.data.vocab import PAD, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.evaluation import (
    SET_MIN_SIZE,
    NoSetQueries,
    complete_halves,
    cuisine_probs,
    evaluate_all,
    evaluate_set_completion,
    macro_f1,
    set_prf,
)
from recipeset.progress import phase
from recipeset.registry import EVAL_TASKS

log = logging.getLogger(__name__)

# The stop-rule grids of models and baselines: the thresholds are the union of the models' former grid
# (0.02-0.5) and the baselines' (0.01-0.3), up to 0.9 for the decoders' rule (go on while 1 − p([EOS]) ≥ it: a
# shuffle decoder picked the former top, 0.5, and still predicted 8.9 ingredients for 4.6); fixed sizes are for
# the baselines, whose rule can be either.
STOP_THRESHOLDS: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                      0.8, 0.9)
STOP_SIZES: tuple[int, ...] = tuple(range(1, 16))


# ---- query subsets ---------------------------------------------------------------------------------------------
def subset_rows(n_total: int, caps: Sequence[int | None], seed: int = 0) -> np.ndarray:
    """The rows of a split of ``n_total`` recipes that :func:`eval_subset` keeps with each cap of ``caps`` in turn
    (a subset of the subset), in split order."""
    rows = np.arange(n_total)
    for n in caps:
        if n is not None and len(rows) > n:
            rng = np.random.default_rng([seed, 0xE7A1])
            rows = rows[np.sort(rng.choice(len(rows), size=n, replace=False))]
    return rows


def eval_subset(sets: EncodedSets, n: int | None, seed: int = 0) -> EncodedSets:
    """A seeded random subset of ``n`` recipes (in their original order), the same for every model; all of
    them when ``n`` is None. (Splits list recipes grouped by source and cuisine, so a prefix would be biased.)"""
    rows = subset_rows(len(sets), [n], seed)
    return sets if len(rows) == len(sets) else sets.take(rows)


def test_caps(cfg: RunConfig) -> list[int | None]:
    """The caps of :func:`test_subset` (for :func:`subset_rows`)."""
    return [cfg.eval.max_queries]


def val_caps(cfg: RunConfig) -> list[int | None]:
    """The caps of :func:`val_subset` (for :func:`subset_rows`)."""
    return [cfg.eval.val_max_queries, cfg.eval.max_queries]


def joint_caps(cfg: RunConfig) -> list[int | None]:
    """The caps of :func:`joint_subset` (for :func:`subset_rows`)."""
    return [cfg.eval.max_queries, cfg.eval.joint_max_queries]


def _capped(sets: EncodedSets, caps: Sequence[int | None], seed: int) -> tuple[EncodedSets, np.ndarray]:
    """The subset of ``sets`` that ``caps`` keep (``sets`` itself when they keep all) and its rows in ``sets``."""
    rows = subset_rows(len(sets), caps, seed)
    return (sets if len(rows) == len(sets) else sets.take(rows)), rows


def test_subset(test_eval: EncodedSets, cfg: RunConfig) -> EncodedSets:
    """The test queries every model and baseline is reported on: ``eval.max_queries`` seeded recipes."""
    return _capped(test_eval, test_caps(cfg), cfg.eval.seed)[0]


test_subset.__test__ = False  # a protocol function, not a test (pytest collects ``test_*`` names it imports)
test_caps.__test__ = False


def val_subset(val_eval: EncodedSets, cfg: RunConfig) -> EncodedSets:
    """The validation queries a model (or baseline) is selected on: ``eval.val_max_queries`` seeded recipes of
    the validation split, then capped at ``eval.max_queries`` like every evaluation."""
    return _capped(val_eval, val_caps(cfg), cfg.eval.seed)[0]


def joint_subset(sets: EncodedSets, cfg: RunConfig) -> EncodedSets:
    """The queries decoders are scored ``joint`` on: ``eval.joint_max_queries`` seeded recipes of the
    evaluated ones (``eval.max_queries``)."""
    return _capped(sets, joint_caps(cfg), cfg.eval.seed)[0]


# ---- per-query ranks --------------------------------------------------------------------------------------------
PER_QUERY_FILE = "per_query_ranks.csv.gz"
PER_QUERY_COLUMNS = ("split", "mode", "recipe", "draw", "target", "rank")


def per_query_table(splits: Mapping[str, tuple[Sequence[pd.DataFrame], np.ndarray | None]]) -> pd.DataFrame:
    """One table of the completion ranks of a run: ``{split: (frames, rows)}`` — the frames ``evaluate_all``
    collected (``per_query``) on a subset of the split, whose row ``i`` is the split's row ``rows[i]`` (None: the
    whole split) — as columns :data:`PER_QUERY_COLUMNS`, ``recipe`` a row of the split."""
    parts = []
    for split, (frames, rows) in splits.items():
        for frame in frames:
            recipe = frame["recipe"].to_numpy() if rows is None else np.asarray(rows)[frame["recipe"].to_numpy()]
            parts.append(frame.assign(split=split, recipe=recipe))
    if not parts:
        return pd.DataFrame(columns=list(PER_QUERY_COLUMNS))
    return pd.concat(parts, ignore_index=True)[list(PER_QUERY_COLUMNS)]


def save_per_query(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a per-query table (:func:`per_query_table`, plus any label columns) as gzipped CSV, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, index=False, compression="gzip")
    os.replace(tmp, path)
    return path


def load_per_query(path: str | os.PathLike) -> pd.DataFrame:
    """Read back :func:`save_per_query`'s table (``recipe``, ``draw`` and ``target`` as int64, ``rank`` float64)."""
    return pd.read_csv(path, dtype={"split": str, "mode": str, "recipe": np.int64, "draw": np.int64,
                                    "target": np.int64, "rank": np.float64})


# ---- models -----------------------------------------------------------------------------------------------------
def evaluate_model(model, sets: EncodedSets, cfg: RunConfig, joint: bool | None = None,
                   per_query: list[pd.DataFrame] | None = None) -> dict[str, float]:
    """The evaluation protocol on ``sets`` (a split encoded with [UNK] for unknown ingredients).

    Completion scores ``eval.query_draws`` held-out draws per recipe; its per-query ranks (rows of ``sets``) are
    appended to ``per_query`` when given (for :func:`per_query_table`). Decoders are also scored ``joint`` (on a
    seeded subset of ``eval.joint_max_queries`` recipes, one draw — draw 0: it costs one forward pass per
    candidate and order, the bulk of a decoder's evaluation, and a budget of queries buys more on more recipes
    than on more draws of the same ones) unless ``joint`` is False (default: ``eval.joint``). Order sensitivity
    is measured with ``next`` scoring only.
    """
    tasks = cfg.eval.tasks
    test, rows = _capped(sets, test_caps(cfg), cfg.eval.seed)
    frames: list[pd.DataFrame] = []
    out = evaluate_all(model, test, tasks=tasks, seed=cfg.eval.seed, modes=("next",), draws=cfg.eval.query_draws,
                       per_query=frames)
    _add_per_query(per_query, frames, rows)
    joint = cfg.eval.joint if joint is None else joint
    if "joint" in getattr(model, "scoring_modes", ()) and joint and "completion" in tasks:
        joint_sets, rows = _capped(sets, joint_caps(cfg), cfg.eval.seed)
        frames = []
        scored = evaluate_all(model, joint_sets, tasks=("completion",), seed=cfg.eval.seed, modes=("joint",),
                              per_query=frames)
        out.update({k: v for k, v in scored.items() if k.startswith("completion_joint/")})
        _add_per_query(per_query, frames, rows)
    return out


def _add_per_query(per_query: list[pd.DataFrame] | None, frames: Sequence[pd.DataFrame], rows: np.ndarray) -> None:
    """Append ``frames`` (ranks of a subset of the split) to ``per_query`` with ``recipe`` a row of the split."""
    if per_query is not None:
        per_query += [f.assign(recipe=rows[f["recipe"].to_numpy()]) for f in frames]


# ---- the stop-rule tuner ----------------------------------------------------------------------------------------
class StopRule(NamedTuple):
    rule: str        # "threshold" (stop below this probability) or "size" (a fixed number of ingredients)
    value: float
    micro_f1: float  # its validation set-completion micro-F1


def ranks_stop_rules(scorer: Any) -> bool:
    """A baseline's stop rules (``stop``/``stop_value``), all scored from one ranking by its ``stop_rule_f1s``;
    else a model's (``config.stop_threshold``/``stop_size``)."""
    return callable(getattr(scorer, "stop_rule_f1s", None))


def tune_stop_rule(scorer: Any, val: EncodedSets, seed: int = 0, sizes: Sequence[int] = STOP_SIZES,
                   thresholds: Sequence[float] = STOP_THRESHOLDS) -> StopRule | None:
    """The stop rule with the best set-completion micro-F1 on the protocol's half queries of ``val`` (the run
    passes :func:`val_subset`), set on ``scorer``; None for a scorer without a tunable stop rule.

    Models that stop on a probability threshold (``model.tunes_stop_threshold``: deep-sets, a set transformer
    without slots, a decoder, an ensemble) try every threshold and, when they return the stop probabilities
    (``returns_stop_probs``), every fixed size too, all from one greedy pass at the lowest threshold (a higher
    threshold's completion, or a size's, is a prefix of it: a size rule is ``config.stop_size`` = m with that
    lowest threshold); other models one pass per threshold. Baselines (``stop_rule_f1s``) every fixed size, then
    every threshold, from one ranking. The same grid for both: a fixed size beat every threshold for Deep Sets on
    flavornet (validation micro-F1 0.373 at 5 against 0.349 at 0.15). Ties keep the earlier rule.
    """
    baseline = ranks_stop_rules(scorer)
    if not baseline and not getattr(scorer, "tunes_stop_threshold", False):
        return None
    with_sizes = baseline or getattr(scorer, "returns_stop_probs", False)
    rules = [("size", float(m)) for m in sizes if with_sizes] + [("threshold", float(t)) for t in thresholds]
    if not rules or not (baseline or thresholds):  # a model's one pass runs at its lowest threshold
        raise RecipesetError("tune_stop_rule: the stop-rule grid is empty")
    try:
        with phase("tuning on val: stop rule"):
            f1s = (scorer.stop_rule_f1s(val, rules, seed=seed) if baseline
                   else _model_rule_f1s(scorer, val, rules, seed))
    except NoSetQueries as e:  # recipes too small for set completion (a run checks eval.tasks: check_trainable)
        log.warning("stop rule not tuned, the default kept: %s", e)
        return None
    best = StopRule(*rules[0], -1.0)
    for (rule, value), f1 in zip(rules, f1s, strict=True):
        if f1 > best.micro_f1:
            best = StopRule(rule, value, f1)
    set_stop_rule(scorer, best, thresholds)
    return best


def set_stop_rule(scorer: Any, rule: StopRule, thresholds: Sequence[float] = STOP_THRESHOLDS) -> None:
    """Put a tuned stop rule on ``scorer``: a baseline's ``stop``/``stop_value``; a model's threshold, or for a
    size rule ``config.stop_size`` with the lowest of ``thresholds`` (the one greedy pass it was scored from)."""
    if ranks_stop_rules(scorer):
        scorer.stop, scorer.stop_value = rule.rule, rule.value
    elif rule.rule == "size":
        scorer.config.stop_threshold, scorer.config.stop_size = min(thresholds), int(rule.value)
    else:
        scorer.config.stop_threshold, scorer.config.stop_size = rule.value, None


class CuisineRule(NamedTuple):
    offsets: tuple[float, ...]  # per-cuisine log-offsets added to the log-probabilities before the argmax
    macro_f1: float             # validation macro-F1 with them
    plain_macro_f1: float       # validation macro-F1 of the plain argmax
    accuracy: float             # validation accuracy with them
    plain_accuracy: float       # validation accuracy of the plain argmax


CUISINE_OFFSETS: tuple[float, ...] = tuple(np.round(np.arange(-4.0, 4.01, 0.25), 2))  # each class's search grid


def tune_cuisine_rule(scorer: Any, val: EncodedSets, rounds: int = 3,
                      max_accuracy_drop: float = CUISINE_MAX_ACCURACY_DROP) -> CuisineRule | None:
    """The cuisine decision rule with the best validation macro-F1 among those that keep the validation
    accuracy within ``max_accuracy_drop`` of the plain argmax's, set on ``scorer``: per-class log-offsets ``b``
    (predict ``argmax log p + b``; a prior correction), found by coordinate ascent over :data:`CUISINE_OFFSETS`
    (``rounds`` sweeps over the classes; a class's offset moves only when macro-F1 improves and the accuracy
    stays within the bound, so the plain argmax is kept unless the rule beats it). Macro-F1 rewards predicting
    the rare cuisines at the expense of the common one; the bound keeps that trade from costing the accuracy
    (1 allows any). None for a scorer that cannot classify or a validation split without labels."""
    if not getattr(scorer, "can_classify", False) or not (val.cuisine >= 0).any():
        return None
    scorer.set_cuisine_offsets(())
    with phase("tuning on val: cuisine rule"):
        P, labels = cuisine_probs(scorer, val)
    logp = np.log(np.clip(P, 1e-30, None))
    C = P.shape[1]

    def scores(b: np.ndarray) -> tuple[float, float]:
        pred = (logp + b).argmax(1)
        return macro_f1(labels, pred, C), float((pred == labels).mean())

    b = np.zeros(C)
    plain, plain_accuracy = scores(b)
    best, accuracy = plain, plain_accuracy
    floor = plain_accuracy - max_accuracy_drop - 1e-12
    for _ in range(rounds):
        moved = False
        for c in range(C):
            for value in CUISINE_OFFSETS:
                trial = b.copy()
                trial[c] = value
                f1, acc = scores(trial)
                if f1 > best + 1e-12 and acc >= floor:
                    best, accuracy, b, moved = f1, acc, trial, True
        if not moved:
            break
    offsets = tuple(float(x) for x in b) if best > plain else ()
    scorer.set_cuisine_offsets(offsets)
    return CuisineRule(offsets, best, plain, accuracy, plain_accuracy)


def prefix_rule_f1s(ids: np.ndarray, probs: np.ndarray, truths: EncodedSets,
                    rules: Sequence[tuple[str, float]]) -> list[float]:
    """The set-completion micro-F1 against ``truths`` of each stop rule ``(rule, value)`` applied to ranked or
    generated candidates ``ids [N, L]`` with their probabilities ``probs [N, L]`` (< 0: no candidate).

    A rule keeps a prefix of each row: ``size`` m the first m candidates, ``threshold`` τ the longest prefix
    whose probabilities all reach τ, compared in ``probs``' dtype (float32 for a model: as its own stop test).
    """
    floor = np.minimum.accumulate(probs, axis=1) if probs.size else probs
    real = probs >= 0
    position = np.arange(probs.shape[1])[None, :]
    f1s = []
    for rule, value in rules:
        keep = real & (position < int(value) if rule == "size" else floor >= probs.dtype.type(value))
        preds = EncodedSets.from_lengths(ids[keep], keep.sum(1), np.full(len(ids), -1))
        f1s.append(set_prf(preds, truths)["micro_f1"])
    return f1s


def _padded(rows: Sequence[Sequence[float]], fill: float, dtype) -> np.ndarray:
    out = np.full((len(rows), max(map(len, rows), default=0)), fill, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def _model_rule_f1s(model: Any, val: EncodedSets, rules: Sequence[tuple[str, float]], seed: int) -> list[float]:
    """The validation set-completion micro-F1 of ``model`` under each stop rule (thresholds; sizes only for a
    model with ``returns_stop_probs``), uncapped by a size (``config.stop_size`` None) while it is scored."""
    if not (val.lengths >= SET_MIN_SIZE).any():
        raise NoSetQueries()
    if hasattr(model.config, "stop_size"):
        model.config.stop_size = None
    if not getattr(model, "returns_stop_probs", False):  # e.g. an extension's model: one pass per threshold
        f1s = []
        for _, th in rules:
            model.config.stop_threshold = th
            f1s.append(evaluate_set_completion(model, val, seed=seed)["micro_f1"])
        return f1s
    model.config.stop_threshold = min(v for rule, v in rules if rule == "threshold")
    preds, probs, truths = complete_halves(model, val, seed, return_probs=True)
    return prefix_rule_f1s(_padded(preds, PAD, np.int64), _padded(probs, -1.0, np.float32), truths, rules)


# ---- the headline table ------------------------------------------------------------------------------------------
HEADLINE_METRICS: tuple[str, ...] = ("completion/recall@10", "completion/mrr", "set/micro_f1", "set/pred_size",
                                     "cuisine/macro_f1", "cuisine/accuracy")
CHEAP_BASELINES: tuple[str, ...] = ("popularity", "cooccurrence", "item-knn")  # seconds, beside every main job


class HeadlineRow(NamedTuple):
    metric: str
    model: float
    bayes: float | None               # the generator's Bayes-optimal value (synthetic data), else None
    baseline: float | None            # the best baseline's value on the same queries
    baseline_name: str | None


def headline_rows(metrics: dict[str, float], baselines: dict[str, dict[str, float]] | None = None
                  ) -> list[HeadlineRow]:
    """The compact table of a run: each of :data:`HEADLINE_METRICS` the model reports, beside the Bayes-optimal
    value (``bayes/<metric>`` on synthetic data) and the best baseline for it (highest; for ``set/pred_size`` the
    true mean size is the reference, so the baseline closest to ``set/true_size`` is shown)."""
    rows = []
    for metric in HEADLINE_METRICS:
        if metric not in metrics:
            continue
        scored = {name: m[metric] for name, m in (baselines or {}).items() if metric in m}
        if metric == "set/pred_size":
            truth = metrics.get("set/true_size", 0.0)
            best = min(scored, key=lambda n: abs(scored[n] - truth), default=None)
            bayes = truth
        else:
            best = max(scored, key=scored.get, default=None)
            bayes = metrics.get(f"bayes/{metric}")
        rows.append(HeadlineRow(metric, metrics[metric], bayes, None if best is None else scored[best], best))
    return rows


# ---- baselines --------------------------------------------------------------------------------------------------
def run_baselines_on(cfg: RunConfig, data: PreparedData, names: Sequence[str] | None = None,
                     seed: int = 0, per_query: dict[str, pd.DataFrame] | None = None) -> dict[str, dict[str, Any]]:
    """The classical baselines fit on ``data.train``, tuned on :func:`val_subset` (the cuisine classifiers on the
    whole validation split, as the models' cuisine rule) and evaluated on that and on
    :func:`test_subset` with ``eval.tasks``, ``eval.seed`` and ``eval.query_draws`` — exactly the queries the
    models get. ``seed`` drives the baselines' own randomness. Returns :func:`recipeset.baselines.run_baselines`'s
    dict; with ``per_query``, each baseline's completion ranks as ``per_query[name]`` (:func:`per_query_table`)."""
    # imported here, not at the top: recipeset.baselines imports this module's tune_stop_rule (an import cycle)
    from recipeset.baselines import run_baselines

    val, val_rows = _capped(data.val_eval, val_caps(cfg), cfg.eval.seed)
    test, test_rows = _capped(data.test_eval, test_caps(cfg), cfg.eval.seed)
    frames: dict[str, dict[str, list[pd.DataFrame]]] = {}
    results = run_baselines(data.train, val, test, data.vocab, names=names, seed=seed, eval_seed=cfg.eval.seed,
                            tasks=cfg.eval.tasks, draws=cfg.eval.query_draws, per_query=frames,
                            cuisine_max_accuracy_drop=cfg.eval.cuisine_max_accuracy_drop,
                            cuisine_val=data.val_eval)
    if per_query is not None:
        for name, by_split in frames.items():
            per_query[name] = per_query_table({"val": (by_split.get("val", []), val_rows),
                                               "test": (by_split.get("test", []), test_rows)})
    return results


# ---- the generator's references (synthetic data) ----------------------------------------------------------------
def oracle_metrics(cfg: RunConfig, vocab: Vocabulary, sets: EncodedSets, ordered: bool | None = None
                   ) -> dict[str, float]:
    """On the synthetic default: the Bayes-optimal value of each metric from the generator's known
    probabilities (exact for completion and cuisine; an oracle-probability bound for set F1/IoU).

    ``ordered`` (default ``cfg.data.ordered``): whether the oracle reads the query's order. On ordered data,
    ``ordered=False`` is the best any order-free scorer can do — the ceiling without the order's information."""
    oracle = SyntheticOracle(vocab, ordered=cfg.data.ordered if ordered is None else ordered)
    tasks = [t for t in cfg.eval.tasks if EVAL_TASKS.get(t).oracle]
    return evaluate_all(oracle, test_subset(sets, cfg), tasks=tasks, seed=cfg.eval.seed, modes=("next",),
                        draws=cfg.eval.query_draws)


def oracle_references(cfg: RunConfig, vocab: Vocabulary, sets: EncodedSets) -> dict[str, float]:
    """``bayes/*`` and, on ordered data, ``bayes_unordered/*``: the generator's ceilings with and without the
    order's information, side by side, on ``sets``."""
    out = {f"bayes/{k}": v for k, v in oracle_metrics(cfg, vocab, sets).items()}
    if cfg.data.ordered:
        out.update({f"bayes_unordered/{k}": v for k, v in oracle_metrics(cfg, vocab, sets, ordered=False).items()})
    return out


def joint_subset_oracle_metrics(cfg: RunConfig, vocab: Vocabulary, sets: EncodedSets) -> dict[str, float]:
    """``bayes/completion_joint/*`` (and ``bayes_unordered/...`` on ordered data): the Bayes ceilings of
    completion on exactly the queries decoders are scored ``joint`` on (one draw, as theirs), so the two compare
    query for query."""
    only = replace(cfg, eval=replace(cfg.eval, tasks=["completion"], max_queries=None, query_draws=1))
    return {k.replace("/completion/", "/completion_joint/", 1): v
            for k, v in oracle_references(only, vocab, joint_subset(sets, cfg)).items()}
