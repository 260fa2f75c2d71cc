"""Models: invariances of the Set Transformer, causality of the decoder, completion rules of all three."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from recipeset.data.ordering import order_ids
from recipeset.data.vocab import BOS, EOS, MASK, NULL, NUM_SPECIALS, PAD, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.models import (
    MODELS,
    CausalDecoder,
    DecoderConfig,
    DeepSets,
    DeepSetsConfig,
    SetTransformer,
    SetTransformerConfig,
)
from recipeset.models.base import pad_ids

torch.set_num_threads(1)
N_ING = 20
VOCAB = Vocabulary([f"ing{i:02d}" for i in range(N_ING)][::-1], ["french", "italian", "thai"])
V = len(VOCAB)
ATOL = dict(atol=5e-5, rtol=1e-5)  # float32: a permuted set sums in another order (1.2e-5 seen on a logit)


def _build(cls, seed=0, features=None, **kw):
    torch.manual_seed(seed)
    small = {CausalDecoder: dict(d_model=16, n_layers=2, n_heads=2, dropout=0.0),
             SetTransformer: dict(d_model=16, n_heads=2, n_layers=2),
             DeepSets: dict(d_model=16)}[cls]
    config_cls = {CausalDecoder: DecoderConfig, SetTransformer: SetTransformerConfig, DeepSets: DeepSetsConfig}[cls]
    return cls(config_cls(**{**small, **kw}), VOCAB, features).eval()


def _randomize(model, seed=1, scale=0.5):
    """Larger random weights than the 0.02 init so the outputs are far from uniform (tests bite harder)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


ST = {
    "sab": _randomize(_build(SetTransformer, cuisine_head=True, coherence_head=True, rtd_head=True)),
    "isab": _randomize(_build(SetTransformer, block="isab", n_inducing=3, cuisine_head=True)),
    "slots": _randomize(_build(SetTransformer, n_slots=4, slot_layers=1, cuisine_head=True)),
}
DECODER = _randomize(_build(CausalDecoder, cuisine_head=True))
DEEPSETS = _randomize(_build(DeepSets, cuisine_head=True, stop_threshold=0.0))
DEEPSETS_ML = _randomize(_build(DeepSets, cuisine_head=True, multilabel=True, stop_threshold=0.3), seed=4)
DEEPSETS_MLP_HEAD = _randomize(_build(DeepSets, cuisine_head=True, cuisine_hidden=12), seed=5)  # MLP on the raw sum
DEEPSETS_ATT = _randomize(_build(DeepSets, cuisine_head=True, attention_heads=2, stop_threshold=0.0), seed=6)

ids_set = st.lists(st.integers(NUM_SPECIALS, V - 1), min_size=1, max_size=7, unique=True)


def _one(ids):
    return pad_ids([list(ids)])


# ---- Set Transformer ------------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(ids=ids_set, data=st.data())
def test_set_transformer_encoder_equivariant_and_pooled_invariant(ids, data):
    perm = data.draw(st.permutations(range(len(ids))))
    t, m = _one(ids)
    tp, mp = _one([ids[i] for i in perm])
    for model in ST.values():
        with torch.no_grad():
            a, b = model(t, m), model(tp, mp)
        torch.testing.assert_close(a.hidden[0, perm], b.hidden[0], **ATOL)
        torch.testing.assert_close(a.logits[0, perm], b.logits[0], **ATOL)
        torch.testing.assert_close(a.pooled, b.pooled, **ATOL)
        torch.testing.assert_close(a.cuisine_logits, b.cuisine_logits, **ATOL)
        if a.rtd_logits is not None:
            torch.testing.assert_close(a.rtd_logits[0, perm], b.rtd_logits[0], **ATOL)
        if a.slot_logits is not None:
            torch.testing.assert_close(a.slot_logits, b.slot_logits, **ATOL)


