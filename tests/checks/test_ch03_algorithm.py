"""Chapter 3's checks accept the reference and name plausible mistakes: cosine form, W_L, the additive share of
attention's output, neuron fits, shares, and the Fourier multiplication algorithm."""
from __future__ import annotations

import pytest
import torch

from utils import checks, fourier, mechanism


def reference_ve(logits, freqs):
    return mechanism.variance_explained(logits, mechanism.fit_cosine_logits(logits, freqs)[1])


def ve_with_phase(logits, freqs, sign_c=-1.0, scale=2 * torch.pi):
    """The notebook's solution, with knobs for the sign of c and the 2π."""
    p = logits.shape[-1]
    x = torch.arange(p, dtype=torch.float64)
    phase = x[:, None, None] + x[None, :, None] + sign_c * x
    X = torch.stack([torch.cos(scale * k * phase / p) for k in freqs]).reshape(len(freqs), -1).T
    centred = logits - logits.mean(-1, keepdim=True)
    residual = centred.reshape(-1) - (X @ torch.linalg.lstsq(X, centred.reshape(-1, 1)).solution).squeeze(-1)
    return (1 - residual.pow(2).sum() / centred.pow(2).sum()).item()


def uncentred(logits, freqs):
    fit = mechanism.fit_cosine_logits(logits, freqs)[1]
    return (1 - (logits - fit).pow(2).sum() / logits.pow(2).sum()).item()


def test_cosine_variance_explained_check_accepts_the_reference():
    checks.check_cosine_variance_explained(reference_ve)


@pytest.mark.parametrize("wrong, expected", [
    (uncentred, "centre the logits"),
    (lambda logits, freqs: 1 - reference_ve(logits, freqs), "NOT explained"),
    (lambda logits, freqs: ve_with_phase(logits, freqs, sign_c=1.0), "a + b + c"),
    (lambda logits, freqs: ve_with_phase(logits, freqs, scale=torch.pi), "π instead of 2π"),
    (lambda logits, freqs: torch.tensor(reference_ve(logits, freqs)), "Python float"),
    (lambda logits, freqs: None, "return"),
])
def test_cosine_variance_explained_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_cosine_variance_explained, wrong)


def test_a_sign_error_is_not_told_it_returned_the_unexplained_share(failure):
    message = failure(checks.check_cosine_variance_explained, lambda lg, fr: ve_with_phase(lg, fr, sign_c=1.0))
    assert "NOT explained" not in message


def test_W_L_fourier_check_accepts_the_reference():
    checks.check_W_L_fourier(mechanism.W_L_fourier)


def zeroes_W_out(model):
    with torch.no_grad():
        model.blocks[0].mlp.W_out.zero_()
    return torch.zeros(model.cfg.d_mlp, model.cfg.d_vocab_out, dtype=torch.float64)


@pytest.mark.parametrize("wrong, expected", [
    (mechanism.W_L, "W_L itself"),
    (lambda m: (m.W_in[0].T @ m.W_U).detach().double() @ fourier.fourier_basis(m.cfg.d_vocab_out).T, "W_out"),
    (lambda m: (m.W_out @ m.W_U).detach().double() @ fourier.fourier_basis(m.cfg.d_vocab_out).T, "axis of size 1"),
    (lambda m: mechanism.W_L_fourier(m).float(), "return float64"),
    (lambda m: (m.W_out[0] @ m.W_U).double() @ fourier.fourier_basis(m.cfg.d_vocab_out).T, "requires_grad"),
    (zeroes_W_out, "changed its input `model` in place (its weight blocks.0.mlp.W_out changed)"),
])
def test_W_L_fourier_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_W_L_fourier, wrong)


