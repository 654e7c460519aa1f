"""Attention: bertviz head and model views of the current prompt, for chosen layers and heads (real numbers)."""

import streamlit as st

from iclviz.engine.attention_matrix import BERTVIZ_MAX_TOKENS, full_attention
from iclviz.outputs.plots import attention_rows_heatmap
from iclviz.validation import head_name
from pages.parts import common
from pages.parts.bertviz_view import bertviz_height, bertviz_layer_inputs, offline_bertviz_html
from pages.parts.state import model_key, settings
from pages.parts.widgets import chart, html_download, safe

ss = st.session_state
common.page_setup(
    "Attention",
    "The full attention pattern of the current prompt in the chosen layers, drawn with bertviz: in the in-context "
    "heads the last position T should attend to the label positions. Only a few layers and heads are drawn so "
    f"that the page stays responsive; past {BERTVIZ_MAX_TOKENS} tokens, a heatmap of the chosen heads replaces "
    "bertviz.")

lm, heads, prompt = common.model_heads_prompt()
default_layers = sorted({a for a, _ in heads})[:3]
c1, c2 = st.columns([3, 1])
layers = c1.multiselect("Layers (at most 4)", list(range(lm.n_layers)), default=default_layers, max_selections=4,
                        key="w_att_layers")
view = c2.radio("View", ["head", "model"], key="w_att_view", horizontal=True)
o1, o2, o3 = st.columns(3)
only_chosen = o1.checkbox("Only the in-context heads of each layer", value=True, key="w_att_only")
only_t = o2.checkbox("Only attention from T (the last position)", value=True, key="w_att_only_t",
                     help="what the in-context heads use; untick to see every position's attention")
hide_first = o3.checkbox("Hide the first token (attention sink)", value=False, key="w_att_sink",
                         help="many heads park most of their attention on the first token; hiding it shows the rest")
if not layers:
    st.info("Choose at least one layer.")
    st.stop()
limit = settings().max_attention_tokens
if prompt.n_tokens > limit:
    st.error(f"The prompt has {prompt.n_tokens:,} tokens; this page draws prompts of at most {limit:,} tokens "
             "(ICLVIZ_MAX_ATTENTION_TOKENS). Shorten the prompt on the Prompt lab page.")
    st.stop()


# Only the chosen layers are computed (the pass stops after the last one) and cached: few entries, a time to live.
@st.cache_resource(show_spinner=False, max_entries=4, ttl=settings().cache_ttl)
def _attention(_lm, key, ids, layers):
    return full_attention(_lm, prompt, list(layers), max_tokens=limit)


with st.spinner("Computing full attention"):
    att = _attention(lm, model_key(), tuple(prompt.input_ids), tuple(sorted(layers)))
# Tokens come from user text and are inlined in a script: keep them free of markup characters.
tokens = [(lm.tokenizer.decode([t]).replace("\n", "\\n").replace("<", "‹").replace(">", "›")
           .replace("&", "＆")) or "·" for t in prompt.input_ids]
tokens[-1] = f"{tokens[-1]} [T]"
st.caption(f"Chosen in-context heads: {', '.join(map(head_name, heads))}. Layer and head numbers are the model's own; "
           "T is the last token, marked [T]." + (" Rows other than T's are blank." if only_t else ""))
long_prompt = prompt.n_tokens > BERTVIZ_MAX_TOKENS
if long_prompt:
    st.info(f"The prompt has {prompt.n_tokens} tokens: past {BERTVIZ_MAX_TOKENS}, bertviz's views stop responding in "
            "the browser, so each layer is drawn as a heatmap of the chosen heads' attention "
            + ("from T (one row per head)." if only_t else "from every position (one map per head).")
            + " Shorten the prompt to get bertviz back.")
else:
    try:
        from bertviz import head_view, model_view
    except ImportError as exc:
        st.error(safe(f"bertviz is not available: {exc}"))
        st.stop()


def _heatmaps(layer: int, hsel: list[int]) -> None:
    """The chosen heads' attention rows of ``layer`` as heatmaps (prompts too long for bertviz)."""
    start = 1 if hide_first else 0
    mat = att[layer]  # [all heads of the layer, n, n]
    toks = tokens[start:]
    if only_t:
        fig = attention_rows_heatmap(mat[hsel, -1, start:], toks, [head_name((layer, h)) for h in hsel],
                                     f"Layer {layer}: attention from T")
        chart(fig, key=f"fig_att_rows_{layer}", name=f"attention_L{layer}_from_T")
        html_download(fig, f"attention_L{layer}_from_T.html", f"Layer {layer}, this view (HTML)",
                      key=f"dl_att_rows_{layer}")
        return
    names = [f"{i}: {t}" for i, t in enumerate(tokens)][start:]
    for tab, h in zip(st.tabs([head_name((layer, h)) for h in hsel]), hsel):
        with tab:
            fig = attention_rows_heatmap(mat[h, start:, start:], toks, names,
                                         f"{head_name((layer, h))}: attention from every position (rows)")
            chart(fig, key=f"fig_att_full_{layer}_{h}", name=f"attention_{head_name((layer, h))}")
            html_download(fig, f"attention_{head_name((layer, h))}.html", "This head (HTML)",
                          key=f"dl_att_full_{layer}_{h}")


for layer in sorted(layers):
    in_layer = [b for a, b in heads if a == layer]
    st.subheader(f"Layer {layer}")
    hsel = st.multiselect(f"Heads of layer {layer}", list(range(lm.n_heads)),
                          default=in_layer if (only_chosen and in_layer) else list(range(lm.n_heads)),
                          key=f"w_att_heads_{layer}_{only_chosen}",
                          help="the in-context heads of this layer are chosen by default")
    if not hsel:
        st.info("Choose at least one head of this layer.")
        continue
    if long_prompt:
        _heatmaps(layer, sorted(hsel))
        continue
    attn, toks = bertviz_layer_inputs(att, lm.n_layers, layer, tokens, only_t, hide_first)
    try:
        if view == "head":
            html = head_view(attn, toks, layer=layer, heads=sorted(hsel), include_layers=[layer],
                             html_action="return").data
        else:
            html = model_view(attn, toks, include_layers=[layer], include_heads=sorted(hsel), display_mode="light",
                              html_action="return").data
        html = offline_bertviz_html(html)
    except Exception as exc:  # noqa: BLE001 - bertviz problems become a message
        st.error(safe(f"bertviz could not draw layer {layer}: {exc}"))
        continue
    st.iframe(html, height=bertviz_height(view, len(toks), len(hsel) if view == "model" else lm.n_heads))
    st.download_button(f"Layer {layer}, this view (HTML)", html.encode(), file_name=f"attention_L{layer}_{view}.html",
                       mime="text/html", key=f"dl_att_{layer}_{view}")
