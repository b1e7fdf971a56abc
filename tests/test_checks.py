"""Each exercise check accepts the reference, rejects plausible wrong answers and says what is wrong."""
from __future__ import annotations

import traceback

import pytest
import torch
import torch.nn.functional as F

from tools.records import record_check_message
from utils import ablation as ablation_ref, checks, fourier as fourier_ref, mechanism as mechanism_ref, outcomes
from utils import progress as progress_ref
from utils.checks import CheckFailed
from utils.data import make_dataset
from utils.model import model_config
from utils.train import loss_fn


def failure(check, fn) -> str:
    """The message of the CheckFailed that check(fn) raises."""
    with pytest.raises(CheckFailed) as info:
        check(fn)
    record_check_message(check.__name__, str(info.value))  # the instructor guide lists these as pitfalls
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


# --- chapters 4–5: ablations and progress measures --------------------------------------------------------


def test_sum_directions_check_accepts_the_reference_and_names_mistakes():
    checks.check_sum_directions(ablation_ref.sum_directions)
    assert "norm 1" in failure(checks.check_sum_directions,
                               lambda p, freqs: ablation_ref.sum_directions(p, freqs) * p / 2 ** 0.5)
    assert "a − b" in failure(checks.check_sum_directions,
                              lambda p, freqs: ablation_ref.sum_directions(p, freqs).reshape(-1, p, p).flip(-1)
                              .roll(1, -1).reshape(-1, p * p))
    assert "two per frequency" in failure(checks.check_sum_directions,
                                          lambda p, freqs: ablation_ref.sum_directions(p, freqs)[0::2])
    assert "cosines, then all the sines" in failure(
        checks.check_sum_directions, lambda p, freqs: torch.cat([ablation_ref.sum_directions(p, freqs)[0::2],
                                                                 ablation_ref.sum_directions(p, freqs)[1::2]]))


def test_remove_frequencies_check_accepts_the_reference_and_names_mistakes():
    checks.check_remove_frequencies(ablation_ref.remove_frequencies)
    assert "subtracting it" in failure(checks.check_remove_frequencies, ablation_ref.frequency_component)
    assert "constant" in failure(checks.check_remove_frequencies, lambda logits, freqs: (
        ablation_ref.remove_frequencies(logits, freqs) - logits.mean(0, keepdim=True)))

    def only_cos(logits, freqs):
        directions = ablation_ref.sum_directions(logits.shape[-1], freqs)[0::2]
        return logits - directions.T @ (directions @ logits)

    assert "only the cosine" in failure(checks.check_remove_frequencies, only_cos)

    def in_place(logits, freqs):
        logits -= ablation_ref.frequency_component(logits, freqs)
        return logits

    assert "in place" in failure(checks.check_remove_frequencies, in_place)


def test_keep_frequencies_check_accepts_the_reference_and_names_mistakes():
    checks.check_keep_frequencies(ablation_ref.keep_frequencies)
    assert "keep the constant too" in failure(checks.check_keep_frequencies, ablation_ref.frequency_component)
    assert "not the mean of every logit" in failure(checks.check_keep_frequencies, lambda logits, freqs: (
        ablation_ref.frequency_component(logits, freqs) + logits.mean()))
    assert "that removes the directions" in failure(checks.check_keep_frequencies, ablation_ref.remove_frequencies)


def test_project_onto_frequency_check_accepts_the_reference_and_names_mistakes():
    checks.check_project_onto_frequency(ablation_ref.project_onto_frequency)

    def without_mean(acts, freqs):
        projected = ablation_ref.project_onto_frequency(acts, freqs)
        return projected - acts.mean((0, 1))

    assert "constant term" in failure(checks.check_project_onto_frequency, without_mean)

    def linear_only(acts, freqs):
        p = acts.shape[0]
        basis = ablation_ref.fourier_basis(p, torch.float64)
        coeffs = torch.einsum("fa,gb,abn->fgn", basis, basis, acts.double())
        out = torch.zeros_like(coeffs)
        for n, k in enumerate(freqs.tolist()):
            rows = [0, 2 * k - 1, 2 * k]
            out[rows, 0, n], out[0, rows, n] = coeffs[rows, 0, n], coeffs[0, rows, n]
        return torch.einsum("fa,gb,fgn->abn", basis, basis, out)

    assert "products" in failure(checks.check_project_onto_frequency, linear_only)
    assert "forget the `return`" in failure(checks.check_project_onto_frequency, lambda acts, freqs: None)


