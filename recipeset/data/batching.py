"""Length-grouped batching: batches of sets of similar size, so little of a padded ``[B, T]`` batch is padding.

A batch is padded to its longest set. Cut from a plain permutation of flavornet (mean 8.2 ingredients, up to
32), a training batch of 64 is padded to ~18 positions: 46% of the positions are real, the rest is work on
padding. Two samplers fix that:

- :func:`bucket_batches` (training): the epoch's random order is cut into *pools* of ``pool_batches`` batches;
  each pool is sorted by set size (stable, so recipes of one size stay in random order) and cut into batches;
  then all batches of the epoch are shuffled. A pool of 64 batches of 64 (4096 recipes) holds every common set
  size many times over, so a batch spans one or two sizes (97% real positions on flavornet), while the
  pools keep the epoch a random mixture: which recipes share a pool, and the order of the batches, are random.
  What changes against a plain permutation: each row is still trained on once per epoch at a uniformly random
  step, but a batch holds sets of similar size, so a loss averaged over a batch's positions (``clm``) weighs a
  batch of short sets as much as one of long sets (per recipe, short sets weigh a little more than before);
  and ``k-perms`` copies of one recipe (same size) that fall into one pool often share a batch (a copy's chance
  to meet another of its ``k - 1`` in its pool is about ``(k - 1) · pool / rows``).
- :func:`sorted_batches` (evaluation, validation): all rows sorted by size, cut into chunks; the caller puts
  each result back at its row, so per-query results do not depend on the grouping.
"""

from __future__ import annotations

import numpy as np


def chunks(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` (int64 ``[M]``) cut into consecutive batches of ``batch_size`` (the last one may be shorter)."""
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def bucket_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int, pool_batches: int,
                   seed: int) -> list[np.ndarray]:
    """The batches of one epoch, grouped by set size inside random pools.

    order: int64 ``[M]`` the rows the epoch trains on, in random order (a permutation, a curriculum's pool in
    random order, or weighted draws with replacement — a row drawn twice is simply two entries);
    lengths: int64 ``[N]`` the set size of every row; ``pool_batches``: the pool size in batches (0: no grouping,
    the plain ``chunks(order, batch_size)``); ``seed``: the shuffle of the batches (derive it from
    ``(seed, epoch)`` for resumable training).

    Returns ``ceil(M / batch_size)`` int64 arrays holding every entry of ``order`` exactly once: full batches in
    a random order, then the epoch's one partial batch (``M mod batch_size`` rows — the longest sets of the last
    pool), last as in the plain chunking. Pools are consecutive slices of ``order``, ``pool_batches *
    batch_size`` long (the last one takes the rest).
    """
    order = np.asarray(order, dtype=np.int64)
    if pool_batches <= 0:
        return chunks(order, batch_size)
    pool = pool_batches * batch_size
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        members = order[start:start + pool]
        batches.extend(chunks(members[np.argsort(lengths[members], kind="stable")], batch_size))
    partial = [b for b in batches if len(b) < batch_size]  # at most one: the end of the last pool
    full = [b for b in batches if len(b) == batch_size]
    shuffle = np.random.default_rng(seed).permutation(len(full))
    return [full[i] for i in shuffle] + partial


def sorted_batches(lengths: np.ndarray, batch_size: int, by_length: bool = True) -> list[np.ndarray]:
    """Rows ``0 .. N-1`` (``lengths``: int64 ``[N]``) in batches of ``batch_size``: sorted by set size (stable)
    when ``by_length``, else in row order. Deterministic; the caller scatters results back by row."""
    n = len(lengths)
    order = np.argsort(lengths, kind="stable") if by_length else np.arange(n, dtype=np.int64)
    return chunks(order.astype(np.int64), batch_size)


def real_fraction(batches: list[np.ndarray], lengths: np.ndarray) -> float:
    """Real positions over padded positions (``Σ len`` over ``Σ B·max len``) when each batch is padded to its
    longest set."""
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(len(b) * int(lengths[b].max(initial=0)) for b in batches)
    return real / max(padded, 1)
