"""Benchmarks behind ``recipeset bench``: the performance report and its pieces, each an A/B comparison or a
measurement in one process, so that machine noise hits both sides alike.

- :func:`performance_report`: for every model × set loss (:func:`study_variants`), on real flavornet batches
  when the data is there, training recipes/s, counted FLOPs per step, achieved FLOP/s (real positions only)
  against the dense-matmul FLOP/s measured in the same run, the fraction of positions that are real (in packed
  rows for a run that packs, ``train.pack``; the decoder's and the Set Transformer's defaults also run unpacked),
  the data pipeline's share of a step, evaluation queries/s for each scoring mode, and peak memory.
- :func:`bench_hungarian_vs_standard`: the Hungarian set loss against the standard loss on the same K slot
  outputs of the same model and batch, interleaved (A, B, A, B, ...), medians reported.
- :func:`bench_bucketing`: training recipes/s on real batches cut from a plain permutation against
  length-grouped batches (``train.bucket_pool``), same model, same batch size, same objectives.
- :func:`bench_joint_scoring`: decoder ``joint`` scoring from the KV-cached prefix against the reference
  (one full forward pass per candidate sequence, :mod:`recipeset.models.decoder_reference`) on the same
  queries, interleaved, with the largest score difference.
- :func:`bench_million`: a million-recipe CSV through the data layer (``data stats``; load + clean + split +
  encode) and to the first training step, against ``pandas.read_csv`` of the same file, with each piece's peak
  RSS (each piece in a fresh interpreter).

Speed targets live here, never in timed unit tests: the machines are shared, so ratios measured side by side
in one process are what counts, reported with the load average beside them.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from recipeset import progress
from recipeset.config import DEFAULT_LOSS, DataConfig, RunConfig, pack_for, resolve_objectives
from recipeset.data.batching import real_fraction
from recipeset.data.collate import Batch, collate
from recipeset.data.packing import Packing
from recipeset.data.prepare import PreparedData, prepare_data
from recipeset.data.sets import EncodedSets
from recipeset.data.sources import load_dataset
from recipeset.data.vocab import NULL, NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.evaluation import completion_ranks, leave_one_out_queries, ranking_metrics
from recipeset.models.base import RecipeModel
from recipeset.models.decoder import CausalDecoder, DecoderConfig
from recipeset.models.decoder_reference import joint_scores_reference
from recipeset.models.set_transformer import SetTransformer, SetTransformerConfig
from recipeset.objectives.losses import IGNORE, hungarian_loss, standard_loss
from recipeset.objectives.matching import HungarianMatcher
from recipeset.objectives.tasks import Objectives, split_query
from recipeset.pipeline import build_model, run_training
from recipeset.protocol import eval_subset
from recipeset.registry import MODELS, losses_for
from recipeset.training import Trainer, epoch_batches, make_optimizer, step_generator


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


def _real_slot_batch(data: PreparedData, batch_size: int, n_slots: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A real training batch as the ``set`` objective sees it (``split_query``: the query and the hidden part),
    with the hidden part as Hungarian targets ``[B, K]`` and, for the standard step, in its drawn order on the
    first slots and ∅ on the rest."""
    idx = np.random.default_rng(0).choice(len(data.train), size=min(batch_size, len(data.train)), replace=False)
    q_tokens, q_mask, targets = split_query(collate(data.train, idx), generator)
    pad = torch.full((targets.shape[0], max(0, n_slots - targets.shape[1])), IGNORE, dtype=targets.dtype)
    h_targets = torch.cat([targets, pad], 1)[:, :n_slots]
    return q_tokens, q_mask, h_targets, torch.where(h_targets == IGNORE, NULL, h_targets)


