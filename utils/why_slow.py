"""Chapter 9's runs and measurements: the variants of a baseline it compares (weight decay or not, StableMax,
⊥Grad, Grokfast and its learning-rate control, ungrokking) and softmax collapse over a run's checkpoints.

The variants are functions of the baseline's TrainConfig, so tests/test_why_slow.py can check the chapter's claims
(`claims`, at the end; in utils.claims's form) on runs the notebook never trains. (An analysis module: it changes configs with
dataclasses.replace and reads finished runs, but never imports the trainer.)
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import pandas as pd
import torch

from utils.claims import Claim, Claims
from utils.metrics import first_step
from utils.progress import batched_logits, stack_checkpoints
from utils.stability import answer_margin, collapsed_share, silent_share

if TYPE_CHECKING:
    from utils.train import Run, TrainConfig

__all__ = ["GROKFAST_ALPHA", "GROKFAST_LAMB", "UNGROK_SHARES", "no_decay_configs", "grokfast_configs",
           "ungrokking_configs", "collapse_curve", "grok_step", "seconds_to", "collapse_claims", "grokfast_claims",
           "ungrokking_claims", "claims"]

GROKFAST_ALPHA, GROKFAST_LAMB = 0.98, 2.0  # Grokfast's published defaults (Lee et al. 2024, the EMA filter)
UNGROK_SHARES = (0.6, 0.4, 0.25, 0.15)  # shares of the grokked run's training pairs its children keep


def no_decay_configs(base: TrainConfig) -> dict[str, TrainConfig]:
    """The baseline without weight decay, trained three ways: plain cross-entropy, StableMax, ⊥Grad."""
    plain = dataclasses.replace(base, weight_decay=0.0)
    return {"cross-entropy": plain,
            "StableMax": dataclasses.replace(plain, loss="stablemax"),
            "⊥Grad": dataclasses.replace(plain, orthogonal_grad=True)}


def grokfast_configs(base: TrainConfig) -> dict[str, TrainConfig]:
    """The baseline, with Grokfast's filter, and the control: the baseline with its lr × (1 + λ)."""
    return {"baseline": base,
            "Grokfast": dataclasses.replace(base, grokfast_lamb=GROKFAST_LAMB, grokfast_alpha=GROKFAST_ALPHA),
            f"lr × {1 + GROKFAST_LAMB:g}": dataclasses.replace(base, lr=base.lr * (1 + GROKFAST_LAMB))}


def ungrokking_configs(parent: Run, steps: int, shares: tuple[float, ...] = UNGROK_SHARES) -> list[TrainConfig]:
    """Continue the finished run `parent` from its final weights on the first `share` of its training pairs, for
    a fixed number of steps (no stop rule: its test accuracy starts at the top), same optimiser settings."""
    return [dataclasses.replace(parent.config, init_from=parent.run_dir.name, keep_train=share, steps=steps,
                                stop_margin=0) for share in shares]


@torch.no_grad()
def collapse_curve(run: Run, steps: list[int] | None = None) -> pd.DataFrame:
    """Per checkpoint (default: all): the share of training pairs collapsed in float32 (utils.stability), the share
    silent in the course's trainer (float64 loss, subnormal gradients flushed), and the median answer margin."""
    steps = run.checkpoint_steps if steps is None else steps
    _, labels = run.dataset()
    logits = batched_logits(stack_checkpoints(run, steps))  # [checkpoints, p², p]
    train = run.train_idx
    return pd.DataFrame({"step": steps,
                         "collapsed": collapsed_share(logits, labels, train).numpy(),
                         "silent": silent_share(logits, labels, train).numpy(),
                         "median margin": answer_margin(logits, labels, train).median(-1).values.numpy()})


def grok_step(run: Run, threshold: float = 0.99) -> int | None:
    """The first evaluated step with test accuracy ≥ threshold, or None."""
    return first_step(run.metrics, "test_acc", threshold)


def seconds_to(run: Run, step: int | None) -> float | None:
    """The run's training wall time (its own clock, elapsed_s) up to the evaluated step `step`."""
    if step is None:
        return None
    return float(run.metrics.set_index("step").elapsed_s[step])


# --- the chapter's claims (asserted by the notebook, and by tests/test_why_slow.py on another seed) -----------------
def _checkpoint_from(run: Run, step: int | None) -> int:
    """The first checkpoint at or after `step` (the last one if there is none, or if step is None)."""
    return min((s for s in run.checkpoint_steps if step is not None and s >= step), default=run.checkpoint_steps[-1])


