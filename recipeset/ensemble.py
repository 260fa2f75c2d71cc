"""Ensembles of trained models: one scorer that averages several models sharing a vocabulary.

:class:`Ensemble` is a :class:`~recipeset.models.base.RecipeModel` built from trained models (any family, a
plug-in's too: it only calls the scorer protocol), so the string API, the evaluation and the protocol's tuners
take it like a model::

    ens = recipeset.load_ensemble(["runs/a/model", "runs/b/model", "runs:/<id>/model"])
    ens.completion_scores([["tomato", "basil"]])   # log of the members' renormalised mean log-probabilities
    ens.complete([["tomato"]])                     # greedy from that distribution, stopping on a threshold
    ens.classify([["soy_sauce"]])                  # the members' mean cuisine probabilities

Completion scores combine the members' log-probabilities (each first renormalised over its allowed candidates):
``combine="logprob"`` (the default) their mean, ``combine="prob"`` the log of their mean probability; either is
renormalised with a log-softmax over the allowed candidates, so it is a distribution. A candidate only some
members rule out (-inf) gets their floor :data:`LOG_FLOOR` from them; it is -inf where every member has -inf.
Set completion adds the ensemble's best candidate while its probability reaches ``config.stop_threshold``,
tuned on validation by :func:`recipeset.protocol.tune_stop_rule` (one greedy pass: ``returns_stop_probs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from recipeset.errors import RecipesetError
from recipeset.models.base import (
    RecipeModel,
    inference,
    offset_probs,
    safe_log_softmax,
    threshold_completion,
)

COMBINES = ("logprob", "prob")
LOG_FLOOR = -100.0  # a member's log-probability of a candidate it rules out while another member allows it
DEFAULT_STOP_THRESHOLD = 0.1  # when no member has a stop threshold to start from (evaluation tunes it)


@dataclass
class EnsembleConfig:
    """What an ensemble decides itself: how it combines, when it stops, its cuisine decision rule."""

    combine: str = "logprob"
    stop_threshold: float = DEFAULT_STOP_THRESHOLD  # tuned on validation (protocol.tune_stop_rule)
    cuisine_offsets: tuple[float, ...] = ()  # per-cuisine log-offsets on the mean probabilities (tune_cuisine_rule)
    n_cuisines: int = 0
    stop_size: int | None = None  # at most this many added (tuned with the threshold; None: no cap)


class Ensemble(RecipeModel):
    """The average of several trained models that share one vocabulary (identical ingredients and cuisines).

    ``names`` label the members in errors (default ``member <i>``; :func:`recipeset.runs.load_ensemble` passes
    the directories or URIs). ``stop_threshold`` defaults to the mean of the members' own tuned thresholds (those
    that have one), else :data:`DEFAULT_STOP_THRESHOLD`. Scoring mode ``joint`` is offered when every member
    offers it; the ensemble classifies when every member does.
    """

    model_type = "ensemble"
    returns_stop_probs = True

    def __init__(self, models: Sequence[RecipeModel], names: Sequence[str] | None = None,
                 combine: str = "logprob", stop_threshold: float | None = None) -> None:
        models = list(models)
        names = [f"member {i}" for i in range(len(models))] if names is None else [str(n) for n in names]
        if not models:
            raise RecipesetError("an ensemble needs at least one model")
        if len(names) != len(models):
            raise RecipesetError(f"ensemble: {len(names)} names for {len(models)} models")
        if combine not in COMBINES:
            raise RecipesetError(f"ensemble combine must be one of {COMBINES}, got {combine!r}")
        check_same_vocabulary(models, names)
        if stop_threshold is None:
            own = [float(m.config.stop_threshold) for m in models
                   if getattr(m, "tunes_stop_threshold", False) and m.config.stop_threshold is not None]
            stop_threshold = sum(own) / len(own) if own else DEFAULT_STOP_THRESHOLD
        vocab = models[0].vocab
        super().__init__(EnsembleConfig(combine, float(stop_threshold), members_rule(models), vocab.num_cuisines),
                         vocab)
        self.members = nn.ModuleList(models)
        self.names = names
        self.scoring_modes = tuple(m for m in models[0].scoring_modes if all(m in x.scoring_modes for x in models))
        self.eval()

    @property
    def can_classify(self) -> bool:
        return all(m.can_classify for m in self.members)

    @property
    def accepts_cuisine(self) -> bool:
        return all(m.accepts_cuisine for m in self.members)

    def forward(self, *args, **kwargs):
        raise RecipesetError("an ensemble is not trained: score it with completion_scores_ids / complete_ids")

    # ---- scorer protocol --------------------------------------------------------------------------------
    @inference
    def completion_scores_ids(self, tokens: torch.Tensor, mask: torch.Tensor, mode: str = "next",
                              cuisine: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probability ``[B, V]`` of each id being the missing ingredient: the members' (renormalised)
        log-probabilities combined by ``config.combine`` and renormalised; -inf where every member has -inf
        (specials, the query's ids)."""
        if mode not in self.scoring_modes:
            raise RecipesetError(f"ensemble: scoring mode {mode!r} needs every member to offer it; they share "
                                 f"{', '.join(self.scoring_modes)}")
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        logps = torch.stack([safe_log_softmax(m.completion_scores_ids(tokens, mask, mode=mode, cuisine=cuisine)
                                              .float()) for m in self.members])  # [M, B, V]
        return combine_log_probs(logps, self.config.combine)

    @inference
    def complete_ids(self, tokens: torch.Tensor, mask: torch.Tensor, max_new: int = 20,
                     cuisine: torch.Tensor | None = None, temperature: float = 0.0, top_k: int | None = None,
                     generator: torch.Generator | None = None, return_probs: bool = False):
        """Add one ingredient at a time from the ensemble's distribution over the grown set (greedy: its best;
        sampling: a draw) while the best candidate's probability is ≥ ``config.stop_threshold``, at most
        ``max_new``. ``return_probs``: ``(ids, probs)``, ``probs[b][i]`` that best probability when
        ``ids[b][i]`` was added (``returns_stop_probs``). A member that bounds its input (``generation_budget(
        max_new, fed)``: a decoder with positions) caps ``max_new`` so that the grown sets stay scoreable."""
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        max_new = self.stop_budget(max_new)
        for m in self.members:
            if callable(getattr(m, "generation_budget", None)):
                max_new = min(max_new, m.generation_budget(max_new, tokens.shape[1]))
        return threshold_completion(lambda t, m: self.completion_scores_ids(t, m, cuisine=cuisine), tokens, mask,
                                    max_new, self.config.stop_threshold, temperature, top_k, generator, return_probs)

    @inference
    def classify_ids(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cuisine probabilities ``[B, n_cuisines]``: the mean of the members' plain probabilities (each member's
        own decision rule undone), re-weighted by the ensemble's one rule, ``config.cuisine_offsets`` (the mean of
        the members' rules until :func:`~recipeset.protocol.tune_cuisine_rule` tunes it for the mean)."""
        for name, m in zip(self.names, self.members, strict=True):
            if not m.can_classify:
                raise RecipesetError(f"ensemble: {name} has no cuisine head; every member must be trained with "
                                     "--objective cls to classify")
        probs = torch.stack([offset_probs(m.classify_ids(tokens, mask).float(), [-b for b in member_offsets(m)])
                             for m in self.members]).mean(0)
        return offset_probs(probs, self.config.cuisine_offsets)


