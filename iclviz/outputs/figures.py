"""Figures for a paper or a slide: offline HTML, PNG/SVG from the browser, a linked altair heatmap.

- ``standalone_html(fig)`` / ``write_html(fig, path)``: a standalone HTML file that embeds
  plotly.js (no CDN: it opens offline), with two extra modebar buttons, PNG and SVG.
- ``plotly_config(filename, fmt)``: the ``config`` for ``st.plotly_chart``: the modebar's camera
  button downloads the figure in ``fmt`` (``"png"`` or ``"svg"``), drawn by plotly.js in the
  browser (no network, no kaleido). plotly.js has one image button whose format is set by
  ``toImageButtonOptions``; a second, custom button needs a JavaScript function, which a JSON
  config (what Streamlit passes on) cannot carry. So the app offers both formats by giving the
  user the choice of format (``image_configs`` builds both configs), and the HTML download
  has both buttons.
- ``head_heatmap(matrix)``: an altair layer x head heatmap with a point selection ``head``
  (click a head; ``selected_head(event)`` / ``selected_heads(event)`` read it from
  ``st.altair_chart(..., on_select=...)``).
- ``waterfall_figure(contributions)``: the contribution waterfall of ``contributions.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

IMAGE_FORMATS = ("png", "svg")
HEAD_PARAM = "head"

_BUTTONS_JS = """
(function () {
  var gd = document.getElementById('{plot_id}');
  if (!gd || !window.Plotly) { return; }
  function button(fmt) {
    return {name: 'download ' + fmt.toUpperCase(), title: 'Download as ' + fmt.toUpperCase(),
            icon: Plotly.Icons.camera,
            click: function (g) { Plotly.downloadImage(g, {format: fmt, filename: FILENAME, scale: SCALE}); }};
  }
  Plotly.react(gd, gd.data, gd.layout, Object.assign({}, gd._context,
    {modeBarButtonsToAdd: [button('png'), button('svg')], displaylogo: false}));
})();
"""


def plotly_config(filename: str = "iclviz_figure", fmt: str = "png", scale: int = 2) -> dict:
    """``st.plotly_chart(fig, config=plotly_config(...))``: the camera button saves ``fmt`` in the browser."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}")
    return {"displaylogo": False, "modeBarButtonsToAdd": ["toImage"],
            "toImageButtonOptions": {"format": fmt, "filename": _safe_name(filename), "scale": int(scale)}}


def image_configs(filename: str = "iclviz_figure", scale: int = 2) -> dict[str, dict]:
    """One ``plotly_config`` per image format (``{"png": ..., "svg": ...}``)."""
    return {fmt: plotly_config(filename, fmt, scale) for fmt in IMAGE_FORMATS}


def _safe_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))[:80]
    return keep or "iclviz_figure"


def standalone_html(fig: go.Figure, filename: str = "iclviz_figure", scale: int = 2) -> str:
    """A standalone HTML page of ``fig`` with plotly.js embedded (works offline) and PNG/SVG buttons."""
    script = (_BUTTONS_JS.replace("FILENAME", json.dumps(_safe_name(filename)))
              .replace("SCALE", str(int(scale))))
    return fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False},
                       post_script=script)


def write_html(fig: go.Figure, path, filename: str | None = None) -> Path:
    """Write ``standalone_html(fig)`` to ``path``."""
    from ..validation import atomic_write

    path = Path(path)
    atomic_write(path, standalone_html(fig, filename or path.stem))
    return path


# ---------------------------------------------------------------- altair: a layer x head heatmap

def head_heatmap(matrix: pd.DataFrame, value: str = "importance", title: str = "", chosen=(),
                 param_name: str = HEAD_PARAM, width: int = 520):
    """An altair heatmap of a layer x head matrix (rows layers, columns heads, as ``HeadScan.matrix``),
    with a point selection ``param_name`` on (layer, head): click a head to select it."""
    import altair as alt

    long = matrix.reset_index().melt(id_vars=matrix.index.name or "index", var_name="head", value_name=value)
    long = long.rename(columns={matrix.index.name or "index": "layer"}).dropna(subset=[value])
    long["layer"] = long["layer"].astype(int)
    long["head"] = long["head"].astype(int)
    chosen = {(int(a), int(b)) for a, b in chosen}
    long["chosen"] = [(a, b) in chosen for a, b in zip(long["layer"], long["head"])]
    long["name"] = [f"L{a}H{b}" for a, b in zip(long["layer"], long["head"])]
    sel = alt.selection_point(name=param_name, fields=["layer", "head"], on="click", clear="dblclick")
    m = float(long[value].abs().max()) if len(long) else 1.0
    base = alt.Chart(long, title=title or alt.Undefined).encode(
        x=alt.X("head:O", title="head"), y=alt.Y("layer:O", title="layer", sort="descending"))
    rect = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme="redblue", domain=[m, -m] if m > 0 else alt.Undefined),
                        title=value.replace("_", " ")),
        opacity=alt.condition(sel, alt.value(1.0), alt.value(0.35)),
        stroke=alt.condition("datum.chosen", alt.value("black"), alt.value(None)),
        strokeWidth=alt.condition("datum.chosen", alt.value(2), alt.value(0)),
        tooltip=[alt.Tooltip("name:N", title="head"), alt.Tooltip(f"{value}:Q", format=".4f")],
    ).add_params(sel)
    return rect.properties(width=width)


