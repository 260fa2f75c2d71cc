"""The evaluation protocol in one place: which queries every model and baseline is scored and selected on, how
the main job evaluates a model, the generator's reference ceilings.

- Queries: test on :func:`test_subset` (a seeded subset of ``eval.max_queries`` recipes), validation (model and
  baseline selection) on :func:`val_subset`, decoders' ``joint`` scoring on :func:`joint_subset`. The draws
  depend on ``eval.seed`` only, so models, baselines and the oracle see the same queries.
- Task names: the config's ``eval.tasks`` names are translated to :mod:`recipeset.evaluation`'s by
  :func:`eval_tasks` only.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from recipeset.config import RunConfig
from recipeset.data.sets import EncodedSets
from recipeset.data.sources.synthetic import SyntheticOracle
from recipeset.data.vocab import Vocabulary
from recipeset.evaluation import evaluate_all

# ``eval.tasks`` (config) name -> recipeset.evaluation task name; read through eval_tasks() only.
_TASK_NAMES = {"completion": "completion", "set-completion": "set", "cuisine": "cuisine",
               "order-sensitivity": "order", "likelihood": "nll"}

def eval_tasks(cfg: RunConfig) -> list[str]:
    """The run's ``eval.tasks`` as :mod:`recipeset.evaluation` task names (``set-completion`` -> ``set``,
    ``order-sensitivity`` -> ``order``, ``likelihood`` -> ``nll``), in the config's order."""
    return [_TASK_NAMES.get(t, t) for t in cfg.eval.tasks]


# ---- query subsets ---------------------------------------------------------------------------------------------
def eval_subset(sets: EncodedSets, n: int | None, seed: int = 0) -> EncodedSets:
    """A seeded random subset of ``n`` recipes (in their original order), the same for every model; all of
    them when ``n`` is None. (Splits list recipes grouped by source and cuisine, so a prefix would be biased.)"""
    if n is None or len(sets) <= n:
        return sets
    rng = np.random.default_rng([seed, 0xE7A1])
    return sets.take(np.sort(rng.choice(len(sets), size=n, replace=False)))


def test_subset(test_eval: EncodedSets, cfg: RunConfig) -> EncodedSets:
    """The test queries every model and baseline is reported on: ``eval.max_queries`` seeded recipes."""
    return eval_subset(test_eval, cfg.eval.max_queries, cfg.eval.seed)


test_subset.__test__ = False  # a protocol function, not a test (pytest collects ``test_*`` names it imports)


def val_subset(val_eval: EncodedSets, cfg: RunConfig) -> EncodedSets:
    """The validation queries a model (or baseline) is selected on: ``eval.val_max_queries`` seeded recipes of
    the validation split, then capped at ``eval.max_queries`` like every evaluation."""
    val = eval_subset(val_eval, cfg.eval.val_max_queries, cfg.eval.seed)
    return eval_subset(val, cfg.eval.max_queries, cfg.eval.seed)


def joint_subset(sets: EncodedSets, cfg: RunConfig) -> EncodedSets:
    """The queries decoders are scored ``joint`` on: ``eval.joint_max_queries`` seeded recipes of the
    evaluated ones (``eval.max_queries``)."""
    return eval_subset(eval_subset(sets, cfg.eval.max_queries, cfg.eval.seed), cfg.eval.joint_max_queries,
                       cfg.eval.seed)


# ---- models -----------------------------------------------------------------------------------------------------
def evaluate_model(model, sets: EncodedSets, cfg: RunConfig, joint: bool | None = None) -> dict[str, float]:
    """The evaluation protocol on ``sets`` (a split encoded with [UNK] for unknown ingredients).

    Decoders are also scored ``joint`` (on a seeded subset of ``eval.joint_max_queries`` recipes: it costs one
    forward pass per candidate and order, the bulk of a decoder's evaluation) unless ``joint`` is False
    (default: ``eval.joint``). Order sensitivity is measured with ``next`` scoring only.
    """
    tasks = eval_tasks(cfg)
    sets = eval_subset(sets, cfg.eval.max_queries, cfg.eval.seed)
    out = evaluate_all(model, sets, tasks=tasks, seed=cfg.eval.seed, modes=("next",))
    joint = cfg.eval.joint if joint is None else joint
    if "joint" in getattr(model, "scoring_modes", ()) and joint and "completion" in tasks:
        scored = evaluate_all(model, joint_subset(sets, cfg), tasks=("completion",), seed=cfg.eval.seed,
                              modes=("joint",))
        out.update({k: v for k, v in scored.items() if k.startswith("completion_joint/")})
    return out


# ---- the generator's references (synthetic data) ----------------------------------------------------------------
def oracle_metrics(cfg: RunConfig, vocab: Vocabulary, sets: EncodedSets, ordered: bool | None = None
                   ) -> dict[str, float]:
    """On the synthetic default: the Bayes-optimal value of each metric from the generator's known
    probabilities (exact for completion and cuisine; an oracle-probability bound for set F1/IoU).

    ``ordered`` (default ``cfg.data.ordered``): whether the oracle reads the query's order. On ordered data,
    ``ordered=False`` is the best any order-free scorer can do — the ceiling without the order's information."""
    oracle = SyntheticOracle(vocab, ordered=cfg.data.ordered if ordered is None else ordered)
    tasks = [t for t in eval_tasks(cfg) if t not in ("nll", "order")]
    sets = eval_subset(sets, cfg.eval.max_queries, cfg.eval.seed)
    return evaluate_all(oracle, sets, tasks=tasks, seed=cfg.eval.seed, modes=("next",))


def oracle_references(cfg: RunConfig, vocab: Vocabulary, sets: EncodedSets) -> dict[str, float]:
    """``bayes/*`` and, on ordered data, ``bayes_unordered/*``: the generator's ceilings with and without the
    order's information, side by side, on ``sets``."""
    out = {f"bayes/{k}": v for k, v in oracle_metrics(cfg, vocab, sets).items()}
    if cfg.data.ordered:
        out.update({f"bayes_unordered/{k}": v for k, v in oracle_metrics(cfg, vocab, sets, ordered=False).items()})
    return out


def joint_subset_oracle_metrics(cfg: RunConfig, vocab: Vocabulary, sets: EncodedSets) -> dict[str, float]:
    """``bayes/completion_joint/*`` (and ``bayes_unordered/...`` on ordered data): the Bayes ceilings of
    completion on exactly the queries decoders are scored ``joint`` on, so the two compare query for query."""
    only = replace(cfg, eval=replace(cfg.eval, tasks=["completion"], max_queries=None))
    return {k.replace("/completion/", "/completion_joint/", 1): v
            for k, v in oracle_references(only, vocab, joint_subset(sets, cfg)).items()}
