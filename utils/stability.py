"""Why grokking is slow, and what speeds it up (chapter 8): softmax collapse, StableMax, ⊥Grad and Grokfast.

Facts from the papers (their code is not used here):
- Prieto et al. 2025, *Grokking at the Edge of Numerical Stability*: in float32, once the right logit leads by enough,
  softmax rounds the answer's probability to exactly 1 and its gradient to exactly 0 ("softmax collapse").
  StableMax replaces exp by s(x) = x + 1 (x ≥ 0), 1 / (1 - x) (x < 0), which grows far more slowly; ⊥Grad removes
  from each weight's gradient its component along the weight itself (the direction that only scales the logits),
  then restores the gradient's norm.
- Lee et al. 2024, *Grokfast*: add λ × an exponential moving average (decay α) of past gradients to the gradient.
"""
from __future__ import annotations

import torch

__all__ = ["collapsed_share", "stablemax", "stablemax_cross_entropy", "orthogonal_gradient", "GradientEMA"]


def collapsed_share(logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Share of the inputs idx whose float32 softmax gives the answer a probability of exactly 1: [..., n, p] → [...].

    At such an input the float32 cross-entropy and its gradient are exactly 0: the input no longer teaches anything.
    """
    if idx is not None:
        logits, labels = logits[..., idx, :], labels[idx]
    probs = logits.float().softmax(-1)
    answer = probs.gather(-1, labels.expand(*probs.shape[:-1])[..., None])[..., 0]
    return (answer == 1.0).double().mean(-1)


def _s(x: torch.Tensor) -> torch.Tensor:
    """StableMax's s(x): x + 1 for x ≥ 0, 1 / (1 - x) for x < 0 (positive, continuous, with slope 1 at 0)."""
    return torch.where(x >= 0, x + 1, 1 / (1 - x.clamp(max=0)))


def stablemax(logits: torch.Tensor) -> torch.Tensor:
    """StableMax over the last axis: s(x_i) / Σ_j s(x_j). Like softmax, positive and summing to 1."""
    s = _s(logits)
    return s / s.sum(-1, keepdim=True)


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean -log StableMax(logits)[label], computed in float64: logits [n, p], labels [n] → a scalar."""
    s = _s(logits.double())
    return (s.sum(-1).log() - s.gather(-1, labels[:, None])[:, 0].log()).mean()


def orthogonal_gradient(grad: torch.Tensor, weight: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """⊥Grad: grad without its component along weight, rescaled to grad's norm (any shape; one weight tensor).

    The removed component only grows or shrinks the weight along itself, which scales the logits: the "naive loss
    minimisation" direction that float32 softmax rewards until it collapses.
    """
    w, g = weight.flatten().double(), grad.flatten().double()
    projected = g - (g @ w) / (w @ w).clamp_min(eps) * w
    scale = g.norm() / projected.norm().clamp_min(eps)
    return (projected * scale).view_as(grad).to(grad.dtype)


class GradientEMA:
    """Grokfast's filter: each call adds lamb × the exponential moving average (decay alpha) of the gradients so
    far, including this one, to the gradient: g ← g + λ·EMA_α(g). Keeps one average per parameter name."""

    def __init__(self, alpha: float = 0.98, lamb: float = 2.0):
        if not 0 <= alpha < 1 or lamb < 0:
            raise ValueError(f"GradientEMA needs 0 ≤ alpha < 1 and lamb ≥ 0, got alpha={alpha}, lamb={lamb}")
        self.alpha, self.lamb, self.average = alpha, lamb, {}

    @torch.no_grad()
    def __call__(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """The filtered gradient for the parameter `name` (its average is updated first)."""
        if name not in self.average:
            self.average[name] = grad.clone()
        else:
            self.average[name].mul_(self.alpha).add_(grad, alpha=1 - self.alpha)
        return grad + self.lamb * self.average[name]
