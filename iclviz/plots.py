"""Figure builders for the app: plotly figures from the library's DataFrames (no streamlit here)."""

from __future__ import annotations

import html

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

LABEL_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def label_color_map(label_words) -> dict[str, str]:
    return {w: LABEL_COLORS[i % len(LABEL_COLORS)] for i, w in enumerate(label_words)}


def probability_bars(probs: pd.DataFrame, label_words) -> go.Figure:
    """probs: columns condition, label, probability."""
    fig = px.bar(probs, x="label", y="probability", color="label", facet_col="condition", text_auto=".2f",
                 color_discrete_map=label_color_map(label_words), range_y=[0, 1],
                 category_orders={"label": list(label_words)})
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), showlegend=False)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return fig


def label_attention_bars(table: pd.DataFrame, label_words) -> go.Figure:
    """Attention from T to each label position, one row per head, before/after side by side."""
    n_rows = max(1, table["head"].nunique())
    fig = px.bar(table, x="slot", y="attention", color="label", facet_row="head", facet_col="condition",
                 hover_data={"position": True, "demo": True, "label": True, "attention": ":.4f", "slot": False},
                 color_discrete_map=label_color_map(label_words),
                 category_orders={"label": list(label_words), "slot": list(dict.fromkeys(table["slot"]))})
    fig.update_layout(height=120 + 110 * n_rows, margin=dict(l=10, r=10, t=30, b=10), legend_title_text="label")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_xaxes(title_text="", tickangle=-45)
    fig.update_yaxes(title_text="")
    return fig


def label_sum_bars(sums: pd.DataFrame, label_words) -> go.Figure:
    fig = px.bar(sums, x="head", y="attention", color="label", barmode="group", facet_col="condition",
                 color_discrete_map=label_color_map(label_words), category_orders={"label": list(label_words)},
                 hover_data={"attention": ":.4f"})
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10))
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return fig


def importance_heatmap(matrix: pd.DataFrame, title: str = "", chosen=()) -> go.Figure:
    """layer x head matrix (rows layers, columns heads); chosen heads outlined."""
    z = matrix.to_numpy(dtype=float)
    fig = go.Figure(go.Heatmap(
        z=z, x=[int(c) for c in matrix.columns], y=[int(i) for i in matrix.index], colorscale="RdBu_r", zmid=0,
        hovertemplate="layer %{y}, head %{x}<br>importance %{z:.4f}<extra></extra>"))
    # Invisible markers on every cell, so that clicking (or box-selecting) cells selects heads.
    rows, cols = matrix.shape
    fig.add_trace(go.Scatter(
        x=[int(c) for _ in range(rows) for c in matrix.columns], y=[int(i) for i in matrix.index for _ in range(cols)],
        mode="markers", marker=dict(size=14, opacity=0.01, color="black"), showlegend=False, hoverinfo="skip",
        name="cells"))
    for layer, head in chosen:
        fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line=dict(color="black", width=2))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", height=520,
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def intervention_bars(table: pd.DataFrame) -> go.Figure:
    """table: columns condition (or plan), accuracy, optional ci_low/ci_high."""
    cond = "condition" if "condition" in table.columns else "plan"
    df = table.copy()
    err = None
    if {"ci_low", "ci_high"} <= set(df.columns):
        df["err_hi"] = df["ci_high"] - df["accuracy"]
        df["err_lo"] = df["accuracy"] - df["ci_low"]
        err = ("err_hi", "err_lo")
    fig = px.bar(df, x=cond, y="accuracy", error_y=err[0] if err else None, error_y_minus=err[1] if err else None,
                 range_y=[0, 1], text_auto=".2f")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10))
    return fig


def label_vector_bars(table: pd.DataFrame, label_words, value: str = "weighted_logit_minus") -> go.Figure:
    df = table.copy()
    df["slot"] = [f"#{d} {w} @{p}" for d, w, p in zip(df["demo"], df["label"], df["position"])]
    fig = px.bar(df, x="slot", y=value, color="label", facet_row="head_name",
                 hover_data={"position": True, "attention": ":.4f", "logit_minus": ":.3f", "top_tokens": True},
                 color_discrete_map=label_color_map(label_words), category_orders={"label": list(label_words)})
    fig.update_layout(height=120 + 110 * max(1, df["head_name"].nunique()), margin=dict(l=10, r=10, t=30, b=10))
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_xaxes(title_text="", tickangle=-45)
    return fig


