"""Running experiment grids and turning their runs into results tables.

``run_experiment`` runs every (variant, seed) of an experiment file as a child of one parent MLflow run,
skipping children that already finished with the same config hash and resuming interrupted ones from their
checkpoint — so re-running the same command finishes a grid. Then the file's ``[[ensemble]]`` entries: each the
average of some variants' trained models, evaluated on the same queries as one more child (tag ``variant`` = its
name), so it is a row of the tables like a variant. ``results_table`` aggregates the children into
mean ± std over seeds per variant (the README's tables), with the baselines beside them.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recipeset import progress
from recipeset.config import RunConfig, resolve_run
from recipeset.data.prepare import prepare_data
from recipeset.errors import RecipesetError
from recipeset.experiments import EnsembleSpec, Experiment, PlannedRun, load_experiment
from recipeset.io_utils import atomic_write_text
from recipeset.pipeline import evaluate_run, log_evaluation, log_rules, run_training, tune_rules
from recipeset.plots import new_figure
from recipeset.processes import ChildExit, ChildProcesses
from recipeset.protocol import PER_QUERY_FILE, load_per_query, run_baselines_on, save_per_query
from recipeset.runs import (
    find_finished_run,
    load_ensemble,
    metric_history,
    read_run_artifact,
    run_tags,
    search_runs_table,
)
from recipeset.signals import install_sigterm_handler
from recipeset.stats import paired_bootstrap, paired_ranks
from recipeset.threads import child_environment
from recipeset.tracking import Tracker, ensure_experiment, open_store, start_parent_run
from recipeset.training import STATE_FILE, recover_checkpoint

log = logging.getLogger(__name__)

# The headline metrics of each table (MLflow names: '@' is logged as '_at_').
TABLES: dict[str, list[str]] = {
    "completion": ["test/completion/recall_at_1", "test/completion/recall_at_10", "test/completion/mrr",
                   "test/completion/mean_rank", "test/completion_joint/recall_at_10", "test/completion_joint/mrr"],
    "set_completion": ["test/set/micro_f1", "test/set/micro_iou", "test/set/mean_f1", "test/set/pred_size",
                       "test/set/true_size"],
    "cuisine": ["test/cuisine/accuracy", "test/cuisine/macro_f1"],
    "order_sensitivity": ["test/order/tv", "test/order/recall_at_10_spread"],
    # wall_s = this process, start to end; train_s = the training steps; eval_s = everything after training;
    # mean_recipes_per_s = recipes trained on / train_s over the whole run (recipeset.pipeline.time_metrics)
    "training_cost": ["time/wall_s", "time/train_s", "time/eval_s", "time/steps", "train/mean_recipes_per_s",
                      "model.n_parameters"],
}


# --quick runs the cheap baselines only (recipe-kNN and NMF take about a minute each on flavornet).
QUICK_BASELINES = ["popularity", "cooccurrence", "item-knn", "logistic-cuisine"]


@dataclass
class ChildOutcome:
    name: str
    status: str          # finished | skipped | failed
    run_id: str | None
    wall_s: float = 0.0
    error: str = ""


def run_hash(run: PlannedRun) -> str:
    """The config hash the child's MLflow run is tagged with: ``run_training`` resolves the objectives (a
    set-transformer left at the default ``{clm: 1}`` trains ``{mlm: 1}``) before it starts the run
    (:func:`~recipeset.config.resolve_run`), so the planned config's own hash would never match a finished child
    of such a variant."""
    return resolve_run(copy.deepcopy(run.config)).config_hash()


def child_dir(run: PlannedRun, out_root: str | os.PathLike) -> Path:
    """A grid child's run directory: ``<out_root>/<tracking experiment>/<variant>/seed<seed>`` (quick runs get
    their own directories: a full run must never resume a quick run's checkpoint)."""
    return Path(out_root) / run.config.tracking.experiment / run.variant / f"seed{run.seed}"