@settings(max_examples=15, deadline=None)
@given(ids=ids_set, data=st.data())
def test_completion_and_classify_invariant_to_query_order(ids, data):
    perm = data.draw(st.permutations(range(len(ids))))
    t, m = _one(ids)
    tp, mp = _one([ids[i] for i in perm])
    for model in [*ST.values(), DEEPSETS, DEEPSETS_ML, DEEPSETS_MLP_HEAD, DEEPSETS_ATT, DECODER]:
        a, b = model.completion_scores_ids(t, m), model.completion_scores_ids(tp, mp)
        assert torch.equal(torch.isinf(a), torch.isinf(b))
        torch.testing.assert_close(a, b, **ATOL)
        torch.testing.assert_close(model.classify_ids(t, m), model.classify_ids(tp, mp), **ATOL)


def test_extra_padding_columns_change_nothing():
    sets = [[8, 12, 9], [15], []]
    t, m = pad_ids(sets)
    tw, mw = pad_ids(sets, min_len=7)
    for model in ST.values():
        with torch.no_grad():
            a, b = model(t, m), model(tw, mw)
        torch.testing.assert_close(a.hidden[m], b.hidden[:, :3][m], **ATOL)
        torch.testing.assert_close(a.pooled, b.pooled, **ATOL)
        if a.slot_logits is not None:
            torch.testing.assert_close(a.slot_logits, b.slot_logits, **ATOL)
        torch.testing.assert_close(model.completion_scores_ids(t, m), model.completion_scores_ids(tw, mw), **ATOL)


def test_batch_equals_items_alone_and_empty_sets_are_finite():
    sets = [[8, 12, 9], [], [20, 10]]
    t, m = pad_ids(sets)
    for model in [*ST.values(), DEEPSETS, DEEPSETS_ML, DEEPSETS_MLP_HEAD, DEEPSETS_ATT, DECODER]:
        batch = model.completion_scores_ids(t, m)
        for i, s in enumerate(sets):
            torch.testing.assert_close(batch[i:i + 1], model.completion_scores_ids(*pad_ids([s])), **ATOL)
        empty = model.completion_scores_ids(*pad_ids([[]]))
        assert not torch.isnan(empty).any() and torch.isfinite(empty[0, NUM_SPECIALS:]).all()
        assert torch.isfinite(model.classify_ids(*pad_ids([[]]))).all()


def test_set_transformer_head_shapes_and_special_masking():
    t, m = pad_ids([[8, 9, MASK], [10]])
    out = ST["slots"](t, m)
    assert out.logits.shape == (2, 3, V) and out.slot_logits.shape == (2, 4, V)
    for logits in (out.logits, out.slot_logits):
        specials = logits[..., :NUM_SPECIALS]
        assert torch.isinf(specials[..., [i for i in range(NUM_SPECIALS) if i != NULL]]).all()
        assert torch.isfinite(specials[..., NULL]).all()
    sab = ST["sab"](t, m, segments=torch.zeros_like(t))
    assert sab.rtd_logits.shape == (2, 3) and sab.coherence_logits.shape == (2,)


def test_mlm_completion_reads_the_mask_position():
    model = ST["sab"]
    q = [9, 14]
    t, m = pad_ids([q + [MASK]])
    with torch.no_grad():
        logits = model(t, m).logits[0, 2]
    logits[q] = float("-inf")
    expected = F.log_softmax(logits, -1)
    expected[:NUM_SPECIALS] = float("-inf")
    torch.testing.assert_close(model.completion_scores_ids(*pad_ids([q]))[0], expected, **ATOL)


def test_slot_completion_is_max_over_slots():
    model = ST["slots"]
    t, m = pad_ids([[9, 14]])
    with torch.no_grad():
        expected = F.log_softmax(model(t, m).slot_logits[0], -1).amax(0)
    expected[[9, 14]] = float("-inf")
    expected[:NUM_SPECIALS] = float("-inf")
    torch.testing.assert_close(model.completion_scores_ids(t, m)[0], expected, **ATOL)


def test_mlm_complete_stops_on_null_and_threshold():
    model = _randomize(_build(SetTransformer))
    t, m = pad_ids([[9], []])
    assert all(len(g) == 3 for g in model.complete_ids(t, m, max_new=3))
    model.logit_bias[NULL] = 1e4  # [NULL] at the [MASK] now always wins: the learned stop
    assert model.complete_ids(t, m, max_new=3) == [[], []]
    model.logit_bias[NULL] = float("-inf")
    model.config.stop_threshold = 1.01  # no ingredient is ever that likely
    assert model.complete_ids(t, m, max_new=3) == [[], []]


