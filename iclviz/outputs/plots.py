"""Figure builders for the app: plotly figures from the library's DataFrames (no streamlit here)."""

from __future__ import annotations

import html

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

LABEL_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


CONDITION_COLORS = ["#7f7f7f", "#3b3b3b", "#c49c00", "#8c6d31", "#b8b8b8", "#5d4c82"]


def condition_color_map(conditions) -> dict[str, str]:
    """Colours for conditions (no fix, a fix, a control): greys and ochres, never a label's colour."""
    return {c: CONDITION_COLORS[i % len(CONDITION_COLORS)] for i, c in enumerate(dict.fromkeys(conditions))}


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


def label_attention_bars(table: pd.DataFrame, label_words, ablated=(), title: str | None = None) -> go.Figure:
    """Attention from T to each label position, one row per head, before/after side by side.

    ``ablated``: head names whose output the "after" run removed (their attention is unchanged by design:
    their rows say so).
    """
    n_rows = max(1, table["head"].nunique())
    df = table.copy()
    ablated = set(ablated)
    if ablated and "condition" in df:
        df["head"] = [f"{h}<br>(after: output removed,<br>attention unchanged)" if h in ablated else h
                      for h in df["head"]]
    fig = px.bar(df, x="slot", y="attention", color="label", facet_row="head", facet_col="condition",
                 hover_data={"position": True, "demo": True, "label": True, "attention": ":.4f", "slot": False},
                 color_discrete_map=label_color_map(label_words),
                 category_orders={"label": list(label_words), "slot": list(dict.fromkeys(df["slot"]))},
                 facet_row_spacing=0.04)
    conds = list(dict.fromkeys(df["condition"])) if "condition" in df else []
    fig.update_layout(height=160 + 110 * n_rows, margin=dict(l=70, r=170, t=60, b=10), legend_title_text="label word",
                      title=title or ("Attention from T to each label position, per in-context head"
                                      + (f" ({' vs '.join(conds)} the intervention)" if len(conds) > 1 else "")))
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1], textangle=0, font=dict(size=12),
                                               xanchor="left") if a.text.startswith("head=") else
                            a.update(text=a.text.split("=")[-1] + " the intervention" if len(conds) > 1
                                     else a.text.split("=")[-1]))
    fig.update_xaxes(title_text="", tickangle=-45)
    fig.update_yaxes(title_text="")
    fig.add_annotation(text="attention from T", textangle=-90, x=-0.06, y=0.5, xref="paper", yref="paper",
                       showarrow=False, font=dict(size=13))
    fig.add_annotation(text="label position (demonstration #, label word @ token position)", x=0.5, y=-0.02,
                       xref="paper", yref="paper", yanchor="top", showarrow=False, yshift=-60, font=dict(size=13))
    fig.update_layout(margin=dict(b=110))
    return fig


def label_attention_compact(table: pd.DataFrame, label_words, ablated=()) -> go.Figure:
    """A compact view beside the prediction: one row per head, one column per label position,
    a dot whose size is the attention from T and whose colour is the position's label; "after" as rings.
    Ablated heads are starred (their output is removed; their attention is unchanged by design)."""
    colors = label_color_map(label_words)
    fig = go.Figure()
    ablated = set(ablated)
    df = table.copy()
    df["row"] = [f"{h} *" if h in ablated else h for h in df["head"]]
    slots = list(dict.fromkeys(df["slot"]))
    rows = list(dict.fromkeys(df["row"]))
    conds = list(dict.fromkeys(df["condition"])) if "condition" in df else [""]
    vmax = max(float(df["attention"].max()), 1e-6)
    for cond in conds:
        part = df[df["condition"] == cond] if "condition" in df else df
        after = cond == "after"
        for w in label_words:
            d = part[part["label"] == w]
            if d.empty:
                continue
            fig.add_trace(go.Scatter(
                x=d["slot"], y=d["row"], mode="markers",
                name=f"{w} positions" + (", after" if after else (", before" if len(conds) > 1 else "")),
                marker=dict(size=[6 + 30 * a / vmax for a in d["attention"]], color="rgba(0,0,0,0)" if after
                            else colors.get(w, "#999"), line=dict(color=colors.get(w, "#999"), width=2 if after else 0),
                            sizemode="diameter"),
                customdata=d[["attention", "position"]].to_numpy(),
                hovertemplate="%{y} → %{x}<br>attention from T %{customdata[0]:.3f}" + (" (after)" if after else "")
                              + "<extra></extra>"))
    # Every head gets its row and its tick (a fixed range and explicit ticks: plotly thins category ticks when a
    # narrow column leaves the plot little height), and the legend sits under the axis, away from the toolbar.
    plot_h = 44 * max(len(rows), 2)
    below = 95  # the angled x tick labels and the axis title, in pixels
    fig.update_layout(height=plot_h + 20 + below + 45, margin=dict(l=10, r=10, t=20, b=below + 45),
                      legend=dict(orientation="h", y=-below / plot_h, yanchor="top", x=0, title_text="",
                                  font=dict(size=11)),
                      plot_bgcolor="white")
    fig.update_xaxes(title_text="label position (#demonstration label @token)", categoryorder="array",
                     categoryarray=slots, showgrid=True, gridcolor="#eee", tickangle=-30, title_font=dict(size=12))
    fig.update_yaxes(title_text="head" + (" (* ablated)" if ablated else ""), categoryorder="array",
                     categoryarray=rows[::-1], tickmode="array", tickvals=rows[::-1], ticktext=rows[::-1],
                     range=[-0.5, len(rows) - 0.5], showgrid=True, gridcolor="#eee", title_font=dict(size=12))
    return fig


