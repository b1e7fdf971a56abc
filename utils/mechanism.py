"""The mechanism read off the weights: attention at "=", neurons by frequency, W_L = W_out·W_U, and the logits
as a sum of cosines.

Conventions (see utils.fourier): w_k = 2πk/p; inputs in the dataset's order, laid out as a [p, p] grid over (a, b);
2-D Fourier coefficients [p (component of a), p (component of b), ...] with rows const, cos 1, sin 1, cos 2, …

The algorithm the chapters find: the model computes cos(w_k a), sin(w_k a), cos(w_k b), sin(w_k b) for a few key
frequencies k, multiplies them in the MLP into cos(w_k(a+b)) and sin(w_k(a+b)), and the unembedding reads off
logits(c) ≈ Σ_k α_k cos(w_k(a+b-c)), which all peak together at c = (a + b) mod p.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import einops
import torch

from utils.data import make_dataset
from utils.fourier import check_frequencies, fft2d, fourier_basis, frequency_norms, n_frequencies
from utils.model import PATTERN_HOOK, HookedTransformer

__all__ = ["NEURON_HOOK", "PRE_HOOK", "Z_HOOK", "ATTN_OUT_HOOK", "attention_weights", "head_outputs",
           "attention_output", "additive_fit", "additive_share", "logits_with_additive_attention", "model_logits",
           "neuron_activations", "neuron_frequency_fractions", "neuron_frequencies", "neuron_clusters", "W_L",
           "W_L_fourier", "significant_rank", "top_singular_share", "cluster_output_norms", "logit_grid", "SIGNS",
           "cosine_waves", "fit_waves", "fit_cosine_logits", "variance_explained", "logit_variance_explained",
           "neuron_features", "neuron_fit_r2", "fourier_multiplication"]

NEURON_HOOK = "blocks.0.mlp.hook_post"  # MLP activations after the ReLU: [batch, pos, d_mlp]
PRE_HOOK = "blocks.0.mlp.hook_pre"  # the neurons' inputs, before the ReLU: [batch, pos, d_mlp]
Z_HOOK = "blocks.0.attn.hook_z"  # each head's weighted average of values: [batch, pos, head, d_head]
ATTN_OUT_HOOK = "blocks.0.hook_attn_out"  # the attention layer's output: [batch, pos, d_model]


def _p(model: HookedTransformer) -> int:
    """The modulus: the number of answers."""
    return model.cfg.d_vocab_out


def _freq_list(p: int, freqs: Sequence[int]) -> list[int]:
    """freqs as distinct ints in 1 … (p-1)/2 (at least one), or a ValueError."""
    freqs = check_frequencies(p, freqs)
    if not freqs:
        raise ValueError(f"at least one frequency is needed (integers in 1 … {n_frequencies(p)} for p = {p})")
    return freqs


def _cached(model: HookedTransformer, hook: str) -> torch.Tensor:
    """One cached activation for every input (a, b, =), rows a·p + b: [p², ...] (on the CPU)."""
    tokens, _ = make_dataset(_p(model))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=hook)
    return cache[hook].cpu()


# --- attention at the "=" position -------------------------------------------------------------------
def attention_weights(model: HookedTransformer) -> torch.Tensor:
    """Each head's attention from "=" to the keys a, b, "=", for every input: [head, p (a), p (b), 3] (float64)."""
    pattern = _cached(model, PATTERN_HOOK)[:, :, -1].double()  # [p², head, key]: the "=" query's row
    return einops.rearrange(pattern, "(a b) head key -> head a b key", a=_p(model))


def head_outputs(model: HookedTransformer) -> torch.Tensor:
    """What each head adds to the residual stream at "=", for every input: [head, p (a), p (b), d_model] (float64).

    Their sum over the heads is the attention layer's output (its bias b_O is frozen at zero).
    """
    z = _cached(model, Z_HOOK)[:, -1].double()  # [p², head, d_head] at "="
    W_O = model.W_O[0].detach().double().cpu()  # [head, d_head, d_model]
    out = einops.einsum(z, W_O, "ab head h, head h d -> head ab d")
    return einops.rearrange(out, "head (a b) d -> head a b d", a=_p(model))


def attention_output(model: HookedTransformer) -> torch.Tensor:
    """The attention layer's output at "=" for every input: [p (a), p (b), d_model] (float64)."""
    out = _cached(model, ATTN_OUT_HOOK)[:, -1].double()  # [p², d_model]
    return einops.rearrange(out, "(a b) d -> a b d", a=_p(model))


