"""Progress measures (Nanda et al. 2023, §5): quantities that move steadily while test loss seems stuck.

- `restricted_loss(model, freqs)`: the loss over all inputs when the logits keep only the constant and their
  cos/sin(w_k(a+b)) components for the key frequencies: how well the general circuit alone does.
- `excluded_loss(model, freqs)`: the *training* loss when exactly those components are removed: how well
  whatever else (memorisation) still does on the pairs it could have memorised.
- `gini`: the Gini coefficient, a sparsity score; applied to the norms of the Fourier components of W_E and
  W_L = W_out W_U it rises as the model keeps fewer frequencies.
- `sum_squared_weights`: Σθ², what weight decay pushes down.

`progress_measures(run)` computes them all at every checkpoint at once: it stacks the checkpoints' weights and
runs the model on all p² inputs for many checkpoints at once (`batched_logits`: utils.forward.logits, which the
tests check against HookedTransformer). `phase_boundaries` reads the paper's three phases off the test loss, `phases_from_measures` off the
measures themselves; `utils.plotting.shade_phases` draws them on a figure.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import einops
import numpy as np
import pandas as pd
import torch

from utils.ablation import frequency_component, keep_frequencies, remove_frequencies, sum_directions
from utils.data import make_dataset
from utils import forward
from utils.fourier import fourier_basis
from utils.mechanism import model_logits
from utils.metrics import accuracy, cross_entropy
from utils.model import HookedTransformer

__all__ = ["restricted_loss", "excluded_loss", "per_frequency_excluded_loss", "restricted_and_excluded", "gini",
           "sum_squared_weights", "embedding_norms", "weight_frequency_norms", "stack_models",
           "stack_checkpoints", "batched_logits", "progress_measures", "Phases", "phase_boundaries",
           "phases_from_measures", "PHASE_NAMES"]

PHASE_NAMES = ("memorisation", "circuit formation", "cleanup")


# --- losses of ablated logits, for logits [..., p², p] of one model or a stack of them ------------------------
def _centred_rms(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Root-mean-square over the inputs idx and the answers, after removing each input's mean over the answers
    (a shift softmax ignores): [..., p², p] → [...]."""
    x = logits[..., idx, :].double()
    return (x - x.mean(-1, keepdim=True)).pow(2).mean((-2, -1)).sqrt()


def _pairs(p: int, idx: object, what: str) -> torch.Tensor:
    """idx as a 1-D long tensor of distinct input indices in 0 … p²-1, or a ValueError saying what to pass."""
    if idx is None:
        raise ValueError(f"{what} needs the training pairs: pass train_idx=run.train_idx (a utils.train Run), or "
                         "utils.data.train_test_split(p, frac_train, seed)[0] for the split the model was trained on")
    idx = torch.as_tensor(idx)
    if idx.ndim != 1 or idx.is_floating_point() or idx.dtype == torch.bool or not len(idx):
        raise ValueError(f"{what}: train_idx must be a non-empty 1-D tensor of input indices (int64), got "
                         f"dtype {idx.dtype} and shape {tuple(idx.shape)}")
    if idx.min() < 0 or idx.max() >= p * p or len(idx.unique()) != len(idx):
        raise ValueError(f"{what}: train_idx must hold distinct indices in 0 … {p * p - 1} (row a·p + b), got values "
                         f"from {int(idx.min())} to {int(idx.max())}")
    return idx.long()


def restricted_loss(model: HookedTransformer, freqs: Sequence[int], idx: torch.Tensor | None = None) -> float:
    """Loss on idx (default: all p² inputs) when the logits keep only the constant and cos/sin(w_k(a+b)), k in freqs."""
    p = model.cfg.d_vocab_out
    _, labels = make_dataset(p)
    return cross_entropy(keep_frequencies(model_logits(model), freqs), labels, idx).item()


def excluded_loss(model: HookedTransformer, freqs: Sequence[int], train_idx: torch.Tensor) -> float:
    """Training loss when the logits lose their cos/sin(w_k(a+b)) components for k in freqs.

    train_idx: the pairs the model was trained on (`run.train_idx`); a model does not know its own split.
    """
    p = model.cfg.d_vocab_out
    _, labels = make_dataset(p)
    train_idx = _pairs(p, train_idx, "excluded_loss")
    return cross_entropy(remove_frequencies(model_logits(model), freqs), labels, train_idx).item()


