"""Chapter 8's checks accept the references and name plausible mistakes: the attention-rate mix, the gradients'
cosines, distance irrelevance and the clock/pizza rule."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from utils import checks, pizza
from utils.model import attention_rate_hook, uniform_attention


# --- mix_attention ---------------------------------------------------------------------------------------------
def test_check_mix_attention_accepts_the_reference():
    checks.check_mix_attention(lambda pattern, alpha: attention_rate_hook(alpha)(pattern, None))


def mixes_in_place(pattern, alpha):
    pattern.mul_(alpha).add_((1 - alpha) * uniform_attention(pattern.shape[-1]))
    return pattern


@pytest.mark.parametrize("wrong, expected", [
    (lambda pattern, alpha: alpha * pattern + (1 - alpha) / pattern.shape[-1], "uniform attention is causal"),
    (lambda pattern, alpha: (1 - alpha) * pattern + alpha * uniform_attention(pattern.shape[-1]), "swapped"),
    (lambda pattern, alpha: alpha * pattern + (1 - alpha) * torch.ones(pattern.shape[-2:]).tril(),
     "sums to 1"),
    (lambda pattern, alpha: uniform_attention(pattern.shape[-1]).expand_as(pattern) if alpha < 1 else pattern,
     "do not replace"),
    (lambda pattern, alpha: (alpha * pattern + (1 - alpha) * uniform_attention(pattern.shape[-1])).double(),
     "keep the pattern's dtype"),
    (mixes_in_place, "changed its input `pattern` in place"),
])
def test_check_mix_attention_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_mix_attention, wrong)


# --- gradient_cosines ------------------------------------------------------------------------------------------
def test_check_gradient_cosines_accepts_the_reference():
    checks.check_gradient_cosines(pizza.gradient_cosines)


def _gradients(model, a, b, c, value=lambda logits, c: logits.gather(1, c[:, None]).sum(), position_b=1):
    tokens = torch.stack([a, b, torch.full_like(a, model.cfg.d_vocab_out)], dim=1)
    store = {}

    def keep(embed, hook):
        store["leaf"] = embed.detach().requires_grad_(True)
        return store["leaf"]

    logits = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", keep)])[:, -1]
    value(logits, c).backward()
    grad = store["leaf"].grad
    return grad[:, 0].double(), grad[:, position_b].double()


def of_all_logits(model, a, b, c):
    return F.cosine_similarity(*_gradients(model, a, b, c, value=lambda logits, c: logits.sum()), dim=-1)


def of_the_log_prob(model, a, b, c):
    value = lambda logits, c: logits.log_softmax(-1).gather(1, c[:, None]).sum()  # noqa: E731
    return F.cosine_similarity(*_gradients(model, a, b, c, value=value), dim=-1)


def at_the_equals_sign(model, a, b, c):
    return F.cosine_similarity(*_gradients(model, a, b, c, position_b=2), dim=-1)


def by_rows_of_W_E(model, a, b, c):
    out = []
    for x, y, z in zip(a.tolist(), b.tolist(), c.tolist()):
        model.zero_grad()
        model(torch.tensor([[x, y, model.cfg.d_vocab_out]]))[0, -1, z].backward()
        out.append(F.cosine_similarity(model.W_E.grad[x].double(), model.W_E.grad[y].double(), dim=0))
    return torch.stack(out)


def leaves_a_hook(model, a, b, c):
    model.add_hook("hook_embed", lambda embed, hook: embed)
    return pizza.gradient_cosines(model, a, b, c)


@pytest.mark.parametrize("wrong, expected", [
    (of_all_logits, "not the sum of all logits"),
    (of_the_log_prob, "not its log-probability"),
    (at_the_equals_sign, "position 2 holds '='"),
    (lambda model, a, b, c: pizza.gradient_cosines(model, a, b, c).abs(), "not its absolute value"),
    (by_rows_of_W_E, "collects the gradients of BOTH positions"),
    (lambda model, a, b, c: pizza.gradient_cosines(model, a, b, c).mean(), "one cosine per triple"),
    (lambda model, a, b, c: pizza.gradient_cosines(model, a, b, c).float(), "float64"),
    (leaves_a_hook, "left a hook"),
])
def test_check_gradient_cosines_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_gradient_cosines, wrong)


# --- distance_irrelevance --------------------------------------------------------------------------------------
def reference_irrelevance(correct):
    return pizza.distance_irrelevance(correct)


def with_unbiased_stds(correct):
    p = correct.shape[0]
    distance = pizza.distance_grid(p)
    return (torch.stack([correct[distance == d].std() for d in range(p)]).mean() / correct.std()).item()


def _grouped(correct, group, spread=lambda v: v.std(correction=0), between=False):
    p = correct.shape[0]
    groups = [correct[group == d] for d in group.unique()]
    inner = (torch.stack([g.mean() for g in groups]).std(correction=0) if between
             else torch.stack([spread(g) for g in groups]).mean())
    return (inner / spread(correct.flatten())).item()


def by_sum(correct):
    x = torch.arange(correct.shape[0])
    return _grouped(correct, (x[:, None] + x[None, :]) % correct.shape[0])


def without_mod(correct):
    x = torch.arange(correct.shape[0])
    with warnings.catch_warnings():  # a group of one pair has no unbiased std: torch warns, and returns nan
        warnings.simplefilter("ignore", UserWarning)
        return _grouped(correct, x[:, None] - x[None, :], spread=lambda v: v.std())


@pytest.mark.parametrize("right", [reference_irrelevance, with_unbiased_stds])
def test_check_distance_irrelevance_accepts_either_std(right):
    checks.check_distance_irrelevance(right)


@pytest.mark.parametrize("wrong, expected", [
    (by_sum, "not by a + b"),
    (lambda correct: _grouped(correct, pizza.distance_grid(correct.shape[0]), spread=lambda v: v.var(correction=0)),
     "not the variance"),
    (lambda correct: 1 / pizza.distance_irrelevance(correct), "upside down"),
    (lambda correct: _grouped(correct, pizza.distance_grid(correct.shape[0]), between=True), "groups' means"),
    (without_mod, "mod p"),
    (lambda correct: torch.tensor(pizza.distance_irrelevance(correct)), "Python float"),
    (lambda correct: None, "return"),
])
def test_check_distance_irrelevance_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_distance_irrelevance, wrong)


# --- classify --------------------------------------------------------------------------------------------------
def test_check_classify_accepts_the_rule():
    checks.check_classify(pizza.classify)


@pytest.mark.parametrize("wrong, expected", [
    (lambda s, i: "clock" if s < 0.5 else "pizza", "a model whose two measures point to different algorithms"),
    (lambda s, i: "clock" if i > 0.5 else "pizza", "gradient symmetricity too"),
    (lambda s, i: pizza.classify(s, 1 - i), "IGNORES a − b"),
    (lambda s, i: pizza.classify(s - 1e-9, i + 1e-9), "at exactly 0.5"),
    (lambda s, i: pizza.classify(s, i).capitalize(), "one of the strings"),
    (lambda s, i: None, "return"),
])
def test_check_classify_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_classify, wrong)


def test_the_ideal_clock_and_pizza_are_classified_as_such():
    assert pizza.classify(0.0, 1.0) == "clock" and pizza.classify(1.0, 0.0) == "pizza"
    assert pizza.classify(1.0, 1.0) == pizza.classify(0.0, 0.0) == "neither"
