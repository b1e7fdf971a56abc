"""The GPU check: the benchmarks, the paper's run and every chapter, on one device.

    .venv/bin/python benchmarks/gpu_check.py                        # on a CUDA machine
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick   # the dry run (CI)

Four steps, each in its own process and timed; a failing step does not stop the others:
  train_speed  benchmarks/train_speed.py: ms per step of the three loops, and the
               workshop preset's time to grok
  paper        `python -m utils.train --preset paper` (40,000 steps) into a temporary
               folder: the steps at which test accuracy first reaches 99% and 99.9%
  train_many   benchmarks/train_many.py: chapter 6's runs batched vs one after another
  notebooks    every chapter (solutions/*.ipynb) and the instructor guide under
               `pytest --nbval-lax`, with an empty run cache (GROKKING_RUNS_DIR), so
               every run they use is trained here (get_run picks cuda if there is one)
Each step's figures go to <out>/<step>_<device>.json (benchmarks/results/*_cuda.json),
with --quick to *_<device>_quick.json, so a dry run never replaces real results. The
summary (the table, the machine, the total time) goes to <out>/gpu_check_<device>.json.

--quick is the dry run: fewer repeats and no time-to-grok run in the benchmarks, a small
modulus (p = 23, 500 steps) instead of the paper's run, and the instructor guide as the
only notebook. It checks the driver end to end, not the speed. The check prints one
table and exits 1 if a step failed or the whole took longer than --budget seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # utils, when run as a script
RESULTS = ROOT / "benchmarks" / "results"
STEPS = ("train_speed", "paper", "train_many", "notebooks")
BUDGET_S = 8 * 60  # the whole check on one modern GPU (issue #17)
GROKKED = 0.999  # the test accuracy that counts as grokked (TrainConfig.stop_test_acc)
# The dry run's stand-in for the paper's run: a small modulus, more data and a larger
# weight decay, so that it groks within a few hundred steps on a CPU (about 10 s eager).
QUICK_PAPER = dict(p=23, frac_train=0.6, lr=3e-3, weight_decay=3.0, steps=500)


@dataclass
class Step:
    """One step's outcome: passed or not, wall time, a line of figures, its JSON."""

    name: str
    passed: bool = False
    seconds: float = 0.0
    figure: str = ""
    result: dict = field(default_factory=dict)


@dataclass
class Context:
    """What every step needs: device, mode, folders, the subprocesses' environment."""

    device: str
    quick: bool
    out: Path
    work: Path
    env: dict[str, str]
    timeout: float

    @property
    def tag(self) -> str:
        """The suffix of the result files: cuda, cpu_quick, …"""
        return f"{self.device}_quick" if self.quick else self.device

    def result_path(self, name: str) -> Path:
        return self.out / f"{name}_{self.tag}.json"


