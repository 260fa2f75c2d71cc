"""Hyper-parameter search on validation: ``recipeset tune EXPERIMENT.toml`` (Optuna, tracked in MLflow).

The experiment file's ``[tune]`` section (:class:`~recipeset.experiments.TuneSpec`) gives the metric, the budget
and the search space; ``[base]`` (with one ``[[grid]]`` variant, ``--variant``) the fixed part. Every trial is a
``run_training`` run in this process, an MLflow child run of one parent run, in ``<out>/trial-<n>/``. The
pruner is fed by the trainer's periodic validation (``train.eval_every``) through its ``on_validate`` hook: the
metric itself when it is a ``val/loss...`` metric, else ``train.early_stopping_metric`` (a loss, negated for a
maximised metric); a pruned trial's run ends KILLED with the tag ``tune_state = pruned``.

Resume: Optuna's storage is the SQLite file ``<out>/optuna.db`` (default ``<out>`` = ``runs/tune/<study>``), so
re-running the same command continues the same study: ``trials`` is the study's total of finished (complete or
pruned) trials, finished trials are never repeated. A trial a kill left RUNNING (its process is gone), or one
stopped by Ctrl-C / SIGTERM, is marked failed and queued again with the same parameters; the retry continues the
interrupted run's checkpoint in the same directory when there is one. One ``tune`` command per study at a time;
``--jobs N`` runs N worker processes on the study (each trial records its owner's host and pid, so a worker's
running trial is never taken for an interrupted one); each stops when the finished trials plus those running
reach the budget (a race between two finishing at once may start up to N − 1 more).

The best trial's configuration is written to ``<out>/best_config.toml`` (``recipeset train --config`` reads it;
``--dataset``/``--path`` override its data) and logged to the parent run with the best value and parameters as
metrics (``best/value``, ``best/<key>``) and tags (``best_trial``, ``best_params``): MLflow params cannot change
once logged, and a resumed search may find a better trial.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from recipeset import progress
from recipeset.config import RunConfig
from recipeset.errors import RecipesetError
from recipeset.experiments import Experiment, SearchParam, TuneSpec, load_experiment
from recipeset.io_utils import atomic_write_text
from recipeset.pipeline import RunResult, run_training
from recipeset.tracking import RunStopped, Tracker, ensure_experiment, open_store, start_parent_run
from recipeset.training import STATE_FILE, derived_seed, recover_checkpoint

log = logging.getLogger(__name__)

STORAGE_FILE = "optuna.db"
BEST_CONFIG = "best_config.toml"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialFailed(Exception):
    """A trial that failed on a RecipesetError (a sampled config that cannot train, a diverging loss): recorded
    as FAIL, the search goes on."""


@dataclass
class TuneResult:
    """How a search ended: the study, its counts, the best trial and where its config was written."""

    study: str
    storage: Path
    metric: str
    direction: str
    counts: dict[str, int]
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    config_path: Path
    parent_run_id: str
    new_trials: list[int] = field(default_factory=list)


# ---- the study --------------------------------------------------------------------------------------------------
def spec_fingerprint(spec: TuneSpec) -> str:
    """What a study's stored values mean (metric, direction, space): a resumed study must not change it."""
    space = [[p.key, p.low, p.high, p.log, p.integer, list(p.choices) if p.choices else None] for p in spec.space]
    return json.dumps({"metric": spec.metric, "direction": spec.direction, "space": space}, sort_keys=True)


