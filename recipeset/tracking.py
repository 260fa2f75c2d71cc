"""MLflow tracking: the only module that imports mlflow, and only inside functions (``recipeset --help`` stays fast).

A run is a :class:`Tracker`, used as a context manager::

    install_sigterm_handler()                         # once, at the entry point (recipeset.signals)
    uri = resolve_tracking_uri()                      # arg > $MLFLOW_TRACKING_URI > sqlite:///<cwd>/mlflow.db
    ensure_experiment(config.tracking.experiment, uri)  # in the parent process, before any worker
    with Tracker.start(config, uri=uri) as tracker:   # params, tags and the resolved config logged once
        tracker.log_dataset("flavornet", path, sha256, {"train": 800, "val": 100, "test": 100})
        for step in ...:
            tracker.log_metrics({"train/loss": loss}, step)   # buffered, flushed with log_batch
        tracker.log_table(table, "eval/test")              # CSV + JSON
        tracker.log_model_dir(checkpoint_dir)              # -> "runs:/<id>/model", read by load_model
    # FINISHED on success, FAILED on an exception, KILLED on Ctrl-C / SIGTERM; a SIGKILLed run stays RUNNING
    # and ``Tracker.start(config, resume_run_id=run_id)`` continues it.

SIGTERM ends a run KILLED only once :func:`recipeset.signals.install_sigterm_handler` has made it raise
:class:`RunTerminated` (``recipeset.cli.main`` and grid workers do so first thing; without it Python's default
action ends the process on the spot and the run stays RUNNING, resumable like a SIGKILLed one). The tracker
installs no handler itself; it ends a run that was being created when the interrupt landed.

A grid is a parent run (:func:`start_parent_run`) with child runs (``Tracker.start(..., parent_run_id=...)``,
tagged ``mlflow.parentRunId`` — what ``mlflow.start_run(nested=True)`` sets); :func:`find_finished_run` finds a
finished child with the same config hash so a grid can resume. All calls go through an explicit
``MlflowClient`` bound to one tracking URI: no global MLflow state, so several trackers can coexist.

Metric names: MLflow forbids ``@``, so ``recall@10`` is logged as ``recall_at_10`` (:func:`metric_key`).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipeset.config import RunConfig, suggest
from recipeset.errors import RecipesetError
from recipeset.signals import RunTerminated  # re-exported: it ends runs KILLED

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML_KIND = "custom_model_development"  # the UI opens such experiments on the runs view (not GenAI traces)
PARENT_RUN_TAG = "mlflow.parentRunId"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
_LOWER_IS_BETTER = re.compile(r"loss|nll|rank|perplexity|ppl|error|tv|spread|time|seconds")


@contextlib.contextmanager
def _creating_run(client: MlflowClient):
    """Create or continue a run so that an interrupt landing while it is being created (params, config) ends it
    KILLED instead of leaving it RUNNING forever. The body sets ``state["run_id"]`` as soon as the run exists; if
    it raises, that run ends KILLED (Ctrl-C / SIGTERM, see :mod:`recipeset.signals`) or FAILED."""
    state: dict[str, Any] = {"run_id": None}
    try:
        yield state
    except BaseException as e:
        if state["run_id"] is not None:
            client.set_terminated(state["run_id"], status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


# ---- store and experiments ---------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    The default is made absolute so a later ``chdir`` (or a worker started elsewhere) uses the same store.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        raise RecipesetError(f"tracking URI {uri!r}: expected a URI such as sqlite:///mlflow.db or "
                             "http://host:5000 (the ./mlruns file store is not supported by current MLflow)")
    return uri


def _client(uri: str | None = None) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=resolve_tracking_uri(uri))


def ensure_experiment(name: str, uri: str | None = None, description: str | None = None) -> str:
    """Create the store and the experiment if needed (call it in the parent, before workers); return its id.

    The experiment is tagged as classic ML (``mlflow.experimentKind``) so the UI opens the runs view.
    """
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        tags = {EXPERIMENT_KIND_TAG: CLASSIC_ML_KIND}
        if description:
            tags["mlflow.note.content"] = description
        try:
            return client.create_experiment(name, tags=tags)
        except MlflowException:
            exp = client.get_experiment_by_name(name)  # another process created it meanwhile
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise RecipesetError(f"MLflow experiment '{name}' is deleted: restore it (`mlflow experiments restore "
                             f"--experiment-id {exp.experiment_id}`) or use another name")
    if exp.tags.get(EXPERIMENT_KIND_TAG) != CLASSIC_ML_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML_KIND)
    if description and exp.tags.get("mlflow.note.content") != description:
        client.set_experiment_tag(exp.experiment_id, "mlflow.note.content", description)
    return exp.experiment_id


def _get_experiment(client: MlflowClient, name: str):
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise RecipesetError(f"no MLflow experiment '{name}' in {client.tracking_uri}{suggest(name, names)}"
                             f" — existing: {', '.join(names) or 'none'}")
    return exp


# ---- names and values --------------------------------------------------------------------------------------
def metric_key(name: str) -> str:
    """MLflow-safe metric name: ``@`` -> ``_at_`` (``recall@10`` -> ``recall_at_10``), other bad characters -> ``_``."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    # MLflow rejects longer values; the full config is in the config.json artifact anyway.
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def git_commit(cwd: str | os.PathLike | None = None) -> tuple[str, bool] | None:
    """``(commit sha, dirty)`` of the git repository containing ``cwd`` (default: the working directory)."""
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,  # noqa: E731
                                           timeout=10, check=True).stdout.strip()
        sha = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return sha, dirty


