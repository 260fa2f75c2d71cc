"""Where a run writes, checked before any data is prepared, and a full disk or a permission error while
checkpointing: one line naming the path and what to do, a non-zero exit, the last good checkpoint intact.

Root ignores permission bits and a read-only mount cannot be made in a test, so those refusals are injected where
the OS would raise them (``tempfile.mkstemp``, ``torch.save``); the other cases are real paths."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import types
from pathlib import Path

import pytest
import torch
from test_cli import TINY, invoke, ok, one_line_error

from recipeset.training import STATE_FILE, load_trainer_state

ARGS = [*TINY, "--max-steps", "2", "--quiet"]


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def no_data(monkeypatch):
    """Preparing data is a failure: the checks come first."""

    def prepare_data(*args, **kwargs):
        raise AssertionError("data was prepared before the output location was checked")

    monkeypatch.setattr("recipeset.pipeline.prepare_data", prepare_data)


def refuse_files_in(monkeypatch, directory: Path, code: int) -> None:
    """The OS refuses (``code``) to create a file in ``directory``."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own keyword
        if dir is not None and Path(dir).resolve() == directory.resolve():
            raise OSError(code, os.strerror(code), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def locked_dir(monkeypatch, tmp_path: Path) -> Path:
    """A directory without write permission (chmod 500; for root, which ignores it, the refusal is injected)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:
        refuse_files_in(monkeypatch, locked, errno.EACCES)
    return locked


def under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "somefile").write_text("not a directory")
    return tmp_path / "somefile"


@pytest.fixture(autouse=True)
def unlock(tmp_path):
    yield
    if (tmp_path / "locked").exists():
        (tmp_path / "locked").chmod(0o700)


def read_only(monkeypatch, tmp_path: Path) -> Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    refuse_files_in(monkeypatch, ro, errno.EROFS)
    return ro


def little_space(monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(total=2**30, used=2**30 - 2**20,
                                                                                  free=2**20))
    return tmp_path


@pytest.mark.parametrize("where, needles", [
    (lambda mp, tmp: Path("/proc"), ["/proc/run", "virtual file system"]),
    (lambda mp, tmp: under_a_file(tmp), ["somefile/run", "somefile is a file, not a directory"]),
    (read_only, ["ro/run", "read-only file system"]),
    (locked_dir, ["locked/run", "permission denied"]),
    (little_space, ["1.0 MB free", "at least 50 MB", "free some space"]),
], ids=["proc", "under-a-file", "read-only", "not-writable", "no-space"])
def test_an_unusable_run_directory_is_one_line_before_any_data(monkeypatch, tmp_path, no_data, where, needles):
    out = where(monkeypatch, tmp_path) / "run"
    one_line_error(invoke("train", *ARGS, "--no-track", "--out", str(out)), *needles, "run directory",
                   "choose another --out")
    assert not out.exists()


@pytest.mark.parametrize("where, needles", [
    (lambda mp, tmp: Path("/proc"), ["/proc/mlflow.db", "virtual file system"]),
    (lambda mp, tmp: under_a_file(tmp), ["somefile/mlflow.db", "somefile is a file, not a directory"]),
    (locked_dir, ["locked/mlflow.db", "permission denied"]),
], ids=["proc", "under-a-file", "not-writable"])
def test_an_unwritable_sqlite_store_is_one_line_before_any_data(monkeypatch, tmp_path, no_data, where, needles):
    uri = f"sqlite:///{where(monkeypatch, tmp_path) / 'mlflow.db'}"
    one_line_error(invoke("train", *ARGS, "--tracking-uri", uri, "--out", "run"), *needles, "MLflow store",
                   "--tracking-uri", "--no-track")
    assert not Path("run").exists()


def test_a_full_disk_at_the_second_checkpoint_is_one_line_and_the_first_still_resumes(monkeypatch, tmp_path):
    real_save = torch.save
    states = []

    def full_disk_at_the_second_checkpoint(obj, f, *args, **kwargs):
        name = str(getattr(f, "name", f))
        if name.endswith(STATE_FILE):  # the model files of the checkpoint are written, its trainer state is not
            states.append(name)
            if len(states) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_at_the_second_checkpoint)
    args = [*TINY, "--max-steps", "6", "--set", "train.checkpoint_every=2", "--no-track", "--quiet", "--out", "run"]
    one_line_error(invoke("train", *args), "run/checkpoint: cannot write the checkpoint of step 4",
                   "no space left on the device", "free some space or choose --out elsewhere",
                   "the checkpoint of step 2 is intact and --resume continues from it")
    assert sorted(p.name for p in Path("run").iterdir() if p.name.startswith(".")) == []  # no temporary left
    assert load_trainer_state(Path("run/checkpoint"))[2].step == 2

    monkeypatch.setattr(torch, "save", real_save)  # space was freed
    ok("train", *args, "--resume")
    assert load_trainer_state(Path("run/checkpoint"))[2].step == 6 and Path("run/model/weights.pt").exists()


def test_a_failed_swap_puts_the_previous_directory_back(monkeypatch, tmp_path):
    import recipeset.io_utils as io_utils

    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "f").write_text("old")
    real_replace = os.replace

    def refuse_the_new_one(src, dst):  # the old directory moves aside; the new one cannot be renamed in
        if Path(dst) == target and Path(src).name.endswith(".tmp"):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(io_utils.os, "replace", refuse_the_new_one)
    with pytest.raises(PermissionError):
        io_utils.atomic_write_dir(target, lambda tmp: (tmp / "f").write_text("new"))
    assert (target / "f").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