def _run_child(run: PlannedRun, out_root: str, parent_id: str, uri: str) -> ChildOutcome:
    """One grid child (in its own process — ``recipeset experiment child`` — or inline with ``--jobs 1``). Its
    torch threads are ``train.threads``, by default the OMP_NUM_THREADS the grid gives its child processes (the
    available cores ÷ jobs), or all available cores inline (``run_training`` sets them)."""
    install_sigterm_handler()  # SIGTERM raises RunTerminated here too: a stopped grid ends the child run KILLED
    out_dir = child_dir(run, out_root)
    recover_checkpoint(out_dir / "checkpoint")
    resume = (out_dir / "checkpoint" / STATE_FILE).exists()
    cfg = run.config
    cfg.tracking.tracking_uri = uri
    started = time.perf_counter()
    # Ctrl-C, or SIGTERM (RunTerminated), propagates: the child run has already ended KILLED, resumable. Its
    # progress goes where this process reports it: the terminal (--jobs 1) or the child's log.
    result = run_training(cfg, out_dir=out_dir, resume=resume, parent_run_id=parent_id, progress=progress.enabled(),
                          tags={"variant": run.variant, "experiment_file": run.name.split("/")[0],
                                "params_hash": run.params_hash})
    return ChildOutcome(run.name, "finished", result.run_id, time.perf_counter() - started)


def baselines_hash(planned: PlannedRun) -> str:
    """The config hash that identifies the baselines child (distinct from every neural child's): its data, and
    ``eval.query_draws`` when it is not 1 (the baselines children from before it scored one draw)."""
    draws = planned.config.eval.query_draws
    return hashlib.sha256(f"baselines:{planned.config.data}{f':draws={draws}' if draws != 1 else ''}"
                          .encode()).hexdigest()


def _run_baselines_child(exp: Experiment, planned: PlannedRun, parent_id: str, uri: str,
                         quick: bool = False) -> ChildOutcome:
    """The classical baselines on the base config's data and split, as one child run."""
    cfg = planned.config
    name = f"{exp.name}/baselines"
    started = time.perf_counter()
    with Tracker.start(cfg, run_name=name, experiment=cfg.tracking.experiment, uri=uri, parent_run_id=parent_id,
                       tags={"variant": "baselines", "run_kind": "baselines",
                             "config_hash": baselines_hash(planned)}) as tracker:
        data = prepare_data(cfg.data)
        # The same test and validation queries, seed and tasks as the neural children (``test/``, ``val_eval/``):
        # otherwise the tables would compare different query sets.
        per_query: dict[str, pd.DataFrame] = {}
        results = run_baselines_on(cfg, data, names=QUICK_BASELINES if quick else None, seed=0, per_query=per_query)
        tracker.log_dict({k: {kk: vv for kk, vv in v.items()} for k, v in results.items()}, "baselines.json")
        if per_query:  # one table, a `baseline` column naming each one's rows
            with tempfile.TemporaryDirectory() as tmp:
                tracker.log_artifact(save_per_query(pd.concat([t.assign(baseline=b) for b, t in per_query.items()],
                                                              ignore_index=True), Path(tmp) / PER_QUERY_FILE))
        for bname, r in results.items():
            for split, prefix in (("test", "test"), ("val", "val_eval")):
                tracker.log_metrics({f"{bname}/{prefix}/{k}": v for k, v in r[split].items()
                                     if isinstance(v, int | float)}, 0)
    return ChildOutcome(name, "finished", tracker.run_id, time.perf_counter() - started)


def ensemble_hash(spec: EnsembleSpec, members: list[PlannedRun]) -> str:
    """The config hash of an ensemble child: its combination rule and its members' config hashes."""
    key = f"ensemble:{spec.combine}:" + ",".join(sorted(run_hash(r) for r in members))
    return hashlib.sha256(key.encode()).hexdigest()


def ensemble_dir(spec: EnsembleSpec, members: list[PlannedRun], out_root: str | os.PathLike) -> Path:
    """An ensemble child's directory (eval.csv/json, per-query ranks): ``<out_root>/<tracking experiment>/<name>``
    beside its members' variants."""
    return Path(out_root) / members[0].config.tracking.experiment / spec.name


def _run_ensembles(exp: Experiment, quick: bool, seeds: list[int] | None, out_root: str, parent_id: str, uri: str,
                   echo) -> list[ChildOutcome]:
    """Every ``[[ensemble]]`` of the file whose members' models are all trained and that has not finished yet, as
    one child run each; a failed one is recorded, the rest run."""
    outcomes = []
    for spec in exp.ensembles:
        members = exp.ensemble_members(spec, quick, seeds)
        name = f"{exp.name}/{spec.name}"
        missing = [r.name for r in members if not (child_dir(r, out_root) / "model").is_dir()]
        if not members or missing:
            echo(f"skip {name}: " + (f"{missing[0]} has no trained model" if missing else "not in this grid"))
            continue
        done = find_finished_run(members[0].config.tracking.experiment, ensemble_hash(spec, members), uri)
        if done is not None:
            echo(f"skip {name}: finished as run {done}")
            outcomes.append(ChildOutcome(name, "skipped", done))
            continue
        echo(f"run {name}  ({len(members)} models)")
        try:
            outcomes.append(_run_ensemble_child(exp, spec, members, out_root, parent_id, uri))
        except Exception as e:  # noqa: BLE001 - record it, finish the others
            if not isinstance(e, RecipesetError):
                log.error("%s failed", name, exc_info=e)
            echo(f"FAILED {name}: {error_line(e)}")
            outcomes.append(ChildOutcome(name, "failed", None, error=error_line(e)))
    return outcomes


