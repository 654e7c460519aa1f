"""Figures (issue 11, item 4): offline HTML, image-download configs, the altair head heatmap."""

from __future__ import annotations

import json
import re

from views_common import HEADS, SPEC

from iclviz.analyses.contributions import demo_contributions


def test_html_embeds_plotly_and_configs_and_altair_selection():
    import pandas as pd
    import plotly.graph_objects as go

    from iclviz.outputs.figures import (
        head_heatmap,
        image_configs,
        plotly_config,
        selected_head,
        selected_heads,
        standalone_html,
    )

    html = standalone_html(go.Figure(go.Bar(y=[1, 2])), "fig")
    assert not re.search(r"<script[^>]*\bsrc=", html)  # nothing loaded from a CDN or anywhere
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js inline
    assert "format: fmt" in html and "'svg'" in html
    cfg = plotly_config("my fig", "svg")
    assert cfg["toImageButtonOptions"]["format"] == "svg" and cfg["toImageButtonOptions"]["filename"] == "my_fig"
    assert set(image_configs()) == {"png", "svg"}
    json.dumps(cfg)
    m = pd.DataFrame([[0.1, -0.2], [0.3, 0.0]], index=pd.Index([10, 11], name="layer"), columns=[0, 1])
    spec = head_heatmap(m, chosen=[(11, 0)]).to_dict()
    params = spec["params"]
    assert any(p["name"] == "head" and p["select"]["type"] == "point" and p["select"]["fields"] == ["layer", "head"]
               for p in params)
    assert selected_head({"selection": {"head": [{"layer": 11, "head": 0}]}}) == (11, 0)
    assert selected_head({"selection": {"head": []}}) is None
    two = {"selection": {"head": [{"layer": 11, "head": 0}, {"layer": 10, "head": 1}, {"layer": 11, "head": 0}]}}
    assert selected_heads(two) == [(11, 0), (10, 1)] and selected_heads(None) == []
    named = m.copy()
    named.columns.name = "head"  # as HeadScan.matrix gives it
    assert len(head_heatmap(named).to_dict()["datasets"]) == 1


def test_waterfall_figure(tiny_llama):
    from iclviz.outputs.figures import waterfall_figure

    c = demo_contributions(tiny_llama, SPEC, HEADS)
    fig = waterfall_figure(c)
    assert fig.data[0].type == "waterfall" and len(fig.data[0].x) == len(SPEC.demos) + 2
