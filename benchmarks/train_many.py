"""Many runs at once vs one after another: chapter 6's robustness set, side by side in one run.

    .venv/bin/python benchmarks/train_many.py            # prints a table, writes benchmarks/results/train_many.json
    .venv/bin/python benchmarks/train_many.py --device cuda   # the same on a GPU: results/train_many_cuda.json
    .venv/bin/python benchmarks/train_many.py --quick    # step times only, no full training

The set is chapter 6's (utils.train.robustness_config, ROBUSTNESS_MODULI and ROBUSTNESS_SEEDS, which the chapter
uses too): the workshop preset with a larger learning rate and weight decay, 4 seeds × 2 moduli; for timing, each
run trains a fixed budget (stop rule off): 1,000 steps for p = 113 and 1,500 for p = 97. Two measurements:
- ms per step: one training step of every run in the set, batched (`utils.train.train_many`: one step per
  modulus, each for 4 models at once) vs one step of each run as `utils.train.train` takes it (compiled fast path,
  fused AdamW), and the batched step with torch.compile (off by default in train_many).
  The loops run in interleaved rounds so a noisy machine slows them alike; medians are reported.
- total: the whole set trained from scratch into empty directories — `train_many(set)` vs `train(cfg)` for each
  config in turn — including compilation, evaluation every 20 steps and checkpoints.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import default_device, fast_loop, interleaved_ms, machine  # noqa: E402
from utils.data import make_dataset, train_test_split  # noqa: E402
from utils.model import make_model  # noqa: E402
from utils.train import (ROBUSTNESS_MODULI, ROBUSTNESS_SEEDS, TrainConfig, BatchedAdamW, Compiled,  # noqa: E402
                         many_train_loss, model_cfg, batches, robustness_config, train, train_many,
                         trainable_params)

RESULTS = Path(__file__).resolve().parent / "results"  # train_many.json (CPU), train_many_cuda.json (GPU)
SEEDS, MODULI = ROBUSTNESS_SEEDS, ROBUSTNESS_MODULI  # chapter 6's robustness set
STEPS = {97: 1500, 113: 1000}  # the fixed budget each run trains here, for timing: modulus → steps


def robustness_set(steps: int | None = None) -> list[TrainConfig]:
    """Chapter 6's robustness runs (4 seeds × 2 moduli); `steps` overrides the number of steps of every run."""
    return [robustness_config(p, seed, steps=steps or STEPS[p], stop_margin=0) for p in MODULI for seed in SEEDS]


def batched_step(cfgs: list[TrainConfig], compile: bool = False, device: str = "cpu"):
    """One step of compatible configs as `train_many` takes it: stacked weights, batched AdamW."""
    models = [trainable_params(make_model(model_cfg(c, device))) for c in cfgs]
    params = {k: torch.stack([m[k].detach() for m in models]).requires_grad_(True) for k in models[0]}
    tokens, labels = (t.to(device) for t in make_dataset(cfgs[0].p, cfgs[0].op))
    splits = [train_test_split(c.p, c.frac_train, c.seed)[0].to(device) for c in cfgs]
    n = max(len(s) for s in splits)
    idx = torch.stack([torch.cat([s, s.new_zeros(n - len(s))]) for s in splits])
    weights = torch.stack([(torch.arange(n, device=device) < len(s)).double() for s in splits])
    a, b, y = tokens[idx, 0], tokens[idx, 1], labels[idx]
    opt = BatchedAdamW(params, cfgs)
    loss = Compiled(many_train_loss, compile)

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
    loops = {f"single {c.p}/{c.seed}": fast_loop(c, compile=True, device=device) for c in cfgs}
    loops |= {f"batched {g[0].p}": batched_step(g, device=device) for g in groups}
    loops |= {f"compiled batched {g[0].p}": batched_step(g, compile=True, device=device) for g in groups}
    ms = interleaved_ms(loops, rounds=rounds, per_round=3, warmup=2)
    total = lambda prefix: sum(v for k, v in ms.items() if k.startswith(prefix))  # noqa: E731
    return {"one after another (train)": total("single "), "batched (train_many, default)": total("batched "),
            "batched, torch.compile": total("compiled batched "),
            f"one run alone (p = {cfgs[0].p}), for scale": ms[f"single {cfgs[0].p}/{cfgs[0].seed}"]}


def total_times(cfgs: list[TrainConfig], device: str) -> dict[str, float]:
    """Seconds to train the whole set from scratch: train_many vs train for each config in turn."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        many = train_many(cfgs, [Path(tmp) / f"many{i}" for i in range(len(cfgs))], device=device, progress=False)
        batched = time.perf_counter() - start
        start = time.perf_counter()
        alone = [train(cfg, Path(tmp) / f"alone{i}", device=device, progress=False) for i, cfg in enumerate(cfgs)]
        sequential = time.perf_counter() - start
        same = sum(bool(abs(m.metrics.test_acc.iloc[-1] - a.metrics.test_acc.iloc[-1]) < 0.01) for m, a in zip(many, alone))
    return {"one after another (train)": sequential, "batched (train_many, default)": batched,
            "same_final_test_acc": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="step times only (fewer rounds), no full training")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of every run for the total time (default: the chapter's, " +
                        ", ".join(f"{s} for p = {p}" for p, s in STEPS.items()) + ")")
    parser.add_argument("--device", default=default_device(), help="cpu or cuda (default: cuda if there is one)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON (default: results/train_many.json on a CPU, "
                        "results/train_many_cuda.json on a GPU; with --quick nothing unless --out is given)")
    args = parser.parse_args()
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
              "total_ratio": round(totals["batched (train_many, default)"] / totals["one after another (train)"], 2)
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
