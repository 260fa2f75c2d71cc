"""The evaluation protocol (DESIGN.md, "Evaluation protocol"): metrics, fixed-seed queries and tasks.

Everything here works on :class:`~recipeset.data.sets.EncodedSets` encoded with the run's vocabulary (a test
ingredient the vocabulary lacks is [UNK]) and on any object implementing the :class:`Scorer` protocol —
models, classical baselines and the synthetic oracle are all scored by the same code on the same queries.

Conventions that every number depends on:
- A *candidate* is an ingredient id (``>= NUM_SPECIALS``) not in the query. The evaluation itself puts -inf
  on specials and query ids, so a scorer that forgets to cannot gain from it.
- Ranks are mid-ranks: ``1 + #higher + ½·#tied`` among the finite candidates. A target that is [UNK] (the
  vocabulary lacks it) or scored -inf gets the worst rank, the number of candidates of its query.
- Cuisine is withheld from completion queries unless ``conditioned=True`` (a separately labelled variant).
- Queries are scored in batches of similar length (:data:`GROUP_BY_LENGTH`), each result put back at its query,
  and the random orders of the order-sensitivity and NLL tasks are drawn per query, so the metrics equal those of
  batches in split order — up to the float rounding of differently shaped batches: a TV distance differs in its
  last digits, and a rank moves by ½ only where two candidates' scores tie to rounding (one query of 2000 on an
  untrained decoder; none on the trained model of the test).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch

from recipeset import progress
from recipeset.data.batching import chunks, sorted_batches
from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import NUM_SPECIALS, PAD, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.io_utils import atomic_write_text
from recipeset.registry import EVAL_TASKS, EvalTaskEntry
from recipeset.signals import raise_if_terminated

DEFAULT_TASKS = ("completion", "set", "cuisine", "order")  # evaluate_all's default (nll needs a likelihood)
COMPLETION_MIN_SIZE = 2  # a leave-one-out query holds out one ingredient and keeps at least one
SET_MIN_SIZE = 4         # set completion gives half a recipe (at least two) and asks for the rest (at least two)


class NoSetQueries(RecipesetError):
    """No recipe of the sets has :data:`SET_MIN_SIZE` ingredients: there is no set-completion query (a stop rule
    has nothing to be tuned on)."""

    def __init__(self, what: str = "validation") -> None:
        super().__init__(f"{what} has no set with >= {SET_MIN_SIZE} ingredients to tune the stop rule on")
# Score queries in batches sorted by length (little padding: ~2x faster on flavornet); False: in split order.
# Results are the same either way (tests/test_evaluation.py checks it); the switch is for that check and benchmarks.
GROUP_BY_LENGTH = True


@runtime_checkable
class Scorer(Protocol):
    """What the evaluation needs from a model, a baseline or an oracle (see the team contract)."""

    vocab: Vocabulary
    can_classify: bool

    def completion_scores_ids(self, tokens: torch.Tensor, mask: torch.Tensor, mode: str = "next",
                              cuisine: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T]`` ids + ``[B, T]`` mask -> ``[B, len(vocab)]`` scores, -inf on specials and query ids."""
        ...

    def complete_ids(self, tokens: torch.Tensor, mask: torch.Tensor, max_new: int = 20,
                     cuisine: torch.Tensor | None = None) -> list[list[int]]:
        """The generated rest of each set: no repeats, no specials, no query ids."""
        ...

    # Scorers with ``can_classify`` also offer ``classify_ids(tokens, mask) -> [B, n_cuisines]`` probabilities
    # (not a protocol member, so that ``isinstance(x, Scorer)`` holds for the ones that cannot classify).


