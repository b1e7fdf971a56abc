"""utils.forward.logits, the one implementation of the model's maths, is HookedTransformer's: logits and gradients,
for one model or a stack, with or without biases and with any attention rate."""
import pytest
import torch

from utils.data import make_dataset, train_test_split
from utils.forward import all_pairs, logits, stacked
from utils.metrics import loss_fn
from utils.model import make_model, model_config, set_attention_rate, trainable_params


def sharpened(model):
    """The model with its random weights tripled, so attention is far from uniform (a harder test)."""
    with torch.no_grad():
        for w in trainable_params(model).values():
            w.mul_(3)
    return model


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("p, d_model, n_heads, d_mlp", [(113, 128, 4, 512), (31, 48, 3, 80)])
def test_logits_and_gradients_match_hooked_transformer(p, d_model, n_heads, d_mlp):
    model = sharpened(make_model(model_config(p=p, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, seed=7)))
    params = trainable_params(model)
    tokens, labels = make_dataset(p)
    idx = train_test_split(p, 0.3, 0)[0]
    reference = model(tokens[idx])[:, -1]
    ours = logits(stacked(params), tokens[idx, 0][None], tokens[idx, 1][None])[0]
    assert relative_error(ours, reference) <= 1e-5

    loss_fn(reference, labels[idx]).backward()
    expected = {k: w.grad.clone() for k, w in params.items()}
    for w in params.values():
        w.grad = None
    loss_fn(logits(stacked(params), tokens[idx, 0][None], tokens[idx, 1][None])[0], labels[idx]).backward()
    for name, w in params.items():
        assert (w.grad - expected[name]).norm() / expected[name].norm() <= 1e-5, name


def test_a_stack_of_models_gives_each_model_its_own_logits_on_its_own_inputs():
    models = [sharpened(make_model(model_config(p=23, d_model=32, n_heads=2, d_mlp=64, seed=s))) for s in range(3)]
    singles = [trainable_params(m) for m in models]
    stack = {k: torch.stack([params[k] for params in singles]) for k in singles[0]}
    a, b = all_pairs(23)
    order = torch.stack([torch.randperm(len(a), generator=torch.Generator().manual_seed(s)) for s in range(3)])
    out = logits(stack, a[order], b[order])  # each model sees the pairs in its own order
    tokens = make_dataset(23)[0]
    for i, model in enumerate(models):
        assert relative_error(out[i], model(tokens[order[i]])[:, -1]) <= 1e-5


def test_all_pairs_are_in_the_datasets_order():
    tokens = make_dataset(13)[0]
    a, b = all_pairs(13)
    assert torch.equal(a, tokens[:, 0]) and torch.equal(b, tokens[:, 1])


def test_trained_biases_are_included_when_the_stack_holds_them():
    model = sharpened(make_model(model_config(p=19, d_model=32, n_heads=2, d_mlp=48, seed=1)))
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b_"):
                w.normal_()
    params = {name: w.detach()[None] for name, w in model.named_parameters()}
    a, b = all_pairs(19)
    reference = model(make_dataset(19)[0])[:, -1]
    assert relative_error(logits(params, a[None], b[None])[0], reference) <= 1e-5
    without = {k: v for k, v in params.items() if not k.rsplit(".", 1)[-1].startswith("b_")}
    assert relative_error(logits(without, a[None], b[None])[0], reference) > 1e-2  # the biases mattered


def test_attention_rate_matches_the_hooked_model_for_one_rate_or_one_per_model():
    rates = [0.0, 0.4, 1.0]
    models = [sharpened(make_model(model_config(p=17, d_model=32, n_heads=2, d_mlp=48, seed=s))) for s in range(3)]
    stack = {k: torch.stack([trainable_params(m)[k].detach() for m in models]) for k in trainable_params(models[0])}
    a, b = all_pairs(17)
    tokens = make_dataset(17)[0]
    out = logits(stack, a.expand(3, -1), b.expand(3, -1), torch.tensor(rates))
    for i, (model, rate) in enumerate(zip(models, rates)):
        reference = set_attention_rate(model, rate)(tokens)[:, -1]
        assert relative_error(out[i], reference) <= 1e-5, rate
        alone = logits({k: v[i:i + 1] for k, v in stack.items()}, a[None], b[None], rate)[0]
        assert relative_error(alone, reference) <= 1e-5, rate


def test_compiled_logits_and_gradients_equal_eager_ones():
    """Compiled, the gathered rows' gradients are summed by a one-hot matrix product (see utils.forward._Rows)."""
    model = sharpened(make_model(model_config(p=19, d_model=32, n_heads=2, d_mlp=48, seed=2)))
    params = stacked(trainable_params(model))
    a, b = all_pairs(19)
    labels = make_dataset(19)[1]
    outputs = {}
    for name, fn in (("eager", logits), ("compiled", torch.compile(logits, dynamic=False))):
        out = fn(params, a[None], b[None], 0.5)[0]
        grads = torch.autograd.grad(loss_fn(out, labels), list(params.values()))
        outputs[name] = (out.detach(), grads)
    assert relative_error(outputs["compiled"][0], outputs["eager"][0]) <= 1e-5
    for compiled, eager in zip(outputs["compiled"][1], outputs["eager"][1]):
        assert (compiled - eager).norm() / eager.norm() <= 1e-5