def open_study(spec: TuneSpec, storage_path: Path, name: str) -> optuna.Study:
    """Create the study in ``storage_path`` (SQLite), or load it: same metric, direction and space, or an error.
    The sampler's seed is derived from ``tune.seed`` and the number of trials so far, so a resumed search does
    not draw its first trials' parameters again."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{storage_path}")
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup_trials)
              if spec.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=name, storage=storage, direction=spec.direction, pruner=pruner,
                                load_if_exists=True)
    fingerprint = spec_fingerprint(spec)
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", fingerprint)
    elif stored != fingerprint or study.direction.name.lower() != spec.direction:
        raise RecipesetError(f"{storage_path}: study '{name}' was started with another [tune] metric, direction "
                             "or space; restore them, or search into another --out")
    seed = derived_seed(spec.seed, len(study.trials)) % 2**32
    study.sampler = (optuna.samplers.TPESampler(seed=seed) if spec.sampler == "tpe"
                     else optuna.samplers.RandomSampler(seed=seed))
    return study


def _owner_alive(trial: FrozenTrial) -> bool:
    """Whether the process that runs ``trial`` is still alive (a process on another host is assumed to be)."""
    owner = trial.user_attrs.get("owner")
    if not owner:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    if owner.get("pid") == os.getpid():
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Trials an earlier command left unfinished — RUNNING with their process gone (SIGKILL), or stopped by Ctrl-C /
    SIGTERM — are marked FAIL and queued again with their parameters (once each); returns their numbers."""
    storage = study._storage
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("resumes") for t in trials}
    requeued = []
    for t in trials:
        if t.state == TrialState.RUNNING and not _owner_alive(t):
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        elif not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")):
            continue
        if t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"resumes": t.number,
                                                      "run_dir_trial": t.user_attrs.get("run_dir_trial", t.number)})
            requeued.append(t.number)
    return requeued


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state: complete, pruned, fail (running/waiting when some are)."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


# ---- one trial --------------------------------------------------------------------------------------------------
def suggest(trial: Trial, p: SearchParam) -> Any:
    """The trial's value of one search dimension."""
    if p.choices is not None:
        return trial.suggest_categorical(p.key, list(p.choices))
    if p.integer:
        return trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.key, p.low, p.high, log=p.log)


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class TrialObjective:
    """Optuna's objective: train the trial's config as a child run, return its validation metric."""

    def __init__(self, spec: TuneSpec, fixed: RunConfig, out: Path, study_name: str, parent_id: str,
                 echo) -> None:
        self.spec, self.fixed, self.out = spec, fixed, out
        self.study_name, self.parent_id, self.echo = study_name, parent_id, echo

    def __call__(self, trial: Trial) -> float:
        trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_user_attr("interrupted", False)
        run_dir_trial = trial.user_attrs.get("run_dir_trial", trial.number)
        trial.set_user_attr("run_dir_trial", run_dir_trial)
        params = {p.key: suggest(trial, p) for p in self.spec.space}
        resumes = trial.user_attrs.get("resumes")
        self.echo(f"trial {trial.number}{f' (again: trial {resumes})' if resumes is not None else ''}: "
                  f"{format_params(params)}")
        started = time.perf_counter()
        try:
            cfg = self.fixed.override({**params, "tracking.run_name": f"{self.study_name}/trial-{run_dir_trial}"},
                                      source=f"trial {trial.number}")
            result = self._train(cfg, trial, self.out / f"trial-{run_dir_trial}")
        except RunStopped as e:
            self.echo(f"  {e}")
            raise optuna.TrialPruned(str(e)) from None
        except RecipesetError as e:
            self.echo(f"  FAILED: {e}")
            raise TrialFailed(str(e)) from None
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # queued again by the next command (recover_interrupted)
            raise
        trial.set_user_attr("mlflow_run_id", result.run_id)
        value = self.value(result)
        self.echo(f"  {self.spec.metric} = {value:.5g} ({time.perf_counter() - started:.0f} s)")
        return value

    def _train(self, cfg: RunConfig, trial: Trial, run_dir: Path) -> RunResult:
        """The trial's run (continuing an interrupted run's checkpoint in ``run_dir``, if any)."""
        recover_checkpoint(run_dir / "checkpoint")
        resume = (run_dir / "checkpoint" / STATE_FILE).exists()
        return run_training(cfg, out_dir=run_dir, resume=resume, parent_run_id=self.parent_id,
                            progress=progress.enabled(),
                            tags={"trial": trial.number, "optuna_study": self.study_name},
                            on_validate=self.reporter(trial))

    def reporter(self, trial: Trial):
        """The trainer's ``on_validate`` hook: report the periodic metric, stop the run when the pruner says so."""
        key = self.spec.metric if self.spec.periodic else self.fixed.train.early_stopping_metric
        sign = -1.0 if self.spec.direction == "maximize" else 1.0  # a loss, oriented like the study

        def report(metrics: dict[str, float], step: int) -> None:
            trial.report(sign * metrics[key], step)
            if trial.should_prune():
                raise RunStopped(f"pruned at step {step} ({key} {metrics[key]:.5g})",
                                 tags={"tune_state": "pruned", "pruned_at_step": step})

        return report

    def value(self, result: RunResult) -> float:
        """The trial's value: the best periodic ``val/loss...`` (that of the model kept), or the validation
        evaluation's metric after training."""
        if self.spec.periodic:
            return float(result.best_val)
        key = self.spec.metric.removeprefix("val_eval/")
        for k in (key, key.replace("_at_", "@")):
            if k in result.val_metrics:
                return float(result.val_metrics[k])
        available = ", ".join(f"val_eval/{k}" for k in sorted(result.val_metrics)) or "none (eval.tasks)"
        raise RecipesetError(f"tune.metric {self.spec.metric!r} is not computed by the validation evaluation; "
                             f"available: {available}")