def test_slot_complete_emits_non_null_slots_deduped():
    model = ST["slots"]
    t, m = pad_ids([[9], [10, 11]])
    with torch.no_grad():
        logits = model(t, m).slot_logits.clone()
    logits[0, :, 9] = float("-inf")
    logits[1, :, [10, 11]] = float("-inf")
    expected = [sorted({int(i) for i in row.argmax(-1) if i >= NUM_SPECIALS}) for row in logits]
    got = model.complete_ids(t, m, max_new=10)
    assert [sorted(g) for g in got] == expected


# ---- decoder --------------------------------------------------------------------------------------------
def test_decoder_is_causal():
    g = torch.Generator().manual_seed(0)
    t = torch.cat([torch.full((2, 1), BOS), torch.randint(NUM_SPECIALS, V, (2, 7), generator=g)], 1)
    with torch.no_grad():
        base = DECODER(t).logits
        for pos in range(1, 8):
            changed = t.clone()
            changed[:, pos:] = torch.randint(NUM_SPECIALS, V, (2, 8 - pos), generator=g)
            after = DECODER(changed).logits
            torch.testing.assert_close(after[:, :pos], base[:, :pos], **ATOL)


def test_decoder_batch_equals_items_alone():
    sets = [[BOS, 8, 12, 9, 20], [BOS, 15], [BOS]]
    t, m = pad_ids(sets)
    for model in (DECODER, _randomize(_build(CausalDecoder, positions=True, coherence_head=True))):
        with torch.no_grad():
            batch = model(t, m)
            for i, s in enumerate(sets):
                alone = model(*pad_ids([s]))
                n = len(s)
                torch.testing.assert_close(batch.logits[i, :n], alone.logits[0], **ATOL)
                torch.testing.assert_close(batch.pooled[i], alone.pooled[0], **ATOL)


def test_decoder_masks_present_ingredients_and_specials():
    t, m = pad_ids([[BOS, 8, 12, 9, 20], [BOS, 15]])
    with torch.no_grad():
        logits = DECODER(t, m).logits
    for b in range(2):
        for pos in range(int(m[b].sum())):
            row = logits[b, pos]
            seen = set(t[b, :pos + 1].tolist())
            for i in range(V):
                forbidden = i in seen or (i < NUM_SPECIALS and i != EOS)
                assert math.isinf(row[i]) == forbidden, (b, pos, i)


def test_decoder_next_scores_feed_the_training_order():
    model = DECODER  # frequency order: ascending id
    q = [20, 9, 14]
    inp = torch.tensor([[BOS, *order_ids(q, "frequency", VOCAB)]])
    with torch.no_grad():
        expected = F.log_softmax(model(inp).logits[0, -1], -1)
    expected[:NUM_SPECIALS] = float("-inf")
    torch.testing.assert_close(model.completion_scores_ids(*pad_ids([q]))[0], expected, **ATOL)


def _sequence_logp(model, seq):
    inp = torch.tensor([[BOS, *seq]])
    target = torch.tensor([*seq, EOS])
    with torch.no_grad():
        logp = F.log_softmax(model(inp).logits[0], -1)
    return logp[torch.arange(len(target)), target].sum()


def test_decoder_joint_scores_are_set_log_likelihoods():
    model = DECODER
    q = [20, 9]
    scores = model.completion_scores_ids(*pad_ids([q]), mode="joint")[0]
    for y in (8, 13, 27):
        expected = _sequence_logp(model, order_ids(q + [y], "frequency", VOCAB))
        torch.testing.assert_close(scores[y], expected, **ATOL)
    assert torch.isinf(scores[q]).all() and torch.isinf(scores[:NUM_SPECIALS]).all()


