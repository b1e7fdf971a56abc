"""utils.ablation: frequency directions of the logits, neuron projections and ablations, on planted structure."""
import math

import pytest
import torch

from utils import ablation, mechanism
from utils.data import make_dataset
from utils.fourier import fourier_basis
from utils.model import make_model, model_config

P = 13


def grid(p: int = P) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a, b and c as broadcastable float64 tensors over inputs (a·p + b) and outputs c: [p², 1], [p², 1], [1, p]."""
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)[:, None]
    b = torch.arange(p, dtype=torch.float64).repeat(p)[:, None]
    return a, b, torch.arange(p, dtype=torch.float64)[None, :]


def planted_logits(amplitudes: dict[int, float], p: int = P) -> torch.Tensor:
    """Logits Σ_k α_k cos(w_k(a + b - c)): [p², p]."""
    a, b, c = grid(p)
    return sum(alpha * torch.cos(2 * math.pi * k * (a + b - c) / p) for k, alpha in amplitudes.items())


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return make_model(model_config(p=P, d_model=32, n_heads=4, d_mlp=48, seed=0))


# --- directions of the logits -----------------------------------------------------------------------------
def test_sum_directions_are_orthonormal_functions_of_a_plus_b():
    directions = ablation.sum_directions(P, [1, 4, 6])
    assert directions.shape == (6, P * P)
    torch.testing.assert_close(directions @ directions.T, torch.eye(6, dtype=torch.float64))
    a, b, _ = grid()
    shifted = ((a + 1) % P) * P + (b - 1) % P  # (a + 1, b - 1) has the same a + b
    torch.testing.assert_close(directions[:, shifted[:, 0].long()], directions)


def test_removing_planted_frequencies_leaves_exactly_the_others():
    key, other = planted_logits({2: 3.0, 5: 1.5}), planted_logits({3: 0.7})
    logits = key + other + 0.25  # a constant too
    torch.testing.assert_close(ablation.remove_frequencies(logits, [2, 5]), other + 0.25)
    torch.testing.assert_close(ablation.keep_frequencies(logits, [2, 5]), key + 0.25)
    torch.testing.assert_close(ablation.frequency_component(logits, [3]), other)


def test_keep_and_remove_split_the_logits_into_two_parts():
    logits = torch.randn(P * P, P, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kept, removed = ablation.keep_frequencies(logits, [1, 2]), ablation.remove_frequencies(logits, [1, 2])
    torch.testing.assert_close(kept + removed, logits + logits.mean(0, keepdim=True))


def test_keeping_every_frequency_averages_the_logits_over_equal_sums():
    logits = torch.randn(P * P, P, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, b, _ = grid()
    total = ((a + b) % P)[:, 0].long()
    means = torch.zeros(P, P, dtype=torch.float64).index_add_(0, total, logits) / P  # [a + b, c]
    torch.testing.assert_close(ablation.keep_frequencies(logits, range(1, P // 2 + 1)), means[total])


def test_removed_components_average_to_zero_so_zero_and_mean_ablation_agree():
    logits = torch.randn(P * P, P, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    component = ablation.frequency_component(logits, [1, 3])
    assert component.mean(0).abs().max() < 1e-12


def test_frequency_functions_work_on_a_stack_of_models_logits():
    stack = torch.stack([planted_logits({1: 1.0, 4: 2.0}), planted_logits({4: 1.0})])  # [2, p², p]
    torch.testing.assert_close(ablation.remove_frequencies(stack, [4]),
                               torch.stack([planted_logits({1: 1.0}), torch.zeros(P * P, P, dtype=torch.float64)]))


@pytest.mark.parametrize("freqs", [[0], [7], [2, 2], [-1]])
def test_frequencies_outside_one_to_half_p_are_refused(freqs):
    with pytest.raises(ValueError, match="distinct integers in 1"):
        ablation.sum_directions(P, freqs)


@pytest.mark.parametrize("freqs", [[1.7], ["2"], [True], 3, "12"])
def test_frequencies_that_are_not_integers_are_refused_not_coerced(freqs):
    with pytest.raises(ValueError, match="integers"):
        ablation.sum_directions(P, freqs)


def test_logits_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"\[..., p², p\]"):
        ablation.remove_frequencies(torch.zeros(P, P), [1])


def test_per_frequency_loss_hurts_most_for_the_largest_planted_frequency():
    logits = 4 * planted_logits({2: 3.0, 5: 1.0})
    _, labels = make_dataset(P)
    losses = ablation.per_frequency_loss(logits, labels, [2, 5, 3])
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] == pytest.approx(ablation.logit_loss(logits, labels))  # frequency 3 is not there


# --- neurons ------------------------------------------------------------------------------------------------
def test_projection_onto_a_neurons_frequency_keeps_its_terms_and_drops_the_rest():
    a, b = (torch.arange(P, dtype=torch.float64)[:, None], torch.arange(P, dtype=torch.float64)[None, :])
    w = lambda k: 2 * math.pi * k / P  # noqa: E731
    own = [2.0 + torch.cos(w(3) * a) * torch.sin(w(3) * b) + 0.5 * torch.sin(w(3) * a) + 0 * b,
           -1.0 + torch.cos(w(1) * (a + b)) + torch.cos(w(1) * b) + 0 * a]
    noise = [torch.cos(w(5) * a) + torch.sin(w(2) * (a - b)), torch.cos(w(3) * a) * torch.cos(w(4) * b)]
    acts = torch.stack([o + n for o, n in zip(own, noise)], -1)  # [p, p, 2]
    projected = ablation.project_onto_frequency(acts, torch.tensor([3, 1]))
    torch.testing.assert_close(projected, torch.stack(own, -1))
    torch.testing.assert_close(ablation.project_onto_frequency(projected, torch.tensor([3, 1])), projected)


def test_model_logits_are_the_last_position_in_dataset_order(tiny_model):
    tokens, _ = make_dataset(P)
    with torch.no_grad():
        want = tiny_model(tokens)[:, -1]
    torch.testing.assert_close(mechanism.model_logits(tiny_model), want)


def test_putting_the_neurons_own_activations_back_changes_nothing(tiny_model):
    logits = ablation.run_with_neurons(tiny_model, mechanism.neuron_activations(tiny_model))
    torch.testing.assert_close(logits, mechanism.model_logits(tiny_model))
    assert mechanism.neuron_activations(tiny_model).shape == (P, P, 48)


def test_zero_ablating_every_neuron_is_the_model_without_its_mlp(tiny_model):
    without_mlp = make_model(tiny_model.cfg)
    without_mlp.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        without_mlp.blocks[0].mlp.W_out.zero_()
    torch.testing.assert_close(ablation.ablate_neurons(tiny_model, range(48), "zero"),
                               mechanism.model_logits(without_mlp), atol=1e-5, rtol=1e-5)


def test_mean_ablation_gives_every_input_the_average_activation(tiny_model):
    neurons = torch.tensor([0, 5, 17])
    acts = mechanism.neuron_activations(tiny_model)
    new = acts.clone()
    new[..., neurons] = acts[..., neurons].mean((0, 1))
    torch.testing.assert_close(ablation.ablate_neurons(tiny_model, neurons, "mean"),
                               ablation.run_with_neurons(tiny_model, new))
    zero = acts.clone()
    zero[..., neurons] = 0
    torch.testing.assert_close(ablation.ablate_neurons(tiny_model, neurons, "zero"),
                               ablation.run_with_neurons(tiny_model, zero))


def test_ablating_no_neurons_changes_nothing_and_unknown_methods_are_refused(tiny_model):
    torch.testing.assert_close(ablation.ablate_neurons(tiny_model, [], "zero"), mechanism.model_logits(tiny_model))
    with pytest.raises(ValueError, match="zero"):
        ablation.ablate_neurons(tiny_model, [1], "resample")


def test_project_neurons_replaces_only_the_listed_neurons_by_their_projection(tiny_model):
    neurons, freqs = torch.tensor([3, 9]), torch.tensor([1, 4])
    acts = mechanism.neuron_activations(tiny_model)
    new = acts.clone()
    new[..., neurons] = ablation.project_onto_frequency(acts[..., neurons], freqs)
    torch.testing.assert_close(ablation.project_neurons(tiny_model, freqs, neurons),
                               ablation.run_with_neurons(tiny_model, new))


def test_removing_an_embedding_frequency_removes_exactly_its_waves_from_the_token_rows():
    model = make_model(model_config(p=P, d_model=16, n_heads=2, d_mlp=16, seed=3))
    logits = ablation.remove_embedding_frequencies(model, [2])
    W_E = model.W_E.detach().double()
    basis = fourier_basis(P)
    expected = W_E.clone()
    expected[:P] = basis.T @ (basis @ W_E[:P] * (torch.arange(P) != 3)[:, None] * (torch.arange(P) != 4)[:, None])
    with torch.no_grad():
        model.embed.W_E.copy_(expected.float())
    torch.testing.assert_close(logits, mechanism.model_logits(model))