def share(x, *, fit="both", total="grid", pooled=True, dtype=torch.float64):  # (float32 is precise enough here)
    """The notebook's solution, with knobs for the plausible mistakes."""
    x = x.to(dtype)
    row, col, grand = x.mean(1, keepdim=True), x.mean(0, keepdim=True), x.mean((0, 1), keepdim=True)
    fitted = {"both": row + col - grand, "no grand mean": row + col, "a only": row,
              "swapped": x.mean(1)[None] + x.mean(0)[:, None] - grand}.get(fit)
    if fit == "lstsq":  # least squares with one-hot columns for f(a) and g(b): the same fit
        p = x.shape[0]
        eye = torch.eye(p, dtype=dtype)
        X = torch.cat([eye.repeat_interleave(p, 0), eye.repeat(p, 1)], 1)  # [p², 2p]
        Y = x.reshape(p * p, -1)
        fitted = (X @ torch.linalg.lstsq(X, Y, driver="gelsd").solution).reshape(x.shape)
    mean = {"grid": grand, "none": 0.0, "all": x.mean()}[total]
    residual, variance = (x - fitted).pow(2).sum((0, 1)), (x - mean).pow(2).sum((0, 1))
    return (1 - residual.sum() / variance.sum()).item() if pooled else (1 - residual / variance).mean().item()


@pytest.mark.parametrize("solution", [mechanism.additive_share, share, lambda x: share(x, fit="lstsq")],
                         ids=["reference", "means", "lstsq"])
def test_additive_share_check_accepts_the_reference_and_a_least_squares_solution(solution):
    checks.check_additive_share(solution)


@pytest.mark.parametrize("wrong, expected", [
    (lambda x: 1 - share(x), "NOT explained"),
    (lambda x: share(x, total="none"), "variance around the MEAN"),
    (lambda x: share(x, total="all"), "not everything at once"),
    (lambda x: share(x, fit="no grand mean"), "counts the grand mean twice"),
    (lambda x: share(x, fit="a only"), "f(a) AND g(b)"),
    (lambda x: share(x, fit="swapped"), "keepdim=True"),
    (lambda x: share(x, pooled=False), "pool the features"),
    (lambda x: torch.tensor(share(x)), "Python float"),
    (lambda x: None, "return"),
])
def test_additive_share_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_additive_share, wrong)


def test_neuron_fit_r2_check_accepts_the_reference():
    checks.check_neuron_fit_r2(mechanism.neuron_fit_r2)


def r2_uncentred(acts, k, quadratic):
    p = acts.shape[0]
    y = acts.reshape(p * p, -1).double()
    X = mechanism.neuron_features(p, k, quadratic).reshape(p * p, -1)
    residual = y - X @ torch.linalg.lstsq(X, y).solution
    return 1 - residual.pow(2).sum(0) / y.pow(2).sum(0)


def r2_nan_for_constant(acts, k, quadratic):
    r2 = mechanism.neuron_fit_r2(acts, k, quadratic)
    r2[-1] = float("nan")
    return r2


@pytest.mark.parametrize("wrong, expected", [
    (lambda acts, k, quadratic: mechanism.neuron_fit_r2(acts, k, True), "leave the products out"),
    (r2_uncentred, "around the MEAN"),
    (r2_nan_for_constant, "torch.where(variance > 0"),
    (lambda acts, k, quadratic: mechanism.neuron_fit_r2(acts, k, quadratic).float(), "return float64"),
])
def test_neuron_fit_r2_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_neuron_fit_r2, wrong)


def reference_shares(W_L_hat, neurons):
    rows = W_L_hat[neurons].pow(2).sum(0)
    return (rows[1::2] + rows[2::2]) / (rows[1::2] + rows[2::2]).sum()


def test_output_frequency_shares_check_accepts_the_reference():
    checks.check_output_frequency_shares(reference_shares)


