"""What every page does first: session defaults, the shared sidebar, the title and the help line."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from pages.parts import state
from pages.parts.sidebar import get_model, sidebar
from pages.parts.widgets import help_text, show_page_error

APP_NAVIGATION = "_iclviz_app_navigation"  # set once app.py's navigation has run in this session
DEEP_LINK = "_iclviz_deep_link"


def through_app() -> None:
    """Send a page that Streamlit ran without app.py through app.py, keeping the page and its query.

    Until some session on a server has run app.py's ``st.navigation``, Streamlit treats the folder named
    ``pages/`` as an old-style page folder: a first visitor who opens a page's URL directly (a shared link)
    gets that file run alone, with the other files of ``pages/`` listed as pages (the shared parts live in
    ``pages/parts/``, which Streamlit never lists). The page then switches to app.py, which opens the page
    asked for through the app's own navigation.
    """
    if st.session_state.get(APP_NAVIGATION):
        return
    ctx = get_script_run_ctx()
    if ctx is None or Path(ctx.main_script_path).name != "app.py":
        return  # run on its own (AppTest of a page file): nothing to go through
    path = urlparse(st.context.url or "").path.strip("/").rsplit("/", 1)[-1]
    st.session_state[DEEP_LINK] = (path, st.query_params.to_dict())
    st.switch_page("app.py")


def open_deep_link(pages) -> None:
    """In app.py, after ``st.navigation``: open the page a fallback run asked for (see ``through_app``).

    Once app.py's navigation has run in a session, Streamlit never falls back again (the switch is
    per server process), so the mark in the session state is enough."""
    st.session_state[APP_NAVIGATION] = True
    link = st.session_state.pop(DEEP_LINK, None)
    if link:
        target = next((p for p in pages if p.url_path == link[0]), None)
        if target is not None:
            st.switch_page(target, query_params=link[1] or None)


def page_setup(title: str, intro: str, load_model: bool = True) -> None:
    """Session defaults, the shared sidebar, the page's title and its help line; every page calls this first
    (so that a page also works when run on its own, as AppTest does). ``load_model=False``: the sidebar
    does not load the model (a page that shows stored results only)."""
    through_app()
    state.init_state()
    state.sync_from_widgets()
    state.remember()
    state.mode_to_url()
    try:
        sidebar(load=load_model)
    except Exception as exc:  # noqa: BLE001 - the sidebar never takes the page down
        show_page_error(exc)
    st.title(title)
    help_text(intro)


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
