"""CausalDecoder: a GPT-style next-ingredient model (nanoGPT layout: norm → attention → MLP → block → model).

The decoder is fed ``[BOS] + ingredients`` in some order; position t predicts token t+1. Positional embeddings
are off by default, as in Inverse Cooking's ingredient decoder. That is "no positions", not "order-free": the
causal mask still makes every prefix ordered. Ingredients already in a prefix are -inf in the next-step
distribution (a set never repeats), and so is every special except [EOS].

Right padding plus the causal mask means a padded position never reaches a real one, so attention needs no
padding mask and keeps the fused ``is_causal`` kernel. Training may instead pack several recipes a row
(``train.pack``, ``forward(..., sequence_ids=...)``): then a boolean block-diagonal causal mask keeps them apart.

Inference runs incrementally from a :class:`KVCache` (per-layer keys/values of what was already fed):
generation feeds the query once, then one token per step; ``joint`` scoring runs ``[BOS] + q`` once and scores
every candidate's continuation from the cached prefix before it (:meth:`CausalDecoder._insertion_scores`).
The uncached forward of one recipe a row keeps the fused ``is_causal`` kernel. ``models.decoder_reference`` keeps the
old whole-sequence joint scoring and generation as the reference the cached ones are tested against.

``train_order = "given"`` (data whose order means something, e.g. the synthetic generator's ordered mode): a
query is fed as it came, and ``joint`` scoring does not know where the missing ingredient belonged, so it
marginalises over every insertion slot (see :meth:`CausalDecoder._joint_scores_given`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from recipeset.data.ordering import order_ids
from recipeset.data.packing import block_causal_mask, restart_positions
from recipeset.data.vocab import BOS, EOS, NUM_SPECIALS, PAD, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.fields import spec
from recipeset.models.attention import MLP
from recipeset.models.base import (
    EMBEDDINGS,
    InputEmbedding,
    ModelOutput,
    RecipeModel,
    inference,
    init_weights,
    mask_ids,
    placeholder_features,
    resolve_sizes,
    sample_from_logits,
    special_bias,
)
from recipeset.registry import ORDERS, register_model

WORK_CHUNK = 1 << 20  # logits (and copied keys/values) per pass of the cached joint scoring
JOINT_CANDIDATES = 64  # a random-order decoder's default joint re-ranking depth (flavornet, 4 orders, 500 test
#                        queries: Recall@10 identical to every candidate's, MRR within 3e-5, 4.8x faster)
SHARED_SUFFIX = 1  # joint suffixes up to this long attend to an un-copied prefix (SharedPrefix); longer ones amortise
#                    copying it per candidate (KVCache.select + the fused attention kernel), measured faster


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.c_attn = nn.Linear(d_model, 3 * d_model)  # fused q, k, v
        self.c_proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | SharedPrefixLayer | None = None,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """
        x:         ``[B, T, D]`` the new positions
        past:      keys and values ``[B, H, P, D/H]`` of P earlier positions, or a :class:`SharedPrefixLayer`
                   (rows continuing shared prefixes: they attend to every prefix position, then causally), or
                   None (x is the whole sequence)
        attn_mask: bool ``[B or 1, 1, T, P+T]`` (True = attend); with ``past`` None = attend to everything (right
                   for one new position after an unpadded past), without ``past`` None = causal (the fused kernel)
                   and a mask is a packed batch's block-diagonal causal mask (P = 0)
        returns    ``y [B, T, D]`` and the keys and values ``[B, H, P+T, D/H]`` of every position so far
        """
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        dropout_p = self.dropout if self.training else 0.0
        if isinstance(past, SharedPrefixLayer):
            y = past.attend(q, k, v)
        else:
            if past is not None:
                k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                               is_causal=past is None and attn_mask is None)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, D))), (k, v)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | SharedPrefixLayer | None = None,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x [B, T, D]`` → ``[B, T, D]`` and this layer's keys/values ``[B, H, P+T, D/H]`` (see
        :meth:`CausalSelfAttention.forward` for ``past`` and ``attn_mask``)."""
        a, present = self.attn(self.ln_1(x), past, attn_mask)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the decoder shared attention.MLP name its layers c_fc / c_proj
        for old, new in (("mlp.c_fc.", "mlp.fc."), ("mlp.c_proj.", "mlp.proj.")):
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@dataclass
class KVCache:
    """What a decoder has already run, so that a call can feed only new positions (nanoGPT / HF-style).

    Pass an empty ``KVCache()`` to :meth:`CausalDecoder.forward` to run a (right-padded) batch whole and fill
    it; pass it again to run only the next positions of every row: they attend to the row's real past
    positions and causally among themselves, their positions (``config.positions``) continue each row's own
    count, and every id already seen is -inf in their next-step distribution. Each call extends the cache
    in place; :meth:`select` takes rows and a prefix of it into a new cache.

    keys, values: per layer ``[B, H, P, D/H]`` (P positions, the cuisine prefix first when conditioned)
    valid:        ``[B, P]`` False on the right padding of the first call (never attended to afterwards)
    tokens:       ``[B, P - prefix]`` the ids fed so far ([PAD] on padding): the ids already seen
    lengths:      ``[B]`` real token positions of each row (the position index of its next token)
    prefix:       1 when a cuisine vector precedes the tokens, else 0
    """

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    valid: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    prefix: int = 0
    padded: bool = False  # some past position is padding (then even one new position needs a mask)

    @property
    def empty(self) -> bool:
        return not self.keys

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Layer ``i``'s past keys and values, or None for an empty cache."""
        return None if self.empty else (self.keys[i], self.values[i])

    def attention_mask(self, T: int) -> torch.Tensor | None:
        """Bool ``[B or 1, 1, T, P+T]`` for T new positions: every valid past position, then causal; None when
        that is "everything" (one new position, no padding in the past)."""
        if T == 1 and not self.padded:
            return None
        P = self.valid.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=self.valid.device).tril()
        if not self.padded:
            return torch.cat([causal.new_ones(T, P), causal], 1)[None, None]
        B = self.valid.shape[0]
        return torch.cat([self.valid[:, None, None, :].expand(B, 1, T, P), causal.expand(B, 1, T, T)], -1)

    def extend(self, presents: list[tuple[torch.Tensor, torch.Tensor]], tokens: torch.Tensor,
               mask: torch.Tensor | None, prefix: int) -> None:
        """Record a call's keys/values ``presents`` (every position so far) and its ``tokens [B, T]`` (``mask``
        True on real ones; None = all real; only the first call of a cache may be padded)."""
        B, T = tokens.shape
        m = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
        if self.empty:
            self.valid = torch.cat([m.new_ones(B, prefix), m], 1)
            self.tokens, self.lengths, self.prefix = tokens, m.sum(1), prefix
            self.padded = not bool(m.all())
        else:
            self.valid = torch.cat([self.valid, m], 1)
            self.tokens, self.lengths = torch.cat([self.tokens, tokens], 1), self.lengths + T
        self.keys = [k for k, _ in presents]
        self.values = [v for _, v in presents]

    def select(self, rows: torch.Tensor, upto: int) -> KVCache:
        """A new cache of rows ``rows [N]`` (repeats allowed) cut after their first ``upto`` token positions
        (rows must have no padding among those positions)."""
        cut = self.prefix + upto
        return KVCache(keys=[k[rows, :, :cut] for k in self.keys], values=[v[rows, :, :cut] for v in self.values],
                       valid=self.valid[rows, :cut], tokens=self.tokens[rows, :upto],
                       lengths=torch.full_like(rows, upto), prefix=self.prefix,
                       padded=not bool(self.valid[rows, :cut].all()))


