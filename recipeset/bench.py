"""Benchmarks whose figures are ratios taken side by side in one process (the machine is shared).

* :func:`bench_hungarian_vs_standard`: a training step with the Hungarian set loss against the standard loss on
  the same model and batch; the two kinds of step are interleaved (A, B, A, B, ...) so that machine noise hits
  both alike, and medians are reported.
* :func:`bench_joint_scoring`: decoder ``joint`` scoring from the KV-cached prefix against the reference
  (one full forward pass per candidate sequence, :mod:`recipeset.models.decoder_reference`) on the same
  queries, interleaved, with the largest score difference.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from recipeset.config import DataConfig
from recipeset.data.prepare import prepare_data
from recipeset.data.vocab import NULL, NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.evaluation import leave_one_out_queries
from recipeset.models.decoder import CausalDecoder, DecoderConfig
from recipeset.models.decoder_reference import joint_scores_reference
from recipeset.models.set_transformer import SetTransformer, SetTransformerConfig
from recipeset.objectives.losses import IGNORE, hungarian_loss, standard_loss
from recipeset.objectives.matching import HungarianMatcher
from recipeset.protocol import eval_subset


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


def _joint_queries(dataset: str, path: str | None, n_queries: int, seed: int):
    """(vocabulary, leave-one-out queries of ``n_queries`` seeded test recipes, the data's name): the dataset's
    test split, or the synthetic benchmark when the dataset's files are missing."""
    try:
        data = prepare_data(DataConfig(dataset=dataset, path=path))
    except (RecipesetError, OSError) as err:
        if dataset == "synthetic":
            raise
        data, dataset = prepare_data(DataConfig(dataset="synthetic")), f"synthetic ({dataset} unavailable: {err})"
    queries, _, _ = leave_one_out_queries(eval_subset(data.test_eval, n_queries, seed), seed)
    return data.vocab, queries, dataset


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
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        times: dict[str, list[float]] = {"reference": [], "cached": []}
        scores: dict[str, list[torch.Tensor]] = {}
        for r in range(repeats):
            for name in (("reference", "cached") if r % 2 == 0 else ("cached", "reference")):
                seconds, scores[name] = run(impls[name])
                times[name].append(seconds)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
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
