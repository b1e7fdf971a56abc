"""Why grokking is slow, and what speeds it up (chapter 9): softmax collapse, StableMax, ⊥Grad and Grokfast.

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

from utils.metrics import mean_over_inputs

__all__ = ["collapsed_share", "silent_share", "answer_margin", "stablemax", "stablemax_cross_entropy",
           "orthogonal_gradient", "GradientEMA", "grokfast_filter"]


def collapsed_share(logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Share of the inputs idx whose float32 softmax gives the answer a probability of exactly 1: [..., n, p] → [...].

    At such an input the float32 cross-entropy and its gradient are exactly 0: the input no longer teaches anything.
    """
    if idx is not None:
        logits, labels = logits[..., idx, :], labels[idx]
    probs = logits.float().softmax(-1)
    answer = probs.gather(-1, labels.expand(*probs.shape[:-1])[..., None])[..., 0]
    return (answer == 1.0).double().mean(-1)


def silent_share(logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Share of the inputs idx whose gradient at the logits is exactly 0 in the course's trainer: [..., n, p] → [...].

    The trainer's loss is the mean float64 cross-entropy over the n inputs; its gradient at a wrong answer's logit is
    that answer's float64 probability / n, cast to float32, where utils.train flushes anything below float32's
    smallest normal number (1.2e-38) to 0. When every wrong answer is that small, the answer's float64 probability
    is exactly 1 as well, so the input's whole gradient is 0: it is collapsed for this trainer too, far later.
    """
    if idx is not None:
        logits, labels = logits[..., idx, :], labels[idx]
    probs = logits.double().softmax(-1)
    wrong = probs.scatter(-1, labels.expand(*probs.shape[:-1])[..., None], 0.0)  # the answer's entry set to 0
    return (wrong.amax(-1) / probs.shape[-2] < torch.finfo(torch.float32).tiny).double().mean(-1)


def answer_margin(logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """The answer's logit minus the largest other logit, for each input idx: [..., n, p] → [..., n] (float64).

    Positive where the model is right. Softmax gives the answer a float32 probability of exactly 1 once the margin
    exceeds about ln(p - 1) + 16.6 (the other p - 1 terms sum to under half of float32's spacing below 1).
    """
    if idx is not None:
        logits, labels = logits[..., idx, :], labels[idx]
    logits = logits.double()
    index = labels.expand(*logits.shape[:-1])[..., None]
    answer = logits.gather(-1, index)[..., 0]
    return answer - logits.scatter(-1, index, -torch.inf).amax(-1)


def _s(x: torch.Tensor) -> torch.Tensor:
    """StableMax's s(x): x + 1 for x ≥ 0, 1 / (1 - x) for x < 0 (positive, continuous, with slope 1 at 0)."""
    return torch.where(x >= 0, x + 1, 1 / (1 - x.clamp(max=0)))


def stablemax(logits: torch.Tensor) -> torch.Tensor:
    """StableMax over the last axis: s(x_i) / Σ_j s(x_j). Like softmax, positive and summing to 1."""
    s = _s(logits)
    return s / s.sum(-1, keepdim=True)


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean -log StableMax(logits)[label] in float64 for every leading index: [..., n, p], labels [n] or [..., n]
    → [...]; weights [..., n] make it a weighted mean (as utils.metrics.cross_entropy)."""
    s = _s(logits.double())
    picked = s.gather(-1, labels.expand(*s.shape[:-1])[..., None])[..., 0]  # [..., n]
    return mean_over_inputs(s.sum(-1).log() - picked.log(), weights)


def orthogonal_gradient(grad: torch.Tensor, weight: torch.Tensor, models: int = 0,
                        eps: float = 1e-30) -> torch.Tensor:
    """⊥Grad: grad without its component along weight, rescaled to grad's norm (same shapes, any shape).

    The removed component only grows or shrinks the weight along itself, which scales the logits: the "naive loss
    minimisation" direction that float32 softmax rewards until it collapses. With models = 1 the first axis is a
    stack of models (utils.train's [M, ...]), each projected on its own.
    """
    w, g = weight.flatten(models).double(), grad.flatten(models).double()  # [..., k]
    along = (g * w).sum(-1, keepdim=True) / (w * w).sum(-1, keepdim=True).clamp_min(eps)
    projected = g - along * w
    scale = g.norm(dim=-1, keepdim=True) / projected.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (projected * scale).view_as(grad).to(grad.dtype)


class GradientEMA:
    """Grokfast's filter: each call adds lamb × the exponential moving average (decay alpha) of the gradients so
    far, including this one, to the gradient: g ← g + λ·EMA_α(g). Keeps one average per parameter name.

    alpha and lamb are numbers, or one per model ([M]) for stacked gradients [M, ...].
    """

    def __init__(self, alpha: float | torch.Tensor = 0.98, lamb: float | torch.Tensor = 2.0):
        a, lam = torch.as_tensor(alpha, dtype=torch.float64), torch.as_tensor(lamb, dtype=torch.float64)
        if not (bool(((0 <= a) & (a < 1)).all()) and bool((lam >= 0).all())):
            raise ValueError(f"GradientEMA needs 0 ≤ alpha < 1 and lamb ≥ 0, got alpha={alpha}, lamb={lamb}")
        self.alpha, self.lamb, self.average = alpha, lamb, {}

    def _per_model(self, value: float | torch.Tensor, grad: torch.Tensor) -> float | torch.Tensor:
        """A number as it is; one value per model shaped to broadcast over a stacked gradient [M, ...]."""
        if not isinstance(value, torch.Tensor):
            return value
        return value.to(grad).view(-1, *(1,) * (grad.ndim - 1))

    @torch.no_grad()
    def __call__(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """The filtered gradient for the parameter `name` (its average is updated first)."""
        if name not in self.average:
            self.average[name] = grad.clone()
        else:
            alpha = self._per_model(self.alpha, grad)
            self.average[name].mul_(alpha).add_(grad * (1 - alpha))
        return grad + self._per_model(self.lamb, grad) * self.average[name]


def grokfast_filter(grads: torch.Tensor, alpha: float = 0.98, lamb: float = 2.0) -> torch.Tensor:
    """Grokfast's filter over a sequence of one parameter's gradients [T, ...] (step first): the gradients the
    optimiser would receive, g_t + λ·h_t with h_0 = g_0 and h_t = α·h_{t-1} + (1 - α)·g_t (GradientEMA's rule)."""
    ema = GradientEMA(alpha, lamb)
    return torch.stack([ema("grad", g) for g in grads])
