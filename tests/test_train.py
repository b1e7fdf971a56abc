"""utils.train: the fast trainer is the HookedTransformer model; runs resume, cache, lock and refuse bad input."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from utils import REPO_ROOT
from utils.data import make_dataset, train_test_split
from utils.model import CheckpointError, make_model, model_config
from utils.train import (TrainConfig, fast_logits, get_run, load_run, loss_fn, main, train,
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


# --- the fast path computes exactly what HookedTransformer computes ------------------------------
@pytest.mark.parametrize("p, d_model, n_heads, d_mlp", [(113, 128, 4, 512), (31, 48, 3, 80)])
def test_fast_logits_and_gradients_match_hooked_transformer(p, d_model, n_heads, d_mlp):
    model = make_model(model_config(p=p, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, seed=7))
    params = trainable_params(model)
    with torch.no_grad():  # sharpen the random weights so attention is far from uniform
        for w in params.values():
            w.mul_(3)
    tokens, labels = make_dataset(p)
    idx = train_test_split(p, 0.3, 0)[0]
    reference = model(tokens[idx])[:, -1]
    fast = fast_logits(params, tokens[idx, 0], tokens[idx, 1])
    assert (fast - reference).abs().max() / reference.abs().max() <= 1e-5

    loss_fn(reference, labels[idx]).backward()
    expected = {k: w.grad.clone() for k, w in params.items()}
    for w in params.values():
        w.grad = None
    loss_fn(fast_logits(params, tokens[idx, 0], tokens[idx, 1]), labels[idx]).backward()
    for name, w in params.items():
        assert (w.grad - expected[name]).norm() / expected[name].norm() <= 1e-5, name


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
    real_save = T._atomic_save
    def save_then_die(obj, path):
        real_save(obj, path)
        if path.name == "state.pt" and obj["step"] >= {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a real crash
    T._atomic_save = save_then_die
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
        T.os.replace = die_before_rename
        T.train(T.TrainConfig.from_dict({cfg}), {run_dir!r}, compile=False, progress=False)
    """.format(cfg=cfg.to_dict(), run_dir=str(tmp_path / "run"))
    proc = run_python(code)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert list((tmp_path / "run").glob(".state.pt.*.tmp"))  # the half-finished write is left behind …
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 60  # … the last good state is intact
    resumed = train(cfg, tmp_path / "run", compile=False, progress=False)
    assert resumed.metrics.step.iloc[-1] == cfg.steps


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
    assert "p must be an integer ≥ 3" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_presets_hold_the_papers_and_the_workshop_hyperparameters():
    paper = TrainConfig.preset("paper")
    assert (paper.lr, paper.weight_decay, paper.frac_train, paper.betas, paper.steps) == (1e-3, 1.0, 0.3, (0.9, 0.98), 40_000)
    workshop = TrainConfig.preset("workshop", seed=3)
    assert workshop.seed == 3 and workshop.key() != TrainConfig.preset("workshop").key()


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
        real_train = T.train
        def counting_train(*args, **kwargs):
            with open({log!r}, "a") as f:
                f.write("trained\\n")
            return real_train(*args, **kwargs)
        T.train = counting_train
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
    draws = []

    class CountingBar(tqdm_module.tqdm):
        def display(self, *args, **kwargs):
            draws.append(time.monotonic())
            return super().display(*args, **kwargs)

    monkeypatch.setattr(train_module, "tqdm", CountingBar)
    cfg = tiny(steps=300, eval_every=1, checkpoint_every=300)
    start = time.monotonic()
    if many:
        train_module.train_many([cfg, tiny(steps=300, eval_every=1, checkpoint_every=300, seed=1)],
                                [tmp_path / "a", tmp_path / "b"], progress=True)
    else:
        train(cfg, tmp_path / "run", compile=False, progress=True)
    elapsed = time.monotonic() - start
    assert len(draws) <= elapsed + 3, f"{len(draws)} redraws in {elapsed:.1f} s for 300 evaluations"
