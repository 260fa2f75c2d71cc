"""Sequence packing (recipeset/data/packing.py, ``train.pack``): a decoder's or a Set Transformer's training batch
packed several recipes a row gives the loss and the gradients of the unpacked batch; which runs pack, and their
config hashes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import invoke, ok
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import one_line_error

from recipeset.config import RunConfig, pack_for, resolve_objectives
from recipeset.data.collate import Batch
from recipeset.data.packing import (
    Packing,
    block_causal_mask,
    block_diagonal_mask,
    first_fit_decreasing,
    restart_positions,
    sequence_index,
)
from recipeset.data.vocab import MASK, NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.models.decoder import CausalDecoder, DecoderConfig
from recipeset.models.set_transformer import SetTransformer, SetTransformerConfig
from recipeset.objectives.tasks import Objectives

VOCAB = Vocabulary([f"ingredient_{i}" for i in range(40)])
PACKED_LOSSES = ["clm", "standard", "set-ar", "min-perm", "pooled"]  # clm: the objective; the others: set losses


def random_batch(lengths: list[int], seed: int) -> Batch:
    """Right-padded sets of distinct ingredient ids of the given sizes (a row of size 0 is an empty set)."""
    rng = np.random.default_rng(seed)
    B, T = len(lengths), max(max(lengths), 1)
    tokens = np.zeros((B, T), dtype=np.int64)
    for b, n in enumerate(lengths):
        tokens[b, :n] = rng.permutation(len(VOCAB) - NUM_SPECIALS)[:n] + NUM_SPECIALS
    mask = np.arange(T)[None, :] < np.array(lengths)[:, None]
    return Batch(torch.from_numpy(tokens), torch.from_numpy(mask), torch.tensor(lengths), torch.full((B,), -1),
                 torch.arange(B))


def decoder(positions: bool = False, seed: int = 0) -> CausalDecoder:
    torch.manual_seed(seed)
    return CausalDecoder(DecoderConfig(d_model=16, n_layers=2, n_heads=2, dropout=0.0, positions=positions), VOCAB)


def objectives(loss: str, pack: bool, smoothing: float = 0.0) -> Objectives:
    over = {"objectives.weights": {"clm": 1.0}} if loss == "clm" else {"loss.name": loss}
    cfg = RunConfig().override({**over, "train.pack": pack, "loss.label_smoothing": smoothing})
    return Objectives(cfg, resolve_objectives(cfg))


def set_transformer(block: str = "sab", seed: int = 0) -> SetTransformer:
    torch.manual_seed(seed)
    return SetTransformer(SetTransformerConfig(d_model=16, n_layers=2, n_heads=2, block=block, n_inducing=3,
                                               rtd_head=True), VOCAB)


def set_objectives(weights: dict[str, float], pack: bool, smoothing: float = 0.0) -> Objectives:
    cfg = RunConfig().override({"model.name": "set-transformer", "objectives.weights": weights, "train.pack": pack,
                                "loss.label_smoothing": smoothing})
    return Objectives(cfg, resolve_objectives(cfg))


def losses_and_rows(model, objs: Objectives, batch: Batch):
    """The objectives' losses on ``batch`` and the batch sizes the model's forward passes ran on."""
    rows: list[int] = []
    hook = model.register_forward_hook(lambda module, args, kwargs, out: rows.append(args[0].shape[0]),
                                       with_kwargs=True)
    try:
        out = objs(model, batch, torch.Generator().manual_seed(7))
    finally:
        hook.remove()
    return out, rows


def assert_same_losses(unpacked: dict, packed: dict) -> None:
    assert packed.keys() == unpacked.keys()
    for key in unpacked:
        assert float(packed[key].detach()) == pytest.approx(float(unpacked[key].detach()), abs=1e-5, rel=1e-5), key


def assert_same_gradients(make_model, make_objectives) -> None:
    """A batch of 12 recipes through ``make_model()`` unpacked and packed (``make_objectives(pack)``): the same
    parameter gradients, and the packed batch in fewer rows."""
    batch = random_batch([9, 1, 4, 12, 3, 3, 7, 0, 5, 2, 8, 6], seed=3)
    grads = {}
    for pack in (False, True):
        model = make_model().train()  # dropout 0: train mode draws nothing
        out, rows = losses_and_rows(model, make_objectives(pack), batch)
        out["loss/total"].backward()
        grads[pack] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        if pack:
            assert max(rows) < len(batch)  # 12 recipes in fewer rows
    assert grads[True].keys() == grads[False].keys() and grads[False]
    for name, g in grads[False].items():
        assert torch.allclose(grads[True][name], g, atol=1e-6, rtol=1e-5), name


# ---- the layout ----------------------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=70), extra=st.integers(0, 10))
def test_first_fit_decreasing_places_every_sequence_once_inside_its_row(lengths, extra):
    n = np.array(lengths)
    width = max(int(n.max()), 1) + extra
    row, start = first_fit_decreasing(n, width)
    again = first_fit_decreasing(n, width)
    assert np.array_equal(row, again[0]) and np.array_equal(start, again[1])  # deterministic
    assert (start >= 0).all() and (start + n <= width).all()
    for r in np.unique(row):  # the sequences of a row do not overlap
        spans = sorted((int(s), int(s + k)) for s, k, rr in zip(start, n, row, strict=True) if rr == r and k > 0)
        assert all(a_end <= b for (_, a_end), (b, _) in zip(spans, spans[1:], strict=False))
    assert int(row.max()) + 1 <= len(n)
    assert int(row.max()) == 0 or n.sum() > width  # one row when all fit in one


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=30), seed=st.integers(0, 1000))
def test_pack_and_unpack_round_trip_with_ids_and_positions(lengths, seed):
    batch = random_batch(lengths, seed)
    p = Packing.of(batch.mask)
    packed, ids = p.pack(batch.tokens), p.sequence_ids()
    assert packed.shape == ids.shape == p.shape and p.shape[1] == batch.tokens.shape[1]
    assert int((ids >= 0).sum()) == sum(lengths) and p.real_fraction == sum(lengths) / (p.shape[0] * p.shape[1])
    unpacked = p.unpack(packed)
    assert torch.equal(unpacked[batch.mask], batch.tokens[batch.mask])
    pos = restart_positions(ids)
    for b, n in enumerate(lengths):  # each sequence: a contiguous run of its id, positions 0..n-1
        r, c = torch.nonzero(ids == b, as_tuple=True)
        assert len(set(r.tolist())) == 1 and c.tolist() == list(range(int(c[0]), int(c[0]) + n))
        assert pos[r, c].tolist() == list(range(n))
    allowed = block_causal_mask(ids)
    assert bool(allowed.diagonal(dim1=1, dim2=2).all())  # no row fully masked
    same = ids[:, :, None] == ids[:, None, :]
    assert not bool((allowed & ~same).any())


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=30), seed=st.integers(0, 1000))
def test_a_set_attends_to_all_of_itself_and_to_nothing_else(lengths, seed):
    p = Packing.of(random_batch(lengths, seed).mask)
    ids = p.sequence_ids()
    allowed, index = block_diagonal_mask(ids), sequence_index(ids)
    for b, n in enumerate(lengths):  # each position of a set sees exactly its set's n positions
        r, c = torch.nonzero(ids == b, as_tuple=True)
        assert allowed[r, c].sum(1).tolist() == [n] * n and bool(allowed[r[:, None], c[:, None], c[None, :]].all())
    assert bool(allowed.diagonal(dim1=1, dim2=2).all())  # padding too: no row fully masked
    assert torch.equal(block_causal_mask(ids), allowed & torch.ones_like(allowed[0]).tril())
    # the index numbers a row's sets (its padding one more) 0, 1, 2, ... from the left: equal index, same set
    assert bool((index[:, 0] == 0).all()) and set(index.diff(dim=1).unique().tolist()) <= {0, 1}
    assert torch.equal(index[:, :, None] == index[:, None, :], allowed)


# ---- the model -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", [False, True])
def test_a_packed_recipe_sees_only_its_own_earlier_positions(positions):
    model = decoder(positions).eval()
    batch = random_batch([5, 2, 2], seed=1)
    fed, fed_mask, _ = model.feed(batch.tokens, batch.mask)
    p = Packing.of(fed_mask)
    assert p.shape == (2, 6)  # [BOS] + 5 in one row, [BOS] + 2 twice in the other
    with torch.no_grad():
        logits = p.unpack(model(p.pack(fed), sequence_ids=p.sequence_ids()).logits)
        alone = [model(fed[b:b + 1, :n + 1]).logits[0] for b, n in enumerate([5, 2, 2])]
        other = fed.clone()
        other[2, 1:3] = torch.tensor([NUM_SPECIALS, NUM_SPECIALS + 1])  # change the row-mate of recipe 1
        changed = p.unpack(model(p.pack(other), sequence_ids=p.sequence_ids()).logits)
    for b, n in enumerate([5, 2, 2]):
        assert torch.allclose(logits[b, :n + 1], alone[b], atol=1e-5)
        assert torch.equal(torch.isinf(logits[b, :n + 1]), torch.isinf(alone[b]))  # the same ids are excluded
    assert torch.equal(changed[:2], logits[:2])


def test_packed_rows_refuse_a_cuisine_prefix():
    vocab = Vocabulary(["a", "b", "c"], cuisines=["x", "y"])
    model = CausalDecoder(DecoderConfig(d_model=8, n_layers=1, n_heads=2, cuisine_condition=True), vocab)
    with pytest.raises(RecipesetError, match="cuisine"):
        model(torch.tensor([[1, 8, 9]]), sequence_ids=torch.zeros(1, 3, dtype=torch.long))


def packed_forward(model: SetTransformer, tokens: torch.Tensor, mask: torch.Tensor):
    """The Set Transformer on ``tokens/mask`` packed several sets a row, its outputs put back at each set's
    positions; and the packing."""
    p = Packing.of(mask)
    return model(p.pack(tokens), sequence_ids=p.sequence_ids()).per_position(p.unpack), p


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=20), seed=st.integers(0, 1000),
       block=st.sampled_from(["sab", "isab"]))
def test_a_packed_set_transformer_gives_every_set_the_outputs_it_has_unpacked(lengths, seed, block):
    model = set_transformer(block, seed).eval()
    batch = random_batch(lengths, seed)
    hide = torch.rand(batch.mask.shape, generator=torch.Generator().manual_seed(seed)) < 0.3
    tokens = batch.tokens.masked_fill(batch.mask & hide, MASK)  # some [MASK]s, as the MLM objective feeds it
    with torch.no_grad():
        packed, p = packed_forward(model, tokens, batch.mask)
        plain = model(tokens, batch.mask)
    assert p.shape[0] <= len(lengths)
    for name in ("logits", "hidden", "rtd_logits"):
        a, b = getattr(packed, name)[batch.mask], getattr(plain, name)[batch.mask]
        assert torch.equal(torch.isinf(a), torch.isinf(b)), name  # the specials' -inf
        assert torch.allclose(a.nan_to_num(0, 0, 0), b.nan_to_num(0, 0, 0), atol=1e-5), name
    assert packed.pooled is None and packed.slot_logits is None  # what pools a set is not computed packed


@pytest.mark.parametrize("block", ["sab", "isab"])
def test_packed_rows_stay_permutation_equivariant(block):
    model = set_transformer(block, seed=4).eval()
    batch = random_batch([6, 3, 1, 4, 0, 2, 5, 2], seed=2)
    g = torch.Generator().manual_seed(0)
    B, T = batch.tokens.shape
    within = torch.rand(B, T, generator=g).masked_fill(~batch.mask, 2.0).argsort(1)  # each set's elements shuffled
    rows = torch.randperm(B, generator=g)  # and the sets' order: other row-mates, other places in the rows
    with torch.no_grad():
        out, p = packed_forward(model, batch.tokens, batch.mask)
        shuffled, q = packed_forward(model, batch.tokens.gather(1, within)[rows], batch.mask[rows])
    assert not torch.equal(p.sequence_ids(), q.sequence_ids())
    expected = out.hidden.gather(1, within[..., None].expand_as(out.hidden))[rows]
    mask = batch.mask[rows]
    assert torch.allclose(shuffled.hidden[mask], expected[mask], atol=1e-5)


def test_packed_set_transformer_rows_refuse_a_cuisine_or_segments_per_row():
    vocab = Vocabulary(["a", "b", "c"], cuisines=["x", "y"])
    model = SetTransformer(SetTransformerConfig(d_model=8, n_layers=1, n_heads=2, cuisine_condition=True), vocab)
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(RecipesetError, match="train.pack = false"):
        model(torch.tensor([[8, 9, 10]]), cuisine=torch.tensor([0]), sequence_ids=ids)
    assert model(torch.tensor([[8, 9, 10]]), sequence_ids=ids).logits.shape == (1, 3, len(vocab))


# ---- the losses --------------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 14), min_size=1, max_size=24), seed=st.integers(0, 1000),
       loss=st.sampled_from(PACKED_LOSSES), positions=st.booleans(), smoothing=st.sampled_from([0.0, 0.1]))
def test_packed_loss_equals_the_unpacked_batch(lengths, seed, loss, positions, smoothing):
    model = decoder(positions, seed)
    batch = random_batch(lengths, seed)
    unpacked, plain_rows = losses_and_rows(model, objectives(loss, False, smoothing), batch)
    packed, packed_rows = losses_and_rows(model, objectives(loss, True, smoothing), batch)
    assert set(plain_rows) == {len(lengths)} and max(packed_rows) <= len(lengths)
    assert_same_losses(unpacked, packed)


@pytest.mark.parametrize("loss", PACKED_LOSSES)
def test_packed_gradients_equal_the_unpacked_batch(loss):
    assert_same_gradients(lambda: decoder(positions=True, seed=5), lambda pack: objectives(loss, pack))


SET_WEIGHTS = [{"mlm": 1.0}, {"mlm": 1.0, "rtd": 0.5}, {"rtd": 1.0}]


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 14), min_size=1, max_size=24).filter(any), seed=st.integers(0, 1000),
       block=st.sampled_from(["sab", "isab"]), weights=st.sampled_from(SET_WEIGHTS),
       smoothing=st.sampled_from([0.0, 0.1]))
def test_packed_set_transformer_losses_equal_the_unpacked_batch(lengths, seed, block, weights, smoothing):
    model = set_transformer(block, seed).eval()
    batch = random_batch(lengths, seed)
    unpacked, plain_rows = losses_and_rows(model, set_objectives(weights, False, smoothing), batch)
    packed, packed_rows = losses_and_rows(model, set_objectives(weights, True, smoothing), batch)
    assert set(plain_rows) == {len(lengths)} and max(packed_rows) <= len(lengths)
    assert_same_losses(unpacked, packed)


@pytest.mark.parametrize("block", ["sab", "isab"])
def test_packed_set_transformer_gradients_equal_the_unpacked_batch(block):
    assert_same_gradients(lambda: set_transformer(block, seed=5),
                          lambda pack: set_objectives({"mlm": 1.0, "rtd": 0.5}, pack))


def test_training_a_set_transformer_from_the_cli_packs_its_batches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    forward, packed = SetTransformer.forward, []

    def spy(self, *args, **kwargs):
        packed.append(kwargs.get("sequence_ids") is not None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SetTransformer, "forward", spy)
    tiny = ["--model", "set-transformer", "--max-steps", "3", "--no-track", "--quiet"]
    for kv in ("data.n_recipes=300", "model.d_model=16", "model.n_layers=1", "train.batch_size=32",
               "train.warmup_steps=1", "eval.max_queries=20", "train.device=cpu"):
        tiny += ["--set", kv]
    ok("train", *tiny, "--out", "packed")
    assert sum(packed) >= 3  # every training step (and the validation loss); evaluation runs a query a row
    # saved resolved, so that --resume packs as the run started even if a later default differs
    assert json.loads((tmp_path / "packed" / "config.json").read_text())["train"]["pack"] is True
    packed.clear()
    ok("train", *tiny, "--set", "train.pack=false", "--out", "plain")
    assert packed and not any(packed)
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["train"]["pack"] is False


# ---- which runs pack ------------------------------------------------------------------------------------------------
def test_runs_pack_where_the_model_and_every_objective_can():
    assert RunConfig().train.pack is None
    assert pack_for(RunConfig())  # decoder, clm
    for loss in ("standard", "set-ar", "min-perm", "pooled"):
        assert pack_for(RunConfig().override({"loss.name": loss, "objectives.weights": {"set": 1.0}}))
    assert not pack_for(RunConfig().override({"objectives.weights": {"clm": 1.0, "cls": 0.5}}))  # pooled states
    assert not pack_for(RunConfig().override({"objectives.weights": {"clm": 1.0, "coherence": 0.5}}))
    assert not pack_for(RunConfig().override({"model.cuisine_condition": True}))
    st = {"model.name": "set-transformer"}
    assert pack_for(RunConfig().override(st))  # element mlm (SAB, the default), with rtd, on ISAB
    assert pack_for(RunConfig().override({**st, "objectives.weights": {"mlm": 1.0, "rtd": 0.5}}))
    assert pack_for(RunConfig().override({**st, "model.block": "isab", "model.cuisine_condition": True}))
    assert not pack_for(RunConfig().override({**st, "objectives.weights": {"mlm": 1.0, "cls": 0.5}}))  # PMA
    assert not pack_for(RunConfig().override({**st, "model.coherence_head": True,
                                              "objectives.weights": {"mlm": 1.0, "coherence": 0.5}}))
    for loss in ("hungarian", "pooled"):  # the slot decoder: one query a row
        assert not pack_for(RunConfig().override({**st, "loss.name": loss}))
    assert not pack_for(RunConfig().override({"model.name": "deep-sets"}))
    assert not pack_for(RunConfig().override({"train.pack": False}))
    assert not objectives("clm", False).pack and objectives("set-ar", True).pack


@pytest.mark.parametrize(("over", "why"), [
    ({"objectives.weights": {"clm": 1.0, "cls": 0.5}}, "objective 'cls' does not run on packed rows"),
    ({"model.name": "deep-sets"}, "model 'deep-sets' does not run on packed rows"),
    ({"model.name": "set-transformer", "objectives.weights": {"mlm": 1.0, "cls": 0.5}},
     "objective 'cls' does not run on packed rows"),
    ({"model.name": "set-transformer", "loss.name": "pooled"}, "loss 'pooled' does not run on packed rows"),
    ({"model.cuisine_condition": True}, "model.cuisine_condition: a packed row has one cuisine prefix"),
])
def test_asking_to_pack_a_run_that_cannot_is_one_line(over, why):
    with pytest.raises(RecipesetError, match=f"run.toml: train.pack: {why}.*; set train.pack = false"):
        RunConfig().override({**over, "train.pack": True}, source="run.toml")


def test_the_cli_refuses_packing_in_one_line():
    one_line_error(invoke("train", "--model", "decoder", "--objective", "clm", "--objective", "cls=0.5",
                          "--set", "train.pack=true", "--no-track"),
                   "train.pack: objective 'cls' does not run on packed rows", "set train.pack = false")


# the hashes these configs had before train.pack existed (computed by the code of 8e27bd5)
BEFORE_PACKING = {
    "deep-sets": ({"model.name": "deep-sets"}, "f8a4a4862bf8b286687234713fff26460db383034911d24f6998259a5adaa02e"),
    "set-transformer-hungarian": ({"model.name": "set-transformer", "loss.name": "hungarian"},
                                  "466a1384e0ca83e1e6b3717d0865768ef4c70654c48c8272974cad387b8d937e"),
    # (these four by the code before the Set Transformer packed, which hashed them as the code of 8e27bd5 did)
    "set-transformer-mlm": ({"model.name": "set-transformer"},
                            "75e40040677769f8aa94b261dc600ff36d6a402d3fa979e64618bf0335a9599a"),
    "set-transformer-isab-mlm-rtd": ({"model.name": "set-transformer", "model.block": "isab",
                                      "objectives.weights": {"mlm": 1.0, "rtd": 0.5}},
                                     "a83260103c6a71cd1d140a4ba4c7b7c1b38f4c02d9e3a36f03984b4550fb6516"),
    "set-transformer-mlm-cls": ({"model.name": "set-transformer", "objectives.weights": {"mlm": 1.0, "cls": 0.5}},
                                "1f2c47fac0654d56f8eada160c4f409e8e9439db1ed1c68f14d695ba2fe55123"),
    "set-transformer-pooled": ({"model.name": "set-transformer", "loss.name": "pooled"},
                               "2e549d49344c858d646aff27c72af33c14116c9e5cdde8654ebc67541a5a36fe"),
    "decoder-clm-cls": ({"objectives.weights": {"clm": 1.0, "cls": 0.5}},
                        "c52277d01ed5bde22ef926bc1d06bb7b2f8d0953ee81b5277ea7948d35dc692a"),
    "decoder-cuisine": ({"model.cuisine_condition": True},
                        "62c9d89319a9aaf0ec2a7fc38fc1c9a748e1e5777af2d4ef37ae146818c75a83"),
    "decoder": ({}, "067eca1c8c13144404540cfb5089598a0e9b124f342416734f2ffcf197d56c6f"),
    "decoder-set-ar": ({"loss.name": "set-ar", "data.order": "shuffle"},
                       "0d09febdd62c7794564b9123234abced6c09f92d99e86598706df4a98b3b8b6a"),
}


@pytest.mark.parametrize("name", sorted(BEFORE_PACKING))
def test_runs_that_do_not_pack_keep_their_config_hash(name):
    over, before = BEFORE_PACKING[name]
    cfg = RunConfig().override(over)
    if pack_for(cfg):  # a decoder or element-MLM Set Transformer packs now: a grid re-trains it, unless it says
        # train.pack = false
        assert cfg.config_hash() != before
        assert cfg.override({"train.pack": False}).config_hash() == before
    else:
        assert cfg.config_hash() == before
        assert cfg.override({"train.pack": False}).config_hash() == before
