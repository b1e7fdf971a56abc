"""utils.pizza and the attention-rate knob of utils.model: clock or pizza."""
from __future__ import annotations

import math

import pytest
import torch

from utils import pizza
from utils.data import make_dataset
from utils.model import PATTERN_HOOK, make_model, model_config, set_attention_rate, uniform_attention

P = 11


def small_model(seed: int = 0):
    return make_model(model_config(p=P, d_model=16, n_heads=2, d_mlp=32, seed=seed))


def test_uniform_attention_spreads_each_query_over_itself_and_earlier_keys():
    torch.testing.assert_close(uniform_attention(3), torch.tensor([[1, 0, 0], [1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3]]))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_the_attention_rate_mixes_the_pattern_with_uniform_attention(alpha):
    tokens, _ = make_dataset(P)
    model = small_model()
    _, plain = model.run_with_cache(tokens, names_filter=PATTERN_HOOK)
    _, mixed = set_attention_rate(model, alpha).run_with_cache(tokens, names_filter=PATTERN_HOOK)
    expected = alpha * plain[PATTERN_HOOK] + (1 - alpha) * uniform_attention(3)
    torch.testing.assert_close(mixed[PATTERN_HOOK], expected)


def test_an_attention_rate_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="attention rate"):
        set_attention_rate(small_model(), 1.5)


def test_gradients_are_exactly_symmetric_when_attention_ignores_the_inputs():
    model = set_attention_rate(small_model(1), 0.0)  # residual = "=" + (V(a) + V(b) + V(=)) / 3: a and b alike
    assert pizza.gradient_symmetricity(model, n=200) == pytest.approx(1.0, abs=1e-5)
    assert pizza.gradient_symmetricity(set_attention_rate(model, 1.0), n=200) < 1 - 1e-3  # softmax: not quite


def test_embedding_gradients_match_a_finite_difference():
    model = small_model(2)
    a, b, c = torch.tensor([3]), torch.tensor([5]), torch.tensor([7])
    grad_a, _ = pizza.embedding_gradients(model, a, b, c)
    direction = torch.zeros(16)
    direction[4] = 1e-3
    tokens = torch.tensor([[3, 5, P]])

    def logit(shift: float) -> float:
        hook = ("hook_embed", lambda e, hook: e + shift * torch.stack([direction, 0 * direction, 0 * direction]))
        return model.run_with_hooks(tokens, fwd_hooks=[hook])[0, -1, 7].item()

    assert (logit(1) - logit(-1)) / 2 == pytest.approx(grad_a[0, 4].item() * 1e-3, rel=1e-2, abs=1e-6)


@pytest.mark.parametrize("phase, low", [(lambda a, b: a + b, False), (lambda a, b: a - b, True)])
def test_distance_irrelevance_is_low_only_when_the_correct_logit_follows_a_minus_b(monkeypatch, phase, low):
    x = torch.arange(P, dtype=torch.float64)
    a, b = x[:, None], x[None, :]
    correct = torch.cos(2 * math.pi * phase(a, b) / P) + 0.01 * a  # the correct answer's logit over (a, b)
    grid = torch.zeros(P, P, P, dtype=torch.float64)
    grid.view(P * P, P).scatter_(1, make_dataset(P)[1][:, None], correct.flatten()[:, None])
    monkeypatch.setattr(pizza, "logit_grid", lambda model: grid)
    value = pizza.distance_irrelevance(small_model())
    assert (value < 0.2) if low else (value > 0.8)
