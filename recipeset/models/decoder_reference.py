"""The decoder's ``joint`` scoring as it was before the KV cache: one full forward pass per (query, candidate, order).

Every candidate sequence ``[BOS] + sort(q ∪ {y}) + [EOS]`` (``given``: every ``q[:i] + [y] + q[i:]``) is built
whole, padded to the batch's longest query, and run through the uncached decoder, so the prefix shared by
candidates is recomputed for each of them. Kept, unchanged in what it computes, as the reference the cached
scoring (:meth:`recipeset.models.decoder.CausalDecoder.completion_scores_ids`) is tested against to 1e-5 and
benchmarked against (:func:`recipeset.bench.bench_joint_scoring`). Not used by training or evaluation.
"""

from __future__ import annotations

import torch

from recipeset.data.vocab import EOS, NUM_SPECIALS, PAD
from recipeset.models.base import inference, sample_from_logits
from recipeset.models.decoder import CausalDecoder


@inference
def joint_scores_reference(model: CausalDecoder, tokens: torch.Tensor, mask: torch.Tensor,
                           cuisine: torch.Tensor | None = None, budget: int = 1 << 24) -> torch.Tensor:
    """``[B, V]`` what ``model.completion_scores_ids(tokens, mask, mode="joint", cuisine=cuisine)`` returns,
    computed the old way (queries ``[B, T]`` right-padded; -inf on specials and on the query's ids)."""
    tokens, mask = tokens.to(model.device), mask.to(model.device)
    cuisine = model._check_cuisine(cuisine, tokens.shape[0])
    if model.given_order:
        scores = joint_scores_given(model, tokens, mask, cuisine, budget)[None]
    else:
        scores = torch.stack([joint_scores_order(model, tokens, mask, cuisine, k, budget)
                              for k in range(model.joint_order_count)])
    return model.combine_orders(scores, tokens, mask)


def joint_scores_order(model: CausalDecoder, tokens, mask, cuisine, k: int, budget: int = 1 << 24) -> torch.Tensor:
    """``[B, V]`` log p(q ∪ {y}) in order ``k``; candidate sequences run in chunks of ~``budget`` logits."""
    B, T = tokens.shape
    V = model.config.vocab_size
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
        seq = model._ordered(cand, cmask, k)
        flat[b * V + y] = sequence_log_probs(model, seq, cmask, None if cuisine is None else cuisine[b])
    return out


def joint_scores_given(model: CausalDecoder, tokens, mask, cuisine, budget: int = 1 << 24) -> torch.Tensor:
    """``[B, V]`` log Σ_i (1/(n+1)) p(q[:i] + [y] + q[i:] + [EOS]) for queries in the given order, every
    (query, slot, candidate) sequence run whole, in chunks of ~``budget`` logits."""
    B, T = tokens.shape
    V = model.config.vocab_size
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
        per_slot[n] = sequence_log_probs(model, seq, cmask, None if cuisine is None else cuisine[b])
    grid = torch.full((B, T + 1, n_cand), float("-inf"), device=dev)
    grid[qb, qi] = per_slot.view(-1, n_cand)
    out = torch.full((B, V), float("-inf"), device=dev)
    out[:, NUM_SPECIALS:] = torch.logsumexp(grid, 1) - torch.log1p(lengths.float())[:, None]
    return out


def sequence_log_probs(model: CausalDecoder, seq: torch.Tensor, cmask: torch.Tensor,
                       cuisine: torch.Tensor | None) -> torch.Tensor:
    """``[N]`` log p(seq + [EOS]) of right-padded ingredient sequences ``seq [N, L]`` (``cmask`` True on real),
    one uncached forward pass over ``[N, L+1]``."""
    N, L = seq.shape
    inp, m = model.with_bos(seq, cmask)  # [N, L+1]
    lengths = cmask.sum(1)  # ingredients per sequence; [EOS] is predicted at position `lengths`
    target = torch.cat([seq, seq.new_full((N, 1), PAD)], 1)
    target = target.scatter(1, lengths[:, None], EOS)
    valid = torch.arange(L + 1, device=seq.device)[None, :] <= lengths[:, None]
    logits = model(inp, m, cuisine).logits.float()
    logp = logits.gather(-1, target[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)
    return torch.where(valid, logp, torch.zeros_like(logp)).sum(1)


@inference
def complete_ids_reference(model: CausalDecoder, tokens: torch.Tensor, mask: torch.Tensor, max_new: int = 20,
                           cuisine: torch.Tensor | None = None, temperature: float = 0.0, top_k: int | None = None,
                           generator: torch.Generator | None = None) -> list[list[int]]:
    """What ``model.complete_ids`` returns, computed the old way: the whole growing buffer ``[B, ≤ T+1+step]``
    re-run through the uncached decoder at every step."""
    tokens, mask = tokens.to(model.device), mask.to(model.device)
    B = tokens.shape[0]
    cuisine = model._check_cuisine(cuisine, B)
    inp, m = model.with_bos(model._ordered(tokens, mask, 0), mask)
    max_new = model.generation_budget(max_new, inp.shape[1])
    buf = torch.cat([inp, inp.new_full((B, max_new), PAD)], 1)
    lengths = m.sum(1)
    rows = torch.arange(B, device=buf.device)
    done = torch.zeros(B, dtype=torch.bool, device=buf.device)
    generated = torch.full((B, max_new), PAD, dtype=torch.long, device=buf.device)
    for step in range(max_new):
        width = int(lengths.max())
        logits = model(buf[:, :width], None, cuisine).logits
        nxt = sample_from_logits(logits[rows, lengths - 1].float(), temperature, top_k, generator)
        done = done | (nxt == EOS)
        go = ~done
        buf[rows[go], lengths[go]] = nxt[go]
        generated[go, step] = nxt[go]
        lengths = lengths + go.long()
        if bool(done.all()):
            break
    return [[i for i in row if i >= NUM_SPECIALS] for row in generated.tolist()]
