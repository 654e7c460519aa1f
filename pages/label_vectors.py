"""Label vectors: what each chosen head's value-output vector at each label position says."""

import streamlit as st

from iclviz.analyses.label_vectors import label_vector_summary
from iclviz.engine.lens import SCALINGS
from iclviz.outputs.plots import label_vector_bars
from pages.parts import common
from pages.parts.runs import label_vectors_current, predict_current
from pages.parts.widgets import chart, downloads, safe

ss = st.session_state
common.page_setup(
    "Label vectors",
    "For each chosen head and each label position p of the current prompt, the value-output vector z = v_p W_O "
    "projected to the vocabulary should rank that position's own label word first (foo positions say foo); the "
    "weighted vector a(T,p)·z is what actually flows into T. The logit minus is logit(first label) − "
    "logit(second label) of that projection.")

lm, heads, prompt = common.model_heads_prompt()


@st.fragment
def label_vectors():
    """The projection and bar-height controls rerun only this section."""
    c1, c2 = st.columns(2)
    scaling = c1.selectbox("Vocabulary projection", SCALINGS, key="w_lv_scaling")
    value = c2.radio("Bar height", ["weighted_logit_minus", "logit_minus", "attention"], horizontal=True,
                     key="w_lv_val")
    pred = predict_current(lm)
    st.markdown(f"Current prompt: **{len(prompt.label_positions)} label positions**, prediction "
                + safe(f"{pred.predicted} ({', '.join(f'p({w})={p:.3f}' for w, p in pred.probs.items())})."))
    # cached by model, prompt, heads and scaling: the cache holds this small table, not the vectors
    table = label_vectors_current(lm, heads, scaling)
    fig = label_vector_bars(table, prompt.label_words, value)
    chart(fig, key="fig_lv", name="label_vectors")
    own_first = (table["own_label_rank"] <= table[[f"rank_{w}" for w in prompt.label_words]].min(axis=1))
    st.markdown(f"Own label ranked above the other label words at **{own_first.mean():.0%}** of "
                f"{len(table)} (head, position) pairs.")
    st.dataframe(label_vector_summary(table), key="tbl_lv_summary")
    st.dataframe(table, key="tbl_lv")
    downloads(table, "label_vectors.csv", fig, "label_vectors.html", "Figure (HTML)")


label_vectors()
