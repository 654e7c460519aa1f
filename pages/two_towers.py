"""Two towers: label swap (attention moves, label vectors stay) and query-key score vs similarity."""

import streamlit as st

from iclviz.analyses.compare import reorder, swap_all_labels
from iclviz.analyses.evaluation import EvalSetup
from iclviz.analyses.heads import control_heads
from iclviz.analyses.label_swap import label_swap_table, summarize_label_swap
from iclviz.analyses.two_towers import default_sim_layer, rank_correlations, two_towers_table
from iclviz.outputs.plots import score_similarity_scatter, swap_bars, towers_patch_bars
from iclviz.prompt import PromptError
from iclviz.validation import ValidationError, head_name
from pages.parts import common, state
from pages.parts.long_run import run_with_progress
from pages.parts.runs import label_swap_current, score_similarity_current, towers_patch_specs
from pages.parts.widgets import chart, csv_download, dataset_picker, downloads, run_size, safe

ss = st.session_state
common.page_setup(
    "Two towers",
    "Swap every demonstration's label and the prediction follows, yet each head's value-output vectors still map "
    "foo positions to foo and bar positions to bar: what changes is where the head's attention from T goes. The "
    "query matrix at T and the key matrix at each label position act as two towers computing a similarity "
    "between the query and each demonstration, so the score should rise with the query-demonstration similarity.")

lm, heads, prompt = common.model_heads_prompt()
words = prompt.label_words

st.subheader("Label swap")
table = label_swap_current(lm, heads)
if table is not None:
    wide = table.pivot_table(index="head_name", columns="condition",
                             values=[f"attn_{w}" for w in words] + ["vo_logit_minus_first", "vo_logit_minus_second"],
                             sort=False)
    wide.columns = [f"{a} ({b})" for a, b in wide.columns]
    wide = wide.reset_index()
    preds = table.groupby("condition")["pred"].first()
    st.markdown("Prediction: " + " → ".join(f"{c}: `{str(p).replace('`', 'ˋ')}`" for c, p in preds.items()))
    cols = [c for c in wide.columns if c.startswith("attn_")]
    cond_words = {"original": "original labels", "swapped": "labels swapped"}

    def _name(col):
        q, cond = col.rsplit(" (", 1)
        cond = cond_words.get(cond.rstrip(")"), cond.rstrip(")"))
        if q.startswith("attn_"):
            return f"on {q[5:]} positions, {cond}"
        at = words[0] if q.endswith("first") else words[1]
        return f"at {at} positions, {cond}"

    names = {c: _name(c) for c in wide.columns if c != "head_name"}
    fig = swap_bars(wide, cols, id_col="head_name", names=names, y_title="attention from T")
    s1, s2 = st.columns(2)
    s1.markdown("**Attention from T on each label's positions**")
    chart(where=s1, fig=fig, key="fig_swap_attn", name="label_swap")
    vo_cols = [c for c in wide.columns if c.startswith("vo_")]
    s2.markdown("**" + safe(f"Value-output logit minus ({words[0]}−{words[1]}) at {words[0]} / {words[1]} positions")
                + "**")
    chart(where=s2, fig=swap_bars(wide, vo_cols, id_col="head_name", names=names,
                                  y_title=f"logit {words[0]} − logit {words[1]}"), key="fig_swap_vo")
    st.dataframe(table, key="tbl_swap")
    downloads(table, "label_swap.csv", fig, "label_swap.html", "Attention figure (HTML)")


DONORS = {"labels swapped": "every demonstration's label swapped (the label swap)",
          "order reversed": "the demonstrations in reverse order"}


@st.fragment
def towers_causally():
    """Its donor and positions choices rerun only this section."""
    st.subheader("The two towers, causally: patch the query, the keys or the values")
    st.caption("The paper's claim, in this form: the query at T and the keys at the label positions (q, k) decide "
               "where T's attention goes; the values (v) carry the label that arrives. Below, in the chosen heads "
               "only, the query at T, the keys or the values at the label positions of prompt A (the current "
               "prompt) are replaced by those of prompt B, and the prediction of A is read again; the numbers are "
               "this model's on this prompt.")
    state.keep("w_tp_on")
    on = st.toggle("Run the patch (about as long as the label swap above)", key="w_tp_on",
                   help="deferred so that the page opens fast; it stays on for this session")
    state.kept("w_tp_on")
    if not on:
        return
    c1, c2 = st.columns(2)
    donor = c1.radio("Prompt B (the donor)", list(DONORS), key="w_tp_donor", horizontal=True,
                     captions=list(DONORS.values()))
    positions = c2.radio("Keys and values patched at", ["labels", "all"], key="w_tp_positions", horizontal=True,
                         captions=["the label positions (matched by demonstration)",
                                   "every position (prompts of equal length)"])
    a = state.current_spec()
    b = swap_all_labels(a) if donor == "labels swapped" else reorder(a, list(reversed(range(len(a.demos)))))
    try:
        with st.spinner("Patching the heads (all conditions in one batch)"):
            tp = towers_patch_specs(lm, a, b, heads, positions)
    except (PromptError, ValidationError, ValueError, RuntimeError) as exc:
        st.error(safe(f"The patch cannot be run: {exc}"))
        return
    fig3 = towers_patch_bars(tp.summary, words)
    chart(fig3, key="fig_tp", name="towers_patch")
    st.dataframe(tp.summary, key="tbl_tp", hide_index=True)
    st.markdown("**Attention from T on each label's positions, per head and condition**")
    st.dataframe(tp.per_head.pivot_table(index="head", columns="condition", values=[f"attn_{w}" for w in words],
                                         sort=False), key="tbl_tp_heads")
    for note in tp.notes:
        st.caption(safe(f"note: {note}"))
    downloads(tp.summary, "towers_patch.csv", fig3, "towers_patch.html", "Patch figure (HTML)")


