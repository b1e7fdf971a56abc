"""What became of a run — grokked, memorised only, generalised at once, or not fitted — read off its metrics table
(utils.train's `Run.metrics`: step, train/test loss and accuracy) by the rule in `outcome`.

(Chapter 6's other tool, the Fourier algorithm for subtraction, is utils.mechanism's with op="subtract".)
"""
from __future__ import annotations

import pandas as pd

from utils.metrics import first_step

__all__ = ["OUTCOMES", "MEMORISED_AT", "HALF_TEST_AT", "GENERALISED_AT", "PLATEAU_FACTOR", "first_step", "outcome"]

# --- outcomes ----------------------------------------------------------------------------------------------------
OUTCOMES = ("grokked", "memorised only", "generalised at once", "not fitted")
MEMORISED_AT, HALF_TEST_AT, GENERALISED_AT = 0.99, 0.5, 0.99  # accuracy thresholds
PLATEAU_FACTOR = 2  # grokked: test accuracy reaches 50% only after PLATEAU_FACTOR × the steps memorising took


def outcome(metrics: pd.DataFrame) -> str:
    """What a run did, one of OUTCOMES, by this rule (m: first step with train accuracy ≥ 99%; h: first step with
    test accuracy ≥ 50%):
    - "not fitted": train accuracy never reached 99%;
    - "memorised only": it did, but the final test accuracy is below 99%;
    - "generalised at once": final test accuracy ≥ 99% and h ≤ 2m (no plateau: test follows train);
    - "grokked": final test accuracy ≥ 99% after a plateau: h > 2m.
    """
    memorised = first_step(metrics, "train_acc", MEMORISED_AT)
    if memorised is None:
        return "not fitted"
    if metrics.test_acc.iloc[-1] < GENERALISED_AT:
        return "memorised only"
    half_test = first_step(metrics, "test_acc", HALF_TEST_AT)
    return "generalised at once" if half_test <= PLATEAU_FACTOR * max(memorised, 1) else "grokked"
