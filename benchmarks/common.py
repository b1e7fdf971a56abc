"""What the benchmark scripts share: the trainer's step as a loop to time, timing loops side by side, a
description of the machine they ran on, and the README blocks generated from their results."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from utils.data import make_dataset, train_test_split
from utils.train import Compiled, TrainConfig, run_model, trainable_params
from utils.train.heap import keep_freed_memory
from utils.train.single import one_run_loss


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def fast_loop(cfg: TrainConfig, compile: bool, device: str = "cpu") -> Callable[[], None]:
    """One training step as `utils.train.train` takes it (its loss, fused AdamW, optionally torch.compile, freed
    memory kept for reuse: process-wide, so every loop measured after this one runs with it too)."""
    keep_freed_memory()
    params = trainable_params(run_model(cfg, device))
    tokens, labels = (t.to(device) for t in make_dataset(cfg.p, cfg.op))
    idx = train_test_split(cfg.p, cfg.frac_train, cfg.seed)[0].to(device)
    a, b, y = tokens[idx, 0], tokens[idx, 1], labels[idx]
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)
    loss = Compiled(one_run_loss, compile)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(params, a, b, y, cfg.attention_rate).backward()
        opt.step()
    return step


def interleaved_ms(loops: dict[str, Callable[[], None]], rounds: int, per_round: int,
                   warmup: int = 3, best: bool = False) -> dict[str, float]:
    """Median (or with best=True the smallest) milliseconds per call of each loop, after `warmup` calls each
    (compilation), measured in interleaved rounds of `per_round` calls so that a noisy machine slows every loop
    alike. On a GPU each call is waited for."""
    sync = _synchronize_gpus if torch.cuda.is_available() else (lambda: None)
    for step in loops.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, step in loops.items():
            for _ in range(per_round):
                sync()
                start = time.perf_counter()
                step()
                sync()
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: (min(t) if best else statistics.median(t)) for name, t in times.items()}


def _synchronize_gpus() -> None:
    """Wait for every GPU (torch.cuda.synchronize() alone waits for the current one, cuda:0, only)."""
    for index in range(torch.cuda.device_count()):
        torch.cuda.synchronize(index)


def machine() -> dict[str, object]:
    """The cores, the threads torch uses, its version, Python's and the processor: enough to tell two results'
    machines apart."""
    return {"cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def machine_words(result: dict) -> str:
    """The machine a results file records, in words (what it does not record is said to be missing)."""
    m = result["machine"]
    cores, threads = m.get("cores", m.get("cpu_count")), m.get("threads")
    device = result.get("device") or ("cuda" if m.get("gpu") else "cpu")  # files before "device": CPU ones
    return ", ".join([device + (f" ({m['gpu']})" if m.get("gpu") else ""),
                      f"{cores} cores" if cores else "cores not recorded",
                      f"{threads} thread{'s' * (threads != 1)}" if threads else "threads not recorded",
                      f"torch {m['torch']}"])


def replace_block(text: str, begin: str, end: str, block: str) -> str:
    """`text` (README.md) with what lies between the marker lines `begin` and `end` replaced by `block`."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise SystemExit(f"README.md must hold the markers {begin!r} and then {end!r}, once each: put them back "
                         "around the generated block")
    head, rest = text.split(begin)
    return f"{head}{begin}\n{block}\n{end}{rest.split(end)[1]}"


def sweep_arguments(doc: str) -> argparse.Namespace:
    """The sweeps' shared command line: --table, --readme (answered from the results file) and --keep."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the table from the results file and stop")
    parser.add_argument("--readme", action="store_true", help="write the table from the results file into README.md")
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    return parser.parse_args()


def answer_from_file(args: argparse.Namespace, results: Path, readme: Path, table: Callable[[list[dict]], str],
                     readme_with_table: Callable[[str, dict], str]) -> bool:
    """--table prints the results file's table, --readme writes it into README.md; True if either was asked."""
    if args.table:
        print(table(json.loads(results.read_text())["rows"]))
    elif args.readme:
        readme.write_text(readme_with_table(readme.read_text(), json.loads(results.read_text())))
    return args.table or args.readme
