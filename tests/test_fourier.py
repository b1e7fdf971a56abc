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


def planted_circuit(p: int, out_shares: dict[int, float], embed_shares: dict[int, float], seed: int = 0):
    """planted_model's embedding, and W_L = W_out W_U (W_out = I) writing the given shares to the answer c."""
    model = planted_model(p, embed_shares, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    W_U = 1e-3 * torch.randn(16, p, generator=g, dtype=torch.float64)
    for i, (k, share) in enumerate(out_shares.items()):
        W_U[2 * i] += math.sqrt(share) * wave(p, k, "cos") / wave(p, k, "cos").norm()
        W_U[2 * i + 1] += math.sqrt(share) * wave(p, k, "sin") / wave(p, k, "sin").norm()
    with torch.no_grad():
        model.blocks[0].mlp.W_out.copy_(torch.eye(16))
        model.unembed.W_U.copy_(W_U.float())
    return model


def test_key_frequencies_are_the_output_frequencies_not_the_embeddings_echoes():
    keys = {14: 0.25, 35: 0.3, 41: 0.2, 52: 0.25}
    model = planted_circuit(113, keys, {**keys, 28: 0.06})  # 28 = 2·14: in the embedding only
    assert fourier.key_frequencies(model) == [35, 14, 52, 41]
    assert fourier.echo_frequencies(model) == {28: "2·14"}


def test_key_frequencies_keep_a_small_but_clear_tier_that_a_fixed_cut_would_drop():
    model = planted_circuit(31, {5: 0.85, 12: 0.1, 2: 0.05}, {5: 0.85, 12: 0.1, 2: 0.05})
    assert fourier.significant_frequencies(fourier.output_frequency_norms(model), 0.1) == [5, 12]  # drops 2
    assert fourier.key_frequencies(model) == [5, 12, 2]  # all three stand far above the noise floor


@pytest.mark.parametrize("shares, expected", [
    ([0.30, 0.25, 0.20, 0.01, 0.005, 0.004, 0.003, 0.002], [1, 2, 3]),
    ([0.002, 0.9, 0.003, 0.001, 0.002, 0.001], [2]),
    ([0.5, 0.5, 0.0, 0.0, 0.0, 0.0], [1, 2]),  # exact zeros: no division by zero
])
def test_largest_gap_cuts_at_the_largest_ratio_between_sorted_shares(shares, expected):
    assert fourier.largest_gap(torch.tensor(shares)) == expected


@pytest.mark.parametrize("bad", [torch.ones(1), torch.ones(2, 2), torch.tensor([1.0, float("nan")]),
                                 torch.tensor([1.0, -0.5])])
def test_largest_gap_refuses_what_is_not_a_list_of_shares(bad):
    with pytest.raises(ValueError, match="largest_gap"):
        fourier.largest_gap(bad)


@pytest.mark.parametrize("k, p, folded", [(2, 7, 2), (5, 7, 2), (7, 7, 0), (-3, 7, 3), (100, 113, 13)])
def test_fold_maps_any_integer_to_the_same_wave_on_z_p(k, p, folded):
    assert fourier.fold(k, p) == folded


def test_transforms_of_integer_tensors_are_those_of_their_float_values():
    x = torch.arange(5 * 5).reshape(5, 5)
    torch.testing.assert_close(fourier.fft1d(x), fourier.fft1d(x.double()))
    torch.testing.assert_close(fourier.fft2d(x), fourier.fft2d(x.double()))
    assert fourier.fft1d(x).abs().sum() > 0


def test_fourier_basis_is_float64_by_default():
    assert fourier.fourier_basis(7).dtype == torch.float64


def test_significant_frequencies_refuses_a_threshold_outside_0_1():
    with pytest.raises(ValueError, match="rel_threshold"):
        fourier.significant_frequencies(torch.ones(3), rel_threshold=1.5)


def test_key_frequencies_refuses_a_model_with_a_nan_weight_and_names_it():
    model = make_model(model_config(p=23, d_model=16, n_heads=2, d_mlp=16))
    with torch.no_grad():
        model.embed.W_E[3, 0] = float("nan")
    with pytest.raises(ValueError, match="embed.W_E hold NaN"):
        fourier.key_frequencies(model)