# ================================================================================================
# Metrics (pure functions; hand-testable)
# ================================================================================================
def mid_ranks(scores: torch.Tensor, target_ids: torch.Tensor,
              n_candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Mid-rank of each target among the allowed (finite-score) candidates.

    scores: ``[B, V]`` float, -inf on disallowed ids; target_ids: ``[B]`` int (an id outside ``0..V-1``,
    e.g. -1, is "unknown"); n_candidates: optional ``[B]`` worst rank per row (default: the number of finite
    scores, at least 1). Returns ``[B]`` float64 ranks, ``1 + #higher + ½·#tied``; a target that is unknown or
    scored -inf gets the worst rank.
    """
    scores = torch.as_tensor(scores)
    target_ids = torch.as_tensor(target_ids, dtype=torch.long)
    if scores.ndim != 2 or target_ids.shape != scores.shape[:1]:
        raise RecipesetError(f"mid_ranks: expected scores [B, V] and targets [B], got {tuple(scores.shape)} "
                             f"and {tuple(target_ids.shape)}")
    if torch.isnan(scores).any() or torch.isposinf(scores).any():
        raise RecipesetError("mid_ranks: scores contain NaN or +inf; a scorer must return finite scores or -inf")
    scores = scores.double()
    B, V = scores.shape
    finite = torch.isfinite(scores)
    if n_candidates is None:
        n_candidates = finite.sum(1).clamp(min=1)
    n_candidates = torch.as_tensor(n_candidates).double()
    valid = (target_ids >= 0) & (target_ids < V)
    s_t = scores.gather(1, target_ids.clamp(0, max(V - 1, 0))[:, None])  # [B, 1]
    higher = ((scores > s_t) & finite).sum(1).double()
    tied = ((scores == s_t) & finite).sum(1).double() - 1.0  # minus the target itself
    ranks = 1.0 + higher + 0.5 * tied
    hit = valid & torch.isfinite(s_t[:, 0])
    return torch.where(hit, ranks, n_candidates)


def recall_at_k(ranks: torch.Tensor | np.ndarray, k: int) -> float:
    """Fraction of ranks ``<= k`` (a tie straddling ``k`` has mid-rank > k and counts as a miss)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float((ranks <= k).mean()) if len(ranks) else float("nan")


def mrr(ranks: torch.Tensor | np.ndarray) -> float:
    """Mean reciprocal rank."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float((1.0 / ranks).mean()) if len(ranks) else float("nan")


def mean_rank(ranks: torch.Tensor | np.ndarray) -> float:
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(ranks.mean()) if len(ranks) else float("nan")


def _as_flat(sets: EncodedSets | Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(values, row of each value) of a list of id lists or an EncodedSets."""
    if isinstance(sets, EncodedSets):
        return sets.values, sets.segment_ids
    lengths = np.fromiter((len(s) for s in sets), dtype=np.int64, count=len(sets))
    values = np.fromiter((int(t) for s in sets for t in s), dtype=np.int64, count=int(lengths.sum()))
    return values, np.repeat(np.arange(len(sets), dtype=np.int64), lengths)


def set_prf(pred_sets: EncodedSets | Sequence[Sequence[int]],
            true_sets: EncodedSets | Sequence[Sequence[int]]) -> dict[str, float]:
    """Set-prediction metrics over a split (Inverse Cooking's dataset-level IoU/F1).

    ``pred_sets[i]`` and ``true_sets[i]`` are id lists. Predicted ids are de-duplicated; special ids never
    match, so an [UNK] in the truth (an ingredient the vocabulary lacks) is always a false negative.
    Returns micro_iou = tp/(tp+fp+fn) and micro_f1 = 2tp/(2tp+fp+fn) with tp/fp/fn summed over the split
    (so micro_f1 = 2·iou/(1+iou)), micro precision/recall, mean per-recipe F1 (0 for an empty prediction of a
    non-empty truth, 1 when both are empty), mean predicted size and mean true size.
    """
    n = len(true_sets)
    if len(pred_sets) != n:
        raise RecipesetError(f"set_prf: {len(pred_sets)} predicted sets for {n} true sets")
    pv, pr = _as_flat(pred_sets)
    tv, tr = _as_flat(true_sets)
    # one integer key per (row, id) pair makes membership a single np.isin
    width = int(max(pv.max(initial=0), tv.max(initial=0))) + 1
    pkey = np.unique(pr * width + pv)
    tkey = tr * width + tv
    t_known = tkey[tv >= NUM_SPECIALS]
    hit = np.isin(pkey, t_known)
    prow = pkey // width
    tp = np.bincount(prow[hit], minlength=n).astype(np.float64)
    psize = np.bincount(prow, minlength=n).astype(np.float64)
    tsize = np.bincount(tr, minlength=n).astype(np.float64)
    fp, fn = psize - tp, tsize - tp
    denom = 2 * tp + fp + fn
    per_f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    nan = float("nan")
    return {
        "micro_iou": float(TP / (TP + FP + FN)) if TP + FP + FN > 0 else nan,
        "micro_f1": float(2 * TP / (2 * TP + FP + FN)) if TP + FP + FN > 0 else nan,
        "micro_precision": float(TP / (TP + FP)) if TP + FP > 0 else 0.0,
        "micro_recall": float(TP / (TP + FN)) if TP + FN > 0 else nan,
        "mean_f1": float(per_f1.mean()) if n else nan,
        "pred_size": float(psize.mean()) if n else nan,
        "true_size": float(tsize.mean()) if n else nan,
    }


def cuisine_metrics(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> dict[str, float]:
    """probs ``[N, C]``, labels ``[N]`` (0..C-1) -> accuracy and macro-F1 (over the labels present in truth or
    prediction, zero_division=0)."""
    from sklearn.metrics import accuracy_score, f1_score

    pred = np.asarray(probs).argmax(1)
    labels = np.asarray(labels)
    return {"accuracy": float(accuracy_score(labels, pred)),
            "macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0))}


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``½·Σ|p − q|`` over the last dimension: ``[..., V] x [..., V] -> [...]``."""
    return 0.5 * (torch.as_tensor(p) - torch.as_tensor(q)).abs().sum(-1)


def candidate_distribution(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the allowed, finite candidates: ``[B, V] -> [B, V]``.

    A row with no finite allowed score becomes uniform over its allowed ids (so it has a distribution to
    compare, not NaN).
    """
    s = scores.double().masked_fill(~allowed, float("-inf"))
    dead = ~torch.isfinite(s).any(1, keepdim=True)
    s = torch.where(dead & allowed, torch.zeros_like(s), s)
    return torch.softmax(s, dim=1).nan_to_num(0.0)


# ================================================================================================
# Queries (fixed seeds: identical for every model and baseline)
# ================================================================================================
def drop_unknown(sets: EncodedSets) -> EncodedSets:
    """The same sets without [UNK] (or any other special id)."""
    keep = sets.values >= NUM_SPECIALS
    lengths = np.bincount(sets.segment_ids[keep], minlength=len(sets))
    return EncodedSets.from_lengths(sets.values[keep], lengths, sets.cuisine.copy())


def _shuffled_positions(sets: EncodedSets, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random permutation inside every set: (order [total] of value positions, rank of each position)."""
    seg = sets.segment_ids
    order = np.lexsort((rng.random(len(sets.values)), seg))  # grouped by set, random inside
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order)) - sets.offsets[seg[order]]
    return order, rank


def leave_one_out_queries(sets: EncodedSets, seed: int = 0) -> tuple[EncodedSets, np.ndarray, np.ndarray]:
    """Leave-one-out completion queries.

    For every set with ``>= 2`` ingredients (counting unknown ones), one ingredient chosen with ``seed`` is
    held out; the query is the rest in its original order, without [UNK]. Returns (queries, held_out ids
    ``[N]`` — [UNK] when the vocabulary lacks the held-out ingredient, a guaranteed miss —, row ``[N]`` of each
    query in ``sets``). It is draw 0 of :func:`leave_one_out_draws`.
    """
    queries, held_out, rows, _ = leave_one_out_draws(sets, seed, draws=1)
    return queries, held_out, rows


def leave_one_out_draws(sets: EncodedSets, seed: int = 0, draws: int = 1
                        ) -> tuple[EncodedSets, np.ndarray, np.ndarray, np.ndarray]:
    """``draws`` leave-one-out queries of every set with ``>= 2`` ingredients, draw-major (every set of draw 0,
    then of draw 1, ...): the queries of all draws scored in one pass.

    ``seed`` draws one random order of each set; draw ``d`` holds out the ingredient at position ``d mod n`` of
    it, so draw 0 is :func:`leave_one_out_queries`' query and a set's draws hold out distinct ingredients as far
    as its size ``n`` allows (then they start over: a set of 2 with 5 draws holds out a, b, a, b, a — unbiased,
    since the order is random). Returns (queries ``[D·N]``, held_out ids ``[D·N]``, row ``[D·N]`` of each query
    in ``sets``, draw ``[D·N]``).
    """
    if draws < 1:
        raise RecipesetError(f"leave-one-out needs draws >= 1, not {draws}")
    rows = np.flatnonzero(sets.lengths >= COMPLETION_MIN_SIZE)
    sub = sets.take(rows)
    _, rank = _shuffled_positions(sub, np.random.default_rng(seed))
    n_sets, n_values = len(sub), len(sub.values)
    draw = np.repeat(np.arange(draws), n_values)           # every value position once per draw
    values = np.tile(sub.values, draws)
    segment = np.tile(sub.segment_ids, draws) + draw * n_sets
    held = np.tile(rank, draws) == draw % np.tile(sub.lengths[sub.segment_ids], draws)
    held_out = values[held]  # one per set and draw, draw-major (positions are grouped by set)
    keep = ~held & (values >= NUM_SPECIALS)
    lengths = np.bincount(segment[keep], minlength=n_sets * draws)
    queries = EncodedSets.from_lengths(values[keep], lengths, np.tile(sub.cuisine, draws))
    return (queries, held_out.astype(np.int64), np.tile(rows, draws),
            np.repeat(np.arange(draws, dtype=np.int64), n_sets))


def half_queries(sets: EncodedSets, seed: int = 0) -> tuple[EncodedSets, EncodedSets, np.ndarray]:
    """Set-completion queries: for every set with ``>= 4`` ingredients, a random ``⌊n/2⌋`` (chosen with ``seed``)
    is the query (original order, [UNK] dropped) and the rest is the truth ([UNK] kept: a false negative).

    Returns (queries, truths, row ``[N]`` of each query in ``sets``).
    """
    rows = np.flatnonzero(sets.lengths >= SET_MIN_SIZE)
    sub = sets.take(rows)
    _, rank = _shuffled_positions(sub, np.random.default_rng(seed))
    seg = sub.segment_ids
    in_query = rank < (sub.lengths // 2)[seg]
    qkeep = in_query & (sub.values >= NUM_SPECIALS)
    queries = EncodedSets.from_lengths(sub.values[qkeep], np.bincount(seg[qkeep], minlength=len(sub)),
                                       sub.cuisine.copy())
    truths = EncodedSets.from_lengths(sub.values[~in_query], np.bincount(seg[~in_query], minlength=len(sub)),
                                      sub.cuisine.copy())
    return queries, truths, rows


# ================================================================================================
# Tasks
# ================================================================================================
def _batch(sets: EncodedSets, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``[B, T]`` tokens and mask with ``T >= 1`` (a batch of empty queries still has a column)."""
    T = max(1, int(sets.lengths[idx].max(initial=0)))
    tokens, mask = sets.padded(idx, max_len=T)
    return torch.from_numpy(tokens), torch.from_numpy(mask)


def _allowed(tokens: torch.Tensor, mask: torch.Tensor, V: int) -> torch.Tensor:
    """``[B, V]`` bool: ingredient ids not in the query."""
    allowed = torch.ones(tokens.shape[0], V, dtype=torch.bool)
    allowed[:, :NUM_SPECIALS] = False
    allowed.scatter_(1, torch.where(mask, tokens, PAD), False)
    return allowed


def _scores(scorer: Scorer, tokens: torch.Tensor, mask: torch.Tensor, mode: str,
            cuisine: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The scorer's ``[B, V]`` scores with the protocol enforced (-inf on specials/query ids), and the allowed mask."""
    V = len(scorer.vocab)
    scores = scorer.completion_scores_ids(tokens, mask, mode=mode, cuisine=cuisine)
    scores = torch.as_tensor(scores).detach().float().cpu()
    if scores.shape != (tokens.shape[0], V):
        raise RecipesetError(f"{type(scorer).__name__}.completion_scores_ids returned shape "
                             f"{tuple(scores.shape)}, expected ({tokens.shape[0]}, {V})")
    allowed = _allowed(tokens, mask, V)
    return scores.masked_fill(~allowed, float("-inf")), allowed


def _batches(sets: EncodedSets, batch_size: int, unit: str = "queries") -> Iterator[np.ndarray]:
    """The rows of ``sets`` in batches of ``batch_size``: sorted by length when :data:`GROUP_BY_LENGTH`, else in
    split order, counted on the progress line (``1200/5623 queries``). Callers put every result back at its row."""
    if batch_size < 1:
        raise RecipesetError(f"batch_size must be >= 1, not {batch_size}")
    return progress.track(sorted_batches(sets.lengths, batch_size, by_length=GROUP_BY_LENGTH), total=len(sets),
                          unit=unit, size=len)


def _completion_ranks(scorer: Scorer, queries: EncodedSets, held_out: np.ndarray, mode: str,
                      batch_size: int, conditioned: bool) -> np.ndarray:
    """``[N]`` float64 mid-rank of each query's held-out ingredient, in query order."""
    n_ing = scorer.vocab.num_ingredients
    ranks = np.zeros(len(queries))
    for idx in _batches(queries, batch_size):
        tokens, mask = _batch(queries, idx)
        cuisine = torch.from_numpy(queries.cuisine[idx]) if conditioned else None
        scores, _ = _scores(scorer, tokens, mask, mode, cuisine)
        target = torch.from_numpy(held_out[idx])
        target = torch.where(target >= NUM_SPECIALS, target, -1)  # [UNK] target: a miss
        n_cand = torch.from_numpy(n_ing - queries.lengths[idx]).clamp(min=1)
        ranks[idx] = mid_ranks(scores, target, n_cand).numpy()
    return ranks


def ranking_metrics(ranks: np.ndarray, draws: int = 1) -> dict[str, float]:
    """Recall@1, Recall@10, MRR and mean rank of the per-query ``ranks`` of ``draws`` draws of ``n`` recipes each
    (the mean over the draws of each draw's metric: every draw has the same recipes), ``n`` and ``draws``."""
    return {"recall@1": recall_at_k(ranks, 1), "recall@10": recall_at_k(ranks, 10), "mrr": mrr(ranks),
            "mean_rank": mean_rank(ranks), "n": int(len(ranks)) // draws, "draws": int(draws)}


@torch.inference_mode()
def completion_ranks(scorer: Scorer, sets: EncodedSets, mode: str = "next", seed: int = 0, batch_size: int = 512,
                     conditioned: bool = False, draws: int = 1) -> pd.DataFrame:
    """The per-query ranks of leave-one-out completion: one row per (recipe, draw) of
    :func:`leave_one_out_draws` — ``recipe`` (row in ``sets``), ``draw``, ``target`` (the held-out id) and
    ``rank`` (its mid-rank). The queries of all draws are batched together (by length), as one split of
    ``draws × n`` queries."""
    queries, held_out, rows, draw = leave_one_out_draws(sets, seed, draws)
    ranks = _completion_ranks(scorer, queries, held_out, mode, batch_size, conditioned)
    return pd.DataFrame({"recipe": rows, "draw": draw, "target": held_out, "rank": ranks})


def evaluate_completion(scorer: Scorer, sets: EncodedSets, mode: str = "next", seed: int = 0,
                        batch_size: int = 512, conditioned: bool = False, draws: int = 1) -> dict[str, float]:
    """Leave-one-out completion: Recall@1, Recall@10, MRR, mean rank (mid-ranks) over ``draws`` held-out draws
    per recipe (:func:`leave_one_out_draws`; 1: the one seeded draw), n (recipes) and draws.

    ``mode`` is passed to the scorer (``next``/``joint`` for decoders; baselines ignore it). Cuisine is
    withheld unless ``conditioned``.
    """
    ranks = completion_ranks(scorer, sets, mode, seed, batch_size, conditioned, draws)
    return ranking_metrics(ranks["rank"].to_numpy(), draws)


def _check_generated(scorer: Scorer, gen: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> None:
    """Generated sets must obey the protocol; a violation is a scorer bug, never silently scored."""
    V = len(scorer.vocab)
    if len(gen) != tokens.shape[0]:
        raise RecipesetError(f"{type(scorer).__name__}.complete_ids returned {len(gen)} sets for "
                             f"{tokens.shape[0]} queries")
    flat, rows = _as_flat(gen)
    if len(flat) == 0:
        return
    name = type(scorer).__name__
    if (flat < NUM_SPECIALS).any() or (flat >= V).any():
        raise RecipesetError(f"{name}.complete_ids generated a special or out-of-vocabulary id")
    keys = rows * V + flat
    if len(np.unique(keys)) != len(keys):
        raise RecipesetError(f"{name}.complete_ids generated a repeated ingredient")
    qrows, qcols = np.nonzero(mask.numpy())
    if np.isin(keys, qrows * V + tokens.numpy()[qrows, qcols]).any():
        raise RecipesetError(f"{name}.complete_ids generated an ingredient of the query")


@torch.inference_mode()
def evaluate_set_completion(scorer: Scorer, sets: EncodedSets, seed: int = 0, max_new: int | None = None,
                            batch_size: int = 512, conditioned: bool = False) -> dict[str, float]:
    """Set completion from half: the scorer generates the rest of each query (and decides when to stop).

    ``max_new`` defaults to the longest set in ``sets`` (a generous cap: stopping is the model's job).
    Returns micro_iou, micro_f1, micro_precision, micro_recall, mean_f1, pred_size, true_size and n.
    """
    preds, _, truths = complete_halves(scorer, sets, seed, max_new, batch_size, conditioned)
    out = set_prf(preds, truths) if len(truths) else {}
    out["n"] = int(len(truths))
    return out


@torch.inference_mode()
def complete_halves(scorer: Scorer, sets: EncodedSets, seed: int = 0, max_new: int | None = None,
                    batch_size: int = 512, conditioned: bool = False, return_probs: bool = False
                    ) -> tuple[list[list[int]], list[list[float]] | None, EncodedSets]:
    """The scorer's completions of the half queries of :func:`evaluate_set_completion`: ``(generated,
    probs, truths)``; ``probs`` (``return_probs``, scorers with ``returns_stop_probs``) is what each added
    ingredient's stop rule compared with the threshold, else None."""
    queries, truths, _ = half_queries(sets, seed)
    if max_new is None:
        max_new = int(sets.lengths.max(initial=1))
    preds: list[list[int]] = [[] for _ in range(len(queries))]  # filled in query order (batches go by length)
    probs: list[list[float]] | None = [[] for _ in range(len(queries))] if return_probs else None
    for idx in _batches(queries, batch_size):
        tokens, mask = _batch(queries, idx)
        cuisine = torch.from_numpy(queries.cuisine[idx]) if conditioned else None
        if return_probs:
            gen, p = scorer.complete_ids(tokens, mask, max_new=max_new, cuisine=cuisine, return_probs=True)
            for row, q in zip(idx, p, strict=True):
                probs[row] = q
        else:
            gen = scorer.complete_ids(tokens, mask, max_new=max_new, cuisine=cuisine)
        gen = [[int(t) for t in g] for g in gen]
        _check_generated(scorer, gen, tokens, mask)
        for row, g in zip(idx, gen, strict=True):
            preds[row] = g
    return preds, probs, truths


@torch.inference_mode()
def cuisine_probs(scorer: Scorer, sets: EncodedSets, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The scorer's cuisine probabilities ``[N, C]`` for the labelled sets ([UNK] dropped from the input) and
    their labels ``[N]``."""
    if not getattr(scorer, "can_classify", False):
        raise RecipesetError(f"{type(scorer).__name__} cannot classify cuisines")
    rows = np.flatnonzero(sets.cuisine >= 0)
    if len(rows) == 0:
        raise RecipesetError("evaluate_cuisine: the sets carry no cuisine labels")
    sub = drop_unknown(sets.take(rows))
    P = None  # [N, C] probabilities in row order
    for idx in _batches(sub, batch_size, unit="recipes"):
        tokens, mask = _batch(sub, idx)
        probs = torch.as_tensor(scorer.classify_ids(tokens, mask)).detach().float().cpu().numpy()
        if P is None:
            P = np.zeros((len(sub), probs.shape[1]), dtype=probs.dtype)
        P[idx] = probs
    return P, sub.cuisine


def evaluate_cuisine(scorer: Scorer, sets: EncodedSets, batch_size: int = 512) -> dict:
    """Cuisine classification on the labelled sets ([UNK] dropped from the input).

    Returns accuracy, macro_f1, n and ``confusion`` (int64 ``[C, C]``, rows = true, columns = predicted).
    """
    P, labels = cuisine_probs(scorer, sets, batch_size)
    C = max(scorer.vocab.num_cuisines, P.shape[1])
    confusion = np.zeros((C, C), dtype=np.int64)
    np.add.at(confusion, (labels, P.argmax(1)), 1)
    return {**cuisine_metrics(P, labels), "n": int(len(labels)), "confusion": confusion}


def macro_f1(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Macro-F1 over the classes present in truth or prediction (zero_division=0), as
    :func:`cuisine_metrics` computes it with scikit-learn, from one confusion count (fast enough to call in a
    search loop)."""
    conf = np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp, true, predicted = np.diag(conf), conf.sum(1), conf.sum(0)
    present = (true + predicted) > 0
    f1 = np.divide(2 * tp, true + predicted, out=np.zeros(n_classes), where=present)
    return float(f1[present].mean()) if present.any() else 0.0


def _order_keys(sets: EncodedSets, batch_size: int, n_orders: int, gen: torch.Generator) -> torch.Tensor:
    """``[n_orders, N, T]`` float random sort keys of every set's positions (``T`` its longest set, at least 1;
    2.0 past a set's chunk width), one row per set, drawn ``[B, T_chunk]`` at a time for the split-order chunks of
    ``batch_size`` sets, order by order: a set's random orders are a function of its row and the seed, not of the
    batch it is scored in (and are those of the split-order batches the tasks used before length grouping)."""
    keys = torch.full((n_orders, len(sets), max(1, int(sets.lengths.max(initial=0)))), 2.0)
    for idx in chunks(np.arange(len(sets)), batch_size):
        width = max(1, int(sets.lengths[idx].max(initial=0)))
        for p in range(n_orders):
            keys[p, idx[0]:idx[-1] + 1, :width] = torch.rand((len(idx), width), generator=gen)
    return keys


def _permute_rows(tokens: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The real tokens of each right-padded row ``[B, T]`` sorted by their ``keys`` (``[B, >= T]``, one random
    order): a random permutation, padding staying at the end."""
    keys = keys[:, :tokens.shape[1]].masked_fill(~mask, 2.0)
    return tokens.gather(1, keys.argsort(1))


@torch.inference_mode()
def evaluate_order_sensitivity(scorer: Scorer, sets: EncodedSets, n_perms: int = 5, seed: int = 0,
                               max_queries: int | None = 1000, mode: str = "next",
                               batch_size: int = 256) -> dict[str, float]:
    """How much the candidate distribution depends on the order the query is fed in.

    For ``n_perms`` random permutations of each leave-one-out query (the first ``max_queries`` of a fixed
    seeded sample): ``tv`` = mean over queries and permutation pairs of the total-variation distance between
    the softmax distributions over the allowed candidates; ``recall@10_spread`` = max − min of Recall@10
    across the permutations (``recall@10`` is their mean). A model that sorts its input has 0 by construction.
    """
    if n_perms < 2:
        raise RecipesetError(f"order sensitivity needs n_perms >= 2, not {n_perms}")
    queries, held_out, _ = leave_one_out_queries(sets, seed)
    if max_queries is not None and len(queries) > max_queries:
        pick = np.sort(np.random.default_rng(seed).choice(len(queries), size=max_queries, replace=False))
        queries, held_out = queries.take(pick), held_out[pick]
    keys = _order_keys(queries, batch_size, n_perms, torch.Generator().manual_seed(seed))  # [P, N, T]
    n_ing = scorer.vocab.num_ingredients
    iu = torch.triu_indices(n_perms, n_perms, offset=1)
    n = len(queries)
    tv, hits = np.zeros(n), np.zeros((n_perms, n))  # per query: mean TV over pairs; Recall@10 hit per order
    for idx in _batches(queries, batch_size):
        tokens, mask = _batch(queries, idx)
        target = torch.from_numpy(held_out[idx])
        target = torch.where(target >= NUM_SPECIALS, target, -1)
        n_cand = torch.from_numpy(n_ing - queries.lengths[idx]).clamp(min=1)
        dists = []
        for p in range(n_perms):
            scores, allowed = _scores(scorer, _permute_rows(tokens, mask, keys[p, idx]), mask, mode, None)
            dists.append(candidate_distribution(scores, allowed))
            hits[p, idx] = (mid_ranks(scores, target, n_cand) <= 10).numpy()
        D = torch.stack(dists)  # [P, B, V]
        tv[idx] = total_variation(D[iu[0]], D[iu[1]]).mean(0).numpy()  # mean over pairs: [B]
    r10 = hits.sum(1) / max(n, 1)
    return {"tv": float(tv.sum()) / n if n else float("nan"), "recall@10_spread": float(r10.max() - r10.min()),
            "recall@10": float(r10.mean()), "n": int(n)}


@torch.inference_mode()
def evaluate_nll(order_log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sets: EncodedSets,
                 k: int = 8, seed: int = 0, batch_size: int = 256) -> dict[str, float]:
    """Set negative log-likelihood estimated over ``k`` sampled orders (nats).

    ``order_log_likelihood(tokens [B, T], mask [B, T]) -> [B]`` is the log-likelihood of each set fed in the
    given order. log p(set) ≈ log-mean-exp over the k orders + log n! (p(set) = Σ over the n! orders; a
    single order understates it). Sets containing [UNK] are skipped (their likelihood is undefined).
    Returns ``nll_set`` (mean per set), ``nll_ingredient`` (total / total ingredients), ``perplexity`` =
    exp(nll_ingredient), ``nll_order_ingredient`` (the mean single-order NLL per ingredient, comparable
    within a model family only) and n.
    """
    if k < 1:
        raise RecipesetError(f"evaluate_nll needs k >= 1 sampled orders, not {k}")
    has_unk = np.bincount(sets.segment_ids[sets.values < NUM_SPECIALS], minlength=len(sets)) > 0
    sub = sets.take(np.flatnonzero(~has_unk & (sets.lengths > 0)))
    if len(sub) == 0:
        return {"nll_set": float("nan"), "nll_ingredient": float("nan"), "perplexity": float("nan"),
                "nll_order_ingredient": float("nan"), "n": 0}
    keys = _order_keys(sub, batch_size, k, torch.Generator().manual_seed(seed))  # [k, N, T]
    s, o = torch.zeros(len(sub), dtype=torch.float64), torch.zeros(len(sub), dtype=torch.float64)  # per set
    for idx in _batches(sub, batch_size, unit="recipes"):
        tokens, mask = _batch(sub, idx)
        lls = torch.stack([torch.as_tensor(order_log_likelihood(_permute_rows(tokens, mask, keys[p, idx]), mask))
                           .double().cpu() for p in range(k)])  # [k, B]
        n = mask.sum(1).double()
        s[idx] = torch.logsumexp(lls, 0) - math.log(k) + torch.lgamma(n + 1)
        o[idx] = lls.mean(0)
    total = float(sub.lengths.sum())
    nll_ing = float(-s.sum()) / total
    return {"nll_set": float(-s.mean()), "nll_ingredient": nll_ing, "perplexity": math.exp(nll_ing),
            "nll_order_ingredient": float(-o.sum()) / total, "n": int(len(sub))}


@dataclass(frozen=True)
class EvalOptions:
    """What :func:`evaluate_all` passes to every task."""

    seed: int = 0
    modes: Sequence[str] = ("next",)
    batch_size: int = 512
    max_new: int | None = None
    order_queries: int | None = 1000
    nll_orders: int = 8
    draws: int = 1                           # completion: held-out draws per recipe
    per_query: list[pd.DataFrame] | None = None  # completion: each mode's per-query ranks are appended here


def _mode_suffix(mode: str) -> str:
    return "" if mode == "next" else f"_{mode}"


def _task(name: str, help: str, oracle: bool = True, min_size: int = 1):
    """Register an evaluation task: ``run(scorer, sets, options) -> {"<prefix>/<metric>": value}``; ``min_size``:
    the smallest recipe it makes a query of."""
    def deco(run):
        EVAL_TASKS.register(name, EvalTaskEntry(name, run, oracle, help, min_size))
        return run

    return deco


def _prefixed(prefix: str, metrics: Mapping) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items() if np.isscalar(v)}


@_task("completion", "leave-one-out: Recall@1/10, MRR, mean rank (decoders also `joint`)",
       min_size=COMPLETION_MIN_SIZE)
def _completion_task(scorer: Scorer, sets: EncodedSets, o: EvalOptions) -> dict[str, float]:
    out: dict[str, float] = {}
    for mode in o.modes:
        with progress.phase(_mode_suffix(mode)[1:]):
            ranks = completion_ranks(scorer, sets, mode, o.seed, o.batch_size, draws=o.draws)
        out.update(_prefixed(f"completion{_mode_suffix(mode)}", ranking_metrics(ranks["rank"].to_numpy(), o.draws)))
        if o.per_query is not None:
            o.per_query.append(ranks.assign(mode=mode))
    return out


@_task("set", "set completion from half: micro-F1/IoU, predicted vs true size", min_size=SET_MIN_SIZE)
def _set_task(scorer: Scorer, sets: EncodedSets, o: EvalOptions) -> dict[str, float]:
    return _prefixed("set", evaluate_set_completion(scorer, sets, o.seed, o.max_new, o.batch_size))


@_task("cuisine", "cuisine accuracy and macro-F1 (scorers that classify)")
def _cuisine_task(scorer: Scorer, sets: EncodedSets, o: EvalOptions) -> dict[str, float]:
    if getattr(scorer, "can_classify", False) and (sets.cuisine >= 0).any():
        return _prefixed("cuisine", evaluate_cuisine(scorer, sets, o.batch_size))
    return {}


@_task("order", "order sensitivity: total variation over query permutations", oracle=False,
       min_size=COMPLETION_MIN_SIZE)
def _order_task(scorer: Scorer, sets: EncodedSets, o: EvalOptions) -> dict[str, float]:
    out: dict[str, float] = {}
    for mode in o.modes:
        with progress.phase(_mode_suffix(mode)[1:]):
            out.update(_prefixed(f"order{_mode_suffix(mode)}", evaluate_order_sensitivity(
                scorer, sets, seed=o.seed, max_queries=o.order_queries, mode=mode, batch_size=o.batch_size)))
    return out


@_task("nll", "set NLL over sampled orders (scorers with order_log_likelihood)", oracle=False)
def _nll_task(scorer: Scorer, sets: EncodedSets, o: EvalOptions) -> dict[str, float]:
    fn = getattr(scorer, "order_log_likelihood", None)
    if not callable(fn):
        return {}
    return _prefixed("nll", evaluate_nll(fn, sets, k=o.nll_orders, seed=o.seed, batch_size=o.batch_size))


def evaluate_all(scorer: Scorer, sets: EncodedSets, tasks: Sequence[str] = DEFAULT_TASKS, seed: int = 0,
                 modes: Sequence[str] = ("next",), batch_size: int = 512, max_new: int | None = None,
                 order_queries: int | None = 1000, nll_orders: int = 8, draws: int = 1,
                 per_query: list[pd.DataFrame] | None = None) -> dict[str, float]:
    """Every requested task (:data:`recipeset.registry.EVAL_TASKS` names) on ``sets``: a flat
    ``{"task/metric": value}`` dict.

    Completion scores ``draws`` held-out draws per recipe (:func:`leave_one_out_draws`) and appends each mode's
    per-query ranks (:func:`completion_ranks` with a ``mode`` column) to ``per_query`` when given.

    Keys: ``completion/recall@1|recall@10|mrr|mean_rank|n|draws`` (mode ``next``; other modes as
    ``completion_<mode>/...``), ``set/micro_iou|micro_f1|mean_f1|pred_size|true_size|...``,
    ``cuisine/accuracy|macro_f1|n`` (skipped when the scorer cannot classify or the sets carry no labels;
    the confusion matrix is in :func:`evaluate_cuisine`), ``order/tv|recall@10_spread|...`` (and
    ``order_<mode>/...``), ``nll/...`` (only for scorers with an ``order_log_likelihood(tokens, mask)`` method).
    """
    entries = [EVAL_TASKS.get(t) for t in tasks]
    options = EvalOptions(seed, tuple(modes), batch_size, max_new, order_queries, nll_orders, draws, per_query)
    out: dict[str, float] = {}
    for entry in entries:
        raise_if_terminated()
        with progress.phase(entry.name):
            out.update(entry.run(scorer, sets, options))
    return out


# ================================================================================================
# Tables
# ================================================================================================
def _flatten(d: Mapping, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}/"))
        elif isinstance(v, (np.ndarray, list, tuple)):
            continue  # matrices (confusion) do not belong in a metrics table
        else:
            out[key] = v.item() if isinstance(v, np.generic) else v
    return out


def metrics_table(results: Mapping[str, Mapping]) -> pd.DataFrame:
    """``{name: metrics}`` -> a DataFrame with one row per model/baseline (index ``name``).

    Nested dicts are flattened with ``/`` (``{"test": {"completion/mrr": …}}`` -> column ``test/completion/mrr``).
    """
    rows = {name: _flatten(m) for name, m in results.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "name"
    return table


def metrics_table_to_json(table: pd.DataFrame) -> str:
    """``{name: {column: value}}`` JSON (NaN -> null)."""
    records = {str(name): {c: (None if isinstance(v, float) and math.isnan(v) else v) for c, v in row.items()}
               for name, row in table.to_dict(orient="index").items()}
    return json.dumps(records, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))


def save_metrics_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the table atomically as ``.csv`` or ``.json`` (by suffix)."""
    path = Path(path)
    if path.suffix == ".csv":
        atomic_write_text(path, table.to_csv())
    elif path.suffix == ".json":
        atomic_write_text(path, metrics_table_to_json(table))
    else:
        raise RecipesetError(f"{path}: metrics table must be saved as .csv or .json")
    return path
