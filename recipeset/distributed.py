"""Multi-process training launched by ``torchrun``: the process group, the ranks, and what each rank does.

``torchrun`` starts one process per device and tells each its place through ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``. :func:`process_group` (the CLI's ``train`` wraps the run in it) joins the group — gloo for CPU
tensors, NCCL for CUDA ones — and destroys it on the way out, errors included; :func:`world` is the
:class:`World` the rest of the code asks (a single process is ``World()``: rank 0 of 1, and every method
below is then the identity of the single-process path).

Data parallelism keeps the ``(seed, step)`` determinism of :mod:`recipeset.training`: every rank computes the
same plan of global batches and takes the rows ``rank::size`` of each (:meth:`World.shard`), so the global batch
is a single process's batch. The model is wrapped (with the objectives, so every forward goes through
``DistributedDataParallel``) by :meth:`World.wrap`; DDP averages the gradients over the ranks, and each rank's
loss is weighted by ``size · rows_on_rank / rows_in_batch`` so the average is the gradient of the global batch's
per-recipe mean. That is exact for losses that are means over recipes (``cls``, Deep Sets' ``multilabel``
set loss) and an approximation for means over a varying number of positions (``clm``, ``mlm``: the ranks'
per-position means are averaged with recipe weights). Rank 0 alone writes the run directory, tracks the run
in MLflow, checkpoints and validates; the others wait for its early-stopping decision.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recipeset.errors import RecipesetError

# a collective waits this long for the other ranks (rank 0 validating, a slow checkpoint) before failing
TIMEOUT = datetime.timedelta(hours=1)


def launched_world_size() -> int:
    """The ``WORLD_SIZE`` ``torchrun`` set (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``World()``: a single process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def stream(self) -> tuple[int, ...]:
        """Extra parts of the seeds of in-step randomness (objectives' corruption, dropout): none for a single
        process (its draws are unchanged), the rank otherwise (every rank draws for its own rows)."""
        return () if self.size == 1 else (self.rank,)

    def device(self, device: torch.device) -> torch.device:
        """``cuda`` becomes this process's GPU ``cuda:LOCAL_RANK`` when distributed."""
        if self.size > 1 and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's rows of a global batch (``rows[rank::size]``) and its loss weight
        ``size · len(mine) / len(rows)``. A rank left without a row (a last batch smaller than the world)
        computes on the batch's first row with weight 0, so it still joins the gradient all-reduce."""
        if self.size == 1:
            return rows, 1.0
        mine = rows[self.rank::self.size]
        if len(mine) == 0:
            return rows[:1], 0.0
        return mine, self.size * len(mine) / len(rows)

    def wrap(self, model: torch.nn.Module, objectives: Callable) -> Callable:
        """``loss_fn(batch, generator) -> losses``: ``objectives(model, batch, generator)`` — through
        ``DistributedDataParallel`` when distributed (the model must already be on its device)."""
        if self.size == 1:
            return lambda batch, generator: objectives(model, batch, generator)
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        # unused parameters: heads an objective skips for a batch (e.g. no labelled recipe) stay unreduced
        return DistributedDataParallel(_LossModule(model, objectives), device_ids=ids, output_device=None,
                                       find_unused_parameters=True)

    def weighted_mean(self, values: dict[str, torch.Tensor], weight: float) -> dict[str, float]:
        """The global batch's values of per-rank means (``Σ_r weight_r / size · value_r``, the mean the
        gradients are averaged to); plain floats of ``values`` for a single process."""
        if self.size == 1:
            return {k: float(v.detach()) for k, v in values.items()}
        keys = sorted(values)
        t = torch.stack([values[k].detach().float().reshape(()) for k in keys]) * (weight / self.size)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist(), strict=True))

    def sums(self, values: list[float]) -> list[float]:
        """The sums of ``values`` over the ranks (e.g. the recipes of the global batch)."""
        if self.size == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def from_main(self, value):
        """Rank 0's ``value`` on every rank (the others wait for it: an early-stopping decision)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the other ranks do (it creates or repairs what they then read)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


class _LossModule(torch.nn.Module):
    """The model with its objectives as one module, so DDP's forward covers every call an objective makes."""

    def __init__(self, model: torch.nn.Module, objectives: Callable) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives

    def forward(self, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.objectives(self.model, batch, generator)


def world() -> World:
    """This process's :class:`World`: from the initialised process group, else a single process. Launched by
    ``torchrun`` with several processes but outside :func:`process_group` is an error (the processes would
    train independently and write the same run directory)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if launched_world_size() > 1:
        raise RecipesetError("launched by torchrun with WORLD_SIZE > 1 but no process group: run the training "
                             "inside recipeset.distributed.process_group() (as `recipeset train` does)")
    return World()


def _backend() -> str:
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def process_group() -> Iterator[World]:
    """Join the ``torchrun`` process group for the block (nothing to do for a single process or a group that
    already exists) and destroy it afterwards, also when the block raises."""
    if launched_world_size() == 1 or (dist.is_available() and dist.is_initialized()):
        yield world()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=_backend(), timeout=TIMEOUT)
    try:
        yield world()
    finally:
        dist.destroy_process_group()
