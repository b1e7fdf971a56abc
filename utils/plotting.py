"""The course's house style for figures, and rendering that works offline in Jupyter, Colab and the book.

This is the one module that touches plotly's renderers and circuitsvis. Call `setup()` once at the top
of a notebook; then `line`, `heatmap` and `style` give every figure the same look with titled axes,
and `attention_patterns` draws circuitsvis's attention widget.

Rendering: the book loads plotly.js and the circuitsvis bundle once per page from `_static` (see
book/_ext/course_book.py, which calls `book_assets()`), so figures carry only their data. While the
book executes notebooks the environment variable `COURSE_BOOK_BUILD=1` is set; elsewhere each
circuitsvis widget carries its own copy of the bundle, so it works offline in Jupyter and Colab too.
"""
from __future__ import annotations

import html
import json
import os
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from IPython.display import HTML
from plotly.io.base_renderers import MimetypeRenderer

BOOK_BUILD_ENV = "COURSE_BOOK_BUILD"
TEMPLATE = "course"
PAGE_RENDERER = "course_page"
JUPYTER_RENDERERS = f"plotly_mimetype+{PAGE_RENDERER}"
WIDGET_CLASS = "course-circuitsvis"

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"  # blue negative, white zero, red positive
PHASE_COLORS = (COLORS[0], COLORS[4], COLORS[2])  # memorisation, circuit formation, cleanup: blue, orange, green


def _course_template() -> go.layout.Template:
    """A small template (it is embedded in every figure): white background, light grid, our colours."""
    axis = dict(showgrid=True, gridcolor="#e5e5e5", zeroline=False, linecolor="#444", ticks="outside",
                automargin=True, exponentformat="power")
    return go.layout.Template(
        layout=dict(
            font=dict(family="Helvetica, Arial, sans-serif", size=13, color="#222"),
            colorway=COLORS,
            paper_bgcolor="white",
            plot_bgcolor="white",
            title=dict(x=0.02, xanchor="left"),
            margin=dict(l=70, r=30, t=60, b=60),
            hovermode="closest",
            legend=dict(bgcolor="rgba(255,255,255,0.8)"),
            xaxis=axis,
            yaxis=axis,
            colorscale=dict(sequential=SEQUENTIAL, diverging=DIVERGING),
        )
    )


class PageHtmlRenderer(MimetypeRenderer):
    """text/html: the figure's div and a call to the page's global `Plotly`; plotly.js is not inlined."""

    def to_mimebundle(self, fig_dict: dict) -> dict[str, str]:
        div = pio.to_html(fig_dict, include_plotlyjs=False, include_mathjax=False, full_html=False,
                          default_width="100%", default_height=450, validate=False,
                          config={"responsive": True, "displaylogo": False})
        return {"text/html": div}


pio.templates[TEMPLATE] = _course_template()
pio.renderers[PAGE_RENDERER] = PageHtmlRenderer()


def in_colab() -> bool:
    """True inside a Google Colab kernel."""
    return "google.colab" in sys.modules


def in_book_build() -> bool:
    """True while the book's build executes this notebook (the book's extension sets the variable)."""
    return os.environ.get(BOOK_BUILD_ENV) == "1"


def setup() -> None:
    """Use the house style for every plotly figure, and a renderer that works here.

    Colab gets its own renderer. Jupyter gets plotly's mimetype (JupyterLab and VS Code draw it) and
    a text/html div without plotly.js; the book gets the div alone and draws it with its one copy.
    """
    pio.templates.default = TEMPLATE
    if in_colab():
        pio.renderers.default = "colab"
    else:
        pio.renderers.default = PAGE_RENDERER if in_book_build() else JUPYTER_RENDERERS


