"""Objectives: turn a collated batch into model inputs + targets and named losses (DESIGN.md).

Every objective and every set loss here is a registered function (``recipeset.registry``); which model runs
which is derived from the models' ``objectives`` and ``set_head`` (``python -m recipeset.registry`` prints the
table).

On the decoder ``clm`` is always the standard next-ingredient CE; ``set`` predicts the same set from
``[BOS]`` with the configured loss (every prefix is a partial set, so conditioning on a partial set is
the decoder's prefix). On the Set Transformer ``set`` hides a random part of each recipe (possibly all of
it) and decodes the hidden part with the K slots. On Deep Sets ``set`` hides a random part the same way and
scores every candidate independently (``multilabel``: binary relevance, one sigmoid per ingredient).
``cls`` is the task objective: with ``detach`` its head sees detached features, and with ``alpha`` the total
is ``α·L_cls + (1−α)·Σ_other w·L``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recipeset.config import RunConfig, pack_for, position_averaged, positions_of, resolve_objectives
from recipeset.data.collate import Batch
from recipeset.data.packing import Packing
from recipeset.data.vocab import NULL, NUM_SPECIALS
from recipeset.errors import RecipesetError
from recipeset.fields import spec
from recipeset.models.base import ModelOutput, RecipeModel
from recipeset.objectives.losses import (
    IGNORE,
    hungarian_loss,
    item_cross_entropy,
    min_perm_loss,
    mlm_set_loss,
    multilabel_loss,
    next_token_targets,
    pooled_loss,
    set_ar_loss,
    standard_loss,
)
from recipeset.objectives.masking import coherence_pairs, mlm_mask, rtd_corrupt
from recipeset.objectives.matching import HungarianMatcher
from recipeset.registry import LOSSES, OBJECTIVES, PER_RECIPE, register_loss, register_objective


def cuisine_class_weights(mode: str, labels: np.ndarray, n_classes: int,
                          sample_weights: np.ndarray | None = None) -> torch.Tensor | None:
    """Per-class weights of the cuisine loss from the training labels (``-1``: unlabelled, ignored).

    ``"none"`` gives ``None`` (plain cross-entropy); ``"balanced"`` gives ``w_c = N / (C · n_c)`` with ``N``
    labelled recipes and ``C`` classes that occur — scikit-learn's ``class_weight="balanced"``, so the neural
    head and the logistic-regression baseline can be weighted alike. ``n_c`` counts ``sample_weights`` when the
    training set is sampled with weights (mixed datasets); a class absent from training gets the rarest class's
    weight.
    """
    if mode == "none":
        return None
    if mode != "balanced":
        raise RecipesetError(f"objectives.cls_class_weight = {mode!r}: valid: none, balanced")
    labels = np.asarray(labels)
    keep = labels >= 0
    if not keep.any():
        raise RecipesetError("objectives.cls_class_weight = 'balanced': the training split has no cuisine labels")
    sw = None if sample_weights is None else np.asarray(sample_weights, dtype=np.float64)[keep]
    counts = np.bincount(labels[keep], weights=sw, minlength=n_classes).astype(np.float64)
    seen = counts > 0
    if not seen.any():
        raise RecipesetError("objectives.cls_class_weight = 'balanced': every training recipe has weight 0")
    w = counts[seen].sum() / (int(seen.sum()) * np.where(seen, counts, counts[seen].min()))
    return torch.tensor(w, dtype=torch.float32)


def _bce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    if smoothing:
        labels = labels * (1 - smoothing) + 0.5 * smoothing
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def split_query(batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hide a random part of each set: ``q ~ U{0..n-1}`` ingredients stay visible (the query), the rest
    (at least one) is the target. Returns query tokens/mask ``[B, T]`` and left-aligned targets ``[B, T]``."""
    tokens, mask = batch.tokens, batch.mask
    B, T = tokens.shape
    n = mask.sum(1)
    keys = torch.rand(B, T, generator=generator, device=tokens.device).masked_fill(~mask, 2.0)
    shuffled = tokens.gather(1, keys.argsort(1))
    q = (torch.rand(B, generator=generator, device=tokens.device) * n).floor().long()  # 0..n-1
    pos = torch.arange(T, device=tokens.device)[None, :]
    qmask = pos < q[:, None]
    src = (pos + q[:, None]).clamp(max=T - 1)
    targets = torch.where(pos < (n - q)[:, None], shuffled.gather(1, src), IGNORE)
    return shuffled.masked_fill(~qmask, 0), qmask, targets


