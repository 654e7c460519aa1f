"""Prompt A/B: pin the current prompt as A, edit a copy B, and see per in-context head and label what changed."""


import streamlit as st

from iclviz.analyses.compare import (
    change_label_words,
    flip_label,
    is_label_swap,
    label_swap_pair,
    reorder,
    reorder_pairs,
    swap_query,
)
from iclviz.outputs.plots import ab_bars
from iclviz.prompt import PromptError
from iclviz.validation import ValidationError
from pages.parts import common, state
from pages.parts.runs import compare_specs
from pages.parts.widgets import chart, safe, view_downloads

ss = st.session_state
common.page_setup(
    "Prompt A/B",
    "Pin the current prompt as A, then edit a copy, B: flip one demonstration's label, reorder the demonstrations, "
    "swap the query or the label words. For each in-context head and each label the page shows the attention from "
    "T on that label's positions and the head's direct contribution to the label's logit, in A, in B and B − A, "
    "beside the two predictions. The paper's account: an edit moves the prediction by moving where the heads' "
    "attention from T goes (and so which labels flow into T).")

lm, heads, prompt = common.model_heads_prompt()
current = state.current_spec()


def _pin():
    spec = state.current_spec()
    ss.ab_a, ss.ab_b, ss.ab_log = spec, spec, []
    ss.pop("ab_error", None)


def _edit(what: str, fn):
    """Apply an edit to B (a button callback); a bad edit keeps B and says why."""
    try:
        new = fn(ss.ab_b)
        state.check_spec_size(lm, new)
    except (PromptError, ValidationError, ValueError) as exc:
        ss.ab_error = f"{what}: {exc}"
        return
    ss.ab_b = new
    ss.ab_log = [*ss.get("ab_log", []), what]
    ss.pop("ab_error", None)


def _reset_b():
    ss.ab_b, ss.ab_log = ss.ab_a, []
    ss.pop("ab_error", None)


p1, p2 = st.columns([1, 3], vertical_alignment="center")
p1.button("Pin the current prompt as A", key="w_ab_pin", on_click=_pin,
          type="primary" if ss.get("ab_a") is None else "secondary",
          help="A is the Prompt lab's prompt as it is now; B starts as a copy of it")
a = ss.get("ab_a")
if a is None:
    st.info("Press **Pin the current prompt as A** to start: B starts as a copy of A and is edited below.")
    st.stop()
if a != current:
    p2.caption("The Prompt lab's prompt has changed since A was pinned: pin again to compare from it.")
b = ss.ab_b


def _demo_line(i: int, text: str, label: str, other=None) -> str:
    changed = other is not None and (i >= len(other.demos) or other.demos[i] != (text, label))
    text = text if len(text) <= 70 else text[:67] + "…"
    lab = f"`{label.replace('`', 'ˋ')}`"
    return f"#{i + 1} · {'**' + lab + '**' if changed else lab} {safe(text)}"


# ---------------------------------------------------------------- edits of B
with st.container(border=True):
    st.markdown("**Edit B**" + (f" — B = A, then: {safe('; '.join(ss.ab_log))}" if ss.get("ab_log") else
                                " — B is a copy of A"))
    t_flip, t_order, t_query, t_words, t_preset = st.tabs(
        ["Flip a label", "Reorder", "Swap the query", "Change label words", "Presets"])
    n = len(b.demos)
    with t_flip:
        i = st.selectbox("Demonstration", list(range(n)), key="w_ab_flip_i",
                         format_func=lambda k: f"#{k + 1} · {b.demos[k][1]} · {b.demos[k][0][:60]}")
        st.button("Flip its label", key="w_ab_flip",
                  on_click=lambda: _edit(f"flip #{ss.w_ab_flip_i + 1}", lambda s: flip_label(s, ss.w_ab_flip_i)))
    with t_order:
        how = st.radio("How", ["reverse", "move one", "a Bias lab order"], key="w_ab_order_how", horizontal=True)
        if how == "move one":
            m1, m2 = st.columns(2)
            m1.number_input("Move demonstration #", 1, max(n, 1), 1, key="w_ab_move_from")
            m2.number_input("to place #", 1, max(n, 1), max(n, 1), key="w_ab_move_to")

            def _move_order(s):
                order = list(range(len(s.demos)))
                order.insert(int(ss.w_ab_move_to) - 1, order.pop(int(ss.w_ab_move_from) - 1))
                return reorder(s, order)

            st.button("Move it", key="w_ab_move",
                      on_click=lambda: _edit(f"move #{ss.w_ab_move_from} to #{ss.w_ab_move_to}", _move_order))
        elif how == "a Bias lab order":
            orders = {name: spec_b for name, _, spec_b in reorder_pairs(b)}
            st.selectbox("Order", list(orders), key="w_ab_bias_order",
                         help="the Bias lab's orders: one label's demonstrations last (recency), or shuffled")
            st.button("Reorder B", key="w_ab_bias_go",
                      on_click=lambda: _edit(f"order: {ss.w_ab_bias_order}",
                                             lambda s: dict((nm, sb) for nm, _, sb in reorder_pairs(s))[
                                                 ss.w_ab_bias_order]))
        else:
            st.button("Reverse B's demonstrations", key="w_ab_reverse",
                      on_click=lambda: _edit("reverse", lambda s: reorder(s, list(reversed(range(len(s.demos)))))))
    with t_query:
        st.text_input("B's query", value=b.query, key="w_ab_query")
        st.button("Use this query in B", key="w_ab_query_go",
                  on_click=lambda: _edit("new query", lambda s: swap_query(s, ss.w_ab_query)))
    with t_words:
        st.text_input("B's label words (comma separated; matched to A's by order)", value=", ".join(b.label_words),
                      key="w_ab_words")
        st.button("Use these label words in B", key="w_ab_words_go",
                  on_click=lambda: _edit("new label words", lambda s: change_label_words(
                      s, [w.strip() for w in ss.w_ab_words.split(",")])))
    with t_preset:
        q1, q2 = st.columns(2)
        q1.button("Label swap: B = A with every label swapped", key="w_ab_swap",
                  on_click=lambda: _edit("label swap", lambda s: label_swap_pair(ss.ab_a)[1]))
        q2.button("Reset B to A", key="w_ab_reset", on_click=_reset_b)
    if ss.get("ab_error"):
        st.error(safe(f"The edit was not applied: {ss.ab_error}"))