def context_prior_scatter(parts: pd.DataFrame, label_words, chosen=(), param_name: str = HEAD_PARAM,
                          width: int = 420):
    """Each scanned head as a point: its in-context support (x) against its prior (y; two labels: signed,
    up = toward the first label), from ``context_heads.head_parts``; click a point to select the head."""
    import altair as alt

    df = parts.copy()
    signed = "prior_first" in df.columns and df["prior_first"].notna().all()
    y = "prior_first" if signed else "prior_effect"
    y_title = (f"prior: constant vote (up = toward {label_words[0]}, down = toward {label_words[1]})" if signed
               else "prior: constant vote for one label")
    chosen = {(int(a), int(b)) for a, b in chosen}
    df["chosen"] = [(int(a), int(b)) in chosen for a, b in zip(df["layer"], df["head"])]
    df["kind"] = ["chosen in-context head" if c else "other head" for c in df["chosen"]]
    sel = alt.selection_point(name=param_name, fields=["layer", "head"], on="click", clear="dblclick")
    pts = alt.Chart(df, title="In-context part against prior, per head").mark_circle(size=70).encode(
        x=alt.X("context_effect:Q", title="in-context part: helps whichever label is gold (logits)"),
        y=alt.Y(f"{y}:Q", title=y_title),
        color=alt.Color("kind:N", scale=alt.Scale(domain=["chosen in-context head", "other head"],
                                                  range=["#d62728", "#7f7f7f"]), title=None,
                        legend=alt.Legend(orient="bottom")),
        opacity=alt.condition(sel, alt.value(0.95), alt.value(0.35)),
        tooltip=[alt.Tooltip("name:N", title="head"), alt.Tooltip("context_effect:Q", format=".3f"),
                 alt.Tooltip(f"{y}:Q", format=".3f"), alt.Tooltip("prior_toward:N", title="votes for")],
    ).add_params(sel)
    zero = alt.Chart(pd.DataFrame({"z": [0.0]})).mark_rule(color="#999999", strokeDash=[3, 3])
    return (pts + zero.encode(y="z:Q") + zero.encode(x="z:Q")).properties(width=width, height=320)


def selected_head(event, param_name: str = HEAD_PARAM) -> tuple[int, int] | None:
    """The (layer, head) an ``st.altair_chart(..., on_select="rerun")`` event reports first, or None."""
    heads = selected_heads(event, param_name)
    return heads[0] if heads else None


def selected_heads(event, param_name: str = HEAD_PARAM) -> list[tuple[int, int]]:
    """Every (layer, head) an ``st.altair_chart(..., on_select="rerun")`` event reports (shift-click adds)."""
    sel = getattr(event, "selection", None) if event is not None else None
    if sel is None and isinstance(event, dict):
        sel = event.get("selection")
    points = (sel.get(param_name) if isinstance(sel, dict) else getattr(sel, param_name, None)) or []
    if isinstance(points, dict):
        points = [points]
    out = []
    for pt in points:
        if isinstance(pt, dict) and "layer" in pt and "head" in pt:
            out.append((int(pt["layer"]), int(pt["head"])))
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------- the contribution waterfall

def waterfall_figure(contributions, title: str | None = None) -> go.Figure:
    """Baseline margin -> each demonstration's contribution -> the prediction's margin (``Contributions``)."""
    w = contributions.waterfall()
    a, b = contributions.pair
    fig = go.Figure(go.Waterfall(
        name="contribution (through the heads)", x=w["step"], y=w["value"], measure=w["measure"],
        text=[f"{v:+.3f}" for v in w["value"]],
        textposition="outside", connector=dict(line=dict(color="#999")),
        increasing=dict(marker=dict(color="#1f77b4")), decreasing=dict(marker=dict(color="#d62728")),
        totals=dict(marker=dict(color="#555"))))
    # The knockout effect is after − before; the marker shows what the knockout removed (−effect), on the bar's
    # scale: it sits at the bar's top where the measured and the direct reading agree.
    effects = contributions.table["knockout_effect"].tolist()
    fig.add_trace(go.Scatter(x=w["step"].iloc[1:-1], y=[w["cumulative"].iloc[i] - w["value"].iloc[i] - e
                                                         for i, e in enumerate(effects, start=1)],
                             mode="markers", marker=dict(symbol="diamond", size=10, color="black"),
                             name="removed by a knockout (−effect)",
                             hovertemplate="knockout effect (after − before) %{customdata:+.3f}<extra></extra>",
                             customdata=effects))
    fig.update_layout(title=title or f"Each demonstration's contribution to logit({a}) − logit({b})", height=360,
                      margin=dict(l=10, r=10, t=40, b=10), showlegend=True,
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    fig.update_yaxes(title_text=f"margin logit({a}) − logit({b})")
    fig.add_hline(y=0, line_dash="dot", line_color="#888")
    return fig
