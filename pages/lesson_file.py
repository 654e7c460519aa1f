"""Lesson file: save the current prompt, heads and results as one JSON file; open one read-only, without a model."""

import hashlib
from pathlib import Path

import streamlit as st

from iclviz.analyses.compare import swap_all_labels
from iclviz.analyses.contributions import Contributions
from iclviz.engine.interventions import Plan
from iclviz.outputs.figures import waterfall_figure
from iclviz.outputs.lesson_file import load_lesson, make_lesson, replay
from iclviz.outputs.plots import ab_bars, towers_patch_bars
from iclviz.prompt import PromptError
from iclviz.sharing import LabState
from iclviz.validation import ValidationError, head_name
from pages.parts import common, sidebar, state
from pages.parts.widgets import chart, csv_download, safe

ss = st.session_state
common.page_setup(
    "Lesson file",
    "A lesson file is one JSON file with a prompt, its in-context heads, the intervention, the model's name (and "
    "weights' sha256 where known), the package versions and the results the views showed. Opening one shows its "
    "stored results without loading any model (for a class, or a static host); replaying it recomputes them on the "
    "loaded model and lists what differs.",
    load_model=False)
cfg = state.settings()


def _words(spec) -> str:
    return ", ".join(f"`{w.replace('`', 'ˋ')}`" for w in spec.label_words)


def _show_prompt(title: str, spec) -> None:
    st.markdown(f"**{title}** · label words {_words(spec)} · template `{spec.template}`")
    st.markdown("  \n".join(f"#{i + 1} · `{w.replace('`', 'ˋ')}` {safe(t)}" for i, (t, w) in enumerate(spec.demos))
                + f"  \nQuery: {safe(spec.query)}")


def show_lesson(lesson, source: str) -> None:
    """The stored prompt and results, read-only: nothing here runs a model."""
    m, p = lesson.model, lesson.packages
    sha = str(m.get("weights_sha256") or "")
    st.success(safe(f"Opened {source}: stored {lesson.created or '(no date)'} with model {m.get('name', '?')}"
                    + (f" (weights sha256 {sha[:12]}…)" if sha else "") + f", iclviz {p.get('iclviz', '?')}, "
                    f"torch {p.get('torch', '?')}, transformers {p.get('transformers', '?')}.")
               + " Read-only: these are the stored numbers; no model runs to show them.")
    st.markdown("In-context heads: " + (", ".join(map(head_name, lesson.heads)) or "none")
                + f" · intervention: **{lesson.plan.kind}**"
                + (f" on {', '.join(map(head_name, lesson.plan.heads))}" if lesson.plan.heads else "")
                + f" · lens scaling: {lesson.scaling}")
    c1, c2 = st.columns(2)
    with c1:
        _show_prompt("Prompt" + (" A" if lesson.prompt_b is not None else ""), lesson.prompt)
    with c2:
        if lesson.prompt_b is not None:
            _show_prompt("Prompt B", lesson.prompt_b)
        if lesson.donor is not None:
            _show_prompt(f"Donor of the towers patch (positions: {lesson.towers_positions})", lesson.donor)
    tables = lesson.tables()
    titles = {"prediction": "Prediction", "attention": "Attention from T on each label's positions, per head",
              "compare": "Prompt A/B, per head and label", "compare_labels": "Prompt A/B, the model's labels",
              "contributions": "Each demonstration's contribution", "towers": "The two towers, causally (patch)"}
    for name, title in titles.items():
        df = tables.get(name)
        if df is None or df.empty:
            continue
        st.markdown(f"**{title}**")
        try:
            if name == "compare" and {"head", "label", "attention_a", "attention_diff"} <= set(df.columns):
                chart(ab_bars(df, "attention", "attention from T on the label's positions"),
                      key="fig_lesson_ab", name="lesson_prompt_ab")
            if name == "contributions":
                chart(waterfall_figure(Contributions.from_dict(lesson.results["contributions"])),
                      key="fig_lesson_waterfall", name="lesson_waterfall")
            if name == "towers" and {"condition", "margin", "predicted"} <= set(df.columns):
                chart(towers_patch_bars(df, lesson.prompt.label_words), key="fig_lesson_towers",
                      name="lesson_towers_patch")
        except (KeyError, TypeError, ValueError, AttributeError):
            st.caption("(this table's figure could not be drawn from the stored values)")
        st.dataframe(df, key=f"tbl_lesson_{name}", hide_index=True)
        csv_download(df, f"lesson_{name}.csv", "CSV", key=f"dl_lesson_{name}")
    if not tables:
        st.caption("The file holds no results.")


# ---------------------------------------------------------------- open
st.subheader("Open a lesson file")
up = st.file_uploader("A lesson file (JSON)", type=["json"], key="w_lesson_upload",
                      help="checked before it is shown: size (at most 5 MB), nesting, and every field")
