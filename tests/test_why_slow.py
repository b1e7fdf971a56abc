"""Chapter 9 (why grokking is slow): its measurements on planted logits, and its claims on runs it never trains.

The chapter trains utils.why_slow's variants of chapter 6's robustness recipe with p = 59, seed 0; here the same
runs train with seed 1, and utils.why_slow.claims must hold on them too. A claim that fails here is a claim about
one run: restate it (and the chapter's prose), never tune it to these runs.
"""
from __future__ import annotations

import math

import pytest
import torch

from utils import stability, why_slow
from utils.train import get_runs, robustness_config

P, SEED, CAP, GROKFAST_CAP, UNGROK_STEPS = 59, 1, 2500, 2000, 1000  # the chapter's settings but the seed


# --- the measurements -----------------------------------------------------------------------------------------
def test_the_float32_collapse_margin_is_about_ln_p_minus_1_plus_24_ln_2():
    p = 59
    margins = torch.arange(0.0, 40.0, 0.01, dtype=torch.float64)
    logits = torch.zeros(len(margins), p, dtype=torch.float64)
    logits[:, 0] = margins
    labels = torch.zeros(len(margins), dtype=torch.long)
    collapsed = torch.stack([stability.collapsed_share(row[None], labels[:1]) for row in logits]) == 1
    edge = margins[collapsed][0].item()
    assert abs(edge - (math.log(p - 1) + 24 * math.log(2))) < 1.0
    assert collapsed[margins >= edge].all()  # and it stays collapsed beyond


def test_silent_share_counts_inputs_whose_float32_gradient_underflows_in_the_float64_loss():
    n_inputs = 4
    logits = torch.zeros(n_inputs, 5, dtype=torch.float64)
    logits[:, 0] = torch.tensor([30.0, 80.0, 95.0, 200.0])  # float32 collapses all; the gradient dies past ~88
    labels = torch.zeros(n_inputs, dtype=torch.long)
    assert stability.collapsed_share(logits, labels).item() == 1.0
    assert stability.silent_share(logits, labels).item() == pytest.approx(2 / 4)
    # the same logits for a wrong label are never silent: a wrong answer has a large gradient
    assert stability.silent_share(logits, torch.ones(n_inputs, dtype=torch.long)).item() == 0.0


def test_silent_share_matches_the_trainers_own_gradient():
    from utils.metrics import cross_entropy
    from utils.train.loop import _FlushSubnormalGrad

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g) * 2
    labels = torch.randint(7, (50,), generator=g)
    logits[torch.arange(50), labels] += torch.linspace(0, 120, 50)  # margins from small to beyond the flush
    x = logits.clone().requires_grad_(True)
    cross_entropy(_FlushSubnormalGrad.apply(x), labels).backward()
    zero_rows = (x.grad == 0).all(-1).double().mean().item()
    assert stability.silent_share(logits, labels).item() == pytest.approx(zero_rows)


def test_answer_margin_is_the_answers_lead_over_the_best_other_answer():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    margins = stability.answer_margin(logits, torch.tensor([0, 0]))
    torch.testing.assert_close(margins, torch.tensor([1.0, -5.0], dtype=torch.float64))


def test_grokfast_filter_is_gradient_ema_applied_step_by_step():
    grads = torch.tensor([[1.0], [3.0], [-1.0]])
    out = stability.grokfast_filter(grads, alpha=0.5, lamb=2.0)
    torch.testing.assert_close(out, torch.tensor([[3.0], [7.0], [0.0]]))  # averages 1, 2, 0.5


def test_the_variants_differ_from_the_baseline_only_where_they_say():
    base = robustness_config(P, SEED, steps=CAP)
    no_decay = why_slow.no_decay_configs(base)
    assert {c.weight_decay for c in no_decay.values()} == {0.0}
    assert [c.loss for c in no_decay.values()] == ["cross_entropy", "stablemax", "cross_entropy"]
    assert [c.orthogonal_grad for c in no_decay.values()] == [False, False, True]
    fast = list(why_slow.grokfast_configs(base).values())
    assert fast[0] == base and fast[1].grokfast_lamb == why_slow.GROKFAST_LAMB
    assert fast[2].lr == pytest.approx(base.lr * (1 + why_slow.GROKFAST_LAMB)) and fast[2].grokfast_lamb == 0


# --- the claims on another seed --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unseen():
    base_config = robustness_config(P, SEED, steps=GROKFAST_CAP)  # the chapter's baseline, another seed
    [baseline] = get_runs([base_config], progress=False)
    no_decay_configs = why_slow.no_decay_configs(robustness_config(P, SEED, steps=CAP))
    no_decay = dict(zip(no_decay_configs, get_runs(list(no_decay_configs.values()), progress=False)))
    grokfast = {name: get_runs([config], progress=False)[0]
                for name, config in why_slow.grokfast_configs(base_config).items()}
    children = get_runs(why_slow.ungrokking_configs(baseline, UNGROK_STEPS), progress=False)
    return no_decay, grokfast, children


def test_chapter_9_claims_hold_on_a_seed_the_chapter_never_trains(unseen):
    no_decay, grokfast, children = unseen
    found = why_slow.claims(no_decay, grokfast, children)
    print(found)  # pytest shows it when a claim fails
    assert found.hold(), found.failures()


def test_collapse_curve_reads_every_checkpoint_and_ends_collapsed_without_weight_decay(unseen):
    no_decay, _, _ = unseen
    run = no_decay["cross-entropy"]
    curve = why_slow.collapse_curve(run)
    assert list(curve.step) == run.checkpoint_steps
    assert curve.collapsed.iloc[0] == 0.0 and curve.collapsed.iloc[-1] >= 0.99
    assert (curve.silent <= curve.collapsed).all()  # silent in float64 implies collapsed in float32
