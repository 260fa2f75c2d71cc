"""Training-step benchmarks, each an A/B comparison interleaved (A, B, A, B, ...) in one process so that machine
noise hits both alike:

- :func:`bench_hungarian_vs_standard`: the Hungarian set loss against the standard loss on the same K slot
  outputs of the same model and batch (medians reported).
- :func:`bench_bucketing`: training recipes/s on real batches cut from a plain permutation against
  length-grouped batches (``train.bucket_pool``), same model, same batch size, same objectives.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
from torch import nn

from recipeset.config import RunConfig, resolve_objectives
from recipeset.data.batching import real_fraction
from recipeset.data.collate import collate
from recipeset.data.prepare import prepare_data
from recipeset.data.vocab import NULL, NUM_SPECIALS, Vocabulary
from recipeset.models.set_transformer import SetTransformer, SetTransformerConfig
from recipeset.objectives.losses import IGNORE, hungarian_loss, standard_loss
from recipeset.objectives.matching import HungarianMatcher
from recipeset.objectives.tasks import Objectives
from recipeset.pipeline import build_model
from recipeset.training import epoch_batches, make_optimizer, step_generator


def _build_model(vocab_size: int, d_model: int, n_slots: int) -> tuple[nn.Module, str]:
    """The project's SetTransformer with a slot decoder (what the Hungarian loss trains in the study)."""
    vocab = Vocabulary([f"ingredient_{i}" for i in range(vocab_size - NUM_SPECIALS)])
    model = SetTransformer(SetTransformerConfig(d_model=d_model, n_slots=n_slots), vocab)

    def slot_logits(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(tokens, mask).slot_logits

    model.slot_logits_fn = slot_logits  # type: ignore[attr-defined]
    return model, "set-transformer"


def _synthetic_batch(batch_size: int, n_slots: int, vocab_size: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random sets of 3..min(20, K) distinct ingredients: (tokens, mask, hungarian targets [B, K] padded with
    -100, standard targets [B, K]: the set in its given order, then ∅ on the remaining slots)."""
    n_ingredients = vocab_size - NUM_SPECIALS
    max_len = max(1, min(20, n_slots, n_ingredients))
    lengths = torch.randint(min(3, max_len), max_len + 1, (batch_size,), generator=generator)
    ids = torch.rand(batch_size, n_ingredients, generator=generator).argsort(1)[:, :n_slots] + NUM_SPECIALS
    pos = torch.arange(n_slots)[None, :]
    mask = pos < lengths[:, None]
    tokens = torch.where(mask, ids, 0)
    hungarian_targets = torch.where(mask, ids, IGNORE)
    standard_targets = torch.where(mask, ids, NULL)
    return tokens, mask, hungarian_targets, standard_targets


def bench_hungarian_vs_standard(batch_size: int = 64, n_slots: int = 32, vocab_size: int = 400, d_model: int = 128,
                                steps: int = 20, warmup: int = 3, seed: int = 0) -> dict:
    """Median training-step time (forward + loss + backward + AdamW step) of ``standard_loss`` on the K slot
    outputs vs ``hungarian_loss`` on the same outputs, same model, same batch, interleaved A/B in one run.

    Returns a dict: ``standard_step_ms``, ``hungarian_step_ms``, ``hungarian_over_standard_ratio``,
    ``matching_ms`` (the matcher alone, median), ``matching_share`` (matching_ms / hungarian_step_ms),
    ``model`` (``set-transformer``, or the fallback and the reason), ``batch_size``, ``n_slots``,
    ``vocab_size``, ``d_model``, ``steps``, ``torch_threads``.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model, model_name = _build_model(vocab_size, d_model, n_slots)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens, mask, h_targets, s_targets = _synthetic_batch(batch_size, n_slots, vocab_size, gen)
    matcher = HungarianMatcher()

    def step(kind: str) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        slot_logits = model.slot_logits_fn(tokens, mask)
        if kind == "standard":
            loss = standard_loss(slot_logits, s_targets)
        else:
            loss = hungarian_loss(slot_logits, h_targets, matcher=matcher)
        loss.backward()
        opt.step()
        return (time.perf_counter() - t0) * 1e3

    times: dict[str, list[float]] = {"standard": [], "hungarian": [], "matching": []}
    for i in range(warmup + steps):
        # Alternate which loss goes first, so neither always follows the other.
        order = ("standard", "hungarian") if i % 2 == 0 else ("hungarian", "standard")
        for kind in order:
            ms = step(kind)
            if i >= warmup:
                times[kind].append(ms)
        with torch.no_grad():
            logits = model.slot_logits_fn(tokens, mask)
        t0 = time.perf_counter()
        matcher(logits, h_targets)
        if i >= warmup:
            times["matching"].append((time.perf_counter() - t0) * 1e3)

    std, hun, match = (statistics.median(times[k]) for k in ("standard", "hungarian", "matching"))
    return {
        "standard_step_ms": round(std, 3),
        "hungarian_step_ms": round(hun, 3),
        "hungarian_over_standard_ratio": round(hun / std, 4),
        "matching_ms": round(match, 3),
        "matching_share": round(match / hun, 4),
        "model": model_name,
        "batch_size": batch_size,
        "n_slots": n_slots,
        "vocab_size": vocab_size,
        "d_model": d_model,
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
    }


def bench_bucketing(models: tuple[str, ...] = ("decoder", "set-transformer"), dataset: str = "flavornet",
                    path: str | None = None, batch_size: int = 64, d_model: int = 128, bucket_pool: int = 64,
                    steps: int = 40, warmup: int = 4, threads: int | None = 1, seed: int = 0) -> dict:
    """Training recipes/s with length-grouped batches against plain-permutation batches, per model.

    For each model (its natural objectives, the run defaults otherwise, ``d_model``), one model and one AdamW
    train on both kinds of batch in turn — plain, grouped, grouped, plain, ... — so both see the same machine
    load: batch ``i`` of epoch 0 of :func:`~recipeset.training.epoch_batches` with ``bucket_pool = 0`` and with
    ``bucket_pool``, padded ``[B, T]`` by :func:`~recipeset.data.collate.collate` as in training. A step is
    forward + objectives + backward + optimizer step. ``threads`` torch threads (1 by default: robust on a shared
    machine; None keeps the current setting).

    Returns ``{"models": {name: {"plain_recipes_per_s", "grouped_recipes_per_s", "speedup" (their ratio: total
    time of the plain steps over the grouped ones, same number of recipes), "plain_step_ms", "grouped_step_ms"
    (medians), "plain_real_fraction", "grouped_real_fraction" (real positions over padded positions of the timed
    batches), "epoch_real_fraction_plain", "epoch_real_fraction_grouped" (of the whole epoch)}}, "dataset",
    "train_recipes", "mean_set_size", "batch_size", "d_model", "bucket_pool", "steps", "torch_threads",
    "load_avg_before", "load_avg_after"}`` (1/5/15-minute load averages, as ``uptime`` prints them).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    load_before = os.getloadavg()
    base = RunConfig().override({"data.dataset": dataset, "data.path": path, "train.batch_size": batch_size,
                                 "model.d_model": d_model, "train.device": "cpu"}, source="bench")
    data = prepare_data(base.data)
    sets, lengths = data.train, data.train.lengths
    plans = {"plain": epoch_batches(len(sets), batch_size, seed, 0),
             "grouped": epoch_batches(len(sets), batch_size, seed, 0, lengths, bucket_pool)}
    n = min(warmup + steps, *(len(p) - 1 for p in plans.values()))  # full batches only (the last may be partial)
    out: dict = {"models": {}, "dataset": dataset, "train_recipes": len(sets), "mean_set_size": float(lengths.mean()),
                 "batch_size": batch_size, "d_model": d_model, "bucket_pool": bucket_pool, "steps": n - warmup}
    for name in models:
        cfg = base.override({"model.name": name}, source="bench")
        weights = resolve_objectives(cfg)
        cfg.objectives.weights = weights
        torch.manual_seed(seed)
        model = build_model(cfg, data.vocab, weights, int(lengths.max()))
        out["models"][name] = _interleaved_steps(model, Objectives(cfg, weights), sets, plans, n, warmup, seed)
    out.update({"torch_threads": torch.get_num_threads(), "load_avg_before": [round(x, 2) for x in load_before],
                "load_avg_after": [round(x, 2) for x in os.getloadavg()]})
    return out


def _interleaved_steps(model: nn.Module, objectives: Objectives, sets, plans: dict[str, list[np.ndarray]], n: int,
                       warmup: int, seed: int) -> dict:
    """Train ``model`` on batch ``i`` of each plan in turn (the first kind alternating) for ``i < n``; the
    timings and real-position fractions of the steps after ``warmup`` (see :func:`bench_bucketing`)."""
    model.train()
    opt = make_optimizer(model, 1e-3, 0.01)
    times: dict[str, list[float]] = {k: [] for k in plans}
    real: dict[str, list[int]] = {k: [0, 0] for k in plans}  # real positions, padded positions
    kinds = list(plans)
    for i in range(n):
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            batch = collate(sets, plans[kind][i])
            t0 = time.perf_counter()
            loss = objectives(model, batch, step_generator(seed, i))["loss/total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= warmup:
                times[kind].append(time.perf_counter() - t0)
                real[kind][0] += int(batch.mask.sum())
                real[kind][1] += batch.mask.numel()
    size = len(plans["plain"][0])
    res = {f"{k}_recipes_per_s": round(size * len(times[k]) / sum(times[k]), 1) for k in kinds}
    res.update({f"{k}_step_ms": round(1e3 * statistics.median(times[k]), 2) for k in kinds})
    res.update({f"{k}_real_fraction": round(real[k][0] / real[k][1], 4) for k in kinds})
    res.update({f"epoch_real_fraction_{k}": round(real_fraction(plans[k], sets.lengths), 4) for k in kinds})
    res["speedup"] = round(sum(times["plain"]) / sum(times["grouped"]), 3)
    return res
