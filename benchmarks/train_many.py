"""Many runs at once vs one after another: chapter 6's robustness set, side by side in one run.

    .venv/bin/python benchmarks/train_many.py            # prints a table, writes benchmarks/results/train_many.json
    .venv/bin/python benchmarks/train_many.py --device cuda   # the same on a GPU: results/train_many_cuda.json
    .venv/bin/python benchmarks/train_many.py --quick    # step times only, no full training
    .venv/bin/python benchmarks/train_many.py --readme   # write results/train_many.json's figures into README.md

The set is chapter 6's (utils.train.robustness_config for every modulus in ROBUSTNESS_MODULI and seed in
ROBUSTNESS_SEEDS, as the chapter builds it): the workshop preset with ROBUSTNESS_OVERRIDES (a larger learning rate
and weight decay). The chapter's runs stop by the chapter's stop rule, each at its own step; here, so that both ways
do the same work, the stop rule is off and every run trains a fixed number of steps per modulus (STEPS below, or
--steps). Two measurements:
- ms per step: one training step of every run in the set, batched (`utils.train.train_many`: one step per
  modulus, for all of its seeds at once) vs one step of each run as `utils.train.train` takes it (its default: eager
  on a CPU, compiled on a GPU; fused AdamW), and the batched step with torch.compile (off by default in train_many).
  The loops run in interleaved rounds so a noisy machine slows them alike; medians are reported.
- total: the whole set trained from scratch into empty directories — `train_many(set)` with every compatible run
  in one batch vs `train(cfg)` for each config in turn — including compilation, evaluation every 20 steps and
  checkpoints.
On a CPU `train_many` batches by default only models smaller than this set's (utils.train.many.CPU_BATCH_WORK,
which these figures helped set); here it is made to batch them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import (default_device, fast_loop, interleaved_ms, machine, machine_words,  # noqa: E402
                               replace_block)
from utils.data import make_dataset, train_test_split  # noqa: E402
from utils.train import (ROBUSTNESS_MODULI, ROBUSTNESS_SEEDS, Compiled, TrainConfig, batches,  # noqa: E402
                         robustness_config, run_model, train, train_loss, train_many, trainable_params)
from utils.train.adamw import BatchedAdamW  # noqa: E402
from utils.train.loop import compile_default  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"  # train_many.json (CPU), train_many_cuda.json (GPU)
README = ROOT / "README.md"
BEGIN, END = "<!-- train_many figures: begin (benchmarks/train_many.py --readme) -->", \
    "<!-- train_many figures: end -->"
LABELS = {"one after another (train)": "one after another (`train`, its default: eager on a CPU)",
          "batched (train_many)": "batched (`train_many`, eager, one batch per modulus)",
          "batched, torch.compile": "batched, `torch.compile`"}  # the README's words for the rows
SEEDS, MODULI = ROBUSTNESS_SEEDS, ROBUSTNESS_MODULI  # chapter 6's robustness set
STEPS = {89: 1500, 97: 1500}  # the fixed budget each run trains here (stop rule off), for timing: modulus → steps


def robustness_set(steps: int | None = None) -> list[TrainConfig]:
    """Chapter 6's robustness runs (every seed × modulus); `steps` overrides the number of steps of every run."""
    return [robustness_config(p, seed, steps=steps or STEPS[p], stop_margin=0) for p in MODULI for seed in SEEDS]


def batched_step(cfgs: list[TrainConfig], compile: bool = False, device: str = "cpu"):
    """One step of compatible configs as `train_many` takes it: stacked weights, batched AdamW."""
    models = [trainable_params(run_model(c, device)) for c in cfgs]
    params = {k: torch.stack([m[k].detach() for m in models]).requires_grad_(True) for k in models[0]}
    tokens, labels = (t.to(device) for t in make_dataset(cfgs[0].p, cfgs[0].op))
    splits = [train_test_split(c.p, c.frac_train, c.seed)[0].to(device) for c in cfgs]
    n = max(len(s) for s in splits)
    idx = torch.stack([torch.cat([s, s.new_zeros(n - len(s))]) for s in splits])
    weights = torch.stack([(torch.arange(n, device=device) < len(s)).double() for s in splits])
    a, b, y = tokens[idx, 0], tokens[idx, 1], labels[idx]
    opt = BatchedAdamW(params, cfgs)
    loss = Compiled(train_loss, compile)

    def step() -> None:
        for w in params.values():
            w.grad = None
        loss(params, a, b, y, weights).backward()
        opt.step([c.lr for c in cfgs])
    return step


