"""Incremental inference: the decoder's KV cache gives the uncached forward's logits, joint scoring from the cached
prefix equals the reference (one whole pass per candidate, ``models.decoder_reference``) to 1e-5 for every kind
of order, cached generation is today's token for token, and Deep Sets' incremental pooled sum completes exactly
as re-encoding the set did."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from recipeset.bench import bench_joint_scoring
from recipeset.data.vocab import BOS, EOS, NUM_SPECIALS, Vocabulary
from recipeset.models import CausalDecoder, DecoderConfig, DeepSets, DeepSetsConfig
from recipeset.models.base import append_at_end, pad_ids, safe_log_softmax, sample_from_logits
from recipeset.models.decoder import KVCache, SharedPrefix
from recipeset.models.decoder_reference import complete_ids_reference, joint_scores_reference

torch.set_num_threads(1)
VOCAB = Vocabulary([f"ing{i:02d}" for i in range(22)][::-1], ["french", "italian", "thai"])
V = len(VOCAB)
ATOL = dict(atol=1e-5, rtol=1e-5)
QUERIES = [[15, 9, 12], [10], [], [19, 8, 13, 11], [20, 21, 22], [8, 9], [27, 14, 25, 16, 23]]
CUISINES = torch.tensor([0, -1, 2, 1, 0, 1, 2])


def _randomize(model, seed: int):
    """Larger random weights than the 0.02 init: outputs far from uniform, so the comparisons bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return model


def _decoder(seed: int = 0, **kw) -> CausalDecoder:
    torch.manual_seed(seed)
    config = DecoderConfig(**{"d_model": 16, "n_layers": 2, "n_heads": 2, "dropout": 0.0, **kw})
    return _randomize(CausalDecoder(config, VOCAB).eval(), seed=seed + 1)


DECODERS = {
    "frequency": _decoder(),
    "alphabetical": _decoder(train_order="alphabetical"),
    "shuffle-3-orders": _decoder(train_order="shuffle", joint_orders=3),
    "random-fixed": _decoder(train_order="random-fixed", joint_orders=2),
    "given": _decoder(train_order="given"),
    "frequency-cuisine-positions": _decoder(positions=True, cuisine_condition=True),
    "shuffle-cuisine-positions": _decoder(train_order="shuffle", joint_orders=2, positions=True,
                                          cuisine_condition=True),
    "given-cuisine-positions": _decoder(train_order="given", positions=True, cuisine_condition=True),
}


def _cuisine(model: CausalDecoder, n: int) -> torch.Tensor | None:
    return CUISINES[:n] if model.accepts_cuisine else None


# ---- the cache in the forward pass ---------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["frequency", "frequency-cuisine-positions", "given-cuisine-positions"]),
       rows=st.lists(st.lists(st.integers(NUM_SPECIALS, V - 1), min_size=0, max_size=9, unique=True),
                     min_size=1, max_size=4),
       first=st.integers(1, 6), chunk=st.integers(1, 3))
def test_cached_forward_equals_uncached(name, rows, first, chunk):
    """Rows fed as [BOS] + a right-padded first part, then ``chunk`` tokens at a time (one at a time at the end):
    every position's logits equal those of one uncached pass over each row alone."""
    model = DECODERS[name]
    full = [[BOS, *r] for r in rows]
    cut = [min(len(f), first) for f in full]
    rest = min(len(f) - c for f, c in zip(full, cut, strict=True))  # tokens every row still has
    cuisine = _cuisine(model, len(rows))
    cache = KVCache()
    tokens, mask = pad_ids([f[:c] for f, c in zip(full, cut, strict=True)])
    with torch.no_grad():
        got = [model(tokens, mask, cuisine, cache=cache).logits]
        done = 0
        while done < rest:
            step = chunk if rest - done > 2 else 1
            new = torch.tensor([f[c + done:c + done + step] for f, c in zip(full, cut, strict=True)])
            got.append(model(new, None, cuisine, cache=cache).logits)
            done += step
        for b, f in enumerate(full):
            one = None if cuisine is None else cuisine[b:b + 1]
            expected = model(torch.tensor([f[:cut[b] + rest]]), None, one).logits[0]
            mine = torch.cat([got[0][b, :cut[b]], *(g[b] for g in got[1:])])
            torch.testing.assert_close(mine, expected, **ATOL)


