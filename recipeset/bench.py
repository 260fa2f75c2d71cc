"""Benchmarks.

``bench_hungarian_vs_standard``: the Hungarian set loss against the standard loss on the same model and batch.
Both losses train the same K slot outputs of the same model on the same batch; the two kinds of step are
interleaved (A, B, A, B, ...) in one run so that machine noise hits both alike, and medians are reported.

``bench_million``: a million-recipe CSV through the data layer (``data stats``; load + clean + split + encode)
and to the first training step, against ``pandas.read_csv`` of the same file, with each piece's peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch
from torch import nn

from recipeset.config import DataConfig, RunConfig
from recipeset.data.prepare import prepare_data
from recipeset.data.sources import load_dataset
from recipeset.data.vocab import NULL, NUM_SPECIALS, Vocabulary
from recipeset.errors import RecipesetError
from recipeset.models.set_transformer import SetTransformer, SetTransformerConfig
from recipeset.objectives.losses import IGNORE, hungarian_loss, standard_loss
from recipeset.objectives.matching import HungarianMatcher
from recipeset.pipeline import run_training
from recipeset.training import Trainer


def _build_model(vocab_size: int, d_model: int, n_slots: int) -> tuple[nn.Module, str]:
    """The project's SetTransformer with a slot decoder (what the Hungarian loss trains in the study)."""
    vocab = Vocabulary([f"ingredient_{i}" for i in range(vocab_size - NUM_SPECIALS)])
    model = SetTransformer(SetTransformerConfig(d_model=d_model, n_slots=n_slots), vocab)

    def slot_logits(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(tokens, mask).slot_logits

    model.slot_logits_fn = slot_logits  # type: ignore[attr-defined]
    return model, "set-transformer"


def _synthetic_batch(batch_size: int, n_slots: int, vocab_size: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random sets of 3..min(20, K) distinct ingredients: (tokens, mask, hungarian targets [B, K] padded with
    -100, standard targets [B, K]: the set in its given order, then ∅ on the remaining slots)."""
    n_ingredients = vocab_size - NUM_SPECIALS
    max_len = max(1, min(20, n_slots, n_ingredients))
    lengths = torch.randint(min(3, max_len), max_len + 1, (batch_size,), generator=generator)
    ids = torch.rand(batch_size, n_ingredients, generator=generator).argsort(1)[:, :n_slots] + NUM_SPECIALS
    pos = torch.arange(n_slots)[None, :]
    mask = pos < lengths[:, None]
    tokens = torch.where(mask, ids, 0)
    hungarian_targets = torch.where(mask, ids, IGNORE)
    standard_targets = torch.where(mask, ids, NULL)
    return tokens, mask, hungarian_targets, standard_targets


def bench_hungarian_vs_standard(batch_size: int = 64, n_slots: int = 32, vocab_size: int = 400, d_model: int = 128,
                                steps: int = 20, warmup: int = 3, seed: int = 0) -> dict:
    """Median training-step time (forward + loss + backward + AdamW step) of ``standard_loss`` on the K slot
    outputs vs ``hungarian_loss`` on the same outputs, same model, same batch, interleaved A/B in one run.

    Returns a dict: ``standard_step_ms``, ``hungarian_step_ms``, ``hungarian_over_standard_ratio``,
    ``matching_ms`` (the matcher alone, median), ``matching_share`` (matching_ms / hungarian_step_ms),
    ``model`` (``set-transformer``, or the fallback and the reason), ``batch_size``, ``n_slots``,
    ``vocab_size``, ``d_model``, ``steps``, ``torch_threads``.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model, model_name = _build_model(vocab_size, d_model, n_slots)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens, mask, h_targets, s_targets = _synthetic_batch(batch_size, n_slots, vocab_size, gen)
    matcher = HungarianMatcher()

    def step(kind: str) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        slot_logits = model.slot_logits_fn(tokens, mask)
        if kind == "standard":
            loss = standard_loss(slot_logits, s_targets)
        else:
            loss = hungarian_loss(slot_logits, h_targets, matcher=matcher)
        loss.backward()
        opt.step()
        return (time.perf_counter() - t0) * 1e3

    times: dict[str, list[float]] = {"standard": [], "hungarian": [], "matching": []}
    for i in range(warmup + steps):
        # Alternate which loss goes first, so neither always follows the other.
        order = ("standard", "hungarian") if i % 2 == 0 else ("hungarian", "standard")
        for kind in order:
            ms = step(kind)
            if i >= warmup:
                times[kind].append(ms)
        with torch.no_grad():
            logits = model.slot_logits_fn(tokens, mask)
        t0 = time.perf_counter()
        matcher(logits, h_targets)
        if i >= warmup:
            times["matching"].append((time.perf_counter() - t0) * 1e3)

    std, hun, match = (statistics.median(times[k]) for k in ("standard", "hungarian", "matching"))
    return {
        "standard_step_ms": round(std, 3),
        "hungarian_step_ms": round(hun, 3),
        "hungarian_over_standard_ratio": round(hun / std, 4),
        "matching_ms": round(match, 3),
        "matching_share": round(match / hun, 4),
        "model": model_name,
        "batch_size": batch_size,
        "n_slots": n_slots,
        "vocab_size": vocab_size,
        "d_model": d_model,
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
    }


# ================================================================================================
# A million recipes: load + clean + encode + split against pandas.read_csv on the same file
# ================================================================================================
MILLION_CUISINES = ("NorthAmerican", "SouthernEuropean", "LatinAmerican", "WesternEuropean", "EastAsian",
                    "MiddleEastern", "SouthAsian", "SoutheastAsian", "EasternEuropean", "African",
                    "NorthernEuropean")
_SYLLABLES = ("ba", "ko", "ri", "san", "mel", "to", "pe", "gar", "lin", "chi", "vo", "dul", "ma", "ne", "ros",
              "tam", "fen", "qui", "lo", "zu", "pra", "bel", "cor", "sal")


def _million_names(n_names: int, rng: np.random.Generator) -> list[str]:
    """``n_names`` distinct made-up ingredient names of one to three words (``"ba kori melto"``)."""
    names: dict[str, None] = {}
    while len(names) < n_names:
        words = [("".join(rng.choice(_SYLLABLES, size=rng.integers(2, 4)))) for _ in range(rng.integers(1, 4))]
        names[" ".join(words)] = None
    return list(names)


def _noisy_variants(name: str) -> list[str]:
    """Spellings of one name that normalise to it (case, whitespace) plus a plural that does not."""
    words = name.split()
    return [name, name.title(), name.upper(), "  " + "   ".join(words) + " ", "\t".join(words) + " ",
            name + "s"]


def write_million_csv(path: str | os.PathLike, n: int = 1_000_000, n_names: int = 1200, seed: int = 0) -> Path:
    """A synthetic recipe CSV (``ingredients;separated;by;semicolons,cuisine``) of ``n`` recipes.

    Set sizes follow flavornet's shape (mean ~8.4, 1..~40); ingredient popularity is Zipf-like over
    ``n_names`` names; ~12% of mentions are written with noise (case, extra or tab whitespace: the same
    ingredient after normalisation; a plural ``s``: a different one), ~1% of recipes repeat an ingredient,
    ~0.2% hold only separators (dropped as empty), and a few cuisine labels carry stray spaces.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    names = _million_names(n_names, rng)
    variants = np.array([_noisy_variants(x) for x in names], dtype=object)  # [n_names, 6]
    sizes = np.clip(rng.negative_binomial(7, 0.45, size=n) + 1, 1, 40)   # mean ~9.6 before dedupe of repeats
    sizes = np.clip(np.round(sizes * 0.875).astype(np.int64), 1, 40)
    total = int(sizes.sum())
    popularity = 1.0 / np.arange(1, n_names + 1) ** 0.9
    name_idx = rng.choice(n_names, size=total, p=popularity / popularity.sum())
    noise = rng.random(total)
    variant = np.where(noise < 0.88, 0, rng.integers(1, 6, size=total))
    variant[noise > 0.995] = 5                                            # plural: another ingredient
    pieces = variants[name_idx, variant]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    repeat = np.flatnonzero(rng.random(n) < 0.01)
    cuisine = np.array(MILLION_CUISINES, dtype=object)[np.minimum(rng.geometric(0.35, size=n) - 1, 10)]
    cuisine[rng.random(n) < 0.001] = " EastAsian "
    empty = set(np.flatnonzero(rng.random(n) < 0.002).tolist())
    repeat_set = set(repeat.tolist())
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("ingredients,cuisine\n")
        for i in range(n):
            row = pieces[offsets[i]:offsets[i + 1]].tolist()
            if i in empty:
                row = [" ", ""]
            elif i in repeat_set:
                row.append(row[0].lower())
            f.write(f"{';'.join(row)},{cuisine[i]}\n")
    return path


MILLION_PIECES = ("read_csv", "stats", "prepare", "first_step")


class _FirstStepDone(Exception):
    """Raised after the first optimizer step of the timed training run, to stop it there."""


def _peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_to_first_step(path: str, model: str = "decoder", d_model: int = 64) -> float:
    """Seconds from calling ``run_training`` (what ``recipeset train`` runs; no MLflow) on ``path`` to the end
    of its first optimizer step: data loading, split, vocabulary, encoding, model and first batch included."""
    cfg = RunConfig.from_dict({"data": {"dataset": path}, "model": {"name": model, "d_model": d_model},
                               "train": {"device": "cpu", "max_steps": 10}})
    original = Trainer._step
    started = time.perf_counter()
    done: dict[str, float] = {}

    def first_step(self: Trainer, batch):  # the real step, then stop the run
        original(self, batch)
        done["seconds"] = time.perf_counter() - started
        raise _FirstStepDone

    with tempfile.TemporaryDirectory(prefix="recipeset-bench-") as out, \
            mock.patch.object(Trainer, "_step", first_step):
        try:
            run_training(cfg, out_dir=out, track=False, progress=False, evaluate=False)
        except _FirstStepDone:
            pass
    if "seconds" not in done:
        raise RecipesetError("bench: the training run ended before its first step")
    return done["seconds"]


def _seconds(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def million_piece(piece: str, path: str) -> dict:
    """Run one piece of :func:`bench_million` in this process: ``{"seconds", "peak_rss_mb",
    "rss_before_mb"}`` (``rss_before_mb``: after the imports, before the piece).

    - ``read_csv``: ``pandas.read_csv(path)`` (the reference: parsing the file and nothing else; median of 3);
    - ``stats``: what ``recipeset data stats`` does: ``load_dataset`` (read, normalise, clean) + ``describe()``;
    - ``prepare``: ``prepare_data`` (load, clean, group split, training vocabulary, encode train/val/test)
      + ``describe()`` — the data layer's whole job before training;
    - ``first_step``: ``run_training`` until its first optimizer step has finished (a d_model-64 decoder).
    """
    if piece not in MILLION_PIECES:
        raise RecipesetError(f"bench: unknown piece {piece!r}; one of {', '.join(MILLION_PIECES)}")
    before = _peak_rss_mb()
    if piece == "read_csv":  # the reference is short and noisy on a shared machine: the median of 3 reads
        return {"seconds": round(statistics.median(_seconds(pd.read_csv, path) for _ in range(3)), 3),
                "peak_rss_mb": round(_peak_rss_mb(), 1), "rss_before_mb": round(before, 1)}
    t0 = time.perf_counter()
    if piece == "stats":
        load_dataset(path).describe()
    elif piece == "prepare":
        prepare_data(DataConfig(dataset=path)).table.describe()
    seconds = _time_to_first_step(path) if piece == "first_step" else time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(_peak_rss_mb(), 1), "rss_before_mb": round(before, 1)}


def _run_piece(piece: str, path: Path, timeout: float) -> dict:
    """:func:`million_piece` in a fresh interpreter, so that its peak RSS is its own."""
    code = ("import json, sys; from recipeset.bench import million_piece; "
            "print(json.dumps(million_piece(sys.argv[1], sys.argv[2])))")
    proc = subprocess.run([sys.executable, "-c", code, piece, str(path)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RecipesetError(f"bench: the {piece} piece failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_million(n: int = 1_000_000, path: str | os.PathLike | None = None, repeats: int = 1,
                  timeout: float = 1800.0) -> dict:
    """The million-recipe data benchmark (the issue's "Done when": ``stats`` and ``prepare`` <= 8x
    ``read_csv``, <= 1 GB peak; first training step <= 2x ``prepare``).

    Writes the CSV of :func:`write_million_csv` to ``path`` (kept; reused when it exists) or to a temporary
    file (removed), then runs every piece of :func:`million_piece` ``repeats`` times, each in its own fresh
    interpreter (so each peak RSS is that piece's alone, imports included), interleaved so that machine
    noise hits all alike; reports the median seconds and the largest peak of each piece, and the ratios.
    """
    with tempfile.TemporaryDirectory(prefix="recipeset-million-") as tmp:
        csv_path = Path(path) if path is not None else Path(tmp) / "million.csv"
        if not csv_path.exists():
            write_million_csv(csv_path, n=n)
        runs: dict[str, list[dict]] = {p: [] for p in MILLION_PIECES}
        for _ in range(repeats):
            for piece in MILLION_PIECES:
                runs[piece].append(_run_piece(piece, csv_path, timeout))
        size_mb = csv_path.stat().st_size / 2**20
    out: dict = {"n_recipes": n, "csv_mb": round(size_mb, 1), "repeats": repeats,
                 "load_average": [round(x, 2) for x in os.getloadavg()]}
    for piece, rs in runs.items():
        out[f"{piece}_s"] = statistics.median(r["seconds"] for r in rs)
        out[f"{piece}_peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
        out[f"{piece}_rss_before_mb"] = max(r["rss_before_mb"] for r in rs)
    out["stats_over_read_csv"] = round(out["stats_s"] / out["read_csv_s"], 2)
    out["prepare_over_read_csv"] = round(out["prepare_s"] / out["read_csv_s"], 2)
    out["first_step_over_prepare"] = round(out["first_step_s"] / out["prepare_s"], 2)
    return out
