"""utils.fourier: the basis, the 1-D and 2-D transforms, and key frequencies recovered from planted embeddings."""
from __future__ import annotations

import math

import pytest
import torch

from utils import fourier
from utils.model import make_model, model_config


def wave(p: int, k: int, kind: str) -> torch.Tensor:
    """cos or sin(2πkx/p) over x = 0 … p-1 (float64)."""
    x = torch.arange(p, dtype=torch.float64)
    return (torch.cos if kind == "cos" else torch.sin)(2 * math.pi * k * x / p)


def planted_model(p: int, shares: dict[int, float], seed: int = 0, noise: float = 1e-3):
    """A small model whose embedding holds waves of the given frequencies with the given squared-norm shares."""
    model = make_model(model_config(p=p, d_model=16, n_heads=2, d_mlp=16, seed=seed))
    g = torch.Generator().manual_seed(seed)
    W = noise * torch.randn(p, 16, generator=g, dtype=torch.float64)
    for i, (k, share) in enumerate(shares.items()):
        # orthogonal directions (columns 2i and 2i+1), unit-norm waves: the squared norm at k is share
        W[:, 2 * i] += math.sqrt(share) * wave(p, k, "cos") / wave(p, k, "cos").norm()
        W[:, 2 * i + 1] += math.sqrt(share) * wave(p, k, "sin") / wave(p, k, "sin").norm()
    with torch.no_grad():
        model.embed.W_E[:p] = W.float() + 1.0  # a constant offset is not a frequency
        model.embed.W_E[p] = 10.0  # the "=" token is not a number: it must be ignored
    return model


@pytest.mark.parametrize("p", [3, 7, 113])
def test_fourier_basis_is_orthonormal(p):
    basis = fourier.fourier_basis(p, torch.float64)
    assert basis.shape == (p, p)
    torch.testing.assert_close(basis @ basis.T, torch.eye(p, dtype=torch.float64))


def test_fourier_basis_rows_are_constant_then_cos_sin_pairs_matching_the_labels():
    p = 11
    basis = fourier.fourier_basis(p, torch.float64)
    labels = fourier.basis_labels(p)
    assert labels[:3] == ["const", "cos 1", "sin 1"] and len(labels) == p
    torch.testing.assert_close(basis[0], torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64))
    for k in range(1, fourier.n_frequencies(p) + 1):
        cos_row, sin_row = fourier.cos_sin_rows(k)
        assert labels[cos_row] == f"cos {k}" and labels[sin_row] == f"sin {k}"
        torch.testing.assert_close(basis[cos_row], wave(p, k, "cos") / wave(p, k, "cos").norm())
        torch.testing.assert_close(basis[sin_row], wave(p, k, "sin") / wave(p, k, "sin").norm())


def test_fourier_basis_refuses_an_even_modulus():
    with pytest.raises(ValueError, match="odd"):
        fourier.fourier_basis(10)


def test_fft1d_puts_a_pure_wave_in_its_row_and_inverts_with_the_transpose():
    p = 13
    coeffs = fourier.fft1d(3 * wave(p, 4, "sin"))
    assert coeffs.abs().argmax().item() == fourier.cos_sin_rows(4)[1]
    torch.testing.assert_close(coeffs.pow(2).sum(), (3 * wave(p, 4, "sin")).pow(2).sum())  # Parseval
    x = torch.randn(p, 5, dtype=torch.float64)
    torch.testing.assert_close(fourier.fourier_basis(p, torch.float64).T @ fourier.fft1d(x), x)


def test_fft2d_finds_a_product_of_waves_at_its_pair_of_rows_and_keeps_extra_axes():
    p = 17
    grid = wave(p, 2, "cos")[:, None] * wave(p, 5, "sin")[None, :]  # [a, b]
    coeffs = fourier.fft2d(torch.stack([grid, 2 * grid], -1))  # [p, p, 2]
    assert coeffs.shape == (p, p, 2)
    row, col = fourier.cos_sin_rows(2)[0], fourier.cos_sin_rows(5)[1]
    energy = coeffs.pow(2)
    torch.testing.assert_close(energy[row, col], energy.sum((0, 1)))  # all the energy sits at (cos 2, sin 5)


def test_fft2d_agrees_with_two_fft1d_passes():
    x = torch.randn(7, 7, 3, dtype=torch.float64)
    two_passes = fourier.fft1d(fourier.fft1d(x).transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(fourier.fft2d(x), two_passes)


def test_frequency_norms_add_cos_and_sin_and_skip_the_constant():
    p = 7
    coeffs = torch.zeros(p, 2, dtype=torch.float64)
    coeffs[0] = 100.0  # the constant: ignored
    coeffs[fourier.cos_sin_rows(2)[0]] = torch.tensor([1.0, 2.0])
    coeffs[fourier.cos_sin_rows(2)[1]] = torch.tensor([2.0, 0.0])
    torch.testing.assert_close(fourier.frequency_norms(coeffs), torch.tensor([0.0, 9.0, 0.0], dtype=torch.float64))


def test_embedding_frequency_norms_recover_planted_shares_ignoring_equals_and_constant():
    p = 23
    model = planted_model(p, {3: 0.6, 8: 0.3, 11: 0.1})
    shares = fourier.embedding_frequency_norms(model)
    assert shares.shape == (fourier.n_frequencies(p),)
    torch.testing.assert_close(shares[[2, 7, 10]], torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), atol=2e-3,
                               rtol=0)


def test_key_frequencies_recover_the_planted_set_sorted_by_norm():
    model = planted_model(113, {14: 0.25, 35: 0.3, 41: 0.2, 52: 0.15, 42: 0.1})
    assert fourier.key_frequencies(model) == [35, 14, 41, 52, 42]


def test_key_frequencies_drop_a_frequency_below_the_relative_threshold():
    model = planted_model(31, {5: 0.9, 12: 0.06, 2: 0.04})  # 0.06 ≥ 0.1 × 0.9 fails
    assert fourier.key_frequencies(model) == [5]
    assert fourier.key_frequencies(model, rel_threshold=0.05) == [5, 12]


def test_significant_frequencies_refuses_a_threshold_outside_0_1():
    with pytest.raises(ValueError, match="rel_threshold"):
        fourier.significant_frequencies(torch.ones(3), rel_threshold=1.5)
