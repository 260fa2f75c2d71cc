"""The main job: config -> data -> model -> training -> evaluation, tracked in MLflow.

A run directory (``runs/<run name>/`` by default) holds everything a run needs to be resumed or evaluated::

    config.json     the resolved RunConfig          split.json   the run's own train/val/test split
    checkpoint/     the latest atomic checkpoint (model/ + the trainer state)
    best/           the best model on validation     model/       the final model (= best), loadable by
    eval.json/.csv  the evaluation table                          ``recipeset.load_model``
    per_query_ranks.csv.gz  every completion query's rank (split, mode, recipe, draw, target): paired comparisons
    plots/          learning curves, confusion matrix, ingredient-embedding map
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recipeset import protocol
from recipeset.config import RunConfig, load_config, resolve_objectives, resolve_run
from recipeset.data.prepare import PreparedData, prepare_data
from recipeset.data.sources import load_dataset
from recipeset.data.sources.flavornet import find_flavornet, flavornet_compound_features
from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
from recipeset.distributed import world as current_world
from recipeset.errors import RecipesetError
from recipeset.evaluation import evaluate_cuisine, metrics_table, save_metrics_table
from recipeset.io_utils import atomic_write_text, check_writable_dir
from recipeset.models.base import RecipeModel
from recipeset.models.io import save_model
from recipeset.objectives.tasks import Objectives, cuisine_class_weights
from recipeset.plots import plot_confusion, plot_embedding_map, plot_learning_curves
from recipeset.progress import phase, reporting
from recipeset.registry import EVAL_TASKS, LOSSES, MODELS, OBJECTIVES
from recipeset.runs import download_model_dir, load_model
from recipeset.threads import resolve_threads
from recipeset.tracking import Tracker, check_model_name, check_tracking_store, open_store, resolve_tracking_uri
from recipeset.training import STATE_FILE, MetricsFn, Trainer, TrainState, recover_checkpoint, seed_all

log = logging.getLogger(__name__)

MIN_FREE_MB = 50  # a run directory needs room for two checkpoints (the atomic swap), the best and final models


def default_run_name(cfg: RunConfig) -> str:
    """``<dataset>-<model>-<loss>-<objectives>-<order>-seed<seed>``, with the objectives the run really trains
    (a set-transformer left at the default ``{clm: 1}`` trains mlm and must not be named "clm")."""
    objectives = "+".join(resolve_objectives(cfg))
    return f"{cfg.data.dataset.split('/')[-1]}-{cfg.model.name}-{cfg.loss.name}-{objectives}-" \
           f"{cfg.data.order}-seed{cfg.train.seed}"


# ---- model construction -------------------------------------------------------------------------------------
def input_features_for(cfg: RunConfig, vocab: Vocabulary) -> torch.Tensor | None:
    """The fixed input-feature matrix for ``model.embedding = "features"`` (flavornet compound profiles)."""
    if cfg.model.params.get("embedding", "learned") != "features":
        return None
    if cfg.data.dataset != "flavornet":
        raise RecipesetError("model.embedding='features' uses flavornet's flavor-compound profiles; "
                             "it needs data.dataset = 'flavornet'")
    return torch.from_numpy(flavornet_compound_features(vocab, find_flavornet(cfg.data.path)))


def build_model(cfg: RunConfig, vocab: Vocabulary, weights: dict[str, float], max_set: int,
                input_features: torch.Tensor | None = None) -> RecipeModel:
    """A fresh model for the run: the user's ``[model]`` params over the heads its objectives need and the model
    fields its set loss sets, then what the model class fills in from the run
    (:meth:`~recipeset.models.base.RecipeModel.configure`)."""
    cls = MODELS.get(cfg.model.name, "model.name")
    implied = {OBJECTIVES.get(name).head: True for name in weights if OBJECTIVES.get(name).head}
    if "set" in weights:
        implied.update(LOSSES.get(cfg.loss.name).model_params)
    params = cls.configure({**implied, **cfg.model.params}, weights, cfg.data.order, max_set)
    return cls(cls.config_class(**params), vocab, input_features)


def load_init_weights(model: RecipeModel, init_from: str, source: RecipeModel | None = None) -> list[str]:
    """Copy matching weights from a trained model (a directory or a runs:/ URI; ``source``: that model, already
    loaded) for fine-tuning; new heads start fresh. Returns new keys."""
    source = load_model(init_from) if source is None else source
    if source.vocab != model.vocab:
        raise RecipesetError(f"--init-from {init_from}: its vocabulary differs from this run's; fine-tune on the "
                             "same dataset and data.min_count")
    if source.model_type != model.model_type:
        raise RecipesetError(f"--init-from {init_from}: a {source.model_type!r} model cannot initialise a "
                             f"{model.model_type!r}")
    own = model.state_dict()
    loaded = {k: v for k, v in source.state_dict().items() if k in own}
    bad = [k for k, v in loaded.items() if v.shape != own[k].shape]
    if bad:
        raise RecipesetError(f"--init-from {init_from}: shapes differ for {bad[:3]}; use the same model params")
    model.load_state_dict(loaded, strict=False)
    return sorted(set(own) - set(loaded))


# ---- before training: can this data train and evaluate this run? ---------------------------------------------
def check_trainable(cfg: RunConfig, data: PreparedData) -> None:
    """Refuse, before any training step, data too degenerate for the run: recipes of one ingredient (nothing
    goes together), an empty validation or test split, a validation split the training vocabulary cannot encode
    (no validation loss), or splits without a recipe large enough for an evaluation task of ``eval.tasks``."""
    name = data.table.name
    if int(data.table.set_sizes.max(initial=0)) < 2:
        raise RecipesetError(f"{name}: every recipe has a single ingredient, so there is nothing to learn about "
                             "which ingredients go together, to complete or to validate; use recipes of ≥ 2 "
                             "ingredients")
    splits = {"validation": protocol.val_subset(data.val_eval, cfg), "test": protocol.test_subset(data.test_eval, cfg)}
    for split, sets in splits.items():
        if len(sets) == 0:
            raise RecipesetError(f"{name}: the {split} split is empty ({len(data.table)} recipes, and identical "
                                 "ingredient sets stay in one split); use more recipes, or more distinct ones")
    if len(data.val) == 0:
        raise RecipesetError(f"{name}: none of the {len(data.val_eval)} validation recipes has an ingredient of the "
                             f"training split, so there is no validation loss ({cfg.train.early_stopping_metric}) "
                             "to select the model on; use more recipes, or recipes that share ingredients")
    for split, sets in splits.items():
        for task in cfg.eval.tasks:
            _check_task_fits(task, sets, split, name, cfg.eval.tasks)


def _check_task_fits(task: str, sets, split: str, name: str, tasks: list[str]) -> None:
    need = EVAL_TASKS.get(task).min_size
    largest = int(sets.lengths.max(initial=0))
    if largest < need:
        others = [t for t in tasks if t != task]
        drop = f"drop it (--set eval.tasks='{json.dumps(others)}') or " if others else ""
        raise RecipesetError(f"eval.tasks: '{task}' needs recipes of ≥ {need} ingredients, and the largest {split} "
                             f"recipe of {name} has {largest}; {drop}use larger recipes")


# ---- post-training -------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    out_dir: Path
    run_id: str | None
    model_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0   # this process, start to end (a resumed run: since the resume)
    train_s: float = 0.0  # the Trainer's time in training steps over the whole run (TrainState.train_s)
    eval_s: float = 0.0   # after training: threshold tuning, evaluation, plots, saving and logging the model
    best_val: float = math.inf  # the best periodic value of train.early_stopping_metric (the best model's)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> test metrics, same queries
    pyfunc_uri: str | None = None   # runs:/<id>/pyfunc: the model for mlflow.pyfunc.load_model (tracking.pyfunc)
    registered: str | None = None   # models:/NAME/<version> when run_training(register=NAME) registered it


def _plots(tracker: Tracker | None, history: dict, model: RecipeModel, data: PreparedData, out_dir: Path,
           cfg: RunConfig) -> None:
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    figs = {"learning_curves.png": plot_learning_curves({k: v for k, v in history.items() if v})}
    emb = getattr(getattr(model, "embed", None), "tied_weight", None)
    if emb is not None:
        figs["ingredient_map.png"] = plot_embedding_map(emb.detach().cpu().numpy()[NUM_SPECIALS:],
                                                        data.vocab.ingredients, data.vocab.counts)
    test = protocol.test_subset(data.test_eval, cfg)  # the queries the test metrics are reported on
    if model.can_classify and (test.cuisine >= 0).any():
        with phase("plots: cuisine"):
            cm = evaluate_cuisine(model, test)["confusion"]
        figs["cuisine_confusion.png"] = plot_confusion(np.asarray(cm), data.vocab.cuisines)
    for name, fig in figs.items():
        fig.savefig(plots / name, dpi=110, bbox_inches="tight")
        if tracker is not None:
            tracker.log_figure(fig, f"plots/{name}")


def _open_run_dir(cfg: RunConfig, out_dir: str | Path | None, resume: bool,
                  main: bool = True) -> tuple[RunConfig, Path]:
    """The run directory (default ``runs/<run name>``) and the config the run continues with: a new run's own,
    or, with ``resume``, the one saved in the directory. The ``main`` process (the other ranks of a distributed
    run only read) first checks that it can write there with ``MIN_FREE_MB`` free, then puts back a checkpoint
    left aside by a kill mid-swap."""
    cfg.tracking.run_name = cfg.tracking.run_name or default_run_name(cfg)
    out_dir = Path(out_dir) if out_dir is not None else Path("runs") / cfg.tracking.run_name
    state_file = out_dir / "checkpoint" / STATE_FILE
    if main:
        check_writable_dir(out_dir, "run directory", "choose another --out", min_free_mb=MIN_FREE_MB)
        recover_checkpoint(out_dir / "checkpoint")
    if resume:
        if not state_file.exists():
            raise RecipesetError(f"{out_dir}: nothing to resume (no checkpoint); run without --resume")
        cfg = load_config(out_dir / "config.json")  # resume continues the run as it was configured
    elif state_file.exists():
        raise RecipesetError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    return cfg, out_dir


def _check_register(cfg: RunConfig, register: str, track: bool) -> None:
    """``register`` needs the run tracked with its pyfunc model, and a name the Registry accepts: one line before
    any work, not after training."""
    check_model_name(register)
    if not track:
        raise RecipesetError(f"--register {register}: registering needs a tracked run; drop --no-track")
    if not cfg.tracking.pyfunc:
        raise RecipesetError(f"--register {register}: the Registry takes the run's pyfunc model, which "
                             "tracking.pyfunc = false turns off; set it to true")


def _init_source(cfg: RunConfig, init_from: str | None, resume: bool) -> str | None:
    """The model a fine-tuning run starts from: ``--init-from``, else ``train.init_from`` ("{seed}" becomes
    ``train.seed``, so one grid variant fine-tunes each seed's own pre-trained model)."""
    if init_from is not None or not cfg.train.init_from:
        return init_from
    init_from = cfg.train.init_from.replace("{seed}", str(cfg.train.seed))
    if not resume and not Path(init_from).is_dir():
        raise RecipesetError(f"train.init_from: {init_from} is not a model directory (paths are relative to "
                             f"{Path.cwd()}); train the model it names first (grids: run with --jobs 1)")
    return init_from


def _start_tracker(cfg: RunConfig, out_dir: Path, resume: bool, parent_run_id: str | None,
                   tags: dict[str, str] | None) -> Tracker:
    """Start the run's MLflow run, or continue it on resume (its id is kept in ``out_dir/mlflow_run_id``)."""
    meta = out_dir / "mlflow_run_id"
    resume_id = meta.read_text().strip() if resume and meta.exists() else None
    tracker = Tracker.start(cfg, parent_run_id=parent_run_id, resume_run_id=resume_id, tags=tags, local_dir=out_dir)
    atomic_write_text(meta, tracker.run_id)
    return tracker


def _log_inputs(tracker: Tracker, data: PreparedData, out_dir: Path, model: RecipeModel) -> None:
    """What a new run was trained on: dataset lineage, split, vocabulary, cleaning report, model size."""
    tracker.log_dataset(data.table.name, data.table.source_path, data.table.sha256 or "generated",
                        counts=data.counts())
    tracker.log_artifact(out_dir / "split.json", "data")
    tracker.log_dict(data.vocab.to_dict(), "data/vocab.json")
    tracker.log_dict(data.table.report.to_dict(), "data/cleaning_report.json")
    tracker.log_params({"model.n_parameters": model.num_parameters()})


def run_training(cfg: RunConfig, out_dir: str | Path | None = None, resume: bool = False,
                 init_from: str | None = None, track: bool = True, parent_run_id: str | None = None,
                 progress: bool = True, evaluate: bool = True, tags: dict[str, str] | None = None,
                 on_validate: MetricsFn | None = None, baselines: Sequence[str] = (),
                 register: str | None = None) -> RunResult:
    """Train (or resume) one run, evaluate it on its own test split, and track everything in MLflow.

    The model is logged as a checkpoint directory (``runs:/<id>/model``) and, with ``tracking.pyfunc`` (the
    default), as an MLflow pyfunc model (``result.pyfunc_uri``, :mod:`recipeset.pyfunc`); ``register``: register
    that under this name in the Model Registry (``result.registered`` = ``models:/NAME/<version>``).

    ``baselines``: classical baselines (:data:`recipeset.baselines.BASELINES` names) fit, tuned and scored on the
    same split and queries after the evaluation (``result.baselines``; logged as ``baseline/<name>/...``).

    ``on_validate(metrics, step)`` is called at every periodic validation (:class:`~recipeset.training.Trainer`);
    a :class:`~recipeset.tracking.RunStopped` it raises ends the run early with that status and tags.

    Under ``torchrun`` (inside :func:`recipeset.distributed.process_group`) every rank trains on its part of each
    batch; rank 0 alone writes the run directory, tracks the run and evaluates, and the other ranks return a
    result without metrics or run id once training is done. The process trains on ``train.threads`` torch threads
    (:func:`~recipeset.threads.resolve_threads`)."""
    started = time.perf_counter()
    world = current_world()
    with world.main_first():  # rank 0 checks (and repairs) the directory and writes its config and split first
        cfg, out_dir = _open_run_dir(cfg, out_dir, resume, main=world.is_main)
        if register is not None:
            _check_register(cfg, register, track)
        if track and world.is_main:  # before any data is read, like the run directory: a store that cannot be
            check_tracking_store(resolve_tracking_uri(cfg.tracking.tracking_uri))  # written or does not answer
            open_store(cfg.tracking.tracking_uri)  # is one line now, not a traceback after the data
        weights = resolve_run(cfg).objectives.weights  # saved resolved
        seed_all(cfg.train.seed, cfg.train.deterministic)
        torch.set_num_threads(resolve_threads(cfg.train.threads))
        out_dir.mkdir(parents=True, exist_ok=True)
        init_from = _init_source(cfg, init_from, resume)
        source = load_model(init_from) if init_from is not None else None  # loaded (downloaded) once
        data = prepare_data(cfg.data, split_path=out_dir / "split.json" if resume else None,
                            vocab=None if source is None else source.vocab)
        check_trainable(cfg, data)  # before the run directory holds anything of this run
        if not resume and world.is_main:
            data.split.save(out_dir / "split.json")
            cfg.save(out_dir / "config.json")
    max_set = int(max(data.train.lengths.max(initial=1), data.val.lengths.max(initial=1),
                      data.test.lengths.max(initial=1)))
    torch.manual_seed(cfg.train.seed)  # initialisation is a function of the seed only
    model = build_model(cfg, data.vocab, weights, max_set, input_features_for(cfg, data.vocab))
    if init_from is not None and not resume:
        log.info("initialised from %s; new parameters: %s", init_from, load_init_weights(model, init_from, source))
    extra = {"run_config.json": json.dumps(cfg.to_dict(), indent=1),
             "split.json": (out_dir / "split.json").read_text(encoding="utf-8")}
    class_weights = (cuisine_class_weights(cfg.objectives.cls_class_weight, data.train.cuisine,
                                           data.vocab.num_cuisines, data.train_weights)
                     if "cls" in weights else None)
    objectives = Objectives(cfg, weights, class_weights=class_weights)
    tracker = _start_tracker(cfg, out_dir, resume, parent_run_id, tags) if track and world.is_main else None
    # the run ends FINISHED, FAILED on an error, KILLED on Ctrl-C / SIGTERM (Tracker.__exit__); progress: training,
    # then each phase of the evaluation (tuning on val, evaluating val/test, plots, baselines)
    with tracker if tracker is not None else contextlib.nullcontext(), reporting(progress and world.is_main):
        if tracker is not None and not resume:
            _log_inputs(tracker, data, out_dir, model)
        val_loss_sets = protocol.eval_subset(data.val, cfg.train.val_max_recipes, cfg.eval.seed)
        trainer = Trainer(cfg, model, objectives, data.train, val_loss_sets, out_dir,
                          log=tracker.log_metrics if tracker is not None else None,
                          flush_log=tracker.flush if tracker is not None else None,
                          progress=progress and world.is_main, train_weights=data.train_weights, extra_files=extra,
                          on_validate=on_validate)
        state = trainer.fit(resume=resume)
        trained = time.perf_counter()
        if not world.is_main:
            return RunResult(out_dir=out_dir, run_id=None, model_dir=out_dir / "model")
        result = _finish(cfg, trainer, state, data, out_dir, tracker, evaluate, register)
        if evaluate and baselines:
            result.baselines = {name: r["test"] for name, r in
                                protocol.run_baselines_on(cfg, data, names=list(baselines)).items()}
            if tracker is not None:
                tracker.log_metrics({f"baseline/{name}/{k}": v for name, m in result.baselines.items()
                                     for k, v in m.items()}, state.step)
        result.run_id = None if tracker is None else tracker.run_id
        result.wall_s = time.perf_counter() - started
        result.train_s, result.eval_s = state.train_s, time.perf_counter() - trained
        result.best_val = state.best_metric
        if tracker is not None:
            tracker.log_metrics(time_metrics(result, state), state.step)
    return result


def time_metrics(result: RunResult, state: TrainState) -> dict[str, float]:
    """The run's cost: ``time/wall_s`` (this process), ``time/train_s`` (training steps, whole run),
    ``time/eval_s`` (after training), ``time/steps`` and ``train/mean_recipes_per_s`` (the recipes trained on
    over ``time/train_s``; ``train/recipes_per_s`` is each step's own rate)."""
    mean = state.train_recipes / state.train_s if state.train_s > 0 else float("nan")
    return {"time/wall_s": result.wall_s, "time/train_s": result.train_s, "time/eval_s": result.eval_s,
            "time/steps": state.step, "train/mean_recipes_per_s": mean}


def _finish(cfg: RunConfig, trainer: Trainer, state, data: PreparedData, out_dir: Path, tracker: Tracker | None,
            evaluate: bool, register: str | None = None) -> RunResult:
    best_dir = out_dir / "best"
    model = load_model(best_dir) if best_dir.exists() else trainer.model
    model.to(trainer.device)
    tuned, cuisine_rule = tune_rules(model, data.val_eval, cfg)
    model_dir = out_dir / "model"
    save_model(model, model_dir, extra_files=trainer.extra_files)
    result = RunResult(out_dir=out_dir, run_id=None, model_dir=model_dir)
    if evaluate:
        evaluation = evaluate_run(model, cfg, data, out_dir)
        result.metrics, result.val_metrics = evaluation.metrics, evaluation.val_metrics
        if tracker is not None:
            log_evaluation(tracker, evaluation, state.step)
    if tracker is not None:
        log_rules(tracker, tuned, cuisine_rule, state.step)
        _plots(tracker, state.history, model, data, out_dir, cfg)
        tracker.log_model_dir(model_dir)
        if cfg.tracking.pyfunc:
            result.pyfunc_uri = tracker.log_pyfunc(model_dir, step=state.step, register=register)
            result.registered = tracker.registered
    return result


@dataclass
class RunEvaluation:
    """A scorer's evaluation on its run's data: what :func:`evaluate_run` wrote into the run directory."""

    metrics: dict[str, float]      # test (and, on the synthetic default, the generator's ceilings)
    val_metrics: dict[str, float]  # the validation queries (``next`` scoring)
    table: pd.DataFrame            # both, as saved in eval.csv / eval.json
    per_query: Path                # the per-query ranks (protocol.PER_QUERY_FILE)


def evaluate_run(model, cfg: RunConfig, data: PreparedData, out_dir: Path) -> RunEvaluation:
    """The evaluation after training, for a trained model or any scorer tuned like one (an ensemble): the
    validation queries (what models are selected on; ``next`` scoring as for every model and baseline) and test
    (the costly ``joint`` scoring on test only), the per-query ranks of both, the generator's ceilings on the
    synthetic default, and the table ``eval.csv``/``eval.json`` in ``out_dir``."""
    val_ranks: list = []
    test_ranks: list = []
    with phase("evaluating val"):
        val_metrics = protocol.evaluate_model(model, protocol.val_subset(data.val_eval, cfg), cfg, joint=False,
                                              per_query=val_ranks)
    with phase("evaluating test"):
        metrics = protocol.evaluate_model(model, data.test_eval, cfg, per_query=test_ranks)
    val_rows = protocol.subset_rows(len(data.val_eval), protocol.val_caps(cfg), cfg.eval.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_query = protocol.save_per_query(protocol.per_query_table(
        {"val": (val_ranks, val_rows), "test": (test_ranks, None)}), out_dir / protocol.PER_QUERY_FILE)
    if cfg.data.dataset == "synthetic" and not cfg.data.mix:
        with phase("Bayes references on test"):
            metrics.update(protocol.oracle_references(cfg, data.vocab, data.test_eval))
            if "completion_joint/n" in metrics:  # the ceilings on the joint-scored queries too
                metrics.update(protocol.joint_subset_oracle_metrics(cfg, data.vocab, data.test_eval))
    table = metrics_table({cfg.tracking.run_name: {"test": metrics, "val": val_metrics}})
    save_metrics_table(table, out_dir / "eval.csv")
    save_metrics_table(table, out_dir / "eval.json")
    return RunEvaluation(metrics, val_metrics, table, per_query)


def log_evaluation(tracker: Tracker, evaluation: RunEvaluation, step: int) -> None:
    """Log :func:`evaluate_run`'s results: ``test/...`` and ``val_eval/...`` metrics, the table, the ranks."""
    tracker.log_metrics({f"test/{k}": v for k, v in evaluation.metrics.items()}, step)
    tracker.log_metrics({f"val_eval/{k}": v for k, v in evaluation.val_metrics.items()}, step)
    tracker.log_table(evaluation.table, "eval")
    tracker.log_artifact(evaluation.per_query)


def log_rules(tracker: Tracker, tuned: protocol.StopRule | None, cuisine_rule: protocol.CuisineRule | None,
              step: int) -> None:
    """Log the decision rules :func:`tune_rules` chose."""
    if tuned is not None:  # a size rule: at most stop_size added, at the grid's lowest threshold
        rule = ({"stop_size": tuned.value, "stop_threshold": min(protocol.STOP_THRESHOLDS)}
                if tuned.rule == "size" else {"stop_threshold": tuned.value})
        tracker.log_metrics(rule, step)
    if cuisine_rule is not None:
        tracker.log_metrics({"cuisine_rule/val_macro_f1": cuisine_rule.macro_f1,
                             "cuisine_rule/val_plain_macro_f1": cuisine_rule.plain_macro_f1,
                             "cuisine_rule/val_accuracy": cuisine_rule.accuracy,
                             "cuisine_rule/val_plain_accuracy": cuisine_rule.plain_accuracy}, step)


def tune_rules(model, val_eval, cfg: RunConfig) -> tuple[protocol.StopRule | None, protocol.CuisineRule | None]:
    """What a run tunes on its validation split ``val_eval`` after training, set on ``model``: the stop rule
    (None: no stop threshold) on the seeded subset of :func:`~recipeset.protocol.val_subset` (greedy completion
    is costly), the cuisine rule (None: no cuisine head or no labels) on every recipe (one forward pass each:
    eleven offsets tuned on 2000 recipes, a few dozen of the rarest cuisine, would fit their noise)."""
    stop = protocol.tune_stop_rule(model, protocol.val_subset(val_eval, cfg), seed=cfg.eval.seed)
    return stop, protocol.tune_cuisine_rule(model, val_eval, max_accuracy_drop=cfg.eval.cuisine_max_accuracy_drop)


def compare_with_baselines(cfg: RunConfig, data: PreparedData, ranks: list[pd.DataFrame], names: Sequence[str],
                           metrics: Sequence[str] = ("recall@10", "mrr")) -> dict[str, dict[str, object]]:
    """``{baseline: {metric: PairedDifference}}``: a model's completion on its run's test queries (``ranks``: its
    per-query frames of :func:`~recipeset.protocol.evaluate_model` on ``data.test_eval`` with ``cfg``) against
    each named classical baseline fit on the same split (tuned on its validation queries as in a run) and scored
    on exactly those queries; model − baseline with a paired 95% bootstrap interval over recipes
    (:func:`recipeset.stats.paired_bootstrap`)."""
    from recipeset.stats import paired_bootstrap, paired_ranks

    ours = protocol.per_query_table({"test": (ranks, None)})
    frames: dict[str, pd.DataFrame] = {}
    with phase("baselines"):
        protocol.run_baselines_on(cfg, data, names=list(names), per_query=frames)
    out: dict[str, dict[str, object]] = {}
    for name in names:
        a, b = paired_ranks(ours, frames[name])
        out[name] = {m: paired_bootstrap(a, b, m, seed=cfg.eval.seed) for m in metrics}
    return out


def with_memory(model, name: str, cfg: RunConfig, data: PreparedData):
    """``model`` mixed with completion baseline ``name`` fit on ``data.train`` (its grid tuned on the validation
    queries as in a run), the memory weight and stop rule tuned on validation set completion
    (:func:`recipeset.retrieval.tune_memory_mixture`)."""
    from recipeset.baselines import fit_baseline
    from recipeset.retrieval import MemoryMixture, tune_memory_mixture

    val = protocol.val_subset(data.val_eval, cfg)
    with phase(f"fitting the memory ({name})"):
        memory, _ = fit_baseline(name, data.train, model.vocab, val=val, seed=cfg.eval.seed,
                                 eval_seed=cfg.eval.seed, draws=cfg.eval.query_draws)
    mixture = MemoryMixture(model, memory)
    tune_memory_mixture(mixture, val, seed=cfg.eval.seed, draws=cfg.eval.query_draws)
    return mixture


def run_data(model, model_dir: str, split: str = "test", dataset: str | None = None, path: str | None = None,
             tune: bool = False, lenient: bool = False, options: dict | None = None, overrides: dict | None = None):
    """The run config saved with a model and the sets to evaluate it on: the run's own ``split`` (rebuilt from
    its saved split and vocabulary), or every recipe of ``dataset`` encoded with the model's vocabulary.
    ``lenient`` and the loader ``options`` say how to read the dataset (``data.lenient``, ``data.options``).
    Returns ``(cfg, sets, data)``: ``data`` is the run's whole :class:`PreparedData` when it was rebuilt (the
    run's own split, or ``tune``), else None.

    ``tune``: first tune ``model``'s rules on the run's validation queries as the run did (:func:`tune_rules`) —
    for a scorer the run did not tune, e.g. an :class:`~recipeset.ensemble.Ensemble` of trained models.
    ``overrides``: dotted keys set on the run's config first (``evaluate --set``)."""
    local = Path(download_model_dir(str(model_dir)))
    run_cfg = local / "run_config.json"
    cfg = load_config(run_cfg) if run_cfg.exists() else RunConfig()
    if overrides:
        cfg = cfg.override(overrides, source="--set")
    if dataset is None:  # how to read the run's own dataset
        cfg.data.lenient = cfg.data.lenient or lenient
        cfg.data.options.update(options or {})
    data = None
    if dataset is None or tune:
        if not (local / "split.json").exists():
            fix = ("its validation split is what the ensemble is tuned on" if tune
                   else "pass --dataset to evaluate on another dataset")
            raise RecipesetError(f"{model_dir}: no split.json saved with this model; {fix}")
        data = prepare_data(cfg.data, split_path=local / "split.json", vocab=model.vocab)
        if tune:
            tune_rules(model, data.val_eval, cfg)
    if dataset is not None:
        return cfg, load_dataset(dataset, path=path, lenient=lenient, options=options).encode(model.vocab,
                                                                                           unknown="unk"), data
    return cfg, data.test_eval if split == "test" else data.val_eval, data