def member_offsets(model: RecipeModel) -> tuple[float, ...]:
    """A member's cuisine decision rule (per-cuisine log-offsets; () when it has none)."""
    return tuple(getattr(model.config, "cuisine_offsets", ()) or ())


def members_rule(models: Sequence[RecipeModel]) -> tuple[float, ...]:
    """The mean of the members' cuisine rules (those that have one): where an ensemble's rule starts."""
    rules = [member_offsets(m) for m in models if member_offsets(m)]
    if not rules or len({len(r) for r in rules}) != 1:
        return ()
    return tuple(float(sum(column) / len(rules)) for column in zip(*rules, strict=True))


def combine_log_probs(logps: torch.Tensor, combine: str = "logprob") -> torch.Tensor:
    """``[M, B, V]`` members' log-probabilities → ``[B, V]`` the ensemble's: the mean log-probability
    (``logprob``) or the log of the mean probability (``prob``), renormalised over the finite candidates; a
    candidate is -inf only where every member has -inf (elsewhere a member's -inf counts as :data:`LOG_FLOOR`)."""
    dead = torch.isneginf(logps).all(0)
    if combine == "logprob":
        mixed = logps.clamp(min=LOG_FLOOR).mean(0)
    else:
        mixed = torch.logsumexp(logps, 0) - math.log(logps.shape[0])
    return safe_log_softmax(mixed.masked_fill(dead, float("-inf")))


def check_same_vocabulary(models: Sequence[RecipeModel], names: Sequence[str]) -> None:
    """One-line RecipesetError naming the first member whose ingredients or cuisines differ from the first's."""
    first = models[0].vocab
    for name, m in zip(names[1:], models[1:], strict=True):
        for what in ("ingredients", "cuisines"):
            if getattr(m.vocab, what) != getattr(first, what):
                raise RecipesetError(f"ensemble: {names[0]} and {name} have different {what}; ensemble models "
                                     "trained on the same dataset and data.min_count")


__all__ = ["Ensemble", "EnsembleConfig", "combine_log_probs", "check_same_vocabulary", "COMBINES", "LOG_FLOOR"]
