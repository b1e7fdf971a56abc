"""utils.progress: the progress measures, their vectorised form over checkpoints, and the phase rule."""
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from utils import ablation, mechanism, plotting, progress
from utils.data import make_dataset
from utils.model import make_model, model_config
from utils.train import TrainConfig, loss_fn, train

P = 13


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A small run (p = 13, d_model 32) trained 60 steps with checkpoints every 20."""
    cfg = TrainConfig(p=P, d_model=32, n_heads=4, d_mlp=48, lr=3e-3, weight_decay=1.0, steps=60,
                      checkpoint_every=20, eval_every=20)
    return train(cfg, tmp_path_factory.mktemp("run"), compile=False, progress=False)


def with_random_biases(seed: int):
    """A tiny model whose biases (frozen at zero by make_model) are set to random values, as in the paper's model."""
    torch.manual_seed(seed)
    model = make_model(model_config(p=P, d_model=32, n_heads=4, d_mlp=48, seed=seed))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                param.normal_(0, 0.3)
    return model


# --- gini and weights -----------------------------------------------------------------------------------------
def test_gini_of_known_vectors():
    assert progress.gini(torch.ones(10)).item() == pytest.approx(0.0)
    assert progress.gini(torch.tensor([0.0, 0, 0, 5])).item() == pytest.approx(0.75)  # one holds all: 1 - 1/n
    assert progress.gini(torch.tensor([0.0, 0, 1, 1])).item() == pytest.approx(0.5)
    assert progress.gini(torch.tensor([1.0, 2, 3])).item() == pytest.approx(2 / 9)  # Σ|xi - xj| / (2 n² mean)