def test_ablate_neurons_check_accepts_the_reference_and_names_mistakes():
    checks.check_ablate_neurons(ablation_ref.ablate_neurons)
    assert "you set it to zero" in failure(checks.check_ablate_neurons,
                                           lambda model, neurons, how: ablation_ref.ablate_neurons(model, neurons, "zero"))

    def mean_over_positions(model, neurons, how):
        tokens, _ = make_dataset(model.cfg.d_vocab_out)
        _, cache = model.run_with_cache(tokens, names_filter=ablation_ref.NEURON_HOOK)
        mean = cache[ablation_ref.NEURON_HOOK][..., neurons].mean((0, 1))

        def hook(acts, hook):
            acts[:, -1, neurons] = 0 if how == "zero" else mean
            return acts

        return model.run_with_hooks(tokens, fwd_hooks=[(ablation_ref.NEURON_HOOK, hook)])[:, -1]

    assert "LAST position only" in failure(checks.check_ablate_neurons, mean_over_positions)

    def leaves_hook(model, neurons, how):
        model.add_hook(ablation_ref.NEURON_HOOK, lambda acts, hook: acts * 0)
        tokens, _ = make_dataset(model.cfg.d_vocab_out)
        return model(tokens)[:, -1]

    assert "left a hook" in failure(checks.check_ablate_neurons, leaves_hook)
    assert "every position" in failure(checks.check_ablate_neurons, lambda model, neurons, how: model(
        make_dataset(model.cfg.d_vocab_out)[0]))


def test_gini_check_accepts_the_reference_and_names_mistakes():
    checks.check_gini(progress_ref.gini)

    def unsorted(x):
        n = x.shape[-1]
        ranks = torch.arange(1, n + 1, dtype=x.dtype)
        return (x * (2 * ranks - n - 1)).sum(-1) / (n * x.sum(-1))

    assert "sort the values first" in failure(checks.check_gini, unsorted)
    assert "1 - Gini" in failure(checks.check_gini, lambda x: 1 - progress_ref.gini(x))
    assert "corrected" in failure(checks.check_gini, lambda x: progress_ref.gini(x) * x.shape[-1] / (x.shape[-1] - 1))


def test_embedding_norms_check_accepts_the_reference_and_names_mistakes():
    checks.check_embedding_norms(progress_ref.embedding_norms)
    assert "square root" in failure(checks.check_embedding_norms, lambda W_E: progress_ref.embedding_norms(W_E) ** 2)

    def with_constant(W_E):
        p = W_E.shape[1] - 1
        coeffs = torch.einsum("fx,nxd->nfd", ablation_ref.fourier_basis(p, torch.float64), W_E[:, :p].double())
        squared = coeffs.pow(2).sum(-1)
        return torch.cat([squared[:, :1], squared[:, 1::2] + squared[:, 2::2]], -1).sqrt()

    assert "drop the constant" in failure(checks.check_embedding_norms, with_constant)


def test_restricted_and_excluded_check_accepts_the_reference_and_names_mistakes():
    checks.check_restricted_and_excluded(progress_ref.restricted_and_excluded)

    def swapped(logits, labels, train_idx, freqs):
        return progress_ref.restricted_and_excluded(logits, labels, train_idx, freqs)[::-1]

    assert "(restricted, excluded) in that order" in failure(checks.check_restricted_and_excluded, swapped)

    def excluded_on_all(logits, labels, train_idx, freqs):
        restricted, _ = progress_ref.restricted_and_excluded(logits, labels, train_idx, freqs)
        removed = ablation_ref.remove_frequencies(logits, freqs)
        return restricted, torch.stack([loss_fn(x, labels) for x in removed])

    assert "TRAINING pairs only" in failure(checks.check_restricted_and_excluded, excluded_on_all)


# --- chapters 2–3: periodicity and the algorithm -------------------------------------------------------------


def test_fourier_basis_check_accepts_the_reference_in_float32_and_float64():
    checks.check_fourier_basis(fourier_ref.fourier_basis)
    checks.check_fourier_basis(lambda p: fourier_ref.fourier_basis(p, torch.float64))