@dataclass
class SharedPrefixLayer:
    """One layer's keys/values of Q cached prefixes and the N rows that continue them (see :class:`SharedPrefix`).

    keys, values: ``[Q, H, P, D/H]`` the P positions of each prefix
    query:        ``[N]`` the prefix each row continues
    col:          ``[N]`` the row's index among the rows of its prefix (``width`` = the most rows of one prefix)
    """

    keys: torch.Tensor
    values: torch.Tensor
    query: torch.Tensor
    col: torch.Tensor
    width: int

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention ``[N, H, T, D/H]`` of the rows' T new positions ``q, k, v [N, H, T, D/H]`` to every position of
        their prefix and causally to their own, one softmax over both parts (no dropout: inference only).

        The prefix part never copies a prefix's keys/values per row: the rows' queries are laid out
        ``[Q, H, width·T, D/H]`` (zeros where a prefix has fewer rows) and meet their prefix's keys, then values,
        in one batched matmul per prefix."""
        N, H, T, Dh = q.shape
        Q, _, P, _ = self.keys.shape
        rows = (self.query, slice(None), self.col)  # [Q, H, width, T, ...] at each row → [N, H, T, ...]
        laid = q.new_zeros(Q, H, self.width, T, Dh)
        laid[rows] = q
        to_prefix = (laid.view(Q, H, self.width * T, Dh) @ self.keys.transpose(-1, -2)).view(Q, H, self.width, T, P)
        own = (q @ k.transpose(-1, -2)).masked_fill(
            ~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
        w = torch.softmax(torch.cat([to_prefix[rows], own], -1) * Dh ** -0.5, -1)  # [N, H, T, P + T]
        laid = q.new_zeros(Q, H, self.width, T, P)
        laid[rows] = w[..., :P]
        from_prefix = (laid.view(Q, H, self.width * T, P) @ self.values).view(Q, H, self.width, T, Dh)
        return from_prefix[rows] + w[..., P:] @ v


class SharedPrefix:
    """A read-only view of a :class:`KVCache` for feeding many continuations of each cached row at once: the
    rows ``rows [N]`` (repeats are the point; sort them so that a row's repeats are adjacent, which is what gets
    shared) cut after their first ``upto`` token positions (no padding among those), as
    :meth:`KVCache.select` would give, but without copying a row's keys/values for each repeat (attention to
    them runs through :meth:`SharedPrefixLayer.attend`). :meth:`CausalDecoder.forward` takes it as ``cache``;
    it keeps nothing of what it is fed (:meth:`extend` does nothing)."""

    empty = False

    def __init__(self, cache: KVCache, rows: torch.Tensor, upto: int) -> None:
        cut = cache.prefix + upto
        queries, query, counts = torch.unique_consecutive(rows, return_inverse=True, return_counts=True)
        col = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[query]
        width = int(counts.max()) if len(rows) else 0
        self.layers = [SharedPrefixLayer(k[queries, :, :cut], v[queries, :, :cut], query, col, width)
                       for k, v in zip(cache.keys, cache.values, strict=True)]
        self.tokens = cache.tokens[rows, :upto]
        self.lengths = torch.full_like(rows, upto)
        self.prefix = cache.prefix

    def layer(self, i: int) -> SharedPrefixLayer:
        return self.layers[i]

    def attention_mask(self, T: int) -> None:
        """None: :meth:`SharedPrefixLayer.attend` masks causally itself."""
        return None

    def extend(self, presents, tokens, mask, prefix) -> None:
        """Nothing: a shared prefix is read-only."""


@dataclass
class DecoderConfig:
    vocab_size: int = spec(0, ge=0)  # len(vocab), specials included; 0 = take it from the vocabulary
    n_cuisines: int = spec(0, ge=0)  # cuisine labels; 0 = take it from the vocabulary
    d_model: int = spec(128, ge=1)
    n_layers: int = spec(3, ge=1)
    n_heads: int = spec(4, ge=1)
    dropout: float = spec(0.1, ge=0, lt=1)
    max_len: int = spec(64, ge=1)  # longest input (with [BOS], without the cuisine prefix); enforced with positions
    positions: bool = False  # learned absolute positions; off = "no positions" (the causal mask still orders)
    cuisine_condition: bool = False  # prepend a learned cuisine vector (never together with cuisine_head)
    cuisine_head: bool = False  # cuisine classifier on the mean-pooled hidden states
    cuisine_offsets: tuple[float, ...] = ()  # per-cuisine log-offsets of the decision rule, tuned on validation
    coherence_head: bool = False  # "do these belong together" logit on the pooled state; adds segment embeddings
    embedding: str = spec("learned", choices=EMBEDDINGS, kind="embedding")  # "learned" table (tied to the
    #                                 output head) | "features" (fixed, projected)
    n_features: int = spec(0, ge=0)  # width F of input_features (set automatically for embedding="features")
    feature_bias: bool = False  # with "features": add a learned per-id vector to the projection
    train_order: str = spec("frequency", choices=ORDERS)  # the training order; completion feeds queries in it
    joint_orders: int = spec(4, ge=1)  # orders averaged (log-mean-exp) in "joint" scoring for a random order
    next_orders: int = spec(1, ge=1)  # orders averaged in "next" scoring when train_order is random
    joint_candidates: int | None = spec(None, ge=0)  # "joint" scores exactly each query's top this-many
    #                                 first-stage candidates, the rest below them (see _reranked_joint_scores);
    #                                 0: every candidate; None: JOINT_CANDIDATES for a random order, else 0
    stop_threshold: float | None = spec(None, ge=0, le=1)  # complete() adds the best ingredient while
    #                                 1 − p([EOS]) ≥ this (tuned on validation); None: stops when [EOS] is chosen
    stop_size: int | None = spec(None, ge=1)  # and at most this many (None: no cap); tuned with the threshold


@register_model
class CausalDecoder(RecipeModel):
    """GPT-style decoder over ingredient ids. See the module docstring."""

    model_type = "decoder"
    config_class = DecoderConfig
    objectives = ("clm", "cls", "coherence", "set")
    set_head = "sequence"
    default_objective = "clm"
    scoring_modes = ("next", "joint")
    returns_stop_probs = True
    about = {"what": "GPT-style causal decoder over ingredient ids (no positions by default); scores `next` "
                     "(the next-ingredient distribution after the query in its training order) and `joint` "
                     "(log-likelihood of query ∪ {y})",
             "stops": "`[EOS]`, or 1 − p(`[EOS]`) below a threshold tuned on validation"}

    @classmethod
    def packing_refusal(cls, params):
        if params.get("cuisine_condition"):
            return "model.cuisine_condition: a packed row has one cuisine prefix, not one per recipe"
        return None

    @classmethod
    def configure(cls, params, objectives, order, max_set):
        params["train_order"] = order  # completion must feed queries in the order the run trains in
        params.setdefault("max_len", max(64, max_set + 2))
        if params.get("positions") and params["max_len"] < max_set + 1:  # [BOS] + the largest recipe
            raise RecipesetError(f"model.max_len={params['max_len']} is shorter than the largest recipe ([BOS] + "
                                 f"{max_set} ingredients); raise model.max_len or drop longer recipes with "
                                 f"data.max_len = {params['max_len'] - 1}")
        return params

    def __init__(self, config: DecoderConfig, vocab: Vocabulary, input_features: torch.Tensor | None = None) -> None:
        config = resolve_sizes(config, vocab, input_features)
        super().__init__(config, vocab)
        c = config
        if input_features is None:
            input_features = placeholder_features(c)
        self.embed = InputEmbedding(c.vocab_size, c.d_model, c.embedding, input_features, c.feature_bias)
        self.wpe = nn.Embedding(c.max_len, c.d_model) if c.positions else None
        self.cuisine_prefix = nn.Embedding(c.n_cuisines + 1, c.d_model) if c.cuisine_condition else None  # +unknown
        self.segment = nn.Embedding(2, c.d_model) if c.coherence_head else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.dropout) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        # weight tying: a learned input table doubles as the output head
        self.lm_head = None if c.embedding == "learned" else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.cuisine_head = nn.Linear(c.d_model, c.n_cuisines) if c.cuisine_head else None
        self.coherence_head = nn.Linear(c.d_model, 1) if c.coherence_head else None
        self.register_buffer("logit_bias", special_bias(c.vocab_size, allow=(EOS,)), persistent=False)
        self.register_buffer("order_ranks", self._order_ranks(), persistent=False)

        self.apply(init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("attn.c_proj.weight", "mlp.proj.weight")):  # residual projections, GPT-2 style
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layers))

    # ---- orders ---------------------------------------------------------------------------------------
    def _order_ranks(self) -> torch.Tensor:
        """``[K, V]`` rank of every id in each order used at inference (specials rank last).

        A canonical order (frequency, alphabetical) is a total order of the vocabulary, so one rank table
        sorts any set exactly as ``order_ids`` would (``given`` never sorts: :meth:`_ordered` skips the table).
        For random orders, K fixed random total orders (seed 0): restricted to any set, each is a uniformly
        random permutation of it, and scoring stays deterministic and independent of batch composition and of
        the order the query was given in.
        """
        c = self.config
        V = c.vocab_size
        ids = list(range(NUM_SPECIALS, V))
        if self.random_order:
            g = torch.Generator().manual_seed(0)
            orders = [torch.randperm(len(ids), generator=g) + NUM_SPECIALS
                      for _ in range(max(c.joint_orders, c.next_orders, 1))]
        else:
            orders = [torch.tensor(order_ids(ids, c.train_order, self.vocab), dtype=torch.long)]
        ranks = torch.full((len(orders), V), V, dtype=torch.long)
        for k, order in enumerate(orders):
            ranks[k, order] = torch.arange(len(ids))
        return ranks

    @property
    def random_order(self) -> bool:
        return ORDERS.get(self.config.train_order, "model.train_order").kind == "random"

    @property
    def given_order(self) -> bool:
        """The data's own order (``given``): queries are never reordered."""
        return ORDERS.get(self.config.train_order, "model.train_order").kind == "given"

    def _ordered(self, tokens: torch.Tensor, mask: torch.Tensor, k: int = 0) -> torch.Tensor:
        """Sort each right-padded set ``[B, T]`` into order ``k`` (padding stays last); ``given``: as given."""
        if self.given_order:
            key = (~mask).long()  # only moves padding last; real ingredients keep their relative order
            return tokens.gather(1, key.argsort(dim=1, stable=True))
        key = self.order_ranks[k][tokens].masked_fill(~mask, self.config.vocab_size + 1)
        return tokens.gather(1, key.argsort(dim=1, stable=True))

    @staticmethod
    def with_bos(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepend [BOS]: ``[B, T]`` → ``[B, T+1]`` (mask True on [BOS])."""
        bos = tokens.new_full((tokens.shape[0], 1), BOS)
        return torch.cat([bos, tokens], 1), torch.cat([mask.new_ones(mask.shape[0], 1), mask], 1)

    def feed(self, tokens, mask, segments=None):
        """A batch in the training order is fed after [BOS] (segment 0 for it when given)."""
        tokens, mask = self.with_bos(tokens, mask)
        if segments is not None:
            segments = torch.cat([segments.new_zeros(segments.shape[0], 1), segments], 1)
        return tokens, mask, segments

    def _classify_inputs(self, tokens, mask):
        # the set is fed as in training: [BOS] + ingredients in the training order
        return self.with_bos(self._ordered(tokens, mask, 0), mask)

    # ---- forward --------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, cuisine: torch.Tensor | None = None,
                segments: torch.Tensor | None = None, cache: KVCache | SharedPrefix | None = None,
                sequence_ids: torch.Tensor | None = None) -> ModelOutput:
        """
        tokens:   ``[B, T]`` ``[BOS] + ingredients``, right-padded with [PAD]; with a non-empty ``cache``: the
                  next T tokens of every row (all real), fed after what the cache holds
        mask:     ``[B, T]`` True on real tokens (pooling, and the cache's valid positions; None = all real)
        cuisine:  ``[B]`` cuisine ids (-1 unknown); used only when ``config.cuisine_condition`` (and not with a
                  non-empty cache, whose first call already fed the cuisine prefix)
        segments: ``[B, T]`` 0/1 segment ids (coherence pairs); needs ``coherence_head``
        cache:    a :class:`KVCache` to fill (empty) or continue (non-empty), extended in place; or a
                  :class:`SharedPrefix` to continue (read-only); None = no cache
        sequence_ids: ``[B, T]`` int, packed rows (training; :mod:`recipeset.data.packing`): several
                  ``[BOS] + ingredients`` sequences a row, each a run of positions of one id (-1 on padding). A
                  position attends to, and its next-step distribution excludes, only its own sequence's earlier
                  positions; positions restart at 0 in each. No cache, segments or cuisine prefix.
        returns   ModelOutput with ``logits [B, T, V]`` (position t predicts token t+1; every id fed so far is
                  -inf), ``hidden [B, T, D]``, ``pooled [B, D]`` (mean of hidden over ``mask``) and the
                  configured heads — all over the T positions of this call; packed rows: logits and hidden only
        """
        if sequence_ids is not None:
            return self._forward_packed(tokens, sequence_ids)
        past = cache if cache is not None and not cache.empty else None
        x, prefix = self._embed(tokens, cuisine, segments, past)
        x = self.drop(x)
        attn_mask = None if past is None else past.attention_mask(tokens.shape[1])
        presents = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if past is None else past.layer(i), attn_mask)
            presents.append(kv)
        h = self.ln_f(x)[:, prefix:]  # drop the prefix so outputs stay aligned with tokens

        logits = self._head_logits(h, self.lm_head, self.embed.tied_weight) + self.logit_bias
        logits = self._mask_seen(logits, tokens, None if past is None else past.tokens)
        if cache is not None:
            cache.extend(presents, tokens, mask, prefix if past is None else cache.prefix)

        m = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
        w = m.to(h.dtype)[..., None]
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1.0)
        return ModelOutput(
            logits=logits, hidden=h, pooled=pooled,
            cuisine_logits=None if self.cuisine_head is None else self.cuisine_head(pooled),
            coherence_logits=None if self.coherence_head is None else self.coherence_head(pooled).squeeze(-1),
        )

    def _forward_packed(self, tokens: torch.Tensor, sequence_ids: torch.Tensor) -> ModelOutput:
        """:meth:`forward` of packed rows ``tokens [R, W]`` (``sequence_ids [R, W]``): the block-diagonal causal
        mask of the sequences, through the same blocks (see :mod:`recipeset.data.packing`)."""
        if self.cuisine_prefix is not None:
            raise RecipesetError("packed rows need one cuisine prefix per recipe: train a cuisine_condition decoder "
                                 "with train.pack = false")
        allowed = block_causal_mask(sequence_ids)  # [R, W, W]
        x = self.drop(self._embed(tokens, None, None, None, restart_positions(sequence_ids))[0])
        for block in self.blocks:
            x, _ = block(x, None, allowed[:, None])
        h = self.ln_f(x)
        logits = self._head_logits(h, self.lm_head, self.embed.tied_weight) + self.logit_bias
        return ModelOutput(logits=self._mask_seen(logits, tokens, None, allowed), hidden=h)

    def _embed(self, tokens: torch.Tensor, cuisine: torch.Tensor | None, segments: torch.Tensor | None,
               past: KVCache | None, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Input vectors ``[B, prefix + T, D]`` of ``tokens [B, T]`` and the prefix length (1 when the cuisine
        vector is prepended: conditioned and no ``past``). Positions continue each row's count in ``past``, or
        are ``positions [B, T]`` when given (packed rows)."""
        c = self.config
        B, T = tokens.shape
        x = self.embed(tokens)
        if self.wpe is not None:
            pos = torch.arange(T, device=tokens.device) if positions is None else positions
            if past is not None:
                pos = past.lengths[:, None] + pos  # [B, T]
            if T > 0 and int(pos.max()) >= c.max_len:
                raise RecipesetError(f"decoder input of length {int(pos.max()) + 1} exceeds model.max_len={c.max_len}")
            x = x + self.wpe(pos)
        if segments is not None:
            if self.segment is None:
                raise RecipesetError("segments given but the model has no coherence_head (segment embeddings)")
            x = x + self.segment(segments)
        if self.cuisine_prefix is None or past is not None:
            return x, 0
        cond = self.cuisine_prefix(self._cuisine_index(cuisine, B, tokens.device))  # [B, D]
        return torch.cat([cond[:, None, :], x], dim=1), 1

    @staticmethod
    def _mask_seen(logits: torch.Tensor, tokens: torch.Tensor, past: torch.Tensor | None,
                   upto: torch.Tensor | None = None) -> torch.Tensor:
        """-inf at position t of ``logits [B, T, V]`` on every id fed at or before t: ``past [B, P]`` (ids fed
        by earlier calls, or None) and ``tokens[:, :t+1]`` — or, packed rows, the ``tokens`` at the positions
        ``upto [B, T, T]`` allows (the sequence's own); scattered through a ``[B, T, P+T]`` index."""
        T = tokens.shape[1]
        if upto is None:
            upto = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
        seen = torch.where(upto, tokens[:, None, :], torch.full_like(tokens[:, None, :], PAD))
        if past is not None:
            seen = torch.cat([past[:, None, :].expand(-1, T, -1), seen], -1)
        return logits.scatter(-1, seen, float("-inf"))

    # ---- scorer protocol ------------------------------------------------------------------------------
    @inference
    def completion_scores_ids(self, tokens: torch.Tensor, mask: torch.Tensor, mode: str = "next",
                              cuisine: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probability ``[B, V]`` of each id being the missing ingredient of each query ``[B, T]``.

        ``next``: the next-ingredient distribution after ``[BOS] + query`` in the training order.
        ``joint``: log p(query ∪ {y} + [EOS]) in the training order, for every candidate y.
        With a random training order both average (log-mean-exp) over ``next_orders``/``joint_orders`` fixed
        random orders. With ``given``, ``next`` feeds the query as given and ``joint`` marginalises over the
        slot y was taken from (:meth:`_joint_scores_given`). -inf on specials and on the query's own ids.
        """
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        B = tokens.shape[0]
        cuisine = self._check_cuisine(cuisine, B)
        if mode == "next":
            n_orders = self.config.next_orders if self.random_order else 1
            scores = torch.stack([self._next_scores(tokens, mask, cuisine, k) for k in range(n_orders)])
        elif mode == "joint":
            return self._reranked_joint_scores(tokens, mask, cuisine)
        else:
            raise RecipesetError(f"mode must be 'next' or 'joint', got {mode!r}")
        return self.combine_orders(scores, tokens, mask)

    def _reranked_joint_scores(self, tokens, mask, cuisine) -> torch.Tensor:
        """``joint`` scores ``[B, V]``: exact for every candidate (:attr:`joint_candidate_count` 0), or exact for each
        query's top ``joint_candidates`` candidates by :meth:`_joint_proposals` and, below all of them, the others
        in that order (a two-stage ranker: the suffix passes, the bulk of the cost, shrink to ~K/V)."""
        K = self.joint_candidate_count
        cand = None
        if K and K < self.config.vocab_size - NUM_SPECIALS:
            first = self._joint_proposals(tokens, mask, cuisine)
            cand = first.topk(K, -1).indices  # [B, K] (-inf ones, when fewer are allowed, stay -inf below)
        if self.given_order:
            scores = self._joint_scores_given(tokens, mask, cuisine, cand=cand)[None]
        else:
            scores = torch.stack([self._joint_scores(tokens, mask, cuisine, k, cand=cand)
                                  for k in range(self.joint_order_count)])
        scores = self.combine_orders(scores, tokens, mask)
        if cand is None:
            return scores
        top = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, cand, True) & torch.isfinite(scores)
        floor = scores.masked_fill(~top, float("inf")).amin(1, keepdim=True)  # the lowest re-ranked score
        last = first.masked_fill(top | ~torch.isfinite(first), float("-inf")).amax(1, keepdim=True)
        rest = floor - 1 + (first - last)  # below every re-ranked candidate, in the proposals' order
        return torch.where(top, scores, torch.where(torch.isfinite(first) & ~top, rest, scores))

    def _joint_proposals(self, tokens, mask, cuisine) -> torch.Tensor:
        """``[B, V]`` the first stage of re-ranked ``joint`` scoring, from one pass over ``[BOS] + q`` per order:
        log p(q + [EOS]) + log p(y | the part of q before y's slot) — the joint log-likelihood of q ∪ {y} as if
        y changed nothing after it — log-mean-exp'd over the orders like the joint (``given``: over the slots
        0..n y may have been taken from). -inf on specials and on the query's ids."""
        n = mask.sum(1)
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        per_order = []
        for k in range(1 if self.given_order else self.joint_order_count):
            ordered = self._ordered(tokens, mask, k)
            logp = F.log_softmax(self(*self.with_bos(ordered, mask), cuisine).logits.float(), -1)  # [B, T+1, V]
            seq_ll = logp[:, :-1].gather(-1, ordered[..., None]).squeeze(-1).masked_fill(~mask, 0).sum(1)
            seq_ll = seq_ll + logp[rows, n, EOS]
            if self.given_order:
                slot_ok = torch.arange(logp.shape[1], device=tokens.device)[None, :] <= n[:, None]  # [B, T+1]
                after = torch.logsumexp(logp.masked_fill(~slot_ok[..., None], float("-inf")), 1)
                after = after - torch.log(n[:, None].float() + 1)
            else:
                ranks = self.order_ranks[k]
                slot = ((ranks[ordered][:, :, None] < ranks[None, None, :]) & mask[..., None]).sum(1)  # [B, V]
                after = logp.gather(1, slot[:, None, :]).squeeze(1)
            per_order.append(seq_ll[:, None] + after)
        return self.combine_orders(torch.stack(per_order), tokens, mask)

    @property
    def joint_candidate_count(self) -> int:
        """How many candidates a query's ``joint`` scoring scores exactly (0: all): ``joint_candidates``, by
        default :data:`JOINT_CANDIDATES` for a random order (4 orders of suffix passes) and all for a canonical
        one, where the first stage misses too much (frequency order, K = 64: Recall@10 0.645 against 0.659)."""
        K = self.config.joint_candidates
        if K is None:
            return JOINT_CANDIDATES if self.random_order else 0
        return K

    @property
    def joint_order_count(self) -> int:
        """How many orders ``joint`` scoring averages over (``joint_orders`` for a random order, else 1)."""
        return self.config.joint_orders if self.random_order else 1

    @staticmethod
    def combine_orders(scores: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[K, B, V]`` per-order log-probabilities → ``[B, V]`` log-mean-exp over the K orders, -inf on
        specials and on the query's ids ``tokens/mask [B, T]``."""
        scores = torch.logsumexp(scores, 0) - math.log(scores.shape[0])
        scores[:, :NUM_SPECIALS] = float("-inf")
        return mask_ids(scores, tokens, mask)

    def _next_scores(self, tokens, mask, cuisine, k: int) -> torch.Tensor:
        inp, m = self.with_bos(self._ordered(tokens, mask, k), mask)
        logits = self(inp, m, cuisine).logits  # [B, T+1, V]
        last = logits[torch.arange(inp.shape[0], device=inp.device), m.sum(1) - 1]
        return F.log_softmax(last.float(), dim=-1)

    def _joint_scores(self, tokens, mask, cuisine, k: int, budget: int = 1 << 24,
                      cand: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, V]`` log p(q ∪ {y}) in order ``k`` (-inf on specials and the query's ids).

        In a total order sort(q ∪ {y}) is q sorted with y inserted at slot i = #{x ∈ q : x before y}, so each
        candidate is one insertion (:meth:`_insertion_scores`); ~``budget`` logits at most per pass.
        """
        ranks = self.order_ranks[k]

        def slots(seq: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
            return (ranks[seq][:, :, None] < ranks[cand][:, None, :]).sum(1, keepdim=True)  # [G, 1, C]

        return self._insertion_scores(self._ordered(tokens, mask, k), mask, cuisine, slots, budget, cand)

    def _joint_scores_given(self, tokens, mask, cuisine, budget: int = 1 << 24,
                            cand: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, V]`` log Σ_i (1/(n+1)) p(q[:i] + [y] + q[i:] + [EOS]) for queries in the given order.

        A leave-one-out query hides where y was, so every insertion slot i = 0..n (n = |q|) is a hypothesis with
        a uniform prior: every (slot, candidate) is one insertion (:meth:`_insertion_scores`), the slots then
        log-mean-exp'd. ~``budget`` logits at most per pass.
        """
        def slots(seq: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
            n = seq.shape[1]
            return torch.arange(n + 1, device=seq.device)[None, :, None].expand(seq.shape[0], n + 1, cand.shape[1])

        return self._insertion_scores(tokens, mask, cuisine, slots, budget, cand)

    def _insertion_scores(self, ordered: torch.Tensor, mask: torch.Tensor, cuisine: torch.Tensor | None,
                          slots, budget: int, cand: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, V]`` log-mean-exp over slots i of log p(q[:i] + [y] + q[i:] + [EOS]) for every query q (a row of
        ``ordered [B, T]``, real ids first) and every ingredient y not in q — or only the ids of its row of
        ``cand [B, C]`` — (-inf elsewhere).

        ``slots(seq [G, n], cand [G, C]) -> [G, S, C]`` gives the S slots each candidate is inserted at. Queries
        are grouped by length n, each group in chunks of at most ``min(budget, WORK_CHUNK) // ((n+1)·C)`` queries
        (so that no (query, slot, candidate) index outgrows the logits budget): one cached
        pass over ``[BOS] + q`` scores every prefix, then the suffixes ``[y] + q[i:]`` of all candidates
        inserted at slot i run from that prefix's cache (:meth:`_suffix_log_probs`).
        """
        B = ordered.shape[0]
        V = self.config.vocab_size
        lengths = mask.sum(1)
        if cand is None:
            cand = torch.arange(NUM_SPECIALS, V, device=ordered.device).expand(B, -1)
        out = torch.full((B, V), float("-inf"), device=ordered.device)
        for n in lengths.unique().tolist():
            group = torch.nonzero(lengths == n).squeeze(1)
            per_pass = max(1, min(budget, WORK_CHUNK) // ((n + 1) * cand.shape[1]))
            for rows in group.split(per_pass):
                out[rows] = self._insertion_group(ordered[rows, :n], None if cuisine is None else cuisine[rows],
                                                  slots, budget, cand[rows])
        return out

    def _insertion_group(self, seq: torch.Tensor, cuisine: torch.Tensor | None, slots, budget: int,
                         cand: torch.Tensor) -> torch.Tensor:
        """:meth:`_insertion_scores` of ``G`` queries ``seq [G, n]`` of one length (no padding) and their
        candidates ``cand [G, C]`` → ``[G, V]``."""
        G, n = seq.shape
        V = self.config.vocab_size
        cache = KVCache()
        logits = self(*self.with_bos(seq, torch.ones_like(seq, dtype=torch.bool)), cuisine, cache=cache).logits
        logp = logits.float() - torch.logsumexp(logits.float(), -1, keepdim=True)  # [G, n+1, V]
        # log p(q[:i]) for every prefix i = 0..n, and log p(y | q[:i]) of every candidate
        prefix_ll = F.pad(logp[:, :n].gather(-1, seq[..., None]).squeeze(-1).cumsum(1), (1, 0))  # [G, n+1]
        allowed = torch.ones(G, V, dtype=torch.bool, device=seq.device)
        allowed[:, :NUM_SPECIALS] = False
        allowed.scatter_(1, seq, False)
        where = slots(seq, cand)  # [G, S, C]
        g, s, c = (t.reshape(-1) for t in torch.meshgrid(*(torch.arange(d, device=seq.device)
                                                           for d in where.shape), indexing="ij"))
        i, y = where.reshape(-1), cand[g, c]
        keep = allowed[g, y]  # a query's own ids (and specials) stay -inf
        g, s, i, y = g[keep], s[keep], i[keep], y[keep]
        ll = prefix_ll[g, i] + logp[g, i, y]
        for slot in i.unique().tolist():
            at = torch.nonzero(i == slot).squeeze(1)
            ll[at] += self._suffix_log_probs(cache, seq, g[at], slot, y[at], budget)
        grid = torch.full((G, where.shape[1], V), float("-inf"), device=seq.device)
        grid[g, s, y] = ll
        return torch.logsumexp(grid, 1) - math.log(where.shape[1])

    def _suffix_log_probs(self, cache: KVCache, seq: torch.Tensor, rows: torch.Tensor, slot: int, y: torch.Tensor,
                          budget: int) -> torch.Tensor:
        """``[N]`` log p(seq[r, slot:] + [EOS] | [BOS] + seq[r, :slot] + [y]) for ``rows [N]`` (sorted), candidates
        ``y [N]``: the suffix ``[y] + seq[r, slot:]`` (L = n - slot + 1 positions) runs from ``cache`` (the pass
        over ``[BOS] + seq``) cut after the prefix: shared by all candidates of a query (:class:`SharedPrefix`) for
        suffixes up to ``SHARED_SUFFIX`` long, else copied per candidate (:meth:`KVCache.select`); in chunks of at
        most ``min(budget, WORK_CHUNK)`` logits and copied keys/values."""
        V = self.config.vocab_size
        L = seq.shape[1] - slot + 1
        shared = L <= SHARED_SUFFIX
        past_cols = 0 if shared else cache.prefix + slot + 1
        per_row = L * V + 2 * len(self.blocks) * (past_cols + L) * self.config.d_model  # logits + keys/values
        out = []
        for chunk in torch.arange(len(rows), device=seq.device).split(max(1, min(budget, WORK_CHUNK) // per_row)):
            r = rows[chunk]
            suffix = torch.cat([y[chunk, None], seq[r, slot:]], 1)  # [N, L]
            target = torch.cat([seq[r, slot:], suffix.new_full((len(r), 1), EOS)], 1)
            past = SharedPrefix(cache, r, slot + 1) if shared else cache.select(r, slot + 1)
            logits = self(suffix, cache=past).logits.float()
            logp = logits.gather(-1, target[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)
            out.append(logp.sum(1))
        return torch.cat(out)

    def generation_budget(self, max_new: int, fed: int) -> int:
        """How many ingredients generation may add after ``fed`` input positions: ``max_new`` capped by
        ``max_len`` (with positions) and by the number of ingredients."""
        if self.config.positions:
            max_new = min(max_new, self.config.max_len - fed)
        return max(0, min(max_new, self.config.vocab_size - NUM_SPECIALS))

    @inference
    def complete_ids(self, tokens: torch.Tensor, mask: torch.Tensor, max_new: int = 20,
                     cuisine: torch.Tensor | None = None, temperature: float = 0.0, top_k: int | None = None,
                     generator: torch.Generator | None = None, return_probs: bool = False):
        """Generate the rest of each query ``[B, T]`` until it stops or ``max_new`` ingredients.

        It stops when [EOS] is chosen, or, with ``config.stop_threshold`` set (tuned on validation), when the
        probability of going on, 1 − p([EOS]), falls below it (the ingredient added is then the best one other
        than [EOS]). The query is fed in the training order (``given``: as given; the rest is appended after it).
        Greedy (deterministic) when ``temperature == 0``; never repeats, never emits a special or a query id
        (they are -inf in every step's distribution). The padded queries ``[BOS] + q`` run once into a
        :class:`KVCache`; each step then feeds one token per row (a finished row's is ignored).

        ``return_probs``: ``(ids, probs)``, ``probs[b][i]`` = 1 − p([EOS]) when ``ids[b][i]`` was added (a
        higher threshold's greedy completion is the prefix whose values all reach it: ``returns_stop_probs``).
        """
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        B = tokens.shape[0]
        cuisine = self._check_cuisine(cuisine, B)
        inp, m = self.with_bos(self._ordered(tokens, mask, 0), mask)
        max_new = self.generation_budget(self.stop_budget(max_new), inp.shape[1])
        if max_new == 0:
            return ([[] for _ in range(B)], [[] for _ in range(B)]) if return_probs else [[] for _ in range(B)]
        rows = torch.arange(B, device=inp.device)
        cache = KVCache()
        last = self(inp, m, cuisine, cache=cache).logits[rows, m.sum(1) - 1]  # [B, V]
        done = torch.zeros(B, dtype=torch.bool, device=inp.device)
        generated = torch.full((B, max_new), PAD, dtype=torch.long, device=inp.device)
        go_on = torch.zeros(B, max_new, device=inp.device)  # 1 − p([EOS]) at each step
        threshold = self.config.stop_threshold
        for step in range(max_new):
            nxt, go_on[:, step] = self._next_or_stop(last.float(), threshold, temperature, top_k, generator)
            done = done | (nxt == EOS)
            generated[~done, step] = nxt[~done]
            if bool(done.all()) or step == max_new - 1:
                break
            last = self(nxt[:, None], cache=cache).logits[:, 0]
        ids = [[i for i in row if i >= NUM_SPECIALS] for row in generated.tolist()]
        if not return_probs:
            return ids
        return ids, [p[:len(row)] for p, row in zip(go_on.tolist(), ids, strict=True)]

    @staticmethod
    def _next_or_stop(logits: torch.Tensor, threshold: float | None, temperature: float, top_k: int | None,
                      generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One generation step from ``logits [B, V]``: the next id ([EOS] = stop) and 1 − p([EOS]) ``[B]``."""
        go_on = 1.0 - torch.softmax(logits, -1)[:, EOS]
        if threshold is None:
            return sample_from_logits(logits, temperature, top_k, generator), go_on
        rest = logits.index_fill(1, torch.tensor([EOS], device=logits.device), float("-inf"))
        nxt = sample_from_logits(rest, temperature, top_k, generator)
        stop = (go_on < threshold) | ~torch.isfinite(rest).any(-1)  # or nothing left to add
        return torch.where(stop, torch.full_like(nxt, EOS), nxt), go_on
