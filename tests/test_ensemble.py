"""Ensembles of trained models (recipeset.ensemble): the combination rule, one member = the model, the vocabulary
check, the protocol's tuners and the --ensemble option of the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import invoke, ok, one_line_error, tiny_args, write_grid
from test_model_io import QUERIES, VOCAB, _models

import recipeset
from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
from recipeset.ensemble import Ensemble, combine_log_probs
from recipeset.errors import RecipesetError
from recipeset.models import (
    CausalDecoder,
    DecoderConfig,
    DeepSets,
    DeepSetsConfig,
    SetTransformer,
    SetTransformerConfig,
    save_model,
)
from recipeset.models.base import offset_probs, pad_ids
from recipeset.protocol import STOP_THRESHOLDS, tune_cuisine_rule, tune_stop_rule

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    return _models()


def _deep_sets(seed: int, vocab: Vocabulary = VOCAB, **kwargs) -> DeepSets:
    torch.manual_seed(seed)
    model = DeepSets(DeepSetsConfig(d_model=16, cuisine_head=True, **kwargs), vocab)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


# ---- one member is the model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["decoder", "decoder-features", "set-transformer", "deep-sets"])
def test_one_member_scores_are_the_models_renormalised(models, name):
    model = models[name]
    ens = Ensemble([model])
    assert ens.scoring_modes == model.scoring_modes and ens.can_classify == model.can_classify
    for mode in model.scoring_modes:
        theirs = model.completion_scores(QUERIES, mode=mode)
        ours = ens.completion_scores(QUERIES, mode=mode)
        # the ensemble's scores are a distribution over the candidates: the model's up to each row's constant
        torch.testing.assert_close(ours, F.log_softmax(theirs, dim=1), atol=1e-5, rtol=0)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    if model.can_classify:
        torch.testing.assert_close(ens.classify(QUERIES), model.classify(QUERIES))


def test_one_member_completes_and_classifies_like_the_model():
    model = _deep_sets(1, stop_threshold=0.12)
    model.set_cuisine_offsets([0.5, -0.5])
    ens = Ensemble([model])
    assert ens.config.stop_threshold == 0.12  # starts from the member's tuned threshold
    torch.testing.assert_close(ens.completion_scores(QUERIES), model.completion_scores(QUERIES))
    assert ens.complete(QUERIES, max_new=5) == model.complete(QUERIES, max_new=5)
    tokens, mask = ens.encode_sets(QUERIES)
    ids, probs = ens.complete_ids(tokens, mask, max_new=5, return_probs=True)
    assert ids == model.complete_ids(tokens, mask, max_new=5)
    assert all(p >= 0.12 for row in probs for p in row) and [len(r) for r in probs] == [len(r) for r in ids]
    torch.testing.assert_close(ens.classify(QUERIES), model.classify(QUERIES))


# ---- two members: the average of log-probabilities ---------------------------------------------------------
@pytest.mark.parametrize("combine", ["logprob", "prob"])
def test_two_members_average_their_log_probs(models, combine):
    a, b = models["decoder"], models["deep-sets"]
    ens = Ensemble([a, b], combine=combine)
    assert ens.scoring_modes == ("next",)  # joint: only when every member offers it
    la = F.log_softmax(a.completion_scores(QUERIES), 1)
    lb = F.log_softmax(b.completion_scores(QUERIES), 1)
    mixed = (la + lb) / 2 if combine == "logprob" else torch.log((la.exp() + lb.exp()) / 2)
    expected = F.log_softmax(mixed, 1)
    got = ens.completion_scores(QUERIES)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.exp().sum(1), torch.ones(len(QUERIES)))
    assert torch.isinf(got[:, :NUM_SPECIALS]).all()
    plain = (_plain_classify(a) + _plain_classify(b)) / 2
    torch.testing.assert_close(ens.classify(QUERIES), offset_probs(plain, ens.config.cuisine_offsets))
    out = ens.complete(QUERIES, max_new=3)
    assert all(len(r) <= 3 and len(set(r)) == len(r) and not set(r) & set(q) for r, q in zip(out, QUERIES, strict=True))


def _plain_classify(model) -> torch.Tensor:
    """The model's cuisine probabilities without its decision rule."""
    offsets = model.config.cuisine_offsets
    model.set_cuisine_offsets(())
    try:
        return model.classify(QUERIES)
    finally:
        model.set_cuisine_offsets(offsets)


