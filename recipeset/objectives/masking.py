"""Input corruption for the self-supervised objectives: MLM masking, replaced-ingredient detection (RTD) and
coherence pairs. Everything works on whole ``[B, T]`` tensors (right-padded, ``mask`` True on ingredients)
with a seeded ``torch.Generator`` (on the tensors' device); no loop over the batch.

A corrupted set never contains a duplicate ingredient and never a special token where an ingredient belongs:
a duplicate would give the corruption away.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recipeset.data.vocab import MASK, NULL, NUM_SPECIALS, PAD
from recipeset.errors import RecipesetError

IGNORE = -100


@dataclass
class MLMBatch:
    """Output of :func:`mlm_mask` (``T' = T`` or ``T + 1`` when a [NULL] position was appended).

    tokens:            int64 ``[B, T']`` corrupted input
    mask:              bool  ``[B, T']`` True on real positions (including an appended [MASK])
    labels:            int64 ``[B, T']`` original id on the masked positions ([NULL] on an appended one),
                       -100 elsewhere
    masked_with_token: bool  ``[B, T']`` True where the input is [MASK] (the 80% and the appended position)
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    masked_with_token: torch.Tensor


def _rand(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=like.device)


def _sample_absent(tokens: torch.Tensor, mask: torch.Tensor, need: torch.Tensor, vocab_size: int,
                   num_specials: int, generator: torch.Generator | None,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row draw ``need[b]`` *distinct* ingredient ids that are not in the row's set.

    Gumbel-top-k over the vocabulary: exact sampling without replacement (uniform, or proportional to
    ``weights [B, V]``), with specials and present ingredients excluded by a -inf score. Only rows that need
    a draw are scored, so the cost is O(rows · V). Returns ``ids [B, k]`` and ``ok [B, k]`` (False where the
    row ran out of candidates; k = max need).
    """
    B = tokens.shape[0]
    k = min(int(need.max()) if B else 0, vocab_size)
    ids = torch.zeros(B, k, dtype=torch.long, device=tokens.device)
    ok = torch.zeros(B, k, dtype=torch.bool, device=tokens.device)
    if k == 0:
        return ids, ok
    rows = (need > 0).nonzero().squeeze(1)
    u = _rand((rows.numel(), vocab_size), tokens, generator)
    if weights is None:
        scores = u  # the order of i.i.d. uniforms is a uniform random permutation
    else:
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
        scores = weights[rows].float().clamp_min(1e-30).log() + gumbel
    scores[:, :num_specials] = float("-inf")
    present = torch.where(mask[rows], tokens[rows], PAD)  # PAD is a special: already excluded
    scores.scatter_(1, present, float("-inf"))
    vals, top = scores.topk(k, dim=1)
    ids[rows] = top
    ok[rows] = torch.isfinite(vals)
    return ids, ok


def _fill_from_table(flags: torch.Tensor, ids: torch.Tensor, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The j-th flagged position of each row takes ``ids[b, j]``: ``[B, T]`` replacement ids and validity."""
    if ids.shape[1] == 0:
        return torch.zeros_like(flags, dtype=torch.long), torch.zeros_like(flags)
    rank = (flags.long().cumsum(1) - 1).clamp(0, ids.shape[1] - 1)
    return ids.gather(1, rank), ok.gather(1, rank) & flags


def mlm_mask(tokens: torch.Tensor, mask: torch.Tensor, vocab_size: int, prob: float = 0.15,
             generator: torch.Generator | None = None, mask_id: int = MASK, num_specials: int = NUM_SPECIALS,
             null_prob: float = 0.0, null_id: int = NULL) -> MLMBatch:
    """BERT masking for sets.

    tokens/mask ``[B, T]``. Each ingredient is selected with probability ``prob``; a non-empty set with no
    selection gets one uniformly chosen position (the at-least-one rule, so the per-position rate of a set of
    size n is ``prob + (1 − prob)^n / n``). Selected positions: 80% -> [MASK], 10% -> a random ingredient,
    10% unchanged; labels are the original ids there and -100 elsewhere. A random replacement is drawn
    uniformly from the ingredients (ids ≥ ``num_specials``) absent from the set, distinct within the set, so
    the corrupted set has no duplicate; when the vocabulary has no absent ingredient left it stays unchanged.

    ``null_prob``: with this probability a non-empty set becomes a "nothing is missing" example: none of its
    ingredients is masked and one [MASK] position labelled ``null_id`` is appended right after its last
    ingredient (the returned tensors are then one column wider). This teaches the encoder the stop signal
    used by ``complete`` ("q plus one [MASK]" -> [NULL]).
    """
    if not 0.0 < prob <= 1.0 or not 0.0 <= null_prob <= 1.0:
        raise RecipesetError(f"mlm masking: prob must be in (0, 1] and null_prob in [0, 1]; got {prob}, {null_prob}")
    B, T = tokens.shape
    n = mask.sum(1)
    nonempty = n > 0
    is_null = (_rand((B,), tokens, generator) < null_prob) & nonempty if null_prob > 0 else torch.zeros_like(nonempty)

    select = (_rand((B, T), tokens, generator) < prob) & mask
    # At least one per non-empty set: a uniformly random valid position (argmax of random keys).
    if T > 0:
        keys = _rand((B, T), tokens, generator).masked_fill(~mask, -1.0)
        forced = torch.zeros_like(select).scatter_(1, keys.argmax(1, keepdim=True), True)
        select |= forced & (~select.any(1) & nonempty)[:, None]
    select &= ~is_null[:, None]

    r = _rand((B, T), tokens, generator)
    to_mask = select & (r < 0.8)
    to_random = select & (r >= 0.8) & (r < 0.9)
    ids, ok = _sample_absent(tokens, mask, to_random.sum(1), vocab_size, num_specials, generator)
    repl, repl_ok = _fill_from_table(to_random, ids, ok)

    out = torch.where(to_mask, mask_id, tokens)
    out = torch.where(repl_ok, repl, out)
    labels = torch.where(select, tokens, IGNORE)
    masked_with_token = to_mask.clone()
    out_mask = mask.clone()

    if bool(is_null.any()):
        pad_col = lambda x, v: torch.cat([x, torch.full_like(x[:, :1], v)], dim=1)  # noqa: E731
        out, out_mask = pad_col(out, PAD), pad_col(out_mask, False)
        labels, masked_with_token = pad_col(labels, IGNORE), pad_col(masked_with_token, False)
        at = torch.zeros_like(out_mask).scatter_(1, n[:, None], True) & is_null[:, None]
        out = torch.where(at, mask_id, out)
        out_mask |= at
        labels = torch.where(at, null_id, labels)
        masked_with_token |= at
    return MLMBatch(out, out_mask, labels, masked_with_token)


def rtd_corrupt(tokens: torch.Tensor, mask: torch.Tensor, vocab_size: int, prob: float = 0.15,
                generator: torch.Generator | None = None, cooccurrence: torch.Tensor | None = None,
                num_specials: int = NUM_SPECIALS) -> tuple[torch.Tensor, torch.Tensor]:
    """Replaced-ingredient detection (ELECTRA-style) corruption.

    tokens/mask ``[B, T]``. Each ingredient is replaced with probability ``prob`` by an ingredient absent
    from the set (and distinct from the set's other replacements: no duplicate, ever). Replacements are
    uniform over the ingredients, or drawn from ``cooccurrence``: a ``[V]`` popularity vector, or a ``[V, V]``
    co-occurrence matrix whose rows of the set's ingredients are summed (harder, plausible negatives).
    A position whose row has no absent candidate left is not replaced.
    Returns ``(tokens [B, T], labels [B, T] float)``: 1.0 replaced, 0.0 original, -100.0 on padding
    (select the counted positions with ``mask``).
    """
    if not 0.0 <= prob <= 1.0:
        raise RecipesetError(f"rtd corruption: prob must be in [0, 1], got {prob}")
    B, T = tokens.shape
    weights = None
    if cooccurrence is not None:
        c = cooccurrence.to(device=tokens.device, dtype=torch.float32)
        if c.shape == (vocab_size,):
            weights = c[None, :].expand(B, vocab_size)
        elif c.shape == (vocab_size, vocab_size):
            rows = c.index_select(0, tokens.clamp_min(0).reshape(-1)).view(B, T, vocab_size)
            weights = torch.where(mask[..., None], rows, 0.0).sum(1)
        else:
            raise RecipesetError(f"rtd corruption: cooccurrence must be [V] or [V, V] with V={vocab_size}, "
                                 f"got {tuple(c.shape)}")
        if bool((weights < 0).any()):
            raise RecipesetError("rtd corruption: cooccurrence weights must be non-negative")
    replace = (_rand((B, T), tokens, generator) < prob) & mask
    ids, ok = _sample_absent(tokens, mask, replace.sum(1), vocab_size, num_specials, generator, weights)
    repl, repl_ok = _fill_from_table(replace, ids, ok)
    out = torch.where(repl_ok, repl, tokens)
    labels = torch.where(mask, repl_ok.float(), float(IGNORE))
    return out, labels


def _single_cycle(B: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A random derangement of ``range(B)`` (B ≥ 2): one cycle through a random order, never a fixed point."""
    pi = _rand((B,), like, generator).argsort()
    partner = torch.empty_like(pi)
    partner[pi] = pi.roll(-1)
    return partner


def coherence_pairs(tokens: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                    neg_prob: float = 0.5, max_attempts: int = 4
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coherence (next-sentence-style) pairs for sets.

    tokens/mask ``[B, T]`` right-padded. A set of size n ≥ 2 is split by position into a first half
    (``n // 2`` ingredients, segment 0) and a second half (the rest, segment 1); order the input with the
    ordering strategy first if a random split is wanted. Each eligible set (n ≥ 2, batch of ≥ 2) is made a
    negative with probability ``neg_prob``: its second half is replaced by the second half of another recipe
    (partners form a random derangement of the batch), dropping every ingredient already in its first half.

    A negative must never rely on a duplicate and must really be incoherent, so a swap is rejected when
    nothing is left or when every kept ingredient also belongs to the set itself (that would be a genuine
    sub-recipe). A rejected row tries other partners (up to ``max_attempts`` derangements); rows that still
    fail are counted and the same number of other eligible positives is turned into negatives (one more
    round), so the fraction of negatives stays at ``neg_prob`` unless the batch cannot supply them. Rows that
    fail in the end stay positives. Sets of size < 2 are positives with a single segment.

    Returns ``(tokens [B, T], mask [B, T], segments [B, T] long 0/1, labels [B] float: 1.0 coherent,
    0.0 swapped)``; the output is right-padded (the kept second half follows the first half).
    """
    if not 0.0 <= neg_prob <= 1.0:
        raise RecipesetError(f"coherence pairs: neg_prob must be in [0, 1], got {neg_prob}")
    B, T = tokens.shape
    device = tokens.device
    n = mask.sum(1)
    pos = torch.arange(T, device=device)[None, :]
    split = torch.where(n >= 2, n // 2, n)  # sets of size < 2: everything is the first segment
    first = mask & (pos < split[:, None])
    second_own = mask & ~first
    eligible = (n >= 2) & (B >= 2)
    want = (_rand((B,), tokens, generator) < neg_prob) & eligible

    in_set = lambda cand, ref, ref_mask: ((cand[:, :, None] == ref[:, None, :]) & ref_mask[:, None, :]).any(-1)  # noqa: E731
    done = torch.zeros(B, dtype=torch.bool, device=device)
    neg_tokens = torch.zeros_like(tokens)
    neg_keep = torch.zeros_like(mask)

    def attempt(rows_wanted: torch.Tensor) -> None:
        nonlocal done, neg_tokens, neg_keep
        for _ in range(max_attempts):
            todo = rows_wanted & ~done
            if not bool(todo.any()):
                return
            partner = _single_cycle(B, tokens, generator)
            cand = tokens[partner]
            cand_valid = mask[partner] & (pos >= (n[partner] // 2)[:, None])  # the partner's second half
            keep = cand_valid & ~in_set(cand, tokens, first)
            novel = keep & ~in_set(cand, tokens, mask)
            ok = todo & novel.any(1)
            neg_tokens = torch.where(ok[:, None], cand, neg_tokens)
            neg_keep = torch.where(ok[:, None], keep, neg_keep)
            done = done | ok

    if B >= 2:
        attempt(want)
        failed = int((want & ~done).sum())
        if failed:
            # Compensate: as many other eligible positives as negatives were lost, chosen at random.
            spare = eligible & ~want
            keys = _rand((B,), tokens, generator).masked_fill(~spare, -1.0)
            take = min(failed, int(spare.sum()))
            if take:
                chosen = torch.zeros_like(spare).scatter_(0, keys.topk(take).indices, True)
                attempt(chosen)

    # Assemble [first half | second half] and compact the valid entries to the left.
    second_tokens = torch.where(done[:, None], neg_tokens, tokens)
    second_valid = torch.where(done[:, None], neg_keep, second_own)
    cat_tokens = torch.cat([tokens, second_tokens], 1)
    cat_valid = torch.cat([first, second_valid], 1)
    cat_seg = torch.cat([torch.zeros_like(tokens), torch.ones_like(tokens)], 1)
    order = (~cat_valid).to(torch.int8).argsort(dim=1, stable=True)[:, :T]
    out_mask = cat_valid.gather(1, order)
    out_tokens = torch.where(out_mask, cat_tokens.gather(1, order), PAD)
    segments = torch.where(out_mask, cat_seg.gather(1, order), 0)
    labels = (~done).float()
    return out_tokens, out_mask, segments, labels