def test_cache_select_and_attention_mask():
    model = DECODERS["frequency-cuisine-positions"]
    tokens, mask = pad_ids([[BOS, 8, 9], [BOS]])
    cache = KVCache()
    with torch.no_grad():
        model(tokens, mask, CUISINES[:2], cache=cache)
    assert cache.prefix == 1 and cache.padded and cache.lengths.tolist() == [3, 1]
    assert cache.keys[0].shape == (2, 2, 4, 8)  # [B, H, cuisine + 3 positions, D/H]
    assert cache.attention_mask(1).shape == (2, 1, 1, 5)
    assert cache.attention_mask(1)[1, 0, 0].tolist() == [True, True, False, False, True]
    sub = cache.select(torch.tensor([0, 0]), 2)
    assert not sub.padded and sub.attention_mask(1) is None and sub.keys[1].shape == (2, 2, 3, 8)
    assert sub.attention_mask(2)[0, 0].tolist() == [[True] * 4 + [False], [True] * 5]


@pytest.mark.parametrize("name", ["frequency", "frequency-cuisine-positions"])
def test_shared_prefix_continues_like_copied_rows(name):
    """Many continuations per cached row (repeats adjacent or not) from the un-copied prefix give the logits of
    the same continuations from KVCache.select's copies."""
    model = DECODERS[name]
    tokens = torch.tensor([[BOS, 8, 9, 10, 11], [BOS, 12, 13, 14, 15], [BOS, 16, 17, 18, 19]])
    rows = torch.tensor([0, 0, 0, 2, 2, 1, 0])
    new = torch.tensor([[20, 10, 11], [21, 10, 11], [22, 10, 11], [20, 18, 19], [23, 18, 19], [8, 14, 15],
                        [24, 10, 11]])
    with torch.no_grad():
        cache = KVCache()
        model(tokens, None, _cuisine(model, 3), cache=cache)
        shared = model(new, cache=SharedPrefix(cache, rows, 2)).logits
        copied = model(new, cache=cache.select(rows, 2)).logits
    torch.testing.assert_close(shared, copied, **ATOL)
    assert len(cache.tokens[0]) == 5  # the shared view extends nothing


def test_positions_past_max_len_are_refused_with_a_cache():
    model = _decoder(positions=True, max_len=4)
    cache = KVCache()
    with torch.no_grad():
        model(torch.tensor([[BOS, 8, 9]]), cache=cache)
        model(torch.tensor([[10]]), cache=cache)
        with pytest.raises(Exception, match="max_len"):
            model(torch.tensor([[11]]), cache=cache)


# ---- joint scoring -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_joint_scores_equal_the_reference(name):
    model = DECODERS[name]
    tokens, mask = pad_ids(QUERIES)
    cuisine = _cuisine(model, len(QUERIES))
    got = model.completion_scores_ids(tokens, mask, mode="joint", cuisine=cuisine)
    expected = joint_scores_reference(model, tokens, mask, cuisine)
    assert torch.equal(torch.isfinite(got), torch.isfinite(expected))
    torch.testing.assert_close(got, expected, **ATOL)


@pytest.mark.parametrize("name", ["frequency", "given-cuisine-positions"])
def test_joint_chunking_and_batching_change_nothing(name):
    model = DECODERS[name]
    tokens, mask = pad_ids(QUERIES)
    cuisine = _cuisine(model, len(QUERIES))
    whole = model.completion_scores_ids(tokens, mask, mode="joint", cuisine=cuisine)
    scorer = model._joint_scores_given if model.given_order else lambda *a, **kw: model._joint_scores(*a, 0, **kw)
    with torch.inference_mode():
        tiny = model.combine_orders(scorer(tokens, mask, cuisine, budget=3 * V)[None], tokens, mask)
    torch.testing.assert_close(tiny, whole, **ATOL)
    for b, q in enumerate(QUERIES):
        alone = model.completion_scores_ids(*pad_ids([q]), mode="joint",
                                            cuisine=None if cuisine is None else cuisine[b:b + 1])
        torch.testing.assert_close(alone[0], whole[b], **ATOL)


