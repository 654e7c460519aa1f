"""Guided lesson: the paper in five steps on a prepared prompt, each with one sentence and a live result."""

import threading

import streamlit as st

from iclviz.analyses.heads import default_heads, located_heads
from iclviz.analyses.lesson import LESSON_STATE, STEPS, step_result
from iclviz.analyses.readout import token_table
from iclviz.outputs.plots import label_attention_compact, tokens_html
from iclviz.prompt import PromptError, build_prompt
from iclviz.sharing import LabState
from iclviz.validation import head_name
from pages.parts import common, state
from pages.parts.widgets import chart, safe

ss = st.session_state
common.page_setup(
    "Guided lesson: how a language model learns in context",
    "Five steps through the paper on a prepared prompt. Each step says in one sentence what to look for "
    "and shows what this model does, measured live. The lesson keeps its own prompt and heads: your Prompt lab "
    "prompt stays as it is unless you press \"Open this step in the Prompt lab\".")

lm = common.require_model()

# The lesson's own prompt and heads: the prepared prompt, and the heads the app's one rule located on this model
# (state.DEFAULT_HEAD_RULE, the rule every page starts from). The session's prompt and heads are never touched here.
RULE = state.DEFAULT_HEAD_RULE
lesson_heads = default_heads(lm.name, lm.n_layers, lm.n_heads, RULE)
found = located_heads(lm.name, RULE)


def _reset():
    ss.lesson_step = 0


def _go(step):
    ss.lesson_step = max(0, min(len(STEPS) - 1, step))


STEP_MODES = {2: "all in-context heads"}  # what the Prompt lab shows first for a step (the ablation step)


def _open_in_lab(step):
    """Only on the user's request: the lesson's prompt and heads become the session's (Undo on the Prompt lab
    brings the previous prompt back)."""
    state.apply_state(LabState(list(LESSON_STATE.demos), LESSON_STATE.query, LESSON_STATE.label_words,
                               LESSON_STATE.template, list(lesson_heads)))
    for key in ("w_query", "w_label_words", "w_template"):
        ss.pop(key, None)
    state.set_mode(STEP_MODES.get(step, "none"))
    ss.lesson_open_lab = True


if ss.pop("lesson_open_lab", False):
    st.switch_page("pages/prompt_lab.py")
step = int(ss.get("lesson_step", 0))

nav = st.columns([1, 1, 5, 3], vertical_alignment="center")
nav[0].button("Back", icon="⬅️", key="w_lesson_back", on_click=_go, args=(step - 1,),
              disabled=step == 0)
nav[1].button("Next", icon="➡️", key="w_lesson_next", on_click=_go, args=(step + 1,),
              disabled=step == len(STEPS) - 1, type="primary")
nav[2].progress((step + 1) / len(STEPS), text=f"Step {step + 1} of {len(STEPS)}")
nav[3].button("Reset the lesson", icon="🔄", key="w_lesson_reset", on_click=_reset,
              help="back to step 1")

s = STEPS[step]
st.header(f"{step + 1}. {s.title}")
st.markdown(f"#### {s.explanation}")

heads = lesson_heads
try:
    prompt = build_prompt(lm.tokenizer, list(LESSON_STATE.demos), LESSON_STATE.query, LESSON_STATE.label_words,
                          LESSON_STATE.template, max_tokens=lm.context_length)
except PromptError as exc:  # a model whose tokenizer splits foo or bar
    st.error(safe(f"The lesson's prompt cannot be run on this model: {exc}"))
    st.stop()


@st.cache_resource(show_spinner=False, max_entries=64)
def _result(_lm, key, step, demos, query, words, template, heads):
    return step_result(_lm, step, list(demos), query, words, template, list(heads))


_AHEAD: set = set()  # (model, step, heads) already computed or being computed ahead, in this process


def _compute_ahead(first: int, key, head_key) -> None:
    """The later steps' results, computed one after the other in the background while the user reads (they land
    in ``_result``'s cache, so that Next answers at once; steps 3 and 5 take tens of seconds on a loaded CPU)."""
    todo = [s for s in range(first, len(STEPS)) if (key, s, head_key) not in _AHEAD]
    if not todo:
        return
    _AHEAD.update((key, s, head_key) for s in todo)

    def work():
        for s in todo:
            try:
                _result(lm, key, s, *LESSON_KEY, head_key)
            except Exception:  # noqa: BLE001 - the step computes (and reports) it again when opened
                _AHEAD.discard((key, s, head_key))

    threading.Thread(target=work, daemon=True, name="iclviz-lesson-ahead").start()


LESSON_KEY = (tuple(LESSON_STATE.demos), LESSON_STATE.query, tuple(LESSON_STATE.label_words), LESSON_STATE.template)
with st.spinner("Measuring on this model"):
    try:
        res = _result(lm, state.model_key(), step, *LESSON_KEY, tuple(map(tuple, heads)))
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
how = (f"located by the app's head rule ({RULE}) on {found['n_prompts']} {found['dataset']} prompts"
       if found and found.get("n_prompts") else f"the app's head rule ({RULE}); none located on this model, so the "
                                                 "first heads of the last layer")
n = len(heads)
st.caption(f"Model: {lm.name}; the lesson's {n} in-context head{'s' if n != 1 else ''}: "
           f"{', '.join(map(head_name, heads))} ({how}, the same heads every page starts from). "
           "Go deeper: Prompt lab (steps 1-3), Two towers (step 4), Bias lab (step 5).")
st.button("Open this step in the Prompt lab", icon="🧪", key="w_lesson_open_lab",
          on_click=_open_in_lab, args=(step,),
          help="replaces the Prompt lab's prompt and heads with the lesson's (Undo there brings yours back)")

_compute_ahead(step + 1, state.model_key(), tuple(map(tuple, heads)))
