"""Head finder: per-head importance over a dataset sample, the chosen in-context heads, the intervention table."""

import streamlit as st

from iclviz.app_support import head_name
from iclviz.evaluation import Cancelled, EvalSetup
from iclviz.heads import default_layers, default_top_n
from iclviz.lens import SCALINGS
from iclviz.plots import figure_html, heatmap_selection, importance_heatmap, intervention_bars
from pages import common

ss = st.session_state
common.page_setup()
st.title("Head finder")
common.help_text(
    "Each cell is a head's importance: how much adding its output at the last position T raises the log-probability "
    "of the correct label word, averaged over prompts from a dataset (the authors' attribution method). The top "
    "heads, about 1% of all, are the in-context heads; the intervention table checks them against as many random "
    "heads of the same layers.")

lm = common.get_model()
if lm is None:
    st.stop()
heads = common.chosen_heads(lm)
is_tiny = lm.n_layers * lm.n_heads < 50

ds = common.dataset_picker("w_hf_dataset")
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


def _setup():
    return EvalSetup(ds, k_per_label=int(k), n_test=int(n_test), seeds=seeds, template=ss.template)


def _progress_bar(label):
    bar = st.progress(0.0, text=label)

    def cb(done, total, note):
        bar.progress(min(1.0, done / max(total, 1)), text=f"{label}: {done}/{total} {note}")

    return bar, cb


if ss.pop("scan_running", False):
    st.warning("The last scan was stopped before it finished.")
if go and ds is not None:
    ss.scan_running = True
    st.button("Stop", key="w_stop_scan")
    bar, cb = _progress_bar("Scanning heads")
    try:
        scan = common.locate_heads(lm, _setup(), scaling, list(range(layer_range[0], layer_range[1] + 1)),
                                   int(batch), cb)
        ss.scan = scan
        ss.scan_inputs = f"{ds.name}, {k}/label, {n_test} sentences x {len(seeds)} seeds, {scaling}"
    except Cancelled as exc:
        st.warning(str(exc))
    except (ValueError, RuntimeError) as exc:
        st.error(f"The scan failed: {exc}")
    ss.scan_running = False
    bar.empty()

scan = ss.get("scan")
if scan is None or (scan.n_layers, scan.n_heads) != (lm.n_layers, lm.n_heads):
    st.info("No scan yet for this model: choose a dataset sample and press **Scan heads**. Until then the pages use "
            f"the default heads {', '.join(map(head_name, heads))}.")
else:
    st.caption(f"Scan over {scan.n_prompts} prompts ({ss.get('scan_inputs', '')}).")
    tabs = st.tabs(["overall (gold label)"] + [f"raises {w}" for w in scan.label_words])
    clicked = []
    for tab, label in zip(tabs, [None, *scan.label_words]):
        with tab:
            fig = importance_heatmap(scan.matrix(label), "importance" + (f" for {label}" if label else ""), heads)
            event = st.plotly_chart(fig, key=f"fig_heat_{label}", on_select="rerun",
                                    selection_mode=("points", "box"))
            clicked += heatmap_selection(event)
            st.download_button("Heatmap (HTML)", figure_html(fig).encode(), file_name=f"importance_{label}.html",
                               mime="text/html", key=f"dl_heat_{label}")
    common.csv_download(scan.table, "head_importance.csv", "Importance per head and label (CSV)")

    st.subheader("Choose the in-context heads")
    n_default = default_top_n(lm.n_layers * lm.n_heads)
    t1, t2 = st.columns([1, 3])
    n_top = t1.number_input("Top N", 1, lm.n_layers * lm.n_heads, n_default, key="w_hf_topn")
    if t1.button("Use the top N", key="w_use_top"):
        common.set_heads(scan.top(int(n_top)))
        st.rerun()
    top = scan.top(int(n_top))
    by_label = scan.top_by_label(int(n_top))
    clicked = sorted(set(clicked))
    if clicked:
        t2.markdown("Selected cells: " + ", ".join(map(head_name, clicked)))
        if t2.button("Use the selected cells as the in-context heads", key="w_use_clicked"):
            common.set_heads(clicked)
            st.rerun()
    else:
        t2.caption("Click cells of the heatmap (shift-click or box-select for several) to pick heads.")
    t2.markdown("Top heads: " + ", ".join(map(head_name, top)))
    t2.markdown(" · ".join(f"{w} heads: {', '.join(map(head_name, hs)) or 'none'}" for w, hs in by_label.items()))

all_heads = [head_name((a, b)) for a in range(lm.n_layers) for b in range(lm.n_heads)]
picked = st.multiselect("Chosen in-context heads (used by every page)", all_heads, default=list(map(head_name, heads)),
                        key=f"w_pick_{'_'.join(map(head_name, heads))}")
if picked and picked != list(map(head_name, heads)):
    common.set_heads([common.heads_from_text(p)[0] for p in picked])
    st.rerun()

st.subheader("Intervention table")
st.caption("Accuracy with no intervention, with the chosen heads intervened, and with as many random heads of the "
           "same layers (the control), on the dataset sample above.")
with st.form("iv_form"):
    i1, i2 = st.columns(2)
    kinds = i1.multiselect("Interventions", ["ablate", "knockout"], default=["ablate", "knockout"], key="w_iv_kinds")
    draws = i2.number_input("Random draws", 1, 10, 2 if is_tiny else 3, key="w_iv_draws")
    go_iv = st.form_submit_button("Run the intervention table")
if go_iv and ds is not None and kinds:
    st.button("Stop", key="w_stop_iv")
    bar, cb = _progress_bar("Evaluating")
    try:
        ss.iv_table = common.intervention_table(lm, _setup(), heads, tuple(kinds), int(draws), 0, int(batch), cb)
    except Cancelled as exc:
        st.warning(str(exc))
    except (ValueError, RuntimeError) as exc:
        st.error(f"The evaluation failed: {exc}")
    bar.empty()
table = ss.get("iv_table")
if table is not None:
    view = table.copy()
    view["condition"] = view["heads"] + " " + view["kind"] + [f" #{d}" if d >= 0 else "" for d in view["draw"]]
    st.plotly_chart(intervention_bars(view), key="fig_iv")
    st.dataframe(table, key="tbl_iv")
    common.csv_download(table, "intervention_table.csv")
