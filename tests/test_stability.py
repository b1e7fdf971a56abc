"""utils.stability: softmax collapse, StableMax, ⊥Grad and the Grokfast filter."""
from __future__ import annotations

import pytest
import torch

from utils import stability


def test_collapse_counts_answers_whose_float32_probability_is_exactly_one():
    logits = torch.tensor([[120.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 200.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    assert stability.collapsed_share(logits, labels).item() == pytest.approx(2 / 3)
    assert stability.collapsed_share(logits, labels, torch.tensor([1])).item() == 0.0


def test_stablemax_is_a_distribution_that_saturates_far_more_slowly_than_softmax():
    x = torch.tensor([[30.0, 0.0, -5.0]], dtype=torch.float64)
    probs = stability.stablemax(x)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(probs, torch.tensor([[31.0, 1.0, 1 / 6]], dtype=torch.float64) / (32 + 1 / 6))
    assert stability.stablemax(x.float())[0, 0] < 1.0 == x.float().softmax(-1)[0, 0]  # softmax rounds to 1


def test_stablemax_cross_entropy_is_minus_log_of_the_answers_stablemax():
    x, labels = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 4])
    expected = -stability.stablemax(x.double()).gather(1, labels[:, None]).log().mean()
    torch.testing.assert_close(stability.stablemax_cross_entropy(x, labels), expected)


def test_orthogonal_gradient_has_no_component_along_the_weight_and_keeps_the_norm():
    g = torch.Generator().manual_seed(1)
    w, grad = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    out = stability.orthogonal_gradient(grad, w)
    assert abs((out * w).sum().item()) < 1e-5
    assert out.norm().item() == pytest.approx(grad.norm().item(), rel=1e-5)


def test_gradient_ema_adds_lambda_times_the_running_average():
    ema = stability.GradientEMA(alpha=0.5, lamb=2.0)
    torch.testing.assert_close(ema("w", torch.tensor([1.0])), torch.tensor([3.0]))  # average 1
    torch.testing.assert_close(ema("w", torch.tensor([3.0])), torch.tensor([7.0]))  # average 0.5·1 + 0.5·3 = 2


@pytest.mark.parametrize("alpha, lamb", [(1.0, 2.0), (-0.1, 2.0), (0.9, -1.0)])
def test_gradient_ema_refuses_settings_outside_its_range(alpha, lamb):
    with pytest.raises(ValueError, match="GradientEMA"):
        stability.GradientEMA(alpha, lamb)
