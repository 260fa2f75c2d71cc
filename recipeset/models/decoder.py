"""CausalDecoder: a GPT-style next-ingredient model (nanoGPT layout: norm → attention → MLP → block → model).

The decoder is fed ``[BOS] + ingredients`` in some order; position t predicts token t+1. Positional embeddings
are off by default, as in Inverse Cooking's ingredient decoder. That is "no positions", not "order-free": the
causal mask still makes every prefix ordered. Ingredients already in a prefix are -inf in the next-step
distribution (a set never repeats), and so is every special except [EOS].

Right padding plus the causal mask means a padded position never reaches a real one, so attention needs no
padding mask and keeps the fused ``is_causal`` kernel.

``train_order = "given"`` (data whose order means something, e.g. the synthetic generator's ordered mode): a
query is fed as it came, and ``joint`` scoring does not know where the missing ingredient belonged, so it
marginalises over every insertion slot (see :meth:`CausalDecoder._joint_scores_given`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recipeset.data.ordering import order_ids
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


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.c_attn = nn.Linear(d_model, 3 * d_model)  # fused q, k, v
        self.c_proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, D)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the decoder shared attention.MLP name its layers c_fc / c_proj
        for old, new in (("mlp.c_fc.", "mlp.fc."), ("mlp.c_proj.", "mlp.proj.")):
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


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
    coherence_head: bool = False  # "do these belong together" logit on the pooled state; adds segment embeddings
    embedding: str = spec("learned", choices=EMBEDDINGS, kind="embedding")  # "learned" table (tied to the
    #                                 output head) | "features" (fixed, projected)
    n_features: int = spec(0, ge=0)  # width F of input_features (set automatically for embedding="features")
    feature_bias: bool = False  # with "features": add a learned per-id vector to the projection
    train_order: str = spec("frequency", choices=ORDERS)  # the training order; completion feeds queries in it
    joint_orders: int = spec(4, ge=1)  # orders averaged (log-mean-exp) in "joint" scoring for a random order
    next_orders: int = spec(1, ge=1)  # orders averaged in "next" scoring when train_order is random


@register_model
class CausalDecoder(RecipeModel):
    """GPT-style decoder over ingredient ids. See the module docstring."""

    model_type = "decoder"
    config_class = DecoderConfig
    objectives = ("clm", "cls", "coherence", "set")
    set_head = "sequence"
    default_objective = "clm"
    scoring_modes = ("next", "joint")
    about = {"what": "GPT-style causal decoder over ingredient ids (no positions by default); scores `next` "
                     "(the next-ingredient distribution after the query in its training order) and `joint` "
                     "(log-likelihood of query ∪ {y})",
             "stops": "`[EOS]`"}

    @classmethod
    def configure(cls, params, objectives, order, max_set):
        params["train_order"] = order  # completion must feed queries in the order the run trains in
        params.setdefault("max_len", max(64, max_set + 2))
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
                segments: torch.Tensor | None = None) -> ModelOutput:
        """
        tokens:   ``[B, T]`` ``[BOS] + ingredients``, right-padded with [PAD]
        mask:     ``[B, T]`` True on real tokens (only used for pooling; None = all real)
        cuisine:  ``[B]`` cuisine ids (-1 unknown); used only when ``config.cuisine_condition``
        segments: ``[B, T]`` 0/1 segment ids (coherence pairs); needs ``coherence_head``
        returns   ModelOutput with ``logits [B, T, V]`` (position t predicts token t+1), ``hidden [B, T, D]``,
                  ``pooled [B, D]`` (mean of hidden over ``mask``) and the configured heads
        """
        c = self.config
        B, T = tokens.shape
        x = self.embed(tokens)
        if self.wpe is not None:
            if T > c.max_len:
                raise RecipesetError(f"decoder input of length {T} exceeds model.max_len={c.max_len}")
            x = x + self.wpe(torch.arange(T, device=tokens.device))
        if segments is not None:
            if self.segment is None:
                raise RecipesetError("segments given but the model has no coherence_head (segment embeddings)")
            x = x + self.segment(segments)
        prefix = 0
        if self.cuisine_prefix is not None:
            cond = self.cuisine_prefix(self._cuisine_index(cuisine, B, tokens.device))  # [B, D]
            x = torch.cat([cond[:, None, :], x], dim=1)
            prefix = 1
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        h = self.ln_f(x)[:, prefix:]  # drop the prefix so outputs stay aligned with tokens

        logits = self._head_logits(h, self.lm_head, self.embed.tied_weight) + self.logit_bias
        # an id at any position s <= t is not a candidate at t: scatter -inf through a [B, T, T] index
        upto = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
        seen = torch.where(upto, tokens[:, None, :], torch.full_like(tokens[:, None, :], PAD))
        logits = logits.scatter(-1, seen, float("-inf"))

        m = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
        w = m.to(h.dtype)[..., None]
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1.0)
        return ModelOutput(
            logits=logits, hidden=h, pooled=pooled,
            cuisine_logits=None if self.cuisine_head is None else self.cuisine_head(pooled),
            coherence_logits=None if self.coherence_head is None else self.coherence_head(pooled).squeeze(-1),
        )

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
        elif mode == "joint" and self.given_order:
            n_orders = 1
            scores = self._joint_scores_given(tokens, mask, cuisine)[None]
        elif mode == "joint":
            n_orders = self.config.joint_orders if self.random_order else 1
            scores = torch.stack([self._joint_scores(tokens, mask, cuisine, k) for k in range(n_orders)])
        else:
            raise RecipesetError(f"mode must be 'next' or 'joint', got {mode!r}")
        scores = torch.logsumexp(scores, 0) - math.log(n_orders)
        scores[:, :NUM_SPECIALS] = float("-inf")
        return mask_ids(scores, tokens, mask)

    def _next_scores(self, tokens, mask, cuisine, k: int) -> torch.Tensor:
        inp, m = self.with_bos(self._ordered(tokens, mask, k), mask)
        logits = self(inp, m, cuisine).logits  # [B, T+1, V]
        last = logits[torch.arange(inp.shape[0], device=inp.device), m.sum(1) - 1]
        return F.log_softmax(last.float(), dim=-1)

    def _joint_scores(self, tokens, mask, cuisine, k: int, budget: int = 1 << 24) -> torch.Tensor:
        """``[B, V]`` log p(q ∪ {y}) in order ``k``; candidate sequences run in chunks of ~``budget`` logits."""
        B, T = tokens.shape
        V = self.config.vocab_size
        n_cand = V - NUM_SPECIALS
        total = B * n_cand
        chunk = max(1, budget // ((T + 2) * V))
        out = torch.full((B, V), float("-inf"), device=tokens.device)
        flat = out.view(-1)
        for start in range(0, total, chunk):
            n = torch.arange(start, min(start + chunk, total), device=tokens.device)
            b, y = n // n_cand, n % n_cand + NUM_SPECIALS
            cand = torch.cat([tokens[b], y[:, None]], 1)  # y after the padding: sorting moves it into place
            cmask = torch.cat([mask[b], mask.new_ones(len(n), 1)], 1)
            seq = self._ordered(cand, cmask, k)
            flat[b * V + y] = self._sequence_log_probs(seq, cmask, None if cuisine is None else cuisine[b])
        return out

    def _joint_scores_given(self, tokens, mask, cuisine, budget: int = 1 << 24) -> torch.Tensor:
        """``[B, V]`` log Σ_i (1/(n+1)) p(q[:i] + [y] + q[i:] + [EOS]) for queries in the given order.

        A leave-one-out query hides where y was, so every insertion slot i = 0..n (n = |q|) is a hypothesis with
        a uniform prior. The (query, slot, candidate) sequences run in chunks of ~``budget`` logits; only slots
        inside each query are built (a short query in a padded batch costs no extra passes).
        """
        B, T = tokens.shape
        V = self.config.vocab_size
        n_cand = V - NUM_SPECIALS
        dev = tokens.device
        lengths = mask.sum(1)  # [B]
        slot = torch.arange(T + 1, device=dev)
        qb, qi = torch.nonzero(slot[None, :] <= lengths[:, None], as_tuple=True)  # (query, slot) pairs [P]
        total = len(qb) * n_cand
        chunk = max(1, budget // ((T + 2) * V))
        per_slot = torch.empty(total, device=dev)
        pos = torch.arange(T + 1, device=dev)[None, :]
        pad_col = tokens.new_full((B, 1), PAD)
        before, after = torch.cat([tokens, pad_col], 1), torch.cat([pad_col, tokens], 1)  # [B, T+1]: j, j-1
        for start in range(0, total, chunk):
            n = torch.arange(start, min(start + chunk, total), device=dev)
            p, y = n // n_cand, n % n_cand + NUM_SPECIALS
            b, i = qb[p], qi[p]
            seq = torch.where(pos < i[:, None], before[b], torch.where(pos == i[:, None], y[:, None], after[b]))
            cmask = pos <= lengths[b][:, None]  # n + 1 ingredients
            per_slot[n] = self._sequence_log_probs(seq, cmask, None if cuisine is None else cuisine[b])
        # log-sum-exp over each query's slots: scatter into [B, T+1, n_cand] with -inf on slots past the query
        grid = torch.full((B, T + 1, n_cand), float("-inf"), device=dev)
        grid[qb, qi] = per_slot.view(-1, n_cand)
        out = torch.full((B, V), float("-inf"), device=dev)
        out[:, NUM_SPECIALS:] = torch.logsumexp(grid, 1) - torch.log1p(lengths.float())[:, None]
        return out

    def _sequence_log_probs(self, seq: torch.Tensor, cmask: torch.Tensor,
                            cuisine: torch.Tensor | None) -> torch.Tensor:
        """``[N]`` log p(seq + [EOS]) of right-padded ingredient sequences ``seq [N, L]`` (``cmask`` True on real)."""
        N, L = seq.shape
        inp, m = self.with_bos(seq, cmask)  # [N, L+1]
        lengths = cmask.sum(1)  # ingredients per sequence; [EOS] is predicted at position `lengths`
        target = torch.cat([seq, seq.new_full((N, 1), PAD)], 1)
        target = target.scatter(1, lengths[:, None], EOS)
        valid = torch.arange(L + 1, device=seq.device)[None, :] <= lengths[:, None]
        logits = self(inp, m, cuisine).logits.float()
        # log p(target) = logit[target] - logsumexp(logits): no second [N, T, V] tensor
        logp = logits.gather(-1, target[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)
        return torch.where(valid, logp, torch.zeros_like(logp)).sum(1)

    @inference
    def complete_ids(self, tokens: torch.Tensor, mask: torch.Tensor, max_new: int = 20,
                     cuisine: torch.Tensor | None = None, temperature: float = 0.0, top_k: int | None = None,
                     generator: torch.Generator | None = None) -> list[list[int]]:
        """Generate the rest of each query ``[B, T]`` until [EOS] or ``max_new`` ingredients.

        The query is fed in the training order (``given``: as given; the rest is appended after it).
        Greedy (deterministic) when ``temperature == 0``; never repeats, never emits a special or a query id
        (they are -inf in every step's distribution).
        """
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        B = tokens.shape[0]
        cuisine = self._check_cuisine(cuisine, B)
        inp, m = self.with_bos(self._ordered(tokens, mask, 0), mask)
        if self.config.positions:
            max_new = min(max_new, self.config.max_len - inp.shape[1])
        max_new = max(0, min(max_new, self.config.vocab_size - NUM_SPECIALS))
        buf = torch.cat([inp, inp.new_full((B, max_new), PAD)], 1)
        lengths = m.sum(1)
        rows = torch.arange(B, device=buf.device)
        done = torch.zeros(B, dtype=torch.bool, device=buf.device)
        generated = torch.full((B, max_new), PAD, dtype=torch.long, device=buf.device)
        for step in range(max_new):
            width = int(lengths.max())
            logits = self(buf[:, :width], None, cuisine).logits
            nxt = sample_from_logits(logits[rows, lengths - 1].float(), temperature, top_k, generator)
            done = done | (nxt == EOS)
            go = ~done
            buf[rows[go], lengths[go]] = nxt[go]
            generated[go, step] = nxt[go]
            lengths = lengths + go.long()
            if bool(done.all()):
                break
        return [[i for i in row if i >= NUM_SPECIALS] for row in generated.tolist()]
