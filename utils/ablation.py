"""Ablations: take a piece out of the model (or keep only that piece) and see what happens to the loss.

Two kinds of piece:
- **Directions of the logits.** For each output c the logits over the p × p grid of inputs are one vector in
  R^{p²}; the algorithm says it lives in the span of cos(w_k(a+b)) and sin(w_k(a+b)) for the key frequencies k
  (w_k = 2πk/p). `remove_frequencies` projects those directions out, `keep_frequencies` keeps only them (and the
  constant). These directions average to zero over the inputs, so zero- and mean-ablating them coincide.
- **Neurons.** Hooks on `blocks.0.mlp.hook_post` replace neuron activations at the last position: by zero, by
  their mean over all inputs (`ablate_neurons`), or by their projection onto their own frequency
  (`project_neurons`).

Every function here works on all p² inputs (a, b, =) in the dataset's order (row a·p + b), so that a per-input
quantity can be laid out as a p × p grid. Losses are `utils.metrics.cross_entropy` (float64).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import einops
import torch

from utils.data import make_dataset
from utils.fourier import check_frequencies, cos_sin_rows, fourier_basis
from utils.mechanism import NEURON_HOOK, model_logits, neuron_activations
from utils.model import HookedTransformer
from utils.metrics import accuracy, cross_entropy

__all__ = ["ABLATIONS", "sum_directions", "frequency_component",
           "remove_frequencies", "keep_frequencies", "remove_embedding_frequencies", "logit_loss", "logit_accuracy",
           "project_onto_frequency",
           "run_with_neurons", "ablate_neurons", "project_neurons", "per_frequency_loss"]

ABLATIONS = ("zero", "mean")


# --- checks on the arguments ---------------------------------------------------------------------
def _check_freqs(p: int, freqs: Iterable[int]) -> list[int]:
    """The frequencies as a list of ints, each in 1 … (p-1)/2 and none twice; a ValueError otherwise."""
    return check_frequencies(p, freqs)


def sum_directions(p: int, freqs: Sequence[int], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthonormal rows cos(w_k(a+b)), sin(w_k(a+b)) for each k in freqs, over the inputs a·p + b: [2·len(freqs), p²]."""
    freqs = _check_freqs(p, freqs)
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)  # [p²]
    b = torch.arange(p, dtype=torch.float64).repeat(p)  # [p²]
    rows = []
    for k in freqs:
        angle = 2 * math.pi * k * (a + b) / p
        rows += [torch.cos(angle), torch.sin(angle)]
    if not rows:
        return torch.zeros(0, p * p, dtype=dtype)
    # each row has squared norm p · (p/2) over the p² inputs: divide by p/√2
    return (torch.stack(rows) * math.sqrt(2) / p).to(dtype)


def _grid_size(logits: torch.Tensor) -> int:
    """p, from logits [..., p², p]; a ValueError for any other shape."""
    p = logits.shape[-1]
    if logits.ndim < 2 or logits.shape[-2] != p * p:
        raise ValueError(f"expected logits of shape [..., p², p] (every input, in dataset order); got {tuple(logits.shape)}")
    return p


def frequency_component(logits: torch.Tensor, freqs: Sequence[int]) -> torch.Tensor:
    """The part of the logits along cos/sin(w_k(a+b)) for k in freqs, for each output c: [..., p², p] → same."""
    p = _grid_size(logits)
    directions = sum_directions(p, freqs, torch.float64).to(logits.device)  # [f, p²]
    coeffs = einops.einsum(directions, logits.double(), "f i, ... i c -> ... f c")
    return einops.einsum(directions, coeffs, "f i, ... f c -> ... i c").to(logits.dtype)


def remove_frequencies(logits: torch.Tensor, freqs: Sequence[int]) -> torch.Tensor:
    """The logits without their cos/sin(w_k(a+b)) components for k in freqs: [..., p², p] → same."""
    return logits - frequency_component(logits, freqs)


def keep_frequencies(logits: torch.Tensor, freqs: Sequence[int]) -> torch.Tensor:
    """Only the constant (each output's mean over the inputs) and the cos/sin(w_k(a+b)) components: [..., p², p]."""
    return logits.mean(dim=-2, keepdim=True) + frequency_component(logits, freqs)


def logit_loss(logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None = None) -> float:
    """Mean cross-entropy (float64) of logits [p², p] on the inputs idx (default: all of them)."""
    return cross_entropy(logits, labels, idx).item()


def logit_accuracy(logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None = None) -> float:
    """Share of the inputs idx (default: all) whose largest logit is the label."""
    return accuracy(logits, labels, idx).item()