def additive_fit(x: torch.Tensor) -> torch.Tensor:
    """The least-squares sum f(a) + g(b) for x [p (a), p (b), ...]: row means + column means - the grand mean.

    On the full grid of inputs this is the exact least-squares fit (the leftover has zero mean along every row
    and column, so it is orthogonal to every f(a) + g(b)); in the 2-D Fourier basis it keeps row 0 and column 0.
    """
    x = x.double()
    return x.mean(1, keepdim=True) + x.mean(0, keepdim=True) - x.mean((0, 1), keepdim=True)


def additive_share(x: torch.Tensor) -> float:
    """Share of x's variance over the (a, b) grid that the best f(a) + g(b) explains; x [p, p, ...], pooled over
    the trailing axes (each centred over the grid). A constant x is a sum: 1."""
    x = x.double()
    total = (x - x.mean((0, 1), keepdim=True)).pow(2).sum()
    residual = (x - additive_fit(x)).pow(2).sum()
    return 1.0 if total <= 1e-24 * x.pow(2).sum() else float(1 - residual / total)


def logits_with_additive_attention(model: HookedTransformer) -> torch.Tensor:
    """The logits at "=" [p², p] (float32) with the attention output there replaced by its best f(a) + g(b):
    everything in it that is not a sum (the products) removed, and nothing else changed."""
    p = _p(model)
    fit = einops.rearrange(additive_fit(attention_output(model)), "a b d -> (a b) d")

    def replace(attn_out: torch.Tensor, hook) -> torch.Tensor:  # [p², pos, d_model]
        attn_out = attn_out.clone()
        attn_out[:, -1] = fit.to(attn_out)
        return attn_out

    tokens, _ = make_dataset(p)
    with torch.no_grad():
        logits = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=[(ATTN_OUT_HOOK, replace)])
    return logits[:, -1].cpu()


# --- neurons ------------------------------------------------------------------------------------------
def neuron_activations(model: HookedTransformer, before_relu: bool = False) -> torch.Tensor:
    """MLP activations at the last position for every input (a, b, =): [p (a), p (b), d_mlp]; after the ReLU,
    or before it (the neurons' inputs) if before_relu."""
    acts = _cached(model, PRE_HOOK if before_relu else NEURON_HOOK)[:, -1]
    return einops.rearrange(acts, "(a b) n -> a b n", a=_p(model))


def neuron_frequency_fractions(acts: torch.Tensor) -> torch.Tensor:
    """Share of each neuron's variance in the terms of each frequency k: [p, p, n] → [(p-1)/2, n] (float64).

    The terms of frequency k are the 2-D Fourier components {const, cos k, sin k} × {const, cos k, sin k} except
    const × const (the mean, removed): cos/sin(w_k a) alone, cos/sin(w_k b) alone, and their four products.
    A neuron with no variance gets 0 everywhere.
    """
    coeffs = fft2d(acts.double().cpu())  # [p, p, n]
    power = coeffs.pow(2)
    squared_norm = power.sum((0, 1))  # [n]
    power[0, 0] = 0  # the mean
    total = power.sum((0, 1))  # [n]: the variance × p²
    total = torch.where(total > 1e-12 * squared_norm, total, 0.0)  # a constant neuron: only rounding errors
    lin_a = power[1:, 0].reshape(-1, 2, power.shape[-1]).sum(1)  # [(p-1)/2, n]: cos/sin(w_k a) alone
    lin_b = power[0, 1:].reshape(-1, 2, power.shape[-1]).sum(1)  # [(p-1)/2, n]: cos/sin(w_k b) alone
    blocks = einops.reduce(power[1:, 1:], "(k i) (l j) n -> k l n", "sum", i=2, j=2)  # [(p-1)/2, (p-1)/2, n]
    quad = torch.diagonal(blocks, dim1=0, dim2=1).T  # [(p-1)/2, n]: the four products cos/sin(w_k a)·cos/sin(w_k b)
    return (lin_a + lin_b + quad) / total.clamp_min(1e-30) * (total > 0)


def neuron_frequencies(model: HookedTransformer) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neuron's dominant frequency k ≥ 1 [d_mlp] (long) and the share of its variance that k explains [d_mlp]."""
    fractions = neuron_frequency_fractions(neuron_activations(model))  # [(p-1)/2, d_mlp]
    best, index = fractions.max(0)
    return index + 1, best


