"""The course's one loss and one accuracy, for logits of one model or a stack of them, and `first_step`.

The loss is computed in float64: a grokked model's losses fall to ~1e-7, below what float32 log-softmax resolves.
"""
from __future__ import annotations

import pandas as pd
import torch

__all__ = ["cross_entropy", "accuracy", "loss_fn", "first_step", "mean_over_inputs"]


def _select(logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None):
    """The inputs idx (default: all) of logits [..., n, p] and labels [n]."""
    return (logits, labels) if idx is None else (logits[..., idx, :], labels[idx])


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None = None,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy (float64) over the inputs idx, for every leading index: [..., n, p], [..., n] → [...].

    labels may be shared ([n]) or one row per leading index; weights [..., n] make it a weighted mean (a stack of
    runs with training sets of different sizes pads them with weight-0 rows).
    """
    logits, labels = _select(logits, labels, idx)
    log_probs = logits.double().log_softmax(-1)
    picked = log_probs.gather(-1, labels.expand(*log_probs.shape[:-1])[..., None])[..., 0]  # [..., n]
    return mean_over_inputs(-picked, weights)


def mean_over_inputs(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over the last axis (the inputs), weighted by weights [..., n] if given: [..., n] → [...]."""
    return values.mean(-1) if weights is None else (values * weights).sum(-1) / weights.sum(-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Share of the inputs idx whose largest logit is the label, for every leading index: [..., n, p] → [...]."""
    logits, labels = _select(logits, labels, idx)
    return (logits.argmax(-1) == labels).double().mean(-1)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The training loss: mean float64 cross-entropy of logits [n, p], or [n, pos, p] (the last position is read)."""
    return cross_entropy(logits[:, -1] if logits.ndim == 3 else logits, labels)


def first_step(metrics: pd.DataFrame, column: str, threshold: float) -> int | None:
    """The first evaluated step at which metrics[column] ≥ threshold, or None if it never gets there."""
    reached = metrics.step[metrics[column] >= threshold]
    return int(reached.iloc[0]) if len(reached) else None
