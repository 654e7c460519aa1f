"""Two towers: label swap (attention moves, label vectors stay) and query-key score vs similarity."""

import streamlit as st

from iclviz.app_support import control_heads
from iclviz.plots import figure_html, score_similarity_scatter, swap_bars
from pages import common

ss = st.session_state
common.page_setup()
st.title("Two towers")
common.help_text(
    "Swap every demonstration's label and the prediction follows, yet each head's value-output vectors still map "
    "foo positions to foo and bar positions to bar: what changes is where the head's attention from T goes. The "
    "query matrix at T and the key matrix at each label position act as two towers computing a similarity "
    "between the query and each demonstration, so the score should rise with the query-demonstration similarity.")

lm = common.get_model()
if lm is None:
    st.stop()
heads = common.chosen_heads(lm)
prompt = common.current_prompt(lm)
if prompt is None:
    st.info("Fix the prompt on the Prompt lab page.")
    st.stop()
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
    st.markdown("Prediction: " + " → ".join(f"{c}: `{p}`" for c, p in preds.items()))
    cols = [c for c in wide.columns if c.startswith("attn_")]
    fig = swap_bars(wide, cols, id_col="head_name")
    s1, s2 = st.columns(2)
    s1.markdown("**Attention from T on each label's positions**")
    s1.plotly_chart(fig, key="fig_swap_attn")
    vo_cols = [c for c in wide.columns if c.startswith("vo_")]
    s2.markdown(f"**Value-output logit minus ({words[0]}−{words[1]}) at {words[0]} / {words[1]} positions**")
    s2.plotly_chart(swap_bars(wide, vo_cols, id_col="head_name"), key="fig_swap_vo")
    st.dataframe(table, key="tbl_swap")
    d1, d2 = st.columns(2)
    with d1:
        common.csv_download(table, "label_swap.csv")
    with d2:
        st.download_button("Attention figure (HTML)", figure_html(fig).encode(), file_name="label_swap.html",
                           mime="text/html")

st.subheader("Query-key score vs query-demonstration similarity")
if common.analysis("two_towers", "score_similarity") is not None:
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
        corr = df.groupby("head_name").apply(
            lambda g: g["score"].rank().corr(g["similarity"].rank()), include_groups=False).rename("spearman")
        st.dataframe(corr.to_frame(), key="tbl_tt_corr")
    st.dataframe(df, key="tbl_tt")
    d1, d2 = st.columns(2)
    with d1:
        common.csv_download(df, "score_similarity.csv")
    with d2:
        st.download_button("Scatter (HTML)", figure_html(fig2).encode(), file_name="score_similarity.html",
                           mime="text/html")