class StepFailed(Exception):
    """A step did not do what it should: the message says what; result, its figures."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result or {}


def run_process(ctx: Context, name: str, cmd: list[str]) -> tuple[int, str]:
    """Run cmd in the repository root; its exit code and output (a log in ctx.work).

    It runs in its own process group, all killed on timeout (nbval's kernels included).
    """
    log = ctx.work / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ctx.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=ctx.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            out.write(f"\n[gpu_check: killed after {ctx.timeout:.0f} s]\n")
            code = -9
    return code, log.read_text(errors="replace")


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def check_exit(code: int, output: str, what: str) -> None:
    if code != 0:
        why = "timed out" if code == -9 else f"exited with code {code}"
        raise StepFailed(f"{what} {why}; its last lines:\n{tail(output)}")


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise StepFailed(f"it wrote no {path.name}")
    return json.loads(path.read_text())


def run_benchmark(ctx: Context, name: str) -> dict:
    """Run benchmarks/<name>.py on the device (--quick in a dry run); its results JSON."""
    raw = ctx.work / f"{name}.json"
    cmd = [sys.executable, f"benchmarks/{name}.py", "--device", ctx.device,
           "--out", str(raw)] + (["--quick"] if ctx.quick else [])
    code, output = run_process(ctx, name, cmd)
    check_exit(code, output, f"benchmarks/{name}.py")
    return read_json(raw)


# --- the steps -----------------------------------------------------------------------
def step_train_speed(ctx: Context) -> tuple[str, dict]:
    """benchmarks/train_speed.py on the device."""
    result = run_benchmark(ctx, "train_speed")
    fast = next(row for row in result["step_time"] if "compile" in row["loop"])
    figure = (f"compiled step {fast['ms_per_step']:.1f} ms, {fast['speedup']:.1f}x "
              "the HookedTransformer loop")
    grok = result.get("time_to_grok")
    if not ctx.quick:
        if not grok or grok.get("test_acc_999_step") is None:
            raise StepFailed(f"{figure}; the workshop preset did not reach 99.9% test "
                             "accuracy", result)
        figure += (f"; workshop groks at step {grok['test_acc_999_step']:,} "
                   f"({grok['wall_s_to_grok']} s)")
    return figure, result


def step_paper(ctx: Context) -> tuple[str, dict]:
    """The paper preset trained from scratch by the command line; when it groks."""
    import pandas as pd  # the driver imports these only when a step needs them

    from utils.metrics import first_step

    run_dir = ctx.work / "paper_run"
    cmd = [sys.executable, "-m", "utils.train", "--preset", "paper",
           "--device", ctx.device, "--out", str(run_dir)]
    for key, value in (QUICK_PAPER if ctx.quick else {}).items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    start = time.perf_counter()
    code, output = run_process(ctx, "paper", cmd)
    wall = time.perf_counter() - start
    check_exit(code, output, "python -m utils.train --preset paper")
    config = json.loads((run_dir / "config.json").read_text())
    m = pd.read_csv(run_dir / "metrics.csv")
    test_99 = first_step(m, "test_acc", 0.99)
    grokked = first_step(m, "test_acc", GROKKED)
    result = {
        "command": " ".join(["python", *cmd[1:7], *cmd[9:]]),  # without --out (temporary)
        "config": config,
        "wall_s": round(wall, 1), "training_s": round(float(m.elapsed_s.iloc[-1]), 1),
        "steps": int(m.step.iloc[-1]),
        "train_acc_99_step": first_step(m, "train_acc", 0.99),
        "test_acc_99_step": test_99, "test_acc_999_step": grokked,
        "training_s_to_test_acc_999": None if grokked is None
        else round(float(m.elapsed_s[m.step == grokked].iloc[0]), 1),
        "final_test_acc": float(m.test_acc.iloc[-1]),
        "final_test_loss": float(m.test_loss.iloc[-1]),
    }
    name = f"p = {config['p']}, {result['steps']:,} steps"
    if grokked is None:
        raise StepFailed(f"{name}: test accuracy never reached {GROKKED:.1%} (final "
                         f"{result['final_test_acc']:.1%})", result)
    figure = (f"{name}: test acc >= 99% at step {test_99:,}, >= 99.9% at {grokked:,} "
              f"({result['training_s_to_test_acc_999']} s); all steps "
              f"{result['training_s']} s")
    return figure, result


def step_train_many(ctx: Context) -> tuple[str, dict]:
    """benchmarks/train_many.py on the device: batched vs one after another."""
    result = run_benchmark(ctx, "train_many")
    rows = {row["how"]: row for row in result["rows"]}
    batched = rows["batched (train_many)"]
    figure = (f"batched step {batched['ratio_to_one_after_another']:.2f}x the time of "
              "one after another")
    if not ctx.quick:
        runs, same = result["set"]["runs"], result["runs_with_same_final_test_acc"]
        sequential = rows["one after another (train)"]
        figure += (f"; whole set {result['total_ratio']:.2f}x ({batched['total_s']} s "
                   f"vs {sequential['total_s']} s); final test acc agrees for "
                   f"{same}/{runs}")
        if same != runs:
            raise StepFailed(f"{figure}: batched and one-after-another training "
                             "disagree", result)
    return figure, result


def notebooks(quick: bool) -> list[str]:
    """What the check executes: every chapter and the instructor guide (quick: the
    guide alone, which trains nothing)."""
    guide = "book/instructor_guide.ipynb"
    chapters = sorted((ROOT / "solutions").glob("*.ipynb"))
    return [guide] if quick else [str(p.relative_to(ROOT)) for p in chapters] + [guide]


def junit_notebooks(xml_path: Path, paths: list[str]) -> dict[str, dict]:
    """Per notebook, from pytest's JUnit XML: cells run, failed, skipped; seconds."""
    names = {path.replace("/", "."): path for path in paths}  # JUnit's classname → path
    per: dict[str, dict] = {}
    for case in ET.parse(xml_path).iter("testcase"):
        path = names.get(case.get("classname", ""), case.get("classname", "?"))
        row = per.setdefault(path, dict(cells=0, failed=0, skipped=0, seconds=0.0))
        row["cells"] += 1
        row["seconds"] = round(row["seconds"] + float(case.get("time", 0)), 1)
        if case.find("failure") is not None or case.find("error") is not None:
            row["failed"] += 1
        if case.find("skipped") is not None:
            row["skipped"] += 1
    return per


def step_notebooks(ctx: Context) -> tuple[str, dict]:
    """Every chapter under nbval, with a fresh run cache."""
    paths = notebooks(ctx.quick)
    xml_path = ctx.work / "notebooks.xml"
    # -p no:tools.records: this device's times must not enter the records of the CPU
    # runs that `make record` copies into book/records/.
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:tools.records",
           "-q", f"--junitxml={xml_path}", *paths]
    code, output = run_process(ctx, "notebooks", cmd)
    per = junit_notebooks(xml_path, paths) if xml_path.is_file() else {}
    cells = sum(row["cells"] for row in per.values())
    bad = [nb for nb, row in per.items() if row["failed"] or row["skipped"]]
    result = {"notebooks": per, "cells": cells, "pytest_exit_code": code}
    if code != 0 or bad or len(per) != len(paths):
        names = ", ".join(Path(nb).stem for nb in bad) or "none recorded"
        raise StepFailed(f"{len(per)} of {len(paths)} notebooks ran; failed or "
                         f"skipped cells in: {names}; pytest's last lines:\n"
                         f"{tail(output)}", result)
    slowest = max(per, key=lambda nb: per[nb]["seconds"])
    figure = (f"{len(per)} notebooks, {cells} cells passed; slowest "
              f"{Path(slowest).stem} ({per[slowest]['seconds']:.0f} s)")
    return figure, result


