"""Objectives: turn a collated batch into model inputs + targets and named losses (DESIGN.md).

Which model runs which objective and which set loss ("What runs with what"):

==================  ===========================================  ====================================
model               objectives                                   loss of the ``set`` objective
==================  ===========================================  ====================================
decoder             clm, cls, coherence, set                     standard, set-ar, min-perm, pooled
set-transformer     mlm, rtd, cls, coherence, set (slot decoder)  hungarian, pooled
deep-sets           mlm (one mask), cls, set                     multilabel
==================  ===========================================  ====================================

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

import numpy as np
import torch
import torch.nn.functional as F

from recipeset.config import RunConfig
from recipeset.data.collate import Batch
from recipeset.data.vocab import NUM_SPECIALS
from recipeset.errors import RecipesetError
from recipeset.models.base import ModelOutput, RecipeModel
from recipeset.objectives.losses import (
    IGNORE,
    hungarian_loss,
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

COMPATIBLE: dict[str, dict[str, tuple[str, ...]]] = {
    "decoder": {"objectives": ("clm", "cls", "coherence", "set"),
                "losses": ("standard", "set-ar", "min-perm", "pooled")},
    "set-transformer": {"objectives": ("mlm", "rtd", "cls", "coherence", "set"),
                        "losses": ("hungarian", "pooled")},
    "deep-sets": {"objectives": ("mlm", "cls", "set"), "losses": ("multilabel",)},
}
TASK_OBJECTIVES = ("cls",)
# Objectives that make a model generate; at least one is needed for completion metrics.
LM_OBJECTIVES = ("clm", "mlm", "set")


def default_objectives(model: str, loss: str, n_slots: int = 0) -> dict[str, float]:
    """The natural objective of a model/loss pair when the config leaves the default ``{"clm": 1}``."""
    if model == "decoder":
        return {"clm": 1.0} if loss == "standard" else {"set": 1.0}
    if model == "set-transformer":
        return {"set": 1.0} if loss in ("hungarian", "pooled") or n_slots > 0 else {"mlm": 1.0}
    return {"set": 1.0} if loss == "multilabel" else {"mlm": 1.0}


def resolve_objectives(cfg: RunConfig) -> dict[str, float]:
    """The objective weights of a run, checked against the model and loss (one clear error otherwise)."""
    model, loss = cfg.model.name, cfg.loss.name
    weights = dict(cfg.objectives.weights)
    if weights == {"clm": 1.0} and (model != "decoder" or loss != "standard"):
        weights = default_objectives(model, loss, int(cfg.model.params.get("n_slots", 0)))
    allowed = COMPATIBLE[model]
    for name, w in weights.items():
        if name not in allowed["objectives"]:
            raise RecipesetError(f"objective {name!r} does not run with model {model!r}; "
                                 f"valid: {', '.join(allowed['objectives'])} (see README, 'What runs with what')")
        if w < 0:
            raise RecipesetError(f"objectives.weights.{name} = {w}: weights must be >= 0")
    uses_loss = "set" in weights
    if uses_loss and loss not in allowed["losses"]:
        raise RecipesetError(f"loss {loss!r} does not run with model {model!r}; "
                             f"valid: {', '.join(allowed['losses']) or 'none'}")
    if model == "deep-sets" and uses_loss and "mlm" in weights:
        raise RecipesetError("deep-sets trains one head: 'mlm' (a softmax over the one missing ingredient) or "
                             "'set' (multilabel: a sigmoid per ingredient), not both")
    if not uses_loss and loss != "standard":
        raise RecipesetError(f"loss {loss!r} is only used by the 'set' objective; add --objective set "
                             f"(objectives now: {', '.join(weights)})")
    if cfg.objectives.alpha is not None:
        a = cfg.objectives.alpha
        if not 0.0 <= a <= 1.0:
            raise RecipesetError(f"objectives.alpha = {a}: must be in [0, 1]")
        if "cls" not in weights or not set(weights) - {"cls"}:
            raise RecipesetError("objectives.alpha needs the task objective 'cls' and at least one LM objective")
    return weights


def model_heads(cfg: RunConfig, weights: dict[str, float]) -> dict[str, object]:
    """Model config fields the objectives need (heads), merged under the user's own model params."""
    heads: dict[str, object] = {}
    if "cls" in weights:
        heads["cuisine_head"] = True
    if "coherence" in weights:
        heads["coherence_head"] = True
    if "rtd" in weights:
        heads["rtd_head"] = True
    if cfg.model.name == "deep-sets" and "set" in weights:
        heads["multilabel"] = True
    return heads


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


