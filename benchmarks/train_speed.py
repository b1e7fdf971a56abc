"""Training speed, side by side in one run: a plain HookedTransformer loop vs the fast trainer, and time to grok.

    .venv/bin/python benchmarks/train_speed.py            # prints a table, writes benchmarks/results/train_speed.json
    .venv/bin/python benchmarks/train_speed.py --quick    # fewer repeats, no time-to-grok run
    .venv/bin/python benchmarks/train_speed.py --device cuda  # on a GPU: writes results/train_speed_cuda.json

The loops run in turns (a few steps of each, repeated) so a noisy machine slows them alike; the table
reports the median milliseconds per full-batch step (p = 113, 30% of pairs, the workshop preset's optimiser).
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
from utils.train import TrainConfig, model_cfg, loss_fn, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"  # CPU; train_speed_cuda.json: GPU


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
        run = train(cfg, Path(tmp) / "run", device=device, compile=True, progress=False)
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
            "final_test_acc": float(m.test_acc.iloc[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and no time-to-grok run")
    parser.add_argument("--device", default=default_device(), help="cpu or cuda (default: cuda if there is one)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON (default: results/train_speed.json on a CPU, "
                        "results/train_speed_cuda.json on a GPU; with --quick nothing unless --out is given)")
    args = parser.parse_args()
    if args.device != "cpu":
        torch.zeros(1, device=args.device)  # fail now, with torch's message, if the device is not there
    torch.set_flush_denormal(True)  # a CPU setting (the CPU loops' subnormals); the GPU is unaffected
    cfg = TrainConfig.preset("workshop")
    loops = {"HookedTransformer loop": plain_loop(cfg, args.device),
             "fast, eager": fast_loop(cfg, compile=False, device=args.device),
             "fast, torch.compile (default)": fast_loop(cfg, compile=True, device=args.device)}
    ms = interleaved_ms(loops, rounds=3 if args.quick else 8, per_round=5)  # warm-up (compilation) excluded
    base = ms["HookedTransformer loop"]
    rows = [{"loop": name, "ms_per_step": round(t, 1), "speedup": round(base / t, 2)} for name, t in ms.items()]
    result = {"machine": machine(), "device": args.device, "step_time": rows,
              "time_to_grok": None if args.quick else time_to_grok(cfg, args.device)}

    print(f"\nms per full-batch training step (p={cfg.p}, {len(train_test_split(cfg.p, cfg.frac_train, 0)[0])} pairs, "
          f"{args.device}, {torch.get_num_threads()} threads, median of interleaved rounds)")
    print(f"{'loop':32} {'ms/step':>9} {'speed-up':>9}")
    for row in rows:
        print(f"{row['loop']:32} {row['ms_per_step']:9.1f} {row['speedup']:8.2f}x")
    if result["time_to_grok"]:
        g = result["time_to_grok"]
        print(f"\nworkshop preset ({g['steps']} steps): train acc ≥ 99% at step {g['train_acc_99_step']}; test acc "
              f"< 20% until step {g['test_acc_20_step']} ({g['plateau_over_memorisation']}x the memorisation time); "
              f"test acc ≥ 99% at step {g['test_acc_99_step']}, ≥ 99.9% at step {g['test_acc_999_step']} "
              f"({g['wall_s_to_grok']} s); whole run {g['wall_s']} s, final test acc {g['final_test_acc']:.2%}")
    path = args.out or (None if args.quick else RESULTS if args.device == "cpu" else
                        RESULTS.with_name(f"train_speed_{torch.device(args.device).type}.json"))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
