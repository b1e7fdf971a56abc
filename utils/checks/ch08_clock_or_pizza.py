"""Checks for chapter 8 (clock or pizza): the attention-rate mix, the gradients' cosines, distance irrelevance and
the classification."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from utils import pizza as _pizza
from utils.checks.compare import Mistakes, expect_number, expect_tensor, explaining_mistake
from utils.checks.harness import call, call_given, describe, fail, guarded, none_hint, passed
from utils.checks.inputs import random_model
from utils.model import attention_rate_hook, set_attention_rate, uniform_attention

__all__ = ["check_mix_attention", "check_gradient_cosines", "check_distance_irrelevance", "check_classify"]


# --- the attention rate ---------------------------------------------------------------------------------------
def _patterns(seed: int, n_ctx: int) -> torch.Tensor:
    """Causal softmax patterns [8, 2 heads, n_ctx (query), n_ctx (key)] with random scores (a fixed seed)."""
    scores = torch.randn(8, 2, n_ctx, n_ctx, generator=torch.Generator().manual_seed(seed))
    masked = scores.masked_fill(~torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril(), -math.inf)
    return masked.softmax(-1)


def _mix_mistakes(pattern: torch.Tensor, alpha: float) -> Mistakes:
    n_ctx = pattern.shape[-1]
    uniform = uniform_attention(n_ctx).to(pattern)
    return [
        ("uniform attention is causal: query q spreads its weight over keys 0 … q only (1/(q+1) each), not over "
         "every key; utils.model.uniform_attention(n_ctx) builds it.",
         lambda: alpha * pattern + (1 - alpha) / n_ctx),
        ("α weighs the model's own pattern: α·pattern + (1 − α)·uniform (you swapped the two weights).",
         lambda: (1 - alpha) * pattern + alpha * uniform),
        ("divide each row of the uniform pattern by its number of allowed keys (q + 1), so that it sums to 1.",
         lambda: alpha * pattern + (1 - alpha) * torch.ones(n_ctx, n_ctx).tril().to(pattern)),
        ("mix the two patterns (α·pattern + (1 − α)·uniform); do not replace one by the other.",
         lambda: uniform.expand_as(pattern) if alpha < 1 else pattern),
    ]


@guarded("mix_attention")
def check_mix_attention(fn: Callable) -> None:
    """fn(pattern [batch, head, query, key], alpha) -> α·pattern + (1 − α)·causal uniform attention, same shape."""
    __tracebackhide__ = True
    name = "mix_attention"
    for seed, n_ctx, alpha in [(0, 3, 0.3), (1, 3, 0.0), (2, 3, 1.0), (3, 5, 0.75)]:
        pattern = _patterns(seed, n_ctx)
        on = (f"softmax patterns of 8 inputs × 2 heads over {n_ctx} positions (causal: row q has keys 0 … q), "
              f"alpha = {alpha}")
        got = call(name, fn, pattern, alpha, on=on, names=["pattern", "alpha"])
        want = attention_rate_hook(alpha)(pattern, None)
        expect_tensor(name, got, want, what="the mixed pattern", on=on, rtol=1e-6, atol=1e-7, dtype="exact",
                      mistakes=_mix_mistakes(pattern, alpha),
                      dtype_hint="keep the pattern's dtype: build the uniform pattern with .to(pattern).")
    passed("mix_attention blends the model's pattern with causal uniform attention: α = 1 leaves it as it is, "
           "α = 0 makes every query average its allowed keys evenly.")


# --- gradient symmetricity -------------------------------------------------------------------------------------
def _embedding_gradients(model, a, b, c, *, position_b: int = 1, target: str = "logit"):
    """utils.pizza.embedding_gradients with one knob per plausible mistake (the defaults give the reference)."""
    p = model.cfg.d_vocab_out
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    leaf: list[torch.Tensor] = []

    def capture(embed, hook):
        leaf.append(embed.detach().requires_grad_(True))
        return leaf[0]

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", capture)])[:, -1]
        if target == "all logits":
            value = logits.sum()
        elif target == "log-prob":
            value = logits.log_softmax(-1).gather(1, c[:, None]).sum()
        else:
            value = logits.gather(1, c[:, None]).sum()
        (grad,) = torch.autograd.grad(value, leaf[0])
    return grad[:, 0].double(), grad[:, position_b].double()


def _row_gradients(model, a, b, c):
    """The gradient with respect to W_E's rows a and b, one triple at a time (wrong when a = b: one row, two uses)."""
    p = model.cfg.d_vocab_out
    out = []
    for x, y, z in zip(a.tolist(), b.tolist(), c.tolist()):
        model.zero_grad()
        with torch.enable_grad():
            model(torch.tensor([[x, y, p]]))[0, -1, z].backward()
        grad = model.W_E.grad
        out.append(F.cosine_similarity(grad[x].double(), grad[y].double(), dim=0))
    model.zero_grad()
    return torch.stack(out)