@pytest.mark.parametrize("name", ["frequency", "shuffle-3-orders", "given-cuisine-positions"])
@pytest.mark.parametrize("K", [1, 4, 9])
def test_reranked_joint_is_exact_on_the_top_candidates_and_first_stage_ordered_below(name, K):
    """``joint_candidates = K``: each query's K best first-stage candidates get their exact joint score; every
    other allowed candidate ranks below all of them, in the first stage's order; the -inf ids are the same."""
    model = DECODERS[name]
    tokens, mask = pad_ids(QUERIES)
    cuisine = _cuisine(model, len(QUERIES))
    exact = model.completion_scores_ids(tokens, mask, mode="joint", cuisine=cuisine)
    with torch.inference_mode():
        first = model._joint_proposals(tokens, mask, cuisine)
    model.config.joint_candidates = K
    try:
        got = model.completion_scores_ids(tokens, mask, mode="joint", cuisine=cuisine)
    finally:
        model.config.joint_candidates = None
    assert torch.equal(torch.isfinite(got), torch.isfinite(exact))
    for b in range(len(QUERIES)):
        top = first[b].topk(K).indices
        top = top[torch.isfinite(first[b, top])]
        torch.testing.assert_close(got[b, top], exact[b, top], **ATOL)
        rest = torch.isfinite(first[b]).clone()
        rest[top] = False
        if rest.any():
            assert got[b, rest].max() < got[b, top].min()
            order = first[b, rest].argsort(descending=True)
            assert torch.all(got[b, rest][order].diff() <= 0)


@pytest.mark.parametrize("name", ["frequency", "given-cuisine-positions"])
def test_joint_proposal_is_the_query_likelihood_plus_the_candidate_at_its_slot(name):
    """First stage, by hand: log p([BOS] + q + [EOS]) + log p(y | [BOS] + q[:i]) at y's slot i in the order
    (``given``: the mean of p(y | [BOS] + q[:i]) over the slots i = 0..n), one plain pass each."""
    model = DECODERS[name]
    q, y = [15, 9, 12], 20
    cuisine = _cuisine(model, 1)
    seq = q if model.given_order else sorted(q, key=lambda i: int(model.order_ranks[0, i]))
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([[BOS, *seq]]), cuisine=cuisine).logits[0].float(), -1)
        got = model._joint_proposals(*pad_ids([q]), cuisine)[0, y]
    q_ll = logp[torch.arange(len(seq) + 1), torch.tensor([*seq, EOS])].sum()
    if model.given_order:
        expected = q_ll + torch.logsumexp(logp[:, y], 0) - torch.log(torch.tensor(len(seq) + 1.0))
    else:
        slot = sum(int(model.order_ranks[0, x]) < int(model.order_ranks[0, y]) for x in seq)
        expected = q_ll + logp[slot, y]
    torch.testing.assert_close(got, expected, **ATOL)


def test_random_orders_rerank_by_default_and_canonical_orders_score_every_candidate():
    from recipeset.models.decoder import JOINT_CANDIDATES

    assert DECODERS["shuffle-3-orders"].joint_candidate_count == JOINT_CANDIDATES
    assert DECODERS["random-fixed"].joint_candidate_count == JOINT_CANDIDATES
    assert DECODERS["frequency"].joint_candidate_count == 0 and DECODERS["given"].joint_candidate_count == 0
    assert _decoder(train_order="shuffle", joint_candidates=0).joint_candidate_count == 0
    assert _decoder(joint_candidates=5).joint_candidate_count == 5