lesson, source = None, ""
if up is not None:
    try:
        lesson, source = load_lesson(up.getvalue()), up.name
    except (ValidationError, ValueError) as exc:
        st.error(safe(f"Could not open {up.name}: {exc}"))
elif cfg.lesson_file:
    try:
        lesson, source = load_lesson(cfg.lesson_file), f"this server's lesson file {Path(cfg.lesson_file).name}"
    except (ValidationError, ValueError, OSError) as exc:
        st.error(safe(f"This server's lesson file (ICLVIZ_LESSON_FILE) could not be opened: {exc}"))

if lesson is not None:
    show_lesson(lesson, source)
    lesson_id = hashlib.sha256(lesson.to_json().encode()).hexdigest()[:16]
    b1, b2 = st.columns(2)
    if b1.button("Replay with the loaded model", key="w_lesson_replay", type="primary",
                 help="loads the session's model (the sidebar's) and recomputes every stored result"):
        lm = sidebar.get_model()
        if lm is not None:
            try:
                with st.spinner(f"Replaying on {lm.name}"):
                    ss.lesson_replay = (lesson_id, replay(lesson, lm))
            except (ValidationError, PromptError, ValueError, RuntimeError) as exc:
                st.error(safe(f"The lesson could not be replayed on {lm.name}: {exc}"))
    if b2.button("Use this lesson's prompt and heads", key="w_lesson_use",
                 help="the other pages then show this prompt (the Prompt lab can edit it)"):
        state.apply_state(LabState(list(lesson.prompt.demos), lesson.prompt.query, lesson.prompt.label_words,
                                   lesson.prompt.template, list(lesson.heads)))
        st.success("The prompt and heads are now the session's: open the Prompt lab or any other page.")
    done = ss.get("lesson_replay")
    if done is not None and done[0] == lesson_id:
        report = done[1]
        (st.success if report.ok else st.warning)(safe("Replay: " + report.summary() + "."))
        if not report.ok:
            st.dataframe(report.differences, key="tbl_lesson_replay", hide_index=True)
            csv_download(report.to_frame(), "lesson_replay_differences.csv", "Differences (CSV)",
                         key="dl_lesson_replay")
else:
    st.caption("No lesson file open. Upload one (saved below, or by `iclviz.outputs.lesson_file.save_lesson`), or "
               "an operator can open one at start with ICLVIZ_LESSON_FILE.")

# ---------------------------------------------------------------- save
st.subheader("Save this lesson")
from pages.parts.sidebar import is_loaded  # noqa: E402

st.caption("The session's prompt and in-context heads, with the results the views show for them, computed on the "
           + ("loaded model." if is_loaded() else "model (loaded when you press the button, if it is not yet)."))
pinned = ss.get("ab_a") is not None
s1, s2 = st.columns(2)
with_ab = s1.checkbox("Include the Prompt A/B comparison (A and B as on the Prompt A/B page)", key="w_lesson_ab",
                      disabled=not pinned, help=None if pinned else "pin a prompt A on the Prompt A/B page first")
with_contrib = s1.checkbox("Include each demonstration's contribution", value=True, key="w_lesson_contrib")
with_towers = s2.checkbox("Include the two-towers patch (donor: the label-swapped prompt)", key="w_lesson_towers")
kind = s2.selectbox("Intervention on the in-context heads, for the stored prediction",
                    ["none", "ablate", "knockout"], key="w_lesson_kind")
if st.button("Save this lesson", key="w_lesson_save"):
    lm = sidebar.get_model()
    if lm is not None:
        heads = state.chosen_heads(lm)
        spec = ss.ab_a if with_ab and pinned else state.current_spec()
        try:
            state.check_spec_size(lm, spec)
            with st.spinner("Computing the lesson's results"):
                made = make_lesson(lm, spec, heads, plan=Plan(kind, tuple(heads)) if kind != "none" else None,
                                   prompt_b=ss.ab_b if with_ab and pinned else None,
                                   donor=swap_all_labels(spec) if with_towers else None, contributions=with_contrib)
            ss.lesson_saved = made.to_json()
        except (ValidationError, PromptError, ValueError, RuntimeError) as exc:
            st.error(safe(f"The lesson could not be saved: {exc}"))
if ss.get("lesson_saved"):
    st.download_button("Download the lesson file (JSON)", ss.lesson_saved.encode(), file_name="iclviz_lesson.json",
                       mime="application/json", key="dl_lesson_json", type="primary")
    st.caption("Open it here (or on any iclviz server) without a model; replaying it (here, or with "
               "`python -m iclviz replay FILE`) recomputes every stored result and lists what differs.")
