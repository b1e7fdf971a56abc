"""Training speed, side by side in one run: a plain HookedTransformer loop vs the fast trainer, and time to grok.

    .venv/bin/python benchmarks/train_speed.py            # prints a table, writes benchmarks/results/train_speed.json
    .venv/bin/python benchmarks/train_speed.py --quick    # fewer repeats, no time-to-grok run
    .venv/bin/python benchmarks/train_speed.py --device cuda  # on a GPU: writes results/train_speed_cuda.json
    .venv/bin/python benchmarks/train_speed.py --readme   # write results/train_speed.json's figures into README.md

The loops run in turns (a few steps of each, repeated) so a noisy machine slows them alike; the table
reports the median milliseconds per full-batch step (p = 113, 30% of pairs, the workshop preset's optimiser).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import (default_device, fast_loop, interleaved_ms, machine, machine_words,  # noqa: E402
                               replace_block)
from utils.data import make_dataset, train_test_split  # noqa: E402
from utils.model import make_model  # noqa: E402
from utils.train import TrainConfig, model_cfg, loss_fn, train  # noqa: E402
from utils.train.loop import compile_default  # noqa: E402

PRODUCTS = "the eager step's matrix products alone"
RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"  # CPU; train_speed_cuda.json: GPU
README = ROOT / "README.md"
BEGIN, END = "<!-- train_speed figures: begin (benchmarks/train_speed.py --readme) -->", \
    "<!-- train_speed figures: end -->"
LABELS = {"HookedTransformer loop": "plain HookedTransformer loop",
          "fast, eager": "fast trainer, eager (the default on a CPU)",
          "fast, torch.compile": "fast trainer, `torch.compile` (the default on a GPU)",
          "fast, torch.compile (default)": "fast trainer, `torch.compile` (then the default)"}  # the README's words


def plain_loop(cfg: TrainConfig, device: str = "cpu"):
    """The obvious loop: HookedTransformer forward on (a, b, =), loss at the last position, torch AdamW."""
    model = make_model(model_cfg(cfg, device))
    tokens, labels = (t.to(device) for t in make_dataset(cfg.p))
    idx = train_test_split(cfg.p, cfg.frac_train, cfg.seed)[0].to(device)
    x, y = tokens[idx], labels[idx]
    opt = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=cfg.lr,
                            betas=cfg.betas, weight_decay=cfg.weight_decay)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def time_to_grok(cfg: TrainConfig, device: str = "cpu") -> dict:
    """Train the preset from scratch (compile included) and read off when it memorised and grokked."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = train(cfg, Path(tmp) / "run", device=device, progress=False)  # compiled or not: the default
        total = time.perf_counter() - start
    m = run.metrics
    first = lambda mask: int(m.step[mask].min()) if mask.any() else None  # noqa: E731
    memorised, grok_step = first(m.train_acc >= 0.99), first(m.test_acc >= 0.999)
    plateau_end = first((m.step > (memorised or 0)) & (m.test_acc >= 0.2))  # first eval with test acc ≥ 20%
    return {"steps": cfg.steps, "wall_s": round(total, 1), "train_acc_99_step": memorised,
            "test_acc_20_step": plateau_end,
            "plateau_over_memorisation": round(plateau_end / memorised, 1) if plateau_end and memorised else None,
            "test_acc_99_step": first(m.test_acc >= 0.99), "test_acc_999_step": grok_step,
            "wall_s_to_grok": round(m.elapsed_s[m.step == grok_step].item(), 1) if grok_step is not None else None,
            "final_test_acc": float(m.test_acc.iloc[-1]), "stopped_at": run.final_step,
            "compiled": compile_default(device),
            "stop_reason": run.stop_reason}


def step_gflop(cfg: TrainConfig, device: str) -> float:
    """GFLOP of the matrix products in one fast training step (forward and backward), as torch counts them."""
    step = fast_loop(cfg, compile=False, device=device)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