def test_reranking_every_candidate_is_the_exact_joint():
    model = DECODERS["shuffle-3-orders"]
    tokens, mask = pad_ids(QUERIES)
    model.config.joint_candidates = 0
    exact = model.completion_scores_ids(tokens, mask, mode="joint")
    model.config.joint_candidates = V - NUM_SPECIALS
    try:
        torch.testing.assert_close(model.completion_scores_ids(tokens, mask, mode="joint"), exact, **ATOL)
    finally:
        model.config.joint_candidates = None


def test_joint_on_a_trained_size_vocabulary_matches_with_longer_queries():
    """Longer queries (every slot used by some candidate) in a batch padded to the longest."""
    model = DECODERS["shuffle-cuisine-positions"]
    g = torch.Generator().manual_seed(0)
    queries = [(torch.randperm(V - NUM_SPECIALS, generator=g)[:n] + NUM_SPECIALS).tolist() for n in (12, 3, 9)]
    tokens, mask = pad_ids(queries)
    got = model.completion_scores_ids(tokens, mask, mode="joint", cuisine=CUISINES[:3])
    torch.testing.assert_close(got, joint_scores_reference(model, tokens, mask, CUISINES[:3]), **ATOL)


# ---- generation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["frequency", "shuffle-3-orders", "given", "frequency-cuisine-positions"])
@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (1.0, None), (0.7, 4)])
def test_cached_generation_equals_the_reference(name, temperature, top_k):
    model = DECODERS[name]
    tokens, mask = pad_ids(QUERIES)
    cuisine = _cuisine(model, len(QUERIES))
    kw = dict(max_new=8, cuisine=cuisine, temperature=temperature, top_k=top_k)
    got = model.complete_ids(tokens, mask, generator=torch.Generator().manual_seed(5), **kw)
    expected = complete_ids_reference(model, tokens, mask, generator=torch.Generator().manual_seed(5), **kw)
    assert got == expected
    assert any(len(g) > 1 for g in got)


def test_cached_generation_respects_max_len_with_positions():
    model = _decoder(positions=True, max_len=5)
    tokens, mask = pad_ids([[8, 9], [10]])
    for max_new in (0, 1, 2, 10):
        got = model.complete_ids(tokens, mask, max_new=max_new)
        assert got == complete_ids_reference(model, tokens, mask, max_new=max_new)
        assert all(len(g) <= min(max_new, 2) for g in got)
    too_long = pad_ids([[8, 9, 10, 11, 12]])
    assert model.complete_ids(*too_long, max_new=3) == [[]]


# ---- Deep Sets -----------------------------------------------------------------------------------------
def _deep_sets_reference(model: DeepSets, tokens, mask, max_new, cuisine, temperature, top_k, generator):
    """Deep Sets' one-at-a-time completion as it was: the whole grown set re-encoded at every step."""
    generated = [[] for _ in range(tokens.shape[0])]
    active = torch.ones(tokens.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(max_new):
            logp = safe_log_softmax(model(tokens, mask, cuisine).set_logits.float())
            best = logp.amax(1)
            active = active & (best.exp() >= model.config.stop_threshold) & torch.isfinite(best)
            if not bool(active.any()):
                break
            choice = sample_from_logits(logp, temperature, top_k, generator)
            for b in torch.nonzero(active).squeeze(1).tolist():
                generated[b].append(int(choice[b]))
            tokens, mask = append_at_end(tokens, mask, choice, active)
    return generated


@pytest.mark.parametrize("cuisine_condition", [False, True])
@pytest.mark.parametrize("temperature,threshold", [(0.0, 0.0), (0.0, 0.2), (1.0, 0.0), (0.8, 0.1)])
def test_deep_sets_incremental_completion_equals_re_encoding(cuisine_condition, temperature, threshold):
    torch.manual_seed(0)
    model = _randomize(DeepSets(DeepSetsConfig(d_model=16, cuisine_condition=cuisine_condition,
                                               stop_threshold=threshold), VOCAB).eval(), seed=2)
    tokens, mask = pad_ids(QUERIES)
    cuisine = CUISINES if cuisine_condition else None
    got = model.complete_ids(tokens, mask, max_new=12, cuisine=cuisine, temperature=temperature,
                             generator=torch.Generator().manual_seed(3))
    expected = _deep_sets_reference(model, tokens, mask, 12, cuisine, temperature, None,
                                    torch.Generator().manual_seed(3))
    assert got == expected
    assert sum(map(len, got)) > len(QUERIES)


def test_joint_reference_is_the_plain_sequence_likelihood():
    """The reference itself: log p([BOS] + sorted(q ∪ {y}) + [EOS]) by one plain forward pass."""
    model = DECODERS["frequency"]
    q, y = [15, 9, 12], 20
    seq = sorted([*q, y], key=lambda i: int(model.order_ranks[0, i]))
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([[BOS, *seq]])).logits[0].float(), -1)
    target = torch.tensor([*seq, EOS])
    expected = logp[torch.arange(len(target)), target].sum()
    torch.testing.assert_close(joint_scores_reference(model, *pad_ids([q]))[0, y], expected, **ATOL)


