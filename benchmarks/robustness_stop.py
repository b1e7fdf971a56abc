"""What chapter 6's robustness runs look like where its stop rule ends them, on moduli and seeds it never trains.

    nice -n 10 .venv/bin/python benchmarks/robustness_stop.py   # writes benchmarks/results/robustness_stop.json
    .venv/bin/python benchmarks/robustness_stop.py --table      # print the table (Markdown) from that file
    .venv/bin/python benchmarks/robustness_stop.py --readme     # write that table into README.md

Each pair trains chapter 6's recipe (utils.train.robustness_config) alone, without the stop rule, for STEPS steps
with a checkpoint at every evaluation; then utils.train.should_stop, given the metrics up to each evaluation, finds
where ROBUSTNESS_STOP would have ended the run (stopping changes nothing before it). Columns: the outcome there
(utils.outcomes), the run's key frequencies and the variance the cosine form Σ_k α_k cos(w_k(a+b−c)) explains
(utils.mechanism, as chapter 6's table), and the lowest and final variance explained from the first step with
test accuracy ≥ 99% to STEPS. The pairs are fixed in advance: the chapter's six (which it trains batched, so
their trajectories differ from these in float rounding) and eight others; tests/test_claims.py uses none of them.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import (answer_from_file, machine, machine_words, replace_block,  # noqa: E402
                               sweep_arguments)
from utils.fourier import key_frequencies  # noqa: E402
from utils.mechanism import logit_variance_explained  # noqa: E402
from utils.outcomes import first_step, outcome  # noqa: E402
from utils.train import ROBUSTNESS_MODULI, ROBUSTNESS_STOP, robustness_config, should_stop, train_many  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "robustness_stop.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- robustness_stop table: begin (benchmarks/robustness_stop.py --readme) -->", \
    "<!-- robustness_stop table: end -->"
PAIRS = [(89, 0), (89, 1), (89, 2), (97, 0), (97, 1), (97, 2), (83, 3), (101, 1), (101, 4), (103, 2), (107, 0),
         (89, 5), (97, 6), (79, 1)]
STEPS = 2400


def stop_step(config, metrics) -> int | None:
    """The first evaluated step at which the stop rule `config` ends a run with these metrics, or None."""
    history = {c: [] for c in ("step", "test_acc", "test_loss")}
    for row in metrics.itertuples():
        for c in history:
            history[c].append(getattr(row, c))
        if should_stop(config, history):
            return int(row.step)
    return None


def measure(p: int, seed: int, out: Path) -> dict:
    """Train one pair without early stop (or load it from `out`) and read it where the stop rule would end it."""
    config = robustness_config(p, seed, steps=STEPS, stop_margin=0, checkpoint_every=20)
    start = time.perf_counter()
    [run] = train_many([config], [out], progress=False)
    m = run.metrics
    stop = stop_step(robustness_config(p, seed, **ROBUSTNESS_STOP), m)
    generalised = first_step(m, "test_acc", 0.99)
    explained = {}
    with torch.no_grad():
        for step in run.checkpoint_steps:
            if generalised is not None and step >= generalised:
                model = run.model_at(step)
                keys = key_frequencies(model)
                explained[step] = (logit_variance_explained(model, keys), sorted(keys))
    row = {"p": p, "seed": seed, "test_99_at": generalised, "stop_at": stop,
           "wall_s": round(time.perf_counter() - start, 1)}
    if stop is not None:
        row.update(outcome=outcome(m[m.step <= stop]), explained=explained[stop][0], keys=explained[stop][1])
    if explained:
        row.update(lowest=min(v for v, _ in explained.values()), final=explained[max(explained)][0])
    return row


def table(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = ["| p | seed | test ≥ 99% at | stop rule ends it at | outcome there | key frequencies there | "
             "variance explained there | lowest after test ≥ 99% | at step " + f"{STEPS:,} |",
             "|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        if r["stop_at"] is None:
            lines.append(f"| {r['p']} | {r['seed']} | {r['test_99_at']} | not within {STEPS:,} | | | | | |")
            continue
        lines.append(f"| {r['p']} | {r['seed']} | {r['test_99_at']} | {r['stop_at']} | {r['outcome']} | "
                     f"{r['keys']} | {r['explained']:.3f} | {r['lowest']:.3f} | {r['final']:.3f} |")
    return "\n".join(lines)


def readme_with_table(text: str, result: dict) -> str:
    """README.md's text with the block between BEGIN and END replaced by the results' table."""
    note = (f"Measured by `benchmarks/robustness_stop.py`, read from `benchmarks/results/robustness_stop.json` "
            f"({machine_words(result)}; {result['steps']:,} steps per run).")
    return replace_block(text, BEGIN, END, f"{note}\n\n{table(result['rows'])}")


def main() -> int:
    args = sweep_arguments(__doc__)
    if answer_from_file(args, RESULTS, README, table, readme_with_table):
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)  # with --keep, a rerun loads the finished runs
        for p, seed in PAIRS:
            rows.append(measure(p, seed, folder / f"p{p}_s{seed}"))
            print(json.dumps(rows[-1]), flush=True)
    recipe = robustness_config(ROBUSTNESS_MODULI[0], 0, **ROBUSTNESS_STOP).to_dict()
    result = {"recipe": {k: v for k, v in recipe.items() if k not in ("p", "seed")},
              "steps": STEPS, "machine": {**machine(), "cores": os.cpu_count()}, "rows": rows}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