def _sharp_model(seed: int):
    """A small random model whose attention depends strongly on the inputs (W_Q, W_K scaled up), so that the
    gradients with respect to a's and b's embeddings differ (at initialisation they are nearly equal)."""
    model = random_model(11, seed, d_mlp=32, d_model=16, n_heads=2)
    with torch.no_grad():
        model.blocks[0].attn.W_Q.mul_(8)
        model.blocks[0].attn.W_K.mul_(8)
    return model


def _cosine_mistakes(model, a, b, c) -> Mistakes:
    cos = lambda pair: F.cosine_similarity(*pair, dim=-1)  # noqa: E731
    return [
        ("differentiate the logit of the answer c (logits[:, -1].gather(1, c[:, None])), not the sum of all logits.",
         lambda: cos(_embedding_gradients(model, a, b, c, target="all logits"))),
        ("differentiate the logit of c itself, not its log-probability (log_softmax): the measure is about the "
         "logit.", lambda: cos(_embedding_gradients(model, a, b, c, target="log-prob"))),
        ("b is the token at position 1; position 2 holds '='.",
         lambda: cos(_embedding_gradients(model, a, b, c, position_b=2))),
        ("keep the sign: the cosine similarity itself, not its absolute value.",
         lambda: cos(_embedding_gradients(model, a, b, c)).abs()),
        ("when a = b, W_E's row a collects the gradients of BOTH positions: take the gradient with respect to the "
         "embedding at each position (a hook on hook_embed), not with respect to W_E's rows.",
         lambda: _row_gradients(model, a, b, c)),
    ]


@guarded("gradient_cosines")
def check_gradient_cosines(fn: Callable) -> None:
    """fn(model, a [n], b [n], c [n]) -> the cosine similarity of ∂logit_c/∂E_a and ∂logit_c/∂E_b per triple: [n]
    float64."""
    __tracebackhide__ = True
    name = "gradient_cosines"
    for seed, alpha in [(3, 1.0), (4, 0.4), (5, 0.0)]:
        model = set_attention_rate(_sharp_model(seed), alpha)
        a, b, c = _pizza.random_triples(11, 40, seed)
        a[:3] = b[:3]  # a few inputs with a = b
        on = (f"a small random model with sharp attention (p = 11, attention rate α = {alpha}), 40 triples (a, b, c), "
              "three with a = b")
        want = _pizza.gradient_cosines(model, a, b, c)
        got, (given, *_) = call_given(name, fn, model, a, b, c, on=on, names=["model", "a", "b", "c"])
        if given.hook_dict["hook_embed"]._forward_hooks:
            fail(name, "left a hook on the model's hook_embed.", on,
                 "use model.run_with_hooks(tokens, fwd_hooks=[...]), which removes its hooks when it returns.")
        if isinstance(got, torch.Tensor) and got.ndim == 0:
            fail(name, f"returned one number ({describe(got)}); expected one cosine per triple, shape [{len(a)}].",
                 on, "return the cosines themselves; the notebook averages them (that mean is the symmetricity).")
        expect_tensor(name, got, want, what="the cosines", on=on, rtol=1e-4, atol=1e-5, detached=True,
                      mistakes=_cosine_mistakes(model, a, b, c))
    passed("gradient_cosines compares ∂logit_c/∂E_a with ∂logit_c/∂E_b for each triple: they are equal (cosine 1) "
           "when attention ignores the inputs, and differ when it does not.")


