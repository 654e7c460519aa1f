"""Per-session state: the prompt (demonstrations, query, label words, template), the chosen heads,
the model choice, and the operator's settings that bound them.

Per-user state lives in ``st.session_state`` only; nothing here is shared between sessions.
"""

from __future__ import annotations

import os

import streamlit as st

from iclviz.analyses.heads import APP_HEAD_RULE, default_heads, valid_heads
from iclviz.engine.offline import DEFAULT_MODEL
from iclviz.engine.settings import Settings, load_settings
from iclviz.prompt import PromptError, build_prompt, check_label_words
from iclviz.sharing import LabState, state_from_query_param
from iclviz.testing import TINY_MODELS
from iclviz.validation import ValidationError, check_demo_count, check_prompt_size, escape_markdown, head_name

APP_MODEL = DEFAULT_MODEL  # the offline model the app opens with (README: why)
DEFAULT_HEAD_RULE = APP_HEAD_RULE  # how the default in-context heads were located (the Head finder switches it)
INTERVENTION_MODES = ["none", "all in-context heads", "top N in-context heads", "ticked heads",
                      "random heads (control)"]


# ---------------------------------------------------------------- the operator's settings

def _settings() -> tuple[Settings, str]:  # read on every run: a few environment variables
    try:
        return load_settings(), ""
    except ValidationError as exc:  # a bad operator setting: safe defaults, and say so
        return Settings(), f"Ignoring the operator settings: {exc}"


def settings() -> Settings:
    s, problem = _settings()
    if problem:
        st.error(escape_markdown(problem))
    return s


CFG = _settings()[0]  # at import: what sizes the result caches (ICLVIZ_CACHE_ENTRIES, ICLVIZ_CACHE_TTL)


# ---------------------------------------------------------------- the model choice

def test_model_name() -> str | None:
    name = os.environ.get("ICLVIZ_TEST_MODEL", "").strip()
    return name if name in TINY_MODELS else None


def model_spec() -> tuple[str, str, str, bool]:
    """(name, device, dtype, trust_remote_code) of the session's model."""
    return st.session_state.setdefault("model_spec", (test_model_name() or APP_MODEL, "auto", "auto", False))


def model_key() -> str:
    return "|".join(map(str, model_spec()))


# ---------------------------------------------------------------- the prompt and the heads

def init_state() -> None:
    """Defaults for this session; a shared link (?s=...) fills them on the first run."""
    ss = st.session_state
    if ss.get("_initialised"):
        return
    ss._initialised = True
    ss.demo_counter = 0
    apply_state(LabState())
    mode = st.query_params.get("mode")
    ss.mode = mode if mode in INTERVENTION_MODES else "none"
    shared = st.query_params.get("s")
    if shared:
        try:
            apply_state(state_from_query_param(shared))
            ss.share_message = ("success", "Loaded the prompt and heads from the shared link.")
        except ValueError as exc:
            ss.share_message = ("error", escape_markdown(f"The shared link could not be read: {exc}"))


def label_words_ok(words) -> bool:
    """Whether ``words`` can label demonstrations at all (two or more, distinct, one word each); whether each is
    one token is the model's question, answered when the prompt is built."""
    try:
        check_label_words(tuple(words))
        return True
    except PromptError:
        return False


def label_key() -> str:
    """The label words the demonstrations' label pickers are keyed by: the last valid ones (``valid_words``)."""
    return "|".join(valid_words())


def valid_words() -> list[str]:
    ss = st.session_state
    if "label_words_valid" not in ss:
        ss.label_words_valid = list(ss.label_words) if label_words_ok(ss.get("label_words", ())) else ["foo", "bar"]
    return ss.label_words_valid


def set_label_words(text: str) -> None:
    """The label words as typed. Valid ones relabel the demonstrations (the i-th old word becomes the i-th new
    one); invalid ones (one word, a repeat, an empty entry) are kept for the error message and change nothing
    else: the demonstrations keep their labels until the words are valid again."""
    ss = st.session_state
    new = [w.strip() for w in str(text).split(",")]
    if new == list(ss.get("label_words", ())):
        return
    ss.label_words = new
    if not label_words_ok(new):
        return
    old = valid_words()
    mapping = {o: new[i] for i, o in enumerate(old) if i < len(new)}
    for d in ss.get("demos", []):
        d["label"] = mapping.get(d["label"], d["label"])
    ss.label_words_valid = list(new)