# --- the embedding --------------------------------------------------------------------------------
def remove_embedding_frequencies(model: HookedTransformer, freqs: Sequence[int]) -> torch.Tensor:
    """Logits [p², p] when the token embedding loses its cos/sin(w_k x) components for k in freqs.

    Only the number tokens' rows W_E[:p] change (each embedding dimension, as a function of the token x, loses
    those waves); the "=" row and everything after the embedding are the model's own.
    """
    p = model.cfg.d_vocab_out
    rows = [r for k in _check_freqs(p, freqs) for r in cos_sin_rows(k)]
    basis = fourier_basis(p)[rows]  # [2K, p]
    W_E = model.W_E.detach().double().cpu()  # [p + 1, d_model]
    W_E[:p] -= basis.T @ (basis @ W_E[:p])  # project the waves out of every column
    tokens, _ = make_dataset(p)
    new_embed = W_E[tokens].to(model.W_E.dtype).to(model.cfg.device)  # [p², 3, d_model]

    with torch.no_grad():
        logits = model.run_with_hooks(tokens.to(model.cfg.device),
                                      fwd_hooks=[("hook_embed", lambda acts, hook: new_embed)])
    return logits[:, -1].cpu()


# --- neurons ------------------------------------------------------------------------------------------
def _frequency_mask(p: int, freqs: torch.Tensor) -> torch.Tensor:
    """1 on the 2-D Fourier components {const, cos k, sin k}² of each neuron's frequency k, else 0: [p, p, n]."""
    mask = torch.zeros(p, p, len(freqs), dtype=torch.bool)
    for n, k in enumerate(freqs.tolist()):
        rows = [0, *cos_sin_rows(k)]
        mask[torch.tensor(rows)[:, None], torch.tensor(rows)[None, :], n] = True
    return mask


def project_onto_frequency(acts: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Each neuron's activations over (a, b) projected onto the terms of its own frequency k: [p, p, n] → [p, p, n].

    The terms are 1, cos(w_k a), sin(w_k a), cos(w_k b), sin(w_k b) and the four products of one a-term with one
    b-term, i.e. the 2-D Fourier components {const, cos k, sin k} × {const, cos k, sin k}; freqs[n] is neuron n's k.
    """
    p = acts.shape[0]
    if acts.ndim != 3 or acts.shape[1] != p or acts.shape[2] != len(freqs):
        raise ValueError(f"acts must be [p, p, n] with one frequency per neuron; got {tuple(acts.shape)} and "
                         f"{len(freqs)} frequencies")
    _check_freqs(p, set(freqs.tolist()))
    basis = fourier_basis(p, torch.float64).to(acts.device)  # [f, x]
    coeffs = einops.einsum(basis, acts.double(), "f a, a b n -> f b n")  # transform a, then b: two matmuls
    coeffs = einops.einsum(basis, coeffs, "g b, f b n -> f g n") * _frequency_mask(p, freqs.cpu()).to(acts.device)
    back = einops.einsum(basis, coeffs, "g b, f g n -> f b n")
    return einops.einsum(basis, back, "f a, f b n -> a b n").to(acts.dtype)


def run_with_neurons(model: HookedTransformer, new_acts: torch.Tensor, neurons: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [p², p] when the last position's neurons (all, or those listed) take the values new_acts [p, p, n]."""
    p = model.cfg.d_vocab_out
    tokens, _ = make_dataset(p)
    index = slice(None) if neurons is None else torch.as_tensor(neurons, dtype=torch.long)
    flat = einops.rearrange(new_acts, "a b n -> (a b) n").to(model.cfg.device)

    def replace(acts: torch.Tensor, hook) -> torch.Tensor:  # acts: [p², pos, d_mlp]
        acts = acts.clone()
        acts[:, -1, index] = flat.to(acts.dtype)
        return acts

    with torch.no_grad():
        logits = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=[(NEURON_HOOK, replace)])
    return logits[:, -1].cpu()


def ablate_neurons(model: HookedTransformer, neurons: Sequence[int] | torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Logits [p², p] with the listed neurons set to zero ("zero") or to their mean over all inputs ("mean")."""
    if how not in ABLATIONS:
        raise ValueError(f"how must be one of {ABLATIONS}, got {how!r}")
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    acts = neuron_activations(model)[..., neurons]  # [p, p, len(neurons)]
    if how == "zero":
        new = torch.zeros_like(acts)
    else:
        new = acts.mean(dim=(0, 1), keepdim=True).expand_as(acts)
    return run_with_neurons(model, new, neurons)


def project_neurons(model: HookedTransformer, freqs: torch.Tensor, neurons: Sequence[int] | torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Logits [p², p] when each listed neuron (default: all) is replaced by its projection onto its frequency.

    freqs[i] is the frequency of the i-th listed neuron (e.g. from utils.mechanism.neuron_frequencies).
    """
    acts = neuron_activations(model)
    if neurons is not None:
        neurons = torch.as_tensor(neurons, dtype=torch.long)
        acts = acts[..., neurons]
    return run_with_neurons(model, project_onto_frequency(acts, torch.as_tensor(freqs)), neurons)


# --- one piece at a time ---------------------------------------------------------------------------------
def per_frequency_loss(logits: torch.Tensor, labels: torch.Tensor, freqs: Sequence[int],
                       idx: torch.Tensor | None = None) -> torch.Tensor:
    """Loss on idx (default: all inputs) with each frequency's directions removed in turn: [len(freqs)] (float64)."""
    return torch.tensor([logit_loss(remove_frequencies(logits, [k]), labels, idx) for k in freqs],
                        dtype=torch.float64)
