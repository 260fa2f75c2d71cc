"""A trained model mixed with a memory of the training recipes (retrieval-augmented completion, as kNN-LM
mixes a language model with a nearest-neighbour distribution, Khandelwal et al. 2020).

:class:`MemoryMixture` scores a candidate by ``(1 − w)·p_model + w·p_memory`` (each distribution renormalised over
the allowed candidates), where ``p_memory`` is a classical completion baseline fit on the run's training split —
by default ``recipe-knn``: the training recipes closest to the query (Jaccard) vote for their ingredients.
Completing a set, the model re-scores the grown set at every step while the memory keeps the distribution of the
*given* ingredients (its neighbours of a set that holds guesses would chase the guesses; re-querying it each
step gave flavornet set micro-F1 0.375 against 0.389 on validation). The weight ``w`` and the stop rule are
tuned on validation — the scoring weight on completion MRR, the completing weight (with the stop rule) on set
completion micro-F1 (:func:`tune_memory_mixture`): the memory helps completing a half recipe far more than ranking
one missing ingredient, and one weight for both cost the ranking what it gave the sets::

    model = recipeset.load_model("runs/x/model")            # or an Ensemble
    memory, _ = fit_baseline("recipe-knn", data.train, model.vocab, val=data.val_eval)
    mix = MemoryMixture(model, memory)
    tune_memory_mixture(mix, val_queries)                   # sets both weights and the stop rule
    mix.complete([["tomato", "garlic"]])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from recipeset.errors import RecipesetError
from recipeset.models.base import (
    RecipeModel,
    inference,
    safe_log_softmax,
    threshold_completion,
)

MEMORY_WEIGHTS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)  # the weights tune_memory_mixture tries


@dataclass
class MixtureConfig:
    weight: float = 0.5               # w: the memory's share of the distribution that ranks candidates
    complete_weight: float = 0.5      # its share while completing a set (set completion)
    stop_threshold: float = 0.1       # completion adds the best candidate while its probability reaches this
    stop_size: int | None = None      # and at most this many (tuned with the threshold)


def mix_log_probs(model_logp: torch.Tensor, memory_logp: torch.Tensor, weight: float) -> torch.Tensor:
    """``log((1 − w)·p_model + w·p_memory)`` of two ``[B, V]`` log-distributions over the same candidates
    (-inf where both are), renormalised; ``w`` 0 or 1 is one of them."""
    if not 0.0 <= weight <= 1.0:
        raise RecipesetError(f"memory weight must be in [0, 1], got {weight}")
    if weight == 0.0:
        return safe_log_softmax(model_logp)
    if weight == 1.0:
        return safe_log_softmax(memory_logp)
    mixed = torch.logaddexp(model_logp + math.log(1 - weight), memory_logp + math.log(weight))
    return safe_log_softmax(mixed)


class MemoryMixture(RecipeModel):
    """A trained model (any :class:`RecipeModel`, an ensemble too) mixed with a completion baseline fit on the
    training recipes (``memory``: anything with the scorer protocol's ``completion_scores_ids``)."""

    model_type = "memory-mixture"
    returns_stop_probs = True

    def __init__(self, model: RecipeModel, memory, weight: float = 0.5, complete_weight: float | None = None) -> None:
        if list(memory.vocab.ingredients) != list(model.vocab.ingredients):
            raise RecipesetError("memory mixture: the memory was fit with another vocabulary than the model's; "
                                 "fit it on the model's run's training split")
        threshold = getattr(model.config, "stop_threshold", None)
        complete_weight = weight if complete_weight is None else complete_weight
        super().__init__(MixtureConfig(float(weight), float(complete_weight),
                                       0.1 if threshold is None else float(threshold),
                                       getattr(model.config, "stop_size", None)), model.vocab)
        for w in (weight, complete_weight):
            mix_log_probs(torch.zeros(1, 1), torch.zeros(1, 1), w)  # checks the weight
        self.model, self.memory = model, memory
        self.scoring_modes = ("next",)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, *args, **kwargs):
        raise RecipesetError("a memory mixture is not trained: score it with completion_scores_ids / complete_ids")

    def _memory_logp(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.memory.completion_scores_ids(tokens.cpu(), mask.cpu())
        return safe_log_softmax(torch.as_tensor(out).float()).to(tokens.device)

    @inference
    def completion_scores_ids(self, tokens: torch.Tensor, mask: torch.Tensor, mode: str = "next",
                              cuisine: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probability ``[B, V]`` of each id being the missing ingredient under the mixture."""
        if mode != "next":
            raise RecipesetError(f"memory mixture: scoring mode {mode!r} is not offered; use 'next'")
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        model = safe_log_softmax(self.model.completion_scores_ids(tokens, mask, mode=mode, cuisine=cuisine).float())
        return mix_log_probs(model, self._memory_logp(tokens, mask), self.config.weight)

    @inference
    def complete_ids(self, tokens: torch.Tensor, mask: torch.Tensor, max_new: int = 20,
                     cuisine: torch.Tensor | None = None, temperature: float = 0.0, top_k: int | None = None,
                     generator: torch.Generator | None = None, return_probs: bool = False):
        """Add one ingredient at a time from the mixture (``config.complete_weight``) — the model on the grown
        set, the memory on the given one (an added ingredient leaves it) — while the best candidate's probability is ≥
        ``config.stop_threshold``, at most ``max_new`` (and ``config.stop_size``)."""
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        max_new = self.stop_budget(max_new)
        memory = self._memory_logp(tokens, mask)  # of the given ingredients, once
        def next_logp(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            model = safe_log_softmax(self.model.completion_scores_ids(t, m, cuisine=cuisine).float())
            return mix_log_probs(model, memory.masked_fill(torch.isneginf(model), float("-inf")),
                                 self.config.complete_weight)

        return threshold_completion(next_logp, tokens, mask, max_new, self.config.stop_threshold, temperature, top_k,
                                    generator, return_probs)


def tune_memory_mixture(mixture: MemoryMixture, val, seed: int = 0, draws: int = 1,
                        weights: Sequence[float] = MEMORY_WEIGHTS) -> dict[str, dict[float, float]]:
    """Both weights of ``mixture`` tuned on ``val``: ``weight`` for the leave-one-out completion MRR (``draws``
    held-out draws per recipe), ``complete_weight`` with the stop rule for the set-completion micro-F1 of its half
    queries (each weight's rule tuned by :func:`recipeset.protocol.tune_stop_rule`); ties keep the smaller weight.
    Returns ``{"mrr": {weight: MRR}, "set_f1": {weight: micro-F1}}``."""
    from recipeset.evaluation import evaluate_completion
    from recipeset.protocol import set_stop_rule, tune_stop_rule

    if not weights:
        raise RecipesetError("tune_memory_mixture: no weights to try")
    mrr, f1, rules = {}, {}, {}
    for w in weights:
        mixture.config.weight = mixture.config.complete_weight = float(w)
        mrr[float(w)] = evaluate_completion(mixture, val, seed=seed, draws=draws)["mrr"]
        rules[float(w)] = tune_stop_rule(mixture, val, seed=seed)
        f1[float(w)] = rules[float(w)].micro_f1 if rules[float(w)] is not None else -1.0

    def best(scores: dict[float, float]) -> float:
        return max(scores, key=lambda w: (scores[w], -w))

    mixture.config.weight, mixture.config.complete_weight = best(mrr), best(f1)
    if rules[mixture.config.complete_weight] is not None:  # the completing weight's rule, put back
        set_stop_rule(mixture, rules[mixture.config.complete_weight])
    return {"mrr": mrr, "set_f1": f1}
