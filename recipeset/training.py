"""Trainer: data preparation, the optimisation loop, schedules, checkpoints/resume, early stopping.

Determinism and resume: every source of randomness in a step is derived from ``(seed, step)`` or
``(seed, epoch)`` — the epoch's batch order, the shuffle of ingredient orders, the corruption of the batch and
dropout (the global torch RNG is re-seeded at the start of every step). A checkpoint therefore only needs the
weights, the optimizer/scheduler state and the step counter, and a resumed run replays exactly the batches an
uninterrupted run would have seen. The length-grouped batches (``train.bucket_pool``) are built from the same
``(seed, epoch)`` streams, so they replay too. Packing (``train.pack``) happens inside the objectives
(``Objectives.run``), as a function of each batch alone: the plan, the batches and the losses are unchanged.

Under ``torchrun`` (:mod:`recipeset.distributed`) every rank plans the same global batches and trains on its
rows of each; the in-step draws also depend on the rank. Rank 0 alone validates, logs and checkpoints.

On a GPU: bf16 autocast (``precision = auto`` where supported, or ``bf16``) with fused AdamW; ``fp16`` with a
``GradScaler`` (loss scaled, gradients unscaled before clipping, its state checkpointed). CPU stays fp32, with
fused AdamW too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recipeset import progress
from recipeset.config import RunConfig, bucket_pool_for
from recipeset.data.batching import bucket_batches, chunks, sorted_batches
from recipeset.data.collate import Batch, SetCollator, SetDataset, collate
from recipeset.data.ordering import expand_k_perms, reorder
from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import Vocabulary
from recipeset.distributed import World, world
from recipeset.errors import RecipesetError
from recipeset.evaluation import evaluate_completion
from recipeset.io_utils import atomic_write_dir, torch_save, write_errors
from recipeset.models.io import WEIGHTS_FILE, read_weights, save_model
from recipeset.protocol import eval_subset
from recipeset.registry import ORDERS
from recipeset.signals import raise_if_terminated

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"


VAL_COMPLETION = "val/completion/"  # periodic ranking metrics, computed when early stopping watches one
VAL_COMPLETION_METRICS = ("recall@1", "recall@10", "mrr", "mean_rank")  # what _val_completion reports


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better (ranking metrics: recall, MRR), for early stopping."""
    return metric.rpartition("/")[2].startswith(("recall", "mrr"))