def test_bench_joint_scoring_runs_both_side_by_side():
    out = bench_joint_scoring(dataset="synthetic", n_queries=6, d_model=16, n_layers=1, n_heads=2, repeats=2)
    assert out["queries"] > 0 and out["reference_s"] > 0 and out["cached_s"] > 0 and out["torch_threads"] == 1
    assert out["max_abs_diff"] < 1e-4 and out["dataset"] == "synthetic" and out["joint_orders"] == 1


def test_bench_joint_reranking_reports_exact_and_each_k_on_the_same_queries():
    from recipeset.bench import bench_data, bench_joint_reranking

    vocab = bench_data("synthetic", None)[0].vocab
    torch.manual_seed(0)
    model = CausalDecoder(DecoderConfig(d_model=16, n_layers=1, n_heads=2, train_order="shuffle", joint_orders=2),
                          vocab).eval()
    everything = vocab.num_ingredients
    out = bench_joint_reranking(model, dataset="synthetic", n_queries=8, candidates=(1, everything))
    assert out["queries"] == 8 and out["joint_orders"] == 2 and model.config.joint_candidates is None  # restored
    assert out[f"K{everything}"]["rank_changed"] == 0.0  # re-ranking every candidate is the exact joint
    assert out[f"K{everything}"]["mrr"] == pytest.approx(out["exact"]["mrr"])
    assert 0.0 <= out["K1"]["rank_changed"] <= 1.0 and out["K1"]["seconds"] > 0


def test_decoder_stop_threshold_one_pass_gives_every_thresholds_completion():
    """With config.stop_threshold the decoder goes on while 1 − p([EOS]) ≥ it; a higher threshold's greedy
    completion is the prefix of the lowest's whose returned values reach it (what the one-pass tuner uses)."""
    from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
    from recipeset.models import CausalDecoder, DecoderConfig
    from recipeset.models.base import pad_ids

    vocab = Vocabulary([f"i{k}" for k in range(12)])
    torch.manual_seed(3)
    model = CausalDecoder(DecoderConfig(d_model=16, n_layers=1, n_heads=2), vocab).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    tokens, mask = pad_ids([[NUM_SPECIALS + k for k in s] for s in ([0, 5], [3], [7, 1, 2])])
    model.config.stop_threshold = 0.0
    longest, go_on = model.complete_ids(tokens, mask, max_new=6, return_probs=True)
    assert all(len(row) == 6 for row in longest)  # never stops on [EOS] at 0
    for th in (0.2, 0.5, 0.8, 0.95):
        model.config.stop_threshold = th
        got = model.complete_ids(tokens, mask, max_new=6)
        for row, ids, probs in zip(got, longest, go_on, strict=True):
            keep = next((i for i, p in enumerate(probs) if p < th), len(probs))
            assert row == ids[:keep], th