def multi_hot(tokens: torch.Tensor, mask: torch.Tensor, V: int) -> torch.Tensor:
    """``[B, V]`` float: 1 at the ingredient ids of each row's real positions (specials never)."""
    hot = torch.zeros(tokens.shape[0], V, device=tokens.device)
    hot.scatter_(1, torch.where(mask, tokens, 0), 1.0)
    hot[:, :NUM_SPECIALS] = 0.0
    return hot


class Objectives:
    """Computes the weighted losses of one batch: ``objectives(model, batch, generator) -> dict``.

    Each objective and each set loss is a registered function ``fn(objectives, model, batch, generator, cache)``
    (:func:`recipeset.registry.register_objective` / :func:`~recipeset.registry.register_loss`); this object
    gives them the run's settings (``cfg``, ``loss_params``, ``ls`` = label smoothing) and the shared clean
    forward pass (:meth:`clean`). The returned dict has ``loss/<objective>`` for every objective,
    ``loss/total`` (what is optimised) and, where defined, ``ppl/<objective>`` (per-ingredient perplexity).
    """

    def __init__(self, cfg: RunConfig, weights: dict[str, float] | None = None,
                 cooccurrence: torch.Tensor | None = None, class_weights: torch.Tensor | None = None) -> None:
        self.cfg = cfg
        self.weights = weights if weights is not None else resolve_objectives(cfg)
        if class_weights is None and cfg.objectives.cls_class_weight != "none" and "cls" in self.weights:
            raise RecipesetError(f"objectives.cls_class_weight = {cfg.objectives.cls_class_weight!r} needs the "
                                 "training labels: pass class_weights=cuisine_class_weights(...)")
        self.class_weights = class_weights
        self.entries = {name: OBJECTIVES.get(name) for name in self.weights}
        self.loss_entry = LOSSES.get(cfg.loss.name)
        self.loss_params = cfg.loss_params()
        self.obj = cfg.objectives
        self.ls = cfg.loss.label_smoothing
        self.cooccurrence = cooccurrence
        self.state: dict = {}  # per-run objects a loss builds once (e.g. the Hungarian matcher)
        self.rescaled: dict[str, tuple[Callable, float, type]] = {}  # weigh_positions
        self.pack = pack_for(cfg)  # several sets a row in run() (and so in clean())

    def weigh_positions(self, lengths: np.ndarray, model_cls: type) -> None:
        """For length-grouped batches: rescale every loss that is a mean over a batch's positions by
        Σ_i w(n_i) / (B · w̄) — w(n) its expected terms for a recipe of n ingredients (the registry's
        ``positions``), w̄ their mean over the training recipes (``lengths``) — so every position weighs
        1 / (B · w̄) in every batch, as it does on average in a random batch, however short the batch's recipes."""
        n = torch.as_tensor(np.asarray(lengths, dtype=np.float64))
        self.rescaled = {}
        for name in position_averaged(self.cfg):
            fn = positions_of(self.cfg, name)
            self.rescaled[name] = (fn, float(fn(n, self.cfg, model_cls).mean()), model_cls)

    def run(self, model: RecipeModel, tokens: torch.Tensor, mask: torch.Tensor) -> ModelOutput:
        """The model's output on sets ``tokens/mask [B, T]`` in the training order, fed by ``model.feed``
        (``[B, T']``). When the run packs (``train.pack``) the fed sets are packed several a row
        (:class:`~recipeset.data.packing.Packing`), and the per-position outputs (logits, hidden states, RTD
        logits) put back at each set's positions: ``[B, T', ...]`` as unpacked, equal up to float rounding (pooled
        and the per-set heads are None)."""
        fed, fed_mask, _ = model.feed(tokens, mask)
        if not self.pack:
            return model(fed, fed_mask)
        packing = Packing.of(fed_mask)
        return model(packing.pack(fed), sequence_ids=packing.sequence_ids()).per_position(packing.unpack)

    def clean(self, model: RecipeModel, batch: Batch, cache: dict) -> ModelOutput:
        """The forward pass on the uncorrupted batch, computed once per step and shared by the objectives."""
        if "clean" not in cache:
            cache["clean"] = self.run(model, batch.tokens, batch.mask)
        return cache["clean"]

    def __call__(self, model: RecipeModel, batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        cache: dict = {}
        losses = {name: entry.fn(self, model, batch, generator, cache) for name, entry in self.entries.items()}
        if self.rescaled:
            n = batch.mask.sum(1).to(torch.float64)
            for name, (fn, mean, model_cls) in self.rescaled.items():
                scale = fn(n, self.cfg, model_cls).sum() / (len(n) * mean)
                losses[name] = losses[name] * scale.to(losses[name].dtype)
        alpha = self.obj.alpha
        if alpha is None:
            total = sum(self.weights[k] * v for k, v in losses.items())
        else:
            task = sum(self.weights[k] * losses[k] for k in losses if self.entries[k].task)
            lm = sum(self.weights[k] * losses[k] for k in losses if not self.entries[k].task)
            total = alpha * task + (1 - alpha) * lm
        out = {f"loss/{k}": v for k, v in losses.items()}
        out["loss/total"] = total
        for k, v in losses.items():
            if self._has_perplexity(k):
                out[f"ppl/{k}"] = v.detach().exp()
        return out

    def _has_perplexity(self, name: str) -> bool:
        return self.entries[name].perplexity or (name == "set" and self.loss_entry.perplexity)

    def metric_keys(self) -> list[str]:
        """The keys every call returns: ``loss/total``, ``loss/<objective>`` and ``ppl/<objective>`` of the LM
        losses (what the periodic validation logs as ``val/...``)."""
        return ["loss/total", *(f"loss/{k}" for k in self.entries),
                *(f"ppl/{k}" for k in self.entries if self._has_perplexity(k))]


# ---- objectives --------------------------------------------------------------------------------------------
# ``positions``: the expected terms a recipe of n ingredients adds to a loss averaged over a batch's terms (see
# ObjectiveEntry.positions); PER_RECIPE: one term per recipe.
def next_positions(n, cfg: RunConfig, model_cls: type):
    """Next-ingredient losses: n ingredients + the [EOS] step."""
    return n + 1


def masked_positions(n, cfg: RunConfig, model_cls: type):
    """Element MLM: the expected labelled positions of :func:`~recipeset.objectives.masking.mlm_mask` (n·p,
    at least one, or the one [NULL] position of a "nothing missing" example); held-out MLM: one term per recipe."""
    if model_cls.masked_prediction == "held-out":
        return None
    p, q = cfg.objectives.mlm_prob, cfg.objectives.null_prob
    return (1 - q) * (n * p + (1 - p) ** n) + q


def every_position(n, cfg: RunConfig, model_cls: type):
    return n


@register_objective("clm", perplexity=True, help="next-ingredient cross-entropy with a causal mask (GPT)",
                    positions=next_positions, packs=True)
def clm(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    out = o.clean(model, batch, cache)
    return standard_loss(out.logits, next_token_targets(batch.tokens, batch.mask), o.ls)


def masks_elements(model_cls: type) -> bool:
    """``packs`` of the element MLM: its BERT-masked sets run through ``Objectives.run`` (not a held-out model's)."""
    return model_cls.masked_prediction == "elements"


@register_objective("mlm", perplexity=True, help="masked ingredients (BERT 80/10/10), or one held-out ingredient",
                    positions=masked_positions, packs=masks_elements)
def mlm(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    if model.masked_prediction == "held-out" and o.obj.held_out == "all":
        loss = _held_out_all(o, model, batch)
        if getattr(model.config, "null_stop", False):  # a whole set: nothing is missing
            loss = loss + o.obj.null_prob * _whole_set_is_null(o, model, batch)
        return loss
    if model.masked_prediction == "held-out" and o.obj.held_out == "all+part":
        return _held_out_all(o, model, batch) + _held_out_part(o, model, batch, gen)
    if model.masked_prediction == "held-out":
        # one mask: drop one random ingredient per set, predict it from the rest
        tokens, mask = batch.tokens, batch.mask
        n = mask.sum(1).clamp_min(1)
        r = (torch.rand(n.shape, generator=gen, device=tokens.device) * n).floor().long()
        pos = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        held = pos == r[:, None]
        target = tokens.gather(1, r[:, None]).squeeze(1).masked_fill(mask.sum(1) == 0, IGNORE)
        out = model(tokens, mask & ~held)
        return F.cross_entropy(out.set_logits.float(), target, ignore_index=IGNORE, label_smoothing=o.ls)
    mb = mlm_mask(batch.tokens, batch.mask, len(model.vocab), prob=o.obj.mlm_prob, generator=gen,
                  null_prob=o.obj.null_prob)
    return mlm_set_loss(o.run(model, mb.tokens, mb.mask).logits, mb.labels, mb.masked_with_token, o.ls)


def _held_out_all(o: Objectives, model: RecipeModel, batch: Batch) -> torch.Tensor:
    """Every ingredient of every set predicted from the rest (``model.held_out_logits``), each set weighted
    equally (the mean over its ingredients), as the evaluation's one query per recipe weights them."""
    tokens, mask = batch.tokens, batch.mask
    logits = model.held_out_logits(tokens, mask, model.condition(batch.cuisine))  # type: ignore[attr-defined]
    loss = item_cross_entropy(logits.float(), tokens[mask], o.ls)
    n = mask.sum(1)
    per_row = (1.0 / n.clamp_min(1).to(loss.dtype))[torch.nonzero(mask)[:, 0]]
    return (loss * per_row).sum() / (n > 0).sum().clamp_min(1)


def _whole_set_is_null(o: Objectives, model: RecipeModel, batch: Batch) -> torch.Tensor:
    """The mean over the non-empty sets of −log p([NULL] | the whole set): the learned stop of a held-out model
    (``model.null_stop``), trained against the held-out ingredients' targets in the same softmax."""
    logits = model(batch.tokens, batch.mask, model.condition(batch.cuisine)).set_logits.float()
    target = torch.full((len(logits),), NULL, dtype=torch.long, device=logits.device)
    target = target.masked_fill(batch.mask.sum(1) == 0, IGNORE)
    return F.cross_entropy(logits, target, ignore_index=IGNORE, label_smoothing=o.ls)


def _held_out_part(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator) -> torch.Tensor:
    """A random part of each set hidden (:func:`split_query`: 1..n of its n ingredients) and predicted from the
    rest by the one softmax, every hidden ingredient a target (the uniform distribution over them: what set
    completion asks of a half recipe), each set weighted equally."""
    q_tokens, q_mask, targets = split_query(batch, gen)
    logits = model(q_tokens, q_mask, model.condition(batch.cuisine)).set_logits.float()  # [B, V]
    hidden = targets != IGNORE
    rows = torch.nonzero(hidden)[:, 0]
    loss = item_cross_entropy(logits[rows], targets[hidden], o.ls)
    m = hidden.sum(1)
    return (loss / m.clamp_min(1).to(loss.dtype)[rows]).sum() / (m > 0).sum().clamp_min(1)


@register_objective("cls", head="cuisine_head", task=True, help="cuisine classification", positions=PER_RECIPE)
def cls(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    out = o.clean(model, batch, cache)
    features = out.pooled if out.cuisine_features is None else out.cuisine_features
    logits = model.cuisine_head(features.detach() if o.obj.detach else features)  # type: ignore[attr-defined]
    labels = batch.cuisine
    if bool((labels >= 0).sum() == 0):
        return logits.sum() * 0.0  # no labelled recipe in this batch
    w = None if o.class_weights is None else o.class_weights.to(logits.device, torch.float32)
    return F.cross_entropy(logits.float(), labels, weight=w, ignore_index=-1, label_smoothing=o.ls)


def _bce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    if smoothing:
        labels = labels * (1 - smoothing) + 0.5 * smoothing
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


@register_objective("rtd", head="rtd_head", help="replaced-ingredient detection", positions=every_position,
                    packs=True)
def rtd(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    tokens, labels = rtd_corrupt(batch.tokens, batch.mask, len(model.vocab), prob=o.obj.rtd_prob,
                                 generator=gen, cooccurrence=o.cooccurrence)
    out = o.run(model, tokens, batch.mask)
    return _bce(out.rtd_logits[batch.mask], labels[batch.mask], o.ls)


@register_objective("coherence", head="coherence_head", help="do these two halves belong to one recipe",
                    positions=PER_RECIPE)
def coherence(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    tokens, mask, segments, labels = coherence_pairs(batch.tokens, batch.mask, generator=gen)
    tokens, mask, segments = model.feed(tokens, mask, segments)
    return _bce(model(tokens, mask, segments=segments).coherence_logits, labels, o.ls)


@register_objective("set", help="predict the set with the configured set loss (loss.name)")  # positions: the loss's
def set_objective(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    return o.loss_entry.fn(o, model, batch, gen, cache)


# ---- set losses (the `set` objective) -----------------------------------------------------------------------
@dataclass
class HungarianParams:
    null_weight: float = spec(0.1, ge=0)  # down-weight of the ∅ class (DETR's eos_coef)
    truncate_logp: float | None = None  # OAXE-style truncation of low-probability matches


@dataclass
class MinPermParams:
    k: int = spec(4, ge=1)  # sampled orders per recipe


@dataclass
class PooledParams:
    stop_weight: float = spec(1.0, ge=0)  # weight of the class-balanced stop loss
    cardinality_weight: float = spec(0.0, ge=0)  # weight of the set-size penalty


@register_loss("standard", heads=("sequence",), perplexity=True, positions=next_positions, packs=True,
               help="position-wise cross-entropy on the order data.order produced (with shuffle: augmentation)")
def standard(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    return clm(o, model, batch, gen, cache)


def _slot_forward(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator):
    """Hide a random part of each set and decode it with the model's K slots: ``(slot_logits, targets)``."""
    if model.config.n_slots <= 0:
        raise RecipesetError(f"the 'set' objective on a {model.model_type} needs the slot decoder: set model.n_slots")
    q_tokens, q_mask, targets = split_query(batch, gen)
    K = model.config.n_slots
    largest = int((targets != IGNORE).sum(1).max())
    if largest > K:
        raise RecipesetError(f"model.n_slots={K} is smaller than the largest recipe in the batch ({largest}); "
                             "raise model.n_slots")
    return model(q_tokens, q_mask, model.condition(batch.cuisine)).slot_logits, targets


@register_loss("hungarian", heads=("slots",), params=HungarianParams, positions=PER_RECIPE,
               help="DETR-style: slots matched to the hidden ingredients by linear_sum_assignment, then CE")
def hungarian(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    p = o.loss_params
    if "matcher" not in o.state:
        o.state["matcher"] = HungarianMatcher(null_weight=p.null_weight)
    slot_logits, targets = _slot_forward(o, model, batch, gen)
    return hungarian_loss(slot_logits, targets, null_weight=p.null_weight, label_smoothing=o.ls,
                          truncate_logp=p.truncate_logp, matcher=o.state["matcher"])


@register_loss("set-ar", heads=("sequence",), perplexity=True, positions=next_positions, packs=True,
               help="autoregressive and exact for sets: the target at step t is any ingredient not yet fed")
def set_ar(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    return set_ar_loss(o.clean(model, batch, cache).logits, batch.tokens, batch.mask)


@register_loss("min-perm", heads=("sequence",), params=MinPermParams, perplexity=True, positions=next_positions,
               packs=True,
               help="the cross-entropy of the best of loss.k re-fed orders")
def min_perm(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    mask = batch.mask

    def nll(perm: torch.Tensor) -> torch.Tensor:
        return standard_loss(o.run(model, perm, mask).logits, next_token_targets(perm, mask), o.ls, reduction="none")

    return min_perm_loss(nll, batch.tokens, mask, k=o.loss_params.k, generator=gen)


def sequence_head(model_cls: type) -> bool:
    """``packs`` of a loss whose sequence-head path alone runs through ``Objectives.run`` (not its slot path)."""
    return model_cls.set_head == "sequence"


# pooled: one term per recipe, but left undeclared so a run keeps plain batches by default: grouped, a 2000-step
# Set Transformer with pooled slots lost 0.043 test MRR and 0.046 set micro-F1 on flavornet (seed 0);
# packs: its decoder path runs through Objectives.run (its slot path, one query a row, does not pack)
@register_loss("pooled", heads=("sequence", "slots"), params=PooledParams, packs=sequence_head,
               help="max-pooled probabilities over steps/slots + BCE, a class-balanced stop loss")
def pooled(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    p = o.loss_params
    if model.set_head == "sequence":
        tokens, mask = batch.tokens, batch.mask
        logits = o.clean(model, batch, cache).logits
        steps = torch.arange(logits.shape[1], device=tokens.device)[None, :] <= mask.sum(1)[:, None]
        return pooled_loss(logits, multi_hot(tokens, mask, logits.shape[-1]), steps, stop_weight=p.stop_weight,
                           cardinality_weight=p.cardinality_weight, stop_targets="position")
    slot_logits, targets = _slot_forward(o, model, batch, gen)
    steps = torch.ones(slot_logits.shape[:2], dtype=torch.bool, device=targets.device)
    return pooled_loss(slot_logits, multi_hot(targets.clamp_min(0), targets != IGNORE, slot_logits.shape[-1]),
                       steps, stop_id=NULL, stop_weight=p.stop_weight, cardinality_weight=p.cardinality_weight)


@register_loss("multilabel", heads=("pooled",), model_params={"multilabel": True}, positions=PER_RECIPE,
               help="binary relevance on a randomly hidden part: one BCE per candidate ingredient")
def multilabel(o: Objectives, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
    q_tokens, q_mask, targets = split_query(batch, gen)
    logits = model(q_tokens, q_mask, model.condition(batch.cuisine)).set_logits
    return multilabel_loss(logits, multi_hot(targets.clamp_min(0), targets != IGNORE, logits.shape[-1]), o.ls)