# ---- seeding --------------------------------------------------------------------------------------------
def seed_all(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def derived_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (SplitMix64-style mixing)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def step_generator(seed: int, step: int, device: torch.device | str = "cpu",
                   stream: tuple[int, ...] = ()) -> torch.Generator:
    """The generator of a step's objectives; ``stream`` (a rank, see ``World.stream``) extends the seed."""
    return torch.Generator(device=device).manual_seed(derived_seed(seed, step, 17, *stream))


# ---- optimisation ---------------------------------------------------------------------------------------
def use_fused_adamw(params: list[torch.Tensor], device: torch.device | str | None) -> bool:
    """Fused AdamW (one multi-threaded kernel for all parameters) when torch has it for the device every
    parameter is on — CUDA, and the CPU too: at 2 threads the default single-tensor loop (six element-wise ops
    per parameter, one thread each) was 1.02-1.38x (mean 1.2x) slower per decoder step than the fused kernel
    (README, Performance)."""
    if not params or any(p.dtype not in (torch.float32, torch.float16, torch.bfloat16) for p in params):
        return False
    kinds = {p.device.type for p in params}
    return len(kinds) == 1 and kinds <= {"cpu", "cuda"} \
        and (device is None or torch.device(device).type in kinds)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   device: torch.device | str | None = None) -> torch.optim.AdamW:
    """AdamW; weight decay only on >= 2-D weights (matrices, embeddings), not on biases and norms; fused where
    torch has the kernel (:func:`use_fused_adamw`), the default implementation elsewhere."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = {"fused": True} if use_fused_adamw(params, device) else {}
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8, **fused)


def lr_multiplier(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup to 1, then ``cosine`` (to 10%), ``inverse-sqrt`` or ``constant``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "inverse-sqrt":
        return math.sqrt(max(warmup, 1) / max(step + 1, 1))
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise RecipesetError(f"unknown train.schedule {schedule!r}; use cosine, inverse-sqrt or constant")


# ---- batches --------------------------------------------------------------------------------------------
def curriculum_pool(lengths: np.ndarray, epoch: int, epochs: int, start: float = 0.3) -> np.ndarray:
    """Competence curriculum by set size: epoch ``e`` draws from the smallest ``c(e)`` fraction of recipes,
    ``c`` growing linearly from ``start`` to 1 over the first half of training (then all recipes)."""
    ramp = max(1, epochs // 2)
    c = min(1.0, start + (1.0 - start) * epoch / ramp)
    order = np.argsort(lengths, kind="stable")
    return np.sort(order[: max(1, int(round(c * len(order))))])


def epoch_batches(n_or_pool: int | np.ndarray, batch_size: int, seed: int, epoch: int,
                  lengths: np.ndarray | None = None, bucket_pool: int = 0) -> list[np.ndarray]:
    """The batches of one epoch: a permutation fixed by ``(seed, epoch)`` of ``n_or_pool`` (a count or the rows
    to train on), cut into ``batch_size`` chunks — grouped by set size (``lengths``, int64 ``[N]``) inside pools
    of ``bucket_pool`` batches when ``bucket_pool > 0`` (:func:`~recipeset.data.batching.bucket_batches`)."""
    pool = np.arange(n_or_pool) if np.isscalar(n_or_pool) else np.asarray(n_or_pool)
    rng = np.random.default_rng(derived_seed(seed, epoch, 3))
    return grouped_batches(pool[rng.permutation(len(pool))], batch_size, seed, epoch, lengths, bucket_pool)


def grouped_batches(order: np.ndarray, batch_size: int, seed: int, epoch: int, lengths: np.ndarray | None,
                    bucket_pool: int) -> list[np.ndarray]:
    """An epoch's random ``order`` (int64 ``[M]``) as batches: plain chunks when ``bucket_pool`` is 0 (or no
    ``lengths``), else length-grouped in pools of ``bucket_pool`` batches, the batches shuffled with a seed of
    ``(seed, epoch)`` — so a resumed run rebuilds the same batches and skips the ones it has trained on."""
    if not bucket_pool or lengths is None:
        return chunks(order, batch_size)
    return bucket_batches(order, lengths, batch_size, bucket_pool, derived_seed(seed, epoch, 7))


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float = math.inf
    best_step: int = -1
    bad_evals: int = 0
    run_id: str | None = None
    # the time in training (batch order, loading and the optimisation steps; not validation, checkpoints or
    # the progress line) and the recipes it trained on, over the whole run: a resumed run continues the
    # checkpoint's (the steps it replays are counted once, when they are trained again)
    train_s: float = 0.0
    train_recipes: int = 0
    history: dict[str, list] = field(default_factory=dict)
    scaler: dict = field(default_factory=dict)  # the fp16 GradScaler's state ({} when it is disabled)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: TrainState,
                    extra_files: dict[str, str] | None = None, averaged: dict | None = None) -> None:
    """Write ``model/`` (a loadable checkpoint) + the trainer state (and the weight average's, when
    ``train.ema_decay`` keeps one) atomically as one directory."""
    def fill(tmp: Path) -> None:
        save_model(model, tmp / "model", extra_files=extra_files)
        blob = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "state": json.dumps(state.to_dict())}
        if averaged is not None:
            blob["averaged"] = averaged
        torch_save(blob, tmp / STATE_FILE)

    atomic_write_dir(path, fill)


def recover_checkpoint(path: Path) -> bool:
    """Put back the previous checkpoint if a kill hit ``atomic_write_dir``'s swap (old directory moved aside to
    ``.<name>.old``, new one not yet renamed in); True when it did. Without this, ``--resume`` after such a kill
    found no checkpoint at all."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if path.exists() or not (old / STATE_FILE).exists():
        return False
    os.replace(old, path)
    log.warning("recovered %s from %s (the process was killed while replacing it)", path, old)
    return True


def load_trainer_state(path: Path) -> tuple[dict, dict, TrainState, dict | None]:
    """``(optimizer state, scheduler state, TrainState, the weight average's state or None)`` of a checkpoint."""
    try:
        blob = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RecipesetError(f"{path}: no checkpoint to resume from ({STATE_FILE} missing); "
                             "run without --resume") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt/unsafe file
        raise RecipesetError(f"{path / STATE_FILE}: cannot read the checkpoint ({type(e).__name__}); "
                             "delete it to start over") from None
    state = TrainState(**json.loads(blob["state"]))
    # JSON turned the (step, value) tuples into lists; the resumed run appends tuples to the same lists, and a
    # mixture cannot be sorted (the learning-curve plot at the end of a resumed run failed on it).
    state.history = {k: [tuple(p) for p in v] for k, v in state.history.items()}
    return blob["optimizer"], blob["scheduler"], state, blob.get("averaged")


