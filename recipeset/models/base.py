"""What every recipeset model shares: the output dataclass, the pluggable input embedding, and the string API.

A model implements the tensor-level scorer protocol (``completion_scores_ids``, ``complete_ids``,
``classify_ids``); :class:`RecipeModel` turns it into the string API of DESIGN.md once, for all models::

    model.completion_scores([["tomato", "basil"]])   # [B, len(vocab)] scores, -inf on specials/query
    model.complete([["tomato"]], max_new=10)         # [["mozzarella", "olive_oil", ...]]
    model.top_completions([["tomato"]], top=3)       # [[("basil", 0.31), ("garlic", 0.12), ("onion", 0.08)]]
    model.classify([["soy_sauce", "ginger"]])        # [B, n_cuisines] probabilities
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recipeset.data.vocab import NUM_SPECIALS, PAD, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.fields import check_fields

EMBEDDINGS = ("learned", "features")


@dataclass
class ModelOutput:
    """Everything a forward pass produces; a field is None when the model lacks that head.

    logits:           ``[B, T, V]`` decoder: next-ingredient logits (position t predicts token t+1);
                      set-transformer: per-element vocabulary (MLM) logits
    hidden:           ``[B, T, D]`` final per-position states
    pooled:           ``[B, D]`` one vector per set
    cuisine_logits:   ``[B, C]``
    coherence_logits: ``[B]``
    rtd_logits:       ``[B, T]`` per-element "replaced" logit
    slot_logits:      ``[B, K, V]`` parallel set prediction; NULL (id 7) is ∅
    set_logits:       ``[B, V]`` deep-sets: missing-ingredient logits
    cuisine_features: ``[B, D']`` what the cuisine head reads when it is not ``pooled``
    """

    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    cuisine_logits: torch.Tensor | None = None
    coherence_logits: torch.Tensor | None = None
    rtd_logits: torch.Tensor | None = None
    slot_logits: torch.Tensor | None = None
    set_logits: torch.Tensor | None = None
    cuisine_features: torch.Tensor | None = None

    def per_position(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ModelOutput:
        """The per-position outputs (``logits``, ``hidden``, ``rtd_logits``) mapped by ``fn`` (e.g. packed rows put
        back at each set's positions); the per-set ones are left out."""
        return ModelOutput(**{name: fn(value) for name in ("logits", "hidden", "rtd_logits")
                              if (value := getattr(self, name)) is not None})


# ---- small shared pieces ------------------------------------------------------------------------------
def special_bias(vocab_size: int, allow: Sequence[int] = ()) -> torch.Tensor:
    """``[V]`` additive bias: 0 on ingredients and on the ``allow``-ed specials, -inf on other specials."""
    bias = torch.zeros(vocab_size)
    bias[:NUM_SPECIALS] = float("-inf")
    for i in allow:
        bias[i] = 0.0
    return bias


def mask_ids(scores: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set ``scores[b, tokens[b, t]]`` to -inf for every real position (``mask``); ``scores`` is ``[B, V]``.

    Padded positions point at [PAD], a special, which callers exclude anyway.
    """
    idx = torch.where(mask, tokens, torch.full_like(tokens, PAD))
    return scores.scatter(1, idx, float("-inf"))


def pad_ids(sets: Sequence[Sequence[int]], device: torch.device | str | None = None,
            min_len: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad lists of ids with [PAD]: ``tokens [B, T]`` int64 and ``mask [B, T]`` (True on real ids).

    ``T = max(max length, min_len)``.
    """
    lengths = torch.tensor([len(s) for s in sets], dtype=torch.long)
    T = max(int(lengths.max()) if len(sets) else 0, min_len)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    tokens = torch.full((len(sets), T), PAD, dtype=torch.long)
    tokens[mask] = torch.tensor([i for s in sets for i in s], dtype=torch.long)
    return tokens.to(device), mask.to(device)


def append_at_end(tokens: torch.Tensor, mask: torch.Tensor, new: torch.Tensor,
                  active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Write ``new [B]`` right after each row's last real position (widening by one column if needed).

    Rows where ``active`` is False are left unchanged. Returns new ``(tokens, mask)``; assumes right padding.
    """
    B, T = tokens.shape
    lengths = mask.sum(1)
    if active is None:
        active = torch.ones(B, dtype=torch.bool, device=tokens.device)
    if bool((lengths[active] >= T).any()):
        tokens = torch.cat([tokens, tokens.new_full((B, 1), PAD)], dim=1)
        mask = torch.cat([mask, mask.new_zeros(B, 1)], dim=1)
    rows = torch.nonzero(active).squeeze(1)
    tokens = tokens.clone()
    mask = mask.clone()
    tokens[rows, lengths[rows]] = new[rows]
    mask[rows, lengths[rows]] = True
    return tokens, mask


def sample_from_logits(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, V]`` logits (-inf = forbidden) → ``[B]`` ids: argmax when ``temperature <= 0``, otherwise a draw
    from softmax(logits / temperature) restricted to the ``top_k`` best. Never draws a -inf id."""
    if temperature is None or temperature <= 0:
        return logits.argmax(-1)
    # a row with no allowed id at all (a finished set) would be NaN after softmax: draw from a dummy row
    dead = ~torch.isfinite(logits).any(-1)
    logits = torch.where(dead[:, None], torch.zeros_like(logits), logits) / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).masked_fill(dead, PAD)


def safe_log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log-softmax where a row that is -inf everywhere (nothing left to predict) stays -inf, not NaN."""
    out = F.log_softmax(logits, dim=dim)
    return out.masked_fill(torch.isnan(out), float("-inf"))


def threshold_step(logp: torch.Tensor, active: torch.Tensor, threshold: float, temperature: float,
                   top_k: int | None, generator: torch.Generator | None, go_on: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of one-at-a-time completion that stops on a probability: from ``logp [B, V]`` the choice ``[B]``
    (greedy or sampled), the probability the stop rule tests ``[B]`` — the best candidate's, or ``go_on`` when
    given (a learned stop: 1 − p(stop)) — and the rows still going on (``active`` and that probability ≥
    ``threshold``, a candidate left)."""
    best = logp.amax(1)
    tested = best.exp() if go_on is None else go_on
    active = active & (tested >= threshold) & torch.isfinite(best)
    return sample_from_logits(logp, temperature, top_k, generator), tested, active


def threshold_completion(next_logp: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokens: torch.Tensor,
                         mask: torch.Tensor, max_new: int, threshold: float, temperature: float = 0.0,
                         top_k: int | None = None, generator: torch.Generator | None = None,
                         return_probs: bool = False):
    """One-at-a-time completion of sets ``tokens/mask [B, T]`` from ``next_logp(tokens, mask) -> [B, V]`` (the
    distribution over the grown sets): add the best (or a sampled) candidate while the best one's probability is
    ≥ ``threshold``, at most ``max_new``; the generated ids per set, with ``return_probs`` also the probability
    each addition's stop rule tested."""
    B = tokens.shape[0]
    generated: list[list[int]] = [[] for _ in range(B)]
    probs: list[list[float]] = [[] for _ in range(B)]
    active = torch.ones(B, dtype=torch.bool, device=tokens.device)
    for _ in range(max_new):
        choice, best_p, active = threshold_step(next_logp(tokens, mask), active, threshold, temperature, top_k,
                                                generator)
        if not bool(active.any()):
            break
        record_choices(generated, probs, torch.nonzero(active).squeeze(1), choice, best_p)
        tokens, mask = append_at_end(tokens, mask, choice, active)
    return (generated, probs) if return_probs else generated


def record_choices(generated: list[list[int]], probs: list[list[float]], rows: torch.Tensor, choice: torch.Tensor,
                   best_p: torch.Tensor) -> None:
    """Append each of ``rows``' choice and its stop probability to the per-row lists."""
    for b in rows.tolist():
        generated[b].append(int(choice[b]))
        probs[b].append(float(best_p[b]))


def check_sampling(temperature: float, top_k: int | None) -> None:
    if temperature is None or temperature < 0:
        raise RecipesetError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise RecipesetError(f"top_k must be >= 1 or None, got {top_k}")


class InputEmbedding(nn.Module):
    """Token ids → ``[.., D]`` vectors: a learned table, or fixed ingredient features projected to D.

    ``kind="features"``: ``features [V, F]`` (e.g. flavor-compound profiles) is a buffer (saved with the
    weights, never trained) projected by a Linear; an ingredient seen rarely or never still gets a meaningful
    input. Specials have no features, so they always get their own learned vectors. ``feature_bias`` adds a
    learned per-id table on top of the projection (it lets frequent ingredients move away from their features).
    """

    def __init__(self, vocab_size: int, d_model: int, kind: str = "learned",
                 features: torch.Tensor | None = None, feature_bias: bool = False) -> None:
        super().__init__()
        self.kind = kind
        if kind == "learned":
            self.table = nn.Embedding(vocab_size, d_model)
        elif kind == "features":
            if features is None or features.ndim != 2 or features.shape[0] != vocab_size:
                shape = None if features is None else tuple(features.shape)
                raise RecipesetError(f"embedding='features' needs input_features of shape [{vocab_size}, F], "
                                     f"got {shape}")
            self.register_buffer("features", features.detach().float().clone())
            self.proj = nn.Linear(features.shape[1], d_model)
            self.specials = nn.Embedding(NUM_SPECIALS, d_model)
            self.bias = nn.Embedding(vocab_size, d_model) if feature_bias else None
        else:
            raise RecipesetError(f"embedding must be one of {EMBEDDINGS}, got {kind!r}")

    @property
    def tied_weight(self) -> nn.Parameter | None:
        """The ``[V, D]`` table an output head may share (only for a learned table)."""
        return self.table.weight if self.kind == "learned" else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.kind == "learned":
            return self.table(ids)
        x = self.proj(self.features[ids])
        is_special = ids < NUM_SPECIALS
        x = torch.where(is_special[..., None], self.specials(ids.clamp(max=NUM_SPECIALS - 1)), x)
        if self.bias is not None:
            x = x + self.bias(ids)
        return x


def resolve_sizes(config, vocab: Vocabulary, input_features: torch.Tensor | None):
    """Fill ``vocab_size``/``n_cuisines``/``n_features`` (0 = "from the vocabulary/features") and check them."""
    changes = {}
    if config.vocab_size in (0, None):
        changes["vocab_size"] = len(vocab)
    elif config.vocab_size != len(vocab):
        raise RecipesetError(f"config vocab_size={config.vocab_size} but the vocabulary has {len(vocab)} ids")
    if config.n_cuisines in (0, None):
        changes["n_cuisines"] = vocab.num_cuisines
    elif config.n_cuisines != vocab.num_cuisines:
        raise RecipesetError(f"config n_cuisines={config.n_cuisines} but the vocabulary has "
                             f"{vocab.num_cuisines} cuisines")
    if config.embedding == "features" and input_features is not None:
        changes["n_features"] = int(input_features.shape[1])
    config = replace(config, **changes)
    check_config(config)
    if (config.cuisine_head or config.cuisine_condition) and config.n_cuisines == 0:
        raise RecipesetError("model: cuisine_head/cuisine_condition need a vocabulary with cuisine labels")
    return config


def check_config(config) -> None:
    """Check a model config: every field against its range / valid names (``recipeset.fields.spec``), then
    what spans fields."""
    check_fields(config, "model", "")
    n_heads = getattr(config, "n_heads", 1)
    if config.d_model % n_heads:
        raise RecipesetError(f"model.d_model={config.d_model} must be divisible by n_heads={n_heads}")
    if getattr(config, "cuisine_condition", False) and getattr(config, "cuisine_head", False):
        raise RecipesetError("model: cuisine_condition and cuisine_head are exclusive "
                             "(a run never both conditions on the cuisine and predicts it)")


def placeholder_features(config) -> torch.Tensor | None:
    """Zero ``[V, F]`` features so a saved features model can be rebuilt before its buffer is loaded."""
    if config.embedding == "features" and config.n_features > 0:
        return torch.zeros(config.vocab_size, config.n_features)
    return None


def offset_probs(probs: torch.Tensor, offsets: Sequence[float]) -> torch.Tensor:
    """Class probabilities ``[B, C]`` re-weighted by per-class log-offsets (a tuned decision rule, e.g. a prior
    correction): ``softmax(log p + b)``; unchanged when ``offsets`` is empty."""
    if not len(offsets):
        return probs
    b = torch.as_tensor(list(offsets), dtype=probs.dtype, device=probs.device)
    if b.shape[0] != probs.shape[1]:
        raise RecipesetError(f"cuisine_offsets has {b.shape[0]} values for {probs.shape[1]} cuisines")
    return torch.softmax(torch.log(probs.clamp_min(1e-30)) + b, dim=1)


def init_weights(module: nn.Module) -> None:
    """GPT-2 initialisation of one module: N(0, 0.02) weights for Linear and Embedding, zero Linear biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def inference(method):
    """Run ``method`` in eval mode under ``torch.inference_mode()``, restoring the training flag after."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return method(self, *args, **kwargs)
        finally:
            self.train(was_training)

    return wrapper


# ---- the base model -----------------------------------------------------------------------------------
class RecipeModel(nn.Module):
    """Base of all recipeset models: vocabulary + config, the string API on top of the ``*_ids`` methods.

    A model class declares what it is to the rest of the toolkit (and is registered with
    :func:`recipeset.registry.register_model`): ``model_type`` (its name), ``config_class`` (a dataclass whose
    fields may carry ranges, :func:`recipeset.fields.spec`), the ``objectives`` it trains with, its ``set_head``
    (which set losses train it: ``sequence``, ``slots`` or ``pooled``), how the ``mlm`` objective hides and
    predicts (``masked_prediction``), its ``default_objective`` and the completion ``scoring_modes`` reported.
    It implements ``forward`` (→ :class:`ModelOutput`), ``completion_scores_ids`` and ``complete_ids``; it may
    override :meth:`feed` (how a batch in its training order is fed) and :meth:`configure` (config fields that
    depend on the run: its order, the largest set, the objectives).
    """

    model_type: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None
    objectives: ClassVar[tuple[str, ...]] = ()
    #: how it predicts a set: "sequence" (next-ingredient steps), "slots" (K parallel distributions) or
    #: "pooled" (one ``set_logits [B, V]``); the set losses registered for that head train it
    set_head: ClassVar[str] = ""
    #: the mlm objective: "elements" (BERT masking, per-element ``logits``) or "held-out" (one ingredient left
    #: out, predicted by ``set_logits``)
    masked_prediction: ClassVar[str] = "elements"
    #: trained when a config leaves the objectives at their default and names no set loss
    default_objective: ClassVar[str] = ""
    #: the completion scoring modes the evaluation reports for this model ("joint" costs a pass per candidate)
    scoring_modes: ClassVar[tuple[str, ...]] = ("next",)
    #: ``complete_ids(..., return_probs=True)`` also returns, for each added ingredient, the probability its stop
    #: rule compared with ``config.stop_threshold``; greedy, a higher threshold's completion is then the prefix
    #: whose probabilities all reach it, so the stop-threshold tuner scores every threshold from one pass
    returns_stop_probs: ClassVar[bool] = False
    #: one-line descriptions for the README's "what runs with what" table
    about: ClassVar[dict[str, str]] = {}

    def __init__(self, config, vocab: Vocabulary) -> None:
        super().__init__()
        self.config = config
        self.vocab = vocab

    # ---- what the class declares to the registry ---------------------------------------------------
    @classmethod
    def natural_objectives(cls, set_loss: bool, params: Mapping[str, Any]) -> dict[str, float]:
        """The objective a run trains when its config leaves the objectives at their default: ``set`` when
        the config names a set loss, else the model's ``default_objective``."""
        return {"set": 1.0} if set_loss else {cls.default_objective: 1.0}

    @classmethod
    def check_objectives(cls, weights: Mapping[str, float]) -> None:
        """Raise RecipesetError for a combination of objectives the model cannot train together."""

    @classmethod
    def check_config(cls, config) -> None:
        """Raise RecipesetError for a config the model cannot be built from (beyond its fields' ranges)."""
        check_config(config)

    @classmethod
    def packing_refusal(cls, params: Mapping[str, Any]) -> str | None:
        """Why a model of config ``params`` cannot run packed rows (several sets a row, ``forward(...,
        sequence_ids=ids)``, see :mod:`recipeset.data.packing`), in a few words; None when it can."""
        return f"model {cls.model_type!r} does not run on packed rows"

    @classmethod
    def configure(cls, params: dict[str, Any], objectives: Mapping[str, float], order: str,
                  max_set: int) -> dict[str, Any]:
        """Config fields that depend on the run (``order``: the data order; ``max_set``: the largest set of the
        data), filled in where the user's ``params`` leave them; returns the params."""
        return params

    def feed(self, tokens: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """How sets ``[B, T]`` already in the training order are fed to ``forward`` (a decoder prepends [BOS]);
        returns ``(tokens, mask, segments)``."""
        return tokens, mask, segments

    def condition(self, cuisine: torch.Tensor) -> torch.Tensor | None:
        """A batch's cuisine ids for ``forward`` when the model is cuisine-conditioned, else None."""
        return cuisine if self.accepts_cuisine else None

    def held_out_logits(self, tokens: torch.Tensor, mask: torch.Tensor, cuisine: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """``set_logits`` of every leave-one-out query at once: row ``i`` of ``[N, V]`` (N = real positions, in
        ``mask`` order) scores the set without its element ``i`` (the ``mlm`` objective of a ``held-out`` model
        with ``objectives.held_out = "all"``). This generic version runs each query as its own row; a model
        whose pooling allows it (Deep Sets: one sum minus each element) overrides it."""
        where = torch.nonzero(mask)
        rows = where[:, 0]
        query_mask = mask[rows].clone()
        query_mask[torch.arange(len(rows), device=mask.device), where[:, 1]] = False
        return self(tokens[rows], query_mask, None if cuisine is None else cuisine[rows]).set_logits

    # ---- properties -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def can_classify(self) -> bool:
        return bool(getattr(self.config, "cuisine_head", False)) and self.config.n_cuisines > 0

    @property
    def accepts_cuisine(self) -> bool:
        """True when the model can be conditioned on a cuisine (``cuisine=`` in completion)."""
        return bool(getattr(self.config, "cuisine_condition", False))

    @property
    def tunes_stop_threshold(self) -> bool:
        """True when ``complete`` stops on ``config.stop_threshold``, which a run tunes on validation."""
        return hasattr(self.config, "stop_threshold")

    def stop_budget(self, max_new: int) -> int:
        """``max_new`` capped by ``config.stop_size``, the size rule of set completion tuned on validation with the
        threshold (:func:`recipeset.protocol.tune_stop_rule`); None: no cap."""
        size = getattr(self.config, "stop_size", None)
        return max_new if size is None else min(max_new, int(size))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- helpers for subclasses -------------------------------------------------------------------
    def _check_cuisine(self, cuisine: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Validate a ``[B]`` cuisine tensor (-1 = unknown) for a cuisine-conditioned model."""
        if cuisine is None:
            return None
        if not self.accepts_cuisine:
            raise RecipesetError(f"this {self.model_type} model was not trained with cuisine conditioning; "
                                 "drop the cuisine argument")
        cuisine = torch.as_tensor(cuisine, dtype=torch.long, device=self.device).reshape(-1)
        if cuisine.shape[0] == 1 and batch != 1:
            cuisine = cuisine.expand(batch)
        if cuisine.shape[0] != batch or bool(((cuisine < -1) | (cuisine >= self.config.n_cuisines)).any()):
            raise RecipesetError(f"cuisine must be {batch} ids in [-1, {self.config.n_cuisines})")
        return cuisine

    def _cuisine_index(self, cuisine: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """Map cuisine ids to rows of a conditioning table with an extra last row for "unknown" (-1/None)."""
        unknown = self.config.n_cuisines
        if cuisine is None:
            return torch.full((batch,), unknown, dtype=torch.long, device=device)
        return torch.where(cuisine < 0, torch.full_like(cuisine, unknown), cuisine)

    def _head_logits(self, x: torch.Tensor, head: nn.Linear | None, table: nn.Parameter | None) -> torch.Tensor:
        """Vocabulary logits from ``x [.., D]`` with a tied table when there is one."""
        return F.linear(x, table) if head is None else head(x)

    # ---- scorer protocol: classification is shared ------------------------------------------------
    def _classify_inputs(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's input for classifying a set (the decoder prepends [BOS])."""
        return tokens, mask

    @inference
    def classify_ids(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cuisine probabilities ``[B, n_cuisines]`` for sets ``tokens/mask [B, T]``."""
        if not self.can_classify:
            raise RecipesetError(f"this {self.model_type} model has no cuisine head; train it with the cls "
                                 "objective to classify")
        tokens, mask = self._classify_inputs(tokens.to(self.device), mask.to(self.device))
        return offset_probs(F.softmax(self(tokens, mask).cuisine_logits.float(), dim=-1),
                            self.config.cuisine_offsets)

    def set_cuisine_offsets(self, offsets: Sequence[float]) -> None:
        """Set the decision rule of :meth:`classify_ids` (per-cuisine log-offsets; saved with the config)."""
        self.config.cuisine_offsets = tuple(float(b) for b in offsets)

    # ---- the string API ---------------------------------------------------------------------------
    def encode_sets(self, sets: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ingredient names → padded ``(tokens [B, T], mask [B, T])`` on the model's device.

        An unknown name raises RecipesetError suggesting close names; a repeated name counts once.
        """
        if isinstance(sets, str) or any(isinstance(s, str) for s in sets):
            raise RecipesetError("expected a list of ingredient lists, e.g. [['tomato', 'basil']]")
        ids = [list(dict.fromkeys(self.vocab.encode(list(s)))) for s in sets]
        return pad_ids(ids, self.device)

    def _encode_cuisine(self, cuisine: str | Sequence[str | None] | None, batch: int) -> torch.Tensor | None:
        if cuisine is None:
            return None
        names = [cuisine] * batch if isinstance(cuisine, str) else list(cuisine)
        if len(names) != batch:
            raise RecipesetError(f"got {len(names)} cuisines for {batch} sets")
        ids = [-1 if n is None else self.vocab.cuisine_id(n) for n in names]
        return self._check_cuisine(torch.tensor(ids, dtype=torch.long), batch)

    def completion_scores(self, partial_sets: Sequence[Sequence[str]], mode: str = "next",
                          cuisine: str | Sequence[str | None] | None = None) -> torch.Tensor:
        """Score ``[B, len(vocab)]`` of each vocabulary id being the missing ingredient of each partial set.

        Log-probabilities where the model has them; -inf on specials and on the query's own ingredients.
        """
        tokens, mask = self.encode_sets(partial_sets)
        return self.completion_scores_ids(tokens, mask, mode=mode,
                                          cuisine=self._encode_cuisine(cuisine, len(partial_sets)))

    def top_completions(self, partial_sets: Sequence[Sequence[str]], top: int = 10, mode: str = "next",
                        cuisine: str | Sequence[str | None] | None = None) -> list[list[tuple[str, float]]]:
        """The ``top`` best candidates for the missing ingredient of each partial set, best first, as
        ``(name, probability)`` pairs (softmax of :meth:`completion_scores` over the allowed candidates; fewer
        than ``top`` when fewer are allowed)."""
        if top < 1:
            raise RecipesetError(f"top must be at least 1, got {top}")
        scores = self.completion_scores(partial_sets, mode=mode, cuisine=cuisine).float()
        probs = torch.softmax(scores, -1)
        values, best = scores.topk(min(top, scores.shape[-1]), dim=-1)
        return [[(self.vocab.token(i), float(p[i])) for i, v in zip(row.tolist(), vals.tolist(), strict=True)
                 if v > -math.inf] for row, vals, p in zip(best, values, probs, strict=True)]

    def complete(self, partial_sets: Sequence[Sequence[str]], max_new: int = 10, temperature: float = 0.0,
                 top_k: int | None = None, cuisine: str | Sequence[str | None] | None = None,
                 generator: torch.Generator | None = None) -> list[list[str]]:
        """Generate the rest of each partial set (names; no repeats, no query ingredients).

        ``temperature=0`` is greedy and deterministic; otherwise sample (optionally among the ``top_k``
        best) with ``generator``.
        """
        check_sampling(temperature, top_k)
        tokens, mask = self.encode_sets(partial_sets)
        out = self.complete_ids(tokens, mask, max_new=max_new,
                                cuisine=self._encode_cuisine(cuisine, len(partial_sets)),
                                temperature=temperature, top_k=top_k, generator=generator)
        return [self.vocab.decode(ids) for ids in out]

    def classify(self, sets: Sequence[Sequence[str]]) -> torch.Tensor:
        """Cuisine probabilities ``[B, n_cuisines]`` (columns follow ``vocab.cuisines``)."""
        tokens, mask = self.encode_sets(sets)
        return self.classify_ids(tokens, mask)

