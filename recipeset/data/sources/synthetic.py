"""The embedded default dataset ``synthetic``: a readable generator and its exact Bayes-optimal oracle.

The generator is specified in ``recipeset/resources/synthetic.toml`` (package data; its header documents the
format). A recipe is drawn as: template ``t ~ P(t) = prior(cuisine) · weight(t | cuisine)``, then every step
of the template independently adds at most one ingredient (required / optional / one-of). Because an
ingredient occurs in at most one step of a template, the probability of any set is exact and cheap:

    P(S | t) = Π_steps  p_s(the ingredient of S in step s)  or  none_s = 1 − Σ p_s  when S has none there,

and 0 when S holds an ingredient outside ``t`` or two ingredients of one step; ``P(S) = Σ_t P(t) P(S | t)``.

Ingredient order: in normal mode each recipe is a uniformly random permutation (order carries no
information). In ordered mode (``ordered=True``) each recipe lists its ingredients in its template's step
order (the cooking sequence). Order then carries exactly one thing: evidence about the latent template —
given the template, the order is a deterministic function of the set, so a query whose relative order
contradicts a template's sequence rules that template out. A leave-one-out query closes the gap, so the
position of the removed ingredient is not shown; every candidate ``y`` of a consistent template has exactly one
consistent insertion slot, hence ``P(y | ordered q) ∝ Σ_{t consistent with q's order} P(t) P(q ∪ {y} | t)``.

:class:`SyntheticOracle` implements the Scorer protocol with these exact posteriors; it is the ceiling for
Recall@k/MRR (completion), cuisine accuracy, and (through ``nll_floor``) the set NLL.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from recipeset.data.sets import EncodedSets
from recipeset.data.table import RecipeTable
from recipeset.data.vocab import NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError, shown
from recipeset.io_utils import parse_toml

DEFAULT_N_RECIPES = 6000
DEFAULT_SEED = 0
MAX_RECIPES = 2_000_000  # ~1.5 KB of draws a recipe while sampling, then a Python record each: a few GB at most
SOURCE = "synthetic"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_EXACT = 1e-9  # a step whose probabilities sum to 1 within this is an exact "one of" (never empty)
_CHUNK = 512   # rows per vectorised oracle pass (bounds the [B, templates, steps, counts] DP memory)


# ================================================================================================
# The specification
# ================================================================================================
@dataclass(frozen=True)
class Template:
    """One dish template: ``steps[s]`` is a tuple of ``(ingredient, probability)``; a step adds at most one."""

    cuisine: str
    name: str
    title: str
    weight: float  # normalised within its cuisine
    steps: tuple[tuple[tuple[str, float], ...], ...]

    @property
    def ingredients(self) -> list[str]:
        return [name for step in self.steps for name, _ in step]


def _fail(source: str, key: str, what: str) -> RecipesetError:
    return RecipesetError(f"{source}: {key}: {what}")


def _check_keys(d: Mapping, allowed: set[str], source: str, key: str) -> None:
    for k in d:
        if k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            raise _fail(source, where, f"unknown key; allowed here: {', '.join(sorted(allowed))}")


def _number(x: object, source: str, key: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise _fail(source, key, f"expected a number, got {x!r}")
    return float(x)


def _probability(x: object, source: str, key: str) -> float:
    p = _number(x, source, key)
    if not 0.0 <= p <= 1.0:
        raise _fail(source, key, f"probability {p} is outside [0, 1]")
    return p


def _ingredient(x: object, source: str, key: str) -> str:
    if not isinstance(x, str) or not NAME_RE.match(x):
        raise _fail(source, key, f"ingredient name {x!r} must be lowercase_with_underscores")
    return x


class SyntheticSpec:
    """A validated generator specification plus the dense arrays the sampler and the oracle use.

    Arrays (``Tn`` templates, ``S`` max steps, ``K`` max ingredients per step, ``M`` ingredients):
    ``log_prior [Tn]`` (log P(t), cuisine prior × normalised weight), ``template_cuisine [Tn]``,
    ``items [Tn, S, K]`` (ingredient index, -1 padding), ``probs [Tn, S, K]``, ``none [Tn, S]``
    (probability that the step adds nothing; 1 on padding steps), ``step_of [Tn, M]`` (the step of each
    ingredient in each template, -1 when absent; in ordered mode this is also its rank in the sequence) and
    ``prob_of [Tn, M]``.
    """

    def __init__(self, cuisines: Sequence[str], priors: Sequence[float], templates: Sequence[Template],
                 description: str = "", source: str = "<dict>", sha256: str | None = None) -> None:
        self.cuisines = tuple(cuisines)
        self.priors = np.asarray(priors, dtype=np.float64)
        self.templates = tuple(templates)
        self.description = description
        self.source = source
        self.sha256 = sha256
        self.ingredients: tuple[str, ...] = tuple(sorted({n for t in self.templates for n in t.ingredients}))
        self.index = {n: i for i, n in enumerate(self.ingredients)}
        Tn, M = len(self.templates), len(self.ingredients)
        S = max(len(t.steps) for t in self.templates)
        K = max(len(step) for t in self.templates for step in t.steps)
        self.n_templates, self.n_steps, self.n_ingredients = Tn, S, M
        c_idx = {c: i for i, c in enumerate(self.cuisines)}
        self.template_cuisine = np.array([c_idx[t.cuisine] for t in self.templates], dtype=np.int64)
        prior_t = self.priors[self.template_cuisine] * np.array([t.weight for t in self.templates])
        self.template_prob = prior_t
        with np.errstate(divide="ignore"):
            self.log_prior = np.log(prior_t)
        self.items = np.full((Tn, S, K), -1, dtype=np.int64)
        self.probs = np.zeros((Tn, S, K))
        self.none = np.ones((Tn, S))
        self.step_of = np.full((Tn, M), -1, dtype=np.int64)
        self.prob_of = np.zeros((Tn, M))
        # cumulative thresholds for sampling: padding slots at 2.0 are never passed by u ~ U[0, 1)
        self.cum = np.full((Tn, S, K), 2.0)
        for ti, t in enumerate(self.templates):
            for s, step in enumerate(t.steps):
                total = sum(p for _, p in step)
                exact = abs(total - 1.0) <= _EXACT
                self.none[ti, s] = 0.0 if exact else 1.0 - total
                acc = 0.0
                for k, (name, p) in enumerate(step):
                    i = self.index[name]
                    self.items[ti, s, k], self.probs[ti, s, k] = i, p
                    self.step_of[ti, i], self.prob_of[ti, i] = s, p
                    acc += p
                    self.cum[ti, s, k] = 1.0 if (exact and k == len(step) - 1) else acc
        self.n_items = (self.items >= 0).sum(-1)
        with np.errstate(divide="ignore"):
            self.log_none = np.log(self.none)
            self.log_prob_of = np.where(self.step_of >= 0, np.log(np.maximum(self.prob_of, 1e-300)), -np.inf)
        # one-hot step membership [Tn*S, M] and its log-probabilities, for the step counts of many sets at once
        onehot = np.zeros((Tn, S, M))
        logp = np.zeros((Tn, S, M))
        ti, s, k = np.nonzero(self.items >= 0)
        onehot[ti, s, self.items[ti, s, k]] = 1.0
        logp[ti, s, self.items[ti, s, k]] = np.log(self.probs[ti, s, k])
        self._onehot = onehot.reshape(Tn * S, M)
        self._logp = logp.reshape(Tn * S, M)
        self.pool = self.step_of >= 0  # [Tn, M]

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping, source: str = "<dict>", sha256: str | None = None) -> SyntheticSpec:
        """Validate a parsed spec (the TOML structure); any problem -> RecipesetError naming ``source`` and key."""
        if not isinstance(d, Mapping):
            raise _fail(source, "<top level>", "expected a table")
        _check_keys(d, {"description", "cuisines"}, source, "")
        description = d.get("description", "")
        if not isinstance(description, str):
            raise _fail(source, "description", "expected a string")
        cuisines = d.get("cuisines")
        if not isinstance(cuisines, Mapping) or not cuisines:
            raise _fail(source, "cuisines", "missing or empty: define at least one [cuisines.<name>] table")
        names, priors, templates = [], [], []
        for c, cd in cuisines.items():
            ck = f"cuisines.{c}"
            if not isinstance(cd, Mapping):
                raise _fail(source, ck, "expected a table with `prior` and `templates`")
            _check_keys(cd, {"prior", "templates"}, source, ck)
            if "prior" not in cd:
                raise _fail(source, f"{ck}.prior", "missing")
            prior = _probability(cd["prior"], source, f"{ck}.prior")
            tds = cd.get("templates")
            if not isinstance(tds, Mapping) or not tds:
                raise _fail(source, f"{ck}.templates", "missing or empty: define at least one template")
            cts = [cls._parse_template(str(c), str(t), td, source, f"{ck}.templates.{t}") for t, td in tds.items()]
            total = sum(t.weight for t in cts)
            templates += [Template(t.cuisine, t.name, t.title, t.weight / total, t.steps) for t in cts]
            names.append(str(c))
            priors.append(prior)
        if abs(sum(priors) - 1.0) > 1e-6:
            raise _fail(source, "cuisines.*.prior", f"cuisine priors must sum to 1, they sum to {sum(priors):.6g}")
        return cls(names, priors, templates, description, source, sha256)

    @classmethod
    def _parse_template(cls, cuisine: str, name: str, td: object, source: str, tk: str) -> Template:
        if not isinstance(td, Mapping):
            raise _fail(source, tk, "expected a table with `weight` and `steps`")
        _check_keys(td, {"title", "weight", "steps"}, source, tk)
        title = td.get("title", name)
        if not isinstance(title, str):
            raise _fail(source, f"{tk}.title", "expected a string")
        if "weight" not in td:
            raise _fail(source, f"{tk}.weight", "missing")
        weight = _number(td["weight"], source, f"{tk}.weight")
        if weight <= 0:
            raise _fail(source, f"{tk}.weight", f"weight must be > 0, got {weight}")
        return Template(cuisine, name, title, weight, cls._parse_steps(td.get("steps"), source, f"{tk}.steps"))

    @staticmethod
    def _parse_steps(raw: object, source: str, key: str) -> tuple[tuple[tuple[str, float], ...], ...]:
        if not isinstance(raw, list) or not raw:
            raise _fail(source, key, "empty template: `steps` must be a non-empty list")
        steps, seen, guaranteed = [], set(), 0
        for j, step in enumerate(raw):
            sk = f"{key}[{j}]"
            if isinstance(step, str):
                pairs = [(_ingredient(step, source, sk), 1.0)]
            elif isinstance(step, Mapping):
                if not step:
                    raise _fail(source, sk, "empty step: give an ingredient name or {name = probability, ...}")
                pairs = [(_ingredient(n, source, f"{sk}.{n}"), _probability(p, source, f"{sk}.{n}"))
                         for n, p in step.items()]
                total = sum(p for _, p in pairs)
                if total > 1.0 + _EXACT:
                    raise _fail(source, sk, f"probabilities of one step sum to {total:.6g} > 1")
                # p = 0 never draws the ingredient: dropping it changes no probability
                pairs = [(n, p) for n, p in pairs if p > 0.0]
            else:
                raise _fail(source, sk, "a step is an ingredient name or an inline table {name = probability}")
            for n, _ in pairs:
                if n in seen:
                    raise _fail(source, f"{sk}.{n}", "ingredient occurs in two steps of one template")
                seen.add(n)
            if pairs:
                guaranteed += abs(sum(p for _, p in pairs) - 1.0) <= _EXACT
                steps.append(tuple(pairs))
        if guaranteed == 0:
            raise _fail(source, key, "template can produce an empty recipe: make at least one step certain")
        return tuple(steps)

    # ---- sets ------------------------------------------------------------------------------------
    def multi_hot(self, sets: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """``[B, M]`` float 0/1 indicators of the spec's ingredients, and ``[B]`` bool "holds a foreign name"."""
        Q = np.zeros((len(sets), self.n_ingredients))
        foreign = np.zeros(len(sets), dtype=bool)
        for b, names in enumerate(sets):
            for n in names:
                i = self.index.get(n)
                if i is None:
                    foreign[b] = True
                else:
                    Q[b, i] = 1.0
        return Q, foreign

    def step_terms(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-step evidence of sets under every template.

        Q: ``[B, M]`` 0/1. Returns ``cnt [B, Tn, S]`` (ingredients of the set in the step), ``sel [B, Tn, S]``
        (log-probability of the one present ingredient, 0 when none), ``g [B, Tn, S]`` (the step's log factor
        of P(set | t): log none, log p, or -inf for two) and ``outside [B, Tn]`` (set has an ingredient not in t).
        """
        B, Tn, S = len(Q), self.n_templates, self.n_steps
        cnt = np.rint(Q @ self._onehot.T).astype(np.int64).reshape(B, Tn, S)
        sel = (Q @ self._logp.T).reshape(B, Tn, S)
        g = np.where(cnt == 0, self.log_none[None], np.where(cnt == 1, sel, -np.inf))
        outside = (Q @ (~self.pool).T.astype(np.float64)) > 0.5
        return cnt, sel, g, outside

    def template_log_likelihood(self, Q: np.ndarray) -> np.ndarray:
        """``[B, Tn]`` exact log P(set | t) for ``[B, M]`` 0/1 sets."""
        _, _, g, outside = self.step_terms(Q)
        return np.where(outside, -np.inf, g.sum(-1))

    def order_consistent(self, seq: np.ndarray) -> np.ndarray:
        """``[B, Tn]`` bool: the ingredients of each row of ``seq`` (``[B, L]`` spec indices, -1 ignored) appear in
        strictly increasing step order of template t (any subsequence of t's sequence is consistent)."""
        seq = np.asarray(seq, dtype=np.int64)
        B, L = seq.shape
        if L <= 1:
            return np.ones((B, self.n_templates), dtype=bool)
        valid = seq >= 0
        perm = np.argsort(~valid, axis=1, kind="stable")  # valid entries first, order kept
        seq_c = np.take_along_axis(seq, perm, 1)
        valid_c = np.take_along_axis(valid, perm, 1)
        ranks = self.step_of[np.arange(self.n_templates)[None, :, None], np.maximum(seq_c, 0)[:, None, :]]
        ok = (ranks[..., 1:] > ranks[..., :-1]) | ~valid_c[:, None, 1:]
        return ok.all(-1)

    def set_log_probs(self, sets: Sequence[Sequence[str]]) -> np.ndarray:
        """``[B]`` exact log P(set) of unordered sets (-inf for impossible ones, e.g. a foreign name)."""
        Q, foreign = self.multi_hot(sets)
        lp = _logsumexp(self.log_prior[None] + self.template_log_likelihood(Q), axis=1)
        return np.where(foreign, -np.inf, lp)

    def sequence_log_probs(self, seqs: Sequence[Sequence[str]], ordered: bool) -> np.ndarray:
        """``[B]`` exact log-probability of the emitted *sequences*: ordered mode sums over the templates whose
        sequence they follow; normal mode is ``log P(set) − log n!`` (a uniform permutation)."""
        if not ordered:
            return self.set_log_probs(seqs) - np.array([math.lgamma(len(set(s)) + 1) for s in seqs])
        Q, foreign = self.multi_hot(seqs)
        L = max((len(s) for s in seqs), default=0)
        seq = np.full((len(seqs), L), -1, dtype=np.int64)
        for b, s in enumerate(seqs):
            seq[b, :len(s)] = [self.index.get(n, -1) for n in s]
        ll = self.template_log_likelihood(Q) + np.where(self.order_consistent(seq), 0.0, -np.inf)
        return np.where(foreign, -np.inf, _logsumexp(self.log_prior[None] + ll, axis=1))

    # ---- sampling --------------------------------------------------------------------------------
    def sample(self, n: int, seed: int = DEFAULT_SEED, ordered: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` recipes: ``(template [N], ingredients [N, S])``, ingredient indices with -1 at the end.

        The sets come from one random stream and the normal-mode permutations from another, so the same seed
        gives the same sets in both modes (only the order differs). Each recipe consumes one row of uniforms,
        so the first ``m`` recipes of ``sample(n)`` are ``sample(m)`` (``n_recipes`` acts as a prefix cap).
        Drawing the template from the joint P(t) = prior(cuisine)·weight(t | cuisine) is the same distribution
        as cuisine first, then template.
        """
        set_ss, order_ss = np.random.SeedSequence(seed).spawn(2)
        draws = np.random.default_rng(set_ss).random((n, self.n_steps + 1))
        cum_t = np.cumsum(self.template_prob / self.template_prob.sum())
        cum_t[-1] = 1.0
        t = np.minimum(np.searchsorted(cum_t, draws[:, 0], side="right"), self.n_templates - 1)
        u = draws[:, 1:]
        k = (u[:, :, None] >= self.cum[t]).sum(-1)                       # [N, S] item slot drawn per step
        chosen = np.where(k < self.n_items[t],
                          np.take_along_axis(self.items[t], np.minimum(k, self.items.shape[2] - 1)[..., None],
                                             2)[..., 0], -1)
        # emitted order: step order (ordered) or a uniform random permutation; then push -1 to the end
        keys = np.broadcast_to(np.arange(self.n_steps, dtype=np.float64), chosen.shape).copy()
        if not ordered:
            keys = np.random.default_rng(order_ss).random(chosen.shape)
        keys[chosen < 0] = np.inf
        chosen = np.take_along_axis(chosen, np.argsort(keys, axis=1, kind="stable"), 1)
        return t, chosen

    def entropy(self, n_samples: int = 20000, seed: int = 12345) -> tuple[float, float]:
        """Monte-Carlo estimate of the set entropy H = E[−log P(set)] in nats: ``(mean, standard error)``."""
        _, chosen = self.sample(n_samples, seed)
        Q = np.zeros((n_samples, self.n_ingredients))
        rows, cols = np.nonzero(chosen >= 0)
        Q[rows, chosen[rows, cols]] = 1.0
        nll = -_logsumexp(self.log_prior[None] + self.template_log_likelihood(Q), axis=1)
        return float(nll.mean()), float(nll.std(ddof=1) / math.sqrt(n_samples))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def default_spec_text() -> tuple[str, bytes]:
    """``(name, bytes)`` of the packaged spec, read through importlib.resources (works from a wheel)."""
    res = resources.files("recipeset").joinpath("resources", "synthetic.toml")
    try:
        return "recipeset/resources/synthetic.toml", res.read_bytes()
    except FileNotFoundError:
        raise RecipesetError("recipeset/resources/synthetic.toml is missing from the installed package; "
                             "reinstall recipeset") from None


def load_spec(spec: SyntheticSpec | Mapping | str | os.PathLike | None = None) -> SyntheticSpec:
    """The generator spec: ``None`` -> the packaged ``synthetic.toml``; a path -> that TOML file; a mapping ->
    that structure (as TOML would parse it); a :class:`SyntheticSpec` is returned as is."""
    if isinstance(spec, SyntheticSpec):
        return spec
    if isinstance(spec, Mapping):
        return SyntheticSpec.from_dict(spec, "<dict>")
    if spec is None:
        name, data = default_spec_text()
    else:
        name = str(spec)
        try:
            data = Path(spec).read_bytes()
        except FileNotFoundError:
            raise RecipesetError(f"{name}: synthetic spec file not found") from None
        except IsADirectoryError:
            raise RecipesetError(f"{name}: is a directory; give the synthetic spec .toml file") from None
    try:
        d = parse_toml(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipesetError(f"{name}: not valid TOML ({e})") from None
    return SyntheticSpec.from_dict(d, name, hashlib.sha256(data).hexdigest())


# ================================================================================================
# The dataset
# ================================================================================================
def generate_records(n_recipes: int = DEFAULT_N_RECIPES, seed: int = DEFAULT_SEED, ordered: bool = False,
                     spec: SyntheticSpec | Mapping | str | os.PathLike | None = None) -> list[dict]:
    """Plain records ``{recipe_id, ingredients, cuisine, template, source}``; deterministic given ``seed``.

    ``recipe_id`` is ``syn:000123``; ``ingredients`` is in a random order (normal mode) or the template's
    cooking sequence (``ordered=True``); see the module docstring for what that order carries.
    """
    if isinstance(n_recipes, bool) or not isinstance(n_recipes, int | np.integer) or not 1 <= n_recipes <= MAX_RECIPES:
        raise RecipesetError(f"synthetic: n_recipes must be an integer from 1 to {MAX_RECIPES:,} (the generator "
                             f"draws them all in memory), not {shown(n_recipes)}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise RecipesetError(f"synthetic: seed must be a non-negative integer, not {shown(seed)}")
    if not isinstance(ordered, bool | np.bool_):
        raise RecipesetError(f"synthetic: ordered must be true or false, not {shown(ordered)}")
    sp = load_spec(spec)
    t, chosen = sp.sample(int(n_recipes), int(seed), ordered)
    lengths = (chosen >= 0).sum(1)
    flat = np.array(sp.ingredients, dtype=object)[chosen[chosen >= 0]]
    sets = np.split(flat, np.cumsum(lengths)[:-1])
    return [{"recipe_id": f"syn:{i:06d}", "ingredients": list(s), "cuisine": sp.templates[ti].cuisine,
             "template": sp.templates[ti].name, "source": SOURCE}
            for i, (ti, s) in enumerate(zip(t, sets, strict=True))]


def load_synthetic(n_recipes: int = DEFAULT_N_RECIPES, seed: int = DEFAULT_SEED, ordered: bool = False,
                   path: str | os.PathLike | None = None,
                   spec: SyntheticSpec | Mapping | None = None) -> RecipeTable:
    """The ``synthetic`` dataset as a :class:`RecipeTable` (name ``synthetic``, source ``synthetic``).

    ``path`` is an alternative spec TOML file (``load_dataset("synthetic", path=...)``); ``spec`` a parsed one.
    ``sha256`` hashes the generated content, so it identifies the data itself (spec, size, seed and mode).
    """
    if path is not None and spec is not None:
        raise RecipesetError("synthetic: give either path= (a spec file) or spec=, not both")
    sp = load_spec(spec if spec is not None else path)
    records = generate_records(n_recipes, seed, ordered, sp)
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r['recipe_id']}\t{r['cuisine']}\t{','.join(r['ingredients'])}\n".encode())
    return RecipeTable.from_records([r["ingredients"] for r in records], [r["cuisine"] for r in records],
                                    [r["recipe_id"] for r in records], source=SOURCE, name="synthetic",
                                    normalize=False, source_path=sp.source, sha256=h.hexdigest())


# ================================================================================================
# The exact oracle
# ================================================================================================
class SyntheticOracle:
    """The Bayes-optimal scorer for data drawn from a :class:`SyntheticSpec` (the Scorer protocol).

    vocab: the run's vocabulary. Spec ingredients it lacks get no score (a miss, as for every model); vocabulary
    ingredients the spec lacks score -inf and make a query that holds them impossible. ``ordered=True``: queries
    are assumed to keep the emitted (cooking-sequence) order — a subsequence of the recipe, as leave-one-out and
    random-half queries are — and the oracle uses it; a query whose order no template allows (it was
    reordered) is scored order-free, which is then the exact posterior.

    Queries with probability 0 under the generator (possible only for data not drawn from this spec) fall
    back to each ingredient's marginal frequency P(i ∈ recipe); ``n_fallback`` counts them.
    """

    can_classify = True

    def __init__(self, vocab: Vocabulary, spec: SyntheticSpec | Mapping | str | os.PathLike | None = None,
                 ordered: bool = False) -> None:
        self.vocab = vocab
        self.spec = load_spec(spec)
        self.ordered = bool(ordered)
        sp = self.spec
        self._v2s = np.full(len(vocab), -1, dtype=np.int64)   # vocabulary id -> spec index
        self._s2v = np.full(sp.n_ingredients, -1, dtype=np.int64)
        for i, name in enumerate(sp.ingredients):
            if name in vocab:
                self._v2s[vocab.id(name)] = i
                self._s2v[i] = vocab.id(name)
        c_idx = {c: i for i, c in enumerate(sp.cuisines)}
        self._cuisine_v2s = np.array([c_idx.get(c, -1) for c in vocab.cuisines], dtype=np.int64)
        self.marginal = sp.template_prob @ sp.prob_of  # [M] P(i in recipe)
        self.n_fallback = 0

    # ---- inputs ----------------------------------------------------------------------------------
    def _query(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``Q [B, M]`` 0/1, ``seq [B, T]`` spec indices in query order (-1 off-spec/padding), ``foreign [B]``."""
        tok = torch.as_tensor(tokens).detach().cpu().numpy().astype(np.int64)
        m = torch.as_tensor(mask).detach().cpu().numpy().astype(bool)
        if tok.shape != m.shape or tok.ndim != 2:
            raise RecipesetError(f"oracle: expected tokens and mask of one shape [B, T], got {tok.shape}, {m.shape}")
        if m.any() and (tok[m].min() < 0 or tok[m].max() >= len(self.vocab)):
            raise RecipesetError("oracle: token ids outside the vocabulary")
        sidx = np.where(m, self._v2s[np.clip(tok, 0, len(self.vocab) - 1)], -1)
        foreign = (m & (tok >= NUM_SPECIALS) & (sidx < 0)).any(1)  # specials such as [UNK] are ignored
        Q = np.zeros((len(tok), self.spec.n_ingredients))
        rows, cols = np.nonzero(sidx >= 0)
        Q[rows, sidx[rows, cols]] = 1.0
        return Q, sidx, foreign

    def _row_log_prior(self, seq: np.ndarray, cuisine: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(lp, order) [B, Tn]``: log P(t) restricted to the given cuisine (``cuisine [B]`` vocabulary label
        ids, -1 = not given), and the additive order filter (0 where the query's order is consistent with t,
        -inf elsewhere; all 0 in normal mode). Callers drop the filter on rows it leaves impossible."""
        sp = self.spec
        B = len(seq)
        lp = np.broadcast_to(sp.log_prior, (B, sp.n_templates)).copy()
        if cuisine is not None:
            c = np.asarray(cuisine, dtype=np.int64)
            c_spec = np.full(B, -1, dtype=np.int64)
            inside = (c >= 0) & (c < len(self._cuisine_v2s))
            c_spec[inside] = self._cuisine_v2s[c[inside]]
            keep = (c < 0)[:, None] | (sp.template_cuisine[None] == c_spec[:, None])
            lp = np.where(keep, lp, -np.inf)
        order = np.zeros_like(lp)
        if self.ordered:
            order = np.where(sp.order_consistent(seq), 0.0, -np.inf)
        return lp, order

    # ---- completion (leave-one-out) --------------------------------------------------------------
    def completion_log_posterior(self, Q: np.ndarray, seq: np.ndarray, cuisine: np.ndarray | None = None
                                 ) -> np.ndarray:
        """``[B, M]`` exact log P(missing = y | query), over spec ingredients (-inf on the query; rows sum to 1).

        P(y | q) ∝ Σ_t P(t) · P(q ∪ {y} | t) (the held-out ingredient is uniform over the n = |q|+1 ingredients,
        a factor constant in y). For y in step s of t, P(q ∪ {y} | t) is P(q | t) with the step's factor
        replaced by p(y) — computed for all y at once from the per-step terms (finite sum + count of -inf terms,
        so steps that must add an ingredient, none = 0, need no division by zero).
        """
        sp = self.spec
        cnt, _, g, outside = sp.step_terms(Q)
        finite = np.isfinite(g)
        F = np.where(finite, g, 0.0).sum(-1)                          # [B, Tn]
        n_inf = (~finite).sum(-1)
        idx = np.broadcast_to(np.maximum(sp.step_of, 0)[None], (len(Q),) + sp.step_of.shape)
        g_y = np.take_along_axis(g, idx, 2)                           # [B, Tn, M] factor of y's step for q
        free = np.take_along_axis(cnt, idx, 2) == 0                   # y's step holds no query ingredient
        with np.errstate(invalid="ignore"):
            others = np.where(n_inf[..., None] == 0, F[..., None] - g_y,
                              np.where((n_inf[..., None] == 1) & ~np.isfinite(g_y), F[..., None], -np.inf))
        L = np.where(free & sp.pool[None] & ~outside[..., None], others + sp.log_prob_of[None], -np.inf)
        lp, order = self._row_log_prior(seq, cuisine)
        joint = _logsumexp((lp + order)[..., None] + L, axis=1)       # [B, M]
        if self.ordered:  # a query whose order no template allows was reordered: score it order-free
            lost = ~np.isfinite(joint).any(1)
            joint[lost] = _logsumexp(lp[lost, :, None] + L[lost], axis=1)
        with np.errstate(invalid="ignore"):  # impossible rows become NaN; the caller replaces them
            return joint - _logsumexp(joint, axis=1)[:, None]

    def completion_scores_ids(self, tokens: torch.Tensor, mask: torch.Tensor, mode: str = "next",
                              cuisine: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T]`` query ids + mask -> ``[B, len(vocab)]`` exact log P(missing = id | query); -inf on specials,
        query ids and ids the spec lacks. ``mode`` (``next``/``joint``) is accepted and ignored: the posterior
        is exact either way. ``cuisine [B]`` (vocabulary label ids, -1 unknown) conditions on the cuisine."""
        if mode not in ("next", "joint"):
            raise RecipesetError(f"oracle: mode must be 'next' or 'joint', not {mode!r}")
        Q, seq, foreign = self._query(tokens, mask)
        cu = None if cuisine is None else torch.as_tensor(cuisine).cpu().numpy()
        out = np.empty((len(Q), self.spec.n_ingredients))
        for a in range(0, len(Q), _CHUNK):
            b = slice(a, a + _CHUNK)
            out[b] = self.completion_log_posterior(Q[b], seq[b], None if cu is None else cu[b])
        bad = foreign | ~np.isfinite(out).any(1)  # NaN rows (impossible queries) have no finite entry
        if bad.any():
            self.n_fallback += int(bad.sum())
            with np.errstate(divide="ignore"):
                fb = np.where(Q[bad] > 0, -np.inf, np.log(self.marginal)[None])
            out[bad] = fb - _logsumexp(fb, axis=1)[:, None]
        return self._to_vocab(out)

    def _to_vocab(self, x: np.ndarray) -> torch.Tensor:
        scores = torch.full((len(x), len(self.vocab)), float("-inf"))
        known = self._s2v >= 0
        scores[:, torch.from_numpy(self._s2v[known])] = torch.from_numpy(x[:, known]).float()
        return scores

    # ---- set completion (generation) -------------------------------------------------------------
    def rest_marginals(self, Q: np.ndarray, seq: np.ndarray, cuisine: np.ndarray | None = None) -> np.ndarray:
        """``[B, M]`` exact P(i ∈ rest | query) under the set-completion protocol.

        The protocol draws a recipe R with n = |R| ≥ 4 and shows a uniform random subset of size k = ⌊n/2⌋, so
        P(q | R) = [q ⊆ R] / C(n, k) with n ∈ {2k, 2k+1}. Per template, the steps holding a query ingredient are
        fixed; the others are independent "adds one or nothing" draws, whose count distribution (and the count
        distribution without each step) comes from a Poisson-binomial DP. Rows impossible under the generator
        are all-NaN (the caller falls back).
        """
        sp = self.spec
        B, Tn, S = len(Q), sp.n_templates, sp.n_steps
        C = S + 1
        cnt, sel, g, outside = sp.step_terms(Q)
        k = Q.sum(1).astype(np.int64)                                  # [B]
        fixed = cnt >= 1
        possible = ~outside & (cnt <= 1).all(-1)
        G = np.where(fixed, sel, 0.0).sum(-1)                          # log Π p over fixed steps
        a = np.where(fixed, 0.0, 1.0 - sp.none[None])                  # [B, Tn, S] P(step adds an ingredient)
        pre = np.zeros((B, Tn, S + 1, C))
        suf = np.zeros((B, Tn, S + 1, C))
        pre[:, :, 0, 0] = 1.0
        suf[:, :, S, 0] = 1.0
        for s in range(S):
            p, q = pre[:, :, s], a[:, :, s, None]
            pre[:, :, s + 1] = p * (1 - q)
            pre[:, :, s + 1, 1:] += p[..., :-1] * q
            r = S - 1 - s
            p, q = suf[:, :, r + 1], a[:, :, r, None]
            suf[:, :, r] = p * (1 - q)
            suf[:, :, r, 1:] += p[..., :-1] * q
        excl = np.zeros((B, Tn, S, C))                                 # count distribution without step s
        for c in range(C):
            excl[..., c:] += pre[:, :, :S, c, None] * suf[:, :, 1:, :C - c]
        # weights of the rest size m: m in {k, k+1}, w = 1 / C(k+m, k), and n = k+m >= 4 when k >= 2
        Pm = np.zeros((B, Tn))
        E = np.zeros((B, Tn, S))
        for extra in (0, 1):
            m = k + extra
            w = np.array([1.0 / math.comb(int(kk + mm), int(kk)) for kk, mm in zip(k, m, strict=True)])
            w = np.where((k >= 2) & (k + m < 4), 0.0, w)
            in_range = m < C
            mc = np.minimum(m, C - 1)
            Pm += np.where(in_range, w, 0.0)[:, None] * np.take_along_axis(
                pre[:, :, S], np.broadcast_to(mc[:, None, None], (B, Tn, 1)), 2)[..., 0]
            m1 = np.clip(m - 1, 0, C - 1)
            ok = (m >= 1) & (m - 1 < C)
            E += np.where(ok, w, 0.0)[:, None, None] * np.take_along_axis(
                excl, np.broadcast_to(m1[:, None, None, None], (B, Tn, S, 1)), 3)[..., 0]
        lp, order = self._row_log_prior(seq, cuisine)
        with np.errstate(divide="ignore"):
            logPm = np.log(Pm)
            base = np.where(possible, lp + G, -np.inf)
            if self.ordered:  # keep the order filter on the rows where it leaves a possible template
                usable = np.isfinite(base + order + logPm).any(1, keepdims=True)
                base = base + np.where(usable, order, 0.0)
            lw = base + logPm
        top = lw.max(1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        U = np.exp(np.where(np.isfinite(lw), base - top, -np.inf))    # ∝ P(t) P(fixed | t), safe where Pm > 0
        Z = (U * Pm).sum(1)
        idx = np.broadcast_to(np.maximum(sp.step_of, 0)[None], (B, Tn, sp.n_ingredients))
        E_y = np.take_along_axis(E, idx, 2)
        free = np.take_along_axis(cnt, idx, 2) == 0
        incl = np.where(free & sp.pool[None], sp.prob_of[None] * E_y, 0.0)   # [B, Tn, M]
        with np.errstate(invalid="ignore", divide="ignore"):
            pi = np.einsum("bt,btm->bm", U, incl) / Z[:, None]
        pi[Z <= 0] = np.nan
        return pi

    def complete_ids(self, tokens: torch.Tensor, mask: torch.Tensor, max_new: int = 20,
                     cuisine: torch.Tensor | None = None) -> list[list[int]]:
        """The rest of each set, chosen from the exact inclusion probabilities π_i = P(i ∈ rest | query).

        Candidates are sorted by π; the size K maximises the plug-in expected F1 ``2·Σ_{top K} π / (K + E|rest|)``
        (a ratio of expectations). So this is an *oracle-probability bound* — the exact posterior with a good
        decision rule — not the exact Bayes optimum of F1 (which would maximise E[F1] over all subsets).
        Returns vocabulary ids, most probable first, at most ``max_new``.
        """
        Q, seq, foreign = self._query(tokens, mask)
        cu = None if cuisine is None else torch.as_tensor(cuisine).cpu().numpy()
        pi = np.empty_like(Q)
        for a in range(0, len(Q), _CHUNK):
            b = slice(a, a + _CHUNK)
            pi[b] = self.rest_marginals(Q[b], seq[b], None if cu is None else cu[b])
        bad = foreign | np.isnan(pi).any(1)
        if bad.any():
            self.n_fallback += int(bad.sum())
            pi[bad] = np.where(Q[bad] > 0, 0.0, self.marginal[None])
        expected = pi.sum(1)
        pi = np.where((self._s2v >= 0)[None] & (Q == 0), pi, -1.0)   # only vocabulary ids outside the query
        order = np.argsort(-pi, axis=1, kind="stable")
        p_sorted = np.take_along_axis(pi, order, 1)
        n_cand = (p_sorted > 0).sum(1)
        limit = np.minimum(n_cand, max(int(max_new), 0))
        Ks = np.arange(1, pi.shape[1] + 1)
        f1 = 2 * np.cumsum(np.maximum(p_sorted, 0), 1) / (Ks[None] + expected[:, None])
        f1 = np.where(Ks[None] <= limit[:, None], f1, -np.inf)
        best = np.where(limit > 0, f1.argmax(1) + 1, 0)
        return [self._s2v[order[b, :best[b]]].tolist() for b in range(len(Q))]

    # ---- cuisine --------------------------------------------------------------------------------
    def classify_ids(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, n_cuisines]`` exact P(cuisine | set) over the vocabulary's cuisines (renormalised over those the
        vocabulary has); in ordered mode the order of the set is used as well."""
        sp = self.spec
        Q, seq, foreign = self._query(tokens, mask)
        ll = sp.template_log_likelihood(Q)
        lp, order = self._row_log_prior(seq, None)
        lp = lp + ll                                                   # [B, Tn]
        if self.ordered:
            usable = np.isfinite(lp + order).any(1, keepdims=True)
            lp = lp + np.where(usable, order, 0.0)
        onehot = sp.template_cuisine[None, :] == np.arange(len(sp.cuisines))[:, None]   # [Cs, Tn]
        per = _logsumexp(np.where(onehot[None], lp[:, None, :], -np.inf), axis=2)     # [B, Cs]
        bad = foreign | ~np.isfinite(per).any(1)
        if bad.any():
            self.n_fallback += int(bad.sum())
            with np.errstate(divide="ignore"):
                per[bad] = np.log(sp.priors)[None]
        V = len(self._cuisine_v2s)
        out = np.full((len(Q), V), -np.inf)
        have = self._cuisine_v2s >= 0
        out[:, have] = per[:, self._cuisine_v2s[have]]
        if V:
            norm = _logsumexp(out, axis=1)[:, None]
            out = np.where(np.isfinite(norm), np.exp(out - norm), 1.0 / V)
        return torch.from_numpy(out).float()

    # ---- string API and likelihood floors --------------------------------------------------------
    def _encode(self, sets: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = EncodedSets.from_lists([self.vocab.encode(s) for s in sets]).padded()
        return torch.from_numpy(tokens), torch.from_numpy(mask)

    def completion_scores(self, partial_sets: Sequence[Sequence[str]], mode: str = "next") -> torch.Tensor:
        """String API: ``[B, len(vocab)]`` exact log-posteriors of the missing ingredient."""
        return self.completion_scores_ids(*self._encode(partial_sets), mode=mode)

    def complete(self, partial_sets: Sequence[Sequence[str]], max_new: int = 10) -> list[list[str]]:
        """String API: the oracle's completion of each partial set (see :meth:`complete_ids`)."""
        return [self.vocab.decode(ids) for ids in self.complete_ids(*self._encode(partial_sets), max_new=max_new)]

    def classify(self, sets: Sequence[Sequence[str]]) -> torch.Tensor:
        """String API: ``[B, n_cuisines]`` exact cuisine probabilities."""
        return self.classify_ids(*self._encode(sets))

    def set_log_prob(self, ingredients: Sequence[str]) -> float:
        """Exact log P(set) of an unordered set of ingredient names (-inf if the generator cannot produce it)."""
        return float(self.spec.set_log_probs([list(ingredients)])[0])

    def nll_floor(self, recipes: RecipeTable | Sequence[Sequence[str]], per_ingredient: bool = False) -> float:
        """Mean exact −log P(set) (nats) of ``recipes`` under the generator: the floor of the set-NLL metric on
        data it generated (an i.i.d. sample; dedupe/splitting shift it slightly). ``per_ingredient`` divides the
        total by the number of ingredients instead of recipes."""
        sets = recipes.ingredients if hasattr(recipes, "ingredients") and hasattr(recipes, "frame") else recipes
        sets = [list(s) for s in sets]
        if not sets:
            raise RecipesetError("nll_floor: no recipes")
        nll = -self.spec.set_log_probs(sets)
        return float(nll.sum() / (sum(len(s) for s in sets) if per_ingredient else len(sets)))

    def entropy(self, n_samples: int = 20000, seed: int = 12345) -> tuple[float, float]:
        """Monte-Carlo estimate of the generator's set entropy (nats per recipe): ``(mean, standard error)``."""
        return self.spec.entropy(n_samples, seed)


__all__ = ["SyntheticOracle", "SyntheticSpec", "Template", "generate_records", "load_spec", "load_synthetic",
           "DEFAULT_N_RECIPES", "DEFAULT_SEED"]