def ema_update(decay: float) -> Callable:
    """``AveragedModel``'s ``multi_avg_fn`` for an exponential moving average whose decay warms up as
    ``min(decay, (1 + n) / (10 + n))`` at its ``n``-th update (an early average is not dominated by the
    initial weights)."""
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1 + n) / (10 + n)))
    return update


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype: bf16/fp16 on GPU (``auto`` = bf16 where supported), None (fp32) on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto" and not torch.cuda.is_bf16_supported():
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


def autocast_context(device: torch.device, precision: str):
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 autocast (bf16 and fp32 gradients do not underflow); disabled, its
    scale/unscale/step/update are the plain backward and optimizer step."""
    enabled = autocast_dtype(device, precision) == torch.float16
    return torch.amp.GradScaler("cuda" if enabled else device.type, enabled=enabled)


def metric_name(prefix: str, key: str) -> str:
    """``loss/total`` -> ``<prefix>/loss``; ``loss/clm`` -> ``<prefix>/loss/clm``; ``lr`` -> ``<prefix>/lr``."""
    return f"{prefix}/loss" if key == "loss/total" else f"{prefix}/{key}"


MetricsFn = Callable[[dict[str, float], int], None]


class Trainer:
    """The optimisation loop of one run.

    ``objectives(model, batch, generator) -> {"loss/total": ..., ...}`` gives the losses; ``log(metrics,
    step)`` receives per-step and validation metrics (the tracker buffers them) and ``flush_log()`` is called
    before every checkpoint is written, so the store holds every step up to a checkpoint's before the checkpoint
    exists (a run killed after it and resumed from it has no hole in its curves); checkpoints go to
    ``out_dir/checkpoint`` (atomically, every ``train.checkpoint_every`` steps) and the best model on the
    validation metric to ``out_dir/best``; a full disk or a permission error while writing them is one
    :class:`RecipesetError` line and leaves the previous checkpoint as it was. ``on_validate(metrics, step)``
    sees every periodic validation (the ``val/...`` metrics, after they are logged and the best model is kept) —
    a tuning trial's pruner is fed from it, and may stop the run by raising.
    """

    def __init__(self, cfg: RunConfig, model: torch.nn.Module, objectives: Callable, train: EncodedSets,
                 val: EncodedSets, out_dir: Path, log: MetricsFn | None = None, progress: bool = True,
                 train_weights: np.ndarray | None = None, extra_files: dict[str, str] | None = None,
                 on_validate: MetricsFn | None = None, flush_log: Callable[[], None] | None = None) -> None:
        self.cfg, self.t = cfg, cfg.train
        self.bucket_pool = bucket_pool_for(cfg)  # length-grouped batches (0: off)
        self.model, self.objectives = model, objectives
        if self.bucket_pool and hasattr(objectives, "weigh_positions"):  # each position keeps its weight when grouped
            objectives.weigh_positions(train.lengths, type(model))
        self.vocab: Vocabulary = model.vocab  # type: ignore[assignment]
        self.val = val
        self._val_queries: EncodedSets | None = None  # the recipes of val/completion/* (drawn once)
        self.out_dir = Path(out_dir)
        self.log = log or (lambda metrics, step: None)
        self.flush_log = flush_log or (lambda: None)
        self.on_validate = on_validate
        self.progress_enabled = progress
        self.train_weights = train_weights
        self.extra_files = extra_files or {}
        self.world: World = world()
        self.device = self.world.device(resolve_device(self.t.device))
        self.model.to(self.device)
        self.optimizer = make_optimizer(model, self.t.lr, self.t.weight_decay, self.device)
        self.scaler = make_grad_scaler(self.device, self.t.precision)
        # the weight average (train.ema_decay): validation, the best and the final model use it
        self.averaged = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_update(self.t.ema_decay))
                         if self.t.ema_decay > 0 else None)
        self.loss_fn = self.world.wrap(model, objectives)  # objectives(model, ...), through DDP when distributed
        self._base_train = train
        self._fixed_order: EncodedSets | None = None
        self.order = ORDERS.get(cfg.data.order, "data.order")
        n_epoch = len(train) * (cfg.data.k_perms if self.order.copies else 1)
        self.steps_per_epoch = max(1, math.ceil(n_epoch / self.t.batch_size))
        self.total_steps = self.t.max_steps or self.t.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, self.t.warmup_steps, self.total_steps, self.t.schedule))
        self.state = TrainState()
        self._checkpoint_step: int | None = None  # the step of the checkpoint on disk (None: none yet)
        self._check_early_stopping_metric()

    def _check_early_stopping_metric(self) -> None:
        """An unknown ``train.early_stopping_metric`` is refused now, not at the first validation (minutes in);
        only checked when the objectives can say what they return (``metric_keys``)."""
        keys = getattr(self.objectives, "metric_keys", None)
        if keys is None:
            return
        known = [metric_name("val", k) for k in keys()] + [f"{VAL_COMPLETION}{m}" for m in VAL_COMPLETION_METRICS]
        if self.t.early_stopping_metric not in known:
            raise RecipesetError(f"train.early_stopping_metric {self.t.early_stopping_metric!r} is not computed by "
                                 f"this run; choose from {', '.join(known)}")

    # ---- data order ------------------------------------------------------------------------------------
    def epoch_sets(self, epoch: int) -> EncodedSets:
        """The training sets of ``epoch`` in the configured ingredient order (a function of seed and epoch)."""
        order, seed = self.order, self.t.seed
        if order.per_epoch:
            return reorder(self._base_train, order.name, self.vocab, seed=seed, epoch=epoch)
        if self._fixed_order is None:
            if order.copies:
                self._fixed_order = expand_k_perms(self._base_train, self.cfg.data.k_perms, seed=seed)[0]
            else:
                self._fixed_order = reorder(self._base_train, order.name, self.vocab, seed=seed)
        return self._fixed_order

    def epoch_plan(self, epoch: int, sets: EncodedSets) -> list[np.ndarray]:
        """The batches (row indices into ``sets``) of ``epoch``, a function of ``(seed, epoch)``.

        Weighted mixing draws ``len(sets)`` rows with replacement; a curriculum permutes its pool of small sets;
        otherwise every row (each k-perms copy is a row) once. With ``train.bucket_pool`` (the default) the
        batches are then grouped by set size inside pools of that many batches
        (:func:`~recipeset.data.batching.bucket_batches`): the same rows as without, in batches of similar sizes.
        """
        t, n = self.t, len(sets)
        if self.train_weights is not None and not self.order.copies:
            rng = np.random.default_rng(derived_seed(t.seed, epoch, 5))
            drawn = rng.choice(n, size=n, replace=True, p=self.train_weights)
            return grouped_batches(drawn, t.batch_size, t.seed, epoch, sets.lengths, self.bucket_pool)
        pool: int | np.ndarray = n
        if t.curriculum:
            pool = curriculum_pool(sets.lengths, epoch, max(1, self.total_steps // self.steps_per_epoch))
        return epoch_batches(pool, t.batch_size, t.seed, epoch, sets.lengths, self.bucket_pool)

    def _loader(self, sets: EncodedSets, batches: list[np.ndarray]):
        if self.t.num_workers > 0:
            return torch.utils.data.DataLoader(
                SetDataset(sets), batch_sampler=[b.tolist() for b in batches], collate_fn=SetCollator(sets),
                num_workers=self.t.num_workers, pin_memory=self.device.type == "cuda")
        return (collate(sets, b) for b in batches)

    # ---- checkpoints -------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    def save(self) -> None:
        """Checkpoint (rank 0 only; every rank holds the same weights and optimizer state), the metrics logged so
        far flushed first."""
        if self.world.is_main:
            self.flush_log()
            self.state.scaler = self.scaler.state_dict()
            with self._writing(f"{self.checkpoint_dir}: cannot write the checkpoint"):
                save_checkpoint(self.checkpoint_dir, self.model, self.optimizer, self.scheduler, self.state,
                                self.extra_files, None if self.averaged is None else self.averaged.state_dict())
            self._checkpoint_step = self.state.step

    def _writing(self, what: str):
        """A full disk or a permission error inside the block as one line (:func:`~recipeset.io_utils.write_errors`)
        saying what to do and which checkpoint is intact (the writes are atomic: the failed one left nothing)."""
        kept = ("no checkpoint was written yet" if self._checkpoint_step is None else
                f"the checkpoint of step {self._checkpoint_step} is intact and --resume continues from it")
        return write_errors(f"{what} of step {self.state.step}", f"free some space or choose --out elsewhere; {kept}")

    def restore(self) -> None:
        """Continue from ``out_dir/checkpoint`` (weights, optimizer, schedule, step counter, run id)."""
        opt, sched, state, averaged = load_trainer_state(self.checkpoint_dir)
        self.model.load_state_dict(read_weights(self.checkpoint_dir / "model" / WEIGHTS_FILE, self.device))
        if self.averaged is not None:
            if averaged is None:
                raise RecipesetError(f"{self.checkpoint_dir}: the checkpoint has no weight average but "
                                     f"train.ema_decay is {self.t.ema_decay}; resume with the run's own config")
            self.averaged.load_state_dict(averaged)
        self.optimizer.load_state_dict(opt)
        self.scheduler.load_state_dict(sched)
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        self.state = state
        self._checkpoint_step = state.step

    # ---- validation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean validation losses with a fixed corruption seed (comparable across evaluations): batches of 256,
        grouped by set size when ``train.bucket_pool`` is on (fixed batches, so every evaluation of a run sees the
        same ones; a batch's loss weighs by its number of recipes, as in split-order batches)."""
        self.model.eval()
        gen = step_generator(self.t.seed, -1, self.device)
        sums: dict[str, float] = {}
        count = 0
        # per-epoch and k-copy orders are validated in one fixed random order per recipe
        fixed = "random-fixed" if self.order.per_epoch or self.order.copies else self.order.name
        val = reorder(self.val, fixed, self.vocab, seed=12345)
        # grouped by set size like the training batches (bucket_pool 0: in split order, as before it existed)
        for idx in sorted_batches(val.lengths, 256, by_length=bool(self.bucket_pool)):
            batch = collate(val, idx).to(self.device)
            with autocast_context(self.device, self.t.precision):
                losses = self.objectives(self.model, batch, gen)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(batch)
            count += len(batch)
        metrics = {metric_name("val", k): v / max(count, 1) for k, v in sums.items()}
        if self.t.early_stopping_metric.startswith(VAL_COMPLETION):
            metrics.update(self._val_completion())
        self.model.train()
        return metrics

    def _val_completion(self) -> dict[str, float]:
        """``val/completion/recall@1|recall@10|mrr|mean_rank``: leave-one-out completion (``next``, one draw) on
        the same seeded ``eval.val_max_queries`` validation recipes at every validation — what the run is judged
        by, for early stopping on it (the loss can bottom out while the ranking still improves)."""
        if self._val_queries is None:
            self._val_queries = eval_subset(self.val, self.cfg.eval.val_max_queries, self.cfg.eval.seed)
        scores = evaluate_completion(self.model, self._val_queries, seed=self.cfg.eval.seed)
        return {f"{VAL_COMPLETION}{k}": scores[k] for k in VAL_COMPLETION_METRICS}

    def _evaluate_and_select(self) -> bool:
        """Validate, log, keep the best model (rank 0; the other ranks wait for it); True when early stopping
        says stop."""
        return self.world.from_main(self._select() if self.world.is_main else None)

    @contextlib.contextmanager
    def averaged_weights(self):
        """The weight average in ``self.model`` inside the block (a no-op without ``train.ema_decay``)."""
        if self.averaged is None:
            yield
            return
        params = list(self.model.parameters())
        trained = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(params, list(self.averaged.module.parameters()))
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, trained)

    def _select(self) -> bool:
        with self.averaged_weights():
            return self._select_model()

    def _select_model(self) -> bool:
        metrics = self.validate()
        key = self.t.early_stopping_metric
        if key not in metrics:
            raise RecipesetError(f"train.early_stopping_metric {key!r} is not computed; available: "
                                 f"{', '.join(sorted(metrics))}")
        self.log(metrics, self.state.step)
        for k, v in metrics.items():
            self.state.history.setdefault(k, []).append((self.state.step, v))
        value = -metrics[key] if higher_is_better(key) else metrics[key]  # best_metric: lower is better
        if value < self.state.best_metric - 1e-6:
            self.state.best_metric, self.state.best_step, self.state.bad_evals = value, self.state.step, 0
            with self._writing(f"{self.out_dir / 'best'}: cannot write the best model"):
                save_model(self.model, self.out_dir / "best", extra_files=self.extra_files)
        else:
            self.state.bad_evals += 1
        if self.on_validate is not None:
            self.on_validate(metrics, self.state.step)
        patience = self.t.early_stopping_patience
        return patience is not None and self.state.bad_evals >= patience

    # ---- the loop ------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainState:
        if resume:
            self.restore()
        model, t = self.model, self.t
        model.train()
        eval_every = t.eval_every or self.steps_per_epoch
        stop = False
        with progress.reporting(self.progress_enabled), \
                progress.task("training", self.total_steps, "steps", start=self.state.step, leave=True) as bar:
            while self.state.step < self.total_steps and not stop:
                mark = time.perf_counter()  # TrainState.train_s counts from here to the end of each step
                epoch = self.state.epoch
                sets = self.epoch_sets(epoch)
                batches = self.epoch_plan(epoch, sets)
                todo = batches[self.state.batch_in_epoch:]  # the global batches left in this epoch
                shards = [self.world.shard(b) for b in todo]  # this rank's rows of each, and its loss weight
                loader = self._loader(sets, [rows for rows, _ in shards])
                for batch, (_, weight), rows in zip(loader, shards, todo, strict=True):
                    raise_if_terminated()  # a SIGTERM whose exception a finalizer swallowed stops here
                    info = self.train_step(batch.to(self.device, non_blocking=True), weight)
                    self.state.train_s += time.perf_counter() - mark
                    self.state.train_recipes += len(rows)  # the global batch (all ranks)
                    bar.update(self.state.step, {"loss": info["loss/total"], "lr": info["lr"],
                                                 "rec/s": info["recipes_per_s"]})
                    if self.state.step % eval_every == 0 or self.state.step == self.total_steps:
                        stop = self._evaluate_and_select()
                    if self.state.step % t.checkpoint_every == 0 or stop or self.state.step == self.total_steps:
                        self.save()
                    if stop or self.state.step >= self.total_steps:
                        break
                    mark = time.perf_counter()
                else:
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
        return self.state

    def train_step(self, batch: Batch, weight: float = 1.0) -> dict[str, float]:
        """One optimizer step on ``batch`` (losses, backward, clipping, AdamW, schedule); returns its metrics.
        Under DDP ``batch`` is this rank's rows of the global batch and ``weight`` scales its loss so that DDP's
        gradient average is the global batch's (see ``World.shard``)."""
        t, state, stream = self.t, self.state, self.world.stream
        started = time.perf_counter()
        torch.manual_seed(derived_seed(t.seed, state.step, 29, *stream))  # dropout: a function of (seed, step)
        gen = step_generator(t.seed, state.step, self.device, stream)
        with autocast_context(self.device, t.precision):
            losses = self.loss_fn(batch, gen)
        info = self.world.weighted_mean(losses, weight)  # the global batch's losses, the same on every rank
        if not math.isfinite(info["loss/total"]):
            raise RecipesetError(f"step {state.step}: the loss is {info['loss/total']}; lower train.lr or check "
                                 "the data")
        total = losses["loss/total"] if weight == 1.0 else losses["loss/total"] * weight
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients (fp16); a no-op without scaling
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip if t.clip > 0 else float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        state.step += 1
        state.batch_in_epoch += 1
        elapsed = max(time.perf_counter() - started, 1e-9)
        real = weight > 0  # a rank without rows of this batch computed on a stand-in row
        rows, positions = self.world.sums([len(batch) * real, float(batch.lengths.sum()) * real])
        info.update({"grad_norm": float(grad_norm), "lr": lr, "recipes_per_s": rows / elapsed,
                     "tokens_per_s": positions / elapsed, "epoch": float(state.epoch)})
        self.log({metric_name("train", k): v for k, v in info.items()}, state.step)
        state.history.setdefault("train/loss", []).append((state.step, info["loss/total"]))
        return info


__all__ = [
    "RunConfig", "seed_all", "derived_seed", "step_generator", "make_optimizer", "lr_multiplier",
    "curriculum_pool", "epoch_batches", "grouped_batches", "TrainState", "save_checkpoint",
    "load_trainer_state", "recover_checkpoint",
    "Trainer",
]
