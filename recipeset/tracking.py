"""MLflow tracking of a run: store and experiment set-up, the run tracker, grid parent runs.

With :mod:`recipeset.runs` (reading runs back) the only module that imports mlflow, and only inside functions
(``recipeset --help`` stays fast), besides :mod:`recipeset.pyfunc` (the pyfunc model), which only it imports.
A run is a :class:`Tracker`, used as a context manager::

    install_sigterm_handler()                         # once, at the entry point (recipeset.signals)
    uri = open_store()                                # arg > $MLFLOW_TRACKING_URI > sqlite:///<cwd>/mlflow.db,
                                                      # created under a lock / a server asked once (one line if not)
    ensure_experiment(config.tracking.experiment, uri)  # in the parent process, before any worker
    with Tracker.start(config, uri=uri) as tracker:   # params, tags and the resolved config logged once
        tracker.log_dataset("flavornet", path, sha256, {"train": 800, "val": 100, "test": 100})
        for step in ...:
            tracker.log_metrics({"train/loss": loss}, step)   # buffered, flushed with log_batch
        tracker.log_table(table, "eval/test")              # CSV + JSON
        tracker.log_model_dir(checkpoint_dir)              # -> "runs:/<id>/model", read by recipeset.load_model
        tracker.log_pyfunc(checkpoint_dir, register="NAME")  # -> "runs:/<id>/pyfunc", mlflow.pyfunc.load_model;
                                                          #    tracker.registered == "models:/NAME/<version>"
    # FINISHED on success, FAILED on an exception, KILLED on Ctrl-C / SIGTERM; a SIGKILLed run stays RUNNING
    # and ``Tracker.start(config, resume_run_id=run_id)`` continues it.

SIGTERM ends a run KILLED only once :func:`recipeset.signals.install_sigterm_handler` has made it raise
:class:`RunTerminated` (``recipeset.cli.main`` and grid workers do so first thing; without it Python's default
action ends the process on the spot and the run stays RUNNING, resumable like a SIGKILLed one). The tracker
installs no handler itself; it ends a run that was being created when the interrupt landed.

A grid is a parent run (:func:`start_parent_run`) with child runs (``Tracker.start(..., parent_run_id=...)``,
tagged ``mlflow.parentRunId`` — what ``mlflow.start_run(nested=True)`` sets); :func:`recipeset.runs.find_finished_run`
finds a finished child with the same config hash so a grid can resume. All calls go through an explicit
``MlflowClient`` bound to one tracking URI (:func:`mlflow_client`): no global MLflow state, so several trackers can
coexist.

A tracking server that goes away during a run does not end it: see :class:`Tracker` (metrics kept and sent again,
what is never sent saved to the run directory's ``unlogged_metrics.jsonl`` for :func:`replay_unlogged`).

Metric names: MLflow forbids ``@``, so ``recall@10`` is logged as ``recall_at_10`` (:func:`metric_key`).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipeset.config import RunConfig
from recipeset.errors import RecipesetError
from recipeset.io_utils import check_writable_dir, file_lock, write_errors
from recipeset.signals import RunTerminated  # re-exported: it ends runs KILLED

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML_KIND = "custom_model_development"  # the UI opens such experiments on the runs view (not GenAI traces)
PARENT_RUN_TAG = "mlflow.parentRunId"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
RETRY_AFTER_S = 30.0        # a store that stopped answering is tried again after 30 s,
MAX_RETRY_AFTER_S = 300.0   # then twice as long each time, at most every 5 min
UNLOGGED_FILE = "unlogged_metrics.jsonl"  # in the run directory: what a run could not log, for replay_unlogged

log = logging.getLogger(__name__)


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


def check_tracking_store(uri: str) -> None:
    """Fail early, with one line, when the SQLite store of ``uri`` (``sqlite:///path``) cannot be written: its
    directory under /proc, under a file, read-only or not writable, or the database file itself read-only. Other
    stores (a tracking server) are not checked here. A missing directory is fine where it can be created (MLflow
    creates it)."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not db.name or db.name == ":memory:":
        return
    fix = "pass --tracking-uri (or MLFLOW_TRACKING_URI) a writable place, or --no-track"
    check_writable_dir(db.parent, f"MLflow store {uri}: its directory", fix)
    if db.exists():
        with write_errors(f"MLflow store {db}: cannot write it", fix):
            open(db, "ab").close()  # opened for writing, nothing written


def open_store(uri: str | None = None, probe: bool = True) -> str:
    """The resolved tracking URI (:func:`resolve_tracking_uri`) of a store that is ready: call it before work
    that needs the store, so a store problem is one line before the work, not a traceback after it.

    A SQLite store (the default) is created and migrated by one process at a time, under an exclusive lock on
    ``<db>.lock`` beside the database (MLflow's own migration races: processes started together on a new store
    died with "duplicate column name"); once per process and URI. A tracking server (http/https) is, with
    ``probe``, asked one question with a short timeout (:func:`probe_server`). Other stores are left to MLflow.
    """
    uri = resolve_tracking_uri(uri)
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "sqlite":
        create_sqlite_store(uri)
    elif probe and scheme in ("http", "https"):
        probe_server(uri)
    return uri


_READY_STORES: set[Path] = set()  # the SQLite databases this process has opened
_READY_LOCK = threading.Lock()


def create_sqlite_store(uri: str) -> bool:
    """Create and migrate the SQLite store ``uri`` under its lock file if it is new (or not migrated yet);
    returns whether this call created it (False: it existed, or this process already opened it)."""
    from mlflow import MlflowClient
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        return False
    db = Path(database).resolve()
    with _READY_LOCK:
        if db in _READY_STORES:
            return False
        if not db.parent.is_dir():
            raise RecipesetError(f"tracking URI {uri}: the directory {db.parent} does not exist; create it or "
                                 "choose another --tracking-uri")
        with file_lock(db.with_name(db.name + ".lock")):
            created = not _has_table(db, "alembic_version")
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates and migrates the schema
        _READY_STORES.add(db)
    return created


def _has_table(db: Path, table: str) -> bool:
    if not db.exists():
        return False
    with contextlib.closing(sqlite3.connect(db)) as con:
        found = con.execute("select 1 from sqlite_master where type = 'table' and name = ?", (table,)).fetchone()
    return found is not None


PROBE_TIMEOUT_S = 5
PROBE_STARTING_TIMEOUT_S = 60  # a server whose /health answers but that is still starting (probe_server)
# What the store says when two runs of one experiment insert the same new dataset at once (Tracker._log_inputs):
# SQLite, and PostgreSQL behind a tracking server (which has no lock that serialises the two).
DATASET_INSERT_RACE = ("UNIQUE constraint failed: datasets", 'violates unique constraint "dataset_pk"')
# MLflow's HTTP settings for a tracker's metric batches (unless the user set them): with its defaults (7
# retries, up to 120 s apart) the first flush after a server went away blocked training for four minutes.
TRACKER_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


@contextlib.contextmanager
def mlflow_env(values: Mapping[str, str], override: bool = True) -> Iterator[None]:
    """Set MLflow's environment variables (read at each request) for the block, then restore them; with
    ``override=False`` a variable the user set keeps the user's value."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update({k: v for k, v in values.items() if override or before[k] is None})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def probe_server(uri: str) -> None:
    """Ask the tracking server ``uri`` for one experiment, without retries, waiting at most
    :data:`PROBE_TIMEOUT_S` seconds; a server that does not answer as MLflow does is one line (RecipesetError)
    naming the URI and what to do. A server that lets the question time out but answers its ``/health`` is up
    and still starting (a fresh ``mlflow server``'s workers and database connections: 5-6 s on 2 busy cores),
    so it is asked again, waiting at most :data:`PROBE_STARTING_TIMEOUT_S` seconds."""
    try:
        _ask_server(uri, PROBE_TIMEOUT_S)
        return
    except Exception as e:  # noqa: BLE001 - whatever the network or the server says becomes one line
        failure = e
    if error_reason(failure) == "timed out" and _health_answers(uri):
        try:
            _ask_server(uri, PROBE_STARTING_TIMEOUT_S)
            return
        except Exception as e:  # noqa: BLE001
            failure = e
    raise RecipesetError(f"MLflow tracking server {uri} does not answer ({error_reason(failure)}): start it "
                         "(mlflow server --host HOST --port PORT), point --tracking-uri or MLFLOW_TRACKING_URI at "
                         "one that runs, or train without tracking (recipeset train --no-track)") from None


def _ask_server(uri: str, timeout: float) -> None:
    from mlflow import MlflowClient

    with mlflow_env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def _health_answers(uri: str) -> bool:
    """Whether the server's ``/health`` (MLflow's liveness check, which does not touch its store) answers 200
    within :data:`PROBE_TIMEOUT_S` seconds."""
    import requests

    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).status_code == 200
    except requests.RequestException:
        return False


def error_reason(e: BaseException) -> str:
    """A short reason for a failed store call: the OS error of a failed connection (``Connection refused``),
    ``timed out``, the HTTP status of an answer that is not MLflow's, else the first line of the message, cut at
    160 characters."""
    text = str(e).strip()
    if "timeout" in text.lower() or "timed out" in text.lower():
        return "timed out"
    status = re.search(r"error code (\d{3}) != 200", text)
    if status:
        return f"HTTP {status.group(1)}"
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first if len(first) <= 160 else first[:157] + "..."


def mlflow_client(uri: str | None = None) -> MlflowClient:
    """An ``MlflowClient`` bound to the store ``uri`` (resolved as in :func:`resolve_tracking_uri`; a new SQLite
    store is created first, see :func:`open_store`)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=open_store(uri, probe=False))


