"""utils.train: the fast trainer is the HookedTransformer model; runs resume, cache, lock and refuse bad input."""
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from utils import REPO_ROOT
from utils.data import make_dataset, train_test_split
from utils.model import CheckpointError, make_model, model_config
from utils.train import (MIN_TRAIN_PAIRS, TrainConfig, get_run, load_run, loss_fn, main, train,
                         trainable_params)

TINY = dict(p=23, frac_train=0.5, d_model=32, n_heads=2, d_mlp=64, lr=3e-3, weight_decay=1.0,
            steps=120, checkpoint_every=20, eval_every=10)


def tiny(**overrides) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **overrides})


def weights(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainable_params(run.model).items()}


def run_python(code: str, env_extra: dict | None = None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GROKKING_COMPILE": "0", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_loss_is_float64_and_resolves_tiny_losses():
    logits = torch.zeros(2, 5)
    logits[:, 0] = 20.0  # p(correct) ≈ 1 - 8e-9: float32 log-softmax rounds this loss to 0
    loss = loss_fn(logits, torch.tensor([0, 0]))
    assert loss.dtype == torch.float64 and 1e-9 < loss.item() < 1e-7


def test_training_starts_from_make_model_and_final_weights_load_into_it(tmp_path):
    cfg = tiny()
    run = train(cfg, tmp_path / "run", compile=False, progress=False)
    initial = make_model(model_config(p=cfg.p, d_model=cfg.d_model, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, seed=cfg.seed))
    at_zero = run.model_at(0)
    assert all(torch.equal(a, b) for a, b in zip(initial.parameters(), at_zero.parameters()))
    assert run.checkpoint_steps == list(range(0, cfg.steps + 1, cfg.checkpoint_every))
    assert all(torch.equal(a, b) for a, b in zip(run.model_at(cfg.steps).parameters(), run.model.parameters()))
    tokens, labels = run.dataset()
    logits = run.model(tokens)[:, -1]
    final = run.metrics.iloc[-1]
    assert final.step == cfg.steps
    assert loss_fn(logits[run.test_idx], labels[run.test_idx]).item() == pytest.approx(final.test_loss, rel=1e-4)
    assert run.metrics.train_loss.iloc[-1] < run.metrics.train_loss.iloc[0] / 10  # it learned something


# --- resuming after a crash ------------------------------------------------------------------------
KILL_AFTER_CHECKPOINT = """
    import os, signal, sys, torch
    import utils.train as T
    import utils.train.store as S
    real_save = S.atomic_save
    def save_then_die(obj, path, *staged):
        real_save(obj, path, *staged)
        if path.name == "state.pt" and obj["step"] >= {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a real crash
    S.atomic_save = save_then_die
    T.train(T.TrainConfig.from_dict({cfg}), sys.argv[1] if len(sys.argv) > 1 else {run_dir!r}, compile=False, progress=False)
"""


def test_killed_run_resumes_to_the_same_final_weights(tmp_path):
    cfg = tiny()
    uninterrupted = train(cfg, tmp_path / "whole", compile=False, progress=False)

    proc = run_python(KILL_AFTER_CHECKPOINT.format(kill_at=60, cfg=cfg.to_dict(), run_dir=str(tmp_path / "crashed")))
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "crashed" / "state.pt", weights_only=True)["step"] == 60
    with pytest.raises(CheckpointError, match="unfinished run"):
        load_run(tmp_path / "crashed")

    resumed = train(cfg, tmp_path / "crashed", compile=False, progress=False)
    for name, w in weights(uninterrupted).items():
        assert torch.equal(w, weights(resumed)[name]), name
    same = ["step", "train_loss", "test_loss", "train_acc", "test_acc"]  # elapsed_s differs, of course
    assert resumed.metrics[same].equals(uninterrupted.metrics[same])


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    cfg = tiny()
    code = """
        import os, signal, torch
        import utils.train as T
        real_replace = os.replace
        def die_before_rename(src, dst):
            if str(dst).endswith("state.pt") and torch.load(src, weights_only=True)["step"] == 80:
                os.kill(os.getpid(), signal.SIGKILL)  # the new file is written but not yet in place
            real_replace(src, dst)
        os.replace = die_before_rename
        T.train(T.TrainConfig.from_dict({cfg}), {run_dir!r}, compile=False, progress=False)
    """.format(cfg=cfg.to_dict(), run_dir=str(tmp_path / "run"))
    proc = run_python(code)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert list((tmp_path / "run").glob(".state.pt.*.tmp"))  # the half-finished write is left behind …
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 60  # … the last good state is intact
    resumed = train(cfg, tmp_path / "run", compile=False, progress=False)
    assert resumed.metrics.step.iloc[-1] == cfg.steps
    assert not list((tmp_path / "run").rglob("*.tmp"))  # the resuming writer, holding the lock, removed it