def top_n_figure(curve: pd.DataFrame, label_words) -> go.Figure:
    """Margin after intervening on the top n heads (n = 0 is no intervention); the prediction flips below 0."""
    w = list(label_words)
    colors = label_color_map(w)
    fig = go.Figure(go.Scatter(x=curve["n"], y=curve["margin"], mode="lines+markers",
                               marker=dict(size=10, color=[colors.get(p, "#999") for p in curve["predicted"]]),
                               line=dict(color="#555"), customdata=curve[["heads", "predicted"]].to_numpy(),
                               hovertemplate="top %{x}: %{customdata[0]}<br>margin %{y:.2f}, predicts "
                                             "%{customdata[1]}<extra></extra>", showlegend=False))
    fig.add_hline(y=0, line_dash="dot", line_color="#888", annotation_text=f"above: {w[0]}, below: {w[1]}",
                  annotation_position="bottom right")
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10),
                      title=dict(text="Where does the prediction give way?", font=dict(size=13)))
    fig.update_xaxes(title_text="intervened on the top n in-context heads", dtick=1)
    fig.update_yaxes(title_text=f"margin logit({w[0]}) − logit({w[1]})")
    return fig


def label_sum_bars(sums: pd.DataFrame, label_words) -> go.Figure:
    fig = px.bar(sums, x="head", y="attention", color="label", barmode="group", facet_col="condition",
                 color_discrete_map=label_color_map(label_words), category_orders={"label": list(label_words)},
                 hover_data={"attention": ":.4f"})
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10))
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return fig


def importance_heatmap(matrix: pd.DataFrame, title: str = "", chosen=(),
                       quantity: str = "importance (log-prob increase of the label word, nats)") -> go.Figure:
    """layer x head matrix (rows layers, columns heads); chosen heads outlined; only scanned layers drawn.

    Every cell carries a clickable marker (the heatmap itself does not report clicks): clicking a cell,
    shift-clicking or box-selecting several, reports them as points of trace 1 with x = head, y = layer.
    """
    matrix = matrix.dropna(how="all")
    if matrix.empty:
        matrix = pd.DataFrame([[float("nan")]], index=[0], columns=[0])
    z = matrix.to_numpy(dtype=float)
    xs, ys = [int(c) for c in matrix.columns], [int(i) for i in matrix.index]
    rows, cols = matrix.shape
    fig = go.Figure(go.Heatmap(
        z=z, x=xs, y=ys, colorscale="RdBu_r", zmid=0, hoverinfo="skip",
        colorbar=dict(title=dict(text=quantity.replace(" (", "<br>(").replace(", ", ",<br>"), side="top"))))
    row_px = 30
    height = max(300, row_px * rows + 130)
    cell_px = max(8, min(row_px, int(700 / max(cols, 1))) - 4)
    fig.add_trace(go.Scatter(
        x=[x for _ in ys for x in xs], y=[y for y in ys for _ in xs],
        customdata=[[v] for v in z.reshape(-1)],
        mode="markers", marker=dict(size=cell_px, symbol="square", opacity=0.02, color="black"), showlegend=False,
        hovertemplate="layer %{y}, head %{x}<br>" + quantity.split(" (")[0] + " %{customdata[0]:.4f}"
                      "<br>click to choose<extra></extra>",
        name="cells", selected=dict(marker=dict(opacity=0.35)), unselected=dict(marker=dict(opacity=0.02))))
    for layer, head in chosen:
        if layer in ys:
            fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                          line=dict(color="black", width=2))
    # No dragmode or clickmode here: Streamlit turns clicks into selections only while the drag mode is not
    # "select" (box select stays in the toolbar).
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", height=height, hoverdistance=-1,
                      margin=dict(l=10, r=10, t=40, b=10))
    fig.update_xaxes(dtick=1, range=[min(xs) - 0.5, max(xs) + 0.5])
    fig.update_yaxes(dtick=1, range=[min(ys) - 0.5, max(ys) + 0.5])
    return fig


