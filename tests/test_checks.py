"""Each exercise check accepts the reference, rejects plausible wrong answers and says what is wrong."""
from __future__ import annotations

import traceback

import pytest
import torch
import torch.nn.functional as F

from utils import checks
from utils.checks import CheckFailed
from utils.data import make_dataset
from utils.model import model_config
from utils.train import loss_fn


def failure(check, fn) -> str:
    """The message of the CheckFailed that check(fn) raises."""
    with pytest.raises(CheckFailed) as info:
        check(fn)
    return str(info.value)


# --- the shared machinery ------------------------------------------------------------------------
def test_check_failed_is_an_assertion_error_rendered_without_traceback():
    err = CheckFailed("loss_fn: wrong")
    assert isinstance(err, AssertionError)
    assert err._render_traceback_() == ["\x1b[1;31mCheckFailed\x1b[0m: loss_fn: wrong"]


def test_checker_frames_are_marked_hidden():
    def broken(p):
        return None

    with pytest.raises(CheckFailed) as info:
        checks.check_make_dataset(broken)
    frames = [frame for frame, _ in traceback.walk_tb(info.value.__traceback__)]
    checker_frames = [f for f in frames if f.f_code.co_filename == checks.__file__]
    assert checker_frames and all(f.f_locals.get("__tracebackhide__") for f in checker_frames)


def test_passing_check_prints_one_line(capsys):
    checks.check_make_dataset(make_dataset)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("✅ make_dataset")


def test_a_non_function_is_refused_with_how_to_pass_it():
    message = failure(checks.check_make_dataset, make_dataset(5))
    assert "expected a function" in message and "check_make_dataset(make_dataset)" in message


def test_unfinished_exercise_says_so():
    def stub(p):
        raise NotImplementedError

    assert "not filled in yet" in failure(checks.check_make_dataset, stub)


def test_learner_exception_is_reported_with_its_line():
    def crashes(p):
        tokens = torch.zeros(p, 3)
        return tokens[:, 3], None

    message = failure(checks.check_make_dataset, crashes)
    assert "raised IndexError" in message and "return tokens[:, 3], None" in message and "p = 113" in message


# --- make_dataset --------------------------------------------------------------------------------
def test_make_dataset_check_accepts_the_reference():
    checks.check_make_dataset(make_dataset)


def test_make_dataset_check_names_swapped_a_and_b():
    def swapped(p):
        tokens, labels = make_dataset(p)
        return tokens[:, [1, 0, 2]], labels

    message = failure(checks.check_make_dataset, swapped)
    assert "tokens" in message and "(b, a)" in message


def test_make_dataset_check_names_the_wrong_equals_token():
    def equals_p_minus_1(p):
        tokens, labels = make_dataset(p)
        tokens[:, 2] = p - 1
        return tokens, labels

    assert "token p" in failure(checks.check_make_dataset, equals_p_minus_1)


def test_make_dataset_check_names_the_missing_modulo():
    def no_mod(p):
        tokens, _ = make_dataset(p)
        return tokens, tokens[:, 0] + tokens[:, 1]

    assert "% p" in failure(checks.check_make_dataset, no_mod)


def test_make_dataset_check_reports_shape_and_dtype():
    transposed = failure(checks.check_make_dataset, lambda p: (make_dataset(p)[0].T, make_dataset(p)[1]))
    assert "shape (3, 12769)" in transposed and "transposed" in transposed
    floats = failure(checks.check_make_dataset, lambda p: (make_dataset(p)[0].float(), make_dataset(p)[1]))
    assert "dtype torch.float32" in floats and "int64" in floats


def test_make_dataset_check_explains_a_missing_return():
    message = failure(checks.check_make_dataset, lambda p: None)
    assert "got None" in message and "return" in message


# --- model_config --------------------------------------------------------------------------------
def test_model_config_check_accepts_the_reference():
    checks.check_model_config(model_config)


def test_model_config_check_lists_every_wrong_setting():
    def with_layernorm_and_p_tokens(p):
        cfg = model_config(p)
        cfg.normalization_type, cfg.d_vocab = "LN", p
        return cfg

    message = failure(checks.check_model_config, with_layernorm_and_p_tokens)
    assert "2 setting(s)" in message and "normalization_type" in message and "d_vocab = 113 (expected 114)" in message


def test_model_config_check_catches_gelu_and_the_wrong_output_vocabulary():
    def gelu(p):
        cfg = model_config(p)
        cfg.act_fn, cfg.d_vocab_out = "gelu", p + 1
        return cfg

    message = failure(checks.check_model_config, gelu)
    assert "act_fn = 'gelu'" in message and "d_vocab_out" in message


def test_model_config_check_explains_a_dict_and_none():
    assert "HookedTransformerConfig(**your_dict)" in failure(checks.check_model_config, lambda p: {"d_model": 128})
    assert "return" in failure(checks.check_model_config, lambda p: None)