def _run_ensemble_child(exp: Experiment, spec: EnsembleSpec, members: list[PlannedRun], out_root: str,
                        parent_id: str, uri: str) -> ChildOutcome:
    """One ensemble of trained grid children as a child run (tag ``variant`` = its name): tuned on its first
    member's validation queries and evaluated on its test queries as a trained run is
    (:func:`~recipeset.pipeline.evaluate_run`: the same draws, per-query ranks, tables)."""
    name = f"{exp.name}/{spec.name}"
    cfg = copy.deepcopy(members[0].config)
    cfg.tracking.run_name, cfg.tracking.tracking_uri = name, uri
    started = time.perf_counter()
    tags = {"variant": spec.name, "run_kind": "ensemble", "experiment_file": exp.name,
            "config_hash": ensemble_hash(spec, members), "members": ", ".join(r.name for r in members)}
    with Tracker.start(cfg, run_name=name, parent_run_id=parent_id, tags=tags) as tracker:
        model_dirs = [child_dir(r, out_root) / "model" for r in members]
        ensemble = load_ensemble(model_dirs, combine=spec.combine)
        data = prepare_data(cfg.data, split_path=child_dir(members[0], out_root) / "split.json", vocab=ensemble.vocab)
        tuned, cuisine_rule = tune_rules(ensemble, data.val_eval, cfg)
        evaluation = evaluate_run(ensemble, cfg, data, ensemble_dir(spec, members, out_root))
        log_evaluation(tracker, evaluation, 0)
        log_rules(tracker, tuned, cuisine_rule, 0)
        tracker.log_metrics({"ensemble/members": float(len(members))}, 0)
    return ChildOutcome(name, "finished", tracker.run_id, time.perf_counter() - started)


def run_experiment(path: str | os.PathLike, quick: bool = False, jobs: int = 1, uri: str | None = None,
                   out_root: str | os.PathLike = "runs", echo=print, seeds: list[int] | None = None,
                   variants: list[str] | None = None) -> list[ChildOutcome]:
    """Run an experiment grid (parent run + child runs); ``seeds``/``variants`` restrict the grid (the rest can be
    run later into the same parent).

    ``jobs`` > 1 runs each child as its own OS process (``recipeset experiment child``, supervised by
    :class:`ChildProcesses`), at most ``jobs`` at a time, each with the available cores ÷ ``jobs`` torch threads and its
    output in ``grid-child.log`` in its run directory. ``jobs`` = 1 trains the children one after another in
    this process (the whole machine's threads, output on the terminal, debuggers and profilers work).
    Children start seed-major in both modes."""
    exp = load_experiment(path)
    uri = open_store(uri)  # a server that does not answer: one line before any child starts
    experiment = exp.tracking_experiment(quick)
    # Create the experiment here, before any worker.
    ensure_experiment(experiment, uri, exp.description)
    planned = _select(exp, quick, seeds, variants, path)
    outcomes: list[ChildOutcome] = []
    started = time.perf_counter()
    with start_parent_run(experiment, f"{experiment}/grid", uri, tags={"quick": str(quick)},
                          description=exp.description) as parent:
        todo = []
        for run in planned:
            done = find_finished_run(experiment, run_hash(run), uri)
            if done is not None:
                echo(f"skip {run.name}: finished as run {done}")
                outcomes.append(ChildOutcome(run.name, "skipped", done))
            else:
                todo.append(run)
        # seed-major: an interrupted grid has every variant at its first seeds, not some variants at all seeds
        todo.sort(key=lambda r: r.seed)
        if jobs <= 1:
            outcomes.extend(_run_children_inline(todo, str(out_root), parent.run_id, uri, echo))
        else:
            try:
                outcomes.extend(_run_children_in_processes(todo, str(out_root), parent.run_id, uri, jobs, echo))
            except BaseException:
                # Ctrl-C / SIGTERM of the grid: the supervisor has stopped the running children (each ends its
                # run KILLED, resumable from its last checkpoint; a straggler was killed) and started no queued
                # one. A child killed before it could end its own run would leave that run RUNNING for good.
                parent.end_running_children("KILLED")
                raise
        if exp.baselines and planned:
            if find_finished_run(experiment, baselines_hash(planned[0]), uri) is None:
                echo("run baselines")
                outcomes.append(_run_baselines_child(exp, planned[0], parent.run_id, uri, quick))
        outcomes.extend(_run_ensembles(exp, quick, seeds, str(out_root), parent.run_id, uri, echo))
        parent.log_metrics({"grid/wall_s": time.perf_counter() - started,
                            "grid/children": float(len(planned))}, 0)
        log_results(parent, experiment, uri)
        failed = [o for o in outcomes if o.status == "failed"]
        if failed:  # the parent ends FAILED, so re-running the command continues it
            parent.set_tags({"failed_children": ", ".join(o.name for o in failed)})
            raise RecipesetError(f"{path}: {len(failed)} of {len(planned)} runs failed ({failed[0].name}: "
                                 f"{failed[0].error}); the others finished — re-run the same command to retry "
                                 "the failed ones")
    return outcomes