def step_times(cfgs: list[TrainConfig], rounds: int, device: str) -> dict[str, float]:
    """ms per training step of the whole set: batched (eager and compiled) and one run after another; and, for
    scale, one step of the set's first run alone."""
    groups = [[cfgs[i] for i in group] for group in batches(cfgs)]
    loops = {f"single {c.p}/{c.seed}": fast_loop(c, compile=compile_default(device), device=device) for c in cfgs}
    loops |= {f"batched {g[0].p}": batched_step(g, device=device) for g in groups}
    loops |= {f"compiled batched {g[0].p}": batched_step(g, compile=True, device=device) for g in groups}
    ms = interleaved_ms(loops, rounds=rounds, per_round=3, warmup=2)
    total = lambda prefix: sum(v for k, v in ms.items() if k.startswith(prefix))  # noqa: E731
    return {"one after another (train)": total("single "), "batched (train_many)": total("batched "),
            "batched, torch.compile": total("compiled batched "),
            f"one run alone (p = {cfgs[0].p}), for scale": ms[f"single {cfgs[0].p}/{cfgs[0].seed}"]}


def total_times(cfgs: list[TrainConfig], device: str) -> dict[str, float]:
    """Seconds to train the whole set from scratch: train_many vs train for each config in turn."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        many = train_many(cfgs, [Path(tmp) / f"many{i}" for i in range(len(cfgs))], device=device, progress=False,
                          max_models=len(cfgs))  # batched even where train_many's CPU default would not batch
        batched = time.perf_counter() - start
        start = time.perf_counter()
        alone = [train(cfg, Path(tmp) / f"alone{i}", device=device, progress=False) for i, cfg in enumerate(cfgs)]
        sequential = time.perf_counter() - start
        same = sum(bool(abs(m.metrics.test_acc.iloc[-1] - a.metrics.test_acc.iloc[-1]) < 0.01) for m, a in zip(many, alone))
    return {"one after another (train)": sequential, "batched (train_many)": batched,
            "same_final_test_acc": same}


def verdict(result: dict) -> str:
    """What the figures say about batching, in words that follow them (batching can win or lose)."""
    rows = {r["how"]: r for r in result["rows"]}
    batched, compiled = rows["batched (train_many)"], rows.get("batched, torch.compile")
    ratio = batched["ratio_to_one_after_another"]
    total = result.get("total_ratio")
    ratios = [ratio] + ([total] if total is not None else [])
    said = ("Batching did not pay here" if min(ratios) > 1 else "Batching paid here" if max(ratios) < 1 else
            "Batching was faster one way and slower the other here" if min(ratios) < 1 < max(ratios) else
            "Batching made no difference here")
    said += (f": one batched step of the whole set took {ratio:.2f}× the time of the {result['set']['runs']} runs' "
             "steps one after another")
    if total is not None:
        said += f", and training the whole set from scratch (evaluation and checkpoints included) {total:.2f}× the time"
    if ratio > 1 and result.get("device", "cpu") == "cpu":  # files before "device" were CPU ones
        said += " (on a CPU the work is arithmetic, which stacking the models does not reduce)"
    said += "."
    if compiled:
        faster = compiled["ms_per_step"] < batched["ms_per_step"]
        said += (f" `torch.compile` made the batched step {'faster' if faster else 'slower'} "
                 f"({compiled['ms_per_step']:.1f} ms against {batched['ms_per_step']:.1f} ms).")
    same, runs = result.get("runs_with_same_final_test_acc"), result["set"]["runs"]
    if same is not None:
        said += f" {same} of {runs} runs ended with the same final test accuracy (within 1%) both ways."
    return said


def readme_block(result: dict) -> str:
    """The README's figures: where they come from, what was trained, the table, what it says."""
    steps = ", ".join(f"{int(s):,} for p = {p}" for p, s in result["set"]["steps"].items())
    lines = [f"Measured by `benchmarks/train_many.py`, read from `benchmarks/results/train_many.json` "
             f"({machine_words(result)}): {result['set']['runs']} runs (p = "
             f"{', '.join(map(str, result['set']['moduli']))}; seeds {', '.join(map(str, result['set']['seeds']))}), "
             f"each trained for a fixed number of steps: {steps}.", "",
             "| how | ms per step of the whole set | ratio | whole set from scratch |", "|---|---:|---:|---:|"]
    for r in result["rows"]:
        total = "—" if r["total_s"] is None else f"{r['total_s']:.1f} s"
        lines.append(f"| {LABELS.get(r['how'], r['how'])} | {r['ms_per_step']:.1f} | "
                     f"{r['ratio_to_one_after_another']:.2f}× | {total} |")
    return "\n".join(lines + ["", verdict(result)])