STEP_FUNCTIONS: dict[str, Callable[[Context], tuple[str, dict]]] = {
    "train_speed": step_train_speed, "paper": step_paper,
    "train_many": step_train_many, "notebooks": step_notebooks,
}


# --- the driver ----------------------------------------------------------------------
def check_device(device: str, quick: bool) -> str:
    """The device, refused with a hint when it is not cpu/cuda or CUDA is missing."""
    import torch

    if device not in ("cpu", "cuda"):  # not cuda:N: the chapters' get_run takes cuda:0
        raise SystemExit(f"gpu_check: --device must be cuda or cpu, got {device!r} (to "
                         "use another GPU, set CUDA_VISIBLE_DEVICES=N)")
    if device == "cuda" and not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else "no GPU found"
        raise SystemExit(f"gpu_check: CUDA is not available (torch "
                         f"{torch.__version__}, {build}). Without a GPU, run the dry "
                         "run: --device cpu --quick")
    if device == "cpu" and not quick:
        print("gpu_check: a full check on the CPU takes far longer than the 8-minute "
              "budget (the dry run is --device cpu --quick)", file=sys.stderr)
    return device


def machine(device: str) -> dict:
    """What the check ran on, and whether training was compiled."""
    import torch

    from utils.train.loop import compile_default

    return {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "compile": compile_default(device)}


