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

from typing import TYPE_CHECKING

import einops
import torch

from utils.data import check_p

if TYPE_CHECKING:  # pure maths: a model is only read (its weights), never built here
    from utils.model import HookedTransformer

__all__ = ["fourier_basis", "basis_labels", "fft1d", "fft2d", "frequency_norms", "embedding_frequency_norms",
           "output_frequency_norms", "largest_gap", "key_frequencies", "echo_frequencies", "fold", "n_frequencies",
           "cos_sin_rows", "significant_frequencies", "check_frequencies"]


def n_frequencies(p: int) -> int:
    """How many non-constant frequencies Z_p has: (p-1)//2."""
    return (p - 1) // 2


def basis_labels(p: int) -> list[str]:
    """Names of the basis rows: "const", "cos 1", "sin 1", "cos 2", …"""
    return ["const"] + [f"{kind} {k}" for k in range(1, n_frequencies(p) + 1) for kind in ("cos", "sin")]


def fourier_basis(p: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthonormal Fourier basis of functions on Z_p, one basis vector per row: [p (component), p (input x)].

    float64 by default: the course analyses in float64 end to end (a float32 weight is `.double()`d first).
    """
    check_p(p)
    if p % 2 == 0:
        raise ValueError(f"the course's Fourier basis needs an odd modulus (a prime), got p={p}")
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, n_frequencies(p) + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    return (basis / basis.norm(dim=1, keepdim=True)).to(dtype)


def check_frequencies(p: int, freqs: object) -> list[int]:
    """freqs as a list of distinct Python ints in 1 … (p-1)/2, or a ValueError saying what is wrong.

    Integer-valued tensors and numpy integers are fine; 1.7, "12" or True are refused rather than coerced.
    """
    values = freqs.tolist() if isinstance(freqs, torch.Tensor) else freqs
    if isinstance(values, (int, str)) or not hasattr(values, "__iter__"):
        raise ValueError(f"frequencies must be a list of integers, got {freqs!r:.80}")
    out = []
    for k in values:
        if isinstance(k, bool) or not (isinstance(k, int) or (hasattr(k, "dtype") and "int" in str(k.dtype))):
            raise ValueError(f"frequencies must be integers in 1 … {n_frequencies(p)}; got {k!r} in {freqs!r:.80}")
        out.append(int(k))
    if len(set(out)) != len(out) or not all(1 <= k <= n_frequencies(p) for k in out):
        raise ValueError(f"frequencies must be distinct integers in 1 … {n_frequencies(p)} for p = {p}; got {out}")
    return out


def cos_sin_rows(k: int) -> tuple[int, int]:
    """The rows of `fourier_basis` holding cos(2πk·/p) and sin(2πk·/p)."""
    return 2 * k - 1, 2 * k


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """x unchanged if it is floating point; integers and booleans as float64 (a basis cast to int would be 0)."""
    return x if x.is_floating_point() else x.double()


def fft1d(x: torch.Tensor) -> torch.Tensor:
    """Fourier coefficients along the first dimension: [p, ...] → [p (component), ...] (integers become float64)."""
    x = _as_float(torch.as_tensor(x))
    basis = fourier_basis(x.shape[0], x.dtype).to(x.device)
    return einops.einsum(basis, x, "f x, x ... -> f ...")


def fft2d(x: torch.Tensor) -> torch.Tensor:
    """Fourier coefficients along the first two dimensions (a, b): [p, p, ...] → [p (for a), p (for b), ...]."""
    x = _as_float(torch.as_tensor(x))
    if x.ndim < 2 or x.shape[0] != x.shape[1]:
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
    norms = frequency_norms(fft1d(model.W_E[:p].detach().double().cpu()))
    return norms / norms.sum()


def output_frequency_norms(model: HookedTransformer) -> torch.Tensor:
    """Share of W_L = W_out W_U's squared norm at each output frequency k = 1 … (p-1)/2 (constant left out).

    W_L maps the neurons to the logits, so these are the frequencies of the answer c the circuit writes to.
    """
    W_L = (model.W_out[0] @ model.W_U).detach().double().cpu()  # [d_mlp, p]
    norms = frequency_norms(fft1d(W_L.T))  # the answer axis first: [p, d_mlp] → [(p-1)/2]
    return norms / norms.sum()


def significant_frequencies(norms: torch.Tensor, rel_threshold: float = 0.1) -> list[int]:
    """Frequencies k (1-based) whose norms[k-1] is at least rel_threshold × the largest; sorted by norm, largest first."""
    if not 0 < rel_threshold < 1:
        raise ValueError(f"rel_threshold must be in (0, 1), got {rel_threshold}")
    order = norms.argsort(descending=True)
    return [int(i) + 1 for i in order if norms[i] >= rel_threshold * norms.max()]


def largest_gap(shares: torch.Tensor) -> list[int]:
    """Frequencies k (1-based) above the largest drop in the sorted shares, largest share first.

    Sort the shares in decreasing order s_1 ≥ s_2 ≥ …; the drop after position j is the ratio s_j / s_{j+1};
    keep the first j for the largest drop, looking only at the top half (a handful of frequencies is what the
    rule is for; among the tail's near-zero shares a ratio means nothing).
    """
    shares = torch.as_tensor(shares, dtype=torch.float64)
    if shares.ndim != 1 or len(shares) < 2 or not torch.isfinite(shares).all() or (shares < 0).any():
        raise ValueError("largest_gap needs a 1-D tensor of at least two finite, non-negative shares; got "
                         f"shape {tuple(shares.shape)}")
    order = shares.argsort(descending=True, stable=True)
    s = shares[order].clamp_min(torch.finfo(torch.float64).tiny)
    top = max(1, len(s) // 2)
    cut = int((s[:top] / s[1:top + 1]).argmax()) + 1
    return [int(i) + 1 for i in order[:cut]]


def key_frequencies(model: HookedTransformer) -> list[int]:
    """The frequencies the circuit uses: W_L's output frequencies above the largest gap, largest share first.

    Why W_L and not the embedding: the embedding also carries *echoes*, frequencies with real norm that no neuron
    and no output direction uses (often twice a key frequency; see `echo_frequencies`). Why the largest gap and
    not a fixed fraction of the largest share: a fixed cut lands between two tiers by luck (on the course's model
    a 20% cut and a 7% cut of the embedding disagree), while a grokked model's W_L has a handful of frequencies
    far above a near-zero floor, and the largest ratio between consecutive sorted shares finds that edge.
    Chapters 2 and 4 confirm the set by ablation (`utils.claims`).
    """
    broken = [name for name, w in model.named_parameters() if not torch.isfinite(w).all()]
    if broken:
        raise ValueError(f"key_frequencies: the model's {', '.join(broken)} hold NaN or infinite values, so its "
                         "frequencies mean nothing; reload or retrain the model (a diverged run?)")
    return largest_gap(output_frequency_norms(model))


def fold(k: int, p: int) -> int:
    """The frequency in 1 … (p-1)/2 that k (any integer) equals on Z_p: cos(2πkx/p) is the same wave for k, -k, k+p."""
    k %= p
    return min(k, p - k)


def echo_frequencies(model: HookedTransformer, keys: list[int] | None = None) -> dict[int, str]:
    """The embedding's other large frequencies: not key, but above an even share of the embedding (1 / (p-1)/2).

    Returns {frequency: what it is}, largest share first; "what it is" names a relation to the key frequencies when
    there is one ("2·21", "14+35", "41−35" on Z_p), else "no relation to the key frequencies".
    """
    p = model.cfg.d_vocab_out
    keys = key_frequencies(model) if keys is None else [int(k) for k in keys]
    shares = embedding_frequency_norms(model)
    relations: dict[int, str] = {}
    for i, k1 in enumerate(keys):
        relations.setdefault(fold(2 * k1, p), f"2·{k1}")
        for k2 in keys[i + 1:]:
            relations.setdefault(fold(k1 + k2, p), f"{k1}+{k2}")
            relations.setdefault(fold(k1 - k2, p), f"{max(k1, k2)}−{min(k1, k2)}")
    order = shares.argsort(descending=True)
    even = 1 / n_frequencies(p)
    return {int(i) + 1: relations.get(int(i) + 1, "no relation to the key frequencies")
            for i in order if shares[i] > even and int(i) + 1 not in keys}
