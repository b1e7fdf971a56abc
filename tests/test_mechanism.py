"""utils.mechanism on planted structure: neurons of known frequency, logits that are exactly a cosine sum, W_L of known rank."""
from __future__ import annotations

import math

import pytest
import torch

from utils import mechanism
from utils.fourier import key_frequencies, output_frequency_norms
from utils.data import make_dataset
from utils.model import make_model, model_config

P = 23


def waves(p: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(w_k x), sin(w_k x) over x = 0 … p-1 (float64)."""
    x = torch.arange(p, dtype=torch.float64)
    return torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)


def planted_neurons(p: int = P) -> tuple[torch.Tensor, list[int]]:
    """Neurons [p, p, 5] over (a, b) and the frequency of each: ReLU(cos wa + cos wb) at 3, a product at 7, a
    pure linear term at 3, a 50/50 mixture of 2 and 5, and a constant."""
    (c3, s3), (c7, s7), (c2, _), (c5, _) = waves(p, 3), waves(p, 7), waves(p, 2), waves(p, 5)
    neurons = [torch.relu(c3[:, None] + c3[None, :]),
               c7[:, None] * s7[None, :] + 2.0,
               (s3[:, None] + c3[None, :]).expand(p, p),
               (c2[:, None] + c5[None, :]).expand(p, p),
               torch.full((p, p), 4.0, dtype=torch.float64)]
    return torch.stack(neurons, -1), [3, 7, 3, 2, 0]


def small_model(p: int = P, seed: int = 0):
    return make_model(model_config(p=p, d_model=16, n_heads=2, d_mlp=24, seed=seed))


def test_neuron_activations_are_the_hooked_mlp_outputs_on_the_a_b_grid():
    model = small_model()
    acts = mechanism.neuron_activations(model)
    assert acts.shape == (P, P, 24)
    tokens, _ = make_dataset(P)
    _, cache = model.run_with_cache(tokens[[5 * P + 9]])  # the input (a, b) = (5, 9)
    torch.testing.assert_close(acts[5, 9], cache["blocks.0.mlp.hook_post"][0, -1])
    assert (acts >= 0).all()  # post-ReLU


def test_neuron_inputs_are_the_hooked_pre_relu_activations_and_the_relu_gives_the_outputs():
    model = small_model()
    before = mechanism.neuron_activations(model, before_relu=True)
    tokens, _ = make_dataset(P)
    _, cache = model.run_with_cache(tokens[[5 * P + 9]])
    torch.testing.assert_close(before[5, 9], cache["blocks.0.mlp.hook_pre"][0, -1])
    torch.testing.assert_close(torch.relu(before), mechanism.neuron_activations(model))


# --- attention at "=" ---------------------------------------------------------------------------------------
def test_attention_weights_are_the_equals_querys_softmax_row_for_every_input():
    model = small_model()
    weights = mechanism.attention_weights(model)
    assert weights.shape == (2, P, P, 3) and weights.dtype == torch.float64
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, P, P, dtype=torch.float64))
    tokens, _ = make_dataset(P)
    _, cache = model.run_with_cache(tokens[[5 * P + 9]])
    torch.testing.assert_close(weights[:, 5, 9], cache["blocks.0.attn.hook_pattern"][0, :, -1].double())


def test_head_outputs_add_up_to_the_attention_output():
    model = small_model()
    heads, out = mechanism.head_outputs(model), mechanism.attention_output(model)
    assert heads.shape == (2, P, P, 16) and out.shape == (P, P, 16)
    torch.testing.assert_close(heads.sum(0), out, rtol=1e-5, atol=1e-6)


def test_additive_share_is_one_for_a_sum_and_the_planted_share_with_a_product():
    (c3, s3), (c5, _) = waves(P, 3), waves(P, 5)
    total = c3[:, None] + s3[None, :]  # a sum f(a) + g(b): variance P²/2 + P²/2
    product = c5[:, None] * c5[None, :]  # orthogonal to every sum: variance P²/4
    assert mechanism.additive_share(total[..., None] + 7.0) == pytest.approx(1.0)
    assert mechanism.additive_share(torch.stack([total, total + product], -1)) == pytest.approx(1 - 0.25 / 2.25)
    torch.testing.assert_close(mechanism.additive_fit(total + product), total)
    assert mechanism.additive_share(torch.full((P, P), 3.0, dtype=torch.float64)) == 1.0


def test_additive_fit_is_the_least_squares_fit_by_one_hot_rows_and_columns():
    x = torch.randn(7, 7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eye = torch.eye(7, dtype=torch.float64)
    X = torch.cat([eye.repeat_interleave(7, 0), eye.repeat(7, 1)], 1)  # [p², 2p]: f(a) and g(b)
    Y = x.reshape(49, 3)
    fit = X @ torch.linalg.lstsq(X, Y, driver="gelsd").solution
    torch.testing.assert_close(mechanism.additive_fit(x), fit.reshape(7, 7, 3))


def test_logits_with_additive_attention_change_nothing_when_attention_is_already_a_sum():
    model = small_model()
    with torch.no_grad():
        model.blocks[0].attn.W_Q.zero_()  # every score 0: fixed weights, so the output is a sum of a and b terms
    torch.testing.assert_close(mechanism.logits_with_additive_attention(model), mechanism.model_logits(model),
                               rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        model.blocks[0].attn.W_Q.normal_(0, 3.0)  # weights that depend on a and b: products
    assert not torch.allclose(mechanism.logits_with_additive_attention(model), mechanism.model_logits(model),
                              rtol=1e-4, atol=1e-5)


def test_frequency_fractions_find_each_planted_neurons_frequency():
    acts, freqs = planted_neurons()
    fractions = mechanism.neuron_frequency_fractions(acts)  # [(p-1)/2, n]
    assert fractions.shape == ((P - 1) // 2, 5)
    best, index = fractions.max(0)
    assert (index[:3] + 1).tolist() == freqs[:3]
    torch.testing.assert_close(best[1:3], torch.ones(2, dtype=torch.float64))  # pure frequency-k terms
    assert best[0] > 0.9  # a ReLU of waves: mostly its own frequency, a little of its harmonics
    torch.testing.assert_close(fractions[[1, 4], 3], torch.tensor([0.5, 0.5], dtype=torch.float64))  # the mixture
    assert fractions[:, 4].abs().sum() == 0  # a constant neuron has no variance to explain


def test_fractions_sum_to_one_over_frequencies_for_single_frequency_terms_only():
    acts, _ = planted_neurons()
    # cos(w_2 a)·cos(w_5 b) mixes two frequencies in one product: none of the per-frequency terms holds it
    c2, c5 = waves(P, 2)[0], waves(P, 5)[0]
    fractions = mechanism.neuron_frequency_fractions((c2[:, None] * c5[None, :])[..., None])
    assert fractions.max() < 1e-12


def test_neuron_frequencies_and_clusters_group_neurons_by_frequency(monkeypatch):
    acts, _ = planted_neurons()
    monkeypatch.setattr(mechanism, "neuron_activations", lambda model: acts)
    freqs, fractions = mechanism.neuron_frequencies(model=None)
    assert freqs.dtype == torch.long and fractions.dtype == torch.float64
    assert freqs[:3].tolist() == [3, 7, 3]
    clusters = mechanism.neuron_clusters(model=None, threshold=0.85)
    assert list(clusters) == [3, 7]  # largest cluster first; the mixture and the constant are in none
    assert clusters[3].tolist() == [0, 2] and clusters[7].tolist() == [1]


def test_neuron_fit_r2_with_products_equals_the_frequency_fraction():
    acts, freqs = planted_neurons()
    fractions = mechanism.neuron_frequency_fractions(acts)
    r2 = mechanism.neuron_fit_r2(acts[..., :3], torch.tensor(freqs[:3]), quadratic=True)
    torch.testing.assert_close(r2, fractions[torch.tensor(freqs[:3]) - 1, torch.arange(3)])


def test_products_need_the_quadratic_terms_linear_terms_do_not():
    acts, freqs = planted_neurons()
    linear = mechanism.neuron_fit_r2(acts[..., :3], torch.tensor(freqs[:3]), quadratic=False)
    assert linear[1] < 1e-12  # cos(w a)·sin(w b) is invisible to the linear terms
    assert linear[2] == pytest.approx(1.0)  # a sum of linear terms needs nothing more
    assert 0.3 < linear[0] < 0.9  # a ReLU of a sum: partly linear, partly products
    assert mechanism.neuron_fit_r2(acts[..., 4:], 3).item() == 0.0  # the constant neuron


def test_neuron_features_span_constant_linear_and_product_terms():
    assert mechanism.neuron_features(P, 3, quadratic=False).shape == (P, P, 5)
    features = mechanism.neuron_features(P, 3).reshape(P * P, -1)
    assert features.shape == (P * P, 9)
    gram = features.T @ features  # orthogonal: the Fourier components they are
    torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)))


def cosine_sum_logits(p: int, freqs: list[int], alphas: list[float]) -> torch.Tensor:
    """Σ_k α_k cos(w_k(a+b-c)) plus an offset per input: [p, p, p]."""
    x = torch.arange(p, dtype=torch.float64)
    offset = (x[:, None] * 0.3 - x[None, :] ** 0.5)[..., None]
    return (torch.tensor(alphas, dtype=torch.float64)[:, None, None, None] * mechanism.cosine_waves(p, freqs)).sum(0) + offset


def test_cosine_fit_recovers_coefficients_and_explains_all_variance_of_an_exact_cosine_sum():
    logits = cosine_sum_logits(P, [2, 9], [3.0, -0.5])
    coeffs, fit = mechanism.fit_cosine_logits(logits, [2, 9])
    torch.testing.assert_close(coeffs, torch.tensor([3.0, -0.5], dtype=torch.float64))
    assert mechanism.variance_explained(logits, fit) == pytest.approx(1.0, abs=1e-12)


def test_variance_explained_is_the_planted_share_when_half_the_variance_is_elsewhere():
    p = 13
    logits = cosine_sum_logits(p, [4], [1.0])
    x = torch.arange(p, dtype=torch.float64)
    other = torch.cos(2 * math.pi * 4 * (x[:, None, None] + x[None, :, None] + x) / p)  # a+b+c: same energy, orthogonal
    _, fit = mechanism.fit_cosine_logits(logits + other, [4])
    assert mechanism.variance_explained(logits + other, fit) == pytest.approx(0.5, abs=1e-12)


def test_logit_variance_explained_of_a_model_whose_logits_are_a_cosine_sum_is_one(monkeypatch):
    logits = cosine_sum_logits(P, [5], [2.0])
    monkeypatch.setattr(mechanism, "logit_grid", lambda model: logits)
    assert mechanism.logit_variance_explained(None, [5]) == pytest.approx(1.0, abs=1e-12)
    assert mechanism.logit_variance_explained(None, [6]) == pytest.approx(0.0, abs=1e-12)


def test_logit_grid_lays_the_models_last_position_logits_out_over_a_b_c():
    model = small_model()
    tokens, _ = make_dataset(P)
    grid = mechanism.logit_grid(model)
    assert grid.shape == (P, P, P) and grid.dtype == torch.float64
    torch.testing.assert_close(grid[4, 11], model(tokens[[4 * P + 11]])[0, -1].double())


def test_cosine_waves_refuse_unknown_or_repeated_frequencies():
    with pytest.raises(ValueError, match="distinct"):
        mechanism.cosine_waves(P, [3, 3])
    with pytest.raises(ValueError, match="1 … 11"):
        mechanism.cosine_waves(P, [12])


def planted_W_L_model(p: int, freqs: list[int]):
    """A model whose W_U reads only cos/sin of the given frequencies, so W_L has rank 2 per frequency."""
    model = small_model(p)
    g = torch.Generator().manual_seed(1)
    W_U = torch.zeros(16, p, dtype=torch.float64)
    for i, k in enumerate(freqs):
        cos, sin = waves(p, k)
        W_U[2 * i] += cos * (i + 1)
        W_U[2 * i + 1] += sin * (i + 1)
    with torch.no_grad():
        model.unembed.W_U.copy_(W_U.float())
        model.blocks[0].mlp.W_out.copy_(torch.randn(24, 16, generator=g))
    return model


def test_W_L_is_W_out_times_W_U_and_its_fourier_form_inverts():
    model = planted_W_L_model(P, [2, 7])
    W = mechanism.W_L(model)
    assert W.shape == (24, P)
    torch.testing.assert_close(W, (model.W_out[0] @ model.W_U).double())
    from utils.fourier import fourier_basis

    torch.testing.assert_close(mechanism.W_L_fourier(model) @ fourier_basis(P, torch.float64), W)


def test_key_frequencies_and_W_L_rank_recover_the_planted_output_frequencies():
    model = planted_W_L_model(P, [2, 7, 10])
    assert key_frequencies(model) == [10, 7, 2]  # sorted by norm: the amplitudes are 1, 2, 3
    assert mechanism.significant_rank(mechanism.W_L(model)) == 6  # 2 per frequency
    shares = output_frequency_norms(model)
    assert shares.sum() == pytest.approx(1.0) and shares[[1, 6, 9]].sum() == pytest.approx(1.0)


def test_significant_rank_counts_singular_values_above_the_relative_threshold():
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))[0]
    matrix = U[:, :4] @ torch.diag(torch.tensor([10.0, 5.0, 2.0, 0.5], dtype=torch.float64)) @ U[:, 4:8].T
    assert mechanism.significant_rank(matrix) == 3 and mechanism.significant_rank(matrix, rel_threshold=0.01) == 4


def test_cluster_output_norms_send_each_cluster_to_its_own_frequency():
    model = planted_W_L_model(P, [2, 7])
    with torch.no_grad():  # neurons 0-11 write only to the first 2 residual directions (read by frequency 2)
        model.blocks[0].mlp.W_out[:12, 2:] = 0
        model.blocks[0].mlp.W_out[12:, :2] = 0
    shares = mechanism.cluster_output_norms(model, {2: torch.arange(12), 7: torch.arange(12, 24)})
    assert shares.shape == (2, (P - 1) // 2)
    torch.testing.assert_close(shares[:, [1, 6]], torch.eye(2, dtype=torch.float64))


@pytest.mark.parametrize("op", ["add", "subtract"])
def test_fourier_multiplication_is_the_cosine_sum_and_answers_the_operation(op):
    p = 31
    tokens, labels = make_dataset(p, op)
    a, b = tokens[:, 0], tokens[:, 1]
    logits = mechanism.fourier_multiplication(a, b, p, [4, 11, 13], torch.tensor([1.0, 0.7, 2.0]), op)
    assert logits.shape == (p * p, p)
    direct = (torch.tensor([1.0, 0.7, 2.0], dtype=torch.float64)[:, None, None, None]
              * mechanism.cosine_waves(p, [4, 11, 13], op)).sum(0).reshape(p * p, p)
    torch.testing.assert_close(logits, direct)
    assert torch.equal(logits.argmax(-1), labels)  # constructive interference at c = a ± b mod p


def test_subtraction_waves_are_addition_waves_with_b_negated():
    p = 13
    add, sub = mechanism.cosine_waves(p, [2, 5]), mechanism.cosine_waves(p, [2, 5], "subtract")
    torch.testing.assert_close(sub, add[:, :, (-torch.arange(p)) % p])
    with pytest.raises(ValueError, match="op must be one of"):
        mechanism.cosine_waves(p, [2], "multiply")


def test_fit_waves_recovers_a_planted_mix_of_any_waves():
    p = 11
    waves = torch.cat([mechanism.cosine_waves(p, [1, 3], "subtract"), mechanism.cosine_waves(p, [2])])
    logits = (torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)[:, None, None, None] * waves).sum(0) + 7.0
    coeffs, fit = mechanism.fit_waves(logits, waves)
    torch.testing.assert_close(coeffs, torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64))
    assert mechanism.variance_explained(logits, fit) == pytest.approx(1.0, abs=1e-12)


def test_top_singular_share_is_one_for_a_matrix_of_that_rank_and_less_below_it():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(30, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 20, generator=g, dtype=torch.float64)
    assert mechanism.top_singular_share(low, 2) == pytest.approx(1.0)
    assert 0 < mechanism.top_singular_share(low, 1) < 1