def _select(exp: Experiment, quick: bool, seeds: list[int] | None, variants: list[str] | None,
            path: str | os.PathLike) -> list[PlannedRun]:
    """The planned runs of the grid, restricted to ``seeds`` / ``variants`` when given."""
    planned = exp.runs(quick=quick)
    if seeds is not None:
        planned = [r for r in planned if r.seed in seeds]
    if variants is not None:
        unknown = set(variants) - {r.variant for r in exp.runs(quick=quick)}
        if unknown:
            raise RecipesetError(f"{path}: unknown variant(s) {sorted(unknown)}")
        planned = [r for r in planned if r.variant in variants]
    return planned


def _run_children_inline(todo: list[PlannedRun], out_root: str, parent_id: str, uri: str,
                         echo) -> list[ChildOutcome]:
    """``--jobs 1``: the children one after another in this process; a failed one is recorded, the rest run."""
    outcomes = []
    for run in todo:
        echo(f"run {run.name}")
        try:
            outcomes.append(_run_child(run, out_root, parent_id, uri))
        except Exception as e:  # noqa: BLE001 - record it, finish the others
            outcomes.append(_failed(run, e, echo))
            continue
        echo(f"  done in {outcomes[-1].wall_s:.0f}s")
    return outcomes


def error_line(error: BaseException) -> str:
    """The one line a failed child is reported with: the error's first line (else the exception's type)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _failed(run: PlannedRun, error: BaseException | str, echo) -> ChildOutcome:
    """A child that failed: its one-line error (an exception raised here: the full traceback goes to the log;
    a child process's message: its traceback is in its ``grid-child.log``), the grid goes on."""
    if isinstance(error, str):
        message = error
    else:
        message = error_line(error)
        if not isinstance(error, RecipesetError):
            log.error("%s failed", run.name, exc_info=error)
    echo(f"FAILED {run.name}: {message}")
    return ChildOutcome(run.name, "failed", None, error=message)


# ---- grid children as OS processes (--jobs N > 1) ----------------------------------------------------------------
CHILD_SPEC = "grid-child.json"           # what the child trains (written by the grid, read by the child)
CHILD_RESULT = "grid-child-result.json"  # how it ended (written by the child)
CHILD_LOG = "grid-child.log"             # its stdout and stderr (appended to on every attempt)


def write_child_spec(run: PlannedRun, out_root: str, parent_id: str, uri: str, threads: int) -> Path:
    """The child's resolved config and grid context, as JSON in its run directory; returns the file's path."""
    spec = {"run": {"name": run.name, "variant": run.variant, "seed": run.seed, "params_hash": run.params_hash},
            "config": run.config.to_dict(), "out_root": out_root, "parent_run_id": parent_id, "uri": uri,
            "threads": threads}
    path = child_dir(run, out_root) / CHILD_SPEC
    atomic_write_text(path, json.dumps(spec, indent=1) + "\n")
    return path


def run_child_spec(spec_path: str | os.PathLike, echo=print) -> ChildOutcome:
    """The body of ``recipeset experiment child SPEC``: train the child ``SPEC`` describes and record how it
    ended in ``grid-child-result.json`` beside it (the grid reads the one-line error from there)."""
    spec_path = Path(spec_path)
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    result_path = spec_path.with_name(CHILD_RESULT)
    try:
        run = PlannedRun(**spec["run"], config=RunConfig.from_dict(spec["config"], source=str(spec_path)))
        echo(f"grid child {run.name}: pid {os.getpid()}, {spec['threads']} torch threads")
        with progress.reporting(True):  # plain lines in its log, which the grid shows (_forward_progress)
            outcome = _run_child(run, spec["out_root"], spec["parent_run_id"], spec["uri"])
    except Exception as e:
        atomic_write_text(result_path, json.dumps({"status": "failed", "error": error_line(e)}) + "\n")
        raise
    except KeyboardInterrupt as e:  # SIGTERM (RunTerminated) or Ctrl-C: the run has ended KILLED, resumable
        atomic_write_text(result_path, json.dumps({"status": "killed", "error": f"interrupted ({str(e) or 'Ctrl-C'})"})
                          + "\n")
        raise
    atomic_write_text(result_path, json.dumps(dataclasses.asdict(outcome)) + "\n")
    echo(f"done in {outcome.wall_s:.0f}s")
    return outcome


def _child_outcome(run: PlannedRun, exited: ChildExit, echo) -> ChildOutcome:
    """Turn an exited child process into its outcome (and echo it)."""
    result_path = exited.log_path.with_name(CHILD_RESULT)
    result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.exists() else {}
    if exited.returncode == 0 and result.get("status") == "finished":
        echo(f"done {run.name} in {result['wall_s']:.0f}s")
        return ChildOutcome(run.name, "finished", result["run_id"], result["wall_s"])
    message = result.get("error")
    if not message:
        rc = exited.returncode
        how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
        message = f"the child process {how} (see {exited.log_path})"
    return _failed(run, message, echo)


def _run_children_in_processes(todo: list[PlannedRun], out_root: str, parent_id: str, uri: str, jobs: int,
                               echo) -> list[ChildOutcome]:
    """Run ``todo`` in order, each child as ``python -m recipeset.cli experiment child SPEC``, at most ``jobs`` at
    a time. An exception (Ctrl-C, SIGTERM) stops the running children; the queued ones never start."""
    threads, env = child_environment(jobs)
    queue = list(todo)
    by_name = {run.name: run for run in todo}
    outcomes: list[ChildOutcome] = []
    with ChildProcesses(jobs) as children:
        while queue or children.running:
            while queue and children.has_room():
                run = queue.pop(0)
                spec = write_child_spec(run, out_root, parent_id, uri, threads)
                spec.with_name(CHILD_RESULT).unlink(missing_ok=True)  # a previous attempt's
                argv = [sys.executable, "-m", "recipeset.cli", "experiment", "child", str(spec.resolve())]
                children.start(run.name, argv, spec.with_name(CHILD_LOG), env=env)
                echo(f"run {run.name}  (log: {spec.with_name(CHILD_LOG)})")
            exited = children.wait(timeout=FORWARD_EVERY_S)
            _forward_progress(children)
            for child in exited:
                outcomes.append(_child_outcome(by_name[child.name], child, echo))
    return outcomes


FORWARD_EVERY_S = 1.0  # how often the grid shows its children's new progress lines


def _forward_progress(children: ChildProcesses) -> None:
    """The progress lines the children wrote to their logs since the last call, each prefixed with its child's
    name (nothing when this process does not report progress, e.g. --quiet)."""
    for name, line in children.new_lines():
        if progress.enabled() and progress.is_progress_line(line):
            progress.message(f"{name} {line}")


def log_results(parent, experiment: str, uri: str) -> None:
    """The results tables (CSV/JSON with their row labels, and all of them as Markdown) and the study's figures,
    as artifacts of the grid's parent run."""
    tables = results_tables(experiment, uri)
    for name, table in tables.items():
        parent.log_table(table.reset_index(), f"results/{name}")
    if tables:
        parent.log_text(tables_markdown(tables), "results/tables.md")
    for name, fig in study_figures(experiment, uri).items():
        parent.log_figure(fig, f"results/{name}")


# ---- results tables ---------------------------------------------------------------------------------------------
def _mean_std(values: pd.Series) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()  # params (model.n_parameters) arrive as strings
    if v.empty:
        return ""
    if len(v) == 1:
        return f"{v.iloc[0]:.4g}"
    return f"{v.mean():.4g} ± {v.std(ddof=1):.2g}"


def results_tables(experiment: str, uri: str | None = None) -> dict[str, pd.DataFrame]:
    """Per-task tables: one row per variant (mean ± std over seeds, n seeds), baselines beside them."""
    runs = search_runs_table(experiment, uri)
    out: dict[str, pd.DataFrame] = {}
    if runs.empty:
        return out
    neural, base_runs = _neural_and_baselines(runs, uri)
    for table, metrics in TABLES.items():
        rows = {}
        cols = [m for m in metrics if m in neural.columns]
        for variant, group in neural.groupby("variant", sort=False):
            rows[variant] = {"seeds": len(group), **{m: _mean_std(group[m]) for m in cols}}
        if table != "training_cost":
            rows.update(_oracle_rows(neural, metrics))
            rows.update(_baseline_rows(base_runs, metrics))
        if rows:
            out[table] = pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")
    selection = selection_table(neural, base_runs, functools.cache(lambda run_id: run_per_query(run_id, uri)))
    if not selection.empty:
        out["best_on_validation"] = selection
    return out


def _neural_and_baselines(runs: pd.DataFrame, uri: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The experiment's finished neural children, newest first, and its baselines children, newest first, each
    with its ``variant`` tag. A (variant, seed) run again after a config change of :data:`HASH_BASELINES` (its
    hash changed, so the grid re-ran it) counts once: its newest run."""
    variants = {rid: tags.get("variant", "") for rid, tags in run_tags(runs["run_id"], uri).items()}
    runs = runs.assign(variant=runs["run_id"].map(variants))
    neural = runs[(runs["variant"] != "baselines") & (runs["status"] == "FINISHED")]
    if "train.seed" in neural.columns:  # search_runs_table lists the newest first
        neural = neural.drop_duplicates(["variant", "train.seed"], keep="first")
    return neural, runs[runs["variant"] == "baselines"]


def run_per_query(run_id: str, uri: str | None = None) -> pd.DataFrame | None:
    """The per-query completion ranks a run logged (:data:`~recipeset.protocol.PER_QUERY_FILE`), or None for a
    run without them (one from before ``eval.query_draws``)."""
    return read_run_artifact(run_id, PER_QUERY_FILE, load_per_query, uri)


def _oracle_rows(neural: pd.DataFrame, metrics: list[str]) -> dict[str, dict]:
    """The generator's ceilings (synthetic data): the same in every run of the experiment (same queries); a column
    only some runs report (the joint-scored queries: decoders) comes from those runs."""
    rows = {}
    for prefix, label in (("test/bayes/", "bayes-optimal (generator)"),
                          ("test/bayes_unordered/", "bayes-optimal, order ignored")):
        oracle_cols = {m: m.replace("test/", prefix, 1) for m in metrics if m.startswith("test/")}
        values = {m: neural[c].dropna() for m, c in oracle_cols.items() if c in neural.columns}
        cells = {m: f"{v.iloc[0]:.4g}" for m, v in values.items() if not v.empty}
        if cells:
            rows[label] = {"seeds": 1, **cells}
    return rows


def _baseline_rows(base_runs: pd.DataFrame, metrics: list[str]) -> dict[str, dict]:
    """One ``baseline:<name>`` row per baseline of the baselines child (its ``<name>/test/<metric>`` metrics)."""
    rows: dict[str, dict] = {}
    if base_runs.empty:
        return rows
    row = base_runs.iloc[0]
    for col in base_runs.columns:
        if "/test/" in col and not col.startswith("test/"):
            bname, metric = col.split("/test/", 1)
            key = f"test/{metric}"
            if key in metrics and not (isinstance(row[col], float) and math.isnan(row[col])):
                rows.setdefault(f"baseline:{bname}", {"seeds": 1})[key] = f"{row[col]:.4g}"
    return rows


# The targets: (task, selection metric on validation, test metrics reported, required margin over the best
# baseline on every reported metric).
SELECTION: list[tuple[str, str, list[str], float]] = [
    ("completion", "completion/recall_at_10", ["completion/recall_at_10", "completion/mrr"], 0.02),
    ("set_completion", "set/micro_f1", ["set/micro_f1"], 0.0),
    ("cuisine", "cuisine/macro_f1", ["cuisine/macro_f1"], 0.0),
]
# The reported metrics with a paired bootstrap interval (recipeset.stats), from the runs' per-query test ranks.
PAIRED_METRICS: dict[str, str] = {"completion/recall_at_10": "recall@10", "completion/mrr": "mrr"}
CI_COLUMN, EXCLUDES_COLUMN = "paired 95% CI", "CI excludes 0"


def selection_table(neural: pd.DataFrame, base_runs: pd.DataFrame,
                    per_query: Callable[[str], pd.DataFrame | None] | None = None) -> pd.DataFrame:
    """"Best" as the protocol defines it: the neural variant and the baseline with the best *validation* score
    (mean over seeds), both reported on *test*; one row per (task, reported metric) with the difference and
    whether it meets the target (beat the baseline by at least the margin; a plain "beat" when it is 0).

    For :data:`PAIRED_METRICS`, the difference's paired 95% bootstrap interval over test recipes
    (:func:`paired_cells`) from the per-query ranks ``per_query(run_id)`` returns (None: the run saved none)."""
    rows = []
    for task, select, report, margin in SELECTION:
        val_col = f"val_eval/{select}"
        if val_col not in neural.columns or neural[val_col].isna().all():
            continue
        means = neural.groupby("variant")[val_col].mean().dropna()
        best = means.idxmax()
        group = neural[neural["variant"] == best]
        base, base_val = None, None
        if not base_runs.empty:
            brow = base_runs.iloc[0]
            cands = {c.split("/val_eval/", 1)[0]: brow[c] for c in base_runs.columns
                     if c.endswith(f"/val_eval/{select}") and not pd.isna(brow[c])}
            if cands:
                base = max(cands, key=cands.get)
                base_val = cands[base]
        for metric in report:
            test_col = f"test/{metric}"
            row = {"task": task, "metric": metric, "model (best on val)": best, "seeds": len(group),
                   "model val": f"{means[best]:.4g}" if metric == select else "",
                   "model test": _mean_std(group[test_col]) if test_col in group else ""}
            if base is not None:
                bval = base_runs.iloc[0].get(f"{base}/test/{metric}")
                value = pd.to_numeric(group.get(test_col), errors="coerce").dropna()
                diff = value.mean() - bval if not value.empty else float("nan")
                met = round(diff, 4) >= margin if margin else round(diff, 4) > 0
                row.update({"baseline (best on val)": base,
                            "baseline val": f"{base_val:.4g}" if metric == select else "",
                            "baseline test": f"{bval:.4g}", "difference": f"{diff:+.4f}",
                            "target": ("met" if met else "not met") + (f" (≥ {margin:+.2f})" if margin else " (> 0)")})
                if metric in PAIRED_METRICS:
                    row.update(paired_cells(group, base_runs.iloc[0], base, PAIRED_METRICS[metric], per_query))
            rows.append(row)
    return pd.DataFrame(rows).set_index("task") if rows else pd.DataFrame()


def paired_cells(group: pd.DataFrame, base_row: pd.Series, base: str, metric: str,
                 per_query: Callable[[str], pd.DataFrame | None] | None) -> dict[str, str]:
    """The interval cells of a best-model-vs-best-baseline row: every seed's run of the model paired with the
    baseline on the same test queries (``next`` scoring) and pooled — the difference is the mean over seeds of
    the paired difference (the table's "difference"), the interval resamples test recipes with all their draws
    and seeds (:func:`~recipeset.stats.paired_bootstrap`; the seeds' own spread is the model's ± std). A run
    without per-query ranks (one from before them) gets "n/a" and the reason, never a number."""
    def missing(why: str) -> dict[str, str]:
        return {CI_COLUMN: f"n/a: {why}", EXCLUDES_COLUMN: ""}

    if per_query is None or "run_id" not in group.columns or pd.isna(base_row.get("run_id")):
        return missing("no per-query ranks read")
    run_ids = [*group["run_id"], base_row["run_id"]]
    tables = {rid: per_query(rid) for rid in run_ids}
    absent = [rid for rid, t in tables.items() if t is None]
    if absent:
        return missing(f"run(s) {', '.join(r[:8] for r in absent)} saved no per-query ranks (from before "
                       "eval.query_draws)")
    base_table = tables.pop(base_row["run_id"])
    try:
        pairs = [paired_ranks(t, base_table[base_table["baseline"] == base]) for t in tables.values()]
    except RecipesetError as e:
        return missing(str(e))
    result = paired_bootstrap(np.concatenate([a for a, _ in pairs], axis=1),
                              np.concatenate([b for _, b in pairs], axis=1), metric)
    return {CI_COLUMN: result.interval(), EXCLUDES_COLUMN: "yes" if result.excludes_zero else "no"}


def study_figures(experiment: str, uri: str | None = None) -> dict[str, object]:
    """The study's figures (matplotlib Figures): ``completion.png`` — test Recall@10 and MRR per variant (mean
    and std over seeds) against the best baseline; ``learning_curves.png`` — train and validation loss per
    variant (mean over seeds) against the optimizer step."""
    runs = search_runs_table(experiment, uri)
    if runs.empty:
        return {}
    neural, base_runs = _neural_and_baselines(runs, uri)
    figs: dict[str, object] = {}
    metrics = [m for m in ("test/completion/recall_at_10", "test/completion/mrr") if m in neural.columns]
    if metrics and not neural.empty:
        fig, axes = new_figure(1, len(metrics), size=(5.5, 0.35 * neural["variant"].nunique() + 1.5))
        for ax, metric in zip(axes.flat, metrics, strict=False):
            stats = neural.groupby("variant", sort=False)[metric].agg(["mean", "std"]).iloc[::-1]
            ax.barh(stats.index, stats["mean"], xerr=stats["std"].fillna(0), color="tab:blue", alpha=0.8)
            if not base_runs.empty:
                brow = base_runs.iloc[0]
                key = metric.replace("test/", "/test/", 1)
                base = {c.split("/test/")[0]: brow[c] for c in base_runs.columns
                        if c.endswith(key) and not pd.isna(brow[c])}
                if base:
                    name = max(base, key=base.get)
                    ax.axvline(base[name], color="tab:red", ls="--", label=f"best baseline ({name})")
                    ax.legend(fontsize="small", loc="lower right")
            ax.set_title(metric.replace("test/", "test ").replace("_at_", "@"))
            ax.grid(axis="x", alpha=0.3)
        figs["completion.png"] = fig
    # an ensemble child trained nothing itself: no learning curves
    trained = neural[neural["train/loss"].notna()] if "train/loss" in neural.columns else neural
    variants = list(dict.fromkeys(trained["variant"]))
    if variants:
        ncols = min(4, len(variants))
        fig, axes = new_figure(math.ceil(len(variants) / ncols), ncols, size=(3.6, 2.8))
        for ax, variant in zip(axes.flat, variants, strict=False):
            for metric, color in (("train/loss", "tab:blue"), ("val/loss", "tab:orange")):
                curves = [metric_history(rid, metric, uri)
                          for rid in neural.loc[neural["variant"] == variant, "run_id"]]
                curves = [c for c in curves if not c.empty]
                if curves:
                    mean = pd.concat(curves, axis=1).sort_index().mean(axis=1)
                    ax.plot(mean.index, mean.values, color=color, label=metric,
                            marker="." if len(mean) < 30 else None)
            ax.set_title(variant, fontsize="small")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="x-small")
        for ax in list(axes.flat)[len(variants):]:
            ax.set_visible(False)
        figs["learning_curves.png"] = fig
    return figs


def tables_markdown(tables: dict[str, pd.DataFrame]) -> str:
    parts = []
    for name, df in tables.items():
        df = df.fillna("")
        header = f"| {df.index.name or ''} | " + " | ".join(str(c).replace("test/", "") for c in df.columns) + " |"
        sep = "|" + "---|" * (len(df.columns) + 1)
        lines = [f"| {idx} | " + " | ".join(str(v) for v in row) + " |" for idx, row in df.iterrows()]
        parts.append(f"### {name}\n\n" + "\n".join([header, sep, *lines]))
    return "\n\n".join(parts)


def tables_json(tables: dict[str, pd.DataFrame]) -> str:
    """``{table: {row label: {column: value}}}``; a table whose row labels repeat (``best_on_validation``: one
    row per task and metric) is a list of records with the label as a column."""
    def one(df: pd.DataFrame):
        if df.index.is_unique:
            return json.loads(df.to_json(orient="index"))
        return json.loads(df.reset_index().to_json(orient="records"))

    return json.dumps({k: one(v) for k, v in tables.items()}, indent=1)


__all__ = ["run_experiment", "results_tables", "selection_table", "study_figures", "log_results", "tables_markdown",
           "tables_json", "TABLES", "np"]