# ---- the search -------------------------------------------------------------------------------------------------
def study_name(exp: Experiment, variant: str | None, quick: bool) -> str:
    """``<experiment>[-<variant>][-quick]``: the Optuna study, its parent run's and default directory's name."""
    return exp.name + (f"-{variant}" if variant else "") + ("-quick" if quick else "")


def budget_taken(study: optuna.Study, trials: int) -> bool:
    """Whether the study's finished trials plus the ones running (in any worker) reach ``trials``."""
    return sum(t.state in FINISHED or t.state == TrialState.RUNNING
               for t in study.get_trials(deepcopy=False)) >= trials


class StopWhenBudgetIsTaken:
    """An Optuna callback for one of several workers: stop this worker when :func:`budget_taken` (so the workers
    together run the budget, not each)."""

    def __init__(self, trials: int) -> None:
        self.trials = trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if budget_taken(study, self.trials):
            study.stop()


def run_tune(path: str | os.PathLike, trials: int | None = None, minutes: float | None = None,
             uri: str | None = None, out: str | os.PathLike | None = None, variant: str | None = None,
             quick: bool = False, echo=print, jobs: int = 1, worker: bool = False) -> TuneResult | None:
    """Search the file's ``[tune]`` space (``trials``/``minutes`` replace its budget) until the study has
    ``trials`` finished trials or ``minutes`` have passed (no trial starts after that); see the module doc.

    ``jobs`` > 1: that many worker processes (``recipeset tune ... --worker``, each with the cores ÷ ``jobs``
    threads) take trials from the same study until the budget is taken; this process waits for them and
    summarises. ``worker``: be one of them (no parent-run handling, no summary; returns None)."""
    exp = load_experiment(path)
    spec = exp.tune
    if spec is None:
        raise RecipesetError(f"{path}: no [tune] section (see README, 'Tuning')")
    trials = trials if trials is not None else spec.trials
    minutes = minutes if minutes is not None else spec.minutes
    name = study_name(exp, variant, quick)
    uri = open_store(uri)  # a server that does not answer: one line before any trial
    experiment = f"{exp.tracking_experiment(quick)}-tune"
    fixed = exp.fixed_config(variant, quick).override(
        {"tracking.experiment": experiment, "tracking.tracking_uri": uri,
         **({"train.early_stopping_metric": spec.metric} if spec.periodic else {})}, source=f"{path} [tune]")
    out = Path(out) if out is not None else Path("runs") / "tune" / name
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own one line per trial instead
    ensure_experiment(experiment, uri, exp.description)
    study = open_study(spec, out / STORAGE_FILE, name)
    if worker:
        _work(study, spec, fixed, out, name, trials, minutes, echo)
        return None
    with start_parent_run(experiment, f"{name}/tune", uri, tags={"optuna_study": name, "optuna_storage": out /
                          STORAGE_FILE}, description=exp.description, reuse=False,
                          run_id=study.user_attrs.get("mlflow_parent_run_id")) as parent:
        if "mlflow_parent_run_id" not in study.user_attrs:
            study.set_user_attr("mlflow_parent_run_id", parent.run_id)
            _log_search(parent, spec, fixed)
        requeued = recover_interrupted(study)
        if requeued:
            parent.end_running_children("KILLED")  # their process is gone; a retry continues its run
            echo(f"queued again (interrupted): trial {', '.join(map(str, requeued))}")
        done = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
        todo = None if trials is None else max(0, trials - done)
        echo(f"study {name} ({out / STORAGE_FILE}): {done} finished trials"
             + ("" if todo is None else f", {todo} to go") + (f", at most {minutes:g} min" if minutes else ""))
        before = len(study.trials)
        if todo != 0 and jobs > 1:
            _run_workers(path, jobs if todo is None else min(jobs, todo), trials, minutes, uri, out, variant,
                         quick, echo)
        elif todo != 0:
            study.optimize(TrialObjective(spec, fixed, out, name, parent.run_id, echo), n_trials=todo,
                           timeout=None if minutes is None else minutes * 60, catch=(TrialFailed,))
        result = _summarise(study, spec, fixed, exp.name, out, parent)
        result.new_trials = [t.number for t in study.trials[before:]]
    return result


