"""Helpers shared by the tests: the command line in-process (click's CliRunner) and a module's own MLflow store."""

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipeset.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@contextlib.contextmanager
def store_in(template_db: Path, root: Path) -> Iterator[str]:
    """A copy of the migrated template store in ``root``, which becomes the cwd, its URI exported as
    ``MLFLOW_TRACKING_URI`` (both undone after); yields the URI. For module-scoped fixtures, where pytest's
    ``monkeypatch`` is not available."""
    shutil.copy(template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session=True``), SIGKILL it after
    ``timeout`` seconds, and reap ``proc``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