def test_members_rules_are_undone_and_the_ensemble_applies_one():
    a, b = _deep_sets(1), _deep_sets(2)
    a.set_cuisine_offsets([1.0, -1.0])
    b.set_cuisine_offsets([0.0, 0.5])
    ens = Ensemble([a, b])
    assert ens.config.cuisine_offsets == (0.5, -0.25)  # starts from the mean of the members' rules
    plain = (_plain_classify(a) + _plain_classify(b)) / 2
    torch.testing.assert_close(ens.classify(QUERIES), offset_probs(plain, [0.5, -0.25]))
    ens.set_cuisine_offsets(())  # what tune_cuisine_rule starts from: the mean of the plain probabilities
    torch.testing.assert_close(ens.classify(QUERIES), plain)
    assert Ensemble([_deep_sets(3), _deep_sets(4)]).config.cuisine_offsets == ()  # no member has a rule


def test_minus_inf_only_where_every_member_has_it():
    logps = torch.log(torch.tensor([[[0.0, 0.5, 0.5, 0.0]], [[0.0, 0.0, 0.5, 0.5]]]))  # [M=2, B=1, V=4]
    for combine in ("logprob", "prob"):
        out = combine_log_probs(logps, combine)
        assert torch.isneginf(out[0, 0]) and torch.isfinite(out[0, 1:]).all()
        torch.testing.assert_close(out.exp().sum(), torch.tensor(1.0))
    # the mean of the probabilities: (0.25, 0.5, 0.25) exactly
    torch.testing.assert_close(combine_log_probs(logps, "prob").exp()[0, 1:], torch.tensor([0.25, 0.5, 0.25]))


def test_generation_stays_within_a_members_input_length():
    torch.manual_seed(0)
    short = CausalDecoder(DecoderConfig(d_model=16, n_layers=1, n_heads=2, positions=True, max_len=5), VOCAB).eval()
    ens = Ensemble([short, _deep_sets(0)], stop_threshold=0.0)
    out = ens.complete([["tomato", "basil"], ["rice"]], max_new=8)  # the grown sets must still fit max_len
    assert [len(r) for r in out] == [3, 3]  # width 2: [BOS] + 2 + 3 - 1 = 5 positions at the last step


def test_joint_needs_every_member(models):
    ens = Ensemble([models["decoder"], models["decoder-features"]])
    assert ens.scoring_modes == ("next", "joint")
    assert torch.isfinite(ens.completion_scores(QUERIES, mode="joint")).any()
    with pytest.raises(RecipesetError, match="joint") as err:
        Ensemble([models["decoder"], models["deep-sets"]]).completion_scores(QUERIES, mode="joint")
    assert "\n" not in str(err.value)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sampled_from(VOCAB.ingredients), min_size=1, max_size=6, unique=True), st.randoms())
def test_a_set_models_ensemble_is_permutation_invariant(query, rnd):
    ens = _SET_ENSEMBLE
    shuffled = list(query)
    rnd.shuffle(shuffled)
    torch.testing.assert_close(ens.completion_scores([query]), ens.completion_scores([shuffled]),
                               atol=1e-5, rtol=0)


def _set_transformer(seed: int) -> SetTransformer:
    torch.manual_seed(seed)
    model = SetTransformer(SetTransformerConfig(d_model=16, n_heads=2, n_layers=1), VOCAB)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


_SET_ENSEMBLE = Ensemble([_deep_sets(0), _deep_sets(1), _set_transformer(2)])


# ---- errors --------------------------------------------------------------------------------------------------
def test_vocabulary_mismatch_is_one_line_naming_both():
    other = Vocabulary(VOCAB.ingredients[:-1] + ["saffron"], VOCAB.cuisines)
    with pytest.raises(RecipesetError) as err:
        Ensemble([_deep_sets(0), _deep_sets(1, other)], names=["runs/a/model", "runs/b/model"])
    message = str(err.value)
    assert "\n" not in message and "runs/a/model" in message and "runs/b/model" in message
    assert "ingredients" in message
    cuisines = Vocabulary(VOCAB.ingredients, ["italian", "thai"])
    with pytest.raises(RecipesetError, match="cuisines"):
        Ensemble([_deep_sets(0), _deep_sets(1, cuisines)])
    with pytest.raises(RecipesetError, match="at least one"):
        Ensemble([])
    with pytest.raises(RecipesetError, match="combine"):
        Ensemble([_deep_sets(0)], combine="median")