def test_fourier_basis_check_names_transposed_unnormalised_and_swapped_bases():
    assert "transpose" in failure(checks.check_fourier_basis, lambda p: fourier_ref.fourier_basis(p).T)
    unnormalised = failure(checks.check_fourier_basis,
                           lambda p: fourier_ref.fourier_basis(p) * torch.tensor([p ** 0.5] + [(p / 2) ** 0.5] * (p - 1))[:, None])
    assert "length 1" in unnormalised

    def sin_first(p):
        basis = fourier_ref.fourier_basis(p)
        return torch.cat([basis[:1], basis[1:].reshape(-1, 2, p).flip(1).reshape(-1, p)])

    assert "sin before cos" in failure(checks.check_fourier_basis, sin_first)


def test_fft_checks_accept_the_reference():
    checks.check_fft1d(fourier_ref.fft1d)
    checks.check_fft2d(fourier_ref.fft2d)


def test_fft1d_check_names_the_inverse_transform_and_the_wrong_axis():
    inverse = failure(checks.check_fft1d,
                      lambda x: torch.einsum("fx,f...->x...", fourier_ref.fourier_basis(x.shape[0], x.dtype), x))
    assert "inverse" in inverse
    last_axis = failure(checks.check_fft1d, lambda x: x @ fourier_ref.fourier_basis(x.shape[-1], x.dtype).T)
    assert "FIRST axis" in last_axis or "raised" in last_axis


def test_fft2d_check_names_a_half_transform_and_swapped_axes():
    assert "transform b too" in failure(checks.check_fft2d, fourier_ref.fft1d)
    assert "swapped" in failure(checks.check_fft2d, lambda x: fourier_ref.fft2d(x).transpose(0, 1))

    def right_basis_wrong_side(x):
        basis = fourier_ref.fourier_basis(x.shape[0], x.dtype)
        return torch.einsum("fa,bg,ab...->fg...", basis, basis, x)

    assert "x @ basis.T" in failure(checks.check_fft2d, right_basis_wrong_side)


def test_embedding_frequency_norms_check_accepts_the_reference():
    checks.check_embedding_frequency_norms(fourier_ref.embedding_frequency_norms)


def test_embedding_frequency_norms_check_names_raw_norms_the_constant_and_the_equals_token():
    def raw(model):
        p = model.cfg.d_vocab_out
        return fourier_ref.frequency_norms(fourier_ref.fft1d(model.W_E[:p].detach().double()))

    assert "shares" in failure(checks.check_embedding_frequency_norms, raw)

    def with_constant(model):
        p = model.cfg.d_vocab_out
        squared = fourier_ref.fft1d(model.W_E[:p].detach().double()).pow(2).sum(-1)
        return torch.cat([squared[:1], squared[1::2] + squared[2::2]]) / squared.sum()

    assert "constant" in failure(checks.check_embedding_frequency_norms, with_constant)
    with_equals = failure(checks.check_embedding_frequency_norms,
                          lambda model: fourier_ref.fft1d(model.W_E.detach().double()))
    assert "raised ValueError" in with_equals and "odd modulus" in with_equals


def test_key_frequencies_check_accepts_the_reference_and_a_tensor():
    checks.check_key_frequencies(fourier_ref.key_frequencies)
    checks.check_key_frequencies(lambda model: torch.tensor(fourier_ref.key_frequencies(model)))


def test_key_frequencies_check_names_indices_and_a_fixed_count():
    indices = failure(checks.check_key_frequencies, lambda model: [k - 1 for k in fourier_ref.key_frequencies(model)])
    assert "start at 1" in indices
    top_three = failure(checks.check_key_frequencies,
                        lambda model: [int(i) + 1 for i in fourier_ref.embedding_frequency_norms(model).argsort()[-3:]])
    assert "EVERY frequency" in top_three or "only the frequencies" in top_three


def _reference_cosine_ve(logits, freqs):
    return mechanism_ref.variance_explained(logits, mechanism_ref.fit_cosine_logits(logits, freqs)[1])


def test_cosine_variance_explained_check_accepts_the_reference():
    checks.check_cosine_variance_explained(_reference_cosine_ve)


def test_cosine_variance_explained_check_names_uncentred_logits_and_the_unexplained_share():
    def uncentred(logits, freqs):
        fit = mechanism_ref.fit_cosine_logits(logits, freqs)[1]
        return (1 - (logits - fit).pow(2).sum() / logits.pow(2).sum()).item()

    assert "centre" in failure(checks.check_cosine_variance_explained, uncentred)
    assert "NOT explained" in failure(checks.check_cosine_variance_explained,
                                      lambda logits, freqs: 1 - _reference_cosine_ve(logits, freqs))
    assert "return" in failure(checks.check_cosine_variance_explained, lambda logits, freqs: None)