@pytest.mark.parametrize("wrong, expected", [
    (lambda f, n: (lambda r: (r[1::2] + r[2::2]) / r.sum())(f[n].pow(2).sum(0)), "constant"),
    (lambda f, n: reference_shares(f, torch.arange(f.shape[0])), "listed neurons"),
    (lambda f, n: (lambda r: (r[1::2] + r[2::2]) / (r[1::2] + r[2::2]).sum())(f[n].abs().sum(0)), "absolute"),
    (lambda f, n: (lambda r: (r[0:-1:2] + r[1::2]) / (r[0:-1:2] + r[1::2]).sum())(f[n].pow(2).sum(0)), "off by one"),
    (lambda f, n: reference_shares(f, n).float(), "return float64"),
])
def test_output_frequency_shares_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_output_frequency_shares, wrong)


# --- the algorithm --------------------------------------------------------------------------------
def algorithm(a, b, p, freqs, alphas, *, dtype=torch.float64, scale=2 * torch.pi, sin_sign=1.0, cos_sign=-1.0):
    """The notebook's solution, with knobs for the plausible mistakes."""
    w = scale * torch.tensor(freqs, dtype=dtype) / p
    cos_a, sin_a = torch.cos(w * a[:, None]), torch.sin(w * a[:, None])
    cos_b, sin_b = torch.cos(w * b[:, None]), torch.sin(w * b[:, None])
    cos_sum = cos_a * cos_b + cos_sign * sin_a * sin_b
    sin_sum = sin_a * cos_b + sin_sign * cos_a * sin_b
    c = torch.arange(p, dtype=dtype)
    cos_c, sin_c = torch.cos(w[:, None] * c), torch.sin(w[:, None] * c)
    return (alphas * cos_sum) @ cos_c.double() + (alphas * sin_sum) @ sin_c.double()


def direct(a, b, p, freqs, alphas):
    c = torch.arange(p)
    return sum(alpha * torch.cos(2 * torch.pi * k * (a[:, None] + b[:, None] - c).double() / p)
               for k, alpha in zip(freqs, alphas.tolist()))


def plus_c(a, b, p, freqs, alphas):
    return direct(a, b, p, freqs, alphas) * 0 + sum(
        alpha * torch.cos(2 * torch.pi * k * (a[:, None] + b[:, None] + torch.arange(p)).double() / p)
        for k, alpha in zip(freqs, alphas.tolist()))


def test_fourier_multiplication_check_accepts_the_reference_and_says_it_used_the_identities(capsys):
    checks.check_fourier_multiplication(mechanism.fourier_multiplication)
    checks.check_fourier_multiplication(algorithm)
    assert "by the trig identities" in capsys.readouterr().out


def test_fourier_multiplication_check_does_not_claim_identities_it_could_not_see(capsys):
    def via_numpy(a, b, p, freqs, alphas):
        return algorithm(torch.from_numpy(a.numpy()), torch.from_numpy(b.numpy()), p, freqs, alphas)

    checks.check_fourier_multiplication(via_numpy)
    assert "could not see" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, expected", [
    (direct, "directly"),
    (plus_c, "a + b + c"),
    (lambda a, b, p, freqs, alphas: algorithm(a, b, p, freqs, alphas, cos_sign=1.0, sin_sign=-1.0),
     "subtraction's algorithm"),
    (lambda a, b, p, freqs, alphas: algorithm(a, b, p, freqs, torch.ones_like(alphas)), "coefficient"),
    (lambda a, b, p, freqs, alphas: algorithm(a, b, p, freqs, alphas.flip(0)), "reversed"),
    (lambda a, b, p, freqs, alphas: algorithm(a, b, p, freqs, alphas, scale=torch.pi), "π instead of 2π"),
    (lambda a, b, p, freqs, alphas: algorithm(a, b, p, freqs, alphas, sin_sign=-1.0), "sin identity"),
    (lambda a, b, p, freqs, alphas: algorithm(a, b, p, freqs, alphas, dtype=torch.float32), "float32 precision"),
])
def test_fourier_multiplication_check_names_the_mistake(wrong, expected, failure):
    assert expected in failure(checks.check_fourier_multiplication, wrong)
