"""Kill/resume soak: SIGKILL training many times at random moments, resume each time, compare with a run never killed.

    .venv/bin/python benchmarks/soak.py                 # 20 kills single + 20 kills batched; results/soak.json
    .venv/bin/python benchmarks/soak.py --kills 3 --mode single
    .venv/bin/python benchmarks/soak.py --readme              # write results/soak.json's summary into README.md

A small run (p = 23, d_model 32) that checkpoints every 2 steps, so that a good share of the kills land while a
checkpoint or state.pt is being written. Each round starts a fresh Python process that resumes the run(s) with
`utils.train.train` (single) or `utils.train.train_many` (batched: two runs, one of which stops early by its stop
rule and leaves the batch), and kills it with SIGKILL after a random delay. When a round finishes on its own, the
run directories must equal those of an uninterrupted run: bit-identical final weights and checkpoints, the same
metrics rows (no duplicated steps), no temporary files left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import replace_block  # noqa: E402
from utils.train import TrainConfig, load_run, trainable_params  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- soak summary: begin (benchmarks/soak.py --readme) -->", "<!-- soak summary: end -->"
BASE = dict(p=23, frac_train=0.5, d_model=32, n_heads=2, d_mlp=64, lr=3e-3, weight_decay=1.0, steps=240,
            checkpoint_every=2, eval_every=2)
SAME = ["step", "train_loss", "test_loss", "train_acc", "test_acc"]  # elapsed_s differs, of course


def configs(mode: str) -> list[TrainConfig]:
    """The run(s) a round trains: one, or two batched (the second stops early by a loose stop rule)."""
    if mode == "single":
        return [TrainConfig.from_dict(BASE)]
    return [TrainConfig.from_dict(BASE), TrainConfig.from_dict({**BASE, "seed": 1, "stop_margin": 20,
                                                                "stop_test_acc": 0.05, "stop_loss_fall": 1.5})]


def _script(mode: str, dirs: list[Path]) -> str:
    cfgs = [c.to_dict() for c in configs(mode)]
    call = (f"T.train(T.TrainConfig.from_dict({cfgs[0]}), {str(dirs[0])!r}, compile=False, progress=False)"
            if mode == "single" else
            f"T.train_many([T.TrainConfig.from_dict(c) for c in {cfgs}], {[str(d) for d in dirs]}, progress=False)")
    return textwrap.dedent(f"""
        import warnings
        warnings.simplefilter("ignore")
        import utils.train as T
        {call}
    """)


def _start(mode: str, dirs: list[Path]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GROKKING_COMPILE": "0"}
    return subprocess.Popen([sys.executable, "-c", _script(mode, dirs)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(mode: str, dirs: list[Path]) -> None:
    proc = _start(mode, dirs)
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"a round failed (exit {proc.returncode}):\n{err[-2000:]}")


def compare(dirs: list[Path], reference: list[Path]) -> list[str]:
    """What differs between the soaked run directories and the reference ones (empty: nothing)."""
    problems = []
    for d, r in zip(dirs, reference):
        run, ref = load_run(d), load_run(r)
        if run.stop_reason != ref.stop_reason:
            problems.append(f"{d.name}: stop reason {run.stop_reason} vs {ref.stop_reason}")
        got, want = trainable_params(run.model), trainable_params(ref.model)
        problems += [f"{d.name}: final {k} differs" for k in want if not torch.equal(got[k], want[k])]
        if run.metrics.step.duplicated().any():
            problems.append(f"{d.name}: duplicated metrics rows")
        if not run.metrics[SAME].equals(ref.metrics[SAME]):
            problems.append(f"{d.name}: metrics differ")
        if run.checkpoint_steps != ref.checkpoint_steps:
            problems.append(f"{d.name}: checkpoint steps differ")
        for step in run.checkpoint_steps:
            a = torch.load(d / "checkpoints" / f"step_{step:06d}.pt", weights_only=True)["params"]
            b = torch.load(r / "checkpoints" / f"step_{step:06d}.pt", weights_only=True)["params"]
            if any(not torch.equal(a[k], b[k]) for k in b):
                problems.append(f"{d.name}: checkpoint {step} differs")
        stray = [str(p.relative_to(d)) for p in d.rglob("*.tmp")]
        if stray:
            problems.append(f"{d.name}: temporary files left: {stray}")
    return problems


def _progress(dirs: list[Path]) -> int:
    """How many checkpoint files the run directories hold (it grows while a round trains)."""
    return sum(len(list((d / "checkpoints").glob("step_*.pt"))) for d in dirs if (d / "checkpoints").is_dir())


def soak(mode: str, kills: int, workdir: Path, seed: int = 0, max_delay: float = 2.5) -> dict:
    """Kill `kills` times at random moments, then let the run finish; compare with an uninterrupted run."""
    rng = random.Random(seed)
    n = len(configs(mode))
    reference = [workdir / f"{mode}-reference-{i}" for i in range(n)]
    dirs = [workdir / f"{mode}-soaked-{i}" for i in range(n)]
    start = time.perf_counter()
    _finish(mode, reference)
    reference_s = time.perf_counter() - start
    killed, landed, during_write, finished_early = 0, 0, 0, 0
    start = time.perf_counter()
    while landed < kills:  # count only kills that interrupted training (not Python's start-up)
        before = _progress(dirs)
        proc = _start(mode, dirs)
        # Python and torch take a few seconds to start; kill somewhere between that and a bit after
        time.sleep(rng.uniform(0.5, max_delay) + (3.0 if rng.random() < 0.7 else 0.0))
        if proc.poll() is not None:  # it finished before the kill: start over from an empty directory
            finished_early += 1
            for d in dirs:
                subprocess.run(["rm", "-rf", str(d), str(d) + ".lock", str(d) + ".lock.owner"], check=True)
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += 1
        landed += _progress(dirs) > before
        during_write += any(any(d.rglob("*.tmp")) for d in dirs if d.exists())
    _finish(mode, dirs)
    problems = compare(dirs, reference)
    return {"mode": mode, "runs": n, "kills": killed, "kills_after_training_resumed": landed,
            "kills_during_a_write": during_write,
            "restarts_after_finishing_early": finished_early, "reference_s": round(reference_s, 1),
            "soak_s": round(time.perf_counter() - start, 1), "problems": problems, "ok": not problems}


def summary(results: list[dict]) -> str:
    """The soak's outcome in one Markdown paragraph."""
    parts = [f"{r['mode']}: {r['kills']} SIGKILLs, {r['kills_after_training_resumed']} of them after training had "
             f"resumed and {r['kills_during_a_write']} during a checkpoint write; "
             + ("bit-identical, no duplicated rows, no temporary files" if r["ok"] else
                "PROBLEMS: " + "; ".join(r["problems"])) for r in results]
    return "Last soak (`benchmarks/results/soak.json`): " + ". ".join(parts) + "."


def readme_with_summary(text: str, results: list[dict]) -> str:
    """README.md's text with the block between BEGIN and END replaced by the soak's summary."""
    return replace_block(text, BEGIN, END, summary(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--mode", choices=["single", "batched", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readme", action="store_true", help="write results/soak.json's summary into README.md")
    args = parser.parse_args()
    if args.readme:
        results = json.loads((RESULTS / "soak.json").read_text())["results"]
        README.write_text(readme_with_summary(README.read_text(), results))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in (["single", "batched"] if args.mode == "both" else [args.mode]):
            result = soak(mode, args.kills, Path(tmp), seed=args.seed)
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.mode == "both" and args.kills >= 20:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soak.json").write_text(json.dumps({"results": results, "config": BASE}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
