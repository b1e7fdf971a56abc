"""Chapter 9's runs and measurements: the variants of a baseline it compares (weight decay or not, StableMax,
⊥Grad, Grokfast and its learning-rate control, ungrokking) and softmax collapse over a run's checkpoints.

The variants are functions of the baseline's TrainConfig, so tests/test_why_slow.py can check the chapter's claims
(utils.claims.why_slow) on runs the notebook never trains. (An analysis module: it changes configs with
dataclasses.replace and reads finished runs, but never imports the trainer.)
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pandas as pd
import torch

from utils.metrics import first_step
from utils.progress import batched_logits, stack_checkpoints
from utils.stability import answer_margin, collapsed_share, silent_share

if TYPE_CHECKING:
    from utils.train import Run, TrainConfig

__all__ = ["GROKFAST_ALPHA", "GROKFAST_LAMB", "UNGROK_SHARES", "no_decay_configs", "grokfast_configs",
           "ungrokking_configs", "collapse_curve", "grok_step", "seconds_to"]

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