def book_assets() -> dict[str, tuple[Path, str]]:
    """Files the book ships once in `_static`: name -> (installed source file, marker of pages that need it)."""
    import circuitsvis
    import plotly

    return {
        "plotly.min.js": (Path(plotly.__file__).parent / "package_data" / "plotly.min.js", "plotly-graph-div"),
        "circuitsvis.js": (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js", WIDGET_CLASS),
    }


def _numpy(values, name: str) -> np.ndarray:
    """A float numpy copy of a list, array or tensor (detached, on the CPU)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numbers (a list, numpy array or torch tensor); "
                        f"got {type(values).__name__}: {err}") from None


def _labels(values) -> list | None:
    """Axis labels (numbers or strings) as a plain list."""
    if values is None:
        return None
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    return np.asarray(values).tolist()


def _require_title(value: str | None, what: str) -> str:
    """The title itself, or a ValueError asking for one."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} is missing: give it a title that names the quantity and its unit, "
                         f"e.g. 'training step' or 'test loss (nats)'.")
    return value


def style(fig: go.Figure, *, title: str, xaxis_title: str, yaxis_title: str,
          log_x: bool = False, log_y: bool = False) -> go.Figure:
    """Apply the house style, a title and axis titles (with units) to `fig`, optionally log axes."""
    fig.update_layout(
        template=TEMPLATE,
        title_text=_require_title(title, "The figure's title"),
        xaxis_title_text=_require_title(xaxis_title, "The x axis title"),
        yaxis_title_text=_require_title(yaxis_title, "The y axis title"),
    )
    if log_x:
        fig.update_xaxes(type="log", minorloglabels="none")
    if log_y:
        fig.update_yaxes(type="log", minorloglabels="none")
    return fig


def line(ys, x=None, *, title: str, xaxis_title: str, yaxis_title: str,
         log_x: bool = False, log_y: bool = False) -> go.Figure:
    """Line plot of one series `ys[n]`, or of several: a mapping {legend name: ys[n]}, against `x[n]`."""
    series = dict(ys) if isinstance(ys, Mapping) else {None: ys}
    if not series:
        raise ValueError("line() got no series: pass an array, or a dict {name: array} with at least one entry.")
    fig = go.Figure()
    for name, values in series.items():
        y = _numpy(values, f"series {name!r}" if name else "ys")
        if y.ndim != 1:
            raise ValueError(f"each series must be 1-D; {name or 'ys'} has shape {y.shape}. "
                             f"Pass several lines as a dict {{name: values}}.")
        xs = np.arange(len(y)) if x is None else _numpy(x, "x")
        if xs.shape != y.shape:
            raise ValueError(f"x has {xs.shape[0] if xs.ndim else 0} points but {name or 'ys'} has {len(y)}: "
                             f"they must be the same length.")
        _check_positive(xs, log_x, "x")
        _check_positive(y, log_y, f"{name or 'ys'}")
        # float32 is ample for a plot and halves the data the page carries
        fig.add_trace(go.Scatter(x=xs.astype(np.float32), y=y.astype(np.float32), mode="lines", name=name,
                                 showlegend=name is not None))
    return style(fig, title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title, log_x=log_x, log_y=log_y)


def _check_positive(values: np.ndarray, log: bool, name: str) -> None:
    """Raise if a log axis would have to drop zero or negative values."""
    finite = values[np.isfinite(values)]
    if log and finite.size and finite.min() <= 0:
        raise ValueError(f"a log axis needs positive values, but {name} has minimum {finite.min():g}. "
                         f"Plot it on a linear axis, or plot a positive quantity (e.g. the loss, not log-loss).")


def heatmap(z, *, title: str, xaxis_title: str, yaxis_title: str, x=None, y=None,
            colorbar_title: str | None = None) -> go.Figure:
    """Heatmap of `z[rows, cols]` (rows up the y axis); diverging colours centred on 0 if z has both signs."""
    values = _numpy(z, "z")
    if values.ndim != 2:
        raise ValueError(f"heatmap() needs a 2-D array z[rows, cols]; got shape {values.shape}.")
    finite = values[np.isfinite(values)]
    diverging = finite.size > 0 and finite.min() < 0 < finite.max()
    trace = go.Heatmap(
        z=values.astype(np.float32), x=_labels(x), y=_labels(y),
        colorscale=DIVERGING if diverging else SEQUENTIAL, zmid=0 if diverging else None,
        colorbar=dict(title=dict(text=colorbar_title)) if colorbar_title else None,
    )
    return style(go.Figure(trace), title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title)