def ensure_experiment(name: str, uri: str | None = None, description: str | None = None) -> str:
    """Create the store and the experiment if needed (call it in the parent, before workers); return its id.

    The experiment is tagged as classic ML (``mlflow.experimentKind``) so the UI opens the runs view.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
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


# ---- names and values --------------------------------------------------------------------------------------
def check_model_name(name: str) -> str:
    """A registered model name MLflow accepts (not empty, no ``/`` or ``:``, not ``.`` or ``..``), else one line;
    checked before a run starts, so a bad ``--register`` does not wait for the end of training."""
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/:") or name.strip() in (".", ".."):
        raise RecipesetError(f"--register {name!r}: not a registered model name; use letters, digits, '-', '_' or "
                             "'.', without '/' or ':' (e.g. --register recipe-completer)")
    return name


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


def store_unavailable(e: BaseException) -> bool:
    """Whether a failed store call means a tracking server is unavailable, maybe for a while: the connection
    failed or timed out, or the server (or a proxy in front of it) answered with an HTTP 5xx. Anything else —
    a request the store rejects, a local SQLite store's own error — is not an outage and is raised."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    network = (ConnectionError, TimeoutError, requests.RequestException)
    seen: BaseException | None = e
    while seen is not None:  # MLflow's REST client wraps the requests error it caught
        if isinstance(seen, network):
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(e, MlflowException) and e.get_http_status_code() >= 500:
        return isinstance(e, RestException) or str(e).startswith("API request to")
    return False