def heatmap_selection(event) -> list[tuple[int, int]]:
    """The (layer, head) cells a heatmap selection event reports (clicks or box selection on the cell markers)."""
    sel = getattr(event, "selection", None) if event is not None else None
    if sel is None and isinstance(event, dict):
        sel = event.get("selection")
    points = (sel.get("points") if isinstance(sel, dict) else getattr(sel, "points", None)) or []
    out = []
    for pt in points:
        if pt.get("curve_number", 1) == 1 and "x" in pt and "y" in pt:
            out.append((int(round(float(pt["y"]))), int(round(float(pt["x"])))))
    return out


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
    fig.update_layout(height=120 + 110 * max(1, df["head_name"].nunique()), margin=dict(l=70, r=10, t=30, b=10),
                      legend_title_text="label word")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_xaxes(title_text="", tickangle=-45)
    fig.update_yaxes(title_text="")  # one title for all rows, not one per row
    fig.add_annotation(text=VALUE_TITLES.get(value, value.replace("_", " ")), textangle=-90, x=-0.07, y=0.5,
                       xref="paper", yref="paper", showarrow=False, font=dict(size=13))
    return fig


VALUE_TITLES = {"weighted_logit_minus": "attention × (logit first − second label)",
                "logit_minus": "logit first − second label", "attention": "attention from T"}


def swap_bars(table: pd.DataFrame, value_cols: list[str], id_col: str = "head", names: dict | None = None,
              y_title: str = "value") -> go.Figure:
    """Grouped bars of the chosen columns per head (e.g. attention on each label, before/after swap);
    ``names`` gives each column a plain legend name."""
    long = table.melt(id_vars=[id_col], value_vars=value_cols, var_name="quantity", value_name="value")
    if names:
        long["quantity"] = [names.get(q, q) for q in long["quantity"]]
    fig = px.bar(long, x=id_col, y="value", color="quantity", barmode="group",
                 color_discrete_map=condition_color_map(long["quantity"]) if names else None)
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), legend_title_text="",
                      legend=dict(orientation="h", y=-0.3))
    fig.update_xaxes(title_text="head")
    fig.update_yaxes(title_text=y_title)
    return fig


def score_similarity_scatter(table: pd.DataFrame, label_words) -> go.Figure:
    hover = [c for c in ("position", "demo", "label", "score", "similarity") if c in table.columns]
    fig = px.scatter(table, x="similarity", y="score", color="label", facet_col="head" if "head" in table else None,
                     facet_col_wrap=3, hover_data=hover, color_discrete_map=label_color_map(label_words))
    n_rows = -(-max(1, table["head"].nunique() if "head" in table else 1) // 3)
    fig.update_layout(height=80 + 300 * n_rows, margin=dict(l=10, r=10, t=30, b=10), legend_title_text="label word")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    # Heads differ in score scale: a shared axis flattens the small ones.
    fig.update_yaxes(matches=None, showticklabels=True)
    fig.update_xaxes(title_text="")
    fig.update_yaxes(title_text="")
    fig.add_annotation(text="query-demonstration similarity (cosine)", x=0.5, y=0, yshift=-40, xref="paper",
                       yref="paper", showarrow=False)
    fig.add_annotation(text="query-key score from T", textangle=-90, x=-0.05, y=0.5, xref="paper", yref="paper",
                       showarrow=False)
    fig.update_layout(margin=dict(l=60, b=60))
    return fig


def bias_bars(table: pd.DataFrame, x: str, y: str, color: str = "condition", y_title: str | None = None,
              x_title: str | None = None) -> go.Figure:
    err = {}
    if {"ci_low", "ci_high"} <= set(table.columns):
        table = table.assign(_hi=table["ci_high"] - table[y], _lo=table[y] - table["ci_low"])
        err = dict(error_y="_hi", error_y_minus="_lo")
    fig = px.bar(table, x=x, y=y, color=color, barmode="group", text_auto=".2f",
                 color_discrete_map=condition_color_map(table[color]) if color in table else None, **err)
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), legend_title_text="")
    fig.update_yaxes(title_text=y_title or y.replace("_", " "))
    fig.update_xaxes(title_text=x_title or x.replace("_", " "))
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


