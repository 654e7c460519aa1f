"""The Attention page's bertviz helpers: real layer and head numbers, frame heights, offline HTML.

No streamlit here (the tests call these directly). bertviz's HTML loads require.js, d3 and jQuery
from a CDN; ``offline_bertviz_html`` inlines the vendored copies in assets/vendor instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

VENDOR_DIR = Path(__file__).resolve().parents[2] / "assets" / "vendor"
_REQUIRE_TAG = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/require\.js/[^"]*"></script>')
_SHIM = ("window.require = window.require || {}; window.require.config = function () {};\n"
         "window.requirejs = function (deps, cb) { cb(window.jQuery, window.d3); };")


def offline_bertviz_html(html: str) -> str:
    """bertviz HTML that works without internet: d3 and jQuery inlined, require.js shimmed.

    Returns the HTML unchanged when the vendored files are missing.
    """
    try:
        d3 = (VENDOR_DIR / "d3.v5.min.js").read_text(encoding="utf-8")
        jq = (VENDOR_DIR / "jquery.min.js").read_text(encoding="utf-8")
    except OSError:
        return html
    head = f"<script>{jq}</script>\n<script>{d3}</script>\n<script>{_SHIM}</script>\n"
    return head + _REQUIRE_TAG.sub("", html)


# ---------------------------------------------------------------- bertviz views with real layer and head numbers

def bertviz_layer_inputs(att: dict[int, torch.Tensor], n_layers: int, layer: int, tokens: list[str],
                         only_from_t: bool = False, hide_first: bool = False) -> tuple[tuple, list[str]]:
    """The attention tuple and tokens bertviz needs to draw ``layer`` under its real number.

    bertviz indexes layers by position in the tuple it receives, so the tuple has all ``n_layers``
    entries (the other layers are the same tensor, never drawn: pass ``include_layers=[layer]``) and
    all heads (so head numbers stay real). ``only_from_t`` keeps only the last position's attention row
    (what the in-context heads use); ``hide_first`` drops the first token, whose large attention share
    (the "attention sink") dwarfs the rest, renormalizing nothing (the values stay those of the model).
    """
    a = att[layer].float().clone()  # [H, S, S]
    if only_from_t:
        keep = torch.zeros_like(a)
        keep[:, -1, :] = a[:, -1, :]
        a = keep
    toks = list(tokens)
    if hide_first and a.shape[-1] > 1:
        a = a[:, 1:, 1:]
        toks = toks[1:]
    a = a[None]
    return tuple(a for _ in range(n_layers)), toks


def bertviz_height(view: str, n_tokens: int, total_heads: int, n_layers_drawn: int = 1) -> int:
    """Frame height (px) that shows a whole bertviz view, from bertviz's own layout constants."""
    if view == "head":
        return int(22.5 * n_tokens + 30 + 120)  # BOXHEIGHT per token + TEXT_TOP + layer menu and head boxes
    box = 7 * (12 / max(total_heads, 1))
    thumb = n_tokens * box + 10
    detail = n_tokens * 18 + 2 * 15 + 25
    return int(max(n_layers_drawn * thumb + 38, detail) + 120)