def bench_hungarian_vs_standard(batch_size: int = 64, n_slots: int = 32, vocab_size: int = 400, d_model: int = 128,
                                steps: int = 20, warmup: int = 3, seed: int = 0,
                                data: PreparedData | None = None) -> dict:
    """Median training-step time (forward + loss + backward + AdamW step) of ``standard_loss`` on the K slot
    outputs vs ``hungarian_loss`` on the same outputs, same model, same batch, interleaved A/B in one run.

    With ``data``: a real training batch of it through the ``set`` objective's query/target split (K = the
    largest recipe, as a run sets it); else random sets of 3–20 ingredients padded to ``n_slots``.
    Returns a dict: ``standard_step_ms``, ``hungarian_step_ms``, ``hungarian_over_standard_ratio``,
    ``matching_ms`` (the matcher alone, median), ``matching_share`` (matching_ms / hungarian_step_ms),
    ``model``, ``batches`` (real or synthetic), ``batch_size``, ``n_slots``, ``vocab_size``, ``d_model``,
    ``steps``, ``torch_threads``.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if data is not None:
        vocab_size = len(data.vocab)
        n_slots = int(data.train.lengths.max())
        tokens, mask, h_targets, s_targets = _real_slot_batch(data, batch_size, n_slots, gen)
    else:
        tokens, mask, h_targets, s_targets = _synthetic_batch(batch_size, n_slots, vocab_size, gen)
    model, model_name = _build_model(vocab_size, d_model, n_slots)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
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
        "batches": "synthetic" if data is None else "real",
        "batch_size": batch_size,
        "n_slots": n_slots,
        "vocab_size": vocab_size,
        "d_model": d_model,
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
    }


# ---- the performance report ------------------------------------------------------------------------------------
def bench_data(dataset: str, path: str | None) -> tuple[PreparedData, DataConfig, str]:
    """The data a benchmark runs on: ``(prepared data, its data config, its name for the report)`` —
    ``dataset``, or the synthetic default when flavornet's files are not found (the name then says why)."""
    config = DataConfig(dataset=dataset, path=path)
    try:
        return prepare_data(config), config, dataset
    except (RecipesetError, OSError) as err:
        if dataset != "flavornet":
            raise
        return prepare_data(DataConfig()), DataConfig(), f"synthetic ({dataset} unavailable: {err})"


def study_variants() -> dict[str, dict]:
    """One benchmark variant per model × set loss the registries allow, plus each model's default objective:
    ``{name: dotted overrides}`` (the models and losses ``order_study`` compares). A default objective that packs
    several recipes a row (``train.pack``: the decoder's clm, the Set Transformer's element mlm) also runs unpacked,
    ``<name>-unpacked``, so the report shows what packing saves on the same batches."""
    variants: dict[str, dict] = {}
    for model, cls in MODELS.items():
        default = {"model.name": model, "objectives.weights": {cls.default_objective: 1.0}}
        variants[f"{model}-{cls.default_objective}"] = default
        if pack_for(RunConfig().override(default)):
            variants[f"{model}-{cls.default_objective}-unpacked"] = {**default, "train.pack": False}
        for loss in losses_for(cls):
            if loss != DEFAULT_LOSS:
                variants[f"{model}-{loss}"] = {"model.name": model, "loss.name": loss}
    return variants


MATMUL_N = 512  # the dense-matmul reference: an n × n × n fp32 product


def _matmul_seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    t0 = time.perf_counter()
    torch.mm(a, b)
    return time.perf_counter() - t0


def dense_matmul_flops(n: int = MATMUL_N, repeats: int = 20) -> float:
    """FLOP/s of a dense ``n × n`` fp32 matmul on this machine and thread setting (median of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = [_matmul_seconds(a, b) for _ in range(repeats + 2)]
    return 2 * n ** 3 / statistics.median(times[2:])


def _step_flops(trainer: Trainer, batch: Batch) -> int:
    """FLOPs of one training step's forward and backward (``torch.utils.flop_counter``: matmuls, attention)."""
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(batch)
    return int(counter.get_total_flops())


