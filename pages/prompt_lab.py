"""Prompt lab: edit an ICL prompt and watch the prediction and the in-context heads' label attention."""

import time

import pandas as pd
import streamlit as st

from iclviz.analyses.heads import control_heads
from iclviz.analyses.readout import first_flip, label_attention_table, label_sums, token_table
from iclviz.data import DataError, label_words_for, sample_demonstrations, sample_test
from iclviz.outputs.plots import (
    label_attention_bars,
    label_attention_compact,
    label_sum_bars,
    probability_bars,
    tokens_html,
    top_n_figure,
)
from iclviz.prompt import TEMPLATES
from iclviz.sharing import state_from_json
from iclviz.validation import ValidationError, check_demo_count, check_heads, head_name, parse_heads
from pages.parts import common, state
from pages.parts.runs import live_check_current, predict_current, top_n_current
from pages.parts.widgets import chart, csv_download, dataset_picker, html_download, safe

ss = st.session_state
common.page_setup(
    "Prompt lab",
    "Demonstrations are sentences with arbitrary label words (foo/bar); the model predicts the query's label at "
    "the last position T, and a few deep in-context heads carry that decision by attending from T to the label "
    "positions and copying the label they find there. Ablate those heads (or as many random heads, the control) "
    "and compare the prediction and the attention before and after; the panel on the right says, with live "
    "numbers, whether this model shows the effect on this prompt.")

msg = ss.pop("share_message", None)
if msg:
    getattr(st, msg[0])(msg[1])

lm = common.require_model()


# ---------------------------------------------------------------- editor callbacks

_sync_demos = state.sync_demos


def _move(i, step):
    _sync_demos()
    j = i + step
    if 0 <= j < len(ss.demos):
        ss.demos[i], ss.demos[j] = ss.demos[j], ss.demos[i]


def _delete(i):
    _sync_demos()
    ss.demos.pop(i)


def _add():
    _sync_demos()
    ss.demo_counter += 1
    words = state.valid_words()
    counts = {w: sum(d["label"] == w for d in ss.demos) for w in words}
    ss.demos.append({"id": ss.demo_counter, "text": "", "label": min(words, key=lambda w: counts[w])})


def _reverse():
    _sync_demos()
    ss.demos.reverse()


def _words_changed():
    _sync_demos()
    state.set_label_words(ss.w_label_words)  # an invalid entry leaves the demonstrations' labels as they were


def _sample(ds, k, seed):
    _sync_demos()
    try:  # a callback's exception would escape the page: keep the prompt and say why instead
        words = label_words_for(len(ds.labels)) if len(ds.labels) != len(ss.label_words) else tuple(ss.label_words)
        demos = sample_demonstrations(ds, int(k), int(seed))
        check_demo_count(len(demos), state.settings().max_demos)
        query = sample_test(ds, len(ds.labels), seed=int(seed))[0][0]
    except (DataError, ValidationError, IndexError) as exc:
        ss.sample_error = f"Could not sample from {ds.name}: {exc}"
        return
    ss.pop("sample_error", None)
    ss.demos = []
    for text, y in demos:
        ss.demo_counter += 1
        ss.demos.append({"id": ss.demo_counter, "text": text, "label": words[y]})
    ss.label_words = list(words)
    ss.label_words_valid = list(words)
    ss.w_label_words = ", ".join(words)
    ss.query = query
    ss.w_query = ss.query


def _bind(key, value):
    if key not in ss:
        ss[key] = value


# ---------------------------------------------------------------- layout

