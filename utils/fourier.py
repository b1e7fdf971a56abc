"""The discrete Fourier basis on Z_p, 1-D and 2-D transforms, and the model's key frequencies.

Conventions used across the course (p odd):
- `fourier_basis(p)` is a [p, p] matrix whose *rows* are orthonormal: row 0 the constant, then for k = 1 … (p-1)/2
  the pair cos(2πkx/p), sin(2πkx/p), rows 2k-1 and 2k. So `B @ B.T == I` and `B.T @ coeffs` inverts a transform.
- `fft1d(x)` transforms the *first* dimension of x (the token/input dimension): [p, ...] → [p, ...].
- `fft2d(x)` transforms the first two dimensions (the inputs a and b): [p, p, ...] → [p, p, ...].
- Frequency k ∈ {1, …, (p-1)/2}; its "norm" combines its cos and sin components.
"""
from __future__ import annotations

import math

import einops
import torch

from utils.data import check_p
from utils.model import HookedTransformer

__all__ = ["fourier_basis", "basis_labels", "fft1d", "fft2d", "frequency_norms", "embedding_frequency_norms",
           "key_frequencies", "n_frequencies", "cos_sin_rows", "significant_frequencies"]


def n_frequencies(p: int) -> int:
    """How many non-constant frequencies Z_p has: (p-1)//2."""
    return (p - 1) // 2


def basis_labels(p: int) -> list[str]:
    """Names of the basis rows: "const", "cos 1", "sin 1", "cos 2", …"""
    return ["const"] + [f"{kind} {k}" for k in range(1, n_frequencies(p) + 1) for kind in ("cos", "sin")]


def fourier_basis(p: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal Fourier basis of functions on Z_p, one basis vector per row: [p (component), p (input x)]."""
    check_p(p)
    if p % 2 == 0:
        raise ValueError(f"the course's Fourier basis needs an odd modulus (a prime), got p={p}")
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, n_frequencies(p) + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    return (basis / basis.norm(dim=1, keepdim=True)).to(dtype)


def cos_sin_rows(k: int) -> tuple[int, int]:
    """The rows of `fourier_basis` holding cos(2πk·/p) and sin(2πk·/p)."""
    return 2 * k - 1, 2 * k


def fft1d(x: torch.Tensor) -> torch.Tensor:
    """Fourier coefficients along the first dimension: [p, ...] → [p (component), ...]."""
    basis = fourier_basis(x.shape[0], x.dtype).to(x.device)
    return einops.einsum(basis, x, "f x, x ... -> f ...")


def fft2d(x: torch.Tensor) -> torch.Tensor:
    """Fourier coefficients along the first two dimensions (a, b): [p, p, ...] → [p (for a), p (for b), ...]."""
    if x.shape[0] != x.shape[1]:
        raise ValueError(f"fft2d needs a [p, p, ...] tensor (inputs a and b first), got shape {tuple(x.shape)}")
    basis = fourier_basis(x.shape[0], x.dtype).to(x.device)
    over_a = einops.einsum(basis, x, "f a, a b ... -> f b ...")  # one axis at a time: a 3-operand einsum would
    return einops.einsum(basis, over_a, "g b, f b ... -> f g ...")  # build a [p, p, p, p] outer product first


def frequency_norms(coeffs: torch.Tensor) -> torch.Tensor:
    """Squared norm per frequency k = 1 … (p-1)/2 of 1-D Fourier coefficients [p, ...] (cos² + sin², summed)."""
    squared = coeffs.pow(2).reshape(coeffs.shape[0], -1).sum(-1)  # [p]
    return squared[1::2] + squared[2::2]  # [(p-1)/2]


def embedding_frequency_norms(model: HookedTransformer) -> torch.Tensor:
    """Share of the token embedding's squared norm (without "=" and the constant) at each frequency: [(p-1)/2]."""
    p = model.cfg.d_vocab_out
    norms = frequency_norms(fft1d(model.W_E[:p].detach().double()))
    return norms / norms.sum()


def significant_frequencies(norms: torch.Tensor, rel_threshold: float = 0.1) -> list[int]:
    """Frequencies k (1-based) whose norms[k-1] is at least rel_threshold × the largest; sorted by norm, largest first."""
    if not 0 < rel_threshold < 1:
        raise ValueError(f"rel_threshold must be in (0, 1), got {rel_threshold}")
    order = norms.argsort(descending=True)
    return [int(i) + 1 for i in order if norms[i] >= rel_threshold * norms.max()]


def key_frequencies(model: HookedTransformer, rel_threshold: float = 0.1) -> list[int]:
    """Frequencies the embedding uses: squared norm at least `rel_threshold` × the largest one's. Sorted by norm.

    A trained model's embedding is sparse in the Fourier basis: a handful of frequencies stand far above a
    floor of near-zero ones, so any threshold between the floor and the smallest key frequency gives the same set.
    """
    return significant_frequencies(embedding_frequency_norms(model), rel_threshold)