def swap_bars(table: pd.DataFrame, value_cols: list[str], id_col: str = "head") -> go.Figure:
    """Grouped bars of the chosen columns per head (e.g. attention on each label, before/after swap)."""
    long = table.melt(id_vars=[id_col], value_vars=value_cols, var_name="quantity", value_name="value")
    fig = px.bar(long, x=id_col, y="value", color="quantity", barmode="group")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10))
    return fig


def score_similarity_scatter(table: pd.DataFrame, label_words) -> go.Figure:
    hover = [c for c in ("position", "demo", "label", "score", "similarity") if c in table.columns]
    fig = px.scatter(table, x="similarity", y="score", color="label", facet_col="head" if "head" in table else None,
                     facet_col_wrap=3, hover_data=hover, color_discrete_map=label_color_map(label_words))
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=10))
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return fig


def bias_bars(table: pd.DataFrame, x: str, y: str, color: str = "condition") -> go.Figure:
    fig = px.bar(table, x=x, y=y, color=color, barmode="group", text_auto=".2f")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10))
    return fig


def tokens_html(tokens: pd.DataFrame, label_words) -> str:
    """The prompt's tokens as HTML spans: label positions coloured by label, T marked, query underlined."""
    colors = label_color_map(label_words)
    out = []
    for r in tokens.itertuples():
        text = html.escape(r.token).replace("\n", "↵<br>")
        title = f"position {r.position}, {r.role}" + (f", label {r.label}" if r.label else "")
        if r.role == "label":
            style = f"background:{colors.get(r.label, '#999')};color:white;border-radius:3px;padding:0 2px"
            text = f"{text}<sub>{r.position}</sub>"
        elif r.role == "T":
            style = "background:#222;color:#ffd400;border-radius:3px;padding:0 2px;font-weight:bold"
            text = f"{text}<sub>T={r.position}</sub>"
        elif r.role == "query":
            style = "text-decoration:underline"
        else:
            style = ""
        out.append(f'<span title="{html.escape(title)}" style="{style}">{text}</span>')
    return ('<div style="font-family:monospace;font-size:0.85em;line-height:1.7;white-space:pre-wrap">'
            + "".join(out) + "</div>")


def figure_html(fig: go.Figure) -> str:
    """A standalone HTML file of a figure (plotly.js from its CDN)."""
    return fig.to_html(include_plotlyjs="cdn", full_html=True)


def effect_heatmap(matrix: pd.DataFrame, title: str, quantity: str, chosen=()) -> go.Figure:
    """layer x head matrix of a causal effect (rows: only the scanned layers); chosen heads outlined."""
    m = matrix.dropna(how="all")
    z = m.to_numpy(dtype=float)
    fig = go.Figure(go.Heatmap(
        z=z, x=[int(c) for c in m.columns], y=[int(i) for i in m.index], colorscale="RdBu_r", zmid=0,
        colorbar=dict(title=dict(text=quantity, side="right")),
        hovertemplate="layer %{y}, head %{x}<br>" + html.escape(quantity) + " %{z:.3f}<extra></extra>"))
    rows, cols = m.shape
    fig.add_trace(go.Scatter(
        x=[int(c) for _ in range(rows) for c in m.columns], y=[int(i) for i in m.index for _ in range(cols)],
        mode="markers", marker=dict(size=18, opacity=0.01, color="black"), showlegend=False, hoverinfo="skip",
        name="cells"))
    for layer, head in chosen:
        if layer in set(m.index):
            fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                          line=dict(color="black", width=2))
    fig.update_layout(title=html.escape(title), xaxis_title="head", yaxis_title="layer",
                      height=max(260, 34 * rows + 120), margin=dict(l=10, r=10, t=40, b=10))
    fig.update_yaxes(dtick=1)
    fig.update_xaxes(dtick=1)
    return fig


def null_histogram(null_values, observed: float, quantity: str = "gold-margin drop (logits)") -> go.Figure:
    """The random-head null distribution with the chosen heads' value marked."""
    fig = go.Figure(go.Histogram(x=list(null_values), nbinsx=30, marker_color="#bbbbbb", name="random head sets"))
    fig.add_vline(x=observed, line=dict(color="black", width=3),
                  annotation_text="chosen heads", annotation_position="top")
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), xaxis_title=quantity,
                      yaxis_title="random head sets", showlegend=False)
    return fig
