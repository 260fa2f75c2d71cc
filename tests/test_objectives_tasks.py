"""The objectives glue (recipeset/objectives/tasks.py): every valid model × objective × loss trains a step,
gradients go where they should (and not through a detached encoder), alpha combination, invalid combinations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recipeset.config import RunConfig, resolve_objectives
from recipeset.data.collate import collate
from recipeset.data.prepare import prepare_data
from recipeset.errors import RecipesetError
from recipeset.objectives.tasks import Objectives, cuisine_class_weights, split_query
from recipeset.pipeline import build_model
from recipeset.registry import MODELS
from recipeset.training import make_optimizer

TINY = {"data.n_recipes": 300, "model.d_model": 16}


def num(t: torch.Tensor) -> float:
    return float(t.detach())


def make_cfg(model: str, loss: str = "standard", weights: dict | None = None, **extra) -> RunConfig:
    over = {**TINY, "model.name": model, "loss.name": loss, **extra}
    if model != "deep-sets":
        over["model.n_layers"] = 1
    if weights is not None:
        over["objectives.weights"] = weights
    return RunConfig().override(over, source="test")


@pytest.fixture(scope="module")
def data():
    return prepare_data(RunConfig().override({"data.n_recipes": 300}, source="test").data)


def build(cfg: RunConfig, data):
    weights = resolve_objectives(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, data.vocab, weights, int(data.train.lengths.max()))
    return model, Objectives(cfg, weights), weights


def batch_of(data, n: int = 16):
    return collate(data.train, np.arange(n))


# Every combination "What runs with what" allows (model, loss, objective weights).
VALID = [
    ("decoder", "standard", {"clm": 1.0}),
    ("decoder", "standard", {"clm": 1.0, "cls": 0.5}),
    ("decoder", "standard", {"cls": 1.0}),
    ("decoder", "standard", {"coherence": 1.0}),
    ("decoder", "standard", {"set": 1.0}),
    ("decoder", "set-ar", {"set": 1.0}),
    ("decoder", "min-perm", {"set": 1.0}),
    ("decoder", "pooled", {"set": 1.0}),
    ("set-transformer", "standard", {"mlm": 1.0}),
    ("set-transformer", "standard", {"rtd": 1.0}),
    ("set-transformer", "standard", {"cls": 1.0}),
    ("set-transformer", "standard", {"coherence": 1.0}),
    ("set-transformer", "standard", {"mlm": 1.0, "rtd": 1.0, "cls": 1.0, "coherence": 1.0}),
    ("set-transformer", "hungarian", {"set": 1.0}),
    ("set-transformer", "pooled", {"set": 1.0}),
    ("set-transformer", "hungarian", {"set": 1.0, "mlm": 0.5, "cls": 0.5}),
    ("deep-sets", "standard", {"mlm": 1.0}),
    ("deep-sets", "standard", {"cls": 1.0}),
    ("deep-sets", "standard", {"mlm": 1.0, "cls": 1.0}),
    ("deep-sets", "multilabel", {"set": 1.0}),
    ("deep-sets", "multilabel", {"set": 1.0, "cls": 0.5}),
]


def unused_ok(model_name: str, weights: dict) -> tuple[str, ...]:
    """Parameter prefixes that legitimately get no gradient: the Set Transformer's PMA(1) pooling only feeds
    the pooled heads (cls, coherence)."""
    if model_name == "set-transformer" and not {"cls", "coherence"} & set(weights):
        return ("pool.", "ln_pool.")
    return ()


@pytest.mark.parametrize("model_name,loss,weights", VALID, ids=lambda v: str(v))
def test_every_valid_combination_trains_one_step(data, model_name, loss, weights):
    cfg = make_cfg(model_name, loss, weights)
    model, objectives, resolved = build(cfg, data)
    assert resolved == weights
    model.train()
    out = objectives(model, batch_of(data), torch.Generator().manual_seed(1))
    assert set(out) >= {f"loss/{k}" for k in weights} | {"loss/total"}
    for k, v in out.items():
        assert torch.isfinite(v).all(), k
    assert num(out["loss/total"]) > 0
    assert num(out["loss/total"]) == pytest.approx(sum(w * num(out[f"loss/{k}"]) for k, w in weights.items()),
                                                     rel=1e-5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(model, lr=1e-2, weight_decay=0.0)
    opt.zero_grad()
    out["loss/total"].backward()
    allowed = unused_ok(model_name, weights)
    for name, p in model.named_parameters():
        if name.startswith(allowed):
            continue
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"no gradient reaches {name}"
    opt.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "an optimizer step changed nothing"


@pytest.mark.parametrize("model_name", ["decoder", "set-transformer", "deep-sets"])
def test_cls_gradient_reaches_head_and_encoder(data, model_name):
    lm = {"decoder": "clm", "set-transformer": "mlm", "deep-sets": "mlm"}[model_name]
    cfg = make_cfg(model_name, "standard", {lm: 1.0, "cls": 1.0})
    model, objectives, _ = build(cfg, data)
    out = objectives(model, batch_of(data), torch.Generator().manual_seed(0))
    out["loss/cls"].backward()  # the cls loss alone
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in ("cuisine_head.weight", "embed.table.weight"))


@pytest.mark.parametrize("model_name", ["decoder", "set-transformer", "deep-sets"])
def test_detached_cls_trains_only_the_head(data, model_name):
    lm = {"decoder": "clm", "set-transformer": "mlm", "deep-sets": "mlm"}[model_name]
    cfg = make_cfg(model_name, "standard", {lm: 1.0, "cls": 1.0}, **{"objectives.detach": True})
    model, objectives, _ = build(cfg, data)
    out = objectives(model, batch_of(data), torch.Generator().manual_seed(0))
    out["loss/cls"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"cuisine_head.weight", "cuisine_head.bias"}
    # ... while the LM objective still trains the encoder
    model.zero_grad()
    out = objectives(model, batch_of(data), torch.Generator().manual_seed(0))
    out["loss/total"].backward()
    assert model.embed.table.weight.grad is not None and model.embed.table.weight.grad.abs().sum() > 0


def test_detached_cls_only_run_leaves_the_encoder_untouched(data):
    cfg = make_cfg("decoder", "standard", {"cls": 1.0}, **{"objectives.detach": True})
    model, objectives, _ = build(cfg, data)
    out = objectives(model, batch_of(data), torch.Generator().manual_seed(0))
    out["loss/total"].backward()
    for name, p in model.named_parameters():
        has = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert has == name.startswith("cuisine_head."), name


def test_deep_sets_mlp_cuisine_head_learns_from_the_raw_sum_not_rho(data):
    cfg = make_cfg("deep-sets", "standard", {"cls": 1.0}, **{"model.cuisine_hidden": 12, "model.phi_layers": 1})
    model, objectives, _ = build(cfg, data)
    batch = batch_of(data)
    out = objectives(model, batch, torch.Generator().manual_seed(0))
    out["loss/total"].backward()
    with_grad = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"embed", "phi", "cuisine_head"}  # rho and ln_f serve completion only
    model.eval()
    with torch.no_grad():
        fwd = model(batch.tokens, batch.mask)
        s = (model.phi(model.embed(batch.tokens)) * batch.mask[..., None]).sum(1)
        torch.testing.assert_close(fwd.cuisine_features, s)
        torch.testing.assert_close(fwd.cuisine_logits, model.cuisine_head(s))
        labelled = batch.cuisine >= 0
        by_hand = torch.nn.functional.cross_entropy(fwd.cuisine_logits[labelled], batch.cuisine[labelled])
        got = objectives(model, batch, torch.Generator().manual_seed(0))["loss/cls"]
    torch.testing.assert_close(got, by_hand)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_alpha_combination_matches_hand_combined(data, alpha):
    weights = {"clm": 1.0, "coherence": 0.5, "cls": 2.0}
    cfg = make_cfg("decoder", "standard", weights, **{"objectives.alpha": alpha})
    model, objectives, _ = build(cfg, data)
    model.eval()  # no dropout: three forward passes must agree
    b = batch_of(data)
    out = objectives(model, b, torch.Generator().manual_seed(3))
    separate = {}
    for name in weights:  # each objective alone, same generator seed, plain weighted sum
        single = Objectives(make_cfg("decoder", "standard", {name: 1.0}), {name: 1.0})
        separate[name] = num(single(model, b, torch.Generator().manual_seed(3))[f"loss/{name}"])
    # clm and cls draw nothing from the generator, so coherence sees the same draw alone as combined
    for name in weights:
        assert num(out[f"loss/{name}"]) == pytest.approx(separate[name], rel=1e-6)
    task = 2.0 * separate["cls"]
    lm = 1.0 * separate["clm"] + 0.5 * separate["coherence"]
    assert num(out["loss/total"]) == pytest.approx(alpha * task + (1 - alpha) * lm, rel=1e-6)


def test_alpha_gradient_is_the_combined_gradient(data):
    cfg = make_cfg("decoder", "standard", {"clm": 1.0, "cls": 1.0}, **{"objectives.alpha": 0.25})
    model, objectives, _ = build(cfg, data)
    model.eval()
    b = batch_of(data)
    objectives(model, b, torch.Generator().manual_seed(0))["loss/total"].backward()
    g_total = model.embed.table.weight.grad.clone()
    grads = {}
    for name in ("clm", "cls"):
        model.zero_grad()
        objectives(model, b, torch.Generator().manual_seed(0))[f"loss/{name}"].backward()
        grads[name] = model.embed.table.weight.grad.clone()
    torch.testing.assert_close(g_total, 0.25 * grads["cls"] + 0.75 * grads["clm"], rtol=1e-5, atol=1e-7)


def test_perplexity_is_exp_of_the_lm_loss(data):
    model, objectives, _ = build(make_cfg("decoder", "standard", {"clm": 1.0}), data)
    out = objectives(model, batch_of(data), torch.Generator().manual_seed(0))
    assert num(out["ppl/clm"]) == pytest.approx(math.exp(num(out["loss/clm"])), rel=1e-5)


def test_set_ar_is_at_most_standard_ce_on_the_same_batch(data):
    """DESIGN: set-ar ≤ the standard CE of the same order (same model, same fed order)."""
    model, set_ar, _ = build(make_cfg("decoder", "set-ar", {"set": 1.0}), data)
    model.eval()
    standard = Objectives(make_cfg("decoder", "standard", {"clm": 1.0}), {"clm": 1.0})
    b = batch_of(data, 32)
    g = torch.Generator().manual_seed(0)
    assert num(set_ar(model, b, g)["loss/set"]) <= num(standard(model, b, g)["loss/clm"]) + 1e-6


# ---- invalid combinations --------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name,loss,weights,needle", [
    ("decoder", "hungarian", {"set": 1.0}, "hungarian"),
    ("decoder", "standard", {"mlm": 1.0}, "mlm"),
    ("decoder", "standard", {"rtd": 1.0}, "rtd"),
    ("deep-sets", "standard", {"set": 1.0}, "deep-sets"),
    ("deep-sets", "standard", {"coherence": 1.0}, "coherence"),
    ("set-transformer", "standard", {"clm": 1.0, "cls": 1.0}, "clm"),
    ("set-transformer", "set-ar", {"set": 1.0}, "set-ar"),
    ("decoder", "set-ar", {"clm": 1.0, "cls": 0.5}, "set"),          # a set loss without the set objective
    ("set-transformer", "hungarian", {"mlm": 1.0}, "set"),
])
def test_invalid_combinations_raise_one_line(model_name, loss, weights, needle):
    with pytest.raises(RecipesetError) as e:  # what runs with what is checked with the config
        make_cfg(model_name, loss, weights)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg


def test_alpha_needs_cls_and_an_lm_objective():
    with pytest.raises(RecipesetError, match="alpha"):
        make_cfg("decoder", "standard", {"clm": 1.0}, **{"objectives.alpha": 0.5})
    with pytest.raises(RecipesetError, match="alpha"):
        make_cfg("decoder", "standard", {"cls": 1.0}, **{"objectives.alpha": 0.5})
    assert resolve_objectives(make_cfg("decoder", "standard", {"clm": 1.0, "cls": 1.0},
                                       **{"objectives.alpha": 0.5})) == {"clm": 1.0, "cls": 1.0}


@pytest.mark.parametrize("model_name,loss,expected", [
    ("decoder", "standard", {"clm": 1.0}),
    ("decoder", "set-ar", {"set": 1.0}),
    ("decoder", "min-perm", {"set": 1.0}),
    ("decoder", "pooled", {"set": 1.0}),
    ("set-transformer", "standard", {"mlm": 1.0}),
    ("set-transformer", "hungarian", {"set": 1.0}),
    ("set-transformer", "pooled", {"set": 1.0}),
    ("deep-sets", "standard", {"mlm": 1.0}),
    ("deep-sets", "multilabel", {"set": 1.0}),
])
def test_resolve_objectives_defaults(model_name, loss, expected):
    cfg = make_cfg(model_name, loss)  # objectives left at the default {"clm": 1}
    assert resolve_objectives(cfg) == expected
    assert MODELS.get(model_name).natural_objectives(loss != "standard", {}) == expected


def test_explicit_objectives_are_kept():
    cfg = make_cfg("set-transformer", "standard", {"mlm": 1.0, "cls": 0.3})
    assert resolve_objectives(cfg) == {"mlm": 1.0, "cls": 0.3}


def test_set_transformer_set_needs_slots_larger_than_the_targets(data):
    cfg = make_cfg("set-transformer", "hungarian", {"set": 1.0}, **{"model.n_slots": 2})
    with pytest.raises(RecipesetError, match="model.n_slots=2 is smaller than the largest recipe"):
        build(cfg, data)  # a run: refused before training
    weights = resolve_objectives(cfg)
    model = build_model(cfg, data.vocab, weights, 2)  # a model built for smaller sets: refused by the loss
    with pytest.raises(RecipesetError, match="n_slots"):
        Objectives(cfg, weights)(model, batch_of(data), torch.Generator().manual_seed(0))


def test_balanced_class_weights_by_hand():
    # 4 labelled recipes (one unlabelled), 2 of 3 classes occur: w_c = 4 / (2 · n_c); absent class counts as 1
    w = cuisine_class_weights("balanced", np.array([0, 0, 0, 1, -1]), 3)
    assert w.tolist() == pytest.approx([4 / 6, 2.0, 2.0])
    assert cuisine_class_weights("none", np.array([0, 1]), 2) is None
    # sampling weights count like repeated recipes: [0 (x3), 1] weighted == [0, 0, 0, 1] unweighted
    sw = cuisine_class_weights("balanced", np.array([0, 1]), 2, sample_weights=np.array([3.0, 1.0]))
    assert sw.tolist() == pytest.approx(cuisine_class_weights("balanced", np.array([0, 0, 0, 1]), 2).tolist())
    with pytest.raises(RecipesetError, match="no cuisine labels"):
        cuisine_class_weights("balanced", np.array([-1, -1]), 2)


def test_balanced_cls_loss_is_the_weighted_mean_of_the_per_recipe_losses(data):
    cfg = make_cfg("deep-sets", "standard", {"cls": 1.0}, **{"objectives.cls_class_weight": "balanced"})
    weights = resolve_objectives(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, data.vocab, weights, int(data.train.lengths.max()))
    cw = cuisine_class_weights("balanced", data.train.cuisine, data.vocab.num_cuisines)
    batch = batch_of(data, 32)
    got = num(Objectives(cfg, weights, class_weights=cw)(model, batch, torch.Generator().manual_seed(0))["loss/cls"])
    with torch.no_grad():
        logp = torch.log_softmax(model.cuisine_head(model(batch.tokens, batch.mask).pooled), -1).numpy()
    y = batch.cuisine.numpy()
    keep = y >= 0
    per = -logp[keep, y[keep]]
    wy = cw.numpy()[y[keep]]
    assert len(set(y[keep])) > 1 and got == pytest.approx(float((wy * per).sum() / wy.sum()), rel=1e-5)
    plain = num(Objectives(make_cfg("deep-sets", "standard", {"cls": 1.0}), weights)(
        model, batch, torch.Generator().manual_seed(0))["loss/cls"])
    assert plain == pytest.approx(float(per.mean()), rel=1e-5) and abs(plain - got) > 1e-4


def test_balanced_cls_without_the_training_labels_is_a_clear_error():
    cfg = make_cfg("deep-sets", "standard", {"cls": 1.0}, **{"objectives.cls_class_weight": "balanced"})
    with pytest.raises(RecipesetError, match="cls_class_weight"):
        Objectives(cfg, resolve_objectives(cfg))


def test_deep_sets_trains_one_head_mlm_or_multilabel_set():
    with pytest.raises(RecipesetError, match="not both"):
        make_cfg("deep-sets", "multilabel", {"mlm": 1.0, "set": 1.0})
    with pytest.raises(RecipesetError, match="loss 'pooled' does not run with model 'deep-sets'"):
        make_cfg("deep-sets", "pooled", {"set": 1.0})


def test_multilabel_set_objective_is_the_bce_of_the_hidden_part(data):
    cfg = make_cfg("deep-sets", "multilabel")
    model, objectives, _ = build(cfg, data)
    assert model.config.multilabel
    batch = batch_of(data)
    got = num(objectives(model, batch, torch.Generator().manual_seed(3))["loss/set"])
    q, qm, targets = split_query(batch, torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(q, qm).set_logits
    total = 0.0
    for b in range(len(targets)):
        hidden = {int(i) for i in targets[b] if i >= 0}
        for v in range(logits.shape[1]):
            x = float(logits[b, v])
            if math.isfinite(x):
                p = 1 / (1 + math.exp(-x))
                total += -math.log(p) if v in hidden else -math.log(1 - p)
            else:
                assert v not in hidden
    assert got == pytest.approx(total / len(targets), rel=1e-4)


def test_held_out_all_is_the_mean_of_every_leave_one_out_query():
    """objectives.held_out = "all": each set's loss is the mean over its ingredients of the loss of predicting
    that ingredient from the rest (one model call per leave-one-out query, done by hand here)."""
    from recipeset.data.sets import EncodedSets
    from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
    from recipeset.models import DeepSets, DeepSetsConfig

    vocab = Vocabulary([f"i{k}" for k in range(7)])
    torch.manual_seed(0)
    model = DeepSets(DeepSetsConfig(d_model=8), vocab).eval()
    lists = [[NUM_SPECIALS + k for k in s] for s in ([0, 3, 5], [1, 2], [6])]
    batch = collate(EncodedSets.from_lists(lists), np.arange(3))
    cfg = RunConfig().override({"model.name": "deep-sets", "objectives.weights": {"mlm": 1.0},
                                "objectives.held_out": "all"})
    got = Objectives(cfg, {"mlm": 1.0}, class_weights=None)(model, batch, torch.Generator())["loss/mlm"]
    per_set = []
    for s in lists:
        losses = []
        for i, target in enumerate(s):
            rest = [t for j, t in enumerate(s) if j != i] or [0]  # an empty rest: one padded position
            mask = torch.tensor([[len(s) > 1] * len(rest)])
            logits = model(torch.tensor([rest]), mask).set_logits[0]
            losses.append(-torch.log_softmax(logits, 0)[target])
        per_set.append(torch.stack(losses).mean())
    assert torch.allclose(got, torch.stack(per_set).mean(), atol=1e-5)



def test_null_stop_adds_nothing_missing_for_every_whole_set():
    """model.null_stop: the held-out loss plus objectives.null_prob × the mean over the non-empty sets of
    −log p([NULL] | the whole set), [NULL] competing with the ingredients in the one softmax."""
    from recipeset.data.sets import EncodedSets
    from recipeset.data.vocab import NULL, NUM_SPECIALS, Vocabulary
    from recipeset.models import DeepSets, DeepSetsConfig

    vocab = Vocabulary([f"i{k}" for k in range(7)])
    torch.manual_seed(0)
    model = DeepSets(DeepSetsConfig(d_model=8, null_stop=True), vocab).eval()
    lists = [[NUM_SPECIALS + k for k in s] for s in ([0, 3, 5], [1, 2], [6])]
    batch = collate(EncodedSets.from_lists(lists), np.arange(3))
    cfg = RunConfig().override({"model.name": "deep-sets", "objectives.weights": {"mlm": 1.0},
                                "objectives.null_prob": 0.25})
    got = Objectives(cfg, {"mlm": 1.0}, class_weights=None)(model, batch, torch.Generator())["loss/mlm"]
    from recipeset.objectives.tasks import _held_out_all

    by_hand = torch.stack([-torch.log_softmax(model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.bool))
                                              .set_logits[0], 0)[NULL] for s in lists]).mean()
    assert torch.allclose(got, _held_out_all(Objectives(cfg, {"mlm": 1.0}), model, batch) + 0.25 * by_hand,
                          atol=1e-5)
    # completion scores are over the ingredients (which one is missing), [NULL] left out
    tokens, mask = batch.tokens[:1], batch.mask[:1]
    assert model.completion_scores_ids(tokens, mask)[0, NULL] == float("-inf")
    # completion goes on while 1 − p([NULL]) reaches the threshold: what it returns as the stop probabilities
    model.config.stop_threshold = 0.0
    ids, probs = model.complete_ids(tokens, mask, max_new=3, return_probs=True)
    p_null = torch.softmax(model(tokens, mask).set_logits[0], 0)[NULL]
    assert probs[0][0] == pytest.approx(float(1 - p_null.detach()), abs=1e-6) and len(ids[0]) == 3
    model.config.stop_threshold = probs[0][0] + 1e-4  # just above the first step's: nothing added
    assert model.complete_ids(tokens, mask, max_new=3) == [[]]


def test_held_out_all_plus_part_adds_the_hidden_part_predicted_from_the_rest():
    """objectives.held_out = "all+part": the "all" loss plus, for each set, the mean over a hidden random part
    (split_query with the step's generator) of −log p(hidden ingredient | the rest), sets weighted equally."""
    from recipeset.data.sets import EncodedSets
    from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
    from recipeset.models import DeepSets, DeepSetsConfig

    vocab = Vocabulary([f"i{k}" for k in range(9)])
    torch.manual_seed(0)
    model = DeepSets(DeepSetsConfig(d_model=8), vocab).eval()
    lists = [[NUM_SPECIALS + k for k in s] for s in ([0, 3, 5, 7], [1, 2], [6], [4, 8, 2])]
    batch = collate(EncodedSets.from_lists(lists), np.arange(4))
    cfg = RunConfig().override({"model.name": "deep-sets", "objectives.weights": {"mlm": 1.0}})
    both = Objectives(cfg.override({"objectives.held_out": "all+part"}), {"mlm": 1.0}, class_weights=None)
    got = both(model, batch, torch.Generator().manual_seed(3))["loss/mlm"]
    all_only = Objectives(cfg, {"mlm": 1.0}, class_weights=None)(model, batch, torch.Generator())["loss/mlm"]
    q_tokens, q_mask, targets = split_query(batch, torch.Generator().manual_seed(3))  # the same draw, by hand
    per_set = []
    for b in range(len(lists)):
        query = q_tokens[b][q_mask[b]].tolist()
        hidden = [t for t in targets[b].tolist() if t != -100]
        assert sorted(query + hidden) == sorted(lists[b]) and hidden  # a partition, at least one hidden
        logits = model(torch.tensor([query or [0]]), torch.tensor([[bool(query)] * max(1, len(query))])).set_logits[0]
        per_set.append(-torch.log_softmax(logits, 0)[hidden].mean())
    assert torch.allclose(got, all_only + torch.stack(per_set).mean(), atol=1e-5)


@pytest.mark.parametrize("heads", [0, 2])
def test_deep_sets_one_sum_held_out_logits_equal_the_generic_per_query_version(heads):
    """Row i of the one-pass leave-one-out logits is the set without element i scored on its own — with
    attention_heads too (the sum without x_i attends to the elements but x_i)."""
    from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
    from recipeset.models import DeepSets, DeepSetsConfig
    from recipeset.models.base import RecipeModel, pad_ids

    torch.manual_seed(1)
    model = DeepSets(DeepSetsConfig(d_model=8, phi_layers=1, attention_heads=heads),
                     Vocabulary([f"i{k}" for k in range(9)])).eval()
    with torch.no_grad():  # weights far from the 0.02 init, so the attention is far from uniform
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape))
    tokens, mask = pad_ids([[NUM_SPECIALS + k for k in s] for s in ([0, 4, 2, 7], [3], [5, 1])])
    fast = model.held_out_logits(tokens, mask)
    generic = RecipeModel.held_out_logits(model, tokens, mask)
    assert fast.shape == (7, len(model.vocab))
    assert torch.equal(torch.isinf(fast), torch.isinf(generic))
    assert torch.allclose(fast[torch.isfinite(fast)], generic[torch.isfinite(generic)], atol=1e-5)