left, right = st.columns([6, 5], gap="large")
with left:
    st.subheader("Prompt")
    c1, c2 = st.columns(2)
    _bind("w_label_words", ", ".join(ss.label_words))
    c1.text_input("Label words (comma separated)", key="w_label_words", on_change=_words_changed,
                  help="Each must be a single token; the paper uses unrelated words like foo and bar.")
    state.set_label_words(ss.w_label_words)
    names = list(TEMPLATES)
    _bind("w_template", ss.template)
    c2.selectbox("Template", names, key="w_template",
                 format_func=lambda n: f"{n}: " + TEMPLATES[n].demo.replace("\n", " ⏎ "))
    ss.template = ss.w_template

    st.markdown("**Demonstrations**")
    # The pickers offer the last valid label words: while the typed ones are invalid, nothing is relabelled.
    words = state.valid_words()
    wkey = state.label_key()
    words_ok = state.label_words_ok(ss.label_words)
    for i, d in enumerate(ss.demos):
        cols = st.columns([7, 2.4, 1, 1, 1], vertical_alignment="bottom", gap="small")
        _bind(f"dt_{d['id']}", d["text"])
        # a text area wraps long (e.g. sampled) sentences instead of cutting them off
        cols[0].text_area(f"Demonstration {i + 1}", key=f"dt_{d['id']}", label_visibility="collapsed",
                          placeholder="a sentence", height=68)
        lk = f"dl_{d['id']}_{wkey}"
        if lk not in ss:
            ss[lk] = d["label"] if d["label"] in words else words[0]
        cols[1].selectbox(f"Label {i + 1}", words, key=lk, label_visibility="collapsed", disabled=not words_ok,
                          help=None if words_ok else "fix the label words first: the labels stay as they were")
        cols[2].button("", icon="⬆️", key=f"up_{d['id']}", on_click=_move, args=(i, -1),
                       help=f"move demonstration {i + 1} up")
        cols[3].button("", icon="⬇️", key=f"down_{d['id']}", on_click=_move, args=(i, 1),
                       help=f"move demonstration {i + 1} down")
        cols[4].button("", icon="🗑️", key=f"del_{d['id']}", on_click=_delete, args=(i,),
                       help=f"delete demonstration {i + 1}")
    _sync_demos()
    b1, b2, b3 = st.columns(3)
    full = len(ss.demos) >= state.settings().max_demos
    b1.button("Add demonstration", on_click=_add, key="w_add_demo", disabled=full,
              help=f"at most {state.settings().max_demos} demonstrations on this server" if full else None)
    b2.button("Reverse order", on_click=_reverse, key="w_reverse")
    b3.button("Undo last change", icon="↩️", on_click=state.undo, key="w_undo",
              disabled=not state.can_undo(), help="the prompt and heads as they were before the last change")

    _bind("w_query", ss.query)
    st.text_input("Query", key="w_query")
    ss.query = ss.w_query

    with st.expander("Sample from a dataset"):
        ds = dataset_picker("w_lab_dataset")
        s1, s2 = st.columns(2)
        k = s1.number_input("Demonstrations per label", 1, 16, 2, key="w_lab_k")
        seed = s2.number_input("Seed", 0, 10_000, 0, key="w_lab_seed")
        if ds is not None:
            st.button("Sample demonstrations and a query", on_click=_sample, args=(ds, k, seed), key="w_sample")
        if ss.get("sample_error"):
            st.error(safe(ss.sample_error))

    with st.expander("Load / save / share"):
        shared = state.current_state()
        st.download_button("Save prompt and heads (JSON)", shared.to_json().encode(), file_name="iclviz_prompt.json",
                           mime="application/json", key="w_save_json")
        up = st.file_uploader("Load a prompt (JSON)", type=["json"], key=f"w_upload_{ss.editor_version}")
        if up is not None and ss.get("last_upload") != up.file_id:
            ss.last_upload = up.file_id
            try:
                state.apply_state(state_from_json(up.getvalue()))
                ss.pop("w_label_words", None)
                ss.pop("w_query", None)
                ss.pop("w_template", None)
                ss.share_message = ("success", safe(f"Loaded {up.name}."))
                st.rerun()
            except ValueError as exc:
                st.error(safe(f"Could not load {up.name}: {exc}"))
        if st.button("Put the prompt and heads in the URL", key="w_share_url"):
            st.query_params["s"] = shared.to_query_param()
            st.query_params["mode"] = state.current_mode()
            st.success("The page address now holds this prompt and head set: copy it from the address bar.")

prompt = state.current_prompt(lm)
heads = state.chosen_heads(lm)
if ss.get("skipped_demos"):
    left.caption(f"Empty demonstration(s) {', '.join(map(str, ss.skipped_demos))} are skipped until you fill them.")

MODES = state.INTERVENTION_MODES