def _split_query(batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


class Objectives:
    """Computes the weighted losses of one batch: ``objectives(model, batch, generator) -> dict``.

    The returned dict has ``loss/<objective>`` for every objective, ``loss/total`` (what is optimised) and,
    where defined, ``ppl/<objective>`` (per-ingredient perplexity).
    """

    def __init__(self, cfg: RunConfig, weights: dict[str, float] | None = None,
                 cooccurrence: torch.Tensor | None = None, class_weights: torch.Tensor | None = None) -> None:
        self.cfg = cfg
        self.weights = weights if weights is not None else resolve_objectives(cfg)
        if class_weights is None and cfg.objectives.cls_class_weight != "none" and "cls" in self.weights:
            raise RecipesetError(f"objectives.cls_class_weight = {cfg.objectives.cls_class_weight!r} needs the "
                                 "training labels: pass class_weights=cuisine_class_weights(...)")
        self.class_weights = class_weights
        self.loss = cfg.loss
        self.obj = cfg.objectives
        self.ls = cfg.loss.label_smoothing
        self.cooccurrence = cooccurrence
        self.matcher = HungarianMatcher(null_weight=cfg.loss.null_weight) if cfg.loss.name == "hungarian" else None

    # ---- the clean forward pass, shared by the objectives that need it ---------------------------------
    @staticmethod
    def _decoder_inputs(model: RecipeModel, tokens: torch.Tensor, mask: torch.Tensor):
        return model.with_bos(tokens, mask)  # type: ignore[attr-defined]

    def _clean(self, model: RecipeModel, batch: Batch, cache: dict) -> ModelOutput:
        if "clean" not in cache:
            if model.model_type == "decoder":
                inp, m = self._decoder_inputs(model, batch.tokens, batch.mask)
                cache["clean"] = model(inp, m)
            else:
                cache["clean"] = model(batch.tokens, batch.mask)
        return cache["clean"]

    # ---- objectives --------------------------------------------------------------------------------------
    def clm(self, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
        out = self._clean(model, batch, cache)
        return standard_loss(out.logits, next_token_targets(batch.tokens, batch.mask), self.ls)

    def set(self, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
        name = self.loss.name
        if model.model_type == "decoder":
            tokens, mask = batch.tokens, batch.mask
            if name == "standard":
                return self.clm(model, batch, gen, cache)
            if name == "set-ar":
                return set_ar_loss(self._clean(model, batch, cache).logits, tokens, mask)
            if name == "min-perm":
                def nll(perm: torch.Tensor) -> torch.Tensor:
                    inp, m = self._decoder_inputs(model, perm, mask)
                    return standard_loss(model(inp, m).logits, next_token_targets(perm, mask), self.ls,
                                         reduction="none")
                return min_perm_loss(nll, tokens, mask, k=self.loss.k, generator=gen)
            if name == "pooled":
                logits = self._clean(model, batch, cache).logits
                steps = torch.arange(logits.shape[1], device=tokens.device)[None, :] <= mask.sum(1)[:, None]
                return pooled_loss(logits, self._multi_hot(tokens, mask, logits.shape[-1]), steps,
                                   stop_weight=self.loss.stop_weight,
                                   cardinality_weight=self.loss.cardinality_weight, stop_targets="position")
        if model.model_type == "deep-sets":  # multilabel
            q_tokens, q_mask, targets = _split_query(batch, gen)
            out = model(q_tokens, q_mask, batch.cuisine if model.config.cuisine_condition else None)
            tmask = targets != IGNORE
            return multilabel_loss(out.set_logits, self._multi_hot(targets.clamp_min(0), tmask,
                                                                   out.set_logits.shape[-1]), self.ls)
        # set-transformer slot decoder
        if not getattr(model, "has_slots", False):
            raise RecipesetError("the 'set' objective on a set-transformer needs the slot decoder: set model.n_slots")
        q_tokens, q_mask, targets = _split_query(batch, gen)
        K = model.config.n_slots
        if int((targets != IGNORE).sum(1).max()) > K:
            raise RecipesetError(f"model.n_slots={K} is smaller than the largest recipe in the batch "
                                 f"({int((targets != IGNORE).sum(1).max())}); raise model.n_slots")
        out = model(q_tokens, q_mask, batch.cuisine if model.config.cuisine_condition else None)
        if name == "hungarian":
            return hungarian_loss(out.slot_logits, targets, null_weight=self.loss.null_weight,
                                  label_smoothing=self.ls, truncate_logp=self.loss.truncate_logp,
                                  matcher=self.matcher)
        tmask = targets != IGNORE
        V = out.slot_logits.shape[-1]
        steps = torch.ones(out.slot_logits.shape[:2], dtype=torch.bool, device=targets.device)
        return pooled_loss(out.slot_logits, self._multi_hot(targets.clamp_min(0), tmask, V), steps,
                           stop_id=7, stop_weight=self.loss.stop_weight,
                           cardinality_weight=self.loss.cardinality_weight)

    def mlm(self, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
        V = len(model.vocab)
        if model.model_type == "deep-sets":
            # one mask: drop one random ingredient per set, predict it from the rest
            tokens, mask = batch.tokens, batch.mask
            n = mask.sum(1).clamp_min(1)
            r = (torch.rand(n.shape, generator=gen, device=tokens.device) * n).floor().long()
            pos = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
            held = pos == r[:, None]
            target = tokens.gather(1, r[:, None]).squeeze(1).masked_fill(mask.sum(1) == 0, IGNORE)
            out = model(tokens, mask & ~held)
            return F.cross_entropy(out.set_logits.float(), target, ignore_index=IGNORE, label_smoothing=self.ls)
        mb = mlm_mask(batch.tokens, batch.mask, V, prob=self.obj.mlm_prob, generator=gen,
                      null_prob=self.obj.null_prob)
        out = model(mb.tokens, mb.mask)
        return mlm_set_loss(out.logits, mb.labels, mb.masked_with_token, self.ls)

    def rtd(self, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
        tokens, labels = rtd_corrupt(batch.tokens, batch.mask, len(model.vocab), prob=self.obj.rtd_prob,
                                     generator=gen, cooccurrence=self.cooccurrence)
        out = model(tokens, batch.mask)
        return _bce(out.rtd_logits[batch.mask], labels[batch.mask], self.ls)

    def coherence(self, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
        tokens, mask, segments, labels = coherence_pairs(batch.tokens, batch.mask, generator=gen)
        if model.model_type == "decoder":
            tokens, mask2 = self._decoder_inputs(model, tokens, mask)
            segments = torch.cat([segments[:, :1].new_zeros(segments.shape[0], 1), segments], 1)
            out = model(tokens, mask2, segments=segments)
        else:
            out = model(tokens, mask, segments=segments)
        return _bce(out.coherence_logits, labels, self.ls)

    def cls(self, model: RecipeModel, batch: Batch, gen: torch.Generator, cache: dict) -> torch.Tensor:
        out = self._clean(model, batch, cache)
        pooled = out.pooled.detach() if self.obj.detach else out.pooled
        logits = model.cuisine_head(pooled)  # type: ignore[attr-defined]
        labels = batch.cuisine
        if bool((labels >= 0).sum() == 0):
            return logits.sum() * 0.0  # no labelled recipe in this batch
        w = None if self.class_weights is None else self.class_weights.to(logits.device, torch.float32)
        return F.cross_entropy(logits.float(), labels, weight=w, ignore_index=-1, label_smoothing=self.ls)

    @staticmethod
    def _multi_hot(tokens: torch.Tensor, mask: torch.Tensor, V: int) -> torch.Tensor:
        hot = torch.zeros(tokens.shape[0], V, device=tokens.device)
        hot.scatter_(1, torch.where(mask, tokens, 0), 1.0)
        hot[:, :NUM_SPECIALS] = 0.0
        return hot

    # ---- combination -------------------------------------------------------------------------------------
    def __call__(self, model: RecipeModel, batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        cache: dict = {}
        losses: dict[str, torch.Tensor] = {}
        for name in self.weights:
            fn: Callable = getattr(self, name)
            losses[name] = fn(model, batch, generator, cache)
        alpha = self.obj.alpha
        if alpha is None:
            total = sum(self.weights[k] * v for k, v in losses.items())
        else:
            task = sum(self.weights[k] * losses[k] for k in losses if k in TASK_OBJECTIVES)
            lm = sum(self.weights[k] * losses[k] for k in losses if k not in TASK_OBJECTIVES)
            total = alpha * task + (1 - alpha) * lm
        out = {f"loss/{k}": v for k, v in losses.items()}
        out["loss/total"] = total
        for k in ("clm", "mlm"):
            if k in losses:
                out[f"ppl/{k}"] = losses[k].detach().exp()
        if "set" in losses and self.loss.name in ("standard", "set-ar", "min-perm"):
            out["ppl/set"] = losses["set"].detach().exp()
        return out