# --- loss_fn -------------------------------------------------------------------------------------
def test_loss_fn_check_accepts_the_reference():
    checks.check_loss_fn(loss_fn)


def test_loss_fn_check_accepts_cross_entropy_in_float64():
    checks.check_loss_fn(lambda logits, labels: F.cross_entropy(logits[:, -1].double(), labels))


def test_loss_fn_check_rejects_float32_because_tiny_losses_round_off():
    message = failure(checks.check_loss_fn, lambda logits, labels: F.cross_entropy(logits[:, -1], labels))
    assert "float64" in message and "very confident" in message


def test_loss_fn_check_rejects_averaging_every_position():
    def every_position(logits, labels):
        return F.cross_entropy(logits.double().flatten(0, 1), labels.repeat_interleave(logits.shape[1]))

    assert "logits[:, -1]" in failure(checks.check_loss_fn, every_position)


def test_loss_fn_check_rejects_the_first_position_and_a_sum():
    assert "LAST position" in failure(checks.check_loss_fn, lambda lg, y: loss_fn(lg[:, 0], y))
    summed = failure(checks.check_loss_fn, lambda lg, y: F.cross_entropy(lg[:, -1].double(), y, reduction="sum"))
    assert "mean over the batch, not the sum" in summed


def test_loss_fn_check_rejects_a_naive_softmax_that_overflows():
    def naive(logits, labels):
        probs = logits[:, -1].double().exp() / logits[:, -1].double().exp().sum(-1, keepdim=True)
        return -probs.log().gather(-1, labels[:, None]).mean()

    message = failure(checks.check_loss_fn, naive)
    assert "NaN" in message and "log_softmax" in message and "huge logits" in message


def test_loss_fn_check_rejects_a_float_and_a_per_example_loss():
    assert "no .item()" in failure(checks.check_loss_fn, lambda lg, y: loss_fn(lg, y).item())
    per_example = failure(checks.check_loss_fn, lambda lg, y: F.cross_entropy(lg[:, -1].double(), y, reduction="none"))
    assert "one loss per example" in per_example and ".mean()" in per_example


def test_loss_fn_check_rejects_a_detached_loss():
    assert "detached" in failure(checks.check_loss_fn, lambda lg, y: loss_fn(lg, y).detach())


# --- train_step ----------------------------------------------------------------------------------
def reference_step(model, optimizer, tokens, labels):
    optimizer.zero_grad()
    loss = loss_fn(model(tokens), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def test_train_step_check_accepts_the_reference():
    checks.check_train_step(reference_step)


def test_train_step_check_catches_a_missing_zero_grad():
    def no_zero_grad(model, optimizer, tokens, labels):
        loss = loss_fn(model(tokens), labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    message = failure(checks.check_train_step, no_zero_grad)
    assert "step 2" in message and "zero_grad" in message


def test_train_step_check_catches_a_missing_optimizer_step():
    def no_step(model, optimizer, tokens, labels):
        optimizer.zero_grad()
        loss = loss_fn(model(tokens), labels)
        loss.backward()
        return loss.item()

    assert "did not change" in failure(checks.check_train_step, no_step)


def test_train_step_check_catches_a_loss_over_every_position():
    def every_position(model, optimizer, tokens, labels):
        optimizer.zero_grad()
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(3))
        loss.backward()
        optimizer.step()
        return loss.item()

    assert "only the last one" in failure(checks.check_train_step, every_position)


def test_train_step_check_wants_the_loss_before_the_step_as_a_float():
    def loss_after(model, optimizer, tokens, labels):
        reference_step(model, optimizer, tokens, labels)
        return loss_fn(model(tokens), labels).item()

    assert "AFTER the step" in failure(checks.check_train_step, loss_after)

    def returns_tensor(model, optimizer, tokens, labels):
        optimizer.zero_grad()
        loss = loss_fn(model(tokens), labels)
        loss.backward()
        optimizer.step()
        return loss

    assert "loss.item()" in failure(checks.check_train_step, returns_tensor)
    assert "forget the `return`" in failure(checks.check_train_step, lambda *args: reference_step(*args) and None)


def test_loss_fn_check_explains_a_missing_return_and_a_crash():
    assert "forget the `return`" in failure(checks.check_loss_fn, lambda logits, labels: None)

    def wrong_axis(logits, labels):
        return -logits[:, -1].double().log_softmax(-1).gather(0, labels[None, :, None]).mean()

    message = failure(checks.check_loss_fn, wrong_axis)
    assert "raised RuntimeError" in message and "gather(0, labels[None, :, None])" in message


def test_train_step_check_leaves_the_learners_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_train_step(reference_step)
    assert torch.equal(torch.rand(3), expected)
