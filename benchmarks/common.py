"""What the benchmark scripts share: the trainer's step as a loop to time, timing loops side by side, and a
description of the machine they ran on."""
from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch

from utils.data import make_dataset, train_test_split
from utils.model import make_model
from utils.train import TrainConfig, Compiled, model_cfg, train_loss, trainable_params


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def fast_loop(cfg: TrainConfig, compile: bool, device: str = "cpu") -> Callable[[], None]:
    """One training step as `utils.train.train` takes it: lookup tables, last position only, fused AdamW,
    optionally torch.compile."""
    params = trainable_params(make_model(model_cfg(cfg, device)))
    tokens, labels = (t.to(device) for t in make_dataset(cfg.p, cfg.op))
    idx = train_test_split(cfg.p, cfg.frac_train, cfg.seed)[0].to(device)
    a, b, y = tokens[idx, 0], tokens[idx, 1], labels[idx]
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)
    loss = Compiled(train_loss, compile)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(params, a, b, y).backward()
        opt.step()
    return step


def interleaved_ms(loops: dict[str, Callable[[], None]], rounds: int, per_round: int,
                   warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call of each loop, after `warmup` calls each (compilation), measured in interleaved
    rounds of `per_round` calls so that a noisy machine slows every loop alike. On a GPU each call is waited for."""
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
    return {name: statistics.median(t) for name, t in times.items()}


def _synchronize_gpus() -> None:
    """Wait for every GPU (torch.cuda.synchronize() alone waits for the current one, cuda:0, only)."""
    for index in range(torch.cuda.device_count()):
        torch.cuda.synchronize(index)


def machine() -> dict[str, object]:
    """The threads torch uses, its version, Python's and the processor: enough to tell two results' machines apart."""
    return {"threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
