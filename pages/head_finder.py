"""Head finder: per-head importance over a dataset sample, the chosen in-context heads, the intervention table."""

import streamlit as st

from iclviz.analyses.causal import KIND_TEXT, causal_scan, compare_rankings, null_distribution, verdict_line
from iclviz.analyses.context_heads import context_test
from iclviz.analyses.context_heads import head_parts as head_parts_of
from iclviz.analyses.evaluation import EvalSetup
from iclviz.analyses.heads import HEAD_RULES, default_layers, default_top_n, located_heads, located_on_other_datasets
from iclviz.analyses.locate import intervention_table, locate_heads
from iclviz.engine.lens import SCALINGS
from iclviz.outputs.figures import context_prior_scatter, head_heatmap, selected_heads
from iclviz.outputs.plots import importance_heatmap, intervention_bars, null_histogram
from iclviz.validation import head_name, parse_head
from pages.parts import common, state
from pages.parts.long_run import run_with_progress
from pages.parts.widgets import chart, csv_download, dataset_picker, html_download, safe

ss = st.session_state


common.page_setup(
    "Head finder",
    "Which heads carry in-context learning? The importance map scores each head by how much adding its output at "
    "the last position T raises the log-probability of the correct label word (the authors' attribution method). "
    "The causal scan knocks each head out alone and splits its effect into the part that follows the "
    "demonstrations (the in-context part) and a constant vote for one label (the prior): the app's in-context heads "
    "are ranked by the first. The tests below check the chosen heads against as many random heads of the same "
    "layers, on accuracy and on discrimination (AUC).")

lm = common.require_model()
heads = state.chosen_heads(lm)
is_tiny = lm.n_layers * lm.n_heads < 50

with st.container(border=True):
    st.markdown("**Default in-context heads: which rule chose them**")
    r1, r2 = st.columns([1, 2])
    rule = r1.radio("Rule", list(HEAD_RULES), format_func=lambda r: HEAD_RULES[r].split(" (")[0], key="w_head_rule",
                    index=list(HEAD_RULES).index(ss.get("head_rule", state.DEFAULT_HEAD_RULE)))
    found = located_heads(lm.name, rule)
    if found:
        t = found.get("test", {})
        r2.markdown(
            f"{HEAD_RULES[rule]}: **{', '.join(map(head_name, found['heads']))}**, located by `python -m iclviz "
            f"report` on {found['n_prompts']} SST-2 prompts (demonstration seed {found['seed']}).")
        if t and rule == "context":
            r2.caption(
                f"Measured on this model, {t['n_prompts']} held-out SST-2 prompts (the evaluate half of the test "
                f"split): knocking out their label attention moves the AUC {t['auc before']:.3f} -> "
                f"{t['auc after']:.3f} (lowest of {t['draws']} random sets of as many heads: "
                f"{t['auc null min']:.3f}), accuracy {t['accuracy before']:.1%} -> {t['accuracy after']:.1%}. "
                + ("Label voters (largest constant vote, listed apart): "
                   + ", ".join(map(head_name, map(tuple, found["voters"]))) + "." if found.get("voters") else ""))
            others = located_on_other_datasets(lm.name, rule)
            if others:
                r2.caption("The same rule on the report's other datasets (fresh prompts): " + "; ".join(
                    f"{o['dataset']}: {', '.join(map(head_name, o['heads']))} ({o['verdict_short'] or 'no verdict'})"
                    for o in others) + ".")
        elif t:
            r2.caption(
                f"Measured on this model, {t['n_prompts']} other SST-2 prompts: knocking out their label attention "
                f"moves accuracy {t['accuracy_none']:.1%} -> {t['accuracy_heads']:.1%} (as many random heads: "
                f"{t['accuracy_random_mean']:.1%}), a drop at the {t.get('acc_percentile', float('nan')):.0f}th "
                f"percentile of {t['draws']} random draws (p = {t.get('acc_p_empirical', float('nan')):.3f}).")
        if r2.button("Use these heads", key="w_use_rule_heads"):
            ss.head_rule = rule
            state.set_heads(found["heads"])
            st.rerun()
    else:
        r2.caption("The report has not located heads on this model: run a scan below (importance or causal).")