def null_histogram(null_values, observed: float, quantity: str = "gold-margin drop (logits)") -> go.Figure:
    """The random-head null distribution with the chosen heads' value marked."""
    fig = go.Figure(go.Histogram(x=list(null_values), nbinsx=30, marker_color="#bbbbbb", name="random head sets"))
    fig.add_vline(x=observed, line=dict(color="black", width=3),
                  annotation_text="chosen heads", annotation_position="top")
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), xaxis_title=quantity,
                      yaxis_title="random head sets", showlegend=False)
    return fig


def ab_bars(head_table: pd.DataFrame, value: str = "attention", y_title: str | None = None) -> go.Figure:
    """Prompt A/B per head (``compare.PromptComparison.head_table``): ``value`` in A, in B and B − A, one
    group of bars per head, one bar per label (labels matched by index; A's words name them)."""
    words = list(dict.fromkeys(head_table["label"]))
    rows = []
    for r in head_table.itertuples():
        for which, col in (("A", f"{value}_a"), ("B", f"{value}_b"), ("B − A", f"{value}_diff")):
            rows.append({"head": r.head, "label": r.label, "prompt": which, value: getattr(r, col)})
    df = pd.DataFrame(rows, columns=["head", "label", "prompt", value])
    fig = px.bar(df, x="head", y=value, color="label", facet_col="prompt", barmode="group", facet_col_spacing=0.06,
                 color_discrete_map=label_color_map(words), category_orders={"label": words,
                                                                             "prompt": ["A", "B", "B − A"]},
                 hover_data={value: ":.4f"})
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), legend_title_text="label")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    # A and B share a scale; B − A has its own, with its zero line drawn
    fig.update_yaxes(title_text="", matches=None, showticklabels=True, zeroline=True, zerolinecolor="#888")
    fig.update_yaxes(matches="y", col=2)
    fig.update_yaxes(title_text=y_title or value.replace("_", " "), col=1)
    fig.update_xaxes(title_text="")
    return fig


def towers_patch_bars(summary: pd.DataFrame, label_words) -> go.Figure:
    """The towers patch (``towers_patch.TowersPatch.summary``): the margin logit(first) − logit(second) per
    condition, labelled with the prediction; the donor B's own run last."""
    a, b = label_words[0], label_words[1]
    colors = ["#555" if c == "none" else "#999" if c.startswith("donor") else "#c49c00" for c in summary["condition"]]
    fig = go.Figure(go.Bar(x=summary["condition"], y=summary["margin"], marker_color=colors,
                           text=[f"{m:+.2f} → {p}" for m, p in zip(summary["margin"], summary["predicted"])],
                           textposition="outside", hovertemplate="%{x}: margin %{y:+.4f}<extra></extra>"))
    fig.add_hline(y=0, line_dash="dot", line_color="#888")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="patched from B into A",
                      yaxis_title=f"margin logit({a}) − logit({b})")
    return fig


def attention_rows_heatmap(matrix, tokens, row_names, title: str = "", x_title: str = "attended token") -> go.Figure:
    """Attention rows as a heatmap (rows: heads, or positions; columns: tokens): the Attention page's view of
    prompts too long for bertviz."""
    z = [[float(v) for v in row] for row in matrix]
    cols = [f"{i}: {t}" for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=list(row_names), colorscale="Blues", zmin=0,
                               hovertemplate="%{y} → %{x}<br>attention %{z:.4f}<extra></extra>",
                               colorbar=dict(title="attention")))
    fig.update_layout(title=title, height=max(260, 40 + 22 * len(z)) if len(z) < 40 else 700,
                      margin=dict(l=10, r=10, t=40, b=10), xaxis_title=x_title)
    fig.update_xaxes(showticklabels=len(cols) <= 200, tickangle=-60, tickfont=dict(size=9))
    fig.update_yaxes(autorange="reversed", type="category")
    return fig
