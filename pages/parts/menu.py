"""The app's pages and its menu: light (streamlit only), so that app.py draws the menu and the page's title
before the heavy imports (torch, the model) of a process's first visit.

Streamlit lists the files of a folder named ``pages/`` next to the main script (its old, file-based
navigation) until some session on the server has run ``st.navigation``; no setting turns that discovery off.
``client.showSidebarNavigation = false`` (.streamlit/config.toml) hides Streamlit's own menu in both modes, and
this module draws the menu with ``st.page_link``: the same links whether app.py or Streamlit's fallback ran the
page, so no visitor ever sees the raw file names, and a shared link to a page works on a fresh server.
"""

from __future__ import annotations

import streamlit as st

# (file, title, icon); the default page is the Prompt lab, or the lesson file when the operator set one
PAGES = [
    ("pages/lesson.py", "Guided lesson", "🎓"),
    ("pages/prompt_lab.py", "Prompt lab", "🧪"),
    ("pages/head_finder.py", "Head finder", "🔎"),
    ("pages/label_vectors.py", "Label vectors", "🏷️"),
    ("pages/two_towers.py", "Two towers", "↔️"),
    ("pages/bias_lab.py", "Bias lab", "⚖️"),
    ("pages/attention.py", "Attention", "👁️"),
    ("pages/prompt_ab.py", "Prompt A/B", "🆚"),
    ("pages/contributions.py", "Demonstrations", "📊"),
    ("pages/lesson_file.py", "Lesson file", "📄"),
]
DRAWN = "_iclviz_menu_drawn"  # set by app.py for the run in which it drew the menu


def pages(lesson_start: bool) -> list:
    default = "pages/lesson_file.py" if lesson_start else "pages/prompt_lab.py"
    return [st.Page(path, title=title, icon=icon, default=path == default) for path, title, icon in PAGES]


def draw() -> None:
    """The menu at the top of the sidebar."""
    with st.sidebar:
        for path, title, icon in PAGES:
            st.page_link(path, label=title, icon=icon)
        st.divider()


def draw_once_per_run() -> None:
    """In a page: draw the menu unless app.py drew it in this run (a page that Streamlit ran without app.py,
    a first visit at a page's address on a fresh server, or AppTest of a page file)."""
    if not st.session_state.pop(DRAWN, False):
        st.set_page_config(page_title="iclviz: in-context heads", layout="wide")
        draw()