ds = dataset_picker("w_hf_dataset")
with st.form("scan_form"):
    c2, c3, c4 = st.columns(3)
    k = c2.number_input("Demonstrations per label", 1, 16, 4, key="w_hf_k")
    n_test = c3.number_input("Test sentences per seed", 2, 1000, 8 if is_tiny else 24, key="w_hf_n")
    seeds_text = c4.text_input("Seeds", "0", key="w_hf_seeds", help="comma separated, e.g. 0, 1, 2")
    c5, c6, c7 = st.columns([1, 2, 1])
    scaling = c5.selectbox("Scaling", SCALINGS, key="w_hf_scaling",
                           help="final_scale: the authors' scaling by the final residual's norm; final_norm: "
                                "re-normalize each vector (favours layer-0 heads)")
    dl = default_layers(lm.n_layers)
    layer_range = c6.slider("Layers", 0, lm.n_layers - 1, (dl[0], dl[-1]), key="w_hf_layers")
    batch = c7.number_input("Batch size", 1, 64, 8, key="w_hf_batch")
    go = st.form_submit_button("Scan heads", type="primary")

try:
    seeds = tuple(int(s) for s in seeds_text.replace(" ", "").split(",") if s)
except ValueError:
    st.error("Seeds must be whole numbers separated by commas.")
    st.stop()
if not seeds:
    st.error("Give at least one seed.")
    st.stop()


def _setup(quick: bool = False):
    """The dataset sample above (``quick``: 4 prompts of its first seed)."""
    if quick:
        return EvalSetup(ds, k_per_label=int(k), n_test=4, seeds=seeds[:1], template=ss.template)
    return EvalSetup(ds, k_per_label=int(k), n_test=int(n_test), seeds=seeds, template=ss.template)


def _layers() -> list[int]:
    return list(range(layer_range[0], layer_range[1] + 1))


def _heatmap(matrix, value: str, title: str, key: str) -> list[tuple[int, int]]:
    """A layer x head heatmap (altair); its clicked heads. The head clicked last, on any heatmap, becomes the
    page's selected head (the panel below follows it)."""
    event = st.altair_chart(head_heatmap(matrix.dropna(how="all"), value, title, heads), key=key,
                            on_select="rerun")
    return _follow_clicks(event, key, remember_source=True)


def _follow_clicks(event, key: str, remember_source: bool = False) -> list[tuple[int, int]]:
    """The heads a clickable chart reports; a new click moves the page's selected head (and, for a heatmap,
    which chart the "Selected cells" line follows)."""
    picked = selected_heads(event)
    if picked != ss.get(f"_picked_{key}", []):
        ss[f"_picked_{key}"] = picked
        if picked:
            ss.hf_focus = picked[-1]
            if remember_source:
                ss.hf_focus_from = key  # the "Selected cells" line follows the heatmap clicked last
    if remember_source and ss.get("hf_focus_from", key) != key:
        return []
    return picked


scan = run_with_progress(
    go and ds is not None, "Scanning heads (prompts)", "run_scan",
    lambda cb: locate_heads(lm, _setup(), scaling=scaling, layers=_layers(), batch_size=int(batch), progress=cb),
    "The scan failed", "The last scan was stopped before it finished.")
if scan is not None:
    ss.scan = scan
    ss.scan_inputs = f"{ds.name}, {k}/label, {n_test} sentences x {len(seeds)} seeds, {scaling}"

scan = ss.get("scan")
if scan is None or (scan.n_layers, scan.n_heads) != (lm.n_layers, lm.n_heads):
    st.info("No scan yet for this model: choose a dataset sample and press **Scan heads**. Until then the pages use "
            f"the default heads {', '.join(map(head_name, heads))}.")
