"""utils.plotting: renderers that never inline plotly.js for the book, offline widgets, and the house style."""
import sys
import types

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

from utils import plotting

PLOTLY_MIME = "application/vnd.plotly.v1+json"


@pytest.fixture(autouse=True)
def restore_plotly_defaults():
    """Each test starts from plotly's defaults and leaves them as it found them."""
    renderer, template = pio.renderers.default, pio.templates.default
    yield
    pio.renderers.default, pio.templates.default = renderer, template


@pytest.fixture
def outside_book(monkeypatch):
    monkeypatch.delenv(plotting.BOOK_BUILD_ENV, raising=False)


@pytest.fixture
def in_book(monkeypatch):
    monkeypatch.setenv(plotting.BOOK_BUILD_ENV, "1")


def small_figure() -> go.Figure:
    return go.Figure(go.Scatter(x=[1, 2, 3], y=[4.5, 5.5, 6.5], name="probe-series"))


def test_page_renderer_writes_a_div_and_the_data_without_plotly_js():
    bundle = pio.renderers[plotting.PAGE_RENDERER].to_mimebundle(small_figure().to_dict())
    html = bundle["text/html"]
    assert set(bundle) == {"text/html"}
    assert 'class="plotly-graph-div"' in html and "Plotly.newPlot(" in html
    assert "probe-series" in html
    plotly_js = plotting.book_assets()["plotly.min.js"][0].read_text(encoding="utf-8")
    assert len(html) < 20_000 < len(plotly_js), "the figure's HTML must not carry plotly.js"
    assert plotly_js[:2000] not in html
    assert "<script src" not in html and "cdn" not in html.lower(), "nothing may load from the network"


def test_setup_in_jupyter_gives_plotly_mimetype_and_a_div_for_the_page(outside_book):
    plotting.setup()
    bundle = small_figure()._repr_mimebundle_()
    assert PLOTLY_MIME in bundle
    assert 'class="plotly-graph-div"' in bundle["text/html"]
    assert len(bundle["text/html"]) < 20_000


def test_setup_in_book_build_gives_only_the_div(in_book):
    """myst-nb warns on a mimetype it does not know, so the book's outputs carry text/html alone."""
    plotting.setup()
    bundle = small_figure()._repr_mimebundle_()
    assert PLOTLY_MIME not in bundle
    assert 'class="plotly-graph-div"' in bundle["text/html"]