def neuron_clusters(model: HookedTransformer, threshold: float = 0.85) -> dict[int, torch.Tensor]:
    """Frequency k → indices of the neurons whose variance k explains at least `threshold` of (largest first)."""
    freqs, fractions = neuron_frequencies(model)
    clustered = fractions >= threshold
    sizes = {int(k): int(((freqs == k) & clustered).sum()) for k in freqs[clustered].unique()}
    return {k: torch.nonzero((freqs == k) & clustered).flatten() for k in sorted(sizes, key=sizes.get, reverse=True)}


# --- W_L = W_out · W_U -------------------------------------------------------------------------------------
def W_L(model: HookedTransformer) -> torch.Tensor:
    """The neuron-to-logit map W_out @ W_U: [d_mlp, p] (float64)."""
    return (model.W_out[0] @ model.W_U).detach().double().cpu()


def W_L_fourier(model: HookedTransformer) -> torch.Tensor:
    """W_L with its output axis in the Fourier basis: [d_mlp, p (component: const, cos 1, sin 1, …)]."""
    W = W_L(model)
    return W @ fourier_basis(W.shape[1], torch.float64).T




def significant_rank(matrix: torch.Tensor, rel_threshold: float = 0.1) -> int:
    """How many singular values are at least rel_threshold × the largest one."""
    singular = torch.linalg.svdvals(matrix.double())
    return int((singular >= rel_threshold * singular[0]).sum())


def top_singular_share(matrix: torch.Tensor, k: int) -> float:
    """Share of the matrix's squared norm in its k largest singular values (1: it is exactly rank ≤ k)."""
    squared = torch.linalg.svdvals(matrix.double()).pow(2)
    return (squared[:k].sum() / squared.sum()).item()


def cluster_output_norms(model: HookedTransformer, clusters: dict[int, torch.Tensor]) -> torch.Tensor:
    """Share of each cluster's W_L squared norm at each output frequency: [len(clusters), (p-1)/2] (constant excluded)."""
    fourier = W_L_fourier(model)  # [d_mlp, p]
    rows = [frequency_norms(fourier[neurons].T) for neurons in clusters.values()]  # each [(p-1)/2]
    return torch.stack([r / r.sum() for r in rows])


# --- the logits as a sum of cosines ----------------------------------------------------------------------------
def model_logits(model: HookedTransformer) -> torch.Tensor:
    """The model's logits at the last position for every input (a, b, =), row a·p + b: [p², p] (float32)."""
    tokens, _ = make_dataset(_p(model))
    with torch.no_grad():
        return model(tokens.to(model.cfg.device))[:, -1].cpu()


def logit_grid(model: HookedTransformer) -> torch.Tensor:
    """Logits at the last position for every input: [p (a), p (b), p (c)] (float64)."""
    return einops.rearrange(model_logits(model).double(), "(a b) c -> a b c", a=_p(model))


SIGNS = {"add": 1.0, "subtract": -1.0}  # a ∘ b = a + sign·b: the operations the Fourier algorithm covers


def _sign(op: str) -> float:
    if op not in SIGNS:
        raise ValueError(f"op must be one of {sorted(SIGNS)}, got {op!r}")
    return SIGNS[op]


def cosine_waves(p: int, freqs: Sequence[int], op: str = "add") -> torch.Tensor:
    """cos(w_k(a ± b - c)) (+ for op "add", - for "subtract") for each k in freqs: [K, p (a), p (b), p (c)] (float64).

    Each wave peaks at the right answer c = (a ± b) mod p for every (a, b).
    """
    w = 2 * math.pi * torch.tensor(_freq_list(p, freqs), dtype=torch.float64) / p  # [K]
    x = torch.arange(p, dtype=torch.float64)
    phase = x[:, None, None] + _sign(op) * x[None, :, None] - x[None, None, :]  # [a, b, c]: a ± b - c
    return torch.cos(w[:, None, None, None] * phase)


