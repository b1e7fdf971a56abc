"""Does the workshop preset grok for any modulus and seed? Train (p, seed) pairs with the learner's command and
tabulate what happened.

    nice -n 10 .venv/bin/python benchmarks/sweep_presets.py      # writes benchmarks/results/sweep_presets.json
    .venv/bin/python benchmarks/sweep_presets.py --table          # print the table (Markdown) from that file
    .venv/bin/python benchmarks/sweep_presets.py --readme         # write that table into README.md

Each pair runs `python -m utils.train --preset workshop --p P --seed S --out DIR` in its own process (compiled, as
a learner runs it; wall time includes start-up and compilation), then reads the run back. Columns: steps to
memorise (train accuracy ≥ 99%), to grok (test accuracy ≥ 99.9%), their ratio (the plateau, in memorisation
times), where utils.progress.phase_boundaries puts the end of cleanup, the step the trainer stopped at and why,
wall time, and utils.outcomes.outcome. The pairs are fixed in advance: primes from 59 to 127, several seeds, never
p = 113 with seed 0 (the course's own run, on which the preset was first chosen).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import answer_from_file, machine, replace_block, sweep_arguments  # noqa: E402
from utils.outcomes import first_step, outcome  # noqa: E402
from utils.progress import phase_boundaries  # noqa: E402
from utils.train import TrainConfig, load_run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sweep_presets.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- sweep_presets table: begin (benchmarks/sweep_presets.py --readme) -->", \
    "<!-- sweep_presets table: end -->"
PAIRS = [(97, 3), (59, 0), (59, 3), (61, 1), (67, 2), (71, 0), (73, 3), (79, 1), (83, 2), (89, 4), (97, 5),
         (101, 1), (103, 0), (107, 2), (109, 4), (113, 1), (113, 3), (127, 0), (127, 2)]  # (97, 3): issue 12's
MEMORISED, GROKKED = 0.99, 0.999


def measure(p: int, seed: int, out: Path) -> dict:
    """Train one pair with the CLI and summarise its run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "utils.train", "--preset", "workshop", "--p", str(p), "--seed",
                           str(seed), "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"p": p, "seed": seed, "error": done.stderr[-1500:], "wall_s": round(wall, 1)}
    run = load_run(out)
    m = run.metrics
    memorised, grokked = first_step(m, "train_acc", MEMORISED), first_step(m, "test_acc", GROKKED)
    try:
        cleanup_end = phase_boundaries(m.step, m.test_loss).cleanup_end
    except ValueError:
        cleanup_end = None
    return {"p": p, "seed": seed, "train_pairs": len(run.train_idx), "memorised_at": memorised, "grokked_at": grokked,
            "plateau_ratio": round(grokked / memorised, 1) if grokked and memorised else None,
            "cleanup_end": cleanup_end, "stopped_at": run.final_step, "stop_reason": run.stop_reason,
            "final_test_acc": float(m.test_acc.iloc[-1]),
            "wall_s": round(wall, 1),  # this process only (for a resumed run, its last part)
            "training_s": round(float(m.elapsed_s.iloc[-1]), 1), "outcome": outcome(m)}


def table(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = ["| p | seed | train pairs | memorised (train ≥ 99%) | grokked (test ≥ 99.9%) | plateau ratio | "
             "cleanup ends | stopped at (why) | final test accuracy | training s |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['p']} | {r['seed']} | | error | | | | | | {r['wall_s']:.0f} |")
            continue
        ratio = f"{r['plateau_ratio']}×" if r["plateau_ratio"] else "—"
        lines.append(f"| {r['p']} | {r['seed']} | {r.get('train_pairs', '?')} | {r['memorised_at']} | "
                     f"{r['grokked_at'] or 'never'} | {ratio} | {r['cleanup_end']} | {r['stopped_at']:,} "
                     f"({r['stop_reason']}) | {r['final_test_acc']:.2%} | {r['training_s']:.0f} |")
    return "\n".join(lines)


def summary(result: dict) -> str:
    """One sentence under the table: how many pairs grokked, and where it ran."""
    m = result["machine"]
    return (f"{result['grokked']} of {result['pairs']} pairs grokked ({result['pairs_planned']} planned); "
            f"{m['cores']} cores, torch {m['torch']}, {m['threads']} thread(s) per run, load average "
            f"{result.get('load_average', '?')} during the sweep ({m['note']}).")


def readme_with_table(text: str, result: dict) -> str:
    """README.md's text with the block between BEGIN and END replaced by the results' table."""
    return replace_block(text, BEGIN, END, f"{table(result['rows'])}\n\n{summary(result)}")


def main() -> int:
    args = sweep_arguments(__doc__)
    if answer_from_file(args, RESULTS, README, table, readme_with_table):
        return 0
    preset = TrainConfig.preset("workshop")
    rows: list[dict] = []
    loads = [os.getloadavg()[0]]  # the 1-minute load average at the start and after each pair
    started = time.perf_counter()

    def write() -> int:
        """Write the results so far (after every pair: a long sweep can be read, or stopped, midway)."""
        grokked = sum(r.get("outcome") == "grokked" and r.get("final_test_acc", 0) >= GROKKED for r in rows)
        result = {"preset": {k: v for k, v in preset.to_dict().items() if k not in ("p", "seed")},
                  "machine": {**machine(), "cores": os.cpu_count(), "host": platform.node(),
                              "threads": int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())),
                              "note": "a shared machine: other jobs ran alongside, so wall times are upper "
                                      "bounds"},
                  "load_average": round(sum(loads) / len(loads), 1),
                  "pairs_planned": len(PAIRS), "pairs": len(rows), "grokked": grokked,
                  "total_s": round(time.perf_counter() - started), "rows": rows}
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        return grokked

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)  # with --keep, a rerun resumes unfinished runs and reloads finished ones
        for p, seed in PAIRS:
            rows.append(measure(p, seed, folder / f"p{p}-seed{seed}"))
            loads.append(os.getloadavg()[0])
            print(json.dumps(rows[-1]), flush=True)
            grokked = write()
    print(table(rows))
    print(f"{grokked} of {len(rows)} pairs grokked")
    return 0 if grokked == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