# --- distance irrelevance --------------------------------------------------------------------------------------
def _planted_correct(p: int, kind: str, seed: int) -> torch.Tensor:
    """A [p, p] grid of 'correct logits': a function of a − b, of a + b, noise, or a mix (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(p, dtype=torch.float64)
    a, b = x[:, None], x[None, :]
    noise = torch.randn(p, p, generator=g, dtype=torch.float64)
    shape = {"a − b": torch.cos(math.pi * 3 * (a - b) / p).abs() * 4 + 0.3 * noise,
             "a + b": torch.cos(2 * math.pi * 2 * (a + b) / p) * 3 + 0.2 * noise,
             "noise": 5 + noise,
             "a − b and a": torch.cos(2 * math.pi * (a - b) / p) * 2 + torch.sin(2 * math.pi * 2 * a / p)
             + 0.1 * noise}[kind]
    return shape + 10


def _irrelevance(correct: torch.Tensor, *, key: str = "a - b", std: str = "std", correction: int = 0,
                 between: bool = False, inverted: bool = False) -> float:
    """Distance irrelevance with one knob per plausible mistake (the defaults give the reference)."""
    p = correct.shape[0]
    x = torch.arange(p)
    group = {"a - b": (x[:, None] - x[None, :]) % p, "a + b": (x[:, None] + x[None, :]) % p}[key]
    spread = (lambda v: v.std(correction=correction)) if std == "std" else (lambda v: v.var(correction=correction))
    groups = [correct[group == d] for d in range(p)]
    inner = (torch.stack([g.mean() for g in groups]).std(correction=correction) if between
             else torch.stack([spread(g) for g in groups]).mean())
    ratio = inner / spread(correct.flatten())
    return float(1 / ratio if inverted else ratio)


_IRRELEVANCE_MISTAKES = [
    ("group the pairs by their distance d = (a − b) mod p, not by a + b.", dict(key="a + b")),
    ("use the standard deviation (.std()), not the variance.", dict(std="var")),
    ("divide the average within-distance std by the std over ALL pairs (your ratio is upside down).",
     dict(inverted=True)),
    ("average the std WITHIN each distance group; you took the std of the groups' means (how much the mean "
     "changes with d).", dict(between=True)),
]


@guarded("distance_irrelevance")
def check_distance_irrelevance(fn: Callable) -> None:
    """fn(correct [p, p] float64) -> the mean over d of the std of the correct logits with (a − b) mod p = d, divided
    by their std over all pairs (a Python float). Either std convention (numpy's, or torch's unbiased) is accepted."""
    __tracebackhide__ = True
    name = "distance_irrelevance"
    cases = [(f"correct logits over a {p} × {p} grid that depend on {kind}", _planted_correct(p, kind, seed))
             for seed, (p, kind) in enumerate([(11, "a − b"), (13, "a + b"), (7, "noise"), (23, "a − b and a")])]
    answers = []
    for on, correct in cases:
        got = call(name, fn, correct, on=on, names=["correct"])
        if isinstance(got, float) and math.isnan(got):
            fail(name, "returned nan.", on, "a group with a single pair has no spread (its unbiased std is nan): "
                 "take the distance mod p, (a - b) % p, so that each of the p distances has p pairs.")
        answers.append(expect_number(name, got, _irrelevance(correct), what="the distance irrelevance", on=on,
                                     atol=math.inf))
    for (on, correct), got in zip(cases, answers):
        if min(abs(got - _irrelevance(correct, correction=k)) for k in (0, 1)) > 1e-9:
            variants = [(hint, [_irrelevance(x, correction=k, **knobs) for _, x in cases])
                        for hint, knobs in _IRRELEVANCE_MISTAKES for k in (0, 1)]
            hint = explaining_mistake(answers, variants, lambda g, w: abs(g - w) <= 1e-6)
            fail(name, f"the distance irrelevance = {got:.6g}; expected {_irrelevance(correct):.6g}.", on, hint)
    passed("distance_irrelevance is low when the correct logit is a function of a − b and near 1 when it is not.")


# --- clock or pizza --------------------------------------------------------------------------------------------
def _classify_rule(s: float, i: float, *, s_only: bool = False, i_only: bool = False, flip_i: bool = False,
                   inclusive: bool = False) -> str:
    """utils.pizza.classify with one knob per plausible mistake (the defaults give the rule itself)."""
    cut_s, cut_i = _pizza.SYMMETRICITY_CUT, _pizza.IRRELEVANCE_CUT
    clock_s = s <= cut_s if inclusive else s < cut_s
    clock_i = (i < cut_i if flip_i else (i >= cut_i if inclusive else i > cut_i))
    if s_only:
        clock_i = clock_s
    if i_only:
        clock_s = clock_i
    return "clock" if clock_s and clock_i else "pizza" if not (clock_s or clock_i) else "neither"


_CLASSIFY_MISTAKES = [
    ("use both measures: a model whose two measures point to different algorithms is 'neither'.",
     dict(s_only=True)),
    ("use both measures: gradient symmetricity too, not distance irrelevance alone.", dict(i_only=True)),
    ("a clock's correct logit IGNORES a − b: high distance irrelevance (> 0.5) is the clock's, low the pizza's.",
     dict(flip_i=True)),
    ("at exactly 0.5 a measure is not on the clock's side: the clock needs symmetricity < 0.5 and irrelevance "
     "> 0.5 (strict).", dict(inclusive=True)),
]


@guarded("classify")
def check_classify(fn: Callable[[float, float], str]) -> None:
    """fn(symmetricity, irrelevance) -> "clock", "pizza" or "neither" by the rule in utils.pizza.classify."""
    __tracebackhide__ = True
    name = "classify"
    values = [(0.1, 0.9), (0.98, 0.2), (1.0, 0.7), (0.2, 0.3), (0.5, 0.8), (0.3, 0.5), (0.6, 0.5), (0.0, 1.0),
              (0.49, 0.51)]
    answers = []
    for s, i in values:
        on = f"symmetricity {s}, irrelevance {i}"
        got = call(name, fn, s, i, on=on, names=["symmetricity", "irrelevance"])
        if not isinstance(got, str) or got not in _pizza.KINDS:
            fail(name, f"returned {describe(got)}; expected one of the strings {list(_pizza.KINDS)}.", on,
                 none_hint(got) or f"return exactly one of those strings, e.g. {_pizza.classify(s, i)!r}.")
        answers.append(got)
    for (s, i), got in zip(values, answers):
        want = _pizza.classify(s, i)
        if got != want:
            variants = [(hint, [_classify_rule(*v, **knobs) for v in values]) for hint, knobs in _CLASSIFY_MISTAKES]
            fail(name, f"returned {got!r}; expected {want!r}.", f"symmetricity {s}, irrelevance {i}",
                 explaining_mistake(answers, variants, lambda g, w: g == w))
    passed(f"classify names the clock, the pizza and the in-between cases right on all {len(values)} inputs, "
           "the cuts at 0.5 included.")