def restricted_and_excluded(logits: torch.Tensor, labels: torch.Tensor, train_idx: torch.Tensor,
                            freqs: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Restricted loss (all inputs) and excluded loss (training inputs) of stacked logits [n, p², p]: two [n]."""
    return (cross_entropy(keep_frequencies(logits, freqs), labels, None),
            cross_entropy(remove_frequencies(logits, freqs), labels, train_idx))


def _per_frequency_excluded(logits: torch.Tensor, labels: torch.Tensor, freqs: Sequence[int],
                            train_idx: torch.Tensor) -> torch.Tensor:
    """Training loss with each frequency removed in turn: [..., p², p] → [..., len(freqs)]."""
    return torch.stack([cross_entropy(logits - frequency_component(logits, [k]), labels, train_idx) for k in freqs], -1)


def per_frequency_excluded_loss(model: HookedTransformer, freqs: Sequence[int],
                                train_idx: torch.Tensor) -> torch.Tensor:
    """Excluded loss of each frequency on its own (only its cos/sin(w_k(a+b)) removed): [len(freqs)] (float64)."""
    p = model.cfg.d_vocab_out
    _, labels = make_dataset(p)
    train_idx = _pairs(p, train_idx, "per_frequency_excluded_loss")
    return _per_frequency_excluded(model_logits(model), labels, list(freqs), train_idx)


# --- weights --------------------------------------------------------------------------------------------------------
def gini(x: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of non-negative values along the last axis: 0 when all equal, 1 - 1/n when one holds all.

    G = Σ_i (2i - n - 1) x_(i) / (n Σ_i x_i), with x_(1) ≤ … ≤ x_(n) sorted: [..., n] → [...].
    """
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.double()
    if x.shape[-1] == 0 or (x < 0).any() or not torch.isfinite(x).all():
        raise ValueError("gini needs at least one value along the last axis, all of them finite and ≥ 0 "
                         f"(got {'NaN or inf' if x.shape[-1] and not torch.isfinite(x).all() else 'negatives or none'})")
    n = x.shape[-1]
    ranks = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    total = x.sum(-1)
    weighted = (x.sort(-1).values * (2 * ranks - n - 1)).sum(-1)
    return torch.where(total > 0, weighted / (n * total.clamp_min(torch.finfo(x.dtype).tiny)), torch.zeros_like(total))


def sum_squared_weights(model: HookedTransformer) -> float:
    """Σθ² over every parameter (the frozen biases are zero, so they add nothing)."""
    return sum(param.detach().double().pow(2).sum().item() for param in model.parameters())


def _per_frequency(squared: torch.Tensor) -> torch.Tensor:
    """sqrt(cos² + sin²) per frequency from squared norms per basis row: [..., p] → [..., (p-1)/2]."""
    return (squared[..., 1::2] + squared[..., 2::2]).sqrt()


def embedding_norms(W_E: torch.Tensor) -> torch.Tensor:
    """Norm of each frequency's Fourier components in a stack of embeddings (without "="): [n, p+1, d] → [n, (p-1)/2]."""
    p = W_E.shape[-2] - 1
    basis = fourier_basis(p, torch.float64).to(W_E.device)
    return _per_frequency(einops.einsum(basis, W_E[:, :p].double(), "f x, n x d -> n f d").pow(2).sum(-1))


def weight_frequency_norms(params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Norm of each frequency's Fourier components in W_E (over tokens) and W_L = W_out W_U (over outputs).

    params: stacked weights (see `stack_models`), e.g. embed.W_E [n, p+1, d_model]. Returns two [n, (p-1)/2]
    tensors: sqrt(‖cos k‖² + ‖sin k‖²) per frequency k, the squares summed over the other axis.
    """
    W_U = params["unembed.W_U"].double()  # [n, d_model, p]
    basis = fourier_basis(W_U.shape[-1], torch.float64).to(W_U.device)
    W_L = einops.einsum(params["blocks.0.mlp.W_out"].double(), W_U, "n m d, n d c -> n m c")  # [n, d_mlp, p]
    unembed = _per_frequency(einops.einsum(basis, W_L, "f c, n m c -> n f m").pow(2).sum(-1))
    return embedding_norms(params["embed.W_E"]), unembed


# --- every checkpoint at once ------------------------------------------------------------------------------------
def stack_models(models: Sequence[HookedTransformer]) -> dict[str, torch.Tensor]:
    """Every parameter of the models, stacked along a new first axis: {name: [n, ...]}."""
    if not models:
        raise ValueError("stack_models needs at least one model")
    names = [name for name, _ in models[0].named_parameters()]
    return {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]) for name in names}


def stack_checkpoints(run, steps: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """The weights of the run's checkpoints (default: all of them, in order) via run.model_at: {name: [n, ...]}."""
    steps = run.checkpoint_steps if steps is None else steps
    return stack_models([run.model_at(step) for step in steps])


def batched_logits(params: dict[str, torch.Tensor], attention_rate: float = 1.0) -> torch.Tensor:
    """Logits at the last position for every input (a, b, =) and every stacked model: [n, p², p] (row a·p + b).

    utils.forward.logits, the one implementation of the model's maths that training uses too, on all p² inputs:
    keys and values at positions 0 and 1 depend on one token each, so they are computed once per token.
    """
    params = {name: value.float() for name, value in params.items()}
    W_E = params["embed.W_E"]  # [n, p + 1, d_model]
    a, b = forward.all_pairs(W_E.shape[1] - 1, W_E.device)
    return forward.logits(params, a.expand(W_E.shape[0], -1), b.expand(W_E.shape[0], -1), attention_rate)


def _logit_measures(logits: torch.Tensor, labels: torch.Tensor, train_idx: torch.Tensor, test_idx: torch.Tensor,
                    freqs: list[int]) -> dict[str, torch.Tensor]:
    """The logit-based measures of stacked logits [n, p², p] (float64), sharing one projection onto the key
    directions and rebuilding components only on the inputs each measure reads (the same numbers as
    restricted_and_excluded and per_frequency_excluded_loss, a few times faster)."""
    p = logits.shape[-1]
    directions = sum_directions(p, freqs, torch.float64)  # [2K, p²]
    coeffs = einops.einsum(directions, logits, "f i, n i c -> n f c")  # [n, 2K, p]

    def component(idx: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:  # [n, len(idx), p]
        return einops.einsum(directions[rows, idx], coeffs[:, rows], "f i, n f c -> n i c")

    train, test = logits[:, train_idx], logits[:, test_idx]
    key_test = component(test_idx)
    restricted = logits.mean(-2, keepdim=True) + component(torch.arange(p * p))
    return {
        "restricted_loss": cross_entropy(restricted, labels, None),
        "excluded_loss": cross_entropy(train - component(train_idx), labels[train_idx], None),
        "key_logit_rms": _centred_rms(key_test, slice(None)),
        "other_logit_rms": _centred_rms(test - key_test - logits.mean(-2, keepdim=True), slice(None)),
        "per_frequency": torch.stack([cross_entropy(train - component(train_idx, slice(2 * j, 2 * j + 2)),
                                              labels[train_idx], None) for j in range(len(freqs))]
                                     or [torch.zeros(len(logits), dtype=torch.float64)], -1)[:, :len(freqs)],
    }


def progress_measures(run, freqs: Sequence[int], steps: Sequence[int] | None = None,
                      chunk: int = 4) -> tuple[pd.DataFrame, torch.Tensor]:
    """Every progress measure at every checkpoint (default: all of the run's), computed `chunk` checkpoints at a time.

    Returns a table with one row per checkpoint (step, train/test loss and accuracy, restricted_loss,
    excluded_loss, key_logit_rms and other_logit_rms, gini_W_E, gini_W_L, sum_squared_weights) and the
    per-frequency excluded loss [n_checkpoints, len(freqs)]. freqs: the key frequencies (e.g. of the final model).
    key_logit_rms / other_logit_rms: the size (RMS over test inputs and answers, each input's mean over the answers
    removed) of the logits' part along the key directions, and of everything but those and the constant.
    """
    steps = list(run.checkpoint_steps if steps is None else steps)
    freqs = list(freqs)
    _, labels = run.dataset()
    train_idx, test_idx = run.train_idx, run.test_idx
    rows, per_freq = [], []
    with torch.no_grad():
        for start in range(0, len(steps), chunk):
            part = steps[start:start + chunk]
            params = stack_checkpoints(run, part)
            logits = batched_logits(params).double()  # [n, p², p]
            embed, unembed = weight_frequency_norms(params)
            table = {"step": part,
                     "train_loss": cross_entropy(logits, labels, train_idx), "test_loss": cross_entropy(logits, labels, test_idx),
                     "train_acc": accuracy(logits, labels, train_idx),
                     "test_acc": accuracy(logits, labels, test_idx),
                     **_logit_measures(logits, labels, train_idx, test_idx, freqs),
                     "gini_W_E": gini(embed), "gini_W_L": gini(unembed),
                     "sum_squared_weights": sum(v.double().pow(2).flatten(1).sum(1) for v in params.values())}
            per_freq.append(table.pop("per_frequency"))
            rows.append(pd.DataFrame({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in table.items()}))
    return pd.concat(rows, ignore_index=True), torch.cat(per_freq)


# --- the three phases ----------------------------------------------------------------------------------------------
class Phases(NamedTuple):
    """Where each phase ends (a training step): memorisation [first, memorisation_end), circuit formation
    [memorisation_end, cleanup_start), cleanup [cleanup_start, cleanup_end); after cleanup_end, nothing much."""

    first: int
    memorisation_end: int
    cleanup_start: int
    cleanup_end: int

    def spans(self) -> list[tuple[str, int, int]]:
        """(name, start step, end step) of each phase."""
        bounds = [self.first, self.memorisation_end, self.cleanup_start, self.cleanup_end]
        return [(name, bounds[i], bounds[i + 1]) for i, name in enumerate(PHASE_NAMES)]


def _first(steps: np.ndarray, condition: np.ndarray, what: str) -> int:
    """The first step where condition holds; a ValueError naming the condition if it never does."""
    hits = np.flatnonzero(condition)
    if not len(hits):
        raise ValueError(f"phase_boundaries: {what} never happens in these curves; did the run grok?")
    return int(steps[hits[0]])


def phase_boundaries(steps: Sequence[int], test_loss: Sequence[float], fraction: float = 0.1) -> Phases:
    """The paper's three phases, read off the test loss curve alone (the progress measures play no part, so
    the chapter can check them against the phases without going in a circle).

    The rule. Let ℓ = log(test loss) (losses span many orders of magnitude), ℓ_peak its largest value and
    ℓ_end its last one.
    1. **Memorisation** ends where the test loss first peaks: memorising makes ever more confident wrong guesses
       on unseen pairs, so the test loss climbs until the circuit starts to pull it down. Precisely: the first
       local maximum of the test loss that is at least half the largest test loss (a wobble on the way up does
       not count, and a later bump during circuit formation does not move it).
    2. **Cleanup** starts at the first step after the largest test loss where ℓ has fallen `fraction` (default
       10%) of the way from ℓ_peak to ℓ_end: the collapse of the test loss has begun.
    3. **Cleanup** ends at the first step where ℓ has fallen 1 - `fraction` (90%) of that way.
    **Circuit formation** lies between the peak and the start of cleanup. A ValueError if the test loss falls by
    less than a factor of 10 from its peak (the run did not grok).
    """
    steps = np.asarray(steps)
    test = np.log(np.asarray(test_loss, dtype=float))
    if steps.ndim != 1 or steps.shape != test.shape or len(steps) < 4:
        raise ValueError("phase_boundaries needs steps and test_loss of the same length (at least 4 points); got "
                         f"{steps.shape} and {test.shape}")
    if not np.isfinite(test).all() or not (np.diff(steps) > 0).all():
        raise ValueError("phase_boundaries needs increasing steps and positive, finite test losses")
    if not 0 < fraction < 0.5:
        raise ValueError(f"fraction must be in (0, 0.5), got {fraction}")
    peak = int(np.argmax(test))
    fall = test[peak] - test[-1]
    if fall < np.log(10):
        raise ValueError(f"the test loss falls only {np.exp(fall):.2g}x from its peak: this run did not grok, so it "
                         "has no circuit-formation or cleanup phase")
    higher_than_left = np.r_[True, test[1:] >= test[:-1]]
    higher_than_right = np.r_[test[:-1] >= test[1:], False]
    first_peak = int(np.flatnonzero(higher_than_left & higher_than_right & (test >= test[peak] - np.log(2)))[0])
    after_peak = np.arange(len(steps)) > peak
    cleanup_start = _first(steps, after_peak & (test <= test[peak] - fraction * fall), "a fall of the test loss")
    cleanup_end = _first(steps, after_peak & (test <= test[-1] + fraction * fall), "the end of the test loss's fall")
    return Phases(int(steps[0]), int(steps[first_peak]), cleanup_start, cleanup_end)


def phases_from_measures(measures: pd.DataFrame, fraction: float = 0.1) -> Phases:
    """The three phases read the paper's way, off the progress measures themselves (not the test loss):

    1. **memorisation** ends where the excluded loss is lowest: until then the model's training answers do not
       depend on the key directions; from then on removing them hurts more and more (the circuit forms);
    2. **cleanup** starts at the excluded loss's peak, after that minimum: the memorised part starts to go, so
       removing the circuit leaves less behind;
    3. **cleanup** ends where the weight norm Σθ² has fallen 1 - `fraction` (90%) of the way from its value at
       the start of cleanup to its last value: weight decay has finished removing what memorisation used.
    measures: the table of `progress_measures` (columns step, excluded_loss, sum_squared_weights).
    """
    steps = measures.step.to_numpy()
    excluded = measures.excluded_loss.to_numpy()
    norm = measures.sum_squared_weights.to_numpy()
    if len(steps) < 4 or not (np.diff(steps) > 0).all():
        raise ValueError("phases_from_measures needs at least 4 checkpoints in increasing order of step")
    peak = int(np.argmax(excluded))
    low = int(np.argmin(excluded[:peak + 1]))
    if peak == low:
        raise ValueError("the excluded loss never rises in these measures: no circuit formed, so there are no phases "
                         "to read off them")
    target = norm[peak] - (1 - fraction) * (norm[peak] - norm[-1])
    end = _first(steps, (np.arange(len(steps)) >= peak) & (norm <= target), "the weight norm's fall")
    return Phases(int(steps[0]), int(steps[low]), int(steps[peak]), end)