def sync_demos() -> None:
    """Copy the demonstrations' editor widgets (text, label picker) into the session's demonstrations."""
    ss = st.session_state
    words = label_key()
    for d in ss.get("demos", []):
        d["text"] = ss.get(f"dt_{d['id']}", d["text"])
        d["label"] = ss.get(f"dl_{d['id']}_{words}", d["label"])


def sync_from_widgets() -> None:
    """Copy the prompt lab's widget values into the session's prompt (widgets update before a run starts)."""
    ss = st.session_state
    sync_demos()
    if "w_label_words" in ss:
        set_label_words(ss.w_label_words)
    if "w_query" in ss:
        ss.query = ss.w_query
    if "w_template" in ss:
        ss.template = ss.w_template


# ---------------------------------------------------------------- what outlives a page's widgets

def set_mode(mode: str) -> None:
    """The intervention mode: kept in the session (not only in the Prompt lab's widget, which Streamlit forgets
    on every other page) and written to the page address by ``mode_to_url``."""
    if mode in INTERVENTION_MODES:
        st.session_state.mode = mode
        st.session_state.w_mode = mode


def current_mode() -> str:
    mode = st.session_state.get("mode", "none")
    return mode if mode in INTERVENTION_MODES else "none"


def keep(widget_key: str, default=None) -> None:
    """Before a widget is drawn (with no ``value`` argument): give it back the value it had when the user last left
    its page, else ``default`` (Streamlit drops a widget's state on any run that does not draw it). Call
    ``kept(widget_key)`` after drawing it."""
    ss = st.session_state
    if widget_key not in ss:
        value = ss.get(f"_kept_{widget_key}", default)
        if value is not None:
            ss[widget_key] = value


def kept(widget_key: str) -> None:
    ss = st.session_state
    if widget_key in ss:
        ss[f"_kept_{widget_key}"] = ss[widget_key]


def mode_to_url() -> None:
    """The intervention mode in the page address on every page (so that the address is a shareable link)."""
    mode = current_mode()
    if mode == "none":
        if "mode" in st.query_params:
            del st.query_params["mode"]
    elif st.query_params.get("mode") != mode:
        st.query_params["mode"] = mode


# ---------------------------------------------------------------- undo

UNDO_DEPTH = 20


def _snapshot() -> tuple:
    ss = st.session_state
    return (tuple((d["text"], d["label"]) for d in ss.get("demos", [])), ss.get("query", ""),
            tuple(ss.get("label_words", ())), ss.get("template", ""), tuple(map(tuple, ss.get("heads") or ())))


def remember() -> None:
    """Called once per run after the widgets are read: a changed prompt puts the previous one on the undo stack."""
    ss = st.session_state
    now = _snapshot()
    last = ss.get("_last_snapshot")
    if last is not None and last != now:
        ss.setdefault("undo_stack", []).append(last)
        del ss.undo_stack[:-UNDO_DEPTH]
    ss._last_snapshot = now


def can_undo() -> bool:
    return bool(st.session_state.get("undo_stack"))


def undo() -> None:
    """A button callback: the prompt and heads as they were before the last change."""
    ss = st.session_state
    if not ss.get("undo_stack"):
        return
    demos, query, words, template, heads = ss.undo_stack.pop()
    apply_state(LabState(list(demos), query, tuple(words), template, list(heads)))
    ss.label_words = list(words)
    for key in ("w_query", "w_label_words", "w_template"):
        ss.pop(key, None)
    if not heads:
        ss.heads = None
    ss._last_snapshot = _snapshot()


def apply_state(state: LabState) -> None:
    ss = st.session_state
    ss.demos = []
    for text, label in state.demos:
        ss.demo_counter = ss.get("demo_counter", 0) + 1
        ss.demos.append({"id": ss.demo_counter, "text": text, "label": label})
    ss.query = state.query
    ss.label_words = list(state.label_words)
    if label_words_ok(state.label_words):
        ss.label_words_valid = list(state.label_words)
    ss.template = state.template
    ss.editor_version = ss.get("editor_version", 0) + 1
    if state.heads:
        ss.heads = [tuple(h) for h in state.heads]
        ss.heads_model = None  # validated against the model on use
        ss.heads_from_user = True