def test_classify_needs_every_member(models):
    ens = Ensemble([models["deep-sets"], models["set-transformer"]], names=["a", "b"])
    assert not ens.can_classify
    with pytest.raises(RecipesetError, match="b has no cuisine head"):
        ens.classify(QUERIES)


# ---- the protocol's tuners -------------------------------------------------------------------------------------
def test_the_protocol_tunes_an_ensemble():
    from recipeset.config import RunConfig
    from recipeset.data.prepare import prepare_data

    cfg = RunConfig().override({"data.n_recipes": 300})
    data = prepare_data(cfg.data)
    ens = Ensemble([_deep_sets(0, data.vocab), _deep_sets(1, data.vocab)])
    rule = tune_stop_rule(ens, data.val_eval)
    assert rule is not None
    if rule.rule == "size":  # at most stop_size added, at the grid's lowest threshold
        assert (ens.config.stop_threshold, ens.config.stop_size) == (min(STOP_THRESHOLDS), int(rule.value))
    else:
        assert (ens.config.stop_threshold, ens.config.stop_size) == (rule.value, None)
    cuisine = tune_cuisine_rule(ens, data.val_eval)
    assert cuisine is not None and len(ens.config.cuisine_offsets) in (0, data.vocab.num_cuisines)


def test_load_ensemble_from_directories(tmp_path):
    a = save_model(_deep_sets(0), tmp_path / "a")
    b = save_model(_deep_sets(1), tmp_path / "b")
    ens = recipeset.load_ensemble([str(a), str(b)])
    assert isinstance(ens, recipeset.Ensemble) and ens.names == [str(a), str(b)]
    tokens, mask = pad_ids([[NUM_SPECIALS, NUM_SPECIALS + 1]])
    assert ens.completion_scores_ids(tokens, mask).shape == (1, len(VOCAB))
    with pytest.raises(RecipesetError, match="nope"):
        recipeset.load_ensemble([str(a), str(tmp_path / "nope")])


# ---- the command line ------------------------------------------------------------------------------------------
def test_cli_complete_and_classify_with_an_ensemble(tmp_path):
    a = str(save_model(_deep_sets(0), tmp_path / "a"))
    b = str(save_model(_deep_sets(1), tmp_path / "b"))
    lines = ok("complete", a, "tomato, basil", "--ensemble", b, "--top", "3").output.strip().splitlines()
    names = [line.split()[1] for line in lines]
    expected = Ensemble([_deep_sets(0), _deep_sets(1)]).completion_scores([["tomato", "basil"]])[0]
    assert names == VOCAB.decode(expected.topk(3).indices.tolist())
    generated = ok("complete", a, "tomato", "--ensemble", b, "--generate", "--max-new", "3").output.strip()
    assert "tomato" not in generated
    assert len(ok("classify", a, "soy_sauce", "--ensemble", b, "--ensemble", a).output.strip().splitlines()) == 2
    one_line_error(invoke("complete", a, "tomato", "--ensemble", str(tmp_path / "missing")), "missing")
    c = str(save_model(_deep_sets(2, Vocabulary(VOCAB.ingredients + ["saffron"], VOCAB.cuisines)), tmp_path / "c"))
    one_line_error(invoke("complete", a, "tomato", "--ensemble", c), a, c, "ingredients")


def test_cli_evaluate_an_ensemble_of_two_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*tiny_args(skip=("model.n_layers",)), "--model", "deep-sets", "--objective", "mlm", "--objective",
            "cls=0.5", "--max-steps", "2", "--no-track", "--quiet"]
    for seed in (0, 1):
        ok("train", *args, "--seed", str(seed), "--out", f"r{seed}")
    single = json.loads(ok("evaluate", "r0/model", "--json").output)
    both = json.loads(ok("evaluate", "r0/model", "--ensemble", "r1/model", "--json").output)
    assert set(both) == set(single)
    for key in ("completion/n", "set/n", "cuisine/n"):
        assert both[key] == single[key]
    assert 0 < both["completion/mrr"] <= 1 and both["completion/mrr"] != single["completion/mrr"]
    one_line_error(invoke("evaluate", "r0/model", "--ensemble", "r9/model"), "r9")


