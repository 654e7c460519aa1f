"""Attention: bertviz head and model views of the current prompt, limited to chosen layers and heads."""

import streamlit as st

from iclviz.app_support import full_attention, head_name, offline_bertviz_html
from pages import common

ss = st.session_state
common.page_setup()
st.title("Attention")
common.help_text(
    "The full attention pattern of the current prompt in the chosen layers, drawn with bertviz: in the in-context "
    "heads the last position T should attend to the label positions. Only a few layers and heads are drawn so "
    "that the page stays responsive.")

lm, heads, prompt = common.model_heads_prompt()
default_layers = sorted({a for a, _ in heads})[:3]
c1, c2, c3 = st.columns([2, 2, 1])
layers = c1.multiselect("Layers (at most 4)", list(range(lm.n_layers)), default=default_layers, max_selections=4,
                        key="w_att_layers")
only_chosen = c2.checkbox("Only the in-context heads of these layers", value=True, key="w_att_only")
view = c3.radio("View", ["head", "model"], key="w_att_view")
if not layers:
    st.info("Choose at least one layer.")
    st.stop()
limit = common.settings().max_attention_tokens
if prompt.n_tokens > limit:
    st.error(f"The prompt has {prompt.n_tokens:,} tokens; this page draws prompts of at most {limit:,} tokens "
             "(ICLVIZ_MAX_ATTENTION_TOKENS). Shorten the prompt on the Prompt lab page.")
    st.stop()
head_sel = sorted({b for a, b in heads if a in layers}) if only_chosen else list(range(lm.n_heads))
if not head_sel:
    head_sel = list(range(lm.n_heads))


# Only the chosen layers and heads are computed and cached; few entries, with a time to live.
@st.cache_resource(show_spinner=False, max_entries=4, ttl=common.settings().cache_ttl)
def _attention(_lm, key, ids, layers, heads):
    return full_attention(_lm, prompt, list(layers), list(heads), max_tokens=limit)


att = _attention(lm, common.model_key(), tuple(prompt.input_ids), tuple(sorted(layers)), tuple(head_sel))
st.caption(f"Heads drawn: {', '.join(str(h) for h in head_sel)} in layers {', '.join(map(str, sorted(layers)))}; "
           f"chosen in-context heads: {', '.join(map(head_name, heads))}. T is the last token.")
# Tokens come from user text and are inlined in a script: keep them free of markup characters.
tokens = [(lm.tokenizer.decode([t]).replace("\n", "\\n").replace("<", "‹").replace(">", "›")
           .replace("&", "＆")) or "·" for t in prompt.input_ids]
layer_list = sorted(layers)
attn_tuple = tuple(att[a][None] for a in layer_list)
try:
    from bertviz import head_view, model_view

    if view == "head":
        html = head_view(attn_tuple, tokens, html_action="return").data
    else:
        html = model_view(attn_tuple, tokens, html_action="return", display_mode="light").data
    html = offline_bertviz_html(html)
except Exception as exc:  # noqa: BLE001 - bertviz problems become a message
    st.error(common.safe(f"bertviz could not draw this view: {exc}"))
    st.stop()
st.caption("bertviz numbers layers and heads from 0 within the selection: layer i is the i-th chosen layer "
           f"({layer_list}), head j the j-th drawn head ({head_sel}).")
height = 600 if view == "head" else 220 * len(layer_list) + 200
st.iframe(html, height=height)
st.download_button("This view (HTML)", html.encode(), file_name=f"attention_{view}_view.html", mime="text/html")
