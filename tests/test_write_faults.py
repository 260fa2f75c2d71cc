"""A full disk or a permission error while checkpointing: one line naming the path and what to do, a non-zero
exit, the last good checkpoint intact.

The refusals are injected where the OS would raise them (``torch.save``, ``os.replace``)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from test_cli import TINY, invoke, ok, one_line_error

from recipeset.training import STATE_FILE, load_trainer_state


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


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