# ---------------------------------------------------------------- A and B side by side
ca, cb = st.columns(2)
for col, name, spec, other in ((ca, "A", a, None), (cb, "B", b, a)):
    with col:
        st.markdown(f"**Prompt {name}** · label words " + ", ".join(f"`{w.replace('`', 'ˋ')}`"
                                                                     for w in spec.label_words))
        st.markdown("  \n".join(_demo_line(k, t, w, other) for k, (t, w) in enumerate(spec.demos)))
        changed_q = other is not None and other.query != spec.query
        st.markdown(f"Query: {'**' if changed_q else ''}{safe(spec.query)}{'**' if changed_q else ''}")

# ---------------------------------------------------------------- the comparison
try:
    with st.spinner("Running A and B"):
        cmp = compare_specs(lm, a, b, heads)
except (PromptError, ValidationError, ValueError) as exc:
    st.error(safe(f"A and B cannot be compared: {exc}"))
    st.stop()

st.subheader("Prediction")
labels = cmp.labels


def _pred(which: str, words, predicted: str) -> str:
    col = "prob_a" if which == "A" else "prob_b"
    return (f"Prediction {which}: {predicted} — " + " · ".join(f"p({w})={p:.3f}" for w, p in zip(words, labels[col]))
            ).replace("`", "ˋ")


r1, r2 = st.columns(2)
r1.markdown(f"`{_pred('A', cmp.label_words_a, cmp.predicted_a)}`")
r2.markdown(f"`{_pred('B', cmp.label_words_b, cmp.predicted_b)}`")
w0, w1 = cmp.label_words_a[0], cmp.label_words_a[1]
margin_a = float(labels["logit_a"].iloc[0] - labels["logit_a"].iloc[1])
margin_b = float(labels["logit_b"].iloc[0] - labels["logit_b"].iloc[1])
r1.metric(safe(f"Margin logit({w0}) − logit({w1}), A"), f"{margin_a:+.2f}")
r2.metric("Margin, B (first label − second)", f"{margin_b:+.2f}", f"{margin_b - margin_a:+.2f}", delta_color="off")
if cmp.label_words_a.index(cmp.predicted_a) != cmp.label_words_b.index(cmp.predicted_b):
    st.markdown("**The edit flips the prediction.**")
for note in cmp.notes:
    st.caption(safe(f"note: {note}"))

st.subheader("Per in-context head and label")
st.caption("Attention: the attention from T summed over that label's positions. Head's logit: the head's output at T "
           f"projected onto the label's logit (the {cmp.scaling} lens). Labels are matched by their order in the "
           "label words.")
fig_att = ab_bars(cmp.head_table, "attention", "attention from T on the label's positions")
chart(fig_att, key="fig_ab_attention", name="prompt_ab_attention")
fig_logit = ab_bars(cmp.head_table, "head_logit", "head's direct contribution to the label's logit")
chart(fig_logit, key="fig_ab_logit", name="prompt_ab_head_logit")
st.dataframe(cmp.head_table, key="tbl_ab_heads", hide_index=True)
if is_label_swap(a, b):
    split = cmp.swap_split()
    st.markdown("**B is A with every label swapped: what flips and what stays, per head**")
    st.caption(safe(f"Each head's direct contribution to the margin {w0}−{w1} in A and in B. The part that flips "
                    "with the labels, (A − B) / 2, follows the demonstrations; the part that stays, (A + B) / 2, is "
                    "a constant vote."))
    st.dataframe(split, key="tbl_ab_split", hide_index=True)
    n_reads = int(split["reads"].sum())
    st.markdown(safe(f"{n_reads} of the {len(split)} heads read the demonstrations here (more of their "
                     f"contribution flips than stays); {len(split) - n_reads} vote."))
st.markdown("**The model's label probabilities and logits**")
st.dataframe(cmp.labels, key="tbl_ab_labels", hide_index=True)
with st.expander("Attention from T to each demonstration's label position (matched by index)"):
    st.dataframe(cmp.positions, key="tbl_ab_positions", hide_index=True)

payload = {"prompt_a": a.to_dict(), "prompt_b": b.to_dict(), "edits": list(ss.get("ab_log", [])), "model": lm.name,
           **cmp.to_dict()}
view_downloads(cmp.to_frame(), payload, fig_att, "prompt_ab", "Comparison", "Attention figure (HTML)", key="dl_ab")