def test_decoder_alphabetical_and_random_orders():
    alpha = _randomize(_build(CausalDecoder, train_order="alphabetical"))
    q = [20, 9, 14]
    expected_order = order_ids(q, "alphabetical", VOCAB)
    assert alpha._ordered(*pad_ids([q]))[0].tolist() == expected_order
    shuffled = _randomize(_build(CausalDecoder, train_order="shuffle", joint_orders=3, next_orders=2))
    scores = shuffled.completion_scores_ids(*pad_ids([q]), mode="joint")[0]
    y = 11
    lls = torch.stack([_sequence_logp(shuffled, shuffled._ordered(*pad_ids([q + [y]]), k)[0].tolist())
                       for k in range(3)])
    torch.testing.assert_close(scores[y], torch.logsumexp(lls, 0) - math.log(3), **ATOL)
    a = shuffled.completion_scores_ids(*pad_ids([q]))
    b = shuffled.completion_scores_ids(*pad_ids([q[::-1]]))
    torch.testing.assert_close(a, b, **ATOL)


def test_decoder_cuisine_prefix_keeps_alignment():
    model = _randomize(_build(CausalDecoder, cuisine_condition=True))
    t, m = pad_ids([[BOS, 8, 9], [BOS, 8, 9]])
    with torch.no_grad():
        out = model(t, m, cuisine=torch.tensor([0, 2]))
        unknown = model(t, m, cuisine=torch.tensor([-1, -1]))
        none = model(t, m)
    assert out.logits.shape == (2, 3, V)
    assert not torch.allclose(out.logits[0], out.logits[1])
    torch.testing.assert_close(unknown.logits, none.logits)
    scores = model.completion_scores([["ing03"]], cuisine="thai")
    assert scores.shape == (1, V)
    assert model.complete([["ing03"]], cuisine=["french"], max_new=2)


@pytest.mark.parametrize("cls", [CausalDecoder, SetTransformer, DeepSets])
def test_conditioning_and_predicting_cuisine_is_refused(cls):
    with pytest.raises(RecipesetError, match="cuisine"):
        _build(cls, cuisine_condition=True, cuisine_head=True)


def test_cuisine_argument_on_unconditioned_model_is_refused():
    with pytest.raises(RecipesetError, match="cuisine conditioning"):
        DECODER.completion_scores([["ing01"]], cuisine="thai")


# ---- completion rules, all models -----------------------------------------------------------------------
ALL = {"decoder": DECODER, "st-mlm": _randomize(_build(SetTransformer), seed=3), "st-slots": ST["slots"],
       "deep-sets": DEEPSETS, "deep-sets-multilabel": DEEPSETS_ML, "deep-sets-attention": DEEPSETS_ATT}


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (1.0, None), (2.0, 5)])
def test_complete_never_repeats_nor_emits_specials_or_query(name, temperature, top_k):
    model = ALL[name]
    sets = [[8, 12, 9], [], [20, 10, 11, 15, 16], list(range(NUM_SPECIALS, V - 2))]
    t, m = pad_ids(sets)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        out = model.complete_ids(t, m, max_new=6, temperature=temperature, top_k=top_k, generator=g)
        assert len(out) == len(sets)
        for q, gen in zip(sets, out, strict=True):
            assert len(gen) == len(set(gen)) <= 6
            assert all(NUM_SPECIALS <= i < V for i in gen)
            assert not set(gen) & set(q)
        assert len(out[3]) <= 2  # only two ingredients are left to add


@pytest.mark.parametrize("name", list(ALL))
def test_query_with_every_ingredient(name):
    model = ALL[name]
    t, m = pad_ids([list(range(NUM_SPECIALS, V))])
    scores = model.completion_scores_ids(t, m)
    assert torch.isneginf(scores).all()
    assert model.complete_ids(t, m, max_new=3) == [[]]
    assert model.complete_ids(t, m, max_new=3, temperature=1.0) == [[]]


@pytest.mark.parametrize("name", list(ALL))
def test_top_completions_rank_each_query_among_its_own_allowed_candidates(name):
    """Best first with softmax probabilities; a query with fewer candidates left gets fewer, without cutting the
    others short (the CLI's ``complete --top`` and the pyfunc model read this)."""
    model = ALL[name]
    names = VOCAB.ingredients
    sets = [names[:3], names[: N_ING - 2]]  # 17 and 2 candidates left
    top = model.top_completions(sets, top=5)
    assert [len(row) for row in top] == [5, 2]
    scores = model.completion_scores(sets).float()
    for row, q, s in zip(top, sets, scores, strict=True):
        assert [n for n, _ in row] == [VOCAB.token(i) for i in s.topk(len(row)).indices.tolist()]
        assert [p for _, p in row] == pytest.approx(torch.softmax(s, -1)[s.topk(len(row)).indices].tolist())
        assert not {n for n, _ in row} & set(q)
    with pytest.raises(RecipesetError, match="top must be at least 1"):
        model.top_completions(sets, top=0)


