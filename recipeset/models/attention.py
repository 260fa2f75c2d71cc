"""Set Transformer attention blocks (Lee et al. 2019) on ``F.scaled_dot_product_attention``.

MAB(X, Y) lets the rows of X attend to the rows of Y; SAB(X) = MAB(X, X); ISAB attends through m learned
inducing points (O(n·m) instead of O(n²)); PMA pools a set into k learned seed vectors.

All blocks are pre-LayerNorm residual blocks with an MLP::

    H   = X + Attn(LN(X), LN(Y))
    out = H + MLP(LN(H))

Masks are boolean key-padding masks, ``True`` on real elements (the same convention as ``Batch.mask``). SAB and
ISAB also run packed rows (training, :mod:`recipeset.data.packing`): several sets a row, told apart by their
sequence ids, each element attending only to its own set (ISAB: each set through its own copy of the inducing
points), so each set's outputs are those it has alone.
Two guarantees the tests check:

* a padded position never changes a real position's output (real queries only attend to real keys);
* no attention row is ever fully masked, so an empty set gives finite outputs: in a SAB every position may
  also attend to itself (for a real position that is a real key anyway), and blocks whose queries are learned
  vectors (PMA seeds, ISAB inducing points) always see one learned "sink" key/value besides the set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recipeset.data.packing import block_diagonal_mask, sequence_index


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(D, 4D) → GELU → Linear(4D, D) → dropout."""

    def __init__(self, d_model: int, dropout: float = 0.0, mult: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, mult * d_model)
        self.proj = nn.Linear(mult * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class MAB(nn.Module):
    """Multihead attention block: rows of ``x`` attend to rows of ``y``.

    ``sink=True`` adds one learned key/value that every query can always attend to, so a query whose
    keys are all padding (an empty set) still has a well-defined, finite output.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, sink: bool = False) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_kv = nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)  # fused key/value projection
        self.proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)
        # the sink lives in the (normalised) input space of the key/value projection
        self.sink = nn.Parameter(torch.randn(1, 1, d_model) * 0.02) if sink else None

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        x:         ``[B, Nq, D]`` queries
        y:         ``[B, Nk, D]`` keys/values
        key_mask:  ``[B, Nk]`` bool, True on real keys (None: all real)
        attn_mask: ``[B, Nq, Nk]`` bool, a full mask (overrides ``key_mask``; used by SAB)
        returns    ``[B, Nq, D]``
        """
        B, Nq, D = x.shape
        h = self.n_heads
        kv_in = self.ln_kv(y)
        if attn_mask is None and key_mask is not None:
            attn_mask = key_mask[:, None, :].expand(B, Nq, -1)
        if self.sink is not None:
            kv_in = torch.cat([self.sink.expand(B, 1, D), kv_in], dim=1)
            if attn_mask is not None:
                attn_mask = torch.cat([attn_mask.new_ones(B, Nq, 1), attn_mask], dim=2)
        q = self.q(self.ln_q(x)).view(B, Nq, h, D // h).transpose(1, 2)  # [B, h, Nq, Dh]
        k, v = self.kv(kv_in).split(D, dim=2)
        k = k.view(B, -1, h, D // h).transpose(1, 2)  # [B, h, Nk, Dh]
        v = v.view(B, -1, h, D // h).transpose(1, 2)
        mask = None if attn_mask is None else attn_mask[:, None]  # broadcast over heads
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.resid_dropout(self.proj(a.transpose(1, 2).reshape(B, Nq, D)))
        return x + self.mlp(self.ln_mlp(x))


class SAB(nn.Module):
    """Set attention block: self-attention among the elements of a set (permutation equivariant)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mab = MAB(d_model, n_heads, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                sequence_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, N, D]``, mask ``[B, N]`` (True on real elements) → ``[B, N, D]``; or packed rows: the sets of
        ``sequence_ids [B, N]`` (-1 on padding; ``mask`` unused), each attending to itself only."""
        if sequence_ids is not None:
            return self.mab(x, x, attn_mask=block_diagonal_mask(sequence_ids))
        if mask is None:
            return self.mab(x, x)
        N = x.shape[1]
        # real keys, plus the diagonal: a padded row then attends to itself instead of to nothing
        eye = torch.eye(N, dtype=torch.bool, device=x.device)
        return self.mab(x, x, attn_mask=mask[:, None, :] | eye)


class ISAB(nn.Module):
    """Induced set attention block: H = MAB(I, X); out = MAB(X, H) with m learned inducing points I."""

    def __init__(self, d_model: int, n_heads: int, n_inducing: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(1, n_inducing, d_model) / math.sqrt(d_model))
        self.mab_in = MAB(d_model, n_heads, dropout, sink=True)  # inducing points may face an empty set
        self.mab_out = MAB(d_model, n_heads, dropout)  # keys are the m inducing summaries: never padded

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                sequence_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, N, D]``, mask ``[B, N]`` (True on real elements) → ``[B, N, D]``; or packed rows: the sets of
        ``sequence_ids [B, N]`` (-1 on padding; ``mask`` unused), see :meth:`_forward_packed`."""
        if sequence_ids is not None:
            return self._forward_packed(x, sequence_ids)
        h = self.mab_in(self.inducing.expand(x.shape[0], -1, -1), x, key_mask=mask)
        return self.mab_out(x, h)

    def _forward_packed(self, x: torch.Tensor, sequence_ids: torch.Tensor) -> torch.Tensor:
        """Each of a row's S sets (its padding one more) gets its own m inducing points: the row's S·m queries,
        query k belonging to set k // m, attend to that set's elements only (and the sink), and each element to
        its own set's m summaries only."""
        m = self.inducing.shape[1]
        own = sequence_index(sequence_ids)  # [B, N]
        S = int(own.max()) + 1
        owner = torch.arange(S, device=x.device).repeat_interleave(m)  # [S·m]: the set of each inducing query
        allowed = owner[None, :, None] == own[:, None, :]  # [B, S·m, N]
        h = self.mab_in(self.inducing.repeat(1, S, 1).expand(x.shape[0], -1, -1), x, attn_mask=allowed)
        return self.mab_out(x, h, attn_mask=allowed.transpose(1, 2))


class PMA(nn.Module):
    """Pooling by multihead attention: k learned seeds attend to the set → ``[B, k, D]`` (invariant)."""

    def __init__(self, d_model: int, n_heads: int, n_seeds: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(1, n_seeds, d_model) / math.sqrt(d_model))
        self.mab = MAB(d_model, n_heads, dropout, sink=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                seed_shift: torch.Tensor | None = None) -> torch.Tensor:
        """
        x:          ``[B, N, D]`` set elements
        mask:       ``[B, N]`` True on real elements
        seed_shift: ``[B, D]`` optional vector added to every seed (conditioning, e.g. on a cuisine)
        returns     ``[B, k, D]``
        """
        seeds = self.seeds.expand(x.shape[0], -1, -1)
        if seed_shift is not None:
            seeds = seeds + seed_shift[:, None, :]
        return self.mab(seeds, x, key_mask=mask)
