"""Training-step benchmark: the Hungarian set loss against the standard loss on the same model and batch.

Both losses train the same K slot outputs of the same model on the same batch; the two kinds of step are
interleaved (A, B, A, B, ...) in one run so that machine noise hits both alike, and medians are reported.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from recipeset.data.vocab import NULL, NUM_SPECIALS, Vocabulary
from recipeset.models.set_transformer import SetTransformer, SetTransformerConfig
from recipeset.objectives.losses import IGNORE, hungarian_loss, standard_loss
from recipeset.objectives.matching import HungarianMatcher


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
