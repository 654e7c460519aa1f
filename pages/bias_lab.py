"""Bias lab: majority-label and recency bias, with and without the in-context-head mitigations."""

from functools import partial

import pandas as pd
import streamlit as st

from iclviz.analyses.bias import majority_bias, recency_bias
from iclviz.analyses.evaluation import EvalSetup, evaluate
from iclviz.analyses.readout import bias_reading, label_mass, ratio_reading, share_table
from iclviz.engine.interventions import Plan
from iclviz.outputs.plots import bias_bars
from pages.parts import common, state
from pages.parts.long_run import run_with_progress
from pages.parts.runs import predict_current
from pages.parts.widgets import chart, csv_download, dataset_picker, html_download, order_editor, run_size, safe

ss = st.session_state
common.page_setup(
    "Bias lab",
    "More demonstrations of one label give that label more positions to attract attention from T (majority "
    "bias), and labels near the query attract more attention through the positional part of the query-key score "
    "(recency bias). The mitigations act only inside the in-context heads: rescale each label's attention by its "
    "share of the demonstrations, or remove the positional part of the score at label positions.")

lm = common.require_model()
heads = state.chosen_heads(lm)
prompt = state.current_prompt(lm)
rotary = lm.can_remove_positional_score


@st.fragment
def current_prompt_readout():
    """Reordering reruns only this section (the dataset runs below do not depend on it)."""
    prompt = state.current_prompt(lm, show_errors=False)
    st.subheader("The current prompt")
    if prompt is not None:
        with st.expander("**Reorder the demonstrations** (the Prompt lab's arrows; the readout below follows)",
                         expanded=True):
            order_editor("bias_order")
            st.button("Reverse the order", key="w_bias_reverse", on_click=lambda: ss.demos.reverse())
        words = prompt.label_words
        counts = {w: prompt.demo_labels.count(w) for w in words}
        st.markdown("Demonstrations per label: " + safe(", ".join(f"{w}: {n}" for w, n in counts.items()))
                    + f" · last demonstration's label: `{prompt.demo_labels[-1].replace('`', 'ˋ')}`")
        plans = [("no fix", "none"), ("majority fix", "majority_fix")]
        if rotary:
            plans.append(("recency fix", "remove_positional_score"))
        rows = []
        for name, kind in plans:
            with st.spinner(f"Running the prompt ({name})"):
                pred = predict_current(lm, kind, heads)
            mass = label_mass(prompt, pred.capture, heads)
            for w in words:
                rows.append({"condition": name, "label": w, "probability": pred.probs[w], "attention_mass": mass[w],
                             "predicted": pred.predicted})
        cur = pd.DataFrame(rows)
        c1, c2 = st.columns(2)
        chart(where=c1, fig=bias_bars(cur, "label", "probability", y_title="probability of the label word",
                                      x_title="label word"), key="fig_bias_prob")
        chart(where=c2, fig=bias_bars(cur, "label", "attention_mass", y_title="attention from T on its positions "
                                      "(in-context heads)", x_title="label word"), key="fig_bias_mass")
        st.caption("One prompt: an illustration, not a measurement (n = 1). The dataset runs below give n and "
                   "intervals.")
        firsts = cur.groupby("condition", sort=False)["predicted"].first()
        st.markdown(" · ".join(f"{c}: `{str(p).replace('`', 'ˋ')}`" for c, p in firsts.items()))
        if not rotary:
            st.info(f"{lm.name} has {lm.arch.positional} positions ({lm.arch.rotary_layout or 'no rotation'}): "
                    "the recency fix needs rotate-half rotary positions.")
    else:
        st.info("Fix the prompt on the Prompt lab page to see its readout here.")


current_prompt_readout()

st.subheader("Over a dataset sample")
is_tiny = lm.n_layers * lm.n_heads < 50
c1, c3 = st.columns([3, 1])
with c1:
    ds = dataset_picker("w_bias_dataset")
seed = c3.number_input("Seed", 0, 10_000, 0, key="w_bias_seed")
n_test = run_size("w_bias", 8 if is_tiny else 24, 16 if is_tiny else 200)
if ds is None or len(ds.labels) != 2:
    st.info("The label-ratio experiment uses two-label datasets (sst2, amazon_polarity).")
    st.stop()
setup_words = ("foo", "bar")
tab1, tab2, tab3 = st.tabs(["Label ratio", "Majority bias (paper metric)", "Recency bias (paper metric)"])

