"""utils.pizza and the attention-rate knob of utils.model: clock or pizza (chapter 8), and the chapter's claims on
runs it never uses."""
from __future__ import annotations

import math

import pytest
import torch

from utils import claims, pizza
from utils.data import make_dataset
from utils.mechanism import logit_grid
from utils.model import PATTERN_HOOK, make_model, model_config, set_attention_rate, uniform_attention
from utils.train import TrainConfig, get_runs

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
def test_distance_irrelevance_is_low_only_when_the_correct_logit_follows_a_minus_b(phase, low):
    x = torch.arange(P, dtype=torch.float64)
    a, b = x[:, None], x[None, :]
    correct = torch.cos(2 * math.pi * phase(a, b) / P) + 0.01 * a  # the correct answer's logit over (a, b)
    value = pizza.distance_irrelevance(correct)
    assert (value < 0.2) if low else (value > 0.8)


def test_distance_irrelevance_refuses_anything_but_a_square_grid():
    with pytest.raises(ValueError, match=r"\[p, p\] grid"):
        pizza.distance_irrelevance(torch.zeros(P, P, P))


def test_correct_logits_pick_the_logit_of_a_plus_b():
    model = small_model(3)
    grid = logit_grid(model)  # [a, b, c]
    correct = pizza.correct_logits(model)
    assert correct.shape == (P, P)
    assert correct[2, 5] == grid[2, 5, 7] and correct[9, 4] == grid[9, 4, (9 + 4) % P]


def test_the_rule_names_the_ideal_both_measures_are_nearer_to():
    assert pizza.classify(0.0, 1.0) == "clock" and pizza.classify(1.0, 0.0) == "pizza"
    assert pizza.classify(1.0, 1.0) == pizza.classify(0.0, 0.0) == "neither"
    assert pizza.classify(0.5, 0.5) == "pizza"  # exactly on a cut: not on the clock's side


def test_decay_alone_multiplies_by_one_minus_lr_times_decay_each_step():
    assert pizza.decay_only_factor(0.01, 2.0, 1, 50) == pytest.approx((1 - 0.02) ** 50, rel=1e-12)
    warm = pizza.decay_only_factor(0.01, 2.0, 4, 6)  # warm-up: lr/4, 2lr/4, 3lr/4, then lr
    assert warm == pytest.approx((1 - 0.005) * (1 - 0.01) * (1 - 0.015) * (1 - 0.02) ** 3, rel=1e-12)


def test_swapping_the_attention_rate_leaves_the_model_as_it_was():
    model = set_attention_rate(small_model(4), 0.0)
    tokens, _ = make_dataset(P)
    before = model(tokens)
    pizza.accuracy_with_attention_rate(model, 1.0)
    torch.testing.assert_close(model(tokens), before)


def test_query_key_norm_is_the_norm_of_both_matrices():
    model = small_model(5)
    attn = model.blocks[0].attn
    expected = math.sqrt(attn.W_Q.detach().pow(2).sum().item() + attn.W_K.detach().pow(2).sum().item())
    assert pizza.query_key_norm(model) == pytest.approx(expected, rel=1e-6)


# --- chapter 8's claims on runs the chapter never uses --------------------------------------------------------
UNSEEN_SEEDS = (3, 4)  # the chapter trains seeds 0 and 1


def chapter8_config(alpha: float, seed: int) -> TrainConfig:
    """The chapter's configuration (solutions/08_clock_or_pizza.ipynb, `chapter8_config`)."""
    return TrainConfig.preset("workshop", p=59, frac_train=0.8, seed=seed, attention_rate=alpha,
                              checkpoint_every=500)


@pytest.fixture(scope="module")
def unseen_runs():
    return get_runs([chapter8_config(alpha, seed) for alpha in (1.0, 0.0) for seed in UNSEEN_SEEDS],
                    progress=False)


def test_chapter_8_measure_claims_hold_on_seeds_the_chapter_never_uses(unseen_runs):
    found = claims.clock_or_pizza(unseen_runs)
    print(found)  # pytest shows it when a claim fails
    assert found.hold(), found.failures()


def test_chapter_8_mechanism_claims_hold_on_seeds_the_chapter_never_uses(unseen_runs):
    found = claims.clock_and_pizza_mechanisms(unseen_runs)
    print(found)
    assert found.hold(), found.failures()


def test_the_chapter_8_claims_need_both_attention_rates(unseen_runs):
    with pytest.raises(ValueError, match="attention rate 1"):
        claims.clock_or_pizza([r for r in unseen_runs if r.config.attention_rate == 1])
