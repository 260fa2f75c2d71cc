"""Collation: vectorised padding of encoded sets to ``[B, T]`` tensors with key-padding masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from recipeset.data.sets import EncodedSets


@dataclass
class Batch:
    """A padded batch of ingredient sets (right-padded with [PAD] = 0).

    tokens:  int64 ``[B, T]`` ingredient ids in the order the ordering strategy produced
    mask:    bool  ``[B, T]`` True on real ingredients (the key-padding mask is ``~mask``)
    lengths: int64 ``[B]``
    cuisine: int64 ``[B]`` cuisine label id, -1 when unknown
    index:   int64 ``[B]`` row of each set in its ``EncodedSets`` (for bookkeeping / evaluation)
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    cuisine: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                for f in fields(self)})

    def pin_memory(self) -> Batch:
        # DataLoader(pin_memory=True) calls this on custom batch types.
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


def collate(sets: EncodedSets, idx: np.ndarray | Sequence[int], max_len: int | None = None) -> Batch:
    """Gather the sets at ``idx`` into a :class:`Batch` with one vectorised scatter."""
    idx = np.asarray(idx, dtype=np.int64)
    tokens, mask = sets.padded(idx, max_len=max_len)
    return Batch(
        tokens=torch.from_numpy(tokens),
        mask=torch.from_numpy(mask),
        lengths=torch.from_numpy(mask.sum(1).astype(np.int64)),
        cuisine=torch.from_numpy(sets.cuisine[idx].copy()),
        index=torch.from_numpy(idx.copy()),
    )


class SetDataset(torch.utils.data.Dataset):
    """Map-style dataset over an :class:`EncodedSets`; items are row indices, so the collate function
    (``SetCollator``) does all gathering at once. Works with DataLoader workers and pinned memory."""

    def __init__(self, sets: EncodedSets) -> None:
        self.sets = sets

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, i: int) -> int:
        return i


class SetCollator:
    """Picklable collate_fn: ``SetCollator(sets)(list_of_indices) -> Batch``."""

    def __init__(self, sets: EncodedSets, max_len: int | None = None) -> None:
        self.sets = sets
        self.max_len = max_len

    def __call__(self, indices: Sequence[int]) -> Batch:
        return collate(self.sets, np.asarray(indices, dtype=np.int64), self.max_len)