class _Outage:
    """The store stopped answering: when to try it again (the wait doubles at each failure, up to 5 min)."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.next_try = time.monotonic() + wait_s

    def due(self) -> bool:
        return time.monotonic() >= self.next_try

    def failed_again(self) -> None:
        self.wait_s = min(2 * self.wait_s, MAX_RETRY_AFTER_S)
        self.next_try = time.monotonic() + self.wait_s


# ---- the run -------------------------------------------------------------------------------------------------
class Tracker:
    """One MLflow run: params/tags at start, buffered metrics, artifacts, and the final status on exit.

    Create it with :meth:`start` (or :func:`start_parent_run`) and use it as a context manager.

    A store that stops answering once the run exists (a tracking server that went away) does not end the run:
    metrics stay buffered and are sent again at a later flush (after ``retry_after_s``, then waiting twice as long
    each time, at most 5 min), other calls (artifacts, tags) are skipped and listed in :attr:`unlogged`; the first
    failure and the recovery are one warning line each. If metrics or the final status are still unsent when the
    run ends, they are saved to ``<local_dir>/unlogged_metrics.jsonl`` (:func:`replay_unlogged` sends them) and
    one warning line says how many and where.
    """

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, uri: str, *,
                 flush_interval_s: float = 10.0, flush_every_steps: int = 100,
                 skip_until: Mapping[str, int] | None = None, local_dir: str | os.PathLike | None = None,
                 retry_after_s: float = RETRY_AFTER_S) -> None:
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
        self.local_dir = Path(local_dir) if local_dir is not None else None  # where unsent metrics are saved
        self.retry_after_s = retry_after_s
        self._outage: _Outage | None = None
        self._last_error = ""  # why the store last failed
        self.unlogged: list[str] = []  # what the store did not take, but metrics (they stay in the buffer)
        self.registered: str | None = None  # models:/NAME/<version> once log_pyfunc(register=NAME) registered it

    # ---- lifecycle ----------------------------------------------------------------------------------------
    @classmethod
    def start(cls, config: RunConfig, run_name: str | None = None, experiment: str | None = None,
              uri: str | None = None, parent_run_id: str | None = None, resume_run_id: str | None = None,
              tags: Mapping[str, Any] | None = None, flush_interval_s: float = 10.0,
              flush_every_steps: int = 100, local_dir: str | os.PathLike | None = None) -> Tracker:
        """Start (or, with ``resume_run_id``, continue) a run for ``config``.

        ``run_name``/``experiment``/``uri`` default to ``config.tracking``. A new run gets the flattened config
        as params, tags (git commit, seed, config hash, parent) and ``config.json``; a resumed run gets none of
        these again (its config hash must match), and metrics at steps it already has are not logged twice.
        Metrics are flushed every ``flush_interval_s`` seconds or ``flush_every_steps`` ``log_metrics`` calls, and
        by :meth:`flush` (the trainer calls it before every checkpoint).

        Every step exactly once after a kill and ``--resume``: the flush before each checkpoint puts every step up
        to the checkpoint's in the store, and flushes send metrics in logging order, so what the store holds of a
        metric is always a prefix of its steps. The resumed run replays from the checkpoint and skips the steps up
        to the last stored one — those a flush stored after the checkpoint and before the kill, whose values the
        replay reproduces (every draw of a step is a function of (seed, step)); MLflow cannot delete a value.
        ``local_dir`` (the run directory) is where metrics the store never took are saved (default: the cwd).
        """
        uri = resolve_tracking_uri(uri or config.tracking.tracking_uri)
        experiment = experiment or config.tracking.experiment
        run_name = run_name or config.tracking.run_name
        experiment_id = ensure_experiment(experiment, uri)
        client = mlflow_client(uri)
        chash = config.config_hash()
        kwargs = {"flush_interval_s": flush_interval_s, "flush_every_steps": flush_every_steps,
                  "local_dir": local_dir}

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
        elif issubclass(exc_type, RunStopped):
            self.set_tags(exc.tags)
            self.end(exc.status)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")

    def end(self, status: str = "FINISHED") -> None:
        """Flush buffered metrics and set the final status (FINISHED, FAILED or KILLED). Both are tried even
        during an outage; what the store still does not take is saved for :func:`replay_unlogged`."""
        if self._ended:
            return
        self._ended = True
        try:
            self.flush(force=True)
        finally:
            ended = self._send("status", lambda: self._client.set_terminated(self.run_id, status=status), force=True)
        if self._buffer or not ended:
            self._save_unlogged(None if ended else status)
        elif self.unlogged:
            log.warning("MLflow store %s did not take this run's %s (%s); they are in the run directory",
                        self.uri, ", ".join(sorted(set(self.unlogged))), self._last_error)

    def _send(self, what: str, call: Callable[[], Any], force: bool = False, small: bool = True) -> bool:
        """Make the store call ``call``; True once it went through. While the store does not answer
        (:func:`store_unavailable`) nothing is raised: ``what`` goes to :attr:`unlogged` ("metrics" stay in the
        buffer instead) and later calls are skipped until the next try is due (``force``: try anyway). ``small``
        requests, and all during an outage, use :data:`TRACKER_HTTP` (few retries, short timeouts)."""
        if self._outage is not None and not (force or self._outage.due()):
            return self._not_sent(what)
        try:
            with mlflow_env(TRACKER_HTTP if small or self._outage else {}, override=False):
                call()
        except Exception as e:
            if not store_unavailable(e):
                raise
            self._last_error = error_reason(e)
            if self._outage is None:
                self._outage = _Outage(self.retry_after_s)
                log.warning("MLflow store %s does not answer (%s): the run goes on, its metrics are kept and sent "
                            "when the store answers again", self.uri, self._last_error)
            else:
                self._outage.failed_again()
            return self._not_sent(what)
        if self._outage is not None:
            self._outage = None
            log.warning("MLflow store %s answers again: the buffered metrics are sent", self.uri)
        return True

    def _not_sent(self, what: str) -> bool:
        if what != "metrics":
            self.unlogged.append(what)
        return False

    def _save_unlogged(self, status: str | None) -> Path:
        """Append the unsent metrics (and the final ``status``, when the store did not take it) to
        ``unlogged_metrics.jsonl``, one JSON object a line, empty the buffer and say so in one warning line."""
        path = (self.local_dir or Path.cwd()) / UNLOGGED_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        head = {"store": self.uri, "run_id": self.run_id}
        lines = [json.dumps({**head, "key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step})
                 for m in self._buffer]
        if status is not None:
            lines.append(json.dumps({**head, "status": status, "end_time": _now_ms()}))
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        n, self._buffer = len(self._buffer), []
        others = sorted(set(self.unlogged) - {"status"})
        also = f" (also not logged, kept in the run directory: {', '.join(others)})" if others else ""
        log.warning("MLflow store %s did not answer (%s): %d metrics%s not logged, saved in %s; send them with "
                    "`recipeset replay-metrics %s` once it answers%s", self.uri, self._last_error, n,
                    " and the run's end" if status else "", path, path.parent, also)
        return path

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
            chunk = items[i : i + MAX_PARAMS_PER_BATCH]
            self._send("params", lambda chunk=chunk: self._client.log_batch(self.run_id, params=chunk))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = items[i : i + MAX_PARAMS_PER_BATCH]
            self._send("tags", lambda chunk=chunk: self._client.log_batch(self.run_id, tags=chunk))

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

    def flush(self, force: bool = False) -> None:
        """Send buffered metrics with ``log_batch``, at most 1000 per call. During an outage they stay buffered
        until the next try is due (``force``: try now)."""
        while self._buffer and self._send("metrics", self._send_chunk, force=force):
            pass
        self._steps_since_flush = 0
        self._last_flush = time.monotonic()

    def _send_chunk(self) -> None:
        chunk = self._buffer[:MAX_METRICS_PER_BATCH]
        self._client.log_batch(self.run_id, metrics=chunk)
        del self._buffer[: len(chunk)]

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
        self._send("dataset", lambda: self._log_inputs(inputs))
        self._datasets.append((name, sha256))
        self.set_tags({"dataset": "+".join(n for n, _ in self._datasets),
                       "dataset_sha256": "+".join(s for _, s in self._datasets)})

    def _log_inputs(self, inputs: list) -> None:
        for attempt in range(5):
            try:
                self._client.log_inputs(self.run_id, datasets=inputs)
                return
            except Exception as e:  # noqa: BLE001 - only the insert race below is retried
                # Two runs of one experiment logging the same new dataset at once (parallel grid children):
                # both insert it and the store's unique key rejects the second; on retry it finds the row.
                if not any(said in str(e) for said in DATASET_INSERT_RACE) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a local file (or a directory's contents) under ``artifact_path``."""
        path = Path(path)
        if not path.exists():
            raise RecipesetError(f"{path}: no such file to log as an artifact")
        send = self._client.log_artifacts if path.is_dir() else self._client.log_artifact
        self._send(str(Path(artifact_path or "") / path.name), lambda: send(self.run_id, str(path), artifact_path),
                   small=False)

    def log_dict(self, d: Mapping[str, Any] | list, name: str) -> None:
        """Log a JSON-serialisable object as the artifact ``name`` (``.json`` or ``.yaml``)."""
        self._send(name, lambda: self._client.log_dict(self.run_id, d, name), small=False)

    def log_text(self, text: str, name: str) -> None:
        self._send(name, lambda: self._client.log_text(self.run_id, text, name), small=False)

    def log_table(self, df: pd.DataFrame, name: str) -> None:
        """Log a table as ``<name>.csv`` and ``<name>.json`` (records), e.g. ``name="eval/test"``."""
        self.log_text(df.to_csv(index=False), f"{name}.csv")
        self.log_text(df.to_json(orient="records", indent=1), f"{name}.json")

    def log_figure(self, fig: Figure, name: str) -> None:
        """Save a matplotlib figure as the artifact ``name`` (default extension ``.png``)."""
        if not Path(name).suffix:
            name += ".png"
        self._send(name, lambda: self._client.log_figure(self.run_id, fig, name), small=False)

    def log_model_dir(self, model_dir: str | os.PathLike, artifact_path: str = "model") -> str | None:
        """Log a checkpoint directory (config + weights, no pickle) as artifacts; return ``runs:/<id>/model``
        (None when the store did not take it).

        :func:`recipeset.runs.download_model_dir` on the returned URI gives back the same files, and
        ``recipeset.load_model`` the model.
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise RecipesetError(f"{model_dir}: not a model directory")
        if not self._send(artifact_path, lambda: self._client.log_artifacts(self.run_id, str(model_dir),
                                                                             artifact_path), small=False):
            return None
        uri = f"runs:/{self.run_id}/{artifact_path}"
        self.set_tags({"model_uri": uri})
        return uri

    def log_pyfunc(self, model_dir: str | os.PathLike, name: str = "pyfunc", step: int = 0,
                   register: str | None = None) -> str | None:
        """Log a checkpoint directory as an MLflow pyfunc model (:mod:`recipeset.pyfunc`: a model from code, no
        pickle) named ``name``, an MLflow logged model of this run at ``step``; return ``runs:/<id>/<name>``, which
        ``mlflow.pyfunc.load_model`` reads (None when the store did not take it). ``register``: also register it
        in the Model Registry under that name, as its next version (:attr:`registered`: ``models:/NAME/<version>``).

        Like every call of the tracker this one goes to the tracker's own store, not MLflow's global one
        (``mlflow.pyfunc.log_model`` would need an active run there): the logged model is created, filled and
        finalised by the client, as ``mlflow.pyfunc.log_model`` does."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise RecipesetError(f"{model_dir}: not a model directory")
        if register is not None:
            check_model_name(register)
        logged: list[str] = []
        if not self._send(name, lambda: logged.append(self._log_logged_model(model_dir, name, step)), small=False):
            return None
        if register is not None:
            self._send(f"registered model {register}", lambda: self._register(logged[0], register))
        uri = f"runs:/{self.run_id}/{name}"
        self.set_tags({"pyfunc_uri": uri})
        return uri

    def _log_logged_model(self, model_dir: Path, name: str, step: int) -> str:
        import tempfile

        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model

        from recipeset.pyfunc import save_pyfunc

        logged = self._client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id,
                                                  model_type="recipeset")
        try:
            with tempfile.TemporaryDirectory(prefix="recipeset-pyfunc-") as tmp:
                local = save_pyfunc(model_dir, Path(tmp) / name, Model(
                    artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=self.run_id,
                    model_id=logged.model_id))
                self._client.log_model_artifacts(logged.model_id, str(local))
            self._client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=step)])
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        self._client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        return logged.model_id

    def _register(self, model_id: str, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        version = self._client.create_model_version(name, source=f"models:/{model_id}", run_id=self.run_id,
                                                    model_id=model_id)
        self.registered = f"models:/{name}/{version.version}"


def replay_unlogged(path: str | os.PathLike, uri: str | None = None) -> int:
    """Send what runs could not log (:attr:`Tracker.unlogged` metrics and final statuses, saved in a run directory's
    ``unlogged_metrics.jsonl``; ``path`` is that file or the run directory) to the store they were meant for
    (``uri`` to send them elsewhere); then the file is renamed ``unlogged_metrics.jsonl.replayed``. Returns the
    number of metrics sent. The store must answer (:func:`open_store`)."""
    from mlflow.entities import Metric

    path = Path(path)
    path = path / UNLOGGED_FILE if path.is_dir() else path
    if not path.is_file():
        raise RecipesetError(f"{path}: no such file; a run writes {UNLOGGED_FILE} into its directory only when "
                             "its MLflow store did not answer")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    metrics: dict[tuple[str, str], list] = {}  # (store, run id) -> metrics
    for r in records:
        if "key" in r:
            metrics.setdefault((uri or r["store"], r["run_id"]), []).append(
                Metric(r["key"], r["value"], r["timestamp"], r["step"]))
    for (store, run_id), items in metrics.items():
        client = mlflow_client(open_store(store))
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=items[i : i + MAX_METRICS_PER_BATCH])
    for r in records:
        if "status" in r:
            mlflow_client(open_store(uri or r["store"])).set_terminated(r["run_id"], status=r["status"],
                                                                        end_time=r["end_time"])
    path.rename(path.with_name(path.name + ".replayed"))
    return sum(len(items) for items in metrics.values())