def test_setup_in_colab_uses_colab_renderer(outside_book, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    plotting.setup()
    assert pio.renderers.default == "colab"


def test_setup_makes_the_course_template_the_default(outside_book):
    plotting.setup()
    assert pio.templates.default == plotting.TEMPLATE
    assert list(go.Figure().layout.template.layout.colorway) == plotting.COLORS


def test_style_sets_title_axis_titles_template_and_log_axes():
    fig = plotting.style(small_figure(), title="Loss", xaxis_title="training step",
                         yaxis_title="loss (nats)", log_y=True)
    assert fig.layout.title.text == "Loss"
    assert fig.layout.xaxis.title.text == "training step"
    assert fig.layout.yaxis.title.text == "loss (nats)"
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.type != "log"
    assert list(fig.layout.template.layout.colorway) == plotting.COLORS


@pytest.mark.parametrize("missing", ["title", "xaxis_title", "yaxis_title"])
def test_style_rejects_a_missing_title(missing):
    titles = {"title": "Loss", "xaxis_title": "training step", "yaxis_title": "loss (nats)", missing: " "}
    with pytest.raises(ValueError, match="title"):
        plotting.style(small_figure(), **titles)


def test_line_draws_one_named_trace_per_series():
    steps = np.arange(1, 11)
    fig = plotting.line({"train": 1.0 / steps, "test": 2.0 / steps}, x=steps, title="Loss",
                        xaxis_title="training step", yaxis_title="loss (nats)", log_y=True)
    assert [trace.name for trace in fig.data] == ["train", "test"]
    np.testing.assert_allclose(fig.data[1].y, 2.0 / steps, rtol=1e-6)
    np.testing.assert_allclose(fig.data[0].x, steps)


def test_line_accepts_a_tensor_that_requires_grad_and_defaults_x_to_indices():
    values = torch.linspace(0, 1, 5, requires_grad=True) * 2
    fig = plotting.line(values, title="t", xaxis_title="index", yaxis_title="value (a.u.)")
    assert len(fig.data) == 1 and fig.data[0].showlegend is False
    np.testing.assert_allclose(fig.data[0].x, np.arange(5))
    np.testing.assert_allclose(fig.data[0].y, np.linspace(0, 2, 5), rtol=1e-6)


def test_line_rejects_series_of_a_different_length_than_x():
    with pytest.raises(ValueError, match="same length"):
        plotting.line([1.0, 2.0, 3.0], x=[1, 2], title="t", xaxis_title="x (a.u.)", yaxis_title="y (a.u.)")


def test_line_rejects_non_positive_values_on_a_log_axis():
    with pytest.raises(ValueError, match="log axis needs positive values"):
        plotting.line([1.0, 0.0, 3.0], title="t", xaxis_title="x (a.u.)", yaxis_title="y (a.u.)", log_y=True)


def test_heatmap_centres_a_diverging_scale_on_zero_for_signed_data():
    fig = plotting.heatmap(np.array([[-1.0, 0.5], [0.2, 2.0]]), title="t", xaxis_title="b", yaxis_title="a")
    assert fig.data[0].zmid == 0
    assert fig.data[0].colorscale == go.Heatmap(colorscale=plotting.DIVERGING).colorscale


def test_heatmap_uses_a_sequential_scale_for_non_negative_data():
    fig = plotting.heatmap(np.ones((2, 3)), title="t", xaxis_title="b", yaxis_title="a", colorbar_title="norm")
    assert fig.data[0].zmid is None
    assert fig.data[0].colorscale == go.Heatmap(colorscale=plotting.SEQUENTIAL).colorscale
    assert fig.data[0].colorbar.title.text == "norm"


def test_heatmap_takes_tensors_for_values_and_axis_labels():
    fig = plotting.heatmap(torch.eye(3, requires_grad=True), x=torch.arange(3), y=["a", "b", "="],
                           title="t", xaxis_title="key", yaxis_title="query")
    assert list(fig.data[0].x) == [0, 1, 2] and list(fig.data[0].y) == ["a", "b", "="]
    np.testing.assert_array_equal(fig.data[0].z, np.eye(3))


def test_heatmap_rejects_a_non_2d_array():
    with pytest.raises(ValueError, match="2-D"):
        plotting.heatmap(np.ones(4), title="t", xaxis_title="b", yaxis_title="a")


def causal_pattern(n_heads: int = 4, n: int = 3) -> np.ndarray:
    """Softmax of random scores under a causal mask: [head, query, key]."""
    scores = np.random.default_rng(0).normal(size=(n_heads, n, n))
    scores = np.where(np.tril(np.ones((n, n))) == 1, scores, -np.inf)
    return np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)


def test_attention_patterns_outside_the_book_carries_the_circuitsvis_bundle(outside_book):
    html = plotting.attention_patterns(["a", "b", "="], causal_pattern()).data
    assert "var CircuitsVis=" in html, "offline in Jupyter/Colab the widget needs its own copy of the bundle"
    assert html.count("<figure") == 4 and f'class="{plotting.WIDGET_CLASS}"' in html
    assert "sourceMappingURL" not in html


def test_attention_patterns_in_the_book_leaves_the_bundle_to_the_page(in_book):
    pattern = causal_pattern()
    html = plotting.attention_patterns(["a", "b", "="], pattern, head_names=["h0", "h1", "h2", "h3"]).data
    assert "var CircuitsVis=" not in html and len(html) < 5_000
    assert "CircuitsVis.AttentionPattern" in html and ">h3</figcaption>" in html
    assert f"{pattern[2, 1, 0]:.4f}".rstrip("0") in html


def test_attention_patterns_escapes_tokens_that_would_end_the_script(in_book):
    html = plotting.attention_patterns(["a", "</script>", "="], causal_pattern()).data
    assert html.count("</script>") == 1  # only the widget's own closing tag


def test_attention_patterns_rejects_a_pattern_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\[n_heads, 3, 3\]"):
        plotting.attention_patterns(["a", "b", "="], causal_pattern()[0])


def test_attention_patterns_rejects_scores_instead_of_probabilities():
    with pytest.raises(ValueError, match="probabilities"):
        plotting.attention_patterns(["a", "b", "="], causal_pattern() * 5)


def test_book_assets_are_the_installed_bundles():
    assets = plotting.book_assets()
    assert set(assets) == {"plotly.min.js", "circuitsvis.js"}
    for source, marker in assets.values():
        assert source.is_file() and source.stat().st_size > 1_000_000 and marker
