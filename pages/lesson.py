"""Guided lesson: the paper in five steps on a prepared prompt, each with one sentence and a live result."""

import streamlit as st

from iclviz.heads import default_heads
from iclviz.lesson import LESSON_STATE, STEPS, step_result
from iclviz.plots import label_attention_compact, tokens_html
from iclviz.prompt import PromptError
from iclviz.readout import token_table
from iclviz.validation import head_name
from pages.parts import common, state
from pages.parts.widgets import chart, safe

ss = st.session_state
common.page_setup(
    "Guided lesson: how a language model learns in context",
    "Five steps through the paper on a prepared prompt. Each step says in one sentence what to look for "
    "and shows what this model does, measured live; edit the prompt on the Prompt lab page and come "
    "back, or press Reset to restore the prepared prompt.")

lm = common.require_model()


def _reset():
    state.apply_state(LESSON_STATE)
    for key in ("w_query", "w_label_words", "w_template"):
        ss.pop(key, None)
    ss.heads = default_heads(lm.name, lm.n_layers, lm.n_heads)
    ss.heads_from_user = False
    ss.heads_model = lm.name
    ss.lesson_step = 0
    ss.lesson_loaded = True


def _go(step):
    ss.lesson_step = max(0, min(len(STEPS) - 1, step))


if not ss.get("lesson_loaded"):
    _reset()
    st.toast("The lesson loaded its prepared prompt.")
step = int(ss.get("lesson_step", 0))

nav = st.columns([1, 1, 6, 2], vertical_alignment="center")
nav[0].button("Back", icon="⬅️", key="w_lesson_back", on_click=_go, args=(step - 1,),
              disabled=step == 0)
nav[1].button("Next", icon="➡️", key="w_lesson_next", on_click=_go, args=(step + 1,),
              disabled=step == len(STEPS) - 1, type="primary")
nav[2].progress((step + 1) / len(STEPS), text=f"Step {step + 1} of {len(STEPS)}")
nav[3].button("Reset the lesson", icon="🔄", key="w_lesson_reset", on_click=_reset,
              help="restore the prepared prompt and the default in-context heads")

s = STEPS[step]
st.header(f"{step + 1}. {s.title}")
st.markdown(f"#### {s.explanation}")

heads = state.chosen_heads(lm)
prompt = state.current_prompt(lm)
if prompt is None:
    st.info("Fix the prompt on the Prompt lab page, or press Reset.")
    st.stop()


@st.cache_resource(show_spinner=False, max_entries=64)
def _result(_lm, key, step, demos, query, words, template, heads):
    return step_result(_lm, step, list(demos), query, words, template, list(heads))


with st.spinner("Measuring on this model"):
    try:
        res = _result(lm, state.model_key(), step, *state.prompt_key(), tuple(map(tuple, heads)))
    except PromptError as exc:
        st.error(safe(f"The prompt cannot be run: {exc}"))
        st.stop()

with st.container(border=True):
    st.markdown("**What this model does, measured now**")
    cols = st.columns(len(res.metrics))
    for c, (label, value, note) in zip(cols, res.metrics):
        c.metric(safe(label), safe(value), safe(note) if note else None, delta_color="off")
    st.markdown(safe(res.sentence))

if step == 0:
    st.markdown(tokens_html(token_table(lm.tokenizer, prompt), prompt.label_words), unsafe_allow_html=True)
    st.caption("Label positions are coloured by their label (subscript: token position); T, the last position, "
               "is dark.")
elif step == 1 and res.table is not None:
    chart(label_attention_compact(res.table, prompt.label_words), key="fig_lesson_att")
elif step == 4 and res.table is not None:
    st.dataframe(res.table, key="tbl_lesson_bias", hide_index=True)
st.caption(f"Model: {lm.name}; in-context heads: {', '.join(map(head_name, heads))}. "
           "Go deeper: Prompt lab (steps 1-3), Two towers (step 4), Bias lab (step 5).")