with tab1:
    total = st.number_input("Demonstrations in all", 2, 16, 6, key="w_ratio_total")
    n_first = st.slider(f"of which labelled {safe(setup_words[0])}", 0, int(total), int(total) // 2,
                        key="w_ratio_first")

    def _ratio(run):
        """No fix, then the majority fix, on one progress bar."""
        setup = EvalSetup(ds, k_per_label=[int(n_first), int(total - n_first)], n_test=int(n_test),
                          seeds=(int(seed),), label_words=setup_words, template=ss.template)
        frames = []
        plans = (("no fix", Plan()), ("majority fix", Plan("majority_fix", tuple(heads))))
        for i, (name, plan) in enumerate(plans):
            def cb(d, t, note, i=i):
                return run(i * t + d, 2 * t, note)
            res = evaluate(lm, setup, plan, progress=cb)
            frames.append(share_table(res.rows, setup_words).assign(condition=name))
        return pd.concat(frames, ignore_index=True)[["condition", "quantity", "n", "value", "ci_low", "ci_high"]]

    go_ratio = st.button("Run the label-ratio comparison", key="w_ratio_go")
    ratio = run_with_progress(go_ratio, "Label ratio", "ratio", _ratio, "The label-ratio comparison failed",
                              "The last label-ratio run was stopped before it finished.")
    if ratio is not None:
        ss.ratio_table = ratio
        ss.ratio_counts = {setup_words[0]: int(n_first), setup_words[1]: int(total - n_first)}
    if ss.get("ratio_table") is not None:
        counts = ss.ratio_counts
        st.caption("Demonstrations: " + " / ".join(f"{c} {safe(w)}" for w, c in counts.items())
                   + f" · n = {int(ss.ratio_table['n'].iloc[0])} test sentences · bars: 95% Wilson intervals")
        text, warning = ratio_reading(ss.ratio_table, counts)
        st.markdown(safe(text))
        if warning:
            st.warning(safe(warning))
        fig = bias_bars(ss.ratio_table, "quantity", "value", y_title="share of test sentences", x_title="")
        chart(fig, key="fig_ratio")
        csv_download(ss.ratio_table, "label_ratio.csv")


def _measure(measure, progress):
    """The paper's bias metric (``bias.majority_bias`` or ``bias.recency_bias``) on the sample."""
    setup = EvalSetup(ds, k_per_label=3, n_test=int(n_test), seeds=(int(seed),), label_words=setup_words,
                      template=ss.template)
    return measure(lm, setup, heads, progress=progress)


for tab, kind, measure in ((tab2, "majority", majority_bias), (tab3, "recency", recency_bias)):
    with tab:
        # Why a quick run is not quick on a CPU: every condition x arrangement is a pass over every test sentence.
        per = "3 arrangements" if kind == "majority" else "every demonstration order"
        st.caption(f"A run is 3 conditions (no fix, the fix in the in-context heads, in random heads) x {per} x "
                   f"{int(n_test)} test sentences, one forward pass each: seconds on a GPU, minutes on a few CPU "
                   "cores (a quick majority run took 6 min on 2 shared cores), so the quick size is for a GPU or "
                   "for a run started before the class.")
        go = st.button(f"Measure {kind} bias", key=f"w_{kind}_go")
        res = run_with_progress(go, f"{kind} bias", kind, partial(_measure, measure), "The measurement failed",
                                f"The last {kind}-bias run was stopped before it finished.")
        if res is not None:
            ss[f"{kind}_result"] = res
        res = ss.get(f"{kind}_result")
        if res is not None:
            for note in res.notes:
                st.info(safe(note))
            text, warning, intervals = bias_reading(res)
            if warning != text:  # at chance, the one sentence is the warning
                st.markdown(safe(text))
            if warning:
                st.warning(safe(warning))
            st.dataframe(intervals, key=f"tbl_{kind}_intervals")
            with st.expander("The paper's summary table"):
                st.dataframe(res.summary, key=f"tbl_{kind}_summary")
            x = "arrangement" if "arrangement" in res.rows.columns else res.rows.columns[1]
            fig = bias_bars(res.rows, x, "accuracy", y_title="accuracy", x_title=x)
            chart(fig, key=f"fig_{kind}", name=f"{kind}_bias")
            csv_download(res.rows, f"{kind}_bias.csv")
            html_download(fig, f"{kind}_bias.html", "Figure (HTML)", key=f"dl_{kind}_html")
