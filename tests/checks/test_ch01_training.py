"""Chapter 1's checks accept the reference and name plausible mistakes: dataset, config, loss, training step."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from utils import checks
from utils.data import make_dataset
from utils.model import model_config
from utils.train import loss_fn


# --- make_dataset --------------------------------------------------------------------------------
def test_make_dataset_check_accepts_the_reference():
    checks.check_make_dataset(make_dataset)


def _tokens_with(p, column, value):
    tokens, labels = make_dataset(p)
    tokens[:, column] = value
    return tokens, labels


@pytest.mark.parametrize("wrong, expected", [
    (lambda p: (make_dataset(p)[0][:, [1, 0, 2]], make_dataset(p)[1]), "(b, a)"),
    (lambda p: _tokens_with(p, 2, p - 1), "token p"),
    (lambda p: (make_dataset(p)[0], make_dataset(p)[0][:, 0] + make_dataset(p)[0][:, 1]), "% p"),
    (lambda p: (make_dataset(p)[0], (make_dataset(p)[0][:, 0] * make_dataset(p)[0][:, 1]) % p), "(a × b) mod p"),
    (lambda p: (make_dataset(p)[0].T, make_dataset(p)[1]), "transposed"),
    (lambda p: None, "forget the `return`"),
])
def test_make_dataset_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_make_dataset, wrong)


def test_make_dataset_check_asks_for_int64_by_name():
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_make_dataset(lambda p: (make_dataset(p)[0].float(), make_dataset(p)[1]))
    assert "dtype torch.float32" in str(info.value) and "int64" in str(info.value)
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_make_dataset(lambda p: (make_dataset(p)[0].int(), make_dataset(p)[1]))
    message = str(info.value)
    assert "torch.int32" in message and "int64 (torch.long" in message and "use an integer dtype" not in message


# --- model_config --------------------------------------------------------------------------------
def test_model_config_check_accepts_the_reference():
    checks.check_model_config(model_config)


def _config_with(p, **changes):
    cfg = model_config(p)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


@pytest.mark.parametrize("wrong, expected", [
    (lambda p: _config_with(p, normalization_type="LN", d_vocab=p), "d_vocab = 113 (expected 114)"),
    (lambda p: _config_with(p, act_fn="gelu", d_vocab_out=p + 1), "act_fn = 'gelu'"),
    (lambda p: {"d_model": 128}, "HookedTransformerConfig(**your_dict)"),
    (lambda p: None, "return"),
])
def test_model_config_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_model_config, wrong)


# --- loss_fn -------------------------------------------------------------------------------------
def test_loss_fn_check_accepts_the_reference_and_cross_entropy_in_float64():
    checks.check_loss_fn(loss_fn)
    checks.check_loss_fn(lambda logits, labels: F.cross_entropy(logits[:, -1].double(), labels))


def _naive(logits, labels):
    probs = logits[:, -1].double().exp() / logits[:, -1].double().exp().sum(-1, keepdim=True)
    return -probs.log().gather(-1, labels[:, None]).mean()


@pytest.mark.parametrize("wrong, expected", [
    (lambda lg, y: F.cross_entropy(lg[:, -1], y), "float64"),
    (lambda lg, y: F.cross_entropy(lg.double().flatten(0, 1), y.repeat_interleave(lg.shape[1])), "logits[:, -1]"),
    (lambda lg, y: loss_fn(lg[:, 0], y), "LAST position"),
    (lambda lg, y: F.cross_entropy(lg[:, -1].double(), y, reduction="sum"), "mean over the batch, not the sum"),
    (_naive, "log_softmax"),
    (lambda lg, y: loss_fn(lg, y).item(), "no .item()"),
    (lambda lg, y: F.cross_entropy(lg[:, -1].double(), y, reduction="none"), "one loss per example"),
    (lambda lg, y: loss_fn(lg, y).detach(), "detached"),
    (lambda lg, y: None, "forget the `return`"),
    (lambda lg, y: -lg[:, -1].double().log_softmax(-1).gather(0, y[None, :, None]).mean(), "raised RuntimeError"),
])
def test_loss_fn_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_loss_fn, wrong)


def test_loss_fn_check_sees_labels_changed_in_place(failure):
    message = failure(checks.check_loss_fn, lambda lg, lb: loss_fn(lg, lb.zero_()))
    assert "changed its input `labels` in place" in message


def test_loss_fn_check_keeps_float32_losses_of_confident_logits_apart(failure):
    def float32_then_double(logits, labels):
        return F.cross_entropy(logits[:, -1], labels).double()

    message = failure(checks.check_loss_fn, float32_then_double)
    assert "very confident" in message and "float64" in message


# --- train_step ----------------------------------------------------------------------------------
def reference_step(model, optimizer, tokens, labels):
    optimizer.zero_grad()
    loss = loss_fn(model(tokens), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def no_zero_grad(model, optimizer, tokens, labels):
    loss = loss_fn(model(tokens), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def no_step(model, optimizer, tokens, labels):
    optimizer.zero_grad()
    loss = loss_fn(model(tokens), labels)
    loss.backward()
    return loss.item()


def every_position(model, optimizer, tokens, labels):
    optimizer.zero_grad()
    logits = model(tokens)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(3))
    loss.backward()
    optimizer.step()
    return loss.item()


def loss_after(model, optimizer, tokens, labels):
    reference_step(model, optimizer, tokens, labels)
    return loss_fn(model(tokens), labels).item()


def returns_tensor(model, optimizer, tokens, labels):
    optimizer.zero_grad()
    loss = loss_fn(model(tokens), labels)
    loss.backward()
    optimizer.step()
    return loss


def zeroes_labels(model, optimizer, tokens, labels):
    return reference_step(model, optimizer, tokens, labels.zero_())


def test_train_step_check_accepts_the_reference():
    checks.check_train_step(reference_step)


@pytest.mark.parametrize("wrong, expected", [
    (no_zero_grad, "zero_grad"), (no_step, "did not change"), (every_position, "only the last one"),
    (loss_after, "AFTER the step"), (returns_tensor, "loss.item()"),
    (lambda *args: reference_step(*args) and None, "forget the `return`"),
    (zeroes_labels, "changed its input `labels` in place"),
])
def test_train_step_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_train_step, wrong)


def test_train_step_check_leaves_the_learners_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_train_step(reference_step)
    assert torch.equal(torch.rand(3), expected)
