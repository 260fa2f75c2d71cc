"""Plots as matplotlib ``Figure`` objects, built without pyplot: no global backend state, works headless.

Nothing here knows about MLflow: :meth:`recipeset.tracking.Tracker.log_figure` logs a figure, ``fig.savefig``
writes one. matplotlib is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from recipeset.errors import RecipesetError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 4.0)) -> tuple[Figure, np.ndarray]:
    """A constrained-layout Figure of ``nrows × ncols`` panels, each ``size`` inches, and its axes
    ``[nrows, ncols]`` (always 2-D)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot_learning_curves(history: Mapping[str, Sequence[tuple[int, float]]]) -> Figure:
    """Learning curves from ``{metric name: [(step, value), ...]}``.

    Metrics sharing the part after ``/`` (``train/loss`` and ``val/loss``) share one panel.
    """
    if not history:
        raise RecipesetError("plot_learning_curves: no metrics to plot")
    panels: dict[str, list[str]] = {}
    for name in history:
        panels.setdefault(name.split("/", 1)[-1], []).append(name)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(nrows, ncols)
    for ax, (title, names) in zip(axes.flat, panels.items(), strict=False):
        for name in names:
            points = sorted(history[name])
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=name, marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return fig


def plot_confusion(cm: np.ndarray | Sequence[Sequence[int]], labels: Sequence[str]) -> Figure:
    """Confusion matrix ``cm [C, C]`` (rows: true, columns: predicted), colour = row-normalised recall."""
    cm = np.asarray(cm, dtype=float)
    c = len(labels)
    if cm.shape != (c, c):
        raise RecipesetError(f"plot_confusion: matrix of shape {cm.shape} does not match {c} labels")
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
    side = max(4.0, 0.35 * c + 2)
    fig, axes = new_figure(size=(side + 1, side))
    ax = axes[0, 0]
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(c), labels, rotation=90, fontsize="small")
    ax.set_yticks(range(c), labels, fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 20:  # counts stay legible only on small matrices
        for i, j in zip(*np.nonzero(cm), strict=True):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize="x-small",
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="fraction of true class")
    return fig


def plot_embedding_map(emb: Any, names: Sequence[str], counts: Sequence[int] | None = None,
                       n_labels: int = 30) -> Figure:
    """2-D PCA of ingredient embeddings ``emb [V, D]`` (numpy or torch), labelling the ``n_labels`` most frequent.

    Without ``counts`` the rows are taken to be in descending frequency (the Vocabulary's id order).
    """
    if hasattr(emb, "detach"):
        emb = emb.detach().float().cpu().numpy()
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(names):
        raise RecipesetError(f"plot_embedding_map: embeddings of shape {x.shape} do not match {len(names)} names")
    x = x - x.mean(axis=0, keepdims=True)
    # PCA by SVD: the top-2 right singular vectors are the principal axes.
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T if vt.shape[0] >= 2 else np.pad(x @ vt.T, ((0, 0), (0, 2 - vt.shape[0])))
    order = np.argsort(-np.asarray(counts), kind="stable") if counts is not None else np.arange(len(names))
    fig, axes = new_figure(size=(7.0, 6.0))
    ax = axes[0, 0]
    ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.5)
    for i in order[:n_labels]:
        ax.annotate(names[i], (xy[i, 0], xy[i, 1]), fontsize="x-small")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("ingredient embeddings (PCA)")
    return fig


__all__ = ["new_figure", "plot_learning_curves", "plot_confusion", "plot_embedding_map"]