def summary_table(steps: list[Step], total: float, budget: float) -> str:
    """A row per step (status, seconds, its figures' first line), then the total."""
    width = max(len(s.name) for s in [*steps, Step("total")])
    lines = [f"{'step':{width}}  {'status':7} {'seconds':>8}  key figure"]
    for s in steps:
        status = "passed" if s.passed else "FAILED"
        figure = s.figure.splitlines()[0] if s.figure else ""
        lines.append(f"{s.name:{width}}  {status:7} {s.seconds:8.1f}  {figure}")
    verdict = "within" if total <= budget else "OVER"
    lines.append(f"{'total':{width}}  {'':7} {total:8.1f}  {verdict} the budget of "
                 f"{budget:.0f} s ({budget / 60:g} min)")
    return "\n".join(lines)


def run_step(name: str, ctx: Context, info: dict) -> Step:
    """Run one step, catching any failure; write its JSON."""
    step, start = Step(name), time.perf_counter()
    try:
        step.figure, step.result = STEP_FUNCTIONS[name](ctx)
        step.passed = True
    except Exception as err:  # report it and go on with the other steps
        known = isinstance(err, StepFailed)  # else a bug, or a result's shape changed
        step.figure = str(err) if known else f"{type(err).__name__}: {err}"
        step.result = err.result if known else {}
        print(f"    FAILED: {step.figure}", flush=True)
    step.seconds = time.perf_counter() - start
    step.result = {"step": name, "passed": step.passed,
                   "seconds": round(step.seconds, 1), "figure": step.figure,
                   "quick": ctx.quick, "machine": info, **step.result}
    ctx.result_path(name).write_text(json.dumps(step.result, indent=2) + "\n")
    status = "passed" if step.passed else "FAILED"
    print(f"    {status} in {step.seconds:.1f} s", flush=True)
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda",
                        help="cuda (the default; choose the GPU with "
                        "CUDA_VISIBLE_DEVICES) or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="the dry run, small and fast: *_<device>_quick.json")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder for the results (default: benchmarks/results)")
    parser.add_argument("--budget", type=float, default=BUDGET_S,
                        help=f"seconds the whole check may take (default {BUDGET_S})")
    parser.add_argument("--step-timeout", type=float, default=900,
                        help="seconds after which a step is killed (default 900)")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS),
                        help="run these steps only")
    args = parser.parse_args(argv)
    device = check_device(args.device, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine(device)
    mode = "the quick dry run" if args.quick else "full"
    print(f"GPU check on {device} ({info['gpu'] or info['processor']}), torch "
          f"{info['torch']}, {mode}", flush=True)
    start = time.perf_counter()
    steps = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        env = {**os.environ, "GROKKING_RUNS_DIR": str(Path(tmp) / "runs"),
               "PYTHONUNBUFFERED": "1"}
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU check, even where there is a GPU
        ctx = Context(device, args.quick, args.out, Path(tmp), env, args.step_timeout)
        for i, name in enumerate(args.only, 1):
            print(f"[{i}/{len(args.only)}] {name} …", flush=True)
            steps.append(run_step(name, ctx, info))
    total = time.perf_counter() - start
    table = summary_table(steps, total, args.budget)
    summary = {"machine": info, "quick": args.quick, "total_s": round(total, 1),
               "budget_s": args.budget, "within_budget": total <= args.budget,
               "steps": [{k: s.result[k] for k in ("step", "passed", "seconds",
                                                    "figure")} for s in steps],
               "table": table}
    ctx.result_path("gpu_check").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n" + table)
    written = ", ".join(ctx.result_path(n).name for n in [*args.only, "gpu_check"])
    print(f"written to {args.out}: {written}")
    return 0 if all(s.passed for s in steps) and total <= args.budget else 1


if __name__ == "__main__":
    sys.exit(main())