class _Products(TorchDispatchMode):
    """Records the matrix products a call makes (the op, copies of its inputs) so they can be replayed alone."""
    OPS = (torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default,
           torch.ops.aten.baddbmm.default)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:  # clone() keeps a transposed view's strides: the replay reads memory alike
            self.calls.append((func, [a.clone() if isinstance(a, torch.Tensor) else a for a in args], kwargs or {}))
        return func(*args, **(kwargs or {}))


def products_alone(step: Callable[[], None]) -> tuple[int, Callable[[], None]]:
    """The step's own matrix products, at their shapes and layouts, without anything else: (count, replay)."""
    with _Products() as recorder:  # one more training step of `step`, recorded
        step()
    calls = recorder.calls

    def replay() -> None:
        for func, args, kwargs in calls:
            func(*args, **kwargs)
    return len(calls), replay


def matmul_peak_gflops(device: str, n: int = 1024, repeats: int = 20) -> float:
    """The fp32 matrix-product speed of this machine now: GFLOP/s of the fastest of `repeats` n×n products."""
    x, y = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = interleaved_ms({"matmul": lambda: x @ y}, rounds=1, per_round=repeats, warmup=3, best=True)["matmul"]
    return 2 * n ** 3 / (best / 1000) / 1e9


def _step(step: int | None) -> str:
    return "never" if step is None else f"{step:,}"


def grok_sentence(g: dict) -> str:
    """The time-to-grok run in one sentence."""
    if "stop_reason" in g:
        ending = (f"the run ended at step {g['stopped_at']:,} ({g['stop_reason']}; at most {g['steps']:,} steps) "
                  f"after {g['wall_s']} s")
    else:  # files written before the stop rule: every run trained all its steps
        ending = (f"the whole {g['steps']:,}-step run took {g['wall_s']} s (the file records no stop reason: it "
                  "predates the stop rule; rerun the benchmark for the preset as it is now)")
    plateau = f" ({g['plateau_over_memorisation']}× the memorisation time)" if g["plateau_over_memorisation"] else ""
    grokked = "" if g["wall_s_to_grok"] is None else f", {g['wall_s_to_grok']} s after the start"
    how = "compile included" if g.get("compiled", True) else "eager, the default on a CPU"
    return (f"Workshop preset from scratch ({how}): train accuracy ≥ 99% at step "
            f"{_step(g['train_acc_99_step'])}; test accuracy below 20% until step {_step(g['test_acc_20_step'])}"
            f"{plateau}; test accuracy ≥ 99% at step {_step(g['test_acc_99_step'])} and ≥ 99.9% at step "
            f"{_step(g['test_acc_999_step'])}{grokked}; final test accuracy {g['final_test_acc']:.2%}; {ending}.")


def floor_sentence(floor: dict) -> str:
    """The step's floor in one sentence: its matrix-product work at the matrix-product speed measured with it."""
    return (f"Floor: {floor['gflop_per_step']} GFLOP of matrix products per step (torch's FlopCounterMode) at "
            f"{floor['matmul_gflops']} GFLOP/s (fp32 matrix products measured in the same run) = {floor['ms']} ms.")


def products_sentence(floor: dict) -> str:
    """What the step's own matrix products cost alone, against the floor and the 1.3× target (issue #17)."""
    left = 1.3 * floor["ms"] - floor["products_alone_ms"]
    return (f"The eager step's own {floor['products']} matrix products alone, replayed at their shapes and "
            f"layouts in the same interleaved rounds: {floor['products_alone_ms']} ms = "
            f"{floor['products_alone_ms'] / floor['ms']:.2f}× the floor. Under 1.3× the floor that leaves "
            + (f"{left:.1f} ms per step for everything else (softmaxes, the loss, gathers, the optimiser)."
               if left > 0 else "nothing for everything else: at these shapes this machine's matrix products "
               "alone are over 1.3× the floor."))