@st.fragment
def intervention_panel():
    """Controls and results of the intervention: changing them reruns only this panel."""
    st.subheader("Intervention")
    h_text = st.text_input("In-context heads (shared by all pages)", value=", ".join(map(head_name, heads)),
                           key=f"w_heads_{'_'.join(map(head_name, heads))}",
                           help="Found on the Head finder page; or type them, e.g. L21H1, L20H10.")
    try:
        typed = parse_heads(h_text)
        if typed and typed != heads:
            state.set_heads(check_heads(typed, lm.n_layers, lm.n_heads))
            st.rerun()
    except ValueError as exc:
        st.error(safe(exc))
    if "w_mode" not in ss:  # the session's mode, kept while other pages were open
        ss.w_mode = state.current_mode()
    mode = st.radio("Intervene on", MODES, horizontal=True, key="w_mode")
    if mode != state.current_mode():
        ss.mode = mode
        state.mode_to_url()
    i1, i2 = st.columns(2)
    n_default = min(len(heads), max(1, len(heads) // 2))
    for key, default in (("w_kind", None), ("w_rseed", 0), ("w_topn", n_default)):
        state.keep(key, default)
    if not 1 <= ss.get("w_topn", 1) <= max(1, len(heads)):  # fewer heads than when N was chosen
        ss.w_topn = n_default
    kind = i1.selectbox("How", ["knockout", "ablate"], key="w_kind",
                        format_func=lambda k: {"ablate": "ablate (all positions)", "knockout": "knock out T→labels"}[k],
                        help="knock out (the paper's intervention): cut the heads' attention from the last position T "
                             "to the label positions; it changes T only, so the live check runs as rows over the "
                             "prompt's cached prefix. ablate: remove the heads' output at every position; the "
                             "demonstrations' keys and values change too, so every random set is a whole pass.")
    rseed = i2.number_input("Random-heads seed", 0, 10_000, key="w_rseed")
    if mode == "all in-context heads":
        iv_heads = heads
    elif mode == "ticked heads":
        tick_cols = st.columns(min(len(heads), 6) or 1)
        iv_heads = [h for i, h in enumerate(heads)
                    if tick_cols[i % len(tick_cols)].checkbox(head_name(h), key=f"w_tick_{head_name(h)}")]
    elif mode == "top N in-context heads":
        n_top = st.slider("N (the heads in their listed order, best first)", 1, max(1, len(heads)), key="w_topn")
        iv_heads = heads[:n_top]
    elif mode == "random heads (control)":
        iv_heads = control_heads(heads, lm.n_layers, lm.n_heads, int(rseed))
    else:
        iv_heads = []
    for key in ("w_kind", "w_rseed", "w_topn"):
        state.kept(key)
    if mode != "none":
        n_iv = len(iv_heads)
        st.caption(f"{kind} on {n_iv} head{'' if n_iv == 1 else 's'}: "
                   + (", ".join(map(head_name, iv_heads)) or "none ticked"))

    if prompt is None:
        return
    slot = st.empty()
    with slot, st.spinner("Running the model on this prompt"):
        before = predict_current(lm)
        after = predict_current(lm, kind, iv_heads) if iv_heads else None
    words = prompt.label_words

    st.subheader("Prediction")
    p1, p2 = st.columns(2)

    def _pred_text(pred):  # shown in a code span: a backtick in a label word must not close it
        return (f"Prediction: {pred.predicted} — " + " · ".join(f"p({w})={pred.probs[w]:.3f}" for w in words)
                ).replace("`", "ˋ")

    p1.markdown("**Before** (no intervention)")
    p1.markdown(f"`{_pred_text(before)}`")
    p2.markdown("**After** " + (f"({kind}, {len(iv_heads)} head{'' if len(iv_heads) == 1 else 's'})" if after
                                else "(no intervention chosen)"))
    if after is not None:
        p2.markdown(f"`{_pred_text(after)}`")
        flip = " — the prediction flipped" if after.predicted != before.predicted else ""
        p2.caption(safe(f"margin {words[0]}−{words[1]}: {before.margin:+.3f} → {after.margin:+.3f}{flip}"))
        p1.metric("Margin before", f"{before.margin:+.2f}", help=safe(f"logit({words[0]}) − logit({words[1]})"))
        p2.metric("Margin after", f"{after.margin:+.2f}", f"{after.margin - before.margin:+.2f}",
                  help=safe(f"{mode}; the change below is after − before"),
                  delta_color="off")
    else:
        p2.markdown("`—`")

    att = label_attention_table(prompt, before.capture, heads, "before")
    if after is not None:
        att = pd.concat([att, label_attention_table(prompt, after.capture, heads, "after")], ignore_index=True)
    ablated = [head_name(h) for h in iv_heads if h in heads] if kind == "ablate" and after is not None else []
    st.markdown("**Attention from T to each label position** (dot size), per chosen head")
    chart(label_attention_compact(att, words, ablated), key="fig_compact")
    probs = pd.DataFrame([{"condition": c, "label": w, "probability": p.probs[w]}
                          for c, p in (("before", before), ("after", after)) if p is not None for w in words])
    if ablated:
        st.caption(f"Ablated heads ({', '.join(ablated)}): output removed, attention unchanged — their attention "
                   "is the same before and after by design; what changes is what they add to T.")

    # Let the server send the prediction to the browser before the live check's passes hold the interpreter.
    time.sleep(0.1)
    with st.container(border=True):
        st.markdown("**Does this model show the effect on this prompt?** (live, paired: the same prompt with the "
                    "in-context heads or as many random heads intervened)")
        draws = 3
        with st.spinner(f"Measuring the in-context heads against {draws} random head sets, and the label swap"):
            eff, sw = live_check_current(lm, heads, kind, draws)
        lo, hi = eff.random_range
        m1, m2 = st.columns(2)
        m1.metric("Δ margin, in-context", f"{eff.icl_change:+.2f}",
                  help=f"after − before, intervening on the {len(heads)} in-context head"
                       f"{'' if len(heads) == 1 else 's'}")
        m2.metric("Δ margin, random", f"{eff.random_mean:+.2f}",
                  f"range {lo:+.2f} to {hi:+.2f}", delta_color="off",
                  help=f"after − before, the mean over {eff.n_draws} random sets of as many heads")
        st.markdown(safe(eff.sentence()))
        s1, s2 = st.columns(2)
        s1.metric("In-context part", f"{sw.split['context']:+.2f}",
                  help="The part of the margin's change that flips sign when every demonstration's label is swapped: "
                       "it follows the demonstrations.")
        s2.metric("Prior part", f"{sw.split['prior']:+.2f}",
                  help=safe(f"The part that stays under the swap: a constant vote (positive: toward {words[0]})."))
        st.markdown(safe(sw.sentence()))
        if mode == "top N in-context heads":
            curve = top_n_current(lm, heads, kind)
            chart(top_n_figure(curve, words), key="fig_topn")
            n_flip = first_flip(curve)
            if n_flip:
                back = curve[(curve["n"] > n_flip) & ~curve["flipped"]]
                st.caption(f"The prediction first gives way at the top **{n_flip}** head{'' if n_flip == 1 else 's'}"
                           + (f", and is back at the top {int(back['n'].iloc[0])}: near a margin of 0 it can go "
                              "either way." if len(back) else "."))
            else:
                st.caption(f"The prediction gives way nowhere: even all {len(heads)} heads do not flip it on this "
                           "prompt.")
        st.caption("One prompt is an example, not a measurement: the Head finder's intervention table measures "
                   "the same comparison over a dataset sample, with intervals.")

    # Drawn only when asked for: five figures and a table make every rerun of this panel slower.
    if st.toggle("Full chart: attention from T to each label position, per head, before and after",
                 key="w_full_chart"):
        chart(probability_bars(probs, words), key="fig_probs")
        fig = label_attention_bars(att, words, ablated)
        chart(fig, key="fig_attention", name="label_attention")
        sums = label_sums(att)
        st.markdown("**Attention summed per label**")
        sum_table = sums.pivot_table(index="head", columns=["condition", "label"], values="attention", sort=False)
        sum_table.columns = [f"{c} {w}" for c, w in sum_table.columns]
        total = sums.groupby(["condition", "label"], sort=False)["attention"].sum()
        st.dataframe(sum_table.style.format("{:.3f}"), key="tbl_sums")
        st.markdown("All chosen heads: " + "; ".join(f"{c} {safe(w)} = {v:.3f}" for (c, w), v in total.items()))
        chart(label_sum_bars(sums, words), key="fig_sums")
        d1, d2 = st.columns(2)
        with d1:
            csv_download(att, "label_attention.csv", "Attention table (CSV)")
        with d2:
            html_download(fig, "label_attention.html", "Attention figure (HTML)", key="dl_att_html")


with right:
    intervention_panel()

if prompt is None:
    st.stop()
tokens = token_table(lm.tokenizer, prompt)
st.subheader("Tokens")
st.caption("Label positions are coloured by their label (subscript: position); the last position T is dark. "
           f"{prompt.n_tokens} tokens.")
st.markdown(tokens_html(tokens, prompt.label_words), unsafe_allow_html=True)
csv_download(tokens, "tokens.csv", "Tokens (CSV)")
