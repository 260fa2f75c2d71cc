"""Classical baselines on the same evaluation protocol as the neural models.

Every baseline implements the :class:`~recipeset.evaluation.Scorer` protocol, is fit on the TRAIN sets and
tuned on VALIDATION with the evaluation functions themselves (completion MRR for the ranking
hyper-parameters, then set-completion micro-F1 for the stop rule; cuisine macro-F1 for the classifier).

Ranking baselines turn their evidence into a distribution ``p`` over the candidates (ingredients not in the
query): non-negative evidence ``w`` is normalised (``p ∝ w``) with a 1e-4 share of training popularity so that
no candidate has zero mass and ties without evidence break by popularity; the classifiers use a softmax.
``completion_scores_ids`` returns ``log p``. ``complete_ids`` returns the top candidates of ``p`` under a stop
rule: a fixed size ``m`` (``stop="size"``) or every candidate with ``p >= τ`` (``stop="threshold"``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from recipeset import progress
from recipeset.config import CUISINE_MAX_ACCURACY_DROP
from recipeset.data.sets import EncodedSets
from recipeset.data.vocab import NUM_SPECIALS, PAD, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.evaluation import (
    NoSetQueries,
    drop_unknown,
    evaluate_all,
    evaluate_completion,
    evaluate_cuisine,
    half_queries,
    leave_one_out_queries,
)
from recipeset.models.base import offset_probs
from recipeset.objectives.losses import item_cross_entropy
from recipeset.protocol import prefix_rule_f1s, tune_cuisine_rule, tune_stop_rule

RANKING_TASKS = ("completion", "set", "order")


def multi_hot(sets: EncodedSets, n_ingredients: int) -> sp.csr_matrix:
    """Binary float32 ``[N, I]`` recipe × ingredient matrix (column ``j`` is id ``NUM_SPECIALS + j``; specials
    and out-of-vocabulary ids are dropped)."""
    keep = (sets.values >= NUM_SPECIALS) & (sets.values < NUM_SPECIALS + n_ingredients)
    rows, cols = sets.segment_ids[keep], sets.values[keep] - NUM_SPECIALS
    X = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(sets), n_ingredients))
    X.sum_duplicates()
    X.data[:] = 1.0
    X.sort_indices()
    return X


def _tokens_multi_hot(tokens: torch.Tensor, mask: torch.Tensor, n_ingredients: int) -> sp.csr_matrix:
    """``[B, T]`` padded ids -> binary ``[B, I]`` (order of the tokens is irrelevant by construction)."""
    t, m = tokens.cpu().numpy(), mask.cpu().numpy()
    m = m & (t >= NUM_SPECIALS) & (t < NUM_SPECIALS + n_ingredients)
    rows, cols = np.nonzero(m)
    X = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, t[rows, cols] - NUM_SPECIALS)),
                      shape=(t.shape[0], n_ingredients))
    X.sum_duplicates()
    X.data[:] = 1.0
    X.sort_indices()
    return X


class Baseline:
    """Common Scorer plumbing: multi-hot queries in, a candidate distribution out, a tunable stop rule."""

    name: ClassVar[str] = "baseline"
    grid: ClassVar[tuple[dict[str, Any], ...]] = ({},)  # hyper-parameters tuned on validation
    tasks: ClassVar[tuple[str, ...]] = RANKING_TASKS
    select: ClassVar[str] = "completion/mrr"  # validation metric that picks the grid point
    can_classify: bool = False

    def __init__(self, vocab: Vocabulary, stop: str = "size", stop_value: float = 4, seed: int = 0) -> None:
        if stop not in ("size", "threshold"):
            raise RecipesetError(f"stop rule must be 'size' or 'threshold', not {stop!r}")
        self.vocab = vocab
        self.stop, self.stop_value, self.seed = stop, stop_value, seed
        self.n_ing = vocab.num_ingredients
        self.popularity = np.ones(self.n_ing)

    # ---- to implement ---------------------------------------------------------------------------
    def fit(self, train: EncodedSets, val: EncodedSets | None = None, eval_seed: int = 0,
            draws: int = 1) -> Baseline:
        """Fit on ``train``. A baseline trained by epochs stops early on the validation MRR of ``val`` (the
        protocol's queries: ``eval_seed``, ``draws``); the others ignore ``val``."""
        X = multi_hot(train, self.n_ing)
        self.popularity = np.asarray(X.sum(0)).ravel() + 1.0  # +1: an unseen ingredient keeps a little mass
        self.val, self.eval_seed, self.draws = val, eval_seed, draws
        self._fit(X, train)
        self.val = None  # not kept with the fitted baseline
        return self

    def _fit(self, X: sp.csr_matrix, train: EncodedSets) -> None:
        pass

    def _evidence(self, X: sp.csr_matrix) -> np.ndarray:
        """``[B, I]`` non-negative evidence for each ingredient given the multi-hot queries ``X``."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The hyper-parameters (grid keys) and the stop rule."""
        return {"stop": self.stop, "stop_value": self.stop_value}

    # ---- distribution over candidates ------------------------------------------------------------
    def candidate_probs(self, X: sp.csr_matrix) -> np.ndarray:
        """``[B, I]`` float64 distribution over the candidates (0 exactly on the query's ingredients)."""
        allowed = X.toarray() == 0
        w = np.where(allowed, np.maximum(self._evidence(X), 0.0), 0.0)
        pop = np.where(allowed, self.popularity[None, :], 0.0)
        pop /= np.maximum(pop.sum(1, keepdims=True), 1e-300)
        tot = w.sum(1, keepdims=True)
        eps = np.where(tot > 0, 1e-4, 1.0)
        return (1 - eps) * w / np.maximum(tot, 1e-300) + eps * pop

    # ---- Scorer protocol ------------------------------------------------------------------------
    def completion_scores_ids(self, tokens: torch.Tensor, mask: torch.Tensor, mode: str = "next",
                              cuisine: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T]`` query -> ``[B, len(vocab)]`` log-probabilities; -inf on specials and query ids.
        ``mode`` and ``cuisine`` are ignored (the baselines see the query as a bag)."""
        X = _tokens_multi_hot(tokens, mask, self.n_ing)
        p = self.candidate_probs(X)
        with np.errstate(divide="ignore"):
            logp = np.where(p > 0, np.log(np.maximum(p, 1e-300)), -np.inf)
        out = torch.full((tokens.shape[0], len(self.vocab)), float("-inf"))
        out[:, NUM_SPECIALS:] = torch.from_numpy(logp).float()
        # a tiny p can underflow float32 to 0, never to -inf: keep every candidate finite
        cand = torch.from_numpy(X.toarray() == 0)
        out[:, NUM_SPECIALS:] = torch.where(cand & ~torch.isfinite(out[:, NUM_SPECIALS:]),
                                            torch.finfo(torch.float32).min, out[:, NUM_SPECIALS:])
        return out

    def ranked(self, tokens: torch.Tensor, mask: torch.Tensor, top: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``top`` best candidates: ids ``[B, top]`` (vocabulary ids) and their probabilities ``[B, top]``."""
        X = _tokens_multi_hot(tokens, mask, self.n_ing)
        p = self.candidate_probs(X)
        top = min(top, self.n_ing)
        idx = np.argsort(-p, axis=1, kind="stable")[:, :top]  # ties: frequency order (ascending id)
        pv = np.take_along_axis(p, idx, 1)
        n_cand = (X.toarray() == 0).sum(1)
        pv = np.where(np.arange(top)[None, :] < n_cand[:, None], pv, -1.0)  # never the query's own ids
        return idx + NUM_SPECIALS, pv

    def complete_ids(self, tokens: torch.Tensor, mask: torch.Tensor, max_new: int = 20,
                     cuisine: torch.Tensor | None = None) -> list[list[int]]:
        """The top candidates under the stop rule (at most ``max_new``): no repeats, specials or query ids."""
        idx, pv = self.ranked(tokens, mask, max(int(max_new), 1))
        keep = _stop_keep(pv, self.stop, self.stop_value)
        keep[:, int(max_new):] = False
        return [row[k].tolist() for row, k in zip(idx, keep, strict=True)]

    def stop_rule_f1s(self, val: EncodedSets, rules: Sequence[tuple[str, float]], seed: int = 0,
                      batch_size: int = 512) -> list[float]:
        """The set-completion micro-F1 of each stop rule ``(rule, value)`` on the protocol's half queries of
        ``val``, from one ranking of the queries (:func:`recipeset.protocol.tune_stop_rule` picks the best)."""
        queries, truths, _ = half_queries(val, seed)
        if len(queries) == 0:
            raise NoSetQueries()
        top = max([int(v) for rule, v in rules if rule == "size"] + [1, int(val.lengths.max())])
        idx, pv = [], []
        for s in range(0, len(queries), batch_size):
            b = np.arange(s, min(s + batch_size, len(queries)))
            tokens, mask = queries.padded(b, max_len=max(1, int(queries.lengths[b].max())))
            i, p = self.ranked(torch.from_numpy(tokens), torch.from_numpy(mask), top)
            idx.append(i)
            pv.append(p)
        return prefix_rule_f1s(np.concatenate(idx), np.concatenate(pv), truths, rules)

    def classify_ids(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise RecipesetError(f"the {self.name} baseline cannot classify cuisines")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"


def _stop_keep(pv: np.ndarray, stop: str, value: float) -> np.ndarray:
    """``[B, L]`` bool: which of the ranked candidates the stop rule keeps (always a prefix)."""
    if stop == "size":
        keep = np.arange(pv.shape[1])[None, :] < int(value)
    else:
        keep = pv >= value
    return keep & (pv >= 0)


# ================================================================================================
# Ranking baselines
# ================================================================================================
class PopularityBaseline(Baseline):
    """The most frequent training ingredients not in the query."""

    name = "popularity"

    def _evidence(self, X: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.popularity - 1.0, X.shape)


class CooccurrenceBaseline(Baseline):
    """Score y by Σ_q w(q, y) over the query ingredients q.

    ``weighting``: ``count`` (co-occurrence counts), ``conditional`` (Σ P(y | q)) or ``ppmi`` (positive
    pointwise mutual information).
    """

    name = "cooccurrence"
    grid = ({"weighting": "count"}, {"weighting": "conditional"}, {"weighting": "ppmi"})

    def __init__(self, vocab: Vocabulary, weighting: str = "conditional", **kw: Any) -> None:
        super().__init__(vocab, **kw)
        if weighting not in ("count", "conditional", "ppmi"):
            raise RecipesetError(f"co-occurrence weighting must be count, conditional or ppmi, not {weighting!r}")
        self.weighting = weighting

    def params(self) -> dict[str, Any]:
        return {"weighting": self.weighting, **super().params()}

    def _fit(self, X: sp.csr_matrix, train: EncodedSets) -> None:
        C = (X.T @ X).toarray().astype(np.float64)
        c = np.diag(C).copy()
        np.fill_diagonal(C, 0.0)
        if self.weighting == "conditional":
            C = C / np.maximum(c, 1.0)[:, None]
        elif self.weighting == "ppmi":
            with np.errstate(divide="ignore"):
                pmi = np.log(C * max(X.shape[0], 1)) - np.log(np.maximum(np.outer(c, c), 1.0))
            C = np.where(C > 0, np.maximum(pmi, 0.0), 0.0)
        self.W = C

    def _evidence(self, X: sp.csr_matrix) -> np.ndarray:
        return np.asarray(X @ self.W)


class ItemKNNBaseline(Baseline):
    """Item-item cosine similarity on the recipe × ingredient matrix; each query ingredient votes for its
    ``k`` most similar ingredients (``k=None``: all)."""

    name = "item-knn"
    grid = ({"k": 10}, {"k": 25}, {"k": 50}, {"k": 100}, {"k": None})

    def __init__(self, vocab: Vocabulary, k: int | None = 50, **kw: Any) -> None:
        super().__init__(vocab, **kw)
        self.k = k

    def params(self) -> dict[str, Any]:
        return {"k": self.k, **super().params()}

    def _fit(self, X: sp.csr_matrix, train: EncodedSets) -> None:
        C = (X.T @ X).toarray().astype(np.float64)
        norm = np.sqrt(np.maximum(np.diag(C), 1e-12))
        S = C / norm[:, None] / norm[None, :]
        np.fill_diagonal(S, 0.0)
        if self.k is not None and self.k < S.shape[1]:
            drop = np.argsort(-S, axis=1, kind="stable")[:, self.k:]
            np.put_along_axis(S, drop, 0.0, axis=1)
        self.S = S

    def _evidence(self, X: sp.csr_matrix) -> np.ndarray:
        return np.asarray(X @ self.S)


class RecipeKNNBaseline(Baseline):
    """The ``k`` training recipes most similar to the query (Jaccard) vote for their ingredients, weighted by
    similarity. Intersections are one sparse × dense product per chunk of queries (sparse × sparse when the
    dense train matrix would not fit in ``dense_budget`` floats); the neighbours one ``torch.topk``."""

    name = "recipe-knn"
    grid = ({"k": 50}, {"k": 100}, {"k": 200}, {"k": 400})
    chunk = 256  # query rows per [chunk, N_train] similarity block
    dense_budget = 50_000_000  # float32 entries (200 MB) for a dense transposed train matrix

    def __init__(self, vocab: Vocabulary, k: int = 100, **kw: Any) -> None:
        super().__init__(vocab, **kw)
        self.k = k

    def params(self) -> dict[str, Any]:
        return {"k": self.k, **super().params()}

    def _fit(self, X: sp.csr_matrix, train: EncodedSets) -> None:
        self.X = X
        self.XT = X.T.toarray() if X.shape[0] * X.shape[1] <= self.dense_budget else X.T.tocsr()
        self.sizes = torch.from_numpy(np.asarray(X.sum(1), dtype=np.float32).ravel())

    def _evidence(self, X: sp.csr_matrix) -> np.ndarray:
        out = np.zeros(X.shape, dtype=np.float64)
        N = self.X.shape[0]
        k = min(self.k, N)
        if k == 0:
            return out
        qsize = torch.from_numpy(np.asarray(X.sum(1), dtype=np.float32).ravel())
        for s in range(0, X.shape[0], self.chunk):
            inter = X[s:s + self.chunk] @ self.XT
            inter = torch.from_numpy(np.asarray(inter.toarray() if sp.issparse(inter) else inter, dtype=np.float32))
            jac = inter / (qsize[s:s + self.chunk, None] + self.sizes[None, :] - inter).clamp(min=1.0)
            sim, nn = jac.topk(k, dim=1, sorted=False)
            b = len(jac)
            A = sp.csr_matrix((sim.numpy().ravel(), nn.numpy().ravel(), np.arange(0, b * k + 1, k)), shape=(b, N))
            out[s:s + b] = (A @ self.X).toarray()
        return out


class NMFBaseline(Baseline):
    """Non-negative matrix factorisation of the train matrix (scikit-learn); a query is projected on the
    components (``transform``) and the candidates scored by the reconstruction.

    The Kullback-Leibler loss (PLSA-like, multiplicative updates) is used: on flavornet the Frobenius loss
    ranked below popularity. Few components work best: with many, the projection of a short query explains
    the query's own ingredients and little else (measured: MRR falls as ``n_components`` grows past ~16).
    """

    name = "nmf"
    grid = ({"n_components": 8}, {"n_components": 16}, {"n_components": 32})

    def __init__(self, vocab: Vocabulary, n_components: int = 16, max_iter: int = 200, **kw: Any) -> None:
        super().__init__(vocab, **kw)
        self.n_components, self.max_iter = n_components, max_iter

    def params(self) -> dict[str, Any]:
        return {"n_components": self.n_components, **super().params()}

    def _fit(self, X: sp.csr_matrix, train: EncodedSets) -> None:
        import warnings

        from sklearn.decomposition import NMF
        from sklearn.exceptions import ConvergenceWarning

        k = max(1, min(self.n_components, min(X.shape)))
        self.nmf = NMF(n_components=k, init="nndsvda", beta_loss="kullback-leibler", solver="mu",
                       max_iter=self.max_iter, tol=1e-4, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter bounds the cost; tuned on validation
            self.nmf.fit(X.astype(np.float64))

    def _evidence(self, X: sp.csr_matrix) -> np.ndarray:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            W = self.nmf.transform(X.astype(np.float64))
        return W @ self.nmf.components_


class _SoftmaxRegression(torch.nn.Module):
    """Multi-hot query -> logits over the ingredients; ``hidden=0`` is linear, else an MLP with ``layers``
    hidden ReLU layers of width ``hidden`` (dropout after each)."""

    def __init__(self, V: int, n_ing: int, hidden: int, dropout: float, layers: int = 1) -> None:
        super().__init__()
        width = hidden or n_ing
        self.bag = torch.nn.EmbeddingBag(V, width, mode="sum", padding_idx=PAD)  # = W·multi-hot, from ids
        self.bias = torch.nn.Parameter(torch.zeros(width))
        torch.nn.init.normal_(self.bag.weight, std=0.01)
        blocks: list[torch.nn.Module] = []
        for _ in range(layers - 1 if hidden else 0):
            blocks += [torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, hidden)]
        self.head = torch.nn.Sequential(*blocks, torch.nn.ReLU(), torch.nn.Dropout(dropout),
                                        torch.nn.Linear(hidden, n_ing)) if hidden else torch.nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # sorting the ids makes the float sum order (and so the output) exactly order-invariant
        return self.head(self.bag(tokens.sort(1).values) + self.bias)


class LinearCompletionBaseline(Baseline):
    """Leave-one-out softmax regression: from the multi-hot query predict the held-out ingredient.

    Trained with AdamW on leave-one-out examples of the train sets (a fresh held-out ingredient per recipe
    every epoch, label smoothing optional); the query's own ingredients are masked out of the softmax, as in
    evaluation. Given validation queries (:meth:`Baseline.fit`), the epoch is chosen on them: the weights of the
    best validation MRR are kept and training stops after ``patience`` epochs without a better one, at most
    ``epochs``.
    """

    name = "linear"
    grid = ({"weight_decay": 0.0}, {"weight_decay": 1e-4}, {"weight_decay": 1e-3})
    hidden_default = 0

    def __init__(self, vocab: Vocabulary, hidden: int | None = None, layers: int = 1, dropout: float = 0.2,
                 label_smoothing: float = 0.0, epochs: int = 30, patience: int = 3, lr: float = 1e-3,
                 weight_decay: float = 0.0, batch_size: int = 256, **kw: Any) -> None:
        super().__init__(vocab, **kw)
        self.hidden = self.hidden_default if hidden is None else hidden
        self.layers, self.dropout, self.label_smoothing = layers, dropout, label_smoothing
        self.epochs, self.patience, self.lr = epochs, patience, lr
        self.weight_decay, self.batch_size = weight_decay, batch_size
        self.best_epoch = 0

    def params(self) -> dict[str, Any]:
        own = {"hidden": self.hidden, "weight_decay": self.weight_decay, "epochs": self.best_epoch}
        if self.hidden:
            own.update(layers=self.layers, dropout=self.dropout)
        if self.label_smoothing:
            own["label_smoothing"] = self.label_smoothing
        return {**own, **super().params()}

    def _masked_logits(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tokens = torch.where(mask & (tokens >= NUM_SPECIALS) & (tokens < len(self.vocab)), tokens, PAD)
        logits = self.net(tokens)
        present = torch.zeros(tokens.shape[0], len(self.vocab), dtype=torch.bool)
        present.scatter_(1, tokens, True)
        return logits.masked_fill(present[:, NUM_SPECIALS:], float("-inf"))

    def _epoch(self, known: EncodedSets, opt: torch.optim.Optimizer, epoch: int, rng: np.random.Generator) -> None:
        queries, held, _ = leave_one_out_queries(known, seed=self.seed * 1000 + epoch)
        order = rng.permutation(len(queries))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            tokens, mask = queries.padded(idx, max_len=max(1, int(queries.lengths[idx].max())))
            logits = self._masked_logits(torch.from_numpy(tokens), torch.from_numpy(mask))
            loss = item_cross_entropy(logits, torch.from_numpy(held[idx] - NUM_SPECIALS), self.label_smoothing).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def _fit(self, X: sp.csr_matrix, train: EncodedSets) -> None:
        torch.manual_seed(self.seed)
        self.net = _SoftmaxRegression(len(self.vocab), self.n_ing, self.hidden, self.dropout, self.layers)
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        rng = np.random.default_rng(self.seed)
        known = drop_unknown(train)
        best, best_state, since, self.val_curve = -np.inf, None, 0, []
        for epoch in progress.track(range(self.epochs), "epoch"):
            self.net.train()
            self._epoch(known, opt, epoch, rng)
            self.net.eval()
            if self.val is None:
                self.best_epoch = epoch + 1
                continue
            score = evaluate_completion(self, self.val, seed=self.eval_seed, draws=self.draws)["mrr"]
            self.val_curve.append(score)
            if score > best:
                best, since, self.best_epoch = score, 0, epoch + 1
                best_state = {k: v.clone() for k, v in self.net.state_dict().items()}
            else:
                since += 1
                if since >= self.patience:
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()

    def candidate_probs(self, X: sp.csr_matrix) -> np.ndarray:
        rows, cols = X.nonzero()
        T = max(1, int(np.bincount(rows, minlength=X.shape[0]).max(initial=0)))
        tokens = np.zeros((X.shape[0], T), dtype=np.int64)
        pos = np.arange(len(rows)) - X.indptr[rows]  # csr order: column rank inside each row
        tokens[rows, pos] = cols + NUM_SPECIALS
        tokens_t = torch.from_numpy(tokens)
        with torch.inference_mode():
            return torch.softmax(self._masked_logits(tokens_t, tokens_t != PAD).double(), 1).numpy()


class MLPCompletionBaseline(LinearCompletionBaseline):
    """The leave-one-out classifier with one hidden ReLU layer (dropout)."""

    name = "mlp"
    # depth 1-2, width 512-2048, dropout and label smoothing; the epoch is chosen on validation for each point
    grid = ({"hidden": 512}, {"hidden": 1024, "layers": 2}, {"hidden": 2048},
            {"hidden": 2048, "layers": 2, "dropout": 0.5}, {"hidden": 1024, "layers": 2, "label_smoothing": 0.1})
    hidden_default = 512


# ================================================================================================
# Cuisine
# ================================================================================================
class LogisticCuisineBaseline(Baseline):
    """Logistic regression on the bag of ingredients (scikit-learn), ``C`` and class weighting tuned on
    validation macro-F1. A classifier only: it does not score completions."""

    name = "logistic-cuisine"
    grid = tuple({"C": c, "class_weight": w} for c in (0.1, 1.0, 10.0) for w in (None, "balanced"))
    tasks = ("cuisine",)
    select = "cuisine/macro_f1"
    can_classify = True

    def __init__(self, vocab: Vocabulary, C: float = 1.0, class_weight: str | None = None, **kw: Any) -> None:
        super().__init__(vocab, **kw)
        self.C, self.class_weight = C, class_weight
        self.cuisine_offsets: tuple[float, ...] = ()

    def params(self) -> dict[str, Any]:
        return {"C": self.C, "class_weight": self.class_weight,
                **({"cuisine_offsets": list(self.cuisine_offsets)} if self.cuisine_offsets else {})}

    def _fit(self, X: sp.csr_matrix, train: EncodedSets) -> None:
        from sklearn.linear_model import LogisticRegression

        rows = np.flatnonzero(train.cuisine >= 0)
        if len(rows) == 0 or len(np.unique(train.cuisine[rows])) < 2:
            raise RecipesetError("logistic-cuisine: the training sets need at least two labelled cuisines")
        self.clf = LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=1000)
        self.clf.fit(X[rows], train.cuisine[rows])

    def classify_ids(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` ids -> ``[B, n_cuisines]`` probabilities (0 for cuisines absent from training)."""
        P = self.clf.predict_proba(_tokens_multi_hot(tokens, mask, self.n_ing))
        out = np.zeros((P.shape[0], max(self.vocab.num_cuisines, int(self.clf.classes_.max()) + 1)))
        out[:, self.clf.classes_] = P
        return offset_probs(torch.from_numpy(out).float(), self.cuisine_offsets)

    def set_cuisine_offsets(self, offsets: Sequence[float]) -> None:
        """Set the decision rule of :meth:`classify_ids` (per-cuisine log-offsets)."""
        self.cuisine_offsets = tuple(float(b) for b in offsets)

    def completion_scores_ids(self, tokens, mask, mode="next", cuisine=None):  # noqa: ANN001
        raise RecipesetError("the logistic-cuisine baseline is a classifier; it does not score completions")

    def complete_ids(self, tokens, mask, max_new=20, cuisine=None):  # noqa: ANN001
        raise RecipesetError("the logistic-cuisine baseline is a classifier; it does not complete sets")


BASELINES: dict[str, type[Baseline]] = {cls.name: cls for cls in (
    PopularityBaseline, CooccurrenceBaseline, ItemKNNBaseline, RecipeKNNBaseline, LinearCompletionBaseline,
    MLPCompletionBaseline, NMFBaseline, LogisticCuisineBaseline)}


# ================================================================================================
# Tuning and running
# ================================================================================================
def fit_baseline(name: str, train: EncodedSets, vocab: Vocabulary, val: EncodedSets | None = None,
                 seed: int = 0, eval_seed: int = 0, grid: Sequence[Mapping[str, Any]] | None = None,
                 draws: int = 1, cuisine_max_accuracy_drop: float = CUISINE_MAX_ACCURACY_DROP
                 ) -> tuple[Baseline, dict[str, Any]]:
    """Fit baseline ``name`` on ``train``; with ``val``, pick its hyper-parameters on validation.

    The grid point with the best validation ``cls.select`` metric (completion MRR; cuisine macro-F1 for
    the classifier) wins, then the stop rule is tuned on validation set-completion micro-F1. Without ``val``
    the first grid point and a fixed size ``m = round(median train size / 2)`` are used. ``seed`` drives the
    baselines' own randomness; ``eval_seed`` and ``draws`` (held-out draws per recipe) the protocol's queries.
    Returns (baseline, chosen parameters).
    """
    if name not in BASELINES:
        raise RecipesetError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    cls = BASELINES[name]
    grid = list(cls.grid if grid is None else grid) or [{}]
    if val is None:
        m = max(1, int(round(float(np.median(train.lengths)) / 2))) if len(train) else 1
        b = cls(vocab, **grid[0], stop="size", stop_value=m, seed=seed).fit(train)
        return b, b.params()
    best, best_score, scores = None, -np.inf, []
    for point in progress.track(grid, "grid"):
        b = cls(vocab, **point, seed=seed).fit(train, val=val, eval_seed=eval_seed, draws=draws)
        if cls.select == "cuisine/macro_f1":  # with its decision rule tuned on validation, as for the models
            rule = tune_cuisine_rule(b, val, max_accuracy_drop=cuisine_max_accuracy_drop)
            score = rule.macro_f1 if rule is not None else evaluate_cuisine(b, val)["macro_f1"]
        else:
            score = evaluate_completion(b, val, seed=eval_seed, draws=draws)["mrr"]
        scores.append(score)
        if score > best_score:  # ties keep the earlier (simpler) grid point
            best, best_score = b, score
    assert best is not None
    params = best.params()
    if "set" in cls.tasks:
        tune_stop_rule(best, val, seed=eval_seed)
        params = best.params()
    params["val_" + cls.select.split("/")[1]] = float(best_score)
    return best, params


def run_baselines(train: EncodedSets, val: EncodedSets, test: EncodedSets, vocab: Vocabulary,
                  names: Sequence[str] | None = None, seed: int = 0, eval_seed: int = 0,
                  tasks: Sequence[str] | None = None, batch_size: int = 512, draws: int = 1,
                  per_query: dict[str, dict[str, list[pd.DataFrame]]] | None = None,
                  cuisine_max_accuracy_drop: float = CUISINE_MAX_ACCURACY_DROP,
                  cuisine_val: EncodedSets | None = None) -> dict[str, dict[str, Any]]:
    """Fit, tune on ``val`` and evaluate every baseline on ``val`` and ``test`` with :func:`evaluate_all`
    (completion: ``draws`` held-out draws per recipe).

    Returns ``{name: {"params": chosen hyper-parameters, "val": metrics, "test": metrics, "seconds": wall}}``;
    ``tasks`` restricts each baseline's own tasks (ranking: completion/set/order; classifier: cuisine). With
    ``per_query``, the completion ranks are collected as ``per_query[name][split]`` (evaluate_all's frames).
    ``cuisine_val`` (default ``val``): the validation recipes of the classifiers (their grid and decision rule),
    as the models' cuisine rule is tuned on the whole validation split while their completion uses a subset.
    """
    names = list(BASELINES) if names is None else list(names)
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise RecipesetError(f"unknown baseline(s) {bad}; choose from {', '.join(BASELINES)}")
    out: dict[str, dict[str, Any]] = {}
    for name in progress.track(names, "baselines", name=str):
        t0 = time.perf_counter()
        own_val = cuisine_val if cuisine_val is not None and "cuisine" in BASELINES[name].tasks else val
        b, params = fit_baseline(name, train, vocab, own_val, seed=seed, eval_seed=eval_seed, draws=draws,
                                 cuisine_max_accuracy_drop=cuisine_max_accuracy_drop)
        own = [t for t in b.tasks if tasks is None or t in tasks]
        if "cuisine" in own and not (test.cuisine >= 0).any():
            own.remove("cuisine")
        res = {"params": params}
        for split, sets in (("val", own_val), ("test", test)):
            frames = None if per_query is None else per_query.setdefault(name, {}).setdefault(split, [])
            with progress.phase(f"evaluating {split}"):
                res[split] = evaluate_all(b, sets, tasks=own, seed=eval_seed, batch_size=batch_size, draws=draws,
                                          per_query=frames)
        res["seconds"] = time.perf_counter() - t0
        out[name] = res
    return out