def readme_block(result: dict) -> str:
    """The README's figures: where they come from, the table of loops, the floor, the time-to-grok run."""
    floor = result.get("floor")
    lines = [f"Measured by `benchmarks/train_speed.py`, read from `benchmarks/results/{RESULTS.name}` "
             f"({machine_words(result)}):", "",
             "| loop | ms per full-batch step | speed-up |" + (" × floor |" if floor else ""),
             "|---|---:|---:|" + ("---:|" if floor else "")]
    lines += [f"| {LABELS.get(r['loop'], r['loop'])} | {r['ms_per_step']:.1f} | {r['speedup']:.2f}× |"
              + (f" {r['over_floor']:.2f}× |" if floor else "") for r in result["step_time"]]
    if floor:
        lines += ["", floor_sentence(floor)] + (["", products_sentence(floor)] if "products" in floor else [])
    if result.get("time_to_grok"):
        lines += ["", grok_sentence(result["time_to_grok"])]
    return "\n".join(lines)


def readme_with_figures(text: str, result: dict) -> str:
    """README.md's text with the block between BEGIN and END replaced by the results' figures."""
    return replace_block(text, BEGIN, END, readme_block(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and no time-to-grok run")
    parser.add_argument("--readme", action="store_true",
                        help="write the figures from results/train_speed.json into README.md (runs nothing)")
    parser.add_argument("--device", default=default_device(), help="cpu or cuda (default: cuda if there is one)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON (default: results/train_speed.json on a CPU, "
                        "results/train_speed_cuda.json on a GPU; with --quick nothing unless --out is given)")
    args = parser.parse_args()
    if args.readme:
        README.write_text(readme_with_figures(README.read_text(), json.loads(RESULTS.read_text())))
        return
    if args.device != "cpu":
        torch.zeros(1, device=args.device)  # fail now, with torch's message, if the device is not there
    torch.set_flush_denormal(True)  # a CPU setting (the CPU loops' subnormals); the GPU is unaffected
    cfg = TrainConfig.preset("workshop")
    loops = {"HookedTransformer loop": plain_loop(cfg, args.device),
             "fast, eager": fast_loop(cfg, compile=False, device=args.device),
             "fast, torch.compile": fast_loop(cfg, compile=True, device=args.device)}
    n_products, replay = products_alone(loops["fast, eager"])
    ms = interleaved_ms(loops | {PRODUCTS: replay}, rounds=3 if args.quick else 8, per_round=5)  # warm-up excluded
    alone = ms.pop(PRODUCTS)
    gflop, peak = step_gflop(cfg, args.device), matmul_peak_gflops(args.device)
    floor = {"gflop_per_step": round(gflop, 2), "matmul_gflops": round(peak, 1), "ms": round(1000 * gflop / peak, 1),
             "products": n_products, "products_alone_ms": round(alone, 1)}
    base = ms["HookedTransformer loop"]
    rows = [{"loop": name, "ms_per_step": round(t, 1), "speedup": round(base / t, 2),
             "over_floor": round(t / floor["ms"], 2)} for name, t in ms.items()]
    result = {"machine": machine(), "device": args.device, "config": cfg.to_dict(), "step_time": rows,
              "floor": floor, "time_to_grok": None if args.quick else time_to_grok(cfg, args.device)}

    print(f"\nms per full-batch training step (p={cfg.p}, {len(train_test_split(cfg.p, cfg.frac_train, 0)[0])} pairs, "
          f"{args.device}, {torch.get_num_threads()} threads, median of interleaved rounds)")
    print(f"{'loop':32} {'ms/step':>9} {'speed-up':>9} {'× floor':>8}")
    for row in rows:
        print(f"{row['loop']:32} {row['ms_per_step']:9.1f} {row['speedup']:8.2f}x {row['over_floor']:7.2f}x")
    print(floor_sentence(floor))
    print(products_sentence(floor))
    if result["time_to_grok"]:
        print("\n" + grok_sentence(result["time_to_grok"]))
    path = args.out or (None if args.quick else RESULTS if args.device == "cpu" else
                        RESULTS.with_name(f"train_speed_{torch.device(args.device).type}.json"))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
