"""What every page does first: session defaults, the shared sidebar, the title and the help line."""

from __future__ import annotations

import streamlit as st

from pages.parts import menu, state
from pages.parts.sidebar import get_model, is_loaded, sidebar
from pages.parts.widgets import help_text, show_page_error


def page_setup(title: str, intro: str, load_model: bool = True) -> None:
    """Session defaults, the shared sidebar, the page's title and its help line; every page calls this first
    (so that a page also works when run on its own, as AppTest does). ``load_model=False``: the sidebar
    does not load the model (a page that shows stored results only)."""
    menu.draw_once_per_run()
    state.init_state()
    state.sync_from_widgets()
    state.remember()
    state.mode_to_url()
    st.title(title)  # at once: the title, then the sidebar (which loads the model)
    help_text(intro)
    slot = st.empty()
    if load_model and not is_loaded():
        slot.info("Loading the model (first time: about a minute)", icon="⏳")
    try:
        sidebar(load=load_model)
    except Exception as exc:  # noqa: BLE001 - the sidebar never takes the page down
        show_page_error(exc)
    slot.empty()


def require_model():
    """The session's model; stops the page (after the sidebar's message) when it cannot be loaded."""
    lm = get_model()
    if lm is None:
        st.stop()
    return lm


def model_heads_prompt():
    """The loaded model, the chosen heads and the current prompt; stops the page with a message
    when the model or the prompt is missing."""
    lm = require_model()
    heads = state.chosen_heads(lm)
    prompt = state.current_prompt(lm)
    if prompt is None:
        st.info("Fix the prompt on the Prompt lab page.")
        st.stop()
    return lm, heads, prompt
