"""The command line: `python -m utils.train --preset workshop --seed 0 --p 113 --out runs/my_run` (every TrainConfig
field is an option; without --out the run goes to the cache, as get_run's)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from utils.model import CheckpointError
from utils.train.config import PRESETS, TrainConfig
from utils.train.loop import check_device
from utils.train.single import get_run, train
from utils.train.store import TrainingDivergedError, check_run_dir

__all__ = ["main"]


def _true_or_false(text: str) -> bool:
    """A yes/no option's value: true/false (or yes/no, on/off, 1/0)."""
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return words[text.lower()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.train", description="Train a model that groks a + b mod p.")
    parser.add_argument("--preset", default="workshop", help=f"one of {sorted(PRESETS)} (default: workshop)")
    parser.add_argument("--out", help="run directory (default: the cache in runs/, see get_run)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip torch.compile (the same maths, slower; not bit-identical to compiled training)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("name", "betas"):
            kind = _true_or_false if isinstance(f.default, bool) else type(f.default)
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)
    parser.add_argument("--betas", type=float, nargs=2, default=None, metavar=("BETA1", "BETA2"))
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name != "name" and getattr(args, f.name) is not None}
    try:  # check everything before any folder is created
        cfg = TrainConfig.preset(args.preset, **overrides)
        out = None if args.out is None else check_run_dir(args.out)
        device = check_device(args.device)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    start = time.perf_counter()
    compile = False if args.no_compile else None
    try:
        run = train(cfg, out, device=device, compile=compile) if out else get_run(cfg, device=device, compile=compile)
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume from the last checkpoint.", file=sys.stderr)
        return 130
    except (CheckpointError, TrainingDivergedError, ValueError, FileNotFoundError) as err:
        print(f"python -m utils.train: error: {err}", file=sys.stderr)
        return 1
    final = run.metrics.iloc[-1]
    # the stop rule also ends runs that generalised at once: say what it saw, not "grokked" (utils.outcomes tells)
    ending = {"grokked": f"stopped by the stop rule at step {run.final_step} (test accuracy ≥ "
                         f"{cfg.stop_test_acc:.1%} for {cfg.stop_margin} steps, test loss levelled off)",
              "all steps": f"{run.final_step} steps",
              "step cap": f"reached the step cap ({run.final_step} steps) WITHOUT grokking"}[run.stop_reason]
    print(f"{run.run_dir}: {ending}; {time.perf_counter() - start:.0f} s; final train acc "
          f"{final.train_acc:.2%}, test acc {final.test_acc:.2%}, test loss {final.test_loss:.2e}")
    return 0

