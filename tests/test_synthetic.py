"""The synthetic dataset: spec loading/validation, the generator's statistics, and the exact oracle checked
against brute-force enumeration of a tiny hand-made spec."""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from importlib import resources

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recipeset.data.sets import EncodedSets
from recipeset.data.sources.synthetic import (
    SyntheticOracle,
    SyntheticSpec,
    generate_records,
    load_spec,
    load_synthetic,
)
from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError

torch.set_num_threads(1)

# Two cuisines; `stew` and `soup` share a, b, c, f but list a/b in opposite order (ordered twins); `c` is in
# all three templates; `stew` has an exact one-of group, `soup` an at-most-one group.
TINY = {
    "description": "tiny",
    "cuisines": {
        "north": {"prior": 0.6, "templates": {
            "stew": {"weight": 2, "steps": ["a", "b", {"c": 0.5}, {"d": 0.3, "e": 0.7}, {"f": 0.4}]},
            "soup": {"weight": 1, "steps": ["b", "a", {"c": 0.2, "g": 0.3}, "h", {"f": 0.5}]},
        }},
        "south": {"prior": 0.4, "templates": {
            "curry": {"weight": 1, "steps": [{"a": 0.5}, "g", "h", {"c": 0.6}, "i", {"d": 0.5}]},
        }},
    },
}


def enumerate_recipes(spec: dict) -> list[tuple[str, tuple[str, ...], float]]:
    """Every (cuisine, emitted sequence in step order, probability) the spec can produce, by brute force."""
    out = []
    for c, cd in spec["cuisines"].items():
        total_w = sum(t["weight"] for t in cd["templates"].values())
        for td in cd["templates"].values():
            options = []
            for step in td["steps"]:
                if isinstance(step, str):
                    options.append([(step, 1.0)])
                else:
                    rest = 1.0 - sum(step.values())
                    options.append(list(step.items()) + ([(None, rest)] if rest > 1e-12 else []))
            for choice in itertools.product(*options):
                p = cd["prior"] * td["weight"] / total_w * math.prod(q for _, q in choice)
                out.append((c, tuple(n for n, _ in choice if n is not None), p))
    return out


def tiny_vocab() -> Vocabulary:
    names = sorted({n for _, seq, _ in enumerate_recipes(TINY) for n in seq})
    return Vocabulary(names, ["north", "south"])


def batch(vocab: Vocabulary, sets) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, mask = EncodedSets.from_lists([vocab.encode(list(s)) for s in sets]).padded()
    return torch.from_numpy(tokens), torch.from_numpy(mask)


@pytest.fixture(scope="module")
def default_vocab() -> Vocabulary:
    train = generate_records(6000)
    return Vocabulary.build([r["ingredients"] for r in train], [r["cuisine"] for r in train])


def loo_queries(records, vocab: Vocabulary, seed: int = 1):
    """Leave-one-out queries as the evaluation builds them: order kept, one uniform position removed."""
    rng = np.random.default_rng(seed)
    queries, targets = [], []
    for r in records:
        ids = vocab.encode(r["ingredients"])
        j = int(rng.integers(len(ids)))
        targets.append(ids[j])
        queries.append(ids[:j] + ids[j + 1:])
    tokens, mask = EncodedSets.from_lists(queries).padded()
    return torch.from_numpy(tokens), torch.from_numpy(mask), torch.tensor(targets)


# ---- the packaged spec --------------------------------------------------------------------------------
def test_spec_ships_as_package_data_and_is_sensible():
    res = resources.files("recipeset").joinpath("resources", "synthetic.toml")
    assert res.is_file()
    sp = load_spec()
    assert sp.source.endswith("synthetic.toml") and sp.sha256 is not None
    assert len(sp.cuisines) == 6 and abs(sp.priors.sum() - 1) < 1e-9
    assert 80 <= sp.n_ingredients <= 150
    assert all(re.fullmatch(r"[a-z0-9_]+", n) for n in sp.ingredients)
    for c in range(len(sp.cuisines)):
        assert 4 <= (sp.template_cuisine == c).sum() <= 8  # 3-5 dishes + twins/shared dishes
    sizes_min = (sp.none == 0).sum(1)
    sizes_max = (sp.none < 1).sum(1)
    assert sizes_min.min() >= 3 and sizes_max.max() <= 15
    mean_size = float((sp.template_prob[:, None] * (1 - sp.none)).sum())
    assert 7.0 <= mean_size <= 9.0
    # ingredients shared across cuisines
    cuisines_per_ingredient = [len(set(sp.template_cuisine[sp.pool[:, i]])) for i in range(sp.n_ingredients)]
    assert sum(n >= 2 for n in cuisines_per_ingredient) >= 20