def _now_ms() -> int:
    return int(time.time() * 1000)


# ---- the run -------------------------------------------------------------------------------------------------
class Tracker:
    """One MLflow run: params/tags at start, buffered metrics, artifacts, and the final status on exit.

    Create it with :meth:`start` (or :func:`start_parent_run`) and use it as a context manager.
    """

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, uri: str, *,
                 flush_interval_s: float = 10.0, flush_every_steps: int = 100,
                 skip_until: Mapping[str, int] | None = None) -> None:
        self._client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri
        self.flush_interval_s = flush_interval_s
        self.flush_every_steps = flush_every_steps
        self._buffer: list[Any] = []          # mlflow.entities.Metric, in logging order
        self._steps_since_flush = 0
        self._last_flush = time.monotonic()
        self._skip_until = dict(skip_until or {})  # resume: metric key -> last step already in the store
        self._datasets: list[tuple[str, str]] = []
        self._ended = False

    # ---- lifecycle ----------------------------------------------------------------------------------------
    @classmethod
    def start(cls, config: RunConfig, run_name: str | None = None, experiment: str | None = None,
              uri: str | None = None, parent_run_id: str | None = None, resume_run_id: str | None = None,
              tags: Mapping[str, Any] | None = None, flush_interval_s: float = 10.0,
              flush_every_steps: int = 100) -> Tracker:
        """Start (or, with ``resume_run_id``, continue) a run for ``config``.

        ``run_name``/``experiment``/``uri`` default to ``config.tracking``. A new run gets the flattened config
        as params, tags (git commit, seed, config hash, parent) and ``config.json``; a resumed run gets none of
        these again (its config hash must match), and metrics at steps it already has are not logged twice.
        Metrics are flushed every ``flush_interval_s`` seconds or ``flush_every_steps`` ``log_metrics`` calls.
        """
        uri = resolve_tracking_uri(uri or config.tracking.tracking_uri)
        experiment = experiment or config.tracking.experiment
        run_name = run_name or config.tracking.run_name
        experiment_id = ensure_experiment(experiment, uri)
        client = _client(uri)
        chash = config.config_hash()
        kwargs = {"flush_interval_s": flush_interval_s, "flush_every_steps": flush_every_steps}

        with _creating_run(client) as creating:
            if resume_run_id is not None:
                run = _get_run(client, resume_run_id)
                if run.info.experiment_id != experiment_id:
                    raise RecipesetError(f"run {resume_run_id} belongs to another experiment than '{experiment}'")
                old_hash = run.data.tags.get("config_hash")
                if old_hash is not None and old_hash != chash:
                    raise RecipesetError(f"cannot resume run {resume_run_id}: its config differs from this one "
                                         "(params cannot change) — start a new run, e.g. with --init-from")
                # The last step already stored per metric: after a kill, the trainer replays steps from its
                # checkpoint, and those must not appear twice in the history.
                skip = {key: max(m.step for m in client.get_metric_history(resume_run_id, key))
                        for key in run.data.metrics}
                client.update_run(resume_run_id, status="RUNNING")
                client.set_tag(resume_run_id, "resumed_at", str(_now_ms()))
                creating["run_id"] = resume_run_id
                tracker = cls(client, resume_run_id, experiment_id, uri, skip_until=skip, **kwargs)
            else:
                all_tags = _default_tags()
                all_tags.update({"seed": str(config.train.seed), "config_hash": chash, "run_kind": "run",
                                 "dataset": config.data.dataset})
                if parent_run_id is not None:
                    _get_run(client, parent_run_id)
                    all_tags[PARENT_RUN_TAG] = parent_run_id
                all_tags.update({k: str(v) for k, v in (tags or {}).items()})
                run_id = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
                creating["run_id"] = run_id
                tracker = cls(client, run_id, experiment_id, uri, **kwargs)
                tracker.log_params(config.flatten())
                client.log_dict(run_id, config.to_dict(), "config.json")
        return tracker

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")

    def end(self, status: str = "FINISHED") -> None:
        """Flush buffered metrics and set the final status (FINISHED, FAILED or KILLED)."""
        if self._ended:
            return
        self._ended = True
        try:
            self.flush()
        finally:
            self._client.set_terminated(self.run_id, status=status)

    def end_running_children(self, status: str = "KILLED") -> list[str]:
        """Set every child run of this (parent) run that is still RUNNING to ``status``; returns their ids.

        For a stopped grid: a worker that is killed before it could end its own run (it did not exit in time)
        would otherwise leave that run RUNNING for good. Call it only once the workers are gone."""
        found = self._client.search_runs([self.experiment_id], max_results=1000,
                                         filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}' "
                                                       "and attributes.status = 'RUNNING'")
        for run in found:
            self._client.set_terminated(run.info.run_id, status=status)
        return [run.info.run_id for run in found]

    # ---- params, tags, metrics ---------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (lists as JSON, values cut at MLflow's 6000 characters) in batches of 100."""
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=items[i : i + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer ``metrics`` (name -> number, e.g. a 0-d tensor) at global ``step``; flushed in batches.

        Names pass through :func:`metric_key`. A non-finite value is logged as is (MLflow stores NaN/inf).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise RecipesetError(f"log_metrics: step must be a non-negative int, got {step!r}")
        if self._ended:  # a buffered metric would never be flushed: fail loudly instead of dropping it
            raise RuntimeError(f"log_metrics after the run {self.run_id} ended")
        from mlflow.entities import Metric

        ts = _now_ms()
        for name, value in metrics.items():
            key = metric_key(name)
            if step <= self._skip_until.get(key, -1):
                continue
            self._buffer.append(Metric(key, float(value), ts, step))
        self._steps_since_flush += 1
        if (self._steps_since_flush >= self.flush_every_steps
                or time.monotonic() - self._last_flush >= self.flush_interval_s):
            self.flush()

    def flush(self) -> None:
        """Send buffered metrics with ``log_batch``, at most 1000 per call."""
        while self._buffer:
            chunk = self._buffer[:MAX_METRICS_PER_BATCH]
            self._client.log_batch(self.run_id, metrics=chunk)
            del self._buffer[: len(chunk)]
        self._steps_since_flush = 0
        self._last_flush = time.monotonic()

    # ---- datasets and artifacts -----------------------------------------------------------------------------
    def log_dataset(self, name: str, source_path: str | os.PathLike | None, sha256: str,
                    counts: Mapping[str, int] | None = None, context: str = "train") -> None:
        """Record dataset lineage: an ``mlflow.data`` dataset with the real source and digest, plus tags.

        ``source_path`` is the file/directory/URL the data came from (None for generated data); ``counts``
        (e.g. recipes per split) become tags of the dataset input. The run gets tags ``dataset`` and
        ``dataset_sha256`` (``+``-joined when several datasets are mixed).
        """
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        if source_path is None:
            source = CodeDatasetSource({"generator": name})
        else:
            src = str(source_path)
            if "://" not in src:
                src = str(Path(src).resolve())
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": all are the local source
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(src)
        # The digest column holds 36 characters; the full SHA-256 goes into the tags.
        ds = MetaDataset(source=source, name=name, digest=sha256[:32])
        input_tags = [InputTag("mlflow.data.context", context), InputTag("sha256", sha256)]
        input_tags += [InputTag(str(k), str(v)) for k, v in (counts or {}).items()]
        inputs = [DatasetInput(ds._to_mlflow_entity(), input_tags)]
        for attempt in range(5):
            try:
                self._client.log_inputs(self.run_id, datasets=inputs)
                break
            except Exception as e:  # noqa: BLE001 - only the insert race below is retried
                # Two runs of one experiment logging the same new dataset at once (parallel grid children):
                # both insert it and the store's unique key rejects the second; on retry it finds the row.
                if "UNIQUE constraint failed: datasets" not in str(e) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        self._datasets.append((name, sha256))
        self.set_tags({"dataset": "+".join(n for n, _ in self._datasets),
                       "dataset_sha256": "+".join(s for _, s in self._datasets)})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a local file (or a directory's contents) under ``artifact_path``."""
        path = Path(path)
        if not path.exists():
            raise RecipesetError(f"{path}: no such file to log as an artifact")
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, d: Mapping[str, Any] | list, name: str) -> None:
        """Log a JSON-serialisable object as the artifact ``name`` (``.json`` or ``.yaml``)."""
        self._client.log_dict(self.run_id, d, name)

    def log_text(self, text: str, name: str) -> None:
        self._client.log_text(self.run_id, text, name)

    def log_table(self, df: pd.DataFrame, name: str) -> None:
        """Log a table as ``<name>.csv`` and ``<name>.json`` (records), e.g. ``name="eval/test"``."""
        self._client.log_text(self.run_id, df.to_csv(index=False), f"{name}.csv")
        self._client.log_text(self.run_id, df.to_json(orient="records", indent=1), f"{name}.json")

    def log_figure(self, fig: Figure, name: str) -> None:
        """Save a matplotlib figure as the artifact ``name`` (default extension ``.png``)."""
        if not Path(name).suffix:
            name += ".png"
        self._client.log_figure(self.run_id, fig, name)

    def log_model_dir(self, model_dir: str | os.PathLike, artifact_path: str = "model") -> str:
        """Log a checkpoint directory (config + weights, no pickle) as artifacts; return ``runs:/<id>/model``.

        ``download_model_dir`` on the returned URI gives back the same files for ``load_model``.
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise RecipesetError(f"{model_dir}: not a model directory")
        self._client.log_artifacts(self.run_id, str(model_dir), artifact_path)
        uri = f"runs:/{self.run_id}/{artifact_path}"
        self._client.set_tag(self.run_id, "model_uri", uri)
        return uri


def _default_tags() -> dict[str, str]:
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": Path(sys.argv[0]).name or "python"}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    commit = git_commit()
    if commit is not None:
        tags["mlflow.source.git.commit"] = commit[0]
        tags["git_dirty"] = str(commit[1]).lower()
    return tags


def _get_run(client: MlflowClient, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise RecipesetError(f"no MLflow run '{run_id}' in {client.tracking_uri}") from None


def start_parent_run(experiment: str, run_name: str, uri: str | None = None,
                     tags: Mapping[str, Any] | None = None, description: str | None = None,
                     reuse: bool = True) -> Tracker:
    """Start the parent run of a grid (children pass ``parent_run_id=parent.run_id`` to :meth:`Tracker.start`).

    With ``reuse``, an unfinished parent of the same name (a grid that was killed or failed) is continued, so a
    resumed grid keeps all its children under one parent.
    """
    uri = resolve_tracking_uri(uri)
    experiment_id = ensure_experiment(experiment, uri, description)
    client = _client(uri)
    run_id = None
    with _creating_run(client) as creating:
        if reuse:
            escaped = run_name.replace("'", "\\'")
            found = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1,
                                       filter_string=f"tags.run_kind = 'parent' and attributes.run_name = '{escaped}' "
                                                     "and attributes.status != 'FINISHED'")
            if found:
                run_id = creating["run_id"] = found[0].info.run_id
                client.update_run(run_id, status="RUNNING")
        if run_id is None:
            all_tags = {**_default_tags(), "run_kind": "parent", **{k: str(v) for k, v in (tags or {}).items()}}
            run_id = creating["run_id"] = client.create_run(experiment_id, run_name=run_name,
                                                            tags=all_tags).info.run_id
    return Tracker(client, run_id, experiment_id, uri)


# ---- reading back ---------------------------------------------------------------------------------------------
def find_finished_run(experiment: str, params_hash: str, uri: str | None = None) -> str | None:
    """The id of a FINISHED run in ``experiment`` whose config hash is ``params_hash`` (newest), else None."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    if not re.fullmatch(r"[0-9a-f]+", params_hash):
        raise RecipesetError(f"find_finished_run: {params_hash!r} is not a config hash")
    runs = client.search_runs([exp.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.config_hash = '{params_hash}' and attributes.status = 'FINISHED'")
    return runs[0].info.run_id if runs else None


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (losses, NLL, ranks, order sensitivity, times)."""
    return bool(_LOWER_IS_BETTER.search(metric.lower()))


def search_runs_table(experiment: str, uri: str | None = None, metric: str | None = None,
                      ascending: bool | None = None, include_parents: bool = False) -> pd.DataFrame:
    """A table of the experiment's runs, best first by ``metric`` (else newest first).

    Columns: ``run_id``, ``run``, ``status``, ``parent_run_id``, every metric (MLflow names), every param
    (``model.name`` ...). ``ascending`` defaults to :func:`lower_is_better`. Parent runs of grids are left out
    unless ``include_parents``. Runs lacking the metric come last.
    """
    import pandas as pd

    client = _client(uri)
    exp = _get_experiment(client, experiment)
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = page.token
        if not token:
            break
    rows = []
    for r in runs:
        if r.data.tags.get("run_kind") == "parent" and not include_parents:
            continue
        row = {"run_id": r.info.run_id, "run": r.info.run_name, "status": r.info.status,
               "parent_run_id": r.data.tags.get(PARENT_RUN_TAG)}
        row.update(r.data.metrics)
        row.update(r.data.params)
        rows.append(row)
    df = pd.DataFrame(rows, columns=["run_id", "run", "status", "parent_run_id"] if not rows else None)
    if metric is not None:
        key = metric_key(metric)
        metric_names = sorted({k for r in runs for k in r.data.metrics})
        if key not in df.columns or key not in metric_names:
            raise RecipesetError(f"no metric '{metric}' in experiment '{experiment}'{suggest(key, metric_names)}"
                                 f" — available: {', '.join(metric_names) or 'none'}")
        asc = lower_is_better(key) if ascending is None else ascending
        df = df.sort_values(key, ascending=asc, na_position="last", kind="stable")
        df = df[["run_id", "run", "status", key] + [c for c in df.columns if c not in
                                                     ("run_id", "run", "status", key)]]
    return df.reset_index(drop=True)


def download_model_dir(uri: str, dst: str | os.PathLike | None = None, tracking_uri: str | None = None) -> str:
    """Local directory holding a logged model: ``runs:/<id>/model``, ``models:/<name>/<version>`` or a path.

    A local directory is returned as is; an MLflow URI is downloaded into ``dst`` (default: a new temporary
    directory) from the store at ``tracking_uri`` (default as in :func:`resolve_tracking_uri`).
    """
    if not uri.startswith(("runs:/", "models:/")) and "://" not in uri:
        if Path(uri).is_dir():
            return str(uri)
        raise RecipesetError(f"{uri}: not a model directory or a runs:/ or models:/ URI")
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    dst = str(dst) if dst is not None else tempfile.mkdtemp(prefix="recipeset-model-")
    resolved = resolve_tracking_uri(tracking_uri)
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst, tracking_uri=resolved,
                                                   registry_uri=resolved)
    except (MlflowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipesetError(f"cannot download model {uri} from {resolved}: {first}") from None
    if not Path(path).is_dir():
        raise RecipesetError(f"{uri}: is a file, not a model directory")
    return path


# ---- plots (matplotlib Figure objects without pyplot: no global backend state, works headless) -----------------
def _new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 4.0)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot_learning_curves(history: Mapping[str, Sequence[tuple[int, float]]]) -> Figure:
    """Learning curves from ``{metric name: [(step, value), ...]}``.

    Metrics sharing the part after ``/`` (``train/loss`` and ``val/loss``) share one panel.
    """
    if not history:
        raise RecipesetError("plot_learning_curves: no metrics to plot")
    panels: dict[str, list[str]] = {}
    for name in history:
        panels.setdefault(name.split("/", 1)[-1], []).append(name)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _new_figure(nrows, ncols)
    for ax, (title, names) in zip(axes.flat, panels.items(), strict=False):
        for name in names:
            points = sorted(history[name])
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=name, marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return fig


def plot_confusion(cm: np.ndarray | Sequence[Sequence[int]], labels: Sequence[str]) -> Figure:
    """Confusion matrix ``cm [C, C]`` (rows: true, columns: predicted), colour = row-normalised recall."""
    import numpy as np

    cm = np.asarray(cm, dtype=float)
    c = len(labels)
    if cm.shape != (c, c):
        raise RecipesetError(f"plot_confusion: matrix of shape {cm.shape} does not match {c} labels")
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
    side = max(4.0, 0.35 * c + 2)
    fig, axes = _new_figure(size=(side + 1, side))
    ax = axes[0, 0]
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(c), labels, rotation=90, fontsize="small")
    ax.set_yticks(range(c), labels, fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 20:  # counts stay legible only on small matrices
        for i, j in zip(*np.nonzero(cm), strict=True):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize="x-small",
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="fraction of true class")
    return fig


def plot_embedding_map(emb: Any, names: Sequence[str], counts: Sequence[int] | None = None,
                       n_labels: int = 30) -> Figure:
    """2-D PCA of ingredient embeddings ``emb [V, D]`` (numpy or torch), labelling the ``n_labels`` most frequent.

    Without ``counts`` the rows are taken to be in descending frequency (the Vocabulary's id order).
    """
    import numpy as np

    if hasattr(emb, "detach"):
        emb = emb.detach().float().cpu().numpy()
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(names):
        raise RecipesetError(f"plot_embedding_map: embeddings of shape {x.shape} do not match {len(names)} names")
    x = x - x.mean(axis=0, keepdims=True)
    # PCA by SVD: the top-2 right singular vectors are the principal axes.
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T if vt.shape[0] >= 2 else np.pad(x @ vt.T, ((0, 0), (0, 2 - vt.shape[0])))
    order = np.argsort(-np.asarray(counts), kind="stable") if counts is not None else np.arange(len(names))
    fig, axes = _new_figure(size=(7.0, 6.0))
    ax = axes[0, 0]
    ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.5)
    for i in order[:n_labels]:
        ax.annotate(names[i], (xy[i, 0], xy[i, 1]), fontsize="x-small")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("ingredient embeddings (PCA)")
    return fig


__all__ = [
    "EXPERIMENT_KIND_TAG", "CLASSIC_ML_KIND", "RunTerminated", "Tracker", "resolve_tracking_uri",
    "ensure_experiment", "start_parent_run", "find_finished_run", "search_runs_table", "download_model_dir",
    "metric_key", "lower_is_better", "git_commit", "plot_learning_curves", "plot_confusion", "plot_embedding_map",
]