def _positions(model: RecipeModel, objectives: Objectives, batch: Batch) -> tuple[int, int]:
    """Real positions and all positions of what the model runs on for ``batch``: the batch as fed (a decoder's
    ``[BOS]`` first; not the element MLM's occasional appended ``[MASK]``), in packed rows when the run packs
    (:class:`~recipeset.data.packing.Packing`)."""
    _, mask, _ = model.feed(batch.tokens, batch.mask)
    rows, width = Packing.of(mask).shape if objectives.pack else mask.shape
    return int(mask.sum()), rows * width


def _queries_per_s(model: RecipeModel, sets: EncodedSets, mode: str, n: int, batch_size: int = 64) -> float:
    """Leave-one-out completion queries scored per second with ``mode`` on ``n`` test queries."""
    queries, _, _ = leave_one_out_queries(sets.take(np.arange(min(n, len(sets)))), seed=0)
    started = time.perf_counter()
    for i in range(0, len(queries), batch_size):
        tokens, mask = queries.padded(np.arange(i, min(i + batch_size, len(queries))))
        model.completion_scores_ids(torch.from_numpy(tokens), torch.from_numpy(mask), mode=mode)
    return len(queries) / max(time.perf_counter() - started, 1e-9)


def bench_variant(cfg: RunConfig, data: PreparedData, steps: int = 20, warmup: int = 3,
                  eval_queries: int = 256, joint_queries: int = 16) -> dict:
    """Training and evaluation throughput of one run config on ``data`` (the batches the Trainer really draws).

    Returns recipes/s (median step), counted FLOPs per step and achieved FLOP/s counting only real positions,
    the fraction of the positions the model runs on that are real (:func:`_positions`; ``packed``: whether the
    run packs several recipes a row), the data pipeline's share of a step (collation), and
    evaluation queries/s for each scoring mode the model reports. The dense-matmul reference is timed
    between the timed steps (one product after each), so both see the same machine load; the ratio of the two
    is ``achieved_over_matmul``.
    """
    weights = resolve_objectives(cfg)
    max_set = int(max(data.train.lengths.max(initial=1), data.test.lengths.max(initial=1)))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, data.vocab, weights, max_set)
    objectives = Objectives(cfg, weights, class_weights=None)
    with tempfile.TemporaryDirectory(prefix="recipeset-bench-") as tmp:
        trainer = Trainer(cfg, model, objectives, data.train, data.val, Path(tmp), progress=False)
        sets = trainer.epoch_sets(0)
        plan = trainer.epoch_plan(0, sets)[: warmup + steps]
        collate_s, step_s, matmul_s, real, padded, recipes = [], [], [], 0, 0, 0
        a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
        for i, idx in enumerate(plan):
            t0 = time.perf_counter()
            batch = collate(sets, idx)
            t1 = time.perf_counter()
            trainer.train_step(batch)
            t2 = time.perf_counter()
            mm = _matmul_seconds(a, b)
            if i >= warmup:
                collate_s.append(t1 - t0)
                step_s.append(t2 - t1)
                matmul_s.append(mm)
                real, padded = (a + b for a, b in zip((real, padded), _positions(model, objectives, batch),
                                                     strict=True))
                recipes += len(batch)
        flops = _step_flops(trainer, collate(sets, plan[-1]))
    step, coll = statistics.median(step_s), statistics.median(collate_s)
    real_fraction = real / max(padded, 1)
    achieved, matmul = flops * real_fraction / step, 2 * MATMUL_N ** 3 / statistics.median(matmul_s)
    out = {"recipes_per_s": round(recipes / max(sum(step_s) + sum(collate_s), 1e-9), 1),
           "step_ms": round(step * 1e3, 2), "flops_per_step": flops,
           "achieved_flops_per_s": round(achieved), "dense_matmul_flops_per_s": round(matmul),
           "achieved_over_matmul": round(achieved / matmul, 4),
           "real_position_fraction": round(real_fraction, 4), "packed": objectives.pack,
           "data_share": round(coll / (coll + step), 4), "n_parameters": model.num_parameters()}
    model.eval()
    for mode in model.scoring_modes:
        n = joint_queries if mode == "joint" else eval_queries
        out[f"eval_{mode}_queries_per_s"] = round(_queries_per_s(model, data.test_eval, mode, n), 2)
    return out