# ---- the generator ------------------------------------------------------------------------------------
def test_generator_is_deterministic_and_seeds_differ():
    a, b = generate_records(300, seed=3), generate_records(300, seed=3)
    assert a == b
    c = generate_records(300, seed=4)
    assert [r["ingredients"] for r in a] != [r["ingredients"] for r in c]
    assert a[0]["recipe_id"] == "syn:000000" and a[123]["recipe_id"] == "syn:000123"
    assert {r["source"] for r in a} == {"synthetic"}
    # the same seed gives the same sets in both modes; only the order differs
    o = generate_records(300, seed=3, ordered=True)
    assert [sorted(r["ingredients"]) for r in a] == [sorted(r["ingredients"]) for r in o]
    assert [r["ingredients"] for r in a] != [r["ingredients"] for r in o]


def test_ordered_mode_follows_the_template_sequence_and_normal_mode_does_not():
    sp = load_spec()
    names = {t.name: i for i, t in enumerate(sp.templates)}  # template names may repeat across cuisines
    by_key = {(t.cuisine, t.name): i for i, t in enumerate(sp.templates)}
    assert names
    in_order = {}
    for ordered in (True, False):
        recs = generate_records(2000, seed=1, ordered=ordered)
        ok = []
        for r in recs:
            t = by_key[(r["cuisine"], r["template"])]
            ranks = [sp.step_of[t, sp.index[n]] for n in r["ingredients"]]
            ok.append(all(x < y for x, y in itertools.pairwise(ranks)))
        in_order[ordered] = np.mean(ok)
    assert in_order[True] == 1.0
    assert in_order[False] < 0.01  # a random permutation of ~8 ingredients is almost never sorted


def test_load_synthetic_builds_a_recipe_table(tmp_path):
    from recipeset.data.sources import load_dataset

    t = load_synthetic(n_recipes=200, seed=2)
    assert t.name == "synthetic" and len(t) == 200
    assert t.recipe_ids[:2] == ["syn:000000", "syn:000001"]
    assert set(t.frame["source"]) == {"synthetic"} and t.frame["cuisine"].notna().all()
    assert t.ingredients == [r["ingredients"] for r in generate_records(200, seed=2)]
    assert t.sha256 == load_synthetic(n_recipes=200, seed=2).sha256
    assert t.sha256 != load_synthetic(n_recipes=200, seed=3).sha256
    assert t.sha256 != load_synthetic(n_recipes=200, seed=2, ordered=True).sha256
    assert load_dataset("synthetic", n_recipes=50, seed=2).ingredients == t.ingredients[:50]
    # a custom spec file through load_dataset(path=...)
    path = tmp_path / "tiny.toml"
    path.write_text('[cuisines.x]\nprior = 1.0\n[cuisines.x.templates.t]\nweight = 1\nsteps = ["a", "b", {c = 0.5}]\n')
    tiny = load_dataset("synthetic", path=path, n_recipes=20)
    assert {frozenset(s) for s in tiny.ingredients} <= {frozenset("ab"), frozenset("abc")}
    with pytest.raises(RecipesetError, match="n_recipes"):
        load_synthetic(n_recipes=0)


def test_statistics_match_the_spec():
    sp = load_spec()
    n = 20000
    recs = generate_records(n, seed=11)
    key = {(t.cuisine, t.name): i for i, t in enumerate(sp.templates)}
    counts = np.bincount([key[(r["cuisine"], r["template"])] for r in recs], minlength=sp.n_templates)
    p = sp.template_prob
    assert np.all(np.abs(counts - n * p) <= 4 * np.sqrt(n * p * (1 - p)) + 1)
    # inclusion of optional / alternative / required ingredients inside one template
    t = key[("italian", "pasta_al_pomodoro")]
    rows = [set(r["ingredients"]) for r in recs if key[(r["cuisine"], r["template"])] == t]
    m = len(rows)
    for name, q in [("basil", 0.7), ("parmesan_cheese", 0.3), ("pecorino_cheese", 0.2), ("onion", 0.3),
                    ("pasta", 1.0)]:
        freq = sum(name in r for r in rows)
        assert abs(freq - m * q) <= 4 * math.sqrt(m * q * (1 - q)) + 1, name
    # one step never adds two ingredients; nothing outside the template appears
    assert not any({"parmesan_cheese", "pecorino_cheese"} <= r for r in rows)
    pool = {sp.ingredients[i] for i in np.flatnonzero(sp.pool[t])}
    assert all(r <= pool for r in rows)


