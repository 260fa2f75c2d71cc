"""Shared test fixtures.

MLflow: creating (migrating) a SQLite store costs seconds, so one template database is migrated once per
session and every test gets a copy in its own temporary working directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # the machine is shared: one thread per test process,
os.environ.setdefault("OMP_NUM_THREADS", "1")  # also in run_training (train.threads' default) and CLI subprocesses


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow SQLite store (created once per test session)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


@pytest.fixture
def mlflow_uri(mlflow_template_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh copy of the template store in a temporary cwd, exported as ``MLFLOW_TRACKING_URI``.

    Experiments created in the test put their artifacts under the temporary directory.
    """
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template_db, db)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