def readme_with_figures(text: str, result: dict) -> str:
    """README.md's text with the block between BEGIN and END replaced by the results' figures."""
    return replace_block(text, BEGIN, END, readme_block(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="step times only (fewer rounds), no full training")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of every run, stop rule off (default: " +
                        ", ".join(f"{s} for p = {p}" for p, s in STEPS.items()) + ")")
    parser.add_argument("--device", default=default_device(), help="cpu or cuda (default: cuda if there is one)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON (default: results/train_many.json on a CPU, "
                        "results/train_many_cuda.json on a GPU; with --quick nothing unless --out is given)")
    parser.add_argument("--readme", action="store_true",
                        help="write the figures from results/train_many.json into README.md (runs nothing)")
    args = parser.parse_args()
    if args.readme:
        result = json.loads((RESULTS / "train_many.json").read_text())
        README.write_text(readme_with_figures(README.read_text(), result))
        return
    torch.set_flush_denormal(True)  # a CPU setting (the CPU loops' subnormals); the GPU is unaffected
    cfgs = robustness_set(args.steps)
    per_step = step_times(cfgs, rounds=3 if args.quick else 6, device=args.device)
    torch.set_flush_denormal(False)
    totals = None if args.quick else total_times(cfgs, args.device)
    base = per_step["one after another (train)"]
    rows = [{"how": how, "ms_per_step": round(ms, 1), "ratio_to_one_after_another": round(ms / base, 2),
             "total_s": round(totals[how], 1) if totals and how in totals else None} for how, ms in per_step.items()]
    result = {"machine": machine(), "device": args.device,
              "set": {"moduli": list(MODULI), "seeds": list(SEEDS), "steps": {c.p: c.steps for c in cfgs},
                      "runs": len(cfgs)},
              "rows": rows,
              "total_ratio": round(totals["batched (train_many)"] / totals["one after another (train)"], 2)
              if totals else None,
              "runs_with_same_final_test_acc": totals["same_final_test_acc"] if totals else None}

    print(f"\nChapter 6's robustness set: {len(cfgs)} runs (p = {', '.join(map(str, MODULI))}; seeds "
          f"{', '.join(map(str, SEEDS))}), {args.device}, {torch.get_num_threads()} threads")
    print(f"{'':32} {'ms per step':>12} {'ratio':>7} {'total (s)':>10}")
    for row in rows:
        total = f"{row['total_s']:10.1f}" if row["total_s"] is not None else f"{'—':>10}"
        print(f"{row['how']:32} {row['ms_per_step']:12.1f} {row['ratio_to_one_after_another']:6.2f}x {total}")
    if totals:
        steps = ", ".join(f"{c.steps} steps for p = {c.p}" for c in cfgs[:: len(SEEDS)])
        print(f"total time, batched / one after another: {result['total_ratio']:.2f} ({steps}; compile, "
              f"evaluation and checkpoints included); final test accuracy agrees (within 1%) for "
              f"{totals['same_final_test_acc']} of {len(cfgs)} runs")
    kind = torch.device(args.device).type
    path = args.out or (None if args.quick else RESULTS / ("train_many.json" if kind == "cpu" else
                                                           f"train_many_{kind}.json"))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {path}")


if __name__ == "__main__":
    main()