# --- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, field", [
    (dict(p=2), "p"), (dict(p=11.5), "p"), (dict(frac_train=0.0), "frac_train"), (dict(frac_train=1.2), "frac_train"),
    (dict(steps=0), "steps"), (dict(steps=-10), "steps"), (dict(checkpoint_every=0), "checkpoint_every"),
    (dict(lr=0), "lr"), (dict(weight_decay=-1), "weight_decay"), (dict(d_model=30, n_heads=4), "d_model"),
    (dict(op="divide"), "op"), (dict(betas=(0.9, 1.0)), "betas"), (dict(stepz=10), "stepz"),
])
def test_invalid_config_raises_value_error_naming_the_field_and_range(overrides, field):
    with pytest.raises(ValueError, match=field) as err:
        tiny(**overrides)
    assert "must be" in str(err.value) or "valid fields" in str(err.value)


def test_unknown_preset_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="paper.*workshop"):
        TrainConfig.preset("fast")


def test_cli_rejects_bad_config_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "workshop", "--p", "2", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "p must be a prime between 3 and" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_presets_hold_the_papers_and_the_workshop_hyperparameters():
    paper = TrainConfig.preset("paper")
    assert (paper.lr, paper.weight_decay, paper.frac_train, paper.betas, paper.steps) == (1e-3, 1.0, 0.3, (0.9, 0.98), 40_000)
    workshop = TrainConfig.preset("workshop", seed=3)
    assert workshop.seed == 3 and workshop.key() != TrainConfig.preset("workshop").key()


@pytest.mark.parametrize("p", [3, 23, 53, 59, 61, 67, 71, 113, 127])
def test_workshop_preset_trains_on_enough_pairs_for_small_moduli(p):
    cfg = TrainConfig.preset("workshop", p=p)
    pairs = round(cfg.frac_train * p * p)
    assert cfg.frac_train == 0.3 or pairs >= MIN_TRAIN_PAIRS["workshop"] or cfg.frac_train == 0.5
    assert cfg.frac_train >= 0.3 and round(cfg.frac_train, 2) == cfg.frac_train
    if cfg.frac_train > 0.3:  # the smallest whole percentage that holds enough pairs, or the 50% cap
        assert cfg.frac_train == 0.5 or round((cfg.frac_train - 0.01) * p * p) < MIN_TRAIN_PAIRS["workshop"]


def test_an_explicit_data_fraction_overrides_the_presets_minimum():
    assert TrainConfig.preset("workshop", p=59, frac_train=0.3).frac_train == 0.3
    assert TrainConfig.preset("paper", p=59).frac_train == 0.3  # the paper's preset trains as the paper did
    assert TrainConfig.preset("workshop").frac_train == 0.3  # the course's own run (p = 113) is unchanged