else:
    st.caption(f"Scan over {scan.n_prompts} prompts ({ss.get('scan_inputs', '')}).")
    # The selected head's panel sits beside the heatmap (at 1366 px it was 700 px above, off-screen).
    hm_col, focus_col = st.columns([3, 2], gap="medium")
    focus_slot = focus_col.container()
    tabs = hm_col.tabs(["overall (gold label)"] + [f"raises {safe(w)}" for w in scan.label_words])
    clicked = []
    for tab, label in zip(tabs, [None, *scan.label_words]):
        with tab:
            title = "importance" + (f" for {label}" if label else "")
            clicked += _heatmap(scan.matrix(label), "importance", title, f"fig_heat_{label}")
            html_download(importance_heatmap(scan.matrix(label), title, heads), f"importance_{label}.html",
                          "Heatmap (HTML)", key=f"dl_heat_{label}")
    csv_download(scan.table, "head_importance.csv", "Importance per head and label (CSV)")

    st.subheader("Choose the in-context heads")
    n_default = default_top_n(lm.n_layers * lm.n_heads)
    t1, t2 = st.columns([1, 3])
    n_top = t1.number_input("Top N", 1, lm.n_layers * lm.n_heads, n_default, key="w_hf_topn")
    if t1.button("Use the top N", key="w_use_top"):
        state.set_heads(scan.top(int(n_top)))
        st.rerun()
    top = scan.top(int(n_top))
    by_label = scan.top_by_label(int(n_top))
    clicked = sorted(set(clicked))
    if clicked:
        t2.markdown("Selected cells: " + ", ".join(map(head_name, clicked)))
        if t2.button("Use the selected cells as the in-context heads", key="w_use_clicked"):
            state.set_heads(clicked)
            st.rerun()
    else:
        t2.caption("Click a cell of the heatmap to pick a head (shift-click for several; double-click clears).")
    t2.markdown("Top heads: " + ", ".join(map(head_name, top)))
    t2.markdown(" · ".join(f"{safe(w)} heads: {', '.join(map(head_name, hs)) or 'none'}" for w, hs in by_label.items()))

if scan is None or (scan.n_layers, scan.n_heads) != (lm.n_layers, lm.n_heads):
    focus_slot = st.container()  # the selected head's numbers, filled at the end (a click on any heatmap moves it)

all_heads = [head_name((a, b)) for a in range(lm.n_layers) for b in range(lm.n_heads)]
picked = st.multiselect("Chosen in-context heads (used by every page)", all_heads, default=list(map(head_name, heads)),
                        key=f"w_pick_{'_'.join(map(head_name, heads))}")
if picked and picked != list(map(head_name, heads)):
    state.set_heads([parse_head(p) for p in picked])
    st.rerun()

st.subheader("Intervention table")
st.caption("Accuracy with no intervention, with the chosen heads intervened, and with as many random heads of the "
           "same layers (the control), on the dataset sample above.")
with st.form("iv_form"):
    i1, i2 = st.columns(2)
    kinds = i1.multiselect("Interventions", ["ablate", "knockout"], default=["ablate", "knockout"], key="w_iv_kinds")
    draws = i2.number_input("Random draws", 1, 10, 2 if is_tiny else 3, key="w_iv_draws")
    go_iv = st.form_submit_button("Run the intervention table")
iv_table = run_with_progress(
    go_iv and ds is not None and bool(kinds), "Evaluating (conditions)", "run_iv",
    lambda cb: intervention_table(lm, _setup(), heads, kinds=tuple(kinds), random_draws=int(draws), seed=0,
                                  batch_size=int(batch), progress=cb),
    "The evaluation failed", "The last intervention table was stopped before it finished.")
if iv_table is not None:
    ss.iv_table = iv_table
table = ss.get("iv_table")
if table is not None:
    view = table.copy()
    view["condition"] = view["heads"] + " " + view["kind"] + [f" #{d}" if d >= 0 else "" for d in view["draw"]]
    chart(intervention_bars(view), key="fig_iv")
    st.dataframe(table, key="tbl_iv")
    csv_download(table, "intervention_table.csv")