towers_causally()


@st.fragment
def score_vs_similarity():
    """Its layer slider and control checkbox rerun only this section."""
    st.subheader("Query-key score vs query-demonstration similarity")
    state.keep("w_tt_on")
    on = st.toggle("Compute the scores and similarities", key="w_tt_on",
                   help="deferred so that the page opens fast; it stays on for this session")
    state.kept("w_tt_on")
    if not on:
        return
    c1, c2 = st.columns(2)
    sim_layer = c1.slider("Similarity layer (mean hidden states entering it, cosine)", 0, lm.n_layers - 1,
                          default_sim_layer(lm.n_layers), key="w_tt_layer")
    with_control = c2.checkbox("Add as many random heads (control)", key="w_tt_ctrl")
    use = list(heads) + (control_heads(heads, lm.n_layers, lm.n_heads, 0) if with_control else [])
    df = score_similarity_current(lm, use, int(sim_layer)).copy()
    df["head"] = df["head_name"]
    icl_names = set(map(head_name, heads))
    df["group"] = ["in-context" if h in icl_names else "random (control)" for h in df["head_name"]]
    fig2 = score_similarity_scatter(df, words)
    chart(fig2, key="fig_tt", name="score_similarity")
    if len(prompt.label_positions) >= 3:
        corr = rank_correlations(df.assign(prompt=0))
        if not corr.empty:  # one prompt: one correlation per head, no spread to show
            corr = corr[["group", "head_name", "mean_rho"]].rename(
                columns={"head_name": "head", "mean_rho": "Spearman ρ, score vs similarity (this prompt)"})
        st.dataframe(corr, key="tbl_tt_corr", hide_index=True)
    st.dataframe(df, key="tbl_tt")
    downloads(df, "score_similarity.csv", fig2, "score_similarity.html", "Scatter (HTML)")


score_vs_similarity()


st.subheader("Over a dataset sample")
st.caption("The same two comparisons averaged over test sentences of a dataset, with as many random heads of the same "
           "layers as the control for the score-similarity correlation.")
ds = dataset_picker("w_tt_dataset")
n1, n3 = st.columns(2)
is_tiny = lm.n_layers * lm.n_heads < 50
k_tt = n1.number_input("Demonstrations per label", 1, 16, 3 if is_tiny else 4, key="w_tt_k")
seed_tt = n3.number_input("Seed", 0, 10_000, 0, key="w_tt_seed")
n_tt = run_size("w_tt", 4 if is_tiny else 16, 8 if is_tiny else 100)


def _over_sample(run):
    """Label swap (2 conditions x n prompts), then two towers (n prompts), on one progress bar."""
    setup = EvalSetup(ds, k_per_label=int(k_tt), n_test=int(n_tt), seeds=(int(seed_tt),), template=ss.template)
    swap = summarize_label_swap(label_swap_table(
        lm, setup, heads, progress=lambda d, t, note: run(d + (t if "swapped" in note else 0), 3 * t, note)))
    control = control_heads(heads, lm.n_layers, lm.n_heads, 0)
    corr = rank_correlations(two_towers_table(
        lm, setup, heads, control, progress=lambda d, t, note: run(2 * t + d, 3 * t, note)))
    return swap, corr


go_tt = ds is not None and st.button("Run over the sample", key="w_tt_go")
done = run_with_progress(go_tt, "Label swap and two towers", "tt", _over_sample, "The run failed",
                         "The last run over the sample was stopped before it finished.")
if done is not None:
    ss.tt_swap, ss.tt_corr = done
if ss.get("tt_swap") is not None:
    st.markdown("**Label swap over the sample** (attention on the gold word's positions, value-output agreement)")
    st.dataframe(ss.tt_swap, key="tbl_tt_swap_sample")
    csv_download(ss.tt_swap, "label_swap_sample.csv", key="dl_tt_swap_sample")
if ss.get("tt_corr") is not None:
    st.markdown("**Rank correlation of query-key score and similarity** (in-context vs random heads)")
    st.dataframe(ss.tt_corr, key="tbl_tt_corr_sample")
    csv_download(ss.tt_corr, "score_similarity_sample.csv", key="dl_tt_corr_sample")