def _bundle_script() -> str:
    """circuitsvis's browser bundle (defines the global `CircuitsVis`), safe to inline in a <script>."""
    source = book_assets()["circuitsvis.js"][0].read_text(encoding="utf-8")
    source = re.sub(r"^//# sourceMappingURL=.*$", "", source, flags=re.MULTILINE)  # the map is not shipped inline
    return source.replace("</script", "<\\/script")


def attention_patterns(tokens: Sequence[str], pattern, head_names: Sequence[str] | None = None) -> HTML:
    """circuitsvis attention patterns, one small chart per head of `pattern[head, query, key]`; works offline.

    Rows are queries (the attending token), columns keys (the token attended to); hover for values.
    """
    tokens = [str(token) for token in tokens]
    probs = _numpy(pattern, "pattern")
    n = len(tokens)
    if probs.ndim != 3 or probs.shape[1:] != (n, n):
        raise ValueError(f"pattern must have shape [head, query, key] = [n_heads, {n}, {n}] for {n} tokens; "
                         f"got {probs.shape}. For one head, add a leading axis: pattern[None].")
    if not np.isfinite(probs).all() or probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
        raise ValueError("pattern must hold attention probabilities in [0, 1] (the softmax output, e.g. the "
                         "hook 'blocks.0.attn.hook_pattern'), not scores; got values outside [0, 1] or NaN.")
    names = list(head_names) if head_names is not None else [f"Head {h}" for h in range(probs.shape[0])]
    if len(names) != probs.shape[0]:
        raise ValueError(f"{len(names)} head names for {probs.shape[0]} heads: give one name per head.")
    div_id = f"{WIDGET_CLASS}-{uuid.uuid4().hex[:12]}"
    # The chart's grid row sticks out 15 px on each side of its box: the padding keeps it inside.
    charts = "".join(
        f'<figure style="margin: 0;"><figcaption style="font-weight: 600; text-align: center;">'
        f'{html.escape(name)}</figcaption><div id="{div_id}-{h}" style="padding: 0 15px;"></div></figure>'
        for h, name in enumerate(names))
    props = json.dumps({"id": div_id, "tokens": tokens, "heads": np.round(probs, 4).tolist()})
    props = props.replace("</", "<\\/")  # safe inside <script>
    # Draw once the page is laid out, so that each chart takes the width of its box.
    draw = f"""<script>(function () {{
  var w = {props};
  var draw = function () {{ w.heads.forEach(function (attention, h) {{
    CircuitsVis.render(w.id + "-" + h, CircuitsVis.AttentionPattern,
                       {{tokens: w.tokens, attention: attention, maskUpperTri: true, showAxisLabels: true}});
  }}); }};
  if (document.readyState === "complete") draw(); else window.addEventListener("load", draw);
}})();</script>"""
    bundle = "" if in_book_build() else f"<script>{_bundle_script()}</script>\n"
    box = (f'<div id="{div_id}" class="{WIDGET_CLASS}" style="display: grid; gap: 12px 8px; margin: 15px 0; '
           f'grid-template-columns: repeat(auto-fill, minmax(160px, 1fr));">')
    return HTML(f"{box}{charts}</div>\n{bundle}{draw}")


def shade_phases(fig: go.Figure, phases, label: bool = True, **subplot) -> go.Figure:
    """Shade the three phases (a utils.progress.Phases) on a figure whose x axis is the training step (linear).

    label: name each phase just above the plot, centred on its band (not for subplots);
    subplot: e.g. row=1, col=2 to shade one panel of a make_subplots grid.
    """
    for i, ((name, start, end), color) in enumerate(zip(phases.spans(), PHASE_COLORS)):
        fig.add_vrect(x0=start, x1=end, fillcolor=color, opacity=0.12, line_width=0, layer="below", **subplot)
        if label and not subplot:  # every other label one line higher: a narrow phase's name cannot overlap
            fig.add_annotation(x=(start + end) / 2, y=1, xref="x", yref="paper", yanchor="bottom", text=name,
                               yshift=14 * (i % 2), showarrow=False, font=dict(size=11, color=color))
    return fig
