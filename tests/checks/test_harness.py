"""The checks' machinery: safe calls (copies, time limit, every exception), messages, and what a pass looks like."""
from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
import torch

from utils import checks
from utils.checks import CheckFailed, harness
from utils.checks.compare import expect_tensor
from utils.data import make_dataset
from utils.fourier import fft1d, fourier_basis
from utils.train import loss_fn


def test_check_failed_is_an_assertion_error_rendered_without_traceback():
    err = CheckFailed("loss_fn: wrong")
    assert isinstance(err, AssertionError)
    assert err._render_traceback_() == ["\x1b[1;31mCheckFailed\x1b[0m: loss_fn: wrong"]


def test_checker_frames_are_marked_hidden():
    with pytest.raises(CheckFailed) as info:
        checks.check_make_dataset(lambda p: None)
    package = Path(checks.__file__).resolve().parent
    frames = [frame for frame, _ in traceback.walk_tb(info.value.__traceback__)]
    checker_frames = [f for f in frames if Path(f.f_code.co_filename).resolve().parent == package]
    assert checker_frames and all(f.f_locals.get("__tracebackhide__") for f in checker_frames)


def test_passing_check_prints_one_line(capsys):
    checks.check_make_dataset(make_dataset)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("✅ make_dataset")


def test_a_non_function_is_refused_with_how_to_pass_it(failure):
    message = failure(checks.check_make_dataset, make_dataset(5))
    assert "expected a function" in message and "check_make_dataset(make_dataset)" in message


def test_unfinished_exercise_says_so(failure):
    def stub(p):
        raise NotImplementedError

    assert "not filled in yet" in failure(checks.check_make_dataset, stub)


def test_learner_exception_is_reported_with_its_line(failure):
    def crashes(p):
        tokens = torch.zeros(p, 3)
        return tokens[:, 3], None

    message = failure(checks.check_make_dataset, crashes)
    assert "raised IndexError" in message and "return tokens[:, 3], None" in message and "p = 113" in message


def test_sys_exit_in_learner_code_is_a_check_failure_not_an_exit(failure):
    message = failure(checks.check_fft1d, lambda x: sys.exit(3))
    assert "sys.exit()" in message and "SystemExit" in message


def test_an_exception_whose_message_cannot_be_printed_is_still_reported(failure):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    def fn(x):
        raise Unprintable

    message = failure(checks.check_fft1d, fn)
    assert "raised Unprintable" in message and "could not be printed" in message


def test_a_function_that_never_returns_times_out_and_the_kernel_keeps_working(failure):
    previous_handler = signal.getsignal(signal.SIGALRM)
    checks.set_time_limit(0.5)
    try:
        def endless(x):
            while True:
                pass

        start = time.monotonic()
        message = failure(checks.check_fft1d, endless)
        assert time.monotonic() - start < 10
        assert "did not return within 0.5 s" in message and "while True" in message
        assert "except" not in message

        def swallows(x):  # a learner's `except Exception` cannot catch the time-out
            while True:
                try:
                    time.sleep(10)
                except Exception:
                    pass

        assert "did not return within 0.5 s" in failure(checks.check_fft1d, swallows)
    finally:
        checks.set_time_limit(30)
    assert signal.getsignal(signal.SIGALRM) is previous_handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    checks.check_fft1d(fft1d)  # the next check runs normally


def test_off_the_main_thread_the_time_limit_uses_a_worker_thread():
    checks.set_time_limit(0.3)
    messages = []

    def run():
        try:
            checks.check_fft1d(lambda x: time.sleep(3))
        except CheckFailed as err:
            messages.append(str(err))

    try:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join(10)
    finally:
        checks.set_time_limit(30)
    assert messages and "did not return within 0.3 s" in messages[0]


def test_the_time_limit_refuses_a_negative_number():
    with pytest.raises(ValueError, match="time limit"):
        checks.set_time_limit(-1)


def test_an_input_changed_in_place_is_named_and_the_callers_tensor_is_untouched(failure):
    def zeroes(x):
        result = fft1d(x)
        x.zero_()
        return result

    message = failure(checks.check_fft1d, zeroes)
    assert "changed its input `x` in place" in message and "zero_()" in message


@pytest.mark.parametrize("answer, expected", [
    (lambda x: fft1d(x).to("meta"), "meta device"),
    (lambda x: fft1d(x).to_sparse(), "dense"),
    (lambda x: fft1d(x).to(torch.complex128), "complex"),
    (lambda x: None, "forget the `return`"),
    (lambda x: fft1d(x).numpy(), "torch.from_numpy"),
    (lambda x: fft1d(x).tolist(), "should be a tensor"),
    (lambda x: "coefficients", "should be a tensor"),
])
def test_an_answer_of_the_wrong_kind_gets_a_clear_message(answer, expected, failure):
    assert expected in failure(checks.check_fft1d, answer)


def test_an_answer_that_breaks_the_comparison_becomes_a_check_failure(failure):
    class BadFloat(float):
        def __float__(self):
            raise RuntimeError("no float for you")

    def step(model, optimizer, tokens, labels):
        optimizer.zero_grad()
        loss = loss_fn(model(tokens), labels)
        loss.backward()
        optimizer.step()
        return BadFloat(loss.item())

    message = failure(checks.check_train_step, step)
    assert "could not use your function's answer" in message and "no float for you" in message


def test_shape_messages_name_the_axes_in_words():
    want = torch.zeros(7, dtype=torch.float64)
    with pytest.raises(CheckFailed) as info:
        expect_tensor("x", torch.zeros(3, 4, dtype=torch.float64), want, what="the values", on="here")
    assert "a single axis of sizes (7,)" in str(info.value) and "1 axes" not in str(info.value)


def test_a_float32_answer_right_to_float32_precision_is_told_to_use_float64():
    want = fourier_basis(113) @ torch.linspace(0, 1, 113, dtype=torch.float64)
    got = (fourier_basis(113).float() @ torch.linspace(0, 1, 113)).double()
    with pytest.raises(CheckFailed, match="float32 precision"):
        expect_tensor("x", got, want, what="the values", on="here", rtol=1e-7, atol=1e-9)


def test_harness_copies_models_so_the_learners_changes_stay_on_the_copy():
    from utils.checks.inputs import random_model
    model = random_model(7, 0)
    before = model.W_E.detach().clone()

    def breaks(m):
        with torch.no_grad():
            m.W_E.zero_()

    with pytest.raises(CheckFailed, match=r"changed its input `model` in place \(its weight embed.W_E changed\)"):
        harness.call("x", breaks, model, on="here", names=["model"])
    assert torch.equal(model.W_E, before)
