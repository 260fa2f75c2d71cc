"""DeepSets (Zaheer et al. 2017): ρ(Σ φ(x)) — the cheap permutation-invariant reference model.

φ embeds each ingredient (a residual MLP on the input embedding), the set is the *sum* of its elements (so the
pooled vector still carries the set's size), ρ is a residual MLP, and one vocabulary head gives the
missing-ingredient logits ``set_logits [B, V]`` (specials and the set's own ids -inf): a softmax over the one
missing ingredient (``mlm``), or with ``multilabel`` one sigmoid per ingredient, P(v is missing | set) (``set``).

With ``attention_heads`` the sum also attends over the set's elements before ρ (a Set Transformer MAB whose one
query is the sum, with a learned sink key): the pooled vector can weigh one element against the others, which a
sum cannot, and leave-one-out training stays exact — the query for "the set without x_i" is Σφ − φ(x_i) and the
element x_i is masked out of its keys, so every element is still held out in turn from one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recipeset.data.vocab import NULL, PAD, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.fields import spec
from recipeset.models.attention import MAB
from recipeset.models.base import (
    EMBEDDINGS,
    InputEmbedding,
    ModelOutput,
    RecipeModel,
    inference,
    init_weights,
    mask_ids,
    placeholder_features,
    record_choices,
    resolve_sizes,
    safe_log_softmax,
    special_bias,
    threshold_step,
)
from recipeset.registry import register_model


class ResidualMLP(nn.Module):
    """x + Linear(GELU(Linear(LN(x)))), width 4·D."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.proj(F.gelu(self.fc(self.ln(x)))))


@dataclass
class DeepSetsConfig:
    vocab_size: int = spec(0, ge=0)  # len(vocab), specials included; 0 = take it from the vocabulary
    n_cuisines: int = spec(0, ge=0)  # cuisine labels; 0 = take it from the vocabulary
    d_model: int = spec(128, ge=1)
    phi_layers: int = spec(1, ge=0)  # residual MLP blocks applied to each element before pooling
    rho_layers: int = spec(2, ge=0)  # residual MLP blocks applied to the pooled sum
    dropout: float = spec(0.0, ge=0, lt=1)
    attention_heads: int = spec(0, ge=0)  # > 0: the pooled sum attends over the set's elements (this many heads;
    #                                 d_model divisible by it) before ρ; 0: the plain sum
    cuisine_head: bool = False  # cuisine classifier on the pooled representation
    cuisine_hidden: int = spec(0, ge=0)  # > 0: the cuisine head is an MLP of this width (Linear → GELU → dropout →
    #                                 Linear) on the raw sum Σφ, not a linear layer on ρ's layer-normed output, which
    #                                 over-fits the cuisine within 1–3 epochs on flavornet (README, cuisine)
    cuisine_offsets: tuple[float, ...] = ()  # per-cuisine log-offsets of the decision rule, tuned on validation
    cuisine_condition: bool = False  # add a learned cuisine vector to the pooled sum (never with cuisine_head)
    embedding: str = spec("learned", choices=EMBEDDINGS, kind="embedding")  # "learned" table (tied to the
    #                                 output head) | "features" (fixed, projected)
    n_features: int = spec(0, ge=0)  # width F of input_features (set automatically for embedding="features")
    feature_bias: bool = False  # with "features": add a learned per-id vector to the projection
    stop_threshold: float = spec(0.5, ge=0)  # complete() adds the best ingredient while its probability
    #                                 is ≥ this
    stop_size: int | None = spec(None, ge=1)  # and at most this many (None: no cap); tuned with the threshold
    null_stop: bool = False  # a learned stop: the held-out MLM also trains [NULL] as the target of every whole set
    #                          (weight objectives.null_prob); complete() then goes on while 1 − p([NULL]) ≥
    #                          stop_threshold, adding the best ingredient
    multilabel: bool = False  # set_logits are independent per-ingredient logits (the `set` objective, BCE);
    #                           complete() then adds at once every ingredient with σ(logit) ≥ stop_threshold


