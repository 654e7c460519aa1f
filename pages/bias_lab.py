"""Bias lab: majority-label and recency bias, with and without the in-context-head mitigations."""

import pandas as pd
import streamlit as st

from iclviz.app_support import label_mass
from iclviz.evaluation import Cancelled, EvalSetup, evaluate
from iclviz.interventions import Plan
from iclviz.plots import bias_bars, figure_html
from iclviz.readout import bias_reading, ratio_reading, share_table
from pages import common

ss = st.session_state
common.page_setup()
st.title("Bias lab")
common.help_text(
    "More demonstrations of one label give that label more positions to attract attention from T (majority "
    "bias), and labels near the query attract more attention through the positional part of the query-key score "
    "(recency bias). The mitigations act only inside the in-context heads: rescale each label's attention by its "
    "share of the demonstrations, or remove the positional part of the score at label positions.")

lm = common.get_model()
if lm is None:
    st.stop()
heads = common.chosen_heads(lm)
prompt = common.current_prompt(lm)
rotary = lm.can_remove_positional_score


@st.fragment
def current_prompt_readout():
    """Reordering reruns only this section (the dataset runs below do not depend on it)."""
    prompt = common.current_prompt(lm, show_errors=False)
    st.subheader("The current prompt")
    if prompt is not None:
        with st.expander("**Reorder the demonstrations** (the Prompt lab's arrows; the readout below follows)",
                         expanded=True):
            common.order_editor("bias_order")
            st.button("Reverse the order", key="w_bias_reverse", on_click=lambda: ss.demos.reverse())
        words = prompt.label_words
        counts = {w: prompt.demo_labels.count(w) for w in words}
        st.markdown("Demonstrations per label: " + common.safe(", ".join(f"{w}: {n}" for w, n in counts.items()))
                    + f" · last demonstration's label: `{prompt.demo_labels[-1].replace('`', 'ˋ')}`")
        plans = [("no fix", "none"), ("majority fix", "majority_fix")]
        if rotary:
            plans.append(("recency fix", "remove_positional_score"))
        rows = []
        for name, kind in plans:
            with st.spinner(f"Running the prompt ({name})"):
                pred = common.predict_current(lm, kind, heads)
            mass = label_mass(prompt, pred.capture, heads)
            for w in words:
                rows.append({"condition": name, "label": w, "probability": pred.probs[w], "attention_mass": mass[w],
                             "predicted": pred.predicted})
        cur = pd.DataFrame(rows)
        c1, c2 = st.columns(2)
        c1.plotly_chart(bias_bars(cur, "label", "probability", y_title="probability of the label word",
                                  x_title="label word"), key="fig_bias_prob")
        c2.plotly_chart(bias_bars(cur, "label", "attention_mass", y_title="attention from T on its positions "
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
    ds = common.dataset_picker("w_bias_dataset")
seed = c3.number_input("Seed", 0, 10_000, 0, key="w_bias_seed")
n_test = common.run_size("w_bias", 8 if is_tiny else 24, 16 if is_tiny else 200)
if ds is None or len(ds.labels) != 2:
    st.info("The label-ratio experiment uses two-label datasets (sst2, amazon_polarity).")
    st.stop()
setup_words = ("foo", "bar")
tab1, tab2, tab3 = st.tabs(["Label ratio", "Majority bias (paper metric)", "Recency bias (paper metric)"])


def _bar(label):
    bar = st.progress(0.0, text=label)
    return bar, lambda d, t, note: bar.progress(min(1.0, d / max(t, 1)), text=f"{label}: {d}/{t} {note}")


with tab1:
    total = st.number_input("Demonstrations in all", 2, 16, 6, key="w_ratio_total")
    n_first = st.slider(f"of which labelled {setup_words[0]}", 0, int(total), int(total) // 2, key="w_ratio_first")
    if common.was_stopped("ratio"):
        st.warning("The last label-ratio run was stopped before it finished.")
    if st.button("Run the label-ratio comparison", key="w_ratio_go"):
        setup = EvalSetup(ds, k_per_label=[int(n_first), int(total - n_first)], n_test=int(n_test), seeds=(int(seed),),
                          label_words=setup_words, template=ss.template)
        frames = []
        try:
            with common.ProgressRun("Label ratio", "ratio") as run:
                plans = (("no fix", Plan()), ("majority fix", Plan("majority_fix", tuple(heads))))
                for i, (name, plan) in enumerate(plans):
                    def cb(d, t, note, i=i):
                        return run(i * t + d, 2 * t, note)
                    res = evaluate(lm, setup, plan, progress=cb)
                    frames.append(share_table(res.rows, setup_words).assign(condition=name))
            ss.ratio_table = pd.concat(frames, ignore_index=True)[["condition", "quantity", "n", "value", "ci_low",
                                                                   "ci_high"]]
            ss.ratio_counts = {setup_words[0]: int(n_first), setup_words[1]: int(total - n_first)}
        except Cancelled as exc:
            st.warning(str(exc))
        except (ValueError, RuntimeError) as exc:
            st.error(common.safe(exc))
    if ss.get("ratio_table") is not None:
        counts = ss.ratio_counts
        st.caption("Demonstrations: " + " / ".join(f"{c} {w}" for w, c in counts.items())
                   + f" · n = {int(ss.ratio_table['n'].iloc[0])} test sentences · bars: 95% Wilson intervals")
        text, warning = ratio_reading(ss.ratio_table, counts)
        st.markdown(text)
        if warning:
            st.warning(warning)
        fig = bias_bars(ss.ratio_table, "quantity", "value", y_title="share of test sentences", x_title="")
        st.plotly_chart(fig, key="fig_ratio")
        common.csv_download(ss.ratio_table, "label_ratio.csv")

for tab, kind, fn_name in ((tab2, "majority", "majority_bias"), (tab3, "recency", "recency_bias")):
    with tab:
        if st.button(f"Measure {kind} bias", key=f"w_{kind}_go"):
            fn = common.analysis("bias", fn_name)
            if fn is not None:
                setup = EvalSetup(ds, k_per_label=3, n_test=int(n_test), seeds=(int(seed),), label_words=setup_words,
                                  template=ss.template)
                try:
                    with common.ProgressRun(f"{kind} bias", kind) as run:
                        ss[f"{kind}_result"] = fn(lm, setup, heads, progress=run)
                except Cancelled as exc:
                    st.warning(common.safe(exc))
                except (ValueError, RuntimeError, TypeError) as exc:
                    st.error(common.safe(f"The measurement failed: {exc}"))
        elif common.was_stopped(kind):
            st.warning(f"The last {kind}-bias run was stopped before it finished.")
        res = ss.get(f"{kind}_result")
        if res is not None:
            for note in res.notes:
                st.info(note)
            text, warning, intervals = bias_reading(res)
            st.markdown(text)
            if warning:
                st.warning(warning)
            st.dataframe(intervals, key=f"tbl_{kind}_intervals")
            with st.expander("The paper's summary table"):
                st.dataframe(res.summary, key=f"tbl_{kind}_summary")
            x = "arrangement" if "arrangement" in res.rows.columns else res.rows.columns[1]
            fig = bias_bars(res.rows, x, "accuracy", y_title="accuracy", x_title=x)
            st.plotly_chart(fig, key=f"fig_{kind}")
            common.csv_download(res.rows, f"{kind}_bias.csv")
            st.download_button("Figure (HTML)", figure_html(fig).encode(), file_name=f"{kind}_bias.html",
                               mime="text/html", key=f"dl_{kind}_html")