def fit_waves(logits: torch.Tensor, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares α_k with logits [p, p, p] ≈ Σ_k α_k waves[k] (+ a per-input offset): ([K], fit [p, p, p]).

    The logits are centred over the answers c first (softmax ignores a shared offset); waves that sum to 0 over c,
    like cosine_waves, need no offset term.
    """
    centred = logits.double() - logits.double().mean(-1, keepdim=True)
    X = einops.rearrange(waves.double(), "k a b c -> (a b c) k")
    coeffs = torch.linalg.lstsq(X, centred.flatten()[:, None]).solution.flatten()  # [K]
    return coeffs, einops.einsum(coeffs, waves.double(), "k, k a b c -> a b c")


def fit_cosine_logits(logits: torch.Tensor, freqs: Sequence[int],
                      op: str = "add") -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares α_k with logits ≈ Σ_k α_k cos(w_k(a ± b - c)) (+ a per-input offset): ([K], fit [p, p, p])."""
    return fit_waves(logits, cosine_waves(logits.shape[-1], freqs, op))


def variance_explained(logits: torch.Tensor, fit: torch.Tensor) -> float:
    """1 - |residual|² / |logits|², both centred over the answers c (the last axis): softmax ignores a shared offset."""
    centred = logits.double() - logits.double().mean(-1, keepdim=True)
    residual = centred - (fit.double() - fit.double().mean(-1, keepdim=True))
    return float(1 - residual.pow(2).sum() / centred.pow(2).sum())


def logit_variance_explained(model: HookedTransformer, freqs: Sequence[int], op: str = "add") -> float:
    """Share of the logits' variance (over all p² inputs and p answers) that Σ_k α_k cos(w_k(a ± b - c)) explains."""
    logits = logit_grid(model)
    return variance_explained(logits, fit_cosine_logits(logits, freqs, op)[1])


# --- neurons as products of waves ---------------------------------------------------------------------------------
def neuron_features(p: int, k: int, quadratic: bool = True) -> torch.Tensor:
    """Terms of frequency k over the (a, b) grid: 1, cos/sin(w_k a), cos/sin(w_k b) (+ their 4 products): [p, p, F]."""
    w = 2 * math.pi * k / p
    x = torch.arange(p, dtype=torch.float64)
    a_terms = [torch.cos(w * x)[:, None].expand(p, p), torch.sin(w * x)[:, None].expand(p, p)]  # vary with a
    b_terms = [torch.cos(w * x)[None, :].expand(p, p), torch.sin(w * x)[None, :].expand(p, p)]  # vary with b
    terms = [torch.ones(p, p, dtype=torch.float64), *a_terms, *b_terms]
    if quadratic:
        terms += [ta * tb for ta in a_terms for tb in b_terms]
    return torch.stack(terms, dim=-1)


def neuron_fit_r2(acts: torch.Tensor, freqs: int | torch.Tensor, quadratic: bool = True) -> torch.Tensor:
    """R² of a least-squares fit of each neuron [p, p, n] by its frequency's terms (neuron_features): [n] (float64).

    freqs: one frequency for every neuron, or one per neuron [n]. A neuron with no variance gets R² = 0.
    """
    p, n = acts.shape[0], acts.shape[-1]
    freqs = torch.as_tensor(freqs).expand(n)
    y = einops.rearrange(acts.double().cpu(), "a b n -> (a b) n")
    variance = (y - y.mean(0)).pow(2).sum(0)  # [n]
    variance = torch.where(variance > 1e-12 * y.pow(2).sum(0), variance, 0.0)  # a constant neuron: rounding only
    r2 = torch.zeros(n, dtype=torch.float64)
    for k in freqs.unique().tolist():
        cols = torch.nonzero(freqs == k).flatten()
        X = einops.rearrange(neuron_features(p, k, quadratic), "a b f -> (a b) f")
        residual = y[:, cols] - X @ torch.linalg.lstsq(X, y[:, cols]).solution
        r2[cols] = (1 - residual.pow(2).sum(0) / variance[cols].clamp_min(1e-30)) * (variance[cols] > 0)
    return r2


# --- the algorithm, re-implemented -------------------------------------------------------------------------------
def fourier_multiplication(a: torch.Tensor, b: torch.Tensor, p: int, freqs: Sequence[int],
                           coeffs: torch.Tensor, op: str = "add") -> torch.Tensor:
    """Logits [n, p] of the Fourier multiplication algorithm: Σ_k α_k cos(w_k(a ± b - c)), built via trig identities."""
    s = _sign(op)
    w = 2 * math.pi * torch.tensor(_freq_list(p, freqs), dtype=torch.float64) / p  # [K]
    wa, wb = w * a.double()[:, None], w * b.double()[:, None]  # [n, K]
    cos_ab = torch.cos(wa) * torch.cos(wb) - s * torch.sin(wa) * torch.sin(wb)  # cos(w(a ± b)) [n, K]
    sin_ab = torch.sin(wa) * torch.cos(wb) + s * torch.cos(wa) * torch.sin(wb)  # sin(w(a ± b)) [n, K]
    wc = w[:, None] * torch.arange(p, dtype=torch.float64)  # [K, c]
    alpha = torch.as_tensor(coeffs, dtype=torch.float64)
    return (cos_ab * alpha) @ torch.cos(wc) + (sin_ab * alpha) @ torch.sin(wc)  # cos(x - y) = cos x cos y + sin x sin y
