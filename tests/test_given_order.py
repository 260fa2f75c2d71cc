"""The ``given`` ingredient order (the data's own order, for data whose order means something): ordering is the
identity, the decoder feeds queries as given and its ``joint`` score marginalises over insertion slots, the
evaluation queries and the training pipeline keep the emitted order, and a decoder trained on the given order
of the synthetic generator's ordered mode is order-sensitive where a canonical-order decoder is not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from recipeset.config import RunConfig, resolve_objectives
from recipeset.data.ordering import ORDERS, order_ids, reorder
from recipeset.data.prepare import prepare_data
from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import BOS, EOS, NUM_SPECIALS, Vocabulary
from recipeset.evaluation import evaluate_order_sensitivity, half_queries, leave_one_out_queries
from recipeset.models import CausalDecoder, DecoderConfig
from recipeset.models.base import pad_ids
from recipeset.objectives.tasks import Objectives
from recipeset.pipeline import build_model
from recipeset.training import Trainer

torch.set_num_threads(1)
N_ING = 12
VOCAB = Vocabulary([f"ing{i:02d}" for i in range(N_ING)][::-1], ["french", "italian"])
V = len(VOCAB)
ATOL = dict(atol=1e-5, rtol=1e-5)


def _decoder(order: str, seed: int = 0, scale: float = 0.5, **kw) -> CausalDecoder:
    """A tiny decoder with large random weights (outputs far from uniform, so the tests bite)."""
    torch.manual_seed(seed)
    model = CausalDecoder(DecoderConfig(d_model=16, n_layers=2, n_heads=2, dropout=0.0, train_order=order, **kw),
                          VOCAB).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


GIVEN = _decoder("given")


def _sequence_logp(model: CausalDecoder, seq: list[int]) -> torch.Tensor:
    """log p([BOS] + seq → seq + [EOS]) by one plain forward pass."""
    inp = torch.tensor([[BOS, *seq]])
    target = torch.tensor([*seq, EOS])
    with torch.no_grad():
        logp = F.log_softmax(model(inp).logits[0].float(), -1)
    return logp[torch.arange(len(target)), target].sum()


def _brute_joint(model: CausalDecoder, q: list[int], y: int) -> torch.Tensor:
    lls = torch.stack([_sequence_logp(model, q[:i] + [y] + q[i:]) for i in range(len(q) + 1)])
    return torch.logsumexp(lls, 0) - math.log(len(q) + 1)


# ---- names and ordering ----------------------------------------------------------------------------------
def test_given_is_a_known_order_everywhere():
    assert "given" in ORDERS and ORDERS.get("given").kind == "given"
    assert RunConfig().override({"data.order": "given"}).data.order == "given"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(NUM_SPECIALS, V - 1), max_size=6, unique=True), min_size=1, max_size=8),
       st.integers(0, 5), st.integers(0, 5))
def test_given_order_is_the_identity(sets, seed, epoch):
    e = EncodedSets.from_lists(sets)
    r = reorder(e, "given", VOCAB, seed=seed, epoch=epoch)
    assert r.to_lists() == sets and np.array_equal(r.cuisine, e.cuisine)
    for s in sets:
        assert order_ids(s, "given", VOCAB, np.random.default_rng(seed)) == s


# ---- the decoder -----------------------------------------------------------------------------------------
def test_given_joint_equals_brute_force_over_insertion_slots():
    queries = [[15, 9, 12], [10], [], [19, 8, 13, 11]]
    tokens, mask = pad_ids(queries)
    scores = GIVEN.completion_scores_ids(tokens, mask, mode="joint")
    for b, q in enumerate(queries):
        for y in (8, 11, 14, 19):
            if y in q:
                assert scores[b, y] == float("-inf")
            else:
                torch.testing.assert_close(scores[b, y], _brute_joint(GIVEN, q, y), **ATOL)
        assert torch.isinf(scores[b, :NUM_SPECIALS]).all()


def test_given_joint_batched_equals_one_by_one_and_chunking_changes_nothing():
    queries = [[15, 9, 12], [10], [19, 8, 13, 11, 14]]
    tokens, mask = pad_ids(queries)
    batched = GIVEN.completion_scores_ids(tokens, mask, mode="joint")
    with torch.no_grad():
        tiny_chunks = GIVEN._joint_scores_given(tokens, mask, None, budget=7 * V * 3)  # a few sequences a pass
    for b, q in enumerate(queries):
        alone = GIVEN.completion_scores_ids(*pad_ids([q]), mode="joint")[0]
        torch.testing.assert_close(batched[b], alone, **ATOL)
    allowed = torch.isfinite(batched)
    torch.testing.assert_close(tiny_chunks[allowed], batched[allowed], **ATOL)


def test_given_next_feeds_the_query_as_given():
    q = [15, 9, 12]
    scores = GIVEN.completion_scores_ids(*pad_ids([q]), mode="next")[0]
    with torch.no_grad():
        expected = F.log_softmax(GIVEN(torch.tensor([[BOS, *q]])).logits[0, -1].float(), -1)
    allowed = torch.ones(V, dtype=torch.bool)
    allowed[:NUM_SPECIALS] = False
    allowed[q] = False
    torch.testing.assert_close(scores[allowed], expected[allowed], **ATOL)
    reversed_scores = GIVEN.completion_scores_ids(*pad_ids([q[::-1]]), mode="next")[0]
    assert not torch.allclose(scores[allowed], reversed_scores[allowed])
    # a canonical-order decoder sorts its query: the same two orders give the same scores
    freq = _decoder("frequency")
    for mode in ("next", "joint"):
        torch.testing.assert_close(freq.completion_scores_ids(*pad_ids([q]), mode=mode),
                                   freq.completion_scores_ids(*pad_ids([q[::-1]]), mode=mode), **ATOL)


def test_given_complete_appends_after_the_query_as_given():
    queries = [[15, 9, 12], [12, 9, 15], [10]]
    tokens, mask = pad_ids(queries)
    assert GIVEN._ordered(tokens, mask).tolist() == tokens.tolist()  # never reordered (padding already last)
    out = GIVEN.complete_ids(tokens, mask, max_new=4)
    for q, rest in zip(queries, out, strict=True):
        # greedy by hand: feed [BOS] + q (as given) + what was generated so far
        seq = list(q)
        expected = []
        for _ in range(4):
            with torch.no_grad():
                logits = GIVEN(torch.tensor([[BOS, *seq]])).logits[0, -1]
            nxt = int(logits.argmax())
            if nxt == EOS:
                break
            expected.append(nxt)
            seq.append(nxt)
        assert rest == expected
        assert not set(rest) & set(q) and all(i >= NUM_SPECIALS for i in rest)


def test_given_order_with_positions_and_left_over_padding():
    model = _decoder("given", seed=3, positions=True, max_len=16)
    q = [9, 14]
    tokens, mask = pad_ids([q, [8, 10, 11, 12]])
    scores = model.completion_scores_ids(tokens, mask, mode="joint")
    torch.testing.assert_close(scores[0, 13], _brute_joint(model, q, 13), **ATOL)


# ---- evaluation and training keep the emitted order ------------------------------------------------------
def _is_subsequence(sub: list[int], seq: list[int]) -> bool:
    it = iter(seq)
    return all(x in it for x in sub)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.permutations(list(range(NUM_SPECIALS, V))).flatmap(
    lambda p: st.integers(1, len(p)).map(lambda n: p[:n])), min_size=1, max_size=12), st.integers(0, 9))
def test_evaluation_queries_keep_the_emitted_order(sets, seed):
    e = EncodedSets.from_lists(sets)
    queries, held, rows = leave_one_out_queries(e, seed)
    for q, h, r in zip(queries.to_lists(), held, rows, strict=True):
        assert q == [x for x in sets[r] if x != h]  # the rest, in its original order
    queries, truths, rows = half_queries(e, seed)
    for q, r in zip(queries.to_lists(), rows, strict=True):
        assert _is_subsequence(q, sets[r]) and len(q) == len(sets[r]) // 2


ORDERED = {"data.n_recipes": 400, "data.ordered": True, "data.order": "given", "model.d_model": 16,
           "model.n_layers": 1, "train.batch_size": 32, "train.warmup_steps": 2, "train.device": "cpu"}


@pytest.fixture(scope="module")
def ordered_data():
    return prepare_data(RunConfig().override(ORDERED, source="test").data)


def test_training_pipeline_never_reorders_given_data(ordered_data, tmp_path):
    data = ordered_data
    # the synthetic ordered mode reaches the encoded splits in cooking order (not sorted by frequency)
    assert any(s != sorted(s) for s in data.train.to_lists())
    cfg = RunConfig().override(ORDERED, source="test")
    weights = resolve_objectives(cfg)
    cfg.objectives.weights = weights
    seen: list[list[int]] = []

    class Recorder(Objectives):
        def __call__(self, model, batch, generator):
            seen.extend([t[m].tolist() for t, m in zip(batch.tokens, batch.mask, strict=True)])
            return super().__call__(model, batch, generator)

    model = build_model(cfg, data.vocab, weights, int(data.train.lengths.max()))
    trainer = Trainer(cfg, model, Recorder(cfg, weights), data.train, data.val, tmp_path, progress=False)
    for epoch in (0, 3):
        assert trainer.epoch_sets(epoch).to_lists() == data.train.to_lists()
    trainer.validate()  # its batches are grouped by set size; every set keeps its given order
    assert sorted(seen) == sorted(data.val.to_lists()) and len(seen) == len(data.val)


def _train_decoder(order: str, tmp_path) -> CausalDecoder:
    from recipeset.pipeline import run_training

    cfg = RunConfig().override({**ORDERED, "data.order": order, "train.max_steps": 30, "train.lr": 3e-3,
                                "train.checkpoint_every": 1000}, source="test")
    result = run_training(cfg, out_dir=tmp_path / order, track=False, progress=False, evaluate=False)
    from recipeset.models.io import load_model

    return load_model(result.model_dir)


def test_trained_given_decoder_is_order_sensitive_frequency_is_not(ordered_data, tmp_path):
    given_model = _train_decoder("given", tmp_path)
    freq_model = _train_decoder("frequency", tmp_path)
    assert given_model.config.train_order == "given"
    sets = ordered_data.test_eval
    tv_given = evaluate_order_sensitivity(given_model, sets, n_perms=3, max_queries=60)["tv"]
    tv_freq = evaluate_order_sensitivity(freq_model, sets, n_perms=3, max_queries=60)["tv"]
    assert tv_given > 1e-3
    assert tv_freq < 1e-5


def test_bayes_ceilings_are_also_reported_on_the_joint_scored_queries(ordered_data, tmp_path):
    from recipeset.pipeline import run_training
    from recipeset.protocol import joint_subset, oracle_metrics

    over = {**ORDERED, "train.max_steps": 4, "train.checkpoint_every": 1000, "eval.tasks": ["completion"],
            "eval.max_queries": 30, "eval.joint_max_queries": 12}
    cfg = RunConfig().override(over, source="test")
    m = run_training(cfg, out_dir=tmp_path / "run", track=False, progress=False).metrics
    assert m["completion_joint/n"] == m["bayes/completion_joint/n"] == m["bayes_unordered/completion_joint/n"] == 12
    assert m["bayes/completion/n"] == 30 < len(ordered_data.test_eval)
    subset = joint_subset(ordered_data.test_eval, cfg)
    only = RunConfig().override({**over, "eval.max_queries": 1000, "eval.query_draws": 1},  # joint: one draw
                                source="test")
    for prefix, ordered in (("bayes", True), ("bayes_unordered", False)):
        ref = oracle_metrics(only, ordered_data.vocab, subset, ordered=ordered)
        assert m[f"{prefix}/completion_joint/mrr"] == pytest.approx(ref["completion/mrr"])
    # on the same 12 queries the ceiling that reads the order is at least the order-free one
    assert m["bayes/completion_joint/mrr"] >= m["bayes_unordered/completion_joint/mrr"]