def _work(study: optuna.Study, spec: TuneSpec, fixed: RunConfig, out: Path, name: str, trials: int | None,
          minutes: float | None, echo) -> None:
    """One worker of ``--jobs N``: trials of the shared study until the budget is taken (finished + running)."""
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id is None:
        raise RecipesetError(f"{out / STORAGE_FILE}: no parent run yet; start the search without --worker")
    if trials is not None and budget_taken(study, trials):  # taken by the others before this worker started
        return
    callbacks = [] if trials is None else [StopWhenBudgetIsTaken(trials)]
    study.optimize(TrialObjective(spec, fixed, out, name, parent_id, echo), n_trials=None,
                   timeout=None if minutes is None else minutes * 60, catch=(TrialFailed,), callbacks=callbacks)


def _run_workers(path: str | os.PathLike, jobs: int, trials: int | None, minutes: float | None, uri: str,
                 out: Path, variant: str | None, quick: bool, echo) -> None:
    """``jobs`` worker processes on the study (each logging to ``<out>/worker-<i>.log``, its trial lines
    echoed here); an exception here (Ctrl-C, SIGTERM) stops them — their running trials are queued again by the
    next command, as a killed search's."""
    import sys

    from recipeset.processes import ChildProcesses
    from recipeset.threads import child_environment

    _, env = child_environment(jobs)
    argv = [sys.executable, "-m", "recipeset.cli", "tune", str(Path(path).resolve()), "--worker", "--quiet",
            "--tracking-uri", uri, "--out", str(out.resolve())]
    argv += [] if trials is None else ["--trials", str(trials)]
    argv += [] if minutes is None else ["--minutes", str(minutes)]
    argv += ([] if variant is None else ["--variant", variant]) + (["--quick"] if quick else [])
    failed = []
    with ChildProcesses(jobs) as workers:
        for i in range(jobs):
            workers.start(f"worker-{i}", argv, out / f"worker-{i}.log", env=env)
            time.sleep(1.0)  # staggered: the first trials' storage writes do not contend
        while workers.running:
            exited = workers.wait(timeout=1.0)
            for name, line in workers.new_lines():
                if line.startswith(("trial ", "  ")):
                    echo(f"{name}: {line.rstrip()}")
            failed += [f"{w.name} (exit {w.returncode}, log {w.log_path})" for w in exited if w.returncode != 0]
    if failed:
        raise RecipesetError(f"tuning worker failed: {'; '.join(failed)}")