def test_generated_set_frequencies_match_exact_probabilities():
    """Monte Carlo: every set of the tiny spec appears with its exact probability (within 4 std)."""
    n = 40000
    recs = generate_records(n, seed=5, spec=TINY)
    freq = defaultdict(int)
    for r in recs:
        freq[frozenset(r["ingredients"])] += 1
    sp = load_spec(TINY)
    sets = sorted(freq, key=sorted) + [frozenset("ab")]  # {a, b} is impossible (stew needs d or e)
    probs = np.exp(sp.set_log_probs([sorted(s) for s in sets]))
    assert probs[-1] == 0 and freq[frozenset("ab")] == 0
    for s, q in zip(sets[:-1], probs[:-1], strict=True):
        assert abs(freq[s] - n * q) <= 4 * math.sqrt(n * q * (1 - q)) + 2, sorted(s)


# ---- spec validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, key", [
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d["cuisines"]["north"].update(prio=0.1), "cuisines.north.prio"),
    (lambda d: d["cuisines"]["north"]["templates"]["stew"].update(wieght=1), "cuisines.north.templates.stew.wieght"),
    (lambda d: d["cuisines"]["north"]["templates"]["stew"]["steps"].__setitem__(2, {"c": 1.5}),
     "cuisines.north.templates.stew.steps[2].c"),
    (lambda d: d["cuisines"]["north"]["templates"]["stew"]["steps"].__setitem__(2, {"c": -0.1}),
     "cuisines.north.templates.stew.steps[2].c"),
    (lambda d: d["cuisines"]["north"]["templates"]["soup"].update(steps=[]), "cuisines.north.templates.soup.steps"),
    (lambda d: d["cuisines"]["north"]["templates"]["stew"]["steps"].__setitem__(3, {"d": 0.6, "e": 0.7}),
     "cuisines.north.templates.stew.steps[3]"),
    (lambda d: d["cuisines"]["north"]["templates"]["stew"]["steps"].append("a"), "cuisines.north.templates.stew.steps"),
    (lambda d: d["cuisines"]["north"]["templates"]["stew"]["steps"].append("Olive Oil"),
     "cuisines.north.templates.stew.steps"),
    (lambda d: d["cuisines"]["north"].update(prior=0.5), "cuisines.*.prior"),
    (lambda d: d["cuisines"]["north"]["templates"]["stew"].update(weight=0), "cuisines.north.templates.stew.weight"),
    (lambda d: d["cuisines"]["north"]["templates"]["stew"].update(steps=[{"a": 0.5}]),
     "cuisines.north.templates.stew.steps"),
    (lambda d: d["cuisines"]["south"].update(templates={}), "cuisines.south.templates"),
])
def test_malformed_spec_names_file_and_key(tmp_path, edit, key):
    import copy

    d = copy.deepcopy(TINY)
    edit(d)
    with pytest.raises(RecipesetError) as e:
        SyntheticSpec.from_dict(d, source="spec.toml")
    assert str(e.value).startswith("spec.toml: ") and key in str(e.value) and "\n" not in str(e.value)