def cuisine_head(c: DeepSetsConfig) -> nn.Module:
    """A linear layer on ρ's output, or with ``cuisine_hidden`` an MLP on the raw sum."""
    if not c.cuisine_hidden:
        return nn.Linear(c.d_model, c.n_cuisines)
    return nn.Sequential(nn.Linear(c.d_model, c.cuisine_hidden), nn.GELU(), nn.Dropout(c.dropout),
                         nn.Linear(c.cuisine_hidden, c.n_cuisines))


@register_model
class DeepSets(RecipeModel):
    """Sum-pooled set model with a missing-ingredient head and an optional cuisine head."""

    model_type = "deep-sets"
    config_class = DeepSetsConfig
    objectives = ("mlm", "cls", "set")
    set_head = "pooled"
    masked_prediction = "held-out"
    default_objective = "mlm"
    returns_stop_probs = True
    about = {"what": "Deep Sets (Zaheer et al. 2017): sum-pool → MLP → one `[B, V]` vector of candidate logits; "
                     "`mlm` = every ingredient held out in turn from one sum (softmax; `objectives.held_out`), "
                     "`set` = binary relevance (one sigmoid each); `attention_heads`: the sum attends over the "
                     "elements before ρ (still held out from one pass)",
             "stops": "a probability threshold tuned on validation (`mlm`: greedy, one at a time; `set`: every "
                      "ingredient over it at once)"}

    @classmethod
    def check_objectives(cls, weights):
        if "mlm" in weights and "set" in weights:
            raise RecipesetError("deep-sets trains one head: 'mlm' (a softmax over the one missing ingredient) or "
                                 "'set' (multilabel: a sigmoid per ingredient), not both")

    def __init__(self, config: DeepSetsConfig, vocab: Vocabulary, input_features: torch.Tensor | None = None) -> None:
        config = resolve_sizes(config, vocab, input_features)
        super().__init__(config, vocab)
        c = config
        if input_features is None:
            input_features = placeholder_features(c)
        self.embed = InputEmbedding(c.vocab_size, c.d_model, c.embedding, input_features, c.feature_bias)
        self.phi = nn.Sequential(*(ResidualMLP(c.d_model, c.dropout) for _ in range(c.phi_layers)))
        self.cuisine_embed = nn.Embedding(c.n_cuisines + 1, c.d_model) if c.cuisine_condition else None  # +unknown
        if c.attention_heads and c.d_model % c.attention_heads:
            raise RecipesetError(f"deep-sets: model.d_model ({c.d_model}) must be divisible by "
                                 f"model.attention_heads ({c.attention_heads})")
        self.attend = MAB(c.d_model, c.attention_heads, c.dropout, sink=True) if c.attention_heads else None
        self.rho = nn.Sequential(*(ResidualMLP(c.d_model, c.dropout) for _ in range(c.rho_layers)))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.lm_head = None if c.embedding == "learned" else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.cuisine_head = cuisine_head(c) if c.cuisine_head else None
        allow = (NULL,) if c.null_stop else ()  # [NULL]: "nothing is missing"
        self.register_buffer("logit_bias", special_bias(c.vocab_size, allow), persistent=False)
        for m in self.modules():
            init_weights(m)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, cuisine: torch.Tensor | None = None,
                segments: torch.Tensor | None = None) -> ModelOutput:
        """
        tokens:  ``[B, T]`` ids (any order), right-padded;  mask: ``[B, T]`` True on real elements
        cuisine: ``[B]`` cuisine ids (-1 unknown); used only when ``config.cuisine_condition``
        segments: not supported (DeepSets has no coherence head); must be None
        returns  ModelOutput with ``hidden [B, T, D]`` (φ of each element), ``pooled [B, D]`` (ρ of the sum),
                 ``set_logits [B, V]`` (specials and present ids -inf) and ``cuisine_logits`` when configured
        """
        if segments is not None:
            raise RecipesetError("deep-sets has no segment embeddings (no coherence objective)")
        h = self.phi(self.embed(tokens))
        s = (h * mask.to(h.dtype)[..., None]).sum(1)  # sum-pool: padding contributes nothing
        pooled, set_logits = self._readout(self._pool(s[:, None], h, mask[:, None, :])[:, 0], cuisine)
        features = s if self.config.cuisine_hidden else None  # what the cuisine head reads (None: pooled)
        return ModelOutput(
            hidden=h, pooled=pooled, set_logits=mask_ids(set_logits, tokens, mask), cuisine_features=features,
            cuisine_logits=None if self.cuisine_head is None else self.cuisine_head(pooled if features is None
                                                                                   else features),
        )

    def held_out_logits(self, tokens: torch.Tensor, mask: torch.Tensor, cuisine: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """Leave-one-out logits of every real position at once, from one pooled sum: row ``i`` of the result
        ``[N, V]`` (N = real positions, in ``mask`` order) is ``set_logits`` of its set without element ``i``
        (ρ of Σφ − φ(x_i)) with the other elements -inf and ``x_i`` allowed — what the ``mlm`` objective with
        ``objectives.held_out = "all"`` trains on (each ingredient the target once per step)."""
        h = self.phi(self.embed(tokens))
        m = mask.to(h.dtype)[..., None]
        rest = (h * m).sum(1, keepdim=True) - h  # [B, T, D]: the sum without each element
        if self.attend is not None:  # query i attends to the elements but i
            eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
            rest = self._pool(rest, h, mask[:, None, :] & ~eye)
        b = torch.nonzero(mask)[:, 0]
        cond = None if cuisine is None else cuisine[b]
        _, logits = self._readout(rest[mask], cond)  # [N, V]
        present = torch.zeros(tokens.shape[0], logits.shape[1], dtype=torch.bool, device=tokens.device)
        present.scatter_(1, torch.where(mask, tokens, PAD), True)
        others = present[b]
        others[torch.arange(len(b), device=tokens.device), tokens[mask]] = False
        return logits.masked_fill(others, float("-inf"))

    def _pool(self, s: torch.Tensor, h: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """The pooled vectors ρ reads: the sums ``s [B, Q, D]`` themselves, or with ``attention_heads`` each sum
        after attending over the elements ``h [B, T, D]`` that ``allowed [B, Q, T]`` lets it see."""
        return s if self.attend is None else self.attend(s, h, attn_mask=allowed.expand(-1, s.shape[1], -1))

    def _readout(self, s: torch.Tensor, cuisine: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The sum ``s [B, D]`` of φ over a set → ``pooled [B, D]`` (ρ, with the cuisine vector when conditioned)
        and ``set_logits [B, V]`` (specials -inf; the set's own ids not yet)."""
        if self.cuisine_embed is not None:
            s = s + self.cuisine_embed(self._cuisine_index(cuisine, s.shape[0], s.device))
        pooled = self.ln_f(self.rho(s))
        return pooled, self._head_logits(pooled, self.lm_head, self.embed.tied_weight) + self.logit_bias

    @inference
    def completion_scores_ids(self, tokens: torch.Tensor, mask: torch.Tensor, mode: str = "next",
                              cuisine: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probability ``[B, V]`` of each id being the missing ingredient (softmax of ``set_logits``
        of the query; with ``multilabel`` the sigmoids normalised to sum to one); ``mode`` is accepted for the
        protocol ("next" == "joint" here)."""
        if mode not in ("next", "joint"):
            raise RecipesetError(f"mode must be 'next' or 'joint', got {mode!r}")
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        cuisine = self._check_cuisine(cuisine, tokens.shape[0])
        logits = self(tokens, mask, cuisine).set_logits.float()
        if self.config.null_stop:  # which ingredient is missing, given that one is
            logits[:, NULL] = float("-inf")
        return safe_log_softmax(F.logsigmoid(logits) if self.config.multilabel else logits)

    @inference
    def complete_ids(self, tokens: torch.Tensor, mask: torch.Tensor, max_new: int = 20,
                     cuisine: torch.Tensor | None = None, temperature: float = 0.0, top_k: int | None = None,
                     generator: torch.Generator | None = None, return_probs: bool = False):
        """Add ingredients one at a time while the best one's probability is ≥ ``config.stop_threshold``
        (greedy: that best one; sampling: a draw from the same distribution). No repeats/specials/query ids.
        With ``multilabel``: in one pass, every candidate with σ(logit) ≥ ``stop_threshold``, most probable
        first, at most ``max_new`` (sampling: each candidate is drawn independently with σ(logit/temperature),
        among the ``top_k`` most probable when given).

        One at a time, the query is encoded once: the pooled sum Σ φ(x) ``[B, D]`` grows by φ of each chosen
        ingredient, and a ``[B, V]`` -inf table of the ids in the set grows with it (nothing is re-encoded; with
        ``attention_heads`` φ of each chosen ingredient also joins the elements the sum attends over).

        ``return_probs``: ``(ids, probs)``, ``probs[b][i]`` the probability the stop rule tested when
        ``ids[b][i]`` was added (the best one's; multilabel: its σ) — see ``returns_stop_probs``."""
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        B = tokens.shape[0]
        cuisine = self._check_cuisine(cuisine, B)
        max_new = self.stop_budget(max_new)
        if self.config.multilabel:
            return self._complete_multilabel(tokens, mask, max_new, cuisine, temperature, top_k, generator,
                                             return_probs)
        generated: list[list[int]] = [[] for _ in range(B)]
        probs: list[list[float]] = [[] for _ in range(B)]
        active = torch.ones(B, dtype=torch.bool, device=tokens.device)
        h = self.phi(self.embed(tokens))
        s = (h * mask[..., None]).sum(1)  # [B, D]
        in_set = mask_ids(torch.zeros(B, self.config.vocab_size, device=tokens.device), tokens, mask)  # 0 / -inf
        for _ in range(max_new):
            logits = (self._readout(self._pool(s[:, None], h, mask[:, None, :])[:, 0], cuisine)[1] + in_set).float()
            go_on = None
            if self.config.null_stop:  # 1 − p([NULL]) decides; the best ingredient other than [NULL] is added
                go_on = 1.0 - safe_log_softmax(logits)[:, NULL].exp()
                logits[:, NULL] = float("-inf")
            choice, best_p, active = threshold_step(safe_log_softmax(logits), active, self.config.stop_threshold,
                                                    temperature, top_k, generator, go_on)
            if not bool(active.any()):
                break
            rows = torch.nonzero(active).squeeze(1)
            record_choices(generated, probs, rows, choice, best_p)
            added = self.phi(self.embed(choice[rows]))  # [R, D]
            s[rows] += added
            in_set[rows, choice[rows]] = float("-inf")
            if self.attend is not None:  # the chosen ingredients join the keys of the rows that added one
                h = torch.cat([h, h.new_zeros(B, 1, h.shape[2]).index_copy(0, rows, added[:, None])], 1)
                mask = torch.cat([mask, active[:, None]], 1)
        return (generated, probs) if return_probs else generated

    def _complete_multilabel(self, tokens: torch.Tensor, mask: torch.Tensor, max_new: int,
                             cuisine: torch.Tensor | None, temperature: float, top_k: int | None,
                             generator: torch.Generator | None, return_probs: bool = False):
        logits = self(tokens, mask, cuisine).set_logits.float()
        if temperature > 0:
            p = torch.sigmoid(logits / temperature)
            if top_k is not None and top_k < p.shape[1]:
                p = p.masked_fill(p < p.topk(top_k, dim=1).values[:, -1:], 0.0)
            u = torch.rand(p.shape, generator=generator, device=p.device if generator is None else generator.device)
            chosen = u.to(p.device) < p
        else:
            p = torch.sigmoid(logits)
            chosen = p >= self.config.stop_threshold
        chosen &= torch.isfinite(logits)  # never a special or a query ingredient
        order = p.masked_fill(~chosen, -1.0).argsort(1, descending=True)[:, :max_new]
        counts = chosen.sum(1).clamp(max=max_new).tolist()
        generated = [order[b, :counts[b]].tolist() for b in range(tokens.shape[0])]
        if not return_probs:
            return generated
        ranked_p = p.gather(1, order)
        return generated, [ranked_p[b, :counts[b]].tolist() for b in range(tokens.shape[0])]
