"""iclviz: see how a language model learns in context (Yu & Ananiadou, EMNLP 2024).

Start with ``streamlit run app.py``. This entry point declares the pages and runs the selected one;
each page starts with ``common.page_setup(title, intro)`` (session defaults, the shared sidebar: model picker,
chosen in-context heads), so that a page also works when run on its own (AppTest).
"""

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from iclviz.memory import limit_heap_growth, release_memory  # noqa: E402
from pages.parts import common, state, widgets  # noqa: E402

limit_heap_growth()  # a server's memory stays flat over reruns (see iclviz/memory.py)

st.set_page_config(page_title="iclviz: in-context heads", layout="wide")

# An operator's lesson file (ICLVIZ_LESSON_FILE) opens first: a class or a static host shows it without a model.
LESSON_START = bool(state._settings()[0].lesson_file)
# Emoji icons: Material icons (':material/...:') make every visitor's browser fetch them from fonts.gstatic.com.
PAGES = [
    st.Page("pages/lesson.py", title="Guided lesson", icon="🎓"),
    st.Page("pages/prompt_lab.py", title="Prompt lab", icon="🧪",
            default=not LESSON_START),
    st.Page("pages/head_finder.py", title="Head finder", icon="🔎"),
    st.Page("pages/label_vectors.py", title="Label vectors", icon="🏷️"),
    st.Page("pages/two_towers.py", title="Two towers", icon="↔️"),
    st.Page("pages/bias_lab.py", title="Bias lab", icon="⚖️"),
    st.Page("pages/attention.py", title="Attention", icon="👁️"),
    st.Page("pages/prompt_ab.py", title="Prompt A/B", icon="🆚"),
    st.Page("pages/contributions.py", title="Demonstrations", icon="📊"),
    st.Page("pages/lesson_file.py", title="Lesson file", icon="📄", default=LESSON_START),
]
page = st.navigation(PAGES)
common.open_deep_link(PAGES)  # a first visit at a page's URL on a fresh server came through here (common.py)
try:
    page.run()
except Exception as exc:  # noqa: BLE001 - an error on one page is shown there; the others keep working
    widgets.show_page_error(exc)
finally:
    release_memory()