def test_malformed_spec_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[cuisines.x]\nprior = 1.0\n[cuisines.x.templates.t]\nweight = 1\nsteps = ["a", {b = 2.0}]\n')
    with pytest.raises(RecipesetError, match=r"bad\.toml: cuisines\.x\.templates\.t\.steps\[1\]\.b: probability"):
        load_spec(bad)
    with pytest.raises(RecipesetError, match=r"bad\.toml: cuisines\.x\.templates\.t\.steps\[1\]\.b"):
        load_synthetic(n_recipes=5, path=bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[cuisines\n")
    with pytest.raises(RecipesetError, match="broken.toml: not valid TOML"):
        load_spec(broken)
    with pytest.raises(RecipesetError, match="not found"):
        load_spec(tmp_path / "missing.toml")


# ---- the oracle against brute force ------------------------------------------------------------------
def brute_loo(ordered: bool, cuisine: str | None = None):
    """{query key: {y: P(missing = y | query)}} by enumerating every recipe and every held-out position."""
    mass = defaultdict(lambda: defaultdict(float))
    for c, seq, p in enumerate_recipes(TINY):
        if len(seq) < 2 or (cuisine is not None and c != cuisine):
            continue
        for j in range(len(seq)):
            q = seq[:j] + seq[j + 1:]
            mass[q if ordered else tuple(sorted(q))][seq[j]] += p / len(seq)
    return {q: {y: v / sum(d.values()) for y, v in d.items()} for q, d in mass.items()}


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("cuisine", [None, "north"])
def test_completion_posterior_equals_brute_force(ordered, cuisine):
    vocab = tiny_vocab()
    oracle = SyntheticOracle(vocab, spec=TINY, ordered=ordered)
    truth = brute_loo(ordered, cuisine)
    queries = sorted(truth)
    tokens, mask = batch(vocab, queries)
    cu = None if cuisine is None else torch.full((len(queries),), vocab.cuisine_id(cuisine))
    scores = oracle.completion_scores_ids(tokens, mask, cuisine=cu)
    probs = scores.double().exp()
    assert torch.isinf(scores[:, :NUM_SPECIALS]).all()
    for b, q in enumerate(queries):
        expected = torch.zeros(len(vocab), dtype=torch.float64)
        for y, v in truth[q].items():
            expected[vocab.id(y)] = v
        assert torch.allclose(probs[b], expected, atol=1e-6), (q, probs[b], expected)
        assert abs(probs[b].sum().item() - 1) < 1e-5
        assert torch.isinf(scores[b, tokens[b][mask[b]]]).all()
    assert oracle.n_fallback == 0


def test_ordered_oracle_uses_order_and_unordered_ignores_it():
    vocab = tiny_vocab()
    # {a, b, c, e} without its fourth: in step order a<b is stew-only, b<a soup-only
    ab, ba = [("a", "b", "c")], [("b", "a", "c")]
    ordered = SyntheticOracle(vocab, spec=TINY, ordered=True)
    plain = SyntheticOracle(vocab, spec=TINY)
    p_ab = ordered.completion_scores_ids(*batch(vocab, ab)).exp()
    p_ba = ordered.completion_scores_ids(*batch(vocab, ba)).exp()
    assert p_ab[0, vocab.id("h")] == 0 and p_ba[0, vocab.id("h")] > 0.5   # h only completes a soup
    assert torch.equal(plain.completion_scores_ids(*batch(vocab, ab)), plain.completion_scores_ids(*batch(vocab, ba)))
    # a reordered query that no template allows (c before a) is scored order-free instead of failing
    odd = ordered.completion_scores_ids(*batch(vocab, [("c", "a", "b")]))
    assert torch.allclose(odd, plain.completion_scores_ids(*batch(vocab, [("a", "b", "c")])))


def brute_rest(ordered: bool):
    """{query key: {i: P(i in rest | query)}} under the set-completion protocol (n >= 4, k = n // 2)."""
    mass, incl = defaultdict(float), defaultdict(lambda: defaultdict(float))
    for _, seq, p in enumerate_recipes(TINY):
        n = len(seq)
        if n < 4:
            continue
        k = n // 2
        for pos in itertools.combinations(range(n), k):
            q = tuple(seq[i] for i in pos)
            key = q if ordered else tuple(sorted(q))
            w = p / math.comb(n, k)
            mass[key] += w
            for i in set(seq) - set(q):
                incl[key][i] += w
    return {q: {i: v / mass[q] for i, v in incl[q].items()} for q in mass}


@pytest.mark.parametrize("ordered", [False, True])
def test_rest_marginals_equal_brute_force(ordered):
    sp = load_spec(TINY)
    oracle = SyntheticOracle(tiny_vocab(), spec=sp, ordered=ordered)
    truth = brute_rest(ordered)
    queries = sorted(truth)
    Q, _ = sp.multi_hot(queries)
    seq = np.full((len(queries), max(map(len, queries))), -1)
    for b, q in enumerate(queries):
        seq[b, :len(q)] = [sp.index[n] for n in q]
    pi = oracle.rest_marginals(Q, seq)
    for b, q in enumerate(queries):
        expected = np.zeros(sp.n_ingredients)
        for i, v in truth[q].items():
            expected[sp.index[i]] = v
        np.testing.assert_allclose(pi[b], expected, atol=1e-9, err_msg=str(q))


def test_classify_and_set_probabilities_equal_brute_force():
    vocab = tiny_vocab()
    recipes = enumerate_recipes(TINY)
    by_set = defaultdict(lambda: defaultdict(float))
    by_seq = defaultdict(lambda: defaultdict(float))
    for c, seq, p in recipes:
        by_set[tuple(sorted(seq))][c] += p
        by_seq[seq][c] += p
    for ordered, table in ((False, by_set), (True, by_seq)):
        oracle = SyntheticOracle(vocab, spec=TINY, ordered=ordered)
        keys = sorted(table)
        probs = oracle.classify_ids(*batch(vocab, keys)).double()
        for b, s in enumerate(keys):
            tot = sum(table[s].values())
            expected = [table[s].get(c, 0.0) / tot for c in vocab.cuisines]
            assert torch.allclose(probs[b], torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    sp = load_spec(TINY)
    sets = sorted(by_set)
    np.testing.assert_allclose(np.exp(sp.set_log_probs(sets)), [sum(by_set[s].values()) for s in sets], atol=1e-12)
    # sequence probabilities sum to 1 in both modes (normal: n! equally likely orders of each set)
    seqs = sorted(by_seq)
    assert abs(np.exp(sp.sequence_log_probs(seqs, ordered=True)).sum() - 1) < 1e-9
    perms = [p for s in sets for p in itertools.permutations(s)]
    assert abs(np.exp(sp.sequence_log_probs(perms, ordered=False)).sum() - 1) < 1e-9
    assert SyntheticOracle(vocab, spec=TINY).set_log_prob(["a", "b"]) == -math.inf


# ---- the oracle on the default dataset -------------------------------------------------------------------
def test_oracle_beats_popularity_and_ordered_oracle_beats_unordered(default_vocab):
    vocab = default_vocab
    for ordered in (False, True):
        tokens, mask, y = loo_queries(generate_records(1500, seed=7, ordered=ordered), vocab)
        plain = SyntheticOracle(vocab).completion_scores_ids(tokens, mask)
        aware = SyntheticOracle(vocab, ordered=True).completion_scores_ids(tokens, mask)
        pop = torch.zeros(len(tokens), len(vocab))
        pop[:, NUM_SPECIALS:] = -torch.arange(vocab.num_ingredients, dtype=torch.float32)  # ids sorted by count
        pop[:, :NUM_SPECIALS] = -math.inf
        pop.scatter_(1, tokens, -math.inf)
        assert _r1(plain, y) > _r1(pop, y) + 0.4
        if ordered:  # order names the twin dish when the set cannot
            assert _r1(aware, y) > _r1(plain, y) + 0.02 and _ll(aware, y) > _ll(plain, y) + 0.01
        else:
            assert torch.isfinite(plain.gather(1, y[:, None])).all()


def _r1(scores: torch.Tensor, y: torch.Tensor) -> float:
    return (scores.argmax(1) == y).float().mean().item()


def _ll(scores: torch.Tensor, y: torch.Tensor) -> float:
    return scores.gather(1, y[:, None]).double().mean().item()


def test_scorer_protocol_shapes_masks_and_batching(default_vocab):
    from recipeset.evaluation import Scorer

    vocab = default_vocab
    oracle = SyntheticOracle(vocab)
    assert isinstance(oracle, Scorer) and oracle.can_classify
    tokens, mask, _ = loo_queries(generate_records(40, seed=9), vocab)
    scores = oracle.completion_scores_ids(tokens, mask)
    assert scores.shape == (40, len(vocab))
    assert torch.isinf(scores[:, :NUM_SPECIALS]).all() and torch.isinf(scores.gather(1, tokens)).all()
    one = torch.cat([oracle.completion_scores_ids(tokens[i:i + 1], mask[i:i + 1]) for i in range(40)])
    assert torch.equal(scores, one)
    with pytest.raises(RecipesetError, match="mode"):
        oracle.completion_scores_ids(tokens, mask, mode="sideways")


@settings(max_examples=15, deadline=None)
@given(st.randoms(use_true_random=False))
def test_unordered_oracle_is_permutation_invariant(rnd):
    vocab = tiny_vocab()
    oracle = SyntheticOracle(vocab, spec=TINY)
    q = ["a", "b", "c", "f"]
    shuffled = q[:]
    rnd.shuffle(shuffled)
    assert torch.equal(oracle.completion_scores_ids(*batch(vocab, [q])),
                       oracle.completion_scores_ids(*batch(vocab, [shuffled])))


def test_complete_ids_is_a_valid_strong_completion(default_vocab):
    vocab = default_vocab
    recs = [r for r in generate_records(400, seed=13) if len(r["ingredients"]) >= 4]
    rng = np.random.default_rng(0)
    queries, rests = [], []
    for r in recs:
        ids = vocab.encode(r["ingredients"])
        pick = rng.choice(len(ids), len(ids) // 2, replace=False)
        queries.append([ids[i] for i in sorted(pick)])
        rests.append(set(ids) - set(queries[-1]))
    tokens, mask = (torch.from_numpy(x) for x in EncodedSets.from_lists(queries).padded())
    oracle = SyntheticOracle(vocab)
    out = oracle.complete_ids(tokens, mask, max_new=20)
    tp = fp = fn = 0
    for pred, q, rest in zip(out, queries, rests, strict=True):
        assert len(pred) == len(set(pred)) and 1 <= len(pred) <= 20
        assert min(pred) >= NUM_SPECIALS and not set(pred) & set(q)
        tp += len(set(pred) & rest)
        fp += len(set(pred) - rest)
        fn += len(rest - set(pred))
    assert 2 * tp / (2 * tp + fp + fn) > 0.7
    assert all(len(p) <= 3 for p in oracle.complete_ids(tokens, mask, max_new=3))
    assert oracle.complete_ids(tokens, mask, max_new=0) == [[] for _ in out]
    assert oracle.complete([["short_grain_rice", "rice_vinegar", "nori"]], max_new=3)[0]


def test_classify_default_dataset(default_vocab):
    vocab = default_vocab
    oracle = SyntheticOracle(vocab)
    p = oracle.classify([["short_grain_rice", "rice_vinegar", "nori", "salmon", "wasabi"],
                         ["lettuce", "olive_oil", "red_wine_vinegar", "salt"]])
    assert torch.allclose(p.sum(1), torch.ones(2))
    assert vocab.cuisine_name(p[0].argmax()) == "japanese" and p[0].max() > 0.999
    # the shared green salad: split over the three cuisines that make it, by prior x weight
    shared = {vocab.cuisine_id(c) for c in ("italian", "french", "american")}
    assert p[1, sorted(shared)].sum() > 0.999 and p[1].max() < 0.6
    # in ordered mode the french sequence (vinaigrette first) names the cuisine
    ordered = SyntheticOracle(vocab, ordered=True)
    q = ordered.classify([["red_wine_vinegar", "salt", "olive_oil", "lettuce"]])
    assert vocab.cuisine_name(q[0].argmax()) == "french" and q[0].max() > 0.999


def test_impossible_queries_fall_back_and_floors():
    vocab = Vocabulary(list(tiny_vocab().ingredients) + ["zzz"], ["north", "south"])
    oracle = SyntheticOracle(vocab, spec=TINY)
    scores = oracle.completion_scores_ids(*batch(vocab, [["a", "zzz"], ["d", "e", "a"]]))
    assert oracle.n_fallback == 2
    assert torch.isfinite(scores[:, vocab.id("b")]).all() and torch.isinf(scores[:, vocab.id("zzz")]).all()
    assert abs(scores[0].double().exp().sum().item() - 1) < 1e-5
    sets = [r["ingredients"] for r in generate_records(3000, seed=2, spec=TINY)]
    floor = oracle.nll_floor(sets)
    assert floor == pytest.approx(-np.mean(oracle.spec.set_log_probs(sets)))
    h, se = oracle.entropy(n_samples=20000)
    assert abs(floor - h) < 5 * (se + np.std(-oracle.spec.set_log_probs(sets)) / math.sqrt(3000))
    exact_h = -sum(p * math.log(p) for p in _set_probs().values())
    assert abs(h - exact_h) < 5 * se
    assert oracle.nll_floor(sets, per_ingredient=True) == pytest.approx(floor * len(sets) / sum(map(len, sets)))


def _set_probs() -> dict:
    out = defaultdict(float)
    for _, seq, p in enumerate_recipes(TINY):
        out[frozenset(seq)] += p
    return out