st.subheader("Causal effect of each head")
st.caption("Each head of the chosen layers intervened **alone**, on the dataset sample above: its attention from T to "
           "every label position knocked out, or its output at T removed. All heads run as rows of one batch over each "
           "prompt's cache (about one forward pass per scanned layer per prompt: 4 prompts took about a minute on the "
           "default model on 2 shared CPU cores; a GPU is much faster). A head's support for the correct label (the "
           "drop of the gold margin when it is knocked out) splits in two: the **in-context part** (the label-balanced "
           "mean: it helps whichever label is gold, so it follows the demonstrations) and the **prior** (a constant "
           "vote for one label, whatever the query). The in-context heads are ranked by the first; label voters, which "
           "move accuracy without changing how well the model tells the classes apart, are listed by the second.")
with st.form("causal_form"):
    q1, q2 = st.columns([2, 1])
    cs_kinds = q1.multiselect("Interventions", ["knockout", "ablate_t"], default=["knockout"], key="w_cs_kinds",
                              format_func=lambda k: KIND_TEXT[k])
    cs_size = q2.radio("Size", ["quick: 4 prompts", "the sample above"], key="w_cs_size")
    go_cs = st.form_submit_button("Run the causal scan")
cs = run_with_progress(
    go_cs and ds is not None and bool(cs_kinds), "Causal scan (prompts)", "run_cs",
    lambda cb: causal_scan(lm, _setup(cs_size.startswith("quick")), layers=_layers(), kinds=tuple(cs_kinds),
                           progress=cb),
    "The causal scan failed", "The last causal scan was stopped before it finished.")
if cs is not None:
    ss.causal_scan = cs
cs = ss.get("causal_scan")
if cs is not None and (cs.n_layers, cs.n_heads) == (lm.n_layers, lm.n_heads):
    st.caption(f"Causal scan over {cs.n_prompts} prompts; without intervention: accuracy {cs.base['accuracy']:.1%}, "
               f"mean gold margin {cs.base['margin']:.2f}.")
    kind_tabs = st.tabs([KIND_TEXT[k] for k in cs.kinds])
    for tab, kind in zip(kind_tabs, cs.kinds):
        with tab:
            h1, h2 = st.columns(2)
            with h1:
                cs_clicked = sorted(set(_heatmap(cs.matrix(kind, "context_effect"), "context_effect",
                                                 f"{KIND_TEXT[kind]}: in-context part", f"fig_cs_{kind}")))
            with h2:
                parts = head_parts_of(cs, kind)
                ev = st.altair_chart(context_prior_scatter(parts, cs.label_words, heads), key=f"fig_scatter_{kind}",
                                     on_select="rerun")
                sc_picked = _follow_clicks(ev, f"scatter_{kind}")
                cs_clicked = sorted(set(cs_clicked) | set(sc_picked))
            if cs_clicked:
                st.markdown("Selected cells: " + ", ".join(map(head_name, cs_clicked)))
                if st.button("Use the selected cells as the in-context heads", key=f"w_use_cs_clicked_{kind}"):
                    state.set_heads(cs_clicked)
                    st.rerun()
            st.dataframe(head_parts_of(cs, kind).head(10), key=f"tbl_cs_{kind}", hide_index=True)
            voters = head_parts_of(cs, kind).sort_values("prior_effect", ascending=False).head(5)
            st.caption("Label voters (largest constant vote): " + ", ".join(
                f"{r.name} ({r.prior_effect:.2f} toward {safe(r.prior_toward)})" for r in voters.itertuples()))
    kind0 = cs.kinds[0]
    scan_imp = ss.get("scan")
    if scan_imp is not None and (scan_imp.n_layers, scan_imp.n_heads) == (lm.n_layers, lm.n_heads):
        cmp = compare_rankings(scan_imp.overall, cs, kind0, n=10)
        m1, m2 = st.columns(2)
        m1.metric("Rank correlation with importance (Spearman)", f"{cmp['spearman']:.2f}",
                  help=f"over {cmp['heads']} heads scanned by both")
        m2.metric("Top-10 overlap with importance", f"{cmp['overlap']} / 10")
    else:
        st.caption("Run the importance scan above to compare the two rankings.")
    n_cs = default_top_n(lm.n_layers * lm.n_heads)
    cs_n = st.number_input("Top N by the in-context part", 1, lm.n_layers * lm.n_heads, n_cs, key="w_cs_topn")
    st.markdown("Top by the in-context part: " + ", ".join(map(head_name, cs.top(int(cs_n), kind0,
                                                                                  by="context_effect"))))
    if st.button("Use the top N by the in-context part", key="w_use_causal"):
        ss.head_rule = "context"
        state.set_heads(cs.top(int(cs_n), kind0, by="context_effect"))
        st.rerun()
    csv_download(cs.table, "causal_scan.csv", "Causal scan (CSV)", key="dl_cs")

