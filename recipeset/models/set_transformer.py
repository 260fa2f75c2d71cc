"""SetTransformer: a permutation-equivariant encoder (SAB or ISAB blocks, no positions) with set heads.

Heads (each optional but the MLM head):

* per-element vocabulary logits (MLM; tied to the input table when it is learned), specials -inf but [NULL]:
  a [MASK] whose target is [NULL] means "nothing is missing", which is the model's learned stop;
* per-element replaced-token logit (RTD);
* a pooled PMA(1) vector → cuisine head and coherence head;
* a slot decoder: PMA with K learned seeds → SAB blocks → K distributions over ingredients ∪ {∅ = [NULL]},
  trained with the Hungarian (or pooled) loss; conditioned on a partial set by encoding the query.

Cuisine conditioning adds a learned cuisine vector to every element of the input and to the slot seeds
(an extra "unknown" row serves cuisine -1); it is never combined with the cuisine head.

Training may pack several sets a row (``train.pack``, ``forward(..., sequence_ids=...)``, the element MLM and RTD):
each element then attends to its own set only (:mod:`recipeset.data.packing`) and only the per-element outputs
are computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recipeset.data.vocab import MASK, NULL, NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.fields import spec
from recipeset.models.attention import ISAB, PMA, SAB
from recipeset.models.base import (
    EMBEDDINGS,
    InputEmbedding,
    ModelOutput,
    RecipeModel,
    append_at_end,
    inference,
    init_weights,
    mask_ids,
    placeholder_features,
    resolve_sizes,
    sample_from_logits,
    special_bias,
)
from recipeset.registry import register_model

BLOCKS = ("sab", "isab")
MAX_AUTO_SLOTS = 64  # the largest K set from the data alone (flavornet's largest recipe: 32)


@dataclass
class SetTransformerConfig:
    vocab_size: int = spec(0, ge=0)  # len(vocab), specials included; 0 = take it from the vocabulary
    n_cuisines: int = spec(0, ge=0)  # cuisine labels; 0 = take it from the vocabulary
    d_model: int = spec(128, ge=1)
    n_heads: int = spec(4, ge=1)
    n_layers: int = spec(2, ge=1)  # encoder blocks
    block: str = spec("sab", choices=BLOCKS, kind="block")  # "sab" (full self-attention, O(n²)) | "isab"
    #                                 (through n_inducing points, O(n·m))
    n_inducing: int = spec(16, ge=1)
    dropout: float = spec(0.0, ge=0, lt=1)
    cuisine_head: bool = False  # cuisine classifier on the PMA(1) pooled vector
    cuisine_offsets: tuple[float, ...] = ()  # per-cuisine log-offsets of the decision rule, tuned on validation
    coherence_head: bool = False  # "do these belong together" logit on the pooled vector; adds segment embeddings
    rtd_head: bool = False  # per-element "this ingredient was replaced" logit
    n_slots: int = spec(0, ge=0)  # > 0 adds the slot decoder with this many slots (≥ the largest target set)
    slot_layers: int = spec(2, ge=0)  # SAB blocks among the slots
    cuisine_condition: bool = False  # add a learned cuisine vector to the inputs and seeds (never with cuisine_head)
    embedding: str = spec("learned", choices=EMBEDDINGS, kind="embedding")  # "learned" table (tied to the
    #                                 vocabulary heads) | "features" (fixed, projected)
    n_features: int = spec(0, ge=0)  # width F of input_features (set automatically for embedding="features")
    feature_bias: bool = False  # with "features": add a learned per-id vector to the projection
    stop_threshold: float = spec(0.0, ge=0)  # MLM completion also stops when the best ingredient's
    #                                 probability is below this
    stop_size: int | None = spec(None, ge=1)  # and after this many (None: no cap); tuned with the threshold


@register_model
class SetTransformer(RecipeModel):
    """Set Transformer encoder with MLM/RTD/pooled/slot heads. See the module docstring."""

    model_type = "set-transformer"
    config_class = SetTransformerConfig
    objectives = ("mlm", "rtd", "cls", "coherence", "set")
    set_head = "slots"
    default_objective = "mlm"
    returns_stop_probs = True  # without slots (the slot decoder tunes no threshold)
    about = {"what": "permutation-equivariant SAB/ISAB encoder; `mlm` scores a query plus one `[MASK]`; the "
                     "`set` objective adds the slot decoder (K = `n_slots` slots, max-pooled to score)",
             "stops": "`mlm`: the `[MASK]` predicts `[NULL]` (a learned stop) or a threshold tuned on validation;"
                      " slots: the slots predicting ∅"}

    @classmethod
    def natural_objectives(cls, set_loss, params):
        return {"set": 1.0} if set_loss or int(params.get("n_slots", 0)) > 0 else {"mlm": 1.0}

    @classmethod
    def packing_refusal(cls, params):
        # The encoder runs packed rows whatever its config (SAB or ISAB; features; the cuisine vector, which the
        # element MLM and RTD never set, is then the "unknown" one for every element as unpacked). What pools a set
        # (PMA: cls, coherence; the slot decoder: set) is not computed on packed rows: those objectives and losses
        # do not declare ``packs``, so their runs keep one set a row.
        return None

    @classmethod
    def configure(cls, params, objectives, order, max_set):
        if "set" not in objectives:
            return params
        k = params.get("n_slots")
        if k and k < max_set:  # the loss would fail at the first batch that hides more than K ingredients
            raise RecipesetError(f"model.n_slots={k} is smaller than the largest recipe ({max_set} ingredients); "
                                 f"raise model.n_slots or drop longer recipes with data.max_len = {k}")
        if not k and max_set > MAX_AUTO_SLOTS:  # one outlier would size every batch's [B, K, V] slot logits
            raise RecipesetError(f"model.n_slots: the slot decoder gets a slot per ingredient of the largest recipe, "
                                 f"which has {max_set} (more than {MAX_AUTO_SLOTS}); drop long recipes with "
                                 f"data.max_len (e.g. {MAX_AUTO_SLOTS}) or set model.n_slots = {max_set} to pay for "
                                 "them")
        if not k:
            params["n_slots"] = max_set  # K >= the largest target set
        return params

    def __init__(self, config: SetTransformerConfig, vocab: Vocabulary,
                 input_features: torch.Tensor | None = None) -> None:
        config = resolve_sizes(config, vocab, input_features)
        super().__init__(config, vocab)
        c = config
        if input_features is None:
            input_features = placeholder_features(c)
        self.embed = InputEmbedding(c.vocab_size, c.d_model, c.embedding, input_features, c.feature_bias)
        self.cuisine_embed = nn.Embedding(c.n_cuisines + 1, c.d_model) if c.cuisine_condition else None  # +unknown
        self.segment = nn.Embedding(2, c.d_model) if c.coherence_head else None
        self.drop = nn.Dropout(c.dropout)
        if c.block == "sab":
            self.blocks = nn.ModuleList(SAB(c.d_model, c.n_heads, c.dropout) for _ in range(c.n_layers))
        else:
            self.blocks = nn.ModuleList(ISAB(c.d_model, c.n_heads, c.n_inducing, c.dropout)
                                        for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.lm_head = None if c.embedding == "learned" else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.rtd_head = nn.Linear(c.d_model, 1) if c.rtd_head else None
        self.pool = PMA(c.d_model, c.n_heads, 1, c.dropout)
        self.ln_pool = nn.LayerNorm(c.d_model)
        self.cuisine_head = nn.Linear(c.d_model, c.n_cuisines) if c.cuisine_head else None
        self.coherence_head = nn.Linear(c.d_model, 1) if c.coherence_head else None
        if c.n_slots > 0:
            self.slot_pool = PMA(c.d_model, c.n_heads, c.n_slots, c.dropout)
            self.slot_blocks = nn.ModuleList(SAB(c.d_model, c.n_heads, c.dropout) for _ in range(c.slot_layers))
            self.ln_slots = nn.LayerNorm(c.d_model)
        # specials are -inf except [NULL] (the MLM "nothing missing" target and the slots' ∅)
        self.register_buffer("logit_bias", special_bias(c.vocab_size, allow=(NULL,)), persistent=False)
        self.apply(init_weights)

    @property
    def has_slots(self) -> bool:
        return self.config.n_slots > 0

    @property
    def tunes_stop_threshold(self) -> bool:
        return not self.has_slots  # the slot decoder stops where slots predict ∅

    # ---- forward --------------------------------------------------------------------------------------
    def encode(self, tokens: torch.Tensor, mask: torch.Tensor | None, cuisine: torch.Tensor | None = None,
               segments: torch.Tensor | None = None, sequence_ids: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder: ``[B, T]`` ids → ``hidden [B, T, D]`` (permutation equivariant) and the conditioning
        vector ``[B, D]`` (None without cuisine conditioning). ``sequence_ids [B, T]``: packed rows (see
        :meth:`forward`)."""
        B = tokens.shape[0]
        x = self.embed(tokens)
        cond = None
        if self.cuisine_embed is not None:
            cond = self.cuisine_embed(self._cuisine_index(cuisine, B, tokens.device))
            x = x + cond[:, None, :]
        if segments is not None:
            if self.segment is None:
                raise RecipesetError("segments given but the model has no coherence_head (segment embeddings)")
            x = x + self.segment(segments)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask, sequence_ids)
        return self.ln_f(x), cond

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, cuisine: torch.Tensor | None = None,
                segments: torch.Tensor | None = None, sequence_ids: torch.Tensor | None = None) -> ModelOutput:
        """
        tokens:   ``[B, T]`` ids (any order; [MASK] where the MLM objective hides one), right-padded
        mask:     ``[B, T]`` True on real elements (padding never changes a real element's output; None = all real)
        cuisine:  ``[B]`` cuisine ids (-1 unknown); used only when ``config.cuisine_condition``
        segments: ``[B, T]`` 0/1 segment ids (coherence pairs); needs ``coherence_head``
        sequence_ids: ``[B, T]`` int, packed rows (training; :mod:`recipeset.data.packing`): several sets a row,
                  each a run of positions of one id (-1 on padding; ``mask`` unused). An element attends only to
                  its own set. No cuisine or segments.
        returns   ModelOutput with ``logits [B, T, V]`` (per-element, specials -inf but NULL), ``hidden``,
                  ``pooled [B, D]`` (PMA(1)), and ``cuisine_logits``/``coherence_logits``/``rtd_logits``/
                  ``slot_logits [B, K, V]`` for the configured heads; packed rows: the per-element ones only
                  (``logits``, ``hidden``, ``rtd_logits``)
        """
        if sequence_ids is not None:
            if cuisine is not None or segments is not None:
                raise RecipesetError("packed rows hold several sets: a cuisine or segments per row does not apply; "
                                     "train with train.pack = false")
            return self._element_outputs(self.encode(tokens, None, sequence_ids=sequence_ids)[0])
        h, cond = self.encode(tokens, mask, cuisine, segments)
        out = self._element_outputs(h)
        out.pooled = self.ln_pool(self.pool(h, mask).squeeze(1))
        if self.cuisine_head is not None:
            out.cuisine_logits = self.cuisine_head(out.pooled)
        if self.coherence_head is not None:
            out.coherence_logits = self.coherence_head(out.pooled).squeeze(-1)
        if self.has_slots:
            s = self.slot_pool(h, mask, seed_shift=cond)
            for block in self.slot_blocks:
                s = block(s)
            slot_logits = self._head_logits(self.ln_slots(s), self.lm_head, self.embed.tied_weight)
            out.slot_logits = slot_logits + self.logit_bias
        return out

    def _element_outputs(self, h: torch.Tensor) -> ModelOutput:
        """The per-element outputs of encoded elements ``h [B, T, D]``: MLM ``logits``, ``hidden``, ``rtd_logits``."""
        logits = self._head_logits(h, self.lm_head, self.embed.tied_weight) + self.logit_bias
        return ModelOutput(logits=logits, hidden=h,
                           rtd_logits=None if self.rtd_head is None else self.rtd_head(h).squeeze(-1))

    # ---- scorer protocol ------------------------------------------------------------------------------
    def _candidate_log_probs(self, tokens: torch.Tensor, mask: torch.Tensor,
                             cuisine: torch.Tensor | None) -> torch.Tensor:
        """``[B, V]`` log-probabilities over ingredients ∪ {[NULL]} for "what is missing from this set"
        (query ids -inf; NULL kept so callers can read the stop probability)."""
        if self.has_slots:
            slot_logits = self(tokens, mask, cuisine).slot_logits  # [B, K, V]
            logp = F.log_softmax(slot_logits.float(), dim=-1).amax(1)  # each candidate at its best slot
        else:
            lengths = mask.sum(1)
            t2, m2 = append_at_end(tokens, mask, torch.full_like(lengths, MASK))
            logits = self(t2, m2, cuisine).logits
            at_mask = logits[torch.arange(tokens.shape[0], device=tokens.device), lengths]
            # renormalise without the query's ids (a [MASK] never stands for an ingredient already present)
            logp = F.log_softmax(mask_ids(at_mask.float(), tokens, mask), dim=-1)
        return mask_ids(logp, tokens, mask)

    @inference
    def completion_scores_ids(self, tokens: torch.Tensor, mask: torch.Tensor, mode: str = "next",
                              cuisine: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probability ``[B, V]`` of each id being the missing ingredient of each query ``[B, T]``.

        Without slots: the MLM head at one [MASK] appended to the query. With slots: the K slot
        distributions max-pooled over slots. ``mode`` is accepted for the protocol; "next" and "joint" are
        the same here (an encoder has no order to condition on). -inf on specials and on the query's ids.
        """
        if mode not in ("next", "joint"):
            raise RecipesetError(f"mode must be 'next' or 'joint', got {mode!r}")
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        cuisine = self._check_cuisine(cuisine, tokens.shape[0])
        scores = self._candidate_log_probs(tokens, mask, cuisine)
        scores[:, :NUM_SPECIALS] = float("-inf")
        return scores

    @inference
    def complete_ids(self, tokens: torch.Tensor, mask: torch.Tensor, max_new: int = 20,
                     cuisine: torch.Tensor | None = None, temperature: float = 0.0, top_k: int | None = None,
                     generator: torch.Generator | None = None, return_probs: bool = False):
        """Generate the rest of each query ``[B, T]``; no repeats, no specials, no query ids.

        With slots: every slot whose best choice (among ∅ and the ingredients not in the query) is not ∅
        emits it; duplicates count once; most confident slots first; at most ``max_new``.
        Without slots: repeatedly append one [MASK] and add its best ingredient; stop when [NULL] wins (the
        learned stop: MLM training gives a [MASK] the target [NULL] when nothing is missing), when the best
        ingredient's probability is below ``config.stop_threshold``, or after ``max_new``.
        Sampling (``temperature > 0``) draws from the same distributions, [NULL] included.

        Without slots each step re-encodes the whole set: attention is global, so an added element changes every
        element's encoding and nothing of the previous step's pass is reusable exactly (unlike a causal decoder's
        keys/values or Deep Sets' pooled sum).
        ``return_probs`` (without slots): ``(ids, probs)``, ``probs[b][i]`` the best ingredient's probability
        when ``ids[b][i]`` was added (what the threshold is compared with) — see ``returns_stop_probs``.
        """
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        B = tokens.shape[0]
        cuisine = self._check_cuisine(cuisine, B)
        max_new = self.stop_budget(max_new)
        if self.has_slots:
            if return_probs:
                raise RecipesetError("return_probs: the slot decoder does not stop on a threshold")
            logits = self(tokens, mask, cuisine).slot_logits.float()  # [B, K, V]
            K, V = logits.shape[1:]
            logits = mask_ids(logits.reshape(B * K, V), tokens.repeat_interleave(K, 0),
                              mask.repeat_interleave(K, 0))
            choice = sample_from_logits(logits, temperature, top_k, generator).view(B, K)
            conf = F.log_softmax(logits, -1).gather(1, choice.view(-1, 1)).view(B, K)
            order = conf.argsort(dim=1, descending=True, stable=True)
            choice = choice.gather(1, order).tolist()
            out = []
            for row in choice:  # dedupe K ≤ a few dozen slots per set
                ids = [i for i in dict.fromkeys(row) if i >= NUM_SPECIALS]
                out.append(ids[:max_new])
            return out

        generated: list[list[int]] = [[] for _ in range(B)]
        probs: list[list[float]] = [[] for _ in range(B)]
        active = torch.ones(B, dtype=torch.bool, device=tokens.device)
        for _ in range(max_new):
            logp = self._candidate_log_probs(tokens, mask, cuisine)  # [B, V], NULL included
            logp[:, :NUM_SPECIALS] = torch.where(
                torch.arange(NUM_SPECIALS, device=logp.device) == NULL, logp[:, :NUM_SPECIALS], float("-inf"))
            choice = sample_from_logits(logp, temperature, top_k, generator)
            best_ingredient = logp[:, NUM_SPECIALS:].amax(1)
            best_p = best_ingredient.exp()
            stop = (choice == NULL) | (best_p < self.config.stop_threshold)
            stop |= torch.isinf(best_ingredient)  # nothing left to add
            active = active & ~stop
            if not bool(active.any()):
                break
            for b in torch.nonzero(active).squeeze(1).tolist():
                generated[b].append(int(choice[b]))
                probs[b].append(float(best_p[b]))
            tokens, mask = append_at_end(tokens, mask, choice, active)
        return (generated, probs) if return_probs else generated