def performance_report(dataset: str = "flavornet", path: str | None = None, batch_size: int = 64,
                       d_model: int = 128, steps: int = 20, variants: list[str] | None = None,
                       echo: Callable[[str], None] | None = None) -> dict:
    """The performance report of ``recipeset bench``: every :func:`study_variants` entry on real ``dataset``
    batches (flavornet when its files are found, else the synthetic default), measured one after another in this
    process, beside the dense-matmul FLOP/s measured in the same run and the Hungarian/standard step ratio.
    ``achieved_over_matmul`` is the achieved useful FLOP/s (real positions only) over the dense-matmul FLOP/s timed
    between the variant's own steps (:func:`bench_variant`); the report's ``dense_matmul_flops_per_s`` is the
    reference timed alone at the start."""
    echo = echo or (lambda line: None)
    data, data_config, dataset = bench_data(dataset, path)
    if data_config.dataset != dataset:
        echo(f"benchmarking on {dataset}")
    cfg = RunConfig().override({"data.dataset": data_config.dataset, "data.path": data_config.path})
    matmul = dense_matmul_flops()
    report: dict = {"dataset": dataset, "batch_size": batch_size, "d_model": d_model,
                    "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
                    "dense_matmul_flops_per_s": round(matmul), "variants": {}}
    chosen = study_variants()
    unknown = sorted(set(variants or ()) - set(chosen))
    if unknown:
        raise RecipesetError(f"bench: unknown variant(s) {unknown}; valid: {', '.join(chosen)}")
    todo = {name: over for name, over in chosen.items() if not variants or name in variants}
    for name, over in progress.track(todo.items(), "bench", name=lambda item: item[0]):
        run_cfg = cfg.override({**over, "model.d_model": d_model, "train.batch_size": batch_size,
                                "train.device": "cpu"}, source=f"bench {name}")
        report["variants"][name] = bench_variant(run_cfg, data, steps=steps)
    with progress.phase("bench: hungarian vs standard"):
        report["hungarian_vs_standard"] = bench_hungarian_vs_standard(batch_size=batch_size, d_model=d_model,
                                                                      steps=steps, data=data)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return report