st.subheader("The chosen heads against random heads")
st.caption(f"The chosen heads ({', '.join(map(head_name, heads))}) intervened together, against many random sets of as "
           "many heads from the chosen layers, every set on the same prompts. Where the chosen heads' effect falls in "
           "that distribution (its percentile, an empirical p-value) says whether they matter more than any heads do.")
with st.form("null_form"):
    n1, n2, n3 = st.columns(3)
    null_kind = n1.selectbox("Intervention", ["knockout", "ablate_t", "ablate"], key="w_null_kind",
                             format_func=lambda k: KIND_TEXT[k])
    null_draws = n2.number_input("Random draws", 10, 500, 50, key="w_null_draws",
                                 help="at least 50 for a percentile worth reading")
    null_size = n3.radio("Size", ["quick: 4 prompts", "the sample above"], key="w_null_size")
    go_null = st.form_submit_button("Test against random heads")
nt = run_with_progress(
    go_null and ds is not None, "Null distribution (prompts)", "run_null",
    lambda cb: null_distribution(lm, _setup(null_size.startswith("quick")), heads, kind=null_kind,
                                 n_draws=int(null_draws), layers=_layers(), progress=cb),
    "The test failed", "The last test against random heads was stopped before it finished.")
if nt is not None:
    ss.null_test = nt
nt = ss.get("null_test")
if nt is not None and all(0 <= a < lm.n_layers and 0 <= b < lm.n_heads for a, b in nt.heads):
    v = nt.verdict
    s1, s2, s3, s4 = st.columns(4)
    s1.metric("Accuracy", f"{v['accuracy_heads']:.1%}", f"{v['accuracy_heads'] - v['accuracy_none']:+.1%} vs none",
              help=f"random sets: {v['accuracy_random_mean']:.1%} on average")
    s2.metric("Accuracy drop: percentile among random", f"{v['acc_percentile']:.0f}",
              help=f"{v['draws']} draws; empirical p = {v['acc_p_empirical']:.3f}")
    s3.metric("Mean |margin change|", f"{v['abs_change']:.2f}",
              help=f"{v['abs_percentile']:.0f}th percentile among random sets; heads that vote for one label move "
                   "the margin both ways, so the signed mean can hide them")
    s4.metric("McNemar p vs median random", f"{v['mcnemar_vs_median_random']['p']:.2g}")
    st.markdown(f"**{verdict_line(v)}.**")
    chart(null_histogram(100 * nt.null("acc_drop"), 100 * v["acc_drop"], "accuracy drop (points)"), key="fig_null")
    csv_download(nt.summary, "null_distribution.csv", "Null distribution (CSV)", key="dl_null")


st.subheader("Do the chosen heads carry in-context learning? Discrimination against random heads")
st.caption("Accuracy moves when a label prior shifts; whether the model still tells the classes apart is read from "
           "the AUC of the margin against the gold label and from the accuracy at a recentred threshold (the median "
           "margin). The chosen heads' label attention knocked out, against many random sets of as many heads from the "
           "chosen layers, every set on the same prompts.")
with st.form("disc_form"):
    e1, e2 = st.columns(2)
    disc_draws = e1.number_input("Random draws", 5, 500, 20, key="w_disc_draws",
                                 help="20 to see whether the heads are beyond every draw; 50 or more for a percentile")
    disc_size = e2.radio("Size", ["quick: 8 prompts", "the sample above"], key="w_disc_size")
    go_disc = st.form_submit_button("Test discrimination against random heads")