class RunStopped(Exception):
    """Raised inside a tracked run to stop it early on purpose (a pruned tuning trial, :mod:`recipeset.tune`):
    the run ends ``status`` (KILLED: it did not reach its end) with ``tags`` saying why, not FAILED."""

    def __init__(self, message: str, tags: Mapping[str, Any], status: str = "KILLED") -> None:
        super().__init__(message)
        self.tags, self.status = dict(tags), status


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


def _run_in(client: MlflowClient, run_id: str, experiment_id: str) -> bool:
    """Whether the store holds the run ``run_id`` in the experiment ``experiment_id``."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.experiment_id == experiment_id
    except MlflowException:
        return False


def start_parent_run(experiment: str, run_name: str, uri: str | None = None,
                     tags: Mapping[str, Any] | None = None, description: str | None = None,
                     reuse: bool = True, run_id: str | None = None) -> Tracker:
    """Start the parent run of a grid (children pass ``parent_run_id=parent.run_id`` to :meth:`Tracker.start`).

    With ``reuse``, an unfinished parent of the same name (a grid that was killed or failed) is continued, so a
    resumed grid keeps all its children under one parent. ``run_id`` (a tuning study's parent, kept in its Optuna
    storage) is continued whatever its status, when the experiment holds it.
    """
    uri = resolve_tracking_uri(uri)
    experiment_id = ensure_experiment(experiment, uri, description)
    client = mlflow_client(uri)
    if run_id is not None and not _run_in(client, run_id, experiment_id):
        run_id = None
    with _creating_run(client) as creating:
        if run_id is not None:
            creating["run_id"] = run_id
            client.update_run(run_id, status="RUNNING")
        elif reuse:
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


__all__ = [
    "EXPERIMENT_KIND_TAG", "CLASSIC_ML_KIND", "PARENT_RUN_TAG", "RunStopped", "RunTerminated", "Tracker",
    "resolve_tracking_uri", "open_store", "create_sqlite_store", "probe_server", "replay_unlogged", "UNLOGGED_FILE",
    "mlflow_client", "ensure_experiment", "start_parent_run", "metric_key", "git_commit",
]