# ---- the study: [[ensemble]] entries -------------------------------------------------------------------------
ENSEMBLE_TOML = """
[[ensemble]]
name = "dec+st"
variants = ["dec", "st"]
"""


def test_experiment_file_ensembles_are_checked(tmp_path):
    from recipeset.experiments import load_experiment

    path = write_grid(tmp_path, "ens-grid")
    base = path.read_text(encoding="utf-8")
    path.write_text(base + ENSEMBLE_TOML, encoding="utf-8")
    spec = load_experiment(path).ensembles[0]
    assert (spec.name, spec.variants, spec.combine) == ("dec+st", ("dec", "st"), "logprob")
    for bad, needle in (('name = "x"\nvariants = ["dex"]', "did you mean 'dec'"),
                        ('name = "dec"\nvariants = ["st"]', "new name"),
                        ('name = "x"\nvariants = ["st"]\ncombine = "max"', "combine"),
                        ('name = "x"\nvariants = []', "non-empty"),
                        ('name = "x"\nvariants = ["st"]\nseeds = [0]', "unknown key")):
        path.write_text(base + f"\n[[ensemble]]\n{bad}\n", encoding="utf-8")
        with pytest.raises(RecipesetError, match=needle) as err:
            load_experiment(path)
        assert "\n" not in str(err.value)
    path.write_text(base.replace('name = "st"', 'name = "st"\n"data.min_count" = 2') + ENSEMBLE_TOML,
                    encoding="utf-8")
    with pytest.raises(RecipesetError, match=r"\[data\] settings differ"):
        load_experiment(path)


def test_experiment_run_evaluates_an_ensemble_child(mlflow_uri, tmp_path):
    from mlflow import MlflowClient

    from recipeset.protocol import PER_QUERY_FILE, load_per_query

    path = write_grid(tmp_path, "ens-grid")
    path.write_text(path.read_text(encoding="utf-8") + ENSEMBLE_TOML, encoding="utf-8")
    first = ok("experiment", "run", str(path), "--out", "runs")
    assert "run ens-grid/dec+st  (2 models)" in first.output and "3 run, 0 skipped" in first.output
    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("ens-grid")
    runs = {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}
    ens = runs["ens-grid/dec+st"]
    parent = runs["ens-grid/grid"]
    assert ens.info.status == "FINISHED" and ens.data.tags["variant"] == "dec+st"
    assert ens.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert ens.data.tags["members"] == "ens-grid/dec/seed0, ens-grid/st/seed0"
    member = runs["ens-grid/dec/seed0"]
    # the same test queries and draws as the members
    assert ens.data.metrics["test/completion/n"] == member.data.metrics["test/completion/n"]
    assert ens.data.metrics["test/completion/draws"] == member.data.metrics["test/completion/draws"]
    assert "stop_threshold" in ens.data.metrics and "val_eval/completion/mrr" in ens.data.metrics
    ranks = load_per_query(tmp_path / "runs" / "ens-grid" / "dec+st" / PER_QUERY_FILE)
    theirs = load_per_query(tmp_path / "runs" / "ens-grid" / "dec" / "seed0" / PER_QUERY_FILE)
    key = ["split", "mode", "recipe", "draw", "target"]
    next_ranks = theirs[theirs["mode"] == "next"]
    assert ranks[key].sort_values(key).to_numpy().tolist() == next_ranks[key].sort_values(key).to_numpy().tolist()
    assert PER_QUERY_FILE in {a.path for a in c.list_artifacts(ens.info.run_id)}
    tables = json.loads(ok("compare", "ens-grid", "--json").output)
    assert tables["completion"]["dec+st"]["seeds"] == 1 and tables["completion"]["dec+st"]["test/completion/mrr"]
    again = ok("experiment", "run", str(path), "--out", "runs")
    assert "skip ens-grid/dec+st: finished as run" in again.output and "0 run, 3 skipped" in again.output