def test_gini_is_scale_and_order_free_and_works_along_the_last_axis():
    x = torch.rand(5, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batch = progress.gini(x)
    assert batch.shape == (5,)
    torch.testing.assert_close(batch, progress.gini(7 * x.flip(-1)))
    torch.testing.assert_close(batch[2], progress.gini(x[2]))
    assert progress.gini(torch.zeros(4)).item() == 0.0


def test_gini_refuses_negative_values():
    with pytest.raises(ValueError, match="≥ 0"):
        progress.gini(torch.tensor([1.0, -1.0]))


def test_sum_squared_weights_adds_every_parameter_squared():
    model = with_random_biases(0)
    want = sum(param.detach().double().pow(2).sum().item() for param in model.parameters())
    assert progress.sum_squared_weights(model) == pytest.approx(want)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(0.5)
    assert progress.sum_squared_weights(model) == pytest.approx(0.25 * sum(p.numel() for p in model.parameters()))


def fourier_gini(model) -> dict[str, float]:
    """Gini of one model's per-frequency Fourier norms of W_E and W_L, through the stacked code path."""
    embed, unembed = progress.weight_frequency_norms(progress.stack_models([model]))
    return {"W_E": progress.gini(embed[0]).item(), "W_L": progress.gini(unembed[0]).item()}


def test_fourier_gini_is_high_for_an_embedding_built_from_one_frequency():
    model = make_model(model_config(p=P, d_model=32, n_heads=4, d_mlp=48, seed=0))
    x = torch.arange(P, dtype=torch.float32)
    with torch.no_grad():
        model.W_E[:P] = 0
        model.W_E[:P, 0], model.W_E[:P, 1] = torch.cos(2 * torch.pi * 4 * x / P), torch.sin(2 * torch.pi * 4 * x / P)
    ginis = fourier_gini(model)
    assert ginis["W_E"] == pytest.approx(1 - 1 / (P // 2), abs=1e-5)  # one frequency of 6 holds everything
    assert ginis["W_L"] < 0.5  # W_out W_U is still random


# --- the vectorised forward pass and measures --------------------------------------------------------------------
@pytest.mark.parametrize("seeds", [(0,), (1, 2, 3)])
def test_batched_logits_match_hooked_transformer_with_biases(seeds):
    models = [with_random_biases(seed) for seed in seeds]
    logits = progress.batched_logits(progress.stack_models(models))
    assert logits.shape == (len(seeds), P * P, P)
    for got, model in zip(logits, models):
        torch.testing.assert_close(got, mechanism.model_logits(model), atol=1e-5, rtol=1e-5)


def test_batched_logits_match_hooked_transformer_on_a_checkpoint(tiny_run):
    step = tiny_run.checkpoint_steps[-2]
    logits = progress.batched_logits(progress.stack_checkpoints(tiny_run, [step]))[0]
    torch.testing.assert_close(logits, mechanism.model_logits(tiny_run.model_at(step)), atol=1e-5, rtol=1e-5)


def test_vectorised_measures_equal_the_per_model_computation(tiny_run):
    freqs = [1, 3]
    measures, per_freq = progress.progress_measures(tiny_run, freqs, chunk=2)
    assert list(measures.step) == tiny_run.checkpoint_steps
    assert per_freq.shape == (len(tiny_run.checkpoint_steps), 2)
    tokens, labels = tiny_run.dataset()
    for row, freq_losses in zip(measures.itertuples(), per_freq):
        model = tiny_run.model_at(row.step)
        logits = mechanism.model_logits(model)
        ginis = fourier_gini(model)
        want = {
            "train_loss": loss_fn(logits[tiny_run.train_idx], labels[tiny_run.train_idx]).item(),
            "test_loss": loss_fn(logits[tiny_run.test_idx], labels[tiny_run.test_idx]).item(),
            "test_acc": ablation.logit_accuracy(logits, labels, tiny_run.test_idx),
            "restricted_loss": progress.restricted_loss(model, freqs),
            "excluded_loss": progress.excluded_loss(model, freqs, tiny_run.train_idx),
            "gini_W_E": ginis["W_E"], "gini_W_L": ginis["W_L"],
            "sum_squared_weights": progress.sum_squared_weights(model),
        }
        test = logits[tiny_run.test_idx].double()
        key = test - ablation.remove_frequencies(logits.double(), freqs)[tiny_run.test_idx]
        want["key_logit_rms"] = (key - key.mean(-1, keepdim=True)).pow(2).mean().sqrt().item()
        for name, value in want.items():
            assert getattr(row, name) == pytest.approx(value, rel=1e-4, abs=1e-6), (row.step, name)
        torch.testing.assert_close(freq_losses, progress.per_frequency_excluded_loss(model, freqs, tiny_run.train_idx),
                                   rtol=1e-4, atol=1e-6)
    metrics = tiny_run.metrics.set_index("step").loc[measures.step]
    np.testing.assert_allclose(measures.test_loss, metrics.test_loss, rtol=1e-4)


def test_excluding_nothing_is_the_training_loss_and_one_frequency_matches_its_per_frequency_loss(tiny_run):
    model = tiny_run.model
    logits, (_, labels) = mechanism.model_logits(model), make_dataset(P)
    train_loss = loss_fn(logits[tiny_run.train_idx], labels[tiny_run.train_idx]).item()
    assert progress.excluded_loss(model, [], tiny_run.train_idx) == pytest.approx(train_loss)
    assert progress.per_frequency_excluded_loss(model, [2], tiny_run.train_idx).item() == pytest.approx(
        progress.excluded_loss(model, [2], tiny_run.train_idx))


def test_restricted_loss_keeps_the_constant_and_the_key_directions(tiny_run):
    model = tiny_run.model
    logits, (_, labels) = mechanism.model_logits(model), make_dataset(P)
    want = loss_fn(ablation.keep_frequencies(logits, [1, 5]), labels).item()
    assert progress.restricted_loss(model, [1, 5]) == pytest.approx(want)


# --- phases -----------------------------------------------------------------------------------------------------------
def planted_curve(noise: float = 0.0, bump: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A test loss with planted phases: rises to a peak at step 100, drifts down until 500, collapses (linearly in
    log) from 500 to 700, then stays flat; optionally noisy, and with a bump of `bump` nats at step 300."""
    steps = np.arange(0, 1001, 10)
    log_loss = np.interp(steps, [0, 100, 500, 700, 1000], np.log([4.7, 14.0, 10.0, 1e-6, 1e-6]))
    log_loss += bump * np.exp(-((steps - 300) / 30.0) ** 2)
    log_loss += noise * np.random.default_rng(0).standard_normal(len(steps)) * (steps > 0)
    return steps, np.exp(log_loss)


def test_phase_boundaries_find_the_planted_phases():
    steps, test_loss = planted_curve()
    phases = progress.phase_boundaries(steps, test_loss)
    fall = np.log(14.0) - np.log(1e-6)
    collapse_rate = (np.log(10.0) - np.log(1e-6)) / 200  # nats per step between 500 and 700
    assert phases.memorisation_end == 100
    # 10% of the fall: 500 + (0.1 · fall − the drift from 14 to 10) / rate, on the 10-step grid
    assert abs(phases.cleanup_start - (500 + (0.1 * fall - np.log(1.4)) / collapse_rate)) <= 10
    assert abs(phases.cleanup_end - (700 - 0.1 * fall / collapse_rate)) <= 10
    assert [name for name, *_ in phases.spans()] == list(progress.PHASE_NAMES)


def test_phase_boundaries_ignore_noise_and_a_later_bump():
    clean = progress.phase_boundaries(*planted_curve())
    noisy = progress.phase_boundaries(*planted_curve(noise=0.02))
    bumpy = progress.phase_boundaries(*planted_curve(bump=0.8))  # a bump higher than the first peak
    for phases in (noisy, bumpy):
        assert abs(phases.memorisation_end - clean.memorisation_end) <= 20
        assert abs(phases.cleanup_start - clean.cleanup_start) <= 20
        assert abs(phases.cleanup_end - clean.cleanup_end) <= 20


def test_phase_boundaries_refuse_a_run_that_did_not_grok():
    steps = np.arange(0, 1000, 10)
    with pytest.raises(ValueError, match="did not grok"):
        progress.phase_boundaries(steps, np.interp(steps, [0, 100, 999], [4.7, 14.0, 8.0]))
    with pytest.raises(ValueError, match="same length"):
        progress.phase_boundaries(steps, np.ones(5))


def test_shade_phases_draws_one_labelled_band_per_phase_with_staggered_labels():
    fig = plotting.shade_phases(go.Figure(go.Scatter(x=[0, 1000], y=[1, 2])), progress.Phases(0, 100, 520, 680))
    bands = [(shape.x0, shape.x1) for shape in fig.layout.shapes]
    assert bands == [(0, 100), (100, 520), (520, 680)]
    assert [a.text for a in fig.layout.annotations] == list(progress.PHASE_NAMES)
    assert [a.yshift for a in fig.layout.annotations] == [0, 14, 0]  # neighbours never share a line


@pytest.mark.parametrize("measure", [progress.excluded_loss, progress.per_frequency_excluded_loss])
def test_excluded_losses_refuse_to_guess_the_training_pairs(tiny_run, measure):
    with pytest.raises(ValueError, match="train_idx=run.train_idx"):
        measure(tiny_run.model, [2], None)


@pytest.mark.parametrize("bad", [torch.tensor([-1, 3]), torch.tensor([0, P * P]), torch.tensor([1.0, 2.0]),
                                 torch.tensor([[0, 1]]), torch.tensor([4, 4])])
def test_excluded_loss_refuses_indices_outside_the_grid_instead_of_wrapping(tiny_run, bad):
    with pytest.raises(ValueError, match="train_idx"):
        progress.excluded_loss(tiny_run.model, [2], bad)


@pytest.mark.parametrize("bad", [[float("nan"), 1.0], [float("inf"), 1.0]])
def test_gini_refuses_nan_and_inf_rather_than_returning_zero(bad):
    with pytest.raises(ValueError, match="finite"):
        progress.gini(torch.tensor(bad))
