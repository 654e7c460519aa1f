"""iclviz: see how a language model learns in context (Yu & Ananiadou, EMNLP 2024).

Start with ``streamlit run app.py``. This entry point declares the pages, draws the menu and the page's title at
once (before the heavy imports of a first visit), and runs the selected page; each page starts with
``common.page_setup(title, intro)`` (session defaults, the shared sidebar: model picker, chosen in-context
heads), so that a page also works when run on its own (AppTest, or Streamlit's fallback: pages/parts/menu.py).
"""

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from iclviz.engine.memory import limit_heap_growth, release_memory  # noqa: E402  (light: no torch)
from iclviz.engine.settings import load_settings  # noqa: E402
from iclviz.validation import ValidationError  # noqa: E402
from pages.parts import menu  # noqa: E402

limit_heap_growth()  # a server's memory stays flat over reruns (see iclviz/engine/memory.py)

st.set_page_config(page_title="iclviz: in-context heads", layout="wide")

# An operator's lesson file (ICLVIZ_LESSON_FILE) opens first: a class or a static host shows it without a model.
try:
    LESSON_START = bool(load_settings().lesson_file)
except ValidationError:  # the page says why (state.settings)
    LESSON_START = False
PAGES = menu.pages(LESSON_START)
page = st.navigation(PAGES, position="hidden")  # the menu is ours (menu.py: why)
menu.draw()
st.session_state[menu.DRAWN] = True

FIRST = "pages.parts.common" not in sys.modules
if FIRST:  # this process's first visit: torch and the model take a while; say so under the page's title
    slot = st.empty()
    with slot.container():
        st.title(page.title)
        st.info("Loading the model (first time: about a minute)", icon="⏳")
from pages.parts import widgets  # noqa: E402  (heavy: torch, the library)

if FIRST:
    slot.empty()
try:
    page.run()
except Exception as exc:  # noqa: BLE001 - an error on one page is shown there; the others keep working
    widgets.show_page_error(exc)
finally:
    release_memory()