def bench_bucketing(models: tuple[str, ...] = ("decoder", "set-transformer"), dataset: str = "flavornet",
                    path: str | None = None, batch_size: int = 64, d_model: int = 128, bucket_pool: int = 64,
                    steps: int = 40, warmup: int = 4, threads: int | None = 1, seed: int = 0) -> dict:
    """Training recipes/s with length-grouped batches against plain-permutation batches, per model.

    For each model (its natural objectives, the run defaults otherwise, ``d_model``), one model and one AdamW
    train on both kinds of batch in turn — plain, grouped, grouped, plain, ... — so both see the same machine
    load: batch ``i`` of epoch 0 of :func:`~recipeset.training.epoch_batches` with ``bucket_pool = 0`` and with
    ``bucket_pool``, padded ``[B, T]`` by :func:`~recipeset.data.collate.collate` as in training, one recipe a
    row (``train.pack = false``: packing is :func:`performance_report`'s ``-unpacked`` comparison). A step is
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
    data, data_config, dataset = bench_data(dataset, path)
    base = RunConfig().override({"data.dataset": data_config.dataset, "data.path": data_config.path,
                                 "train.batch_size": batch_size, "model.d_model": d_model, "train.device": "cpu",
                                 "train.pack": False}, source="bench")  # one recipe a row: grouping's own effect
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


def _joint_queries(dataset: str, path: str | None, n_queries: int, seed: int):
    """(vocabulary, leave-one-out queries of ``n_queries`` seeded test recipes, the data's name): the dataset's
    test split, or the synthetic benchmark when the dataset's files are missing."""
    data, _, dataset = bench_data(dataset, path)
    queries, _, _ = leave_one_out_queries(eval_subset(data.test_eval, n_queries, seed), seed)
    return data.vocab, queries, dataset


@contextlib.contextmanager
def _scoring(model: CausalDecoder, threads: int | None) -> Iterator[None]:
    """Score with ``model`` on ``threads`` torch threads (None: as set); afterwards the threads and the model's
    ``joint_candidates`` (which the body may set) are as they were."""
    previous, saved = torch.get_num_threads(), model.config.joint_candidates
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        model.config.joint_candidates = saved
        torch.set_num_threads(previous)


def bench_joint_scoring(dataset: str = "flavornet", path: str | None = None, n_queries: int = 300,
                        order: str = "frequency", joint_orders: int = 4, d_model: int = 128, n_layers: int = 3,
                        n_heads: int = 4, batch_size: int = 512, repeats: int = 1, seed: int = 0,
                        threads: int | None = 1, model: CausalDecoder | None = None) -> dict:
    """Decoder ``joint`` scoring, cached (``completion_scores_ids(mode="joint")``) against the reference (today's
    whole-sequence passes), on the same leave-one-out queries of ``n_queries`` seeded test recipes, batched as
    the evaluation batches them (``batch_size``), interleaved (``repeats`` rounds, which one goes first
    alternating) in this process on ``threads`` torch threads.

    The model is ``model`` (trained on ``dataset``: its vocabulary encodes the queries) or a freshly initialised
    decoder (``order``, ``d_model``, ...: the time does not depend on the weights). Returns a dict:
    ``reference_s`` and ``cached_s`` (median seconds for all queries), ``speedup`` (their ratio),
    ``max_abs_diff`` (largest |cached - reference| over finite scores), ``max_rel_diff`` (the same relative to
    max(1, |reference|)), ``queries``, ``mean_query_len``, ``dataset``, ``order``, ``joint_orders``,
    ``d_model``, ``n_layers``, ``vocab_size``, ``torch_threads``, ``load_avg_1min`` (the machine's load when the
    bench ended).
    """
    vocab, queries, data_name = _joint_queries(dataset, path, n_queries, seed)
    if model is not None and model.vocab.ingredients != vocab.ingredients:
        raise RecipesetError(f"bench_joint_scoring: the model's vocabulary is not the one of {data_name!r}")
    if model is None:
        torch.manual_seed(seed)
        model = CausalDecoder(DecoderConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, train_order=order,
                                            joint_orders=joint_orders), vocab)
    batches = []
    for start in range(0, len(queries), batch_size):
        tokens, mask = queries.padded(np.arange(start, min(start + batch_size, len(queries))))
        batches.append((torch.from_numpy(tokens), torch.from_numpy(mask)))

    def run(fn: Callable) -> tuple[float, list[torch.Tensor]]:
        t0 = time.perf_counter()
        out = [fn(tokens, mask) for tokens, mask in batches]
        return time.perf_counter() - t0, out

    impls = {"reference": lambda t, m: joint_scores_reference(model, t, m),
             "cached": lambda t, m: model.completion_scores_ids(t, m, mode="joint")}
    with _scoring(model, threads):
        model.config.joint_candidates = 0  # every candidate, as the reference
        times: dict[str, list[float]] = {"reference": [], "cached": []}
        scores: dict[str, list[torch.Tensor]] = {}
        for r in range(repeats):
            for name in (("reference", "cached") if r % 2 == 0 else ("cached", "reference")):
                seconds, scores[name] = run(impls[name])
                times[name].append(seconds)
        used_threads = torch.get_num_threads()
    ref, new = torch.cat(scores["reference"]), torch.cat(scores["cached"])
    finite = torch.isfinite(ref)
    if not torch.equal(finite, torch.isfinite(new)):
        raise RecipesetError("cached joint scores are -inf where the reference is not (or the reverse)")
    diff = (ref[finite] - new[finite]).abs()
    ref_s, new_s = statistics.median(times["reference"]), statistics.median(times["cached"])
    return {
        "reference_s": round(ref_s, 3),
        "cached_s": round(new_s, 3),
        "speedup": round(ref_s / new_s, 2),
        "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
        "max_rel_diff": float((diff / ref[finite].abs().clamp(min=1.0)).max()) if len(diff) else 0.0,
        "queries": len(queries),
        "mean_query_len": round(float(queries.lengths.mean()), 2) if len(queries) else 0.0,
        "dataset": data_name,
        "order": model.config.train_order,
        "joint_orders": model.joint_order_count,
        "d_model": model.config.d_model,
        "n_layers": model.config.n_layers,
        "vocab_size": model.config.vocab_size,
        "torch_threads": used_threads,
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def bench_joint_reranking(model: CausalDecoder, dataset: str = "flavornet", path: str | None = None,
                          n_queries: int = 500, candidates: tuple[int, ...] = (16, 32, 64), batch_size: int = 512,
                          seed: int = 0, threads: int | None = 1) -> dict:
    """Decoder ``joint`` scoring of every candidate against re-ranking each query's top-K first-stage candidates
    (``model.config.joint_candidates = K``), on the same leave-one-out queries of ``n_queries`` seeded test
    recipes of ``dataset`` (the model's), in this process on ``threads`` torch threads, exact first then each K.

    Returns ``exact`` and ``K<k>`` entries: ``seconds``, ``recall@1``, ``recall@10``, ``mrr`` of the held-out
    ingredient's mid-rank; each K also ``speedup`` (exact seconds / its seconds) and ``rank_changed`` (fraction of
    queries whose held-out ingredient's rank differs from the exact one), plus ``queries``, ``order``,
    ``joint_orders``, ``torch_threads`` and ``load_avg_1min``."""
    data, _, data_name = bench_data(dataset, path)
    if model.vocab.ingredients != data.vocab.ingredients:
        raise RecipesetError(f"bench_joint_reranking: the model's vocabulary is not the one of {data_name!r}")
    sets = eval_subset(data.test_eval, n_queries, seed)
    out: dict = {"dataset": data_name, "order": model.config.train_order, "joint_orders": model.joint_order_count}
    with _scoring(model, threads):
        for K in (0, *candidates):
            model.config.joint_candidates = K
            t0 = time.perf_counter()
            ranks = completion_ranks(model, sets, "joint", seed, batch_size)["rank"].to_numpy()
            entry = {"seconds": round(time.perf_counter() - t0, 3),
                     **{k: v for k, v in ranking_metrics(ranks).items() if k in REPORTED_RANKING}}
            if K == 0:
                exact_ranks, out["exact"], out["queries"] = ranks, entry, len(ranks)
            else:
                entry["speedup"] = round(out["exact"]["seconds"] / entry["seconds"], 2)
                entry["rank_changed"] = float((ranks != exact_ranks).mean())
                out[f"K{K}"] = entry
        out["torch_threads"] = torch.get_num_threads()
    out["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return out


REPORTED_RANKING = ("recall@1", "recall@10", "mrr")


# ================================================================================================
# A million recipes: load + clean + encode + split against pandas.read_csv on the same file
# ================================================================================================
MILLION_CUISINES = ("NorthAmerican", "SouthernEuropean", "LatinAmerican", "WesternEuropean", "EastAsian",
                    "MiddleEastern", "SouthAsian", "SoutheastAsian", "EasternEuropean", "African",
                    "NorthernEuropean")
_SYLLABLES = ("ba", "ko", "ri", "san", "mel", "to", "pe", "gar", "lin", "chi", "vo", "dul", "ma", "ne", "ros",
              "tam", "fen", "qui", "lo", "zu", "pra", "bel", "cor", "sal")


def _million_names(n_names: int, rng: np.random.Generator) -> list[str]:
    """``n_names`` distinct made-up ingredient names of one to three words (``"ba kori melto"``)."""
    names: dict[str, None] = {}
    while len(names) < n_names:
        words = [("".join(rng.choice(_SYLLABLES, size=rng.integers(2, 4)))) for _ in range(rng.integers(1, 4))]
        names[" ".join(words)] = None
    return list(names)


def _noisy_variants(name: str) -> list[str]:
    """Spellings of one name that normalise to it (case, whitespace) plus a plural that does not."""
    words = name.split()
    return [name, name.title(), name.upper(), "  " + "   ".join(words) + " ", "\t".join(words) + " ",
            name + "s"]


def write_million_csv(path: str | os.PathLike, n: int = 1_000_000, n_names: int = 1200, seed: int = 0) -> Path:
    """A synthetic recipe CSV (``ingredients;separated;by;semicolons,cuisine``) of ``n`` recipes.

    Set sizes follow flavornet's shape (mean ~8.4, 1..~40); ingredient popularity is Zipf-like over
    ``n_names`` names; ~12% of mentions are written with noise (case, extra or tab whitespace: the same
    ingredient after normalisation; a plural ``s``: a different one), ~1% of recipes repeat an ingredient,
    ~0.2% hold only separators (dropped as empty), and a few cuisine labels carry stray spaces.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    names = _million_names(n_names, rng)
    variants = np.array([_noisy_variants(x) for x in names], dtype=object)  # [n_names, 6]
    sizes = np.clip(rng.negative_binomial(7, 0.45, size=n) + 1, 1, 40)   # mean ~9.6 before dedupe of repeats
    sizes = np.clip(np.round(sizes * 0.875).astype(np.int64), 1, 40)
    total = int(sizes.sum())
    popularity = 1.0 / np.arange(1, n_names + 1) ** 0.9
    name_idx = rng.choice(n_names, size=total, p=popularity / popularity.sum())
    noise = rng.random(total)
    variant = np.where(noise < 0.88, 0, rng.integers(1, 6, size=total))
    variant[noise > 0.995] = 5                                            # plural: another ingredient
    pieces = variants[name_idx, variant]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    repeat = np.flatnonzero(rng.random(n) < 0.01)
    cuisine = np.array(MILLION_CUISINES, dtype=object)[np.minimum(rng.geometric(0.35, size=n) - 1, 10)]
    cuisine[rng.random(n) < 0.001] = " EastAsian "
    empty = set(np.flatnonzero(rng.random(n) < 0.002).tolist())
    repeat_set = set(repeat.tolist())
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("ingredients,cuisine\n")
        for i in range(n):
            row = pieces[offsets[i]:offsets[i + 1]].tolist()
            if i in empty:
                row = [" ", ""]
            elif i in repeat_set:
                row.append(row[0].lower())
            f.write(f"{';'.join(row)},{cuisine[i]}\n")
    return path


MILLION_PIECES = ("read_csv", "stats", "prepare", "first_step")


class _FirstStepDone(Exception):
    """Raised after the first optimizer step of the timed training run, to stop it there."""


def _peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_to_first_step(path: str, model: str = "decoder", d_model: int = 64) -> float:
    """Seconds from calling ``run_training`` (what ``recipeset train`` runs; no MLflow) on ``path`` to the end
    of its first optimizer step: data loading, split, vocabulary, encoding, model and first batch included."""
    cfg = RunConfig.from_dict({"data": {"dataset": path}, "model": {"name": model, "d_model": d_model},
                               "train": {"device": "cpu", "max_steps": 10}})
    original = Trainer.train_step
    started = time.perf_counter()
    done: dict[str, float] = {}

    def first_step(self: Trainer, batch, weight: float = 1.0):  # the real step, then stop the run
        original(self, batch, weight)
        done["seconds"] = time.perf_counter() - started
        raise _FirstStepDone

    with tempfile.TemporaryDirectory(prefix="recipeset-bench-") as out, \
            mock.patch.object(Trainer, "train_step", first_step):
        try:
            run_training(cfg, out_dir=out, track=False, progress=False, evaluate=False)
        except _FirstStepDone:
            pass
    if "seconds" not in done:
        raise RecipesetError("bench: the training run ended before its first step")
    return done["seconds"]


def _seconds(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def million_piece(piece: str, path: str) -> dict:
    """Run one piece of :func:`bench_million` in this process: ``{"seconds", "peak_rss_mb",
    "rss_before_mb"}`` (``rss_before_mb``: after the imports, before the piece).

    - ``read_csv``: ``pandas.read_csv(path)`` (the reference: parsing the file and nothing else; median of 3);
    - ``stats``: what ``recipeset data stats`` does: ``load_dataset`` (read, normalise, clean) + ``describe()``;
    - ``prepare``: ``prepare_data`` (load, clean, group split, training vocabulary, encode train/val/test)
      + ``describe()`` — the data layer's whole job before training;
    - ``first_step``: ``run_training`` until its first optimizer step has finished (a d_model-64 decoder).
    """
    if piece not in MILLION_PIECES:
        raise RecipesetError(f"bench: unknown piece {piece!r}; one of {', '.join(MILLION_PIECES)}")
    before = _peak_rss_mb()
    if piece == "read_csv":  # the reference is short and noisy on a shared machine: the median of 3 reads
        return {"seconds": round(statistics.median(_seconds(pd.read_csv, path) for _ in range(3)), 3),
                "peak_rss_mb": round(_peak_rss_mb(), 1), "rss_before_mb": round(before, 1)}
    t0 = time.perf_counter()
    if piece == "stats":
        load_dataset(path).describe()
    elif piece == "prepare":
        prepare_data(DataConfig(dataset=path)).table.describe()
    seconds = _time_to_first_step(path) if piece == "first_step" else time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(_peak_rss_mb(), 1), "rss_before_mb": round(before, 1)}


def _run_piece(piece: str, path: Path, timeout: float) -> dict:
    """:func:`million_piece` in a fresh interpreter, so that its peak RSS is its own."""
    code = ("import json, sys; from recipeset.bench import million_piece; "
            "print(json.dumps(million_piece(sys.argv[1], sys.argv[2])))")
    proc = subprocess.run([sys.executable, "-c", code, piece, str(path)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RecipesetError(f"bench: the {piece} piece failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_million(n: int = 1_000_000, path: str | os.PathLike | None = None, repeats: int = 1,
                  timeout: float = 1800.0) -> dict:
    """The million-recipe data benchmark (the issue's "Done when": ``stats`` and ``prepare`` <= 8x
    ``read_csv``, <= 1 GB peak; first training step <= 2x ``prepare``).

    Writes the CSV of :func:`write_million_csv` to ``path`` (kept; reused when it exists) or to a temporary
    file (removed), then runs every piece of :func:`million_piece` ``repeats`` times, each in its own fresh
    interpreter (so each peak RSS is that piece's alone, imports included), interleaved so that machine
    noise hits all alike; reports the median seconds and the largest peak of each piece, and the ratios.
    """
    with tempfile.TemporaryDirectory(prefix="recipeset-million-") as tmp:
        csv_path = Path(path) if path is not None else Path(tmp) / "million.csv"
        if not csv_path.exists():
            write_million_csv(csv_path, n=n)
        runs: dict[str, list[dict]] = {p: [] for p in MILLION_PIECES}
        for _ in range(repeats):
            for piece in MILLION_PIECES:
                runs[piece].append(_run_piece(piece, csv_path, timeout))
        size_mb = csv_path.stat().st_size / 2**20
    out: dict = {"n_recipes": n, "csv_mb": round(size_mb, 1), "repeats": repeats,
                 "load_average": [round(x, 2) for x in os.getloadavg()]}
    for piece, rs in runs.items():
        out[f"{piece}_s"] = statistics.median(r["seconds"] for r in rs)
        out[f"{piece}_peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
        out[f"{piece}_rss_before_mb"] = max(r["rss_before_mb"] for r in rs)
    out["stats_over_read_csv"] = round(out["stats_s"] / out["read_csv_s"], 2)
    out["prepare_over_read_csv"] = round(out["prepare_s"] / out["read_csv_s"], 2)
    out["first_step_over_prepare"] = round(out["first_step_s"] / out["prepare_s"], 2)
    out["first_step_over_stats"] = round(out["first_step_s"] / out["stats_s"], 2)
    return out