def test_W_L_fourier_check_accepts_the_reference_and_names_W_in_and_a_missing_transform():
    checks.check_W_L_fourier(mechanism_ref.W_L_fourier)
    assert "W_L itself" in failure(checks.check_W_L_fourier, mechanism_ref.W_L)
    with_W_in = failure(checks.check_W_L_fourier, lambda model: (model.W_in[0].T @ model.W_U).double()
                        @ fourier_ref.fourier_basis(model.cfg.d_vocab_out, torch.float64).T)
    assert "W_out" in with_W_in
    assert "axis of size 1" in failure(checks.check_W_L_fourier, lambda model: (model.W_out @ model.W_U).double()
                                       @ fourier_ref.fourier_basis(model.cfg.d_vocab_out, torch.float64).T)


def test_neuron_fit_r2_check_accepts_the_reference():
    checks.check_neuron_fit_r2(mechanism_ref.neuron_fit_r2)


def test_neuron_fit_r2_check_names_an_ignored_flag_and_an_uncentred_r2():
    always_quadratic = failure(checks.check_neuron_fit_r2, lambda acts, k, quadratic: mechanism_ref.neuron_fit_r2(acts, k, True))
    assert "leave the products out" in always_quadratic

    def uncentred(acts, k, quadratic):
        p = acts.shape[0]
        y = acts.reshape(p * p, -1).double()
        X = mechanism_ref.neuron_features(p, k, quadratic).reshape(p * p, -1)
        residual = y - X @ torch.linalg.lstsq(X, y).solution
        return 1 - residual.pow(2).sum(0) / y.pow(2).sum(0)

    assert "around the MEAN" in failure(checks.check_neuron_fit_r2, uncentred)

    def nan_for_constant(acts, k, quadratic):
        r2 = mechanism_ref.neuron_fit_r2(acts, k, quadratic)
        r2[-1] = float("nan")
        return r2

    assert "torch.where(variance > 0" in failure(checks.check_neuron_fit_r2, nan_for_constant)


def _reference_shares(fourier, neurons):
    rows = fourier[neurons].pow(2).sum(0)
    return (rows[1::2] + rows[2::2]) / (rows[1::2] + rows[2::2]).sum()


def test_output_frequency_shares_check_accepts_the_reference_and_names_the_constant_and_all_neurons():
    checks.check_output_frequency_shares(_reference_shares)
    with_constant = failure(checks.check_output_frequency_shares,
                            lambda f, n: (lambda r: (r[1::2] + r[2::2]) / r.sum())(f[n].pow(2).sum(0)))
    assert "constant" in with_constant
    assert "listed neurons" in failure(checks.check_output_frequency_shares,
                                       lambda f, n: _reference_shares(f, torch.arange(f.shape[0])))


def test_fourier_multiplication_check_accepts_the_reference_and_names_sign_mistakes():
    checks.check_fourier_multiplication(mechanism_ref.fourier_multiplication)

    def plus_c(a, b, p, freqs, coeffs):
        c = torch.arange(p)
        return sum(alpha * torch.cos(2 * torch.pi * k * (a[:, None] + b[:, None] + c).double() / p)
                   for k, alpha in zip(freqs, coeffs.tolist()))

    assert "a + b + c" in failure(checks.check_fourier_multiplication, plus_c)

    def a_minus_b(a, b, p, freqs, coeffs):
        return mechanism_ref.fourier_multiplication(a, -b, p, freqs, coeffs)

    assert "minus" in failure(checks.check_fourier_multiplication, a_minus_b)
    unweighted = failure(checks.check_fourier_multiplication,
                         lambda a, b, p, freqs, coeffs: mechanism_ref.fourier_multiplication(
                             a, b, p, freqs, torch.ones_like(coeffs)))
    assert "coefficient" in unweighted


# --- end of chapters 2–3 -------------------------------------------------------------------------------------


# --- chapter 6: beyond (outcomes of many runs, subtraction) -----------------------------------------------------


def test_check_outcome_accepts_the_rule():
    checks.check_outcome(outcomes.outcome)


def _outcome_variant(*, strict: bool = False, best: bool = False, half: float = 0.5):
    """outcomes.outcome with one plausible mistake: > instead of ≥ 0.99, the best test accuracy, or h at 99%."""
    def outcome(metrics):
        train_ok = metrics.train_acc > 0.99 if strict else metrics.train_acc >= 0.99
        if not train_ok.any():
            return "not fitted"
        m = int(metrics.step[train_ok].iloc[0])
        if (metrics.test_acc.max() if best else metrics.test_acc.iloc[-1]) < 0.99:
            return "memorised only"
        h = int(metrics.step[metrics.test_acc >= half].iloc[0])
        return "generalised at once" if h <= 2 * m else "grokked"
    return outcome