@pytest.mark.parametrize("name", list(ALL))
def test_greedy_complete_is_deterministic_and_batch_independent(name):
    model = ALL[name]
    sets = [[8, 12, 9], [], [20]]
    t, m = pad_ids(sets)
    out = model.complete_ids(t, m, max_new=4)
    assert out == model.complete_ids(t, m, max_new=4)
    assert [model.complete_ids(*pad_ids([s]), max_new=4)[0] for s in sets] == out


def test_decoder_greedy_complete_follows_argmax_until_eos():
    model = DECODER
    q = [9, 14]
    gen = model.complete_ids(*pad_ids([q]), max_new=5)[0]
    seq = order_ids(q, "frequency", VOCAB)
    for step in range(len(gen) + 1):
        with torch.no_grad():
            nxt = int(model(torch.tensor([[BOS, *seq]])).logits[0, -1].argmax())
        if step == len(gen):
            assert nxt == EOS or len(gen) == 5
            break
        assert nxt == gen[step]
        seq.append(nxt)


def test_deep_sets_threshold_and_set_logits():
    model = _randomize(_build(DeepSets, stop_threshold=1.01))
    t, m = pad_ids([[9, 14], []])
    assert model.complete_ids(t, m) == [[], []]
    model.config.stop_threshold = 0.0
    assert [len(g) for g in model.complete_ids(t, m, max_new=3)] == [3, 3]
    out = model(t, m)
    assert out.set_logits.shape == (2, V)
    assert torch.isinf(out.set_logits[0, [9, 14]]).all() and torch.isinf(out.set_logits[:, :NUM_SPECIALS]).all()


@pytest.mark.parametrize("model", [DEEPSETS, DEEPSETS_ATT], ids=["sum", "attention"])
def test_deep_sets_greedy_completion_equals_rescoring_the_grown_set(model):
    """complete_ids grows the pooled sum (and, with attention, the elements it attends over) instead of
    re-encoding: each step's choice and stop probability are those of scoring the set grown so far afresh."""
    sets = [[9, 14], [20, 8, 11, 15]]
    ids, probs = model.complete_ids(*pad_ids(sets), max_new=4, return_probs=True)
    for q, gen, ps in zip(sets, ids, probs, strict=True):
        assert len(gen) == 4
        for step, (i, p) in enumerate(zip(gen, ps, strict=True)):
            logp = model.completion_scores_ids(*pad_ids([q + gen[:step]]))[0]
            assert int(logp.argmax()) == i and float(logp.max().exp()) == pytest.approx(p, abs=1e-5)


def test_deep_sets_attention_heads_must_divide_d_model():
    with pytest.raises(RecipesetError, match="divisible by model.attention_heads"):
        _build(DeepSets, attention_heads=3)


def test_multilabel_deep_sets_completes_every_ingredient_over_the_threshold_at_once():
    model = DEEPSETS_ML
    sets = [[9, 14], [], [20, 8, 11]]
    t, m = pad_ids(sets)
    with torch.no_grad():
        p = torch.sigmoid(model(t, m).set_logits)
    out = model.complete_ids(t, m, max_new=50)
    for b, q in enumerate(sets):
        expected = sorted((i for i in range(NUM_SPECIALS, V) if i not in q and p[b, i] >= 0.3),
                          key=lambda i: -float(p[b, i]))
        assert out[b] == expected
    assert any(len(g) > 1 for g in out) and any(len(g) < V - NUM_SPECIALS - 3 for g in out)  # the rule bites
    assert [len(g) for g in model.complete_ids(t, m, max_new=2)] == [min(2, len(g)) for g in out]
    # scores: the sigmoids normalised to one distribution over the missing ingredient
    scores = model.completion_scores_ids(t, m).exp()
    ref = torch.where(torch.isfinite(model(t, m).set_logits), p, 0.0)
    torch.testing.assert_close(scores, ref / ref.sum(1, keepdim=True), **ATOL)


