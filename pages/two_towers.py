"""Two towers: label swap (attention moves, label vectors stay) and query-key score vs similarity."""

import streamlit as st

from iclviz.app_support import control_heads
from iclviz.evaluation import Cancelled, EvalSetup
from iclviz.label_swap import label_swap_table, summarize_label_swap
from iclviz.plots import score_similarity_scatter, swap_bars
from iclviz.two_towers import rank_correlations, two_towers_table
from pages import common

ss = st.session_state
common.page_setup()
st.title("Two towers")
common.help_text(
    "Swap every demonstration's label and the prediction follows, yet each head's value-output vectors still map "
    "foo positions to foo and bar positions to bar: what changes is where the head's attention from T goes. The "
    "query matrix at T and the key matrix at each label position act as two towers computing a similarity "
    "between the query and each demonstration, so the score should rise with the query-demonstration similarity.")

lm, heads, prompt = common.model_heads_prompt()
words = prompt.label_words

st.subheader("Label swap")
table = common.prompt_analysis(lm, "label_swap", "label_swap_one", tuple(map(tuple, heads)))
if table is not None:
    wide = table.pivot_table(index="head_name", columns="condition",
                             values=[f"attn_{w}" for w in words] + ["vo_logit_minus_first", "vo_logit_minus_second"],
                             sort=False)
    wide.columns = [f"{a} ({b})" for a, b in wide.columns]
    wide = wide.reset_index()
    preds = table.groupby("condition")["pred"].first()
    st.markdown("Prediction: " + " → ".join(f"{c}: `{str(p).replace('`', 'ˋ')}`" for c, p in preds.items()))
    cols = [c for c in wide.columns if c.startswith("attn_")]
    fig = swap_bars(wide, cols, id_col="head_name")
    s1, s2 = st.columns(2)
    s1.markdown("**Attention from T on each label's positions**")
    s1.plotly_chart(fig, key="fig_swap_attn")
    vo_cols = [c for c in wide.columns if c.startswith("vo_")]
    s2.markdown(f"**Value-output logit minus ({words[0]}−{words[1]}) at {words[0]} / {words[1]} positions**")
    s2.plotly_chart(swap_bars(wide, vo_cols, id_col="head_name"), key="fig_swap_vo")
    st.dataframe(table, key="tbl_swap")
    common.downloads(table, "label_swap.csv", fig, "label_swap.html", "Attention figure (HTML)")

st.subheader("Query-key score vs query-demonstration similarity")
c1, c2 = st.columns(2)
default_layer = max(1, lm.n_layers // 4)
sim_layer = c1.slider("Similarity layer (mean hidden states entering it, cosine)", 0, lm.n_layers - 1,
                      default_layer, key="w_tt_layer")
with_control = c2.checkbox("Add as many random heads (control)", key="w_tt_ctrl")
use = list(heads) + (control_heads(heads, lm.n_layers, lm.n_heads, 0) if with_control else [])
df = common.prompt_analysis(lm, "two_towers", "score_similarity", tuple(map(tuple, use)), int(sim_layer)).copy()
df["head"] = df["head_name"]
fig2 = score_similarity_scatter(df, words)
st.plotly_chart(fig2, key="fig_tt")
if len(prompt.label_positions) >= 3:
    st.dataframe(rank_correlations(df.assign(prompt=0)), key="tbl_tt_corr")
st.dataframe(df, key="tbl_tt")
common.downloads(df, "score_similarity.csv", fig2, "score_similarity.html", "Scatter (HTML)")

st.subheader("Over a dataset sample")
st.caption("The same two comparisons averaged over test sentences of a dataset, with as many random heads of the same "
           "layers as the control for the score-similarity correlation.")
ds = common.dataset_picker("w_tt_dataset")
n1, n2, n3 = st.columns(3)
is_tiny = lm.n_layers * lm.n_heads < 50
k_tt = n1.number_input("Demonstrations per label", 1, 16, 3 if is_tiny else 4, key="w_tt_k")
n_tt = n2.number_input("Test sentences", 2, 1000, 4 if is_tiny else 16, key="w_tt_n")
seed_tt = n3.number_input("Seed", 0, 10_000, 0, key="w_tt_seed")
if ds is not None and st.button("Run over the sample", key="w_tt_go"):
    setup = EvalSetup(ds, k_per_label=int(k_tt), n_test=int(n_tt), seeds=(int(seed_tt),), template=ss.template)
    st.button("Stop", key="w_tt_stop")
    bar = st.progress(0.0, text="label swap and two towers")

    def cb(done, total, note):
        bar.progress(min(1.0, done / max(total, 1)), text=f"{note}: {done}/{total}")

    try:
        ss.tt_swap = summarize_label_swap(label_swap_table(lm, setup, heads, progress=cb))
        control = control_heads(heads, lm.n_layers, lm.n_heads, 0)
        ss.tt_corr = rank_correlations(two_towers_table(lm, setup, heads, control, progress=cb))
    except Cancelled as exc:
        st.warning(common.safe(exc))
    except (ValueError, RuntimeError) as exc:
        st.error(common.safe(f"The run failed: {exc}"))
    bar.empty()
if ss.get("tt_swap") is not None:
    st.markdown("**Label swap over the sample** (attention on the gold word's positions, value-output agreement)")
    st.dataframe(ss.tt_swap, key="tbl_tt_swap_sample")
    common.csv_download(ss.tt_swap, "label_swap_sample.csv", key="dl_tt_swap_sample")
if ss.get("tt_corr") is not None:
    st.markdown("**Rank correlation of query-key score and similarity** (in-context vs random heads)")
    st.dataframe(ss.tt_corr, key="tbl_tt_corr_sample")
    common.csv_download(ss.tt_corr, "score_similarity_sample.csv", key="dl_tt_corr_sample")
