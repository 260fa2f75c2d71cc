"""Attention blocks: masking never lets padding reach real positions, empty sets stay finite, symmetry."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recipeset.models.attention import ISAB, MAB, PMA, SAB

torch.set_num_threads(1)
D, H = 8, 2


def _blocks():
    torch.manual_seed(0)
    return {"sab": SAB(D, H).eval(), "isab": ISAB(D, H, n_inducing=3).eval(), "pma": PMA(D, H, n_seeds=2).eval()}


BLOCKS = _blocks()


def _set_batch(lengths, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), T, D, generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return x, mask


def test_padding_values_never_change_real_outputs():
    x, mask = _set_batch([3, 1, 4], T=6)
    garbage = x.clone()
    garbage[~mask] = 1e3 * torch.randn(int((~mask).sum()), D)  # huge values in padded slots
    for name, block in BLOCKS.items():
        a, b = block(x, mask), block(garbage, mask)
        if name == "pma":
            torch.testing.assert_close(a, b)
        else:
            torch.testing.assert_close(a[mask], b[mask])


def test_extra_padding_columns_change_nothing():
    x, mask = _set_batch([3, 2], T=3)
    x_wide = torch.cat([x, torch.randn(2, 4, D)], 1)
    mask_wide = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    for name, block in BLOCKS.items():
        a, b = block(x, mask), block(x_wide, mask_wide)
        if name == "pma":
            torch.testing.assert_close(a, b)
        else:
            torch.testing.assert_close(a[mask], b[:, :3][mask])


def test_empty_sets_are_finite():
    for T in (0, 3):  # no columns at all, and columns that are all padding
        x = torch.randn(2, T, D)
        mask = torch.zeros(2, T, dtype=torch.bool)
        for block in BLOCKS.values():
            out = block(x, mask)
            assert torch.isfinite(out).all()


def test_empty_set_gradients_are_finite():
    torch.manual_seed(0)
    pma = PMA(D, H, n_seeds=1)
    x = torch.randn(1, 2, D, requires_grad=True)
    out = pma(x, torch.zeros(1, 2, dtype=torch.bool))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in pma.parameters() if p.grad is not None)
    assert torch.count_nonzero(x.grad) == 0  # a padded element receives no gradient


def test_mab_key_mask_matches_dropping_the_keys():
    torch.manual_seed(0)
    mab = MAB(D, H).eval()
    q, y = torch.randn(1, 2, D), torch.randn(1, 5, D)
    keep = torch.tensor([[True, False, True, True, False]])
    torch.testing.assert_close(mab(q, y, key_mask=keep), mab(q, y[:, keep[0]]))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), data=st.data())
def test_sab_isab_equivariant_pma_invariant(n, data):
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    x, mask = _set_batch([n], T=n, seed=n)
    for name, block in BLOCKS.items():
        a, b = block(x, mask), block(x[:, perm], mask)
        if name == "pma":
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(a[:, perm], b, atol=1e-5, rtol=1e-5)


def test_pma_seed_shift_conditions_output():
    pma = BLOCKS["pma"]
    x, mask = _set_batch([2], T=2)
    assert not torch.allclose(pma(x, mask), pma(x, mask, seed_shift=torch.ones(1, D)))