# ---- string API, embeddings, config checks --------------------------------------------------------------
def test_string_api_and_unknown_ingredient():
    model = ST["sab"]
    scores = model.completion_scores([["ing01", "ing05"], []])
    assert scores.shape == (2, V)
    assert torch.isinf(scores[0, VOCAB.encode(["ing01", "ing05"])]).all()
    out = model.complete([["ing01"]], max_new=3)
    assert all(isinstance(x, str) and x != "ing01" for x in out[0])
    probs = model.classify([["ing01"], ["ing02", "ing03"]])
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    with pytest.raises(RecipesetError, match="unknown ingredient 'ing1'; did you mean"):
        model.completion_scores([["ing1"]])
    with pytest.raises(RecipesetError, match="list of ingredient lists"):
        model.complete(["ing01"])
    with pytest.raises(RecipesetError, match="temperature"):
        model.complete([["ing01"]], temperature=-1)


def test_inference_restores_training_flag():
    model = _build(DeepSets, cuisine_head=True).train()
    model.completion_scores([["ing01"]])
    model.complete([["ing01"]], max_new=1)
    model.classify([["ing01"]])
    assert model.training
    model.eval().completion_scores([["ing01"]])
    assert not model.training


def test_classify_without_head_is_refused():
    with pytest.raises(RecipesetError, match="cuisine head"):
        _build(DeepSets).classify([["ing01"]])


@pytest.mark.parametrize("cls", [CausalDecoder, SetTransformer, DeepSets])
def test_feature_embeddings(cls):
    features = torch.zeros(V, 5)
    features[NUM_SPECIALS:] = torch.rand(N_ING, 5, generator=torch.Generator().manual_seed(0))
    features[NUM_SPECIALS + 1] = features[NUM_SPECIALS]  # two ingredients with identical features
    model = _build(cls, features=features, embedding="features", cuisine_head=True)
    assert model.config.n_features == 5 and model.lm_head is not None
    emb = model.embed(torch.arange(V))
    assert emb.shape == (V, 16)
    torch.testing.assert_close(emb[NUM_SPECIALS], emb[NUM_SPECIALS + 1])
    assert len({tuple(e.tolist()) for e in emb[:NUM_SPECIALS]}) == NUM_SPECIALS  # specials stay distinct
    assert model.completion_scores([["ing01"]]).shape == (1, V)
    assert "embed.features" in model.state_dict()
    with pytest.raises(RecipesetError, match="input_features"):
        _build(cls, features=torch.zeros(V - 1, 5), embedding="features")


def test_config_checks():
    with pytest.raises(RecipesetError, match="vocab_size"):
        _build(DeepSets, vocab_size=V + 1)
    with pytest.raises(RecipesetError, match="embedding"):
        _build(DeepSets, embedding="onehot")
    with pytest.raises(RecipesetError, match="block"):
        _build(SetTransformer, block="mlp")
    with pytest.raises(RecipesetError, match="train_order"):
        _build(CausalDecoder, train_order="reverse")
    with pytest.raises(RecipesetError, match="max_len"):
        _build(CausalDecoder, positions=True, max_len=3)(torch.full((1, 4), BOS))
    assert set(MODELS) == {"decoder", "set-transformer", "deep-sets"}


def test_weights_are_tied_for_learned_embeddings():
    for model in (DECODER, ST["sab"], DEEPSETS):
        assert model.lm_head is None
        t, m = pad_ids([[9]])
        model.zero_grad()
        loss = {CausalDecoder: lambda o: o.logits[0, 0, 10], SetTransformer: lambda o: o.logits[0, 0, 10],
                DeepSets: lambda o: o.set_logits[0, 10]}[type(model)](model(t, m))
        loss.backward()
        assert model.embed.table.weight.grad[10].abs().sum() > 0  # the output row of id 10 is the table row
        model.zero_grad()


def test_pad_ids():
    t, m = pad_ids([[9, 10], [], [11]])
    assert t.tolist() == [[9, 10], [PAD, PAD], [11, PAD]]
    assert m.tolist() == [[True, True], [False, False], [True, False]]
    t, m = pad_ids([])
    assert t.shape == (0, 0)