@pytest.mark.parametrize("wrong, expected", [
    (_outcome_variant(strict=True), "exactly 0.99 counts"),
    (_outcome_variant(best=True), "FINAL test accuracy"),
    (_outcome_variant(half=0.99), "first step with test accuracy ≥ 50%"),
    (lambda metrics: "grokked" if metrics.test_acc.iloc[-1] >= 0.99 else "memorised only", "rise together"),
    (lambda metrics: "Grokked", "one of the strings"),
    (lambda metrics: None, "return"),
])
def test_check_outcome_names_the_mistake(wrong, expected):
    assert expected in failure(checks.check_outcome, wrong)


def test_check_outcome_rule_at_exactly_twice_the_memorisation_step():
    def strict(metrics):  # h < 2m instead of h ≤ 2m
        m = outcomes.first_step(metrics, "train_acc", 0.99)
        if m is None:
            return "not fitted"
        if metrics.test_acc.iloc[-1] < 0.99:
            return "memorised only"
        return "generalised at once" if outcomes.first_step(metrics, "test_acc", 0.5) < 2 * m else "grokked"
    assert "use ≤, not <" in failure(checks.check_outcome, strict)


def _waves(p, freqs, phase, fn=torch.cos):
    x = torch.arange(p, dtype=torch.float64)
    w = 2 * torch.pi * torch.tensor(freqs, dtype=torch.float64) / p
    return fn(w[:, None, None, None] * phase(x[:, None, None], x[None, :, None], x[None, None, :]))


def test_check_difference_waves_accepts_the_reference_and_float32():
    checks.check_difference_waves(lambda p, freqs: mechanism_ref.cosine_waves(p, freqs, "subtract"))
    checks.check_difference_waves(lambda p, freqs: mechanism_ref.cosine_waves(p, freqs, "subtract").float())


@pytest.mark.parametrize("wrong, expected", [
    (lambda p, f: _waves(p, f, lambda a, b, c: a + b - c), "ADDITION's waves"),
    (lambda p, f: _waves(p, f, lambda a, b, c: a - b + c), "not cos(w_k(a − b + c))"),
    (lambda p, f: _waves(p, f, lambda a, b, c: a - b - c, torch.sin), "not the sine"),
    (lambda p, f: _waves(p, f, lambda a, b, c: a - b - c).permute(1, 2, 3, 0), "shape"),
])
def test_check_difference_waves_names_the_mistake(wrong, expected):
    assert expected in failure(checks.check_difference_waves, wrong)


def test_check_fourier_subtraction_accepts_the_reference():
    checks.check_fourier_subtraction(
        lambda a, b, p, freqs, coeffs: mechanism_ref.fourier_multiplication(a, b, p, freqs, coeffs, "subtract"))


def _subtraction_variant(sin_sign: float = -1.0, cos_sign: float = 1.0):
    """fourier_subtraction with the sign of one identity's second term flipped."""
    def fn(a, b, p, freqs, coeffs):
        w = 2 * torch.pi * torch.tensor(freqs, dtype=torch.float64) / p
        wa, wb = w * a.double()[:, None], w * b.double()[:, None]
        cos_part = torch.cos(wa) * torch.cos(wb) + cos_sign * torch.sin(wa) * torch.sin(wb)
        sin_part = torch.sin(wa) * torch.cos(wb) + sin_sign * torch.cos(wa) * torch.sin(wb)
        wc = w[:, None] * torch.arange(p, dtype=torch.float64)
        return (cos_part * coeffs) @ torch.cos(wc) + (sin_part * coeffs) @ torch.sin(wc)
    return fn


@pytest.mark.parametrize("wrong, expected", [
    (_subtraction_variant(sin_sign=1.0, cos_sign=-1.0), "addition's algorithm"),
    (_subtraction_variant(sin_sign=1.0), "sin(w(a - b)) = sin wa cos wb - cos wa sin wb"),
    (lambda a, b, p, freqs, coeffs: mechanism_ref.fourier_multiplication(a, b, p, freqs, torch.ones_like(coeffs), "subtract"), "coefficient"),
])
def test_check_fourier_subtraction_names_the_mistake(wrong, expected):
    assert expected in failure(checks.check_fourier_subtraction, wrong)
