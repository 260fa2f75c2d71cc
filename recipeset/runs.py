"""Reading runs back from an MLflow store: finished runs, run tables, tags, metric histories and models.

Everything the tracker wrote can be queried here without starting a run::

    find_finished_run("grid", cfg.config_hash())        # a finished run with this config, so a grid can resume
    search_runs_table("grid", metric="val/recall@10")   # one row per run, best first
    run_tags(run_ids)                                   # {run id: {tag: value}}
    metric_history(run_id, "train/loss")                # pandas Series: step -> value
    load_model("runs:/<id>/model")                      # downloads, then recipeset.models.io.load_model
    runs_view_url("http://127.0.0.1:5000", "grid")      # the MLflow UI's runs view of a study, metrics as columns

:func:`load_model` is ``recipeset.load_model``: it resolves ``runs:/…``/``models:/…`` URIs here, above the
model layer, so ``recipeset.models`` never depends on MLflow. Like :mod:`recipeset.tracking`, this module
imports mlflow only inside functions (importing it stays cheap; ``recipeset --help`` imports neither).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pandas as pd

from recipeset.ensemble import Ensemble
from recipeset.errors import RecipesetError
from recipeset.models.base import RecipeModel
from recipeset.models.io import REMOTE_PREFIXES
from recipeset.models.io import load_model as load_model_dir
from recipeset.registry import suggest
from recipeset.tracking import PARENT_RUN_TAG, metric_key, mlflow_client, mlflow_env, open_store

T = TypeVar("T")

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from mlflow import MlflowClient

# The MLflow UI (3.x) applies the view state stored in the experiment tag ``mlflow.sharedViewState.<key>`` when
# its runs view is opened with ``?viewStateShareKey=<key>`` (what its "Share" button writes): search facets and
# table columns, which its URL alone cannot select.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
_LOWER_IS_BETTER = re.compile(r"loss|nll|rank|perplexity|ppl|error|tv|spread|time|seconds")


def _get_experiment(client: MlflowClient, name: str):
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise RecipesetError(f"no MLflow experiment '{name}' in {client.tracking_uri}{suggest(name, names)}"
                             f" — existing: {', '.join(names) or 'none'}")
    return exp


def latest_experiment(client: MlflowClient):
    """The experiment whose run was started or ended last (a running grid's, else the last finished one), or None
    when the store has no run."""
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return None
    newest = [run for key in ("end_time", "start_time")
              for run in client.search_runs(ids, max_results=1, order_by=[f"attributes.{key} DESC"])]
    if not newest:
        return None
    run = max(newest, key=lambda r: r.info.end_time or r.info.start_time or 0)
    return client.get_experiment(run.info.experiment_id)


def runs_view_state(metric_keys: Iterable[str]) -> dict:
    """The runs view a study needs: every run a row (sorted by run name, so MLflow does not fold a grid's children
    under their collapsed parent — it nests them only when the table is sorted by start time), the headline test
    metrics the runs logged as columns (``test/completion/mrr``, ...) in place of the default Source, Models and
    Dataset columns."""
    from recipeset.protocol import HEADLINE_METRICS

    logged = set(metric_keys)
    metrics = [k for k in (f"test/{metric_key(m)}" for m in HEADLINE_METRICS) if k in logged]
    return {"orderByKey": "tags.`mlflow.runName`", "orderByAsc": True,
            "selectedColumns": [f"metrics.`{k}`" for k in metrics]}


def runs_view_url(base: str, experiment: str | None = None, uri: str | None = None) -> str:
    """The URL of ``experiment``'s runs view (default: :func:`latest_experiment`) in the MLflow UI at ``base``:
    Model-training mode, the view of :func:`runs_view_state` (stored on the experiment as a shared view, see
    :data:`SHARED_VIEW_TAG`). ``base`` itself when the store has no run and no experiment is named."""
    client = mlflow_client(uri)
    exp = _get_experiment(client, experiment) if experiment is not None else latest_experiment(client)
    if exp is None:
        return base
    keys = {k for run in client.search_runs([exp.experiment_id], max_results=1000) for k in run.data.metrics}
    state = json.dumps(runs_view_state(keys), sort_keys=True)
    key = hashlib.sha256(state.encode()).hexdigest()[:16]  # the same view keeps its key (and old URLs work)
    if exp.tags.get(SHARED_VIEW_TAG + key) != state:
        client.set_experiment_tag(exp.experiment_id, SHARED_VIEW_TAG + key, state)
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "viewStateShareKey": key})
    return f"{base}/#/experiments/{exp.experiment_id}/runs?{query}"


def find_finished_run(experiment: str, params_hash: str, uri: str | None = None) -> str | None:
    """The id of a FINISHED run in ``experiment`` whose config hash is ``params_hash`` (newest), else None."""
    client = mlflow_client(uri)
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
    client = mlflow_client(uri)
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
    if not uri.startswith(REMOTE_PREFIXES) and "://" not in uri:
        if Path(uri).is_dir():
            return str(uri)
        raise RecipesetError(f"{uri}: not a model directory or a runs:/ or models:/ URI")
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    dst = str(dst) if dst is not None else tempfile.mkdtemp(prefix="recipeset-model-")
    resolved = open_store(tracking_uri)  # a server that does not answer: one line, at once
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst, tracking_uri=resolved,
                                                   registry_uri=resolved)
    except (MlflowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipesetError(f"cannot download model {uri} from {resolved}: {first}") from None
    if not Path(path).is_dir():
        raise RecipesetError(f"{uri}: is a file, not a model directory")
    return path


def run_tags(run_ids: Iterable[str], uri: str | None = None) -> dict[str, dict[str, str]]:
    """The tags of each run: ``{run id: {tag: value}}`` (e.g. a grid child's ``variant``)."""
    client = mlflow_client(uri)
    return {rid: dict(client.get_run(rid).data.tags) for rid in run_ids}


def metric_history(run_id: str, key: str, uri: str | None = None) -> pd.Series:
    """Every logged value of metric ``key`` (an MLflow name, e.g. ``train/loss``) in run ``run_id``: a float
    Series indexed by step (empty if the run never logged it; the last value wins if a step repeats)."""
    history = mlflow_client(uri).get_metric_history(run_id, key)
    return pd.Series({m.step: m.value for m in history}, dtype=float, name=key)


def load_model(path_or_uri: str | os.PathLike, map_location: str | torch.device = "cpu") -> RecipeModel:
    """``recipeset.load_model``: a model from a checkpoint directory or an MLflow ``runs:/…``/``models:/…`` URI.

    A URI is downloaded first (:func:`download_model_dir`, from the store ``$MLFLOW_TRACKING_URI`` or
    ``sqlite:///<cwd>/mlflow.db``); the directory is then read by :func:`recipeset.models.io.load_model`
    (in eval mode, never executing pickled code).
    """
    if isinstance(path_or_uri, str) and path_or_uri.startswith(REMOTE_PREFIXES):
        path_or_uri = download_model_dir(path_or_uri)
    return load_model_dir(path_or_uri, map_location)


def load_ensemble(paths_or_uris: Sequence[str | os.PathLike], map_location: str | torch.device = "cpu",
                  combine: str = "logprob") -> Ensemble:
    """``recipeset.load_ensemble``: an :class:`~recipeset.ensemble.Ensemble` of the models at ``paths_or_uris``
    (each as :func:`load_model` reads it), which must share one vocabulary; errors name the members by these
    paths or URIs."""
    if isinstance(paths_or_uris, str | os.PathLike):
        raise RecipesetError("load_ensemble: expected a list of model directories or URIs, not one")
    models = [load_model(p, map_location) for p in paths_or_uris]
    return Ensemble(models, names=[str(p) for p in paths_or_uris], combine=combine)


__all__ = ["find_finished_run", "search_runs_table", "lower_is_better", "run_tags", "metric_history",
           "read_run_artifact", "download_model_dir", "load_model", "load_ensemble"]


def read_run_artifact(run_id: str, artifact_path: str, reader: Callable[[Path], T], uri: str | None = None
                      ) -> T | None:
    """``reader`` applied to the file ``artifact_path`` a run logged (downloaded to a temporary directory), or
    None when the run has no such file."""
    import mlflow.artifacts
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    from mlflow.exceptions import MlflowException

    # a small file per run: no progress bar in the middle of `compare`'s output
    with mlflow_env({MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name: "false"}), tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                       dst_path=tmp, tracking_uri=open_store(uri, probe=False))
        except (MlflowException, OSError):
            return None
        return reader(Path(path))