def _log_search(parent: Tracker, spec: TuneSpec, fixed: RunConfig) -> None:
    """The search's own params (once, when the study starts) and the fixed config as an artifact."""
    params: dict[str, Any] = {"tune.metric": spec.metric, "tune.direction": spec.direction,
                              "tune.sampler": spec.sampler, "tune.seed": spec.seed, "tune.pruner": spec.pruner}
    for p in spec.space:
        params[f"tune.space.{p.key}"] = (f"choices {list(p.choices)}" if p.choices is not None else
                                         f"[{p.low}, {p.high}]{' log' if p.log else ''}{' int' if p.integer else ''}")
    parent.log_params(params)
    parent.log_dict(fixed.to_dict(), "fixed_config.json")


def _summarise(study: optuna.Study, spec: TuneSpec, fixed: RunConfig, experiment: str, out: Path,
               parent: Tracker) -> TuneResult:
    """Write the best trial's config, log the search's state to the parent run, return the result."""
    counts = state_counts(study)
    finished = counts.get("complete", 0) + counts.get("pruned", 0)
    parent.log_metrics({f"tune/{k}": float(v) for k, v in counts.items()}, finished)
    if not counts.get("complete"):
        raise RecipesetError(f"study {study.study_name}: no trial completed yet ("
                             + ", ".join(f"{v} {k}" for k, v in counts.items()) + ");"
                             " re-run the command to continue it")
    best = study.best_trial
    cfg = fixed.override({**best.params, "tracking.experiment": experiment, "tracking.run_name": None,
                          "tracking.tracking_uri": None}, source=f"best trial {best.number}")
    config_path = write_run_config(cfg, out / BEST_CONFIG)
    parent.log_metrics({"best/value": best.value, "best/trial": float(best.number),
                        **{f"best/{k}": float(v) for k, v in best.params.items()
                           if isinstance(v, int | float) and not isinstance(v, bool)}}, finished)
    parent.set_tags({"best_trial": best.number, "best_params": json.dumps(best.params),
                     "best_mlflow_run": best.user_attrs.get("mlflow_run_id", "")})
    parent.log_artifact(config_path)
    return TuneResult(study=study.study_name, storage=out / STORAGE_FILE, metric=spec.metric,
                      direction=spec.direction, counts=counts, best_trial=best.number, best_value=float(best.value),
                      best_params=dict(best.params), config_path=config_path, parent_run_id=parent.run_id)


# ---- the best config as a file ----------------------------------------------------------------------------------
def toml_value(value: Any) -> str:
    """A TOML literal for a config value (None inside a table is left out; TOML has no null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()
                                if v is not None) + " }"
    raise TypeError(f"no TOML literal for {value!r}")


def write_run_config(cfg: RunConfig, path: Path) -> Path:
    """``cfg`` as a run-config TOML file (``recipeset train --config``); fields set to None are left out. A config
    TOML cannot hold exactly (a None whose default is not None) is written as JSON beside it instead; returns the
    file written."""
    lines = ["# The best configuration of a `recipeset tune` search: recipeset train --config THIS_FILE",
             "# (--dataset / --path / --set override it)"]
    for section, values in cfg.to_dict().items():
        lines.append(f"\n[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]
    text = "\n".join(lines) + "\n"
    if RunConfig.from_dict(tomllib.loads(text), source=str(path)).to_dict() == cfg.to_dict():
        atomic_write_text(path, text)
        return path
    path = path.with_suffix(".json")
    cfg.save(path)
    return path