def test_reusing_a_run_directory_with_another_config_is_refused(tmp_path):
    train(tiny(steps=20), tmp_path / "run", compile=False, progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        train(tiny(steps=40, lr=1e-2), tmp_path / "run", compile=False, progress=False)


@pytest.mark.parametrize("victim", ["state.pt", "checkpoints/step_000020.pt"])
def test_truncated_checkpoint_error_names_the_file_and_the_fix(tmp_path, victim):
    run_dir = tmp_path / "run"
    train(tiny(steps=40), run_dir, compile=False, progress=False)
    path = run_dir / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_run(run_dir).model_at(20)
    assert str(path) in str(err.value) and f"delete the run directory {run_dir}" in str(err.value)


def test_model_at_a_step_without_checkpoint_names_the_nearest(tmp_path):
    run = train(tiny(steps=40), tmp_path / "run", compile=False, progress=False)
    with pytest.raises(ValueError, match="nearest is 20"):
        run.model_at(23)


# --- the cache ----------------------------------------------------------------------------------------
def test_get_run_trains_once_and_then_loads_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROKKING_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("GROKKING_COMPILE", "0")
    first = get_run(tiny(steps=20), progress=False)
    mtime = (first.run_dir / "state.pt").stat().st_mtime_ns
    second = get_run(tiny(steps=20), progress=False)
    assert second.run_dir == first.run_dir and (second.run_dir / "state.pt").stat().st_mtime_ns == mtime
    assert get_run(tiny(steps=20, seed=1), progress=False).run_dir != first.run_dir


def test_two_processes_asking_for_the_same_run_train_it_once(tmp_path):
    code = """
        import utils.train as T
        import utils.train.single as single
        real_train = single.train
        def counting_train(*args, **kwargs):
            with open({log!r}, "a") as f:
                f.write("trained\\n")
            return real_train(*args, **kwargs)
        single.train = counting_train  # what get_run calls
        run = T.get_run(T.TrainConfig.from_dict({cfg}), progress=False)
        print(run.run_dir)
    """.format(log=str(tmp_path / "log"), cfg=tiny().to_dict())
    procs = [run_python(code, {"GROKKING_RUNS_DIR": str(tmp_path / "runs")}) for _ in range(2)]
    outputs = [proc.communicate(timeout=180) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert (tmp_path / "log").read_text().count("trained") == 1
    assert outputs[0][0] == outputs[1][0]


def test_cli_trains_a_run_and_reports_accuracy(tmp_path):
    proc = run_python(f"from utils.train import main; main(['--p', '23', '--steps', '30', '--checkpoint-every', '10', "
                      f"'--d-mlp', '64', '--out', {str(tmp_path / 'run')!r}, '--no-compile'])")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "test acc" in out and (tmp_path / "run" / "metrics.csv").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["p"] == 23


def test_cli_reports_what_the_stop_rule_saw_and_never_calls_the_run_grokked(tmp_path, capsys):
    cfg = tiny(steps=400, stop_margin=20, stop_test_acc=0.05, stop_loss_fall=1.5)  # stops within 400 steps
    fields = {k: v for k, v in cfg.to_dict().items() if k in {**TINY, "steps": 0, "stop_margin": 0,
                                                                 "stop_test_acc": 0, "stop_loss_fall": 0}}
    main([x for k, v in fields.items() for x in (f"--{k.replace('_', '-')}", str(v))]
         + ["--out", str(tmp_path / "run"), "--no-compile"])
    run = load_run(tmp_path / "run")
    assert run.stop_reason == "grokked" and run.final_step < 400  # (this run did not even fit its training pairs)
    out = capsys.readouterr().out
    assert f"stopped by the stop rule at step {run.final_step} (test accuracy ≥ 5.0% for 20 steps" in out
    assert "grokked" not in out


def test_failed_compile_falls_back_to_identical_eager_training(tmp_path, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="torch.compile unavailable"):
        fallback = train(tiny(steps=30), tmp_path / "a", compile=True, progress=False)
    eager = train(tiny(steps=30), tmp_path / "b", compile=False, progress=False)
    assert all(torch.equal(w, weights(eager)[k]) for k, w in weights(fallback).items())


def test_compiled_training_is_deterministic_and_close_to_eager(tmp_path):
    """Two compiled runs give identical weights (no atomic scatter-adds), and agree with eager training."""
    first = train(tiny(steps=40), tmp_path / "a", compile=True, progress=False)
    second = train(tiny(steps=40), tmp_path / "b", compile=True, progress=False)
    eager = train(tiny(steps=40), tmp_path / "c", compile=False, progress=False)
    assert all(torch.equal(w, weights(second)[k]) for k, w in weights(first).items())
    assert all(torch.allclose(w, weights(eager)[k], rtol=1e-3, atol=1e-5) for k, w in weights(first).items())


@pytest.mark.parametrize("many", [False, True])
def test_progress_bar_redraws_about_once_a_second_however_often_it_evaluates(tmp_path, monkeypatch, many):
    """In a notebook each redraw is a message to the front end; thousands in one cell made nbval lose the cell's end."""
    import tqdm as tqdm_module

    import utils.train as train_module
    import utils.train.loop as loop_module
    draws = []

    class CountingBar(tqdm_module.tqdm):
        def display(self, *args, **kwargs):
            draws.append(time.monotonic())
            return super().display(*args, **kwargs)

    monkeypatch.setattr(loop_module, "tqdm", CountingBar)
    cfg = tiny(steps=300, eval_every=1, checkpoint_every=300)
    start = time.monotonic()
    if many:
        train_module.train_many([cfg, tiny(steps=300, eval_every=1, checkpoint_every=300, seed=1)],
                                [tmp_path / "a", tmp_path / "b"], progress=True)
    else:
        train(cfg, tmp_path / "run", compile=False, progress=True)
    elapsed = time.monotonic() - start
    assert len(draws) <= elapsed + 3, f"{len(draws)} redraws in {elapsed:.1f} s for 300 evaluations"


# --- one writer per run directory (issue 16) --------------------------------------------------------------------
def stopped(proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until proc is stopped by SIGSTOP (state T in /proc), or has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if Path(f"/proc/{proc.pid}/stat").read_text().split(")")[-1].split()[0] == "T":
            return True
        time.sleep(0.05)
    return False


class Lines:
    """A child's text stream, read line by line on a thread, so a test can wait for a line without blocking."""

    def __init__(self, stream):
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()
        self.text = ""

    def _read(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.queue.put(line)

    def until(self, text: str, timeout: float = 120) -> None:
        """Wait until a line read contains `text` (fail after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while text not in self.text:
            try:
                self.text += self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {text!r} within {timeout:.0f} s; read: {self.text!r}")

    def all(self, timeout: float = 120) -> str:
        """Everything the stream held, once it is closed."""
        self.thread.join(timeout)
        while not self.queue.empty():
            self.text += self.queue.get()
        return self.text


PAUSE_AT = """
    import os, signal, sys
    import utils.train as T
    import utils.train.store as S
    real_save = S.atomic_save
    def save_then_pause(obj, path, *staged):
        real_save(obj, path, *staged)
        if path.name == "state.pt" and obj["step"] == {pause_at}:
            os.kill(os.getpid(), signal.SIGSTOP)  # a paused writer (Ctrl-Z, a laptop asleep, a debugger)
    S.atomic_save = save_then_pause
    T.train(T.TrainConfig.from_dict({cfg}), {run_dir!r}, compile=False, progress=False)
"""


def test_a_second_writer_waits_for_the_first_and_never_rewrites_a_finished_run(tmp_path):
    """Repro: writer B pauses mid-run; writer A on the same folder used to train on and finish, and B, woken,
    rewrote state.pt at an earlier step. Now A waits (saying for which process) and then finds B's run finished."""
    cfg, run_dir = tiny(), tmp_path / "run"
    paused = run_python(PAUSE_AT.format(pause_at=40, cfg=cfg.to_dict(), run_dir=str(run_dir)))
    assert stopped(paused), paused.communicate()
    second = run_python(f"""
        import utils.train as T
        import utils.train.lock as L
        L.LOCK_NOTICE_S = 0.5
        run = T.train(T.TrainConfig.from_dict({cfg.to_dict()}), {str(run_dir)!r}, compile=False, progress=True)
        print("final step", run.final_step)
    """)
    # on a loaded machine its start-up alone can take seconds: wait for its notice, not a fixed time
    err = Lines(second.stderr)
    err.until(f"waiting for process {paused.pid}")
    assert second.poll() is None, err.text  # still waiting: it did not train around the paused writer
    os.kill(paused.pid, signal.SIGCONT)
    out_b, err_b = paused.communicate(timeout=120)
    out_a, err_a = second.stdout.read(), err.all()
    second.wait(timeout=120)
    assert paused.returncode == 0 and second.returncode == 0, (err_b, err_a)
    assert "already finished" in err_a
    assert "final step 120" in out_a
    state = torch.load(run_dir / "state.pt", weights_only=True)
    assert state["step"] == cfg.steps and state["stopped"] == "all steps"


def test_training_a_finished_run_again_returns_it_untouched(tmp_path, capsys):
    first = train(tiny(steps=20), tmp_path / "run", compile=False, progress=False)
    mtimes = {p: p.stat().st_mtime_ns for p in first.run_dir.rglob("*")}
    again = train(tiny(steps=20), tmp_path / "run", compile=False, progress=True)
    assert "already finished" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in first.run_dir.rglob("*")} == mtimes
    assert weights(again).keys() == weights(first).keys()


def test_get_run_waiting_for_a_lock_says_which_process_holds_it(tmp_path, monkeypatch, capsys):
    import utils.train.lock as L
    monkeypatch.setenv("GROKKING_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(L, "LOCK_NOTICE_S", 0.2)
    cfg = tiny(steps=10)
    holder = run_python(f"""
        import sys, time
        from pathlib import Path
        import utils.train.lock as L
        lock = L.acquire(Path({str(tmp_path / cfg.run_name())!r}))
        print("held", flush=True)
        time.sleep(3)
    """)
    assert holder.stdout.readline().strip() == "held"
    run = get_run(cfg, compile=False, progress=False)
    holder.communicate(timeout=60)
    assert f"waiting for process {holder.pid}" in capsys.readouterr().err
    assert run.final_step == 10


# --- resuming from a step-0 save -------------------------------------------------------------------------------


@pytest.mark.parametrize("many", [False, True])
def test_resuming_from_the_step_0_save_records_step_0_once(tmp_path, monkeypatch, interrupt_after, many):
    from utils.train import train_many
    cfg = tiny(steps=40)
    go = (lambda: train_many([cfg], [tmp_path / "run"], progress=False)[0]) if many else (
        lambda: train(cfg, tmp_path / "run", compile=False, progress=False))
    restore = interrupt_after(0)
    with pytest.raises(KeyboardInterrupt):
        go()
    restore()
    run = go()
    assert not run.metrics.step.duplicated().any(), run.metrics.step.tolist()
    assert run.metrics.step.tolist() == list(range(0, 41, 10))  # increasing, as phase_boundaries needs


# --- damaged files and bad input get clear errors ---------------------------------------------------------------
@pytest.fixture
def finished(tmp_path):
    return train(tiny(steps=20, checkpoint_every=10), tmp_path / "run", compile=False, progress=False).run_dir


def test_empty_state_or_checkpoint_is_a_checkpoint_error(finished):
    (finished / "checkpoints" / "step_000010.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="step_000010.pt.*delete the run directory"):
        load_run(finished).model_at(10)
    (finished / "state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="state.pt.*delete the run directory"):
        load_run(finished)


def test_load_run_on_a_file_is_a_clear_error(finished):
    with pytest.raises(ValueError, match="is a file, not a run directory"):
        load_run(finished / "metrics.csv")


@pytest.mark.parametrize("damage", ["folder", "nested", "not json", "not a dict"])
def test_a_damaged_config_json_is_a_checkpoint_error(finished, damage):
    path = finished / "config.json"
    path.unlink()
    if damage == "folder":
        path.mkdir()
    else:
        path.write_text({"nested": "[" * 100_000 + "]" * 100_000, "not json": "{p: 23",
                         "not a dict": "[1, 2]"}[damage])
    with pytest.raises(CheckpointError, match="config.json.*Delete the run directory"):
        load_run(finished)


@pytest.mark.parametrize("damage", ["missing column", "unequal lengths", "repeated step", "wrong last step",
                                    "not tensors", "nan"])
def test_damaged_metrics_inside_state_are_a_checkpoint_error(finished, damage):
    path = finished / "state.pt"
    state = torch.load(path, weights_only=True)
    m = state["metrics"]
    if damage == "missing column":
        del m["test_acc"]
    elif damage == "unequal lengths":
        m["test_acc"] = m["test_acc"][:-1]
    elif damage == "repeated step":
        m.update({k: torch.cat([v[:1], v]) for k, v in m.items()})
    elif damage == "wrong last step":
        m["step"] = m["step"] * 2
    elif damage == "not tensors":
        state["metrics"] = [1, 2, 3]
    else:
        m["train_loss"][1] = float("nan")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="metrics history is damaged"):
        load_run(finished)


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """Run the command line in this process (argparse errors exit with 2, training errors return 1)."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.mark.parametrize("args, message", [
    (["--out", ""], "empty string"),
    (["--device", "foo"], "device must be 'cpu' or 'cuda'"),
    (["--betas", "0.9", "1.5"], "betas must be two numbers"),
    (["--seed", "-1"], "seed must be an integer in"),
    (["--p", "91"], "p must be a prime"),
    (["--p", "1021"], "p must be a prime between 3 and 509"),
    (["--orthogonal-grad", "maybe"], "expected true or false"),
    (["--loss", "mse"], "loss must be one of"),
])
def test_cli_refuses_bad_arguments_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    base = ["--steps", "10"] + ([] if "--p" in args else ["--p", "23"])
    done = cli(capsys, *base, *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())  # nothing written, not even in the current folder


def test_cli_out_pointing_at_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    done = cli(capsys, "--p", "23", "--steps", "10", "--out", str(target))
    assert done.returncode == 2 and "is a file, not a run directory" in done.stderr and "Traceback" not in done.stderr
    assert target.read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_device_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    done = cli(capsys, "--p", "23", "--steps", "10", "--device", "cuda", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "CUDA is not available" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, field", [
    (dict(betas=5), "betas"), (dict(betas=(0.9,)), "betas"), (dict(seed=-1), "seed"), (dict(seed=2 ** 32), "seed"),
    (dict(p=21), "p"), (dict(p=2), "p"), (dict(p=521), "p"), (dict(name="../escape"), "name"),
    (dict(name="a/b"), "name"), (dict(name=""), "name"), (dict(stop_margin=-10), "stop_margin"),
    (dict(stop_margin=15), "stop_margin"), (dict(stop_loss_fall=1.0), "stop_loss_fall"),
    (dict(frac_train=0.0001), "frac_train"), (dict(lr=float("nan")), "lr"), (dict(p=True), "p"),
])
def test_config_is_checked_before_any_folder_exists(tmp_path, monkeypatch, overrides, field):
    monkeypatch.setenv("GROKKING_RUNS_DIR", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        get_run(tiny(**overrides))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_name_cannot_write_outside_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROKKING_RUNS_DIR", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="name"):
        get_run(tiny(steps=10, name="../../outside"), compile=False, progress=False)
    assert not any(tmp_path.glob("outside*"))


# --- divergence ----------------------------------------------------------------------------------------------
def test_a_diverging_run_stops_with_an_error_and_is_not_cached_as_finished(tmp_path, monkeypatch):
    from utils.train import TrainingDivergedError, UnfinishedRunError
    monkeypatch.setenv("GROKKING_RUNS_DIR", str(tmp_path))
    cfg = tiny(lr=1e300, steps=40)
    with pytest.raises(TrainingDivergedError, match="diverged at step 10.*learning rate"):
        get_run(cfg, compile=False, progress=False)
    with pytest.raises(UnfinishedRunError):
        load_run(tmp_path / cfg.run_name())
    state = torch.load(tmp_path / cfg.run_name() / "state.pt", weights_only=True)
    assert state["step"] == 0 and all(torch.isfinite(v).all() for v in state["params"].values())


def test_cli_reports_divergence_without_a_traceback(tmp_path, capsys):
    done = cli(capsys, "--no-compile", "--p", "23", "--steps", "30", "--d-mlp", "64", "--lr", "1e300",
               "--out", str(tmp_path / "run"))
    assert done.returncode == 1 and "diverged" in done.stderr and "Traceback" not in done.stderr


# --- trust, with verification -----------------------------------------------------------------------------------
def test_get_run_refuses_a_cache_folder_copied_from_another_config(tmp_path, monkeypatch):
    import shutil
    monkeypatch.setenv("GROKKING_RUNS_DIR", str(tmp_path))
    ours, theirs = tiny(steps=20), tiny(steps=20, seed=1)
    source = get_run(theirs, compile=False, progress=False).run_dir
    shutil.copytree(source, tmp_path / ours.run_name())  # copied under another config's name …
    with pytest.raises(CheckpointError, match=f"Delete {tmp_path / ours.run_name()}"):
        get_run(ours, compile=False, progress=False)
    (tmp_path / ours.run_name() / "config.json").write_text(json.dumps(ours.to_dict()))  # … and config.json "fixed"
    with pytest.raises(CheckpointError, match="another configuration.*delete the run directory|Delete the run"):
        get_run(ours, compile=False, progress=False)


def test_a_hand_edited_config_json_is_refused(finished):
    config = json.loads((finished / "config.json").read_text())
    (finished / "config.json").write_text(json.dumps({**config, "lr": config["lr"] * 2}))
    with pytest.raises(CheckpointError, match="another configuration"):
        load_run(finished)


def test_a_checkpoint_from_another_run_is_refused(tmp_path, finished):
    other = train(tiny(steps=20, checkpoint_every=10, seed=5), tmp_path / "other", compile=False, progress=False)
    (finished / "checkpoints" / "step_000010.pt").write_bytes(
        (other.run_dir / "checkpoints" / "step_000010.pt").read_bytes())
    with pytest.raises(CheckpointError, match="another configuration"):
        load_run(finished).model_at(10)


@pytest.mark.parametrize("damage", ["shape", "step"])
def test_a_mismatched_optimizer_state_is_refused_before_resuming(tmp_path, monkeypatch, interrupt_after, damage):
    run_dir = tmp_path / "run"
    restore = interrupt_after(10)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(steps=20, checkpoint_every=10), run_dir, compile=False, progress=False)
    restore()
    state = torch.load(run_dir / "state.pt", weights_only=True)
    moments = state["optimizer"]["state"][0]
    if damage == "shape":
        moments["exp_avg"] = moments["exp_avg"][:-1]
    else:
        moments["step"] = moments["step"] + 5
    torch.save(state, run_dir / "state.pt")
    with pytest.raises(CheckpointError, match="optimiser state does not match"):
        train(tiny(steps=20, checkpoint_every=10), run_dir, compile=False, progress=False)


def test_state_records_whether_training_was_compiled_and_the_fallback_says_it_differs(tmp_path, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning) as caught:
        run = train(tiny(steps=10), tmp_path / "run", compile=True, progress=False)
    message = str(caught[0].message)
    assert "same results" not in message and "not bit-identical" in message
    assert torch.load(run.run_dir / "state.pt", weights_only=True)["compiled"] == [False]


def test_unfinished_runs_raise_a_typed_error(tmp_path, monkeypatch, interrupt_after):
    from utils.train import UnfinishedRunError
    restore = interrupt_after(20)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(steps=40), tmp_path / "run", compile=False, progress=False)
    restore()
    with pytest.raises(UnfinishedRunError) as err:
        load_run(tmp_path / "run")
    assert isinstance(err.value, CheckpointError) and (err.value.step, err.value.steps) == (20, 40)


# --- the stop rule -------------------------------------------------------------------------------------------------
def history(steps, acc, loss):
    return {"step": list(steps), "test_acc": list(acc), "test_loss": list(loss)}


def test_stop_rule_waits_for_grokking_held_for_the_margin_and_a_levelled_test_loss():
    from utils.train import should_stop
    cfg = tiny(steps=1000, stop_margin=30, stop_test_acc=0.999, stop_loss_fall=2.0)
    steps = range(0, 70, 10)
    assert not should_stop(cfg, history(steps, [0.2] * 7, [1.0] * 7))  # not grokked
    assert not should_stop(cfg, history(steps, [0.2] * 4 + [1.0] * 3, [1e-3] * 7))  # grokked, not for the margin
    falling = [10.0 ** -k for k in range(7)]
    assert not should_stop(cfg, history(steps, [1.0] * 7, falling))  # cleanup still going
    assert should_stop(cfg, history(steps, [1.0] * 7, [1e-5] * 7))
    assert should_stop(cfg, history(steps, [1.0] * 7, [1e-5] * 3 + [0.6e-5] * 4))  # fell < 2x over 30 steps
    assert not should_stop(tiny(steps=1000), history(steps, [1.0] * 7, [1e-5] * 7))  # rule off


def test_a_run_with_a_stop_rule_stops_by_itself_and_counts_as_finished(tmp_path):
    cfg = tiny(steps=400, stop_margin=20, stop_test_acc=0.05, stop_loss_fall=1.5)
    run = train(cfg, tmp_path / "run", compile=False, progress=False)
    assert run.stop_reason == "grokked" and run.stopped_at == run.final_step < cfg.steps
    assert run.checkpoint_steps[-1] == run.final_step and load_run(run.run_dir).stopped_at == run.stopped_at
    m = run.metrics
    window = m[m.step >= run.final_step - cfg.stop_margin]
    assert (window.test_acc >= cfg.stop_test_acc).all()
    assert window.test_loss.iloc[0] / window.test_loss.iloc[-1] < cfg.stop_loss_fall
    assert torch.equal(run.model_at(run.final_step).W_E, run.model.W_E)


def test_a_run_that_hits_its_step_cap_without_the_rule_warns(tmp_path):
    cfg = tiny(steps=40, stop_margin=20, stop_test_acc=1.0)
    with pytest.warns(RuntimeWarning, match="step cap.*has not grokked"):
        run = train(cfg, tmp_path / "run", compile=False, progress=False)
    assert run.stop_reason == "step cap" and run.stopped_at is None and run.final_step == 40


def test_the_stop_rule_is_part_of_the_cache_key_only_when_on():
    assert tiny().key() == tiny(stop_test_acc=0.5).key()  # off: no effect on the weights
    assert tiny(stop_margin=20).key() != tiny().key() != tiny(stop_margin=20, stop_test_acc=0.5).key()


# --- kill/resume soak, small -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["single", "batched"])
def test_kill_resume_soak_small(tmp_path, mode):
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.soak import soak
    result = soak(mode, kills=3, workdir=tmp_path, seed=1)
    assert result["ok"], result["problems"]


def test_cli_reads_a_yes_no_option_as_a_boolean(tmp_path, capsys):
    off = cli(capsys, "--p", "23", "--steps", "10", "--checkpoint-every", "10", "--d-mlp", "64", "--no-compile",
              "--orthogonal-grad", "false", "--out", str(tmp_path / "off"))
    on = cli(capsys, "--p", "23", "--steps", "10", "--checkpoint-every", "10", "--d-mlp", "64", "--no-compile",
             "--orthogonal-grad", "true", "--out", str(tmp_path / "on"))
    assert off.returncode == on.returncode == 0, (off.stderr, on.stderr)
    assert json.loads((tmp_path / "off" / "config.json").read_text())["orthogonal_grad"] is False
    assert json.loads((tmp_path / "on" / "config.json").read_text())["orthogonal_grad"] is True
