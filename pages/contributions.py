"""Demonstrations: each demonstration's contribution to the prediction through the in-context heads (a waterfall)."""


import streamlit as st

from iclviz.analyses.contributions import LINEAR_SCALING
from iclviz.conventions import DIRECT_VS_EFFECT, SIGN_CONVENTION
from iclviz.outputs.figures import waterfall_figure
from iclviz.prompt import PromptError
from iclviz.validation import ValidationError
from pages.parts import common
from pages.parts.runs import contributions_current
from pages.parts.widgets import chart, safe, view_downloads

ss = st.session_state
common.page_setup(
    "Demonstrations",
    "How much each demonstration moves the prediction through the in-context heads: the attention from T to the "
    "demonstration's label position times the label the head's value-output vector writes there, summed over the "
    "chosen heads, beside the measured effect of knocking that attention out. The waterfall goes from the margin "
    "without those terms to the model's margin.")

lm, heads, prompt = common.model_heads_prompt()
words = prompt.label_words
pair = None
if len(words) > 2:
    pairs = [None] + [(x, y) for x in words for y in words if x != y]
    pair = st.selectbox("Margin between", pairs, key="w_contrib_pair",
                        format_func=lambda p: "the predicted label and the runner-up" if p is None
                        else f"{p[0]} and {p[1]}")
try:
    with st.spinner("Measuring each demonstration (one pass, then one batched knockout run)"):
        c = contributions_current(lm, heads, pair)
except (PromptError, ValidationError, ValueError, RuntimeError) as exc:
    st.error(safe(f"The contributions cannot be computed: {exc}"))
    st.stop()

a, b = c.pair
m1, m2, m3 = st.columns(3)
m1.metric("Baseline margin (heads' label terms removed)", f"{c.baseline_margin:+.3f}")
m2.metric(f"Demonstrations, through {len(heads)} heads", f"{c.total_contribution:+.3f}")
m3.metric(safe(f"Prediction's margin logit({a}) − logit({b})"), f"{c.prediction_margin:+.3f}",
          help=safe(f"the model predicts {c.predicted}"))
fig = waterfall_figure(c)
chart(fig, key="fig_waterfall", name="demonstration_contributions")
st.markdown(safe(f"From {c.baseline_margin:+.3f} the {len(c.table)} demonstrations add {c.total_contribution:+.3f} "
                 f"through the heads to reach the model's margin {c.prediction_margin:+.3f} (it predicts "
                 f"{c.predicted}). Knocking out the heads' attention from T to every label position at once changes "
                 f"the margin by {c.knockout_all:+.3f} (after − before; the Prompt lab's knockout of all in-context "
                 "heads shows the same number)."))
sa, sb = safe(a), safe(b)
st.caption(
    f"{SIGN_CONVENTION} Columns: **attention** — the attention from T to the demonstration's label position, summed "
    f"over the chosen heads; **contribution** — for each head, that attention times logit({sa}) − logit({sb}) of the "
    f"value-output vector the head reads at that position (the linear {LINEAR_SCALING} lens), summed over the heads: "
    f"the contributions add up exactly to the heads' direct effect through the label positions (positive: toward "
    f"{sa}); **knockout effect** — the margin with the heads' attention from T to that one position knocked out, "
    f"minus the margin without (all demonstrations in one batched run).")
if ((c.table["contribution"] * c.table["knockout_effect"]) > 0).any():  # same sign: the readings disagree
    st.caption(DIRECT_VS_EFFECT)
st.dataframe(c.table, key="tbl_contrib", hide_index=True)
for note in c.notes:
    st.caption(safe(f"note: {note}"))
with st.expander("Per head: each demonstration's term"):
    st.dataframe(c.per_head, key="tbl_contrib_heads", hide_index=True)

view_downloads(c.to_frame(), {"model": lm.name, **c.to_dict()}, fig, "demonstration_contributions", "Contributions",
               "Waterfall (HTML)", key="dl_contrib")