def _disc_setup():
    s = _setup(False)
    return EvalSetup(ds, k_per_label=int(k), n_test=8, seeds=seeds[:1], template=ss.template) \
        if disc_size.startswith("quick") else s


dt = run_with_progress(
    go_disc and ds is not None, "Discrimination test (prompts)", "run_disc",
    lambda cb: context_test(lm, _disc_setup(), heads, sizes=(len(heads),), n_draws=int(disc_draws),
                            layers=_layers(), progress=cb),
    "The test failed", "The last discrimination test was stopped before it finished.")
if dt is not None:
    ss.disc_test = dt
dt = ss.get("disc_test")
if dt is not None and all(0 <= a < lm.n_layers and 0 <= b < lm.n_heads for a, b in dt.ranking):
    dv = dt.verdict(f"top:{len(dt.ranking)}", n_resamples=500)
    d1, d2, d3 = st.columns(3)
    d1.metric("AUC", f"{dv['auc before']:.3f} → {dv['auc after']:.3f}",
              help=f"lowest of {dv['draws']} random sets: {dv['auc null min']:.3f}; percentile of the drop "
                   f"{dv['auc percentile']:.0f}")
    d2.metric("Recentred accuracy", f"{dv['recentred_accuracy before']:.1%} → {dv['recentred_accuracy after']:.1%}")
    d3.metric("Accuracy", f"{dv['accuracy before']:.1%} → {dv['accuracy after']:.1%}")
    st.markdown(f"**{safe(dv['reading'])}.**")
    chart(null_histogram(dt.null(len(dt.ranking))["auc"], dv["auc after"], "AUC with the heads knocked out"),
          key="fig_disc_null")
    csv_download(dt.table(), "discrimination_test.csv", "Discrimination test (CSV)", key="dl_disc")


def _focus_panel(head) -> None:
    """The numbers the page has for the one selected head: its importance per label, its causal effects, its rank."""
    name = head_name(head)
    with focus_slot.container(border=True):
        st.markdown(f"**Selected head {name}** (click a cell of a heatmap to follow another head)"
                    + (" — one of the chosen in-context heads" if tuple(head) in set(heads) else ""))
        shown = False
        imp = ss.get("scan")
        if imp is not None and (imp.n_layers, imp.n_heads) == (lm.n_layers, lm.n_heads):
            row = imp.overall[(imp.overall["layer"] == head[0]) & (imp.overall["head"] == head[1])]
            if len(row) and row["importance"].notna().all():
                ranked = imp.overall.dropna(subset=["importance"]).sort_values("importance", ascending=False)
                rank = [(int(a), int(b)) for a, b in zip(ranked["layer"], ranked["head"])].index(tuple(head)) + 1
                per = imp.table[(imp.table["layer"] == head[0]) & (imp.table["head"] == head[1])]
                st.markdown(f"Importance (gold label) {float(row['importance'].iloc[0]):.4f}, rank {rank} of "
                            f"{len(ranked)}; favours `{safe(row['favours'].iloc[0])}`. Per label: "
                            + ", ".join(f"{safe(r.label)} {r.importance:.4f} (n = {r.n})" for r in per.itertuples()))
                shown = True
        cs_ = ss.get("causal_scan")
        if cs_ is not None and (cs_.n_layers, cs_.n_heads) == (lm.n_layers, lm.n_heads):
            rows = cs_.table[(cs_.table["layer"] == head[0]) & (cs_.table["head"] == head[1])]
            if len(rows):
                st.dataframe(rows.drop(columns=["layer", "head"]).assign(head=name), key="tbl_focus_causal",
                             hide_index=True)
                shown = True
        if not shown:
            st.caption("No scan has measured this head yet (its layer is outside the scanned layers).")


if ss.get("hf_focus") is not None and all(0 <= x < n for x, n in zip(ss.hf_focus, (lm.n_layers, lm.n_heads))):
    _focus_panel(ss.hf_focus)