def current_state() -> LabState:
    ss = st.session_state
    return LabState([(d["text"], d["label"]) for d in ss.demos], ss.query, tuple(ss.label_words), ss.template,
                    list(ss.get("heads", [])))


def chosen_heads(lm) -> list[tuple[int, int]]:
    """The session's in-context heads for this model (a sensible default before any scan)."""
    ss = st.session_state
    heads = ss.get("heads")
    if heads is None or (ss.get("heads_model") != lm.name and not ss.get("heads_from_user")):
        heads = default_heads(lm.name, lm.n_layers, lm.n_heads, ss.get("head_rule", DEFAULT_HEAD_RULE))
    kept = valid_heads(heads, lm.n_layers, lm.n_heads)
    if len(kept) < len(heads):
        dropped = [h for h in heads if tuple(h) not in kept]
        st.warning(f"Heads {', '.join(map(head_name, dropped))} are not in this model ({lm.n_layers} layers x "
                   f"{lm.n_heads} heads) and were left out.")
    heads = kept or default_heads(lm.name, lm.n_layers, lm.n_heads, ss.get("head_rule", DEFAULT_HEAD_RULE))
    ss.heads = heads
    ss.heads_model = lm.name
    return heads


def set_heads(heads) -> None:
    st.session_state.heads = [tuple(map(int, h)) for h in heads]
    st.session_state.heads_from_user = True


def move_demo(i: int, step: int) -> None:
    """Move demonstration i up (step -1) or down (+1): a button callback shared by the pages."""
    sync_from_widgets()
    demos = st.session_state.demos
    j = i + step
    if 0 <= i < len(demos) and 0 <= j < len(demos):
        demos[i], demos[j] = demos[j], demos[i]


def demo_tuple() -> tuple[tuple[str, str], ...]:
    """The session's demonstrations; empty rows (just added, not yet filled) are skipped and listed in
    ``skipped_demos`` so that the page can say so instead of blanking the prediction."""
    ss = st.session_state
    ss.skipped_demos = [i + 1 for i, d in enumerate(ss.demos) if not str(d["text"]).strip()]
    if len(ss.skipped_demos) == len(ss.demos):  # nothing filled: let build_prompt report it
        ss.skipped_demos = []
        return tuple((d["text"], d["label"]) for d in ss.demos)
    return tuple((d["text"], d["label"]) for d in ss.demos if str(d["text"]).strip())


def prompt_key() -> tuple:
    """The session's prompt as cache-key arguments: demonstrations, query, label words, template."""
    ss = st.session_state
    return demo_tuple(), ss.query, tuple(ss.label_words), ss.template


def current_spec():
    """The session's prompt as an ``iclviz.analyses.compare.PromptSpec`` (what the A/B view pins and edits)."""
    from iclviz.analyses.compare import PromptSpec

    ss = st.session_state
    return PromptSpec(demo_tuple(), ss.query, tuple(ss.label_words), ss.template)


def check_spec_size(lm, spec) -> None:
    """Build ``spec`` for ``lm`` and check it against the operator's limits (PromptError/ValidationError)."""
    cfg = settings()
    check_demo_count(len(spec.demos), cfg.max_demos)
    check_prompt_size(spec.build(lm).n_tokens, cfg.max_tokens, "this server's limit")


def current_prompt(lm, show_errors: bool = True):
    """The session's prompt built for this model, or None after an inline message."""
    ss = st.session_state
    cfg = settings()
    try:
        check_demo_count(len(ss.demos), cfg.max_demos)
        prompt = build_prompt(lm.tokenizer, list(demo_tuple()), ss.query, tuple(ss.label_words), ss.template,
                              max_tokens=lm.context_length)
        # checked before any forward pass; the limit is the operator's (ICLVIZ_MAX_TOKENS)
        check_prompt_size(prompt.n_tokens, cfg.max_tokens, "this server's limit")
    except (PromptError, ValidationError) as exc:
        if show_errors:
            st.error(escape_markdown(f"The prompt cannot be run: {exc}"))
        return None
    if show_errors:
        for w in prompt.warnings:
            st.warning(escape_markdown(w))
    return prompt