def collapse_claims(no_decay: dict[str, Run], base: Run) -> list[Claim]:
    """Section 3: softmax collapse without weight decay, and what StableMax and ⊥Grad change."""
    plain, stable, orthogonal = (no_decay[k] for k in ("cross-entropy", "StableMax", "⊥Grad"))
    steps = {name: grok_step(run) for name, run in no_decay.items()}
    base_step, cap = grok_step(base), plain.config.steps
    at_grok = collapse_curve(base, [_checkpoint_from(base, base_step)]).iloc[0]
    end, end_orthogonal = (collapse_curve(r, [r.final_step]).iloc[0] for r in (plain, orthogonal))
    end_stable = collapse_curve(stable, [stable.final_step]).iloc[0]
    near = _checkpoint_from(orthogonal, steps["⊥Grad"])
    orthogonal_at_grok = collapse_curve(orthogonal, [near]).collapsed.iloc[0]
    return [
        Claim("without weight decay, ≥ 99% of the training pairs end collapsed in float32 (cross-entropy)",
              f"{end.collapsed:.1%} at step {plain.final_step}", end.collapsed >= 0.99),
        Claim("with weight decay, ≤ 5% are collapsed when test accuracy reaches 99%",
              f"{at_grok.collapsed:.1%} at step {int(at_grok.step)} (99% test accuracy at step {base_step})",
              base_step is not None and at_grok.collapsed <= 0.05),
        Claim("in the course's trainer (float64 loss) ≤ 1% of the no-decay run's pairs have a zero gradient",
              f"{end.silent:.1%}; median answer margin {end['median margin']:.1f}", end.silent <= 0.01),
        Claim("without weight decay, cross-entropy stays below 99% test accuracy in a cap ≥ 5× the baseline's step",
              f"{steps['cross-entropy']} within {cap} steps (baseline: {base_step})",
              steps["cross-entropy"] is None and base_step is not None and cap >= 5 * base_step),
        Claim("⊥Grad without weight decay reaches 99% test accuracy within the cap",
              f"step {steps['⊥Grad']} of {orthogonal.config.steps}", steps["⊥Grad"] is not None),
        Claim("… later than the baseline with weight decay", f"step {steps['⊥Grad']} vs {base_step}",
              None not in (steps["⊥Grad"], base_step) and steps["⊥Grad"] > base_step),
        Claim("… its pairs collapse in float32 too (≥ 99% at the end), with live gradients in ours (≤ 1% silent)",
              f"{end_orthogonal.collapsed:.1%} collapsed, {end_orthogonal.silent:.1%} silent",
              end_orthogonal.collapsed >= 0.99 and end_orthogonal.silent <= 0.01),
        Claim("… and ≥ 50% had collapsed in float32 by the first checkpoint at which it reached 99% test accuracy",
              f"{orthogonal_at_grok:.1%} at step {near}", orthogonal_at_grok >= 0.5),
        Claim("StableMax without weight decay does not reach 99% test accuracy in the cap (not reproduced)",
              f"{steps['StableMax']}; final test accuracy {stable.metrics.test_acc.iloc[-1]:.1%}",
              steps["StableMax"] is None),
        Claim("… while its logits grow: its median answer margin ends ≥ 10× cross-entropy's",
              f"{end_stable['median margin']:.3g} vs {end['median margin']:.3g}",
              end_stable["median margin"] >= 10 * end["median margin"]),
    ]


def grokfast_claims(grokfast: dict[str, Run]) -> list[Claim]:
    """Section 4: Grokfast against the baseline and the learning-rate control (grokfast_configs' runs)."""
    (base_name, base), (_, filtered), (control_name, control) = grokfast.items()
    steps = {name: grok_step(run) for name, run in grokfast.items()}
    base_step, filter_step, control_step = steps[base_name], steps["Grokfast"], steps[control_name]
    speedup = (base_step or math.inf) / (filter_step or math.inf) if filter_step or base_step else 1.0
    return [
        Claim("Grokfast speeds the baseline up by at most 1.5× in steps to 99% test accuracy",
              f"{speedup:.2f}× (steps {base_step} → {filter_step})", speedup <= 1.5),
        Claim(f"the control ({control.config.lr / base.config.lr:g}× the lr) reaches 99% no later than Grokfast",
              f"step {control_step} vs {filter_step}",
              control_step is not None and (filter_step is None or control_step <= filter_step)),
    ]


def ungrokking_claims(children: list[Run]) -> list[Claim]:
    """Section 5: the grokked baseline continued on fewer pairs (ungrokking_configs' runs)."""
    finals = sorted(((c.config.n_train(), c.metrics.test_acc.iloc[-1], c.metrics.train_acc.iloc[-1])
                     for c in children), reverse=True)  # largest training set first
    falls = all(later <= earlier + 0.01 for (_, earlier, _), (_, later, _) in zip(finals, finals[1:]))
    return [
        Claim("continued on the largest subset, the grokked model keeps ≥ 99% test accuracy",
              f"{finals[0][1]:.1%} on {finals[0][0]} pairs", finals[0][1] >= 0.99),
        Claim("continued on the smallest subset, it ungroks: test accuracy ends below 50%",
              f"{finals[-1][1]:.1%} on {finals[-1][0]} pairs", finals[-1][1] < 0.5),
        Claim("… while it still fits every subset (training accuracy ≥ 99%)",
              f"lowest {min(f[2] for f in finals):.1%}", min(f[2] for f in finals) >= 0.99),
        Claim("the less data, the lower the final test accuracy (never 1 point higher on a smaller subset)",
              ", ".join(f"{n}: {acc:.1%}" for n, acc, _ in finals), falls),
    ]


def claims(no_decay: dict[str, Run], grokfast: dict[str, Run], children: list[Run]) -> Claims:
    """Chapter 9's claims: no_decay and grokfast are the runs of no_decay_configs and grokfast_configs by name (the
    latter's first run is the baseline), children those of ungrokking_configs."""
    base = next(iter(grokfast.values()))
    return Claims(collapse_claims(no_decay, base) + grokfast_claims(grokfast) + ungrokking_claims(children))
