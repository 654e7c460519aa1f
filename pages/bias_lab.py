"""Bias lab: majority-label and recency bias, with and without the in-context-head mitigations."""

import pandas as pd
import streamlit as st

from iclviz.app_support import label_mass
from iclviz.evaluation import Cancelled, EvalSetup, evaluate
from iclviz.interventions import Plan
from iclviz.plots import bias_bars, figure_html
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
rotary = lm.arch.positional == "rotary"

st.subheader("The current prompt")
if prompt is not None:
    words = prompt.label_words
    counts = {w: prompt.demo_labels.count(w) for w in words}
    st.markdown("Demonstrations per label: " + common.safe(", ".join(f"{w}: {n}" for w, n in counts.items()))
                + f" · last demonstration's label: `{prompt.demo_labels[-1].replace('`', 'ˋ')}`")
    plans = [("no fix", "none"), ("majority fix", "majority_fix")]
    if rotary:
        plans.append(("recency fix", "recency_fix"))
    rows = []
    for name, kind in plans:
        pred = common.predict_current(lm, kind, heads)
        mass = label_mass(prompt, pred.capture, heads)
        for w in words:
            rows.append({"condition": name, "label": w, "probability": pred.probs[w], "attention_mass": mass[w],
                         "predicted": pred.predicted})
    cur = pd.DataFrame(rows)
    c1, c2 = st.columns(2)
    c1.plotly_chart(bias_bars(cur, "label", "probability"), key="fig_bias_prob")
    c2.plotly_chart(bias_bars(cur, "label", "attention_mass"), key="fig_bias_mass")
    shown = cur.groupby("condition", sort=False)["predicted"].first().items()
    st.markdown(" · ".join(f"{c}: `{str(p).replace('`', 'ˋ')}`" for c, p in shown))
    if not rotary:
        st.info(f"{lm.name} has {lm.arch.positional} positions: the recency fix needs a rotary model.")
    n = len(ss.demos)
    order_text = st.text_input("Reorder the demonstrations (new order of 1..N, e.g. reverse)",
                               ", ".join(str(i) for i in range(1, n + 1)), key=f"w_order_{n}")
    try:
        order = [int(x) - 1 for x in order_text.replace(" ", "").split(",") if x]
        if sorted(order) != list(range(n)):
            st.error(f"Give each number from 1 to {n} once.")
        elif order != list(range(n)) and st.button("Apply this order", key="w_apply_order"):
            ss.demos = [ss.demos[i] for i in order]
            st.rerun()
    except ValueError:
        st.error("Write the order as numbers separated by commas.")
else:
    st.info("Fix the prompt on the Prompt lab page to see its readout here.")

st.subheader("Over a dataset sample")
is_tiny = lm.n_layers * lm.n_heads < 50
c1, c2, c3 = st.columns(3)
with c1:
    ds = common.dataset_picker("w_bias_dataset")
n_test = c2.number_input("Test sentences", 2, 1000, 8 if is_tiny else 24, key="w_bias_n")
seed = c3.number_input("Seed", 0, 10_000, 0, key="w_bias_seed")
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
    if st.button("Run the label-ratio comparison", key="w_ratio_go"):
        setup = EvalSetup(ds, k_per_label=[int(n_first), int(total - n_first)], n_test=int(n_test), seeds=(int(seed),),
                          label_words=setup_words, template=ss.template)
        rows = []
        try:
            for name, plan in (("no fix", Plan()), ("majority fix", Plan("majority_fix", tuple(heads)))):
                res = evaluate(lm, setup, plan)
                rows += [{"condition": name, "quantity": f"share {w}", "value": v}
                         for w, v in res.prediction_share().items()]
                rows.append({"condition": name, "quantity": "accuracy", "value": res.accuracy})
            ss.ratio_table = pd.DataFrame(rows)
            ss.ratio_inputs = f"{n_first} {setup_words[0]} / {total - n_first} {setup_words[1]}"
        except (ValueError, RuntimeError) as exc:
            st.error(common.safe(exc))
    if ss.get("ratio_table") is not None:
        st.caption(f"Demonstrations: {ss.ratio_inputs}")
        fig = bias_bars(ss.ratio_table, "quantity", "value")
        st.plotly_chart(fig, key="fig_ratio")
        common.csv_download(ss.ratio_table, "label_ratio.csv")

for tab, kind, fn_name in ((tab2, "majority", "majority_bias"), (tab3, "recency", "recency_bias")):
    with tab:
        if st.button(f"Measure {kind} bias", key=f"w_{kind}_go"):
            fn = common.analysis("bias", fn_name)
            if fn is not None:
                setup = EvalSetup(ds, k_per_label=3, n_test=int(n_test), seeds=(int(seed),), label_words=setup_words,
                                  template=ss.template)
                st.button("Stop", key=f"w_{kind}_stop")
                bar, cb = _bar(f"{kind} bias")
                try:
                    ss[f"{kind}_result"] = fn(lm, setup, heads, progress=cb)
                except Cancelled as exc:
                    st.warning(common.safe(exc))
                except (ValueError, RuntimeError, TypeError) as exc:
                    st.error(common.safe(f"The measurement failed: {exc}"))
                bar.empty()
        res = ss.get(f"{kind}_result")
        if res is not None:
            for note in res.notes:
                st.info(note)
            st.dataframe(res.summary, key=f"tbl_{kind}_summary")
            red = res.reduction()
            st.markdown(f"Measured reduction of the {kind} bias by the fix in the in-context heads: "
                        f"**{red:.0%}**" if red == red else "Reduction: not defined (no bias to reduce here).")
            x = "arrangement" if "arrangement" in res.rows.columns else res.rows.columns[1]
            fig = bias_bars(res.rows, x, "accuracy")
            st.plotly_chart(fig, key=f"fig_{kind}")
            common.csv_download(res.rows, f"{kind}_bias.csv")
            st.download_button("Figure (HTML)", figure_html(fig).encode(), file_name=f"{kind}_bias.html",
                               mime="text/html", key=f"dl_{kind}_html")
