"""Widgets the pages share: dataset picker, downloads, run size, demonstration order, help, errors."""

from __future__ import annotations

import json
import traceback

import pandas as pd
import streamlit as st

from iclviz.data import SHIPPED_DIR, DataError, dataset_from_table, list_datasets, load_dataset, read_table
from iclviz.outputs.figures import IMAGE_FORMATS, plotly_config, standalone_html
from iclviz.validation import escape_markdown
from pages.parts.state import CFG, move_demo, settings

CITATION = ("Yu & Ananiadou, *How do Large Language Models Learn In-Context? Query and Key Matrices of "
            "In-Context Heads are Two Towers for Metric Learning*, EMNLP 2024 "
            "([arXiv 2402.02872](https://arxiv.org/abs/2402.02872))")
UPLOAD = "your own file (CSV/JSONL)"


def safe(text) -> str:
    """User-supplied text (words, file names, messages quoting them) made inert for markdown: the one helper every
    page uses before a visitor's text reaches st.markdown, st.caption, st.error/warning/info/success, a widget's
    label or help, a tab or a metric (all of them render markdown: an image there is fetched by the browser)."""
    return escape_markdown(text)


def help_text(text: str) -> None:
    st.caption(f"{text} See {CITATION}.")  # inert: the pages' own text (markdown on purpose)


def show_page_error(exc: BaseException) -> None:
    st.error(safe(f"This page hit an error and stopped: {type(exc).__name__}: {str(exc)[:400]}.")
             + " The other pages still work; change the inputs or reload.")
    with st.expander("Details for a bug report"):
        st.code("".join(traceback.format_exception(exc))[-4000:])


# ---------------------------------------------------------------- datasets

@st.cache_resource(show_spinner=False)
def dataset(name: str):
    return load_dataset(name)


@st.cache_data(show_spinner=False, max_entries=8, ttl=CFG.cache_ttl)
def _uploaded_dataset(content: bytes, filename: str):
    return dataset_from_table(read_table(content, filename), name=filename)


def list_datasets_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if (p / "meta.json").is_file() and (p / "train.jsonl").is_file())


def dataset_picker(key: str, default: str = "sst2"):
    """A shipped dataset, or an uploaded CSV/JSONL with text and label columns; None after a message."""
    # extra data folders (ICLVIZ_DATA, a shared folder) only when the operator allows them
    names = (list_datasets() if settings().allow_data_dirs else list_datasets_in(SHIPPED_DIR)) + [UPLOAD]
    name = st.selectbox("Dataset", names, index=names.index(default) if default in names else 0, key=key)
    try:
        if name == UPLOAD:
            up = st.file_uploader("CSV or JSONL with columns text, label", type=["csv", "tsv", "jsonl", "json"],
                                  key=f"{key}_upload")
            if up is None:
                return None
            return _uploaded_dataset(up.getvalue(), up.name)
        return dataset(name)
    except DataError as exc:
        st.error(safe(exc))
        return None


def run_size(key: str, quick: int, full: int, label: str = "Test sentences") -> int:
    """A quick / full size choice, with a custom number; returns the number of test sentences."""
    c1, c2 = st.columns([2, 1])
    size = c1.radio("Run size", [f"quick ({quick})", f"full ({full})", "custom"], horizontal=True,
                    key=f"{key}_size", help="quick: a first look in seconds to a minute; full: enough sentences to "
                                            "resolve a 15-20 point difference")
    if size == "custom":
        return int(c2.number_input(label, 2, 1000, quick, key=f"{key}_n"))
    return quick if size.startswith("quick") else full


# ---------------------------------------------------------------- downloads

def csv_download(df: pd.DataFrame, name: str, label: str = "Download CSV", key: str | None = None) -> None:
    st.download_button(label, df.to_csv(index=False).encode(), file_name=name, mime="text/csv", key=key or name)


def image_format() -> str:
    """The format of the charts' camera button (PNG or SVG), chosen once in the sidebar."""
    fmt = st.session_state.get("w_image_format", "png")
    return fmt if fmt in IMAGE_FORMATS else "png"


def chart(fig, key: str, where=None, name: str | None = None, **kwargs):
    """``st.plotly_chart`` with the camera button saving the figure as PNG or SVG (the sidebar's choice),
    drawn by plotly.js in the browser (no network). The plotly toolbar runs down the right edge, so that it never
    covers a title or a legend at the top."""
    if hasattr(fig, "update_layout"):
        fig.update_layout(modebar=dict(orientation="v"))
    return (where or st).plotly_chart(fig, key=key, config=plotly_config(name or key, image_format()), **kwargs)


def html_download(fig, name: str, label: str, key: str | None = None) -> None:
    """The figure as a standalone HTML file with plotly.js embedded (opens offline, PNG and SVG buttons);
    built only when the button is clicked (it is a few MB)."""
    stem = name.rsplit(".", 1)[0]
    st.download_button(label, data=lambda: standalone_html(fig, stem).encode(), file_name=name, mime="text/html",
                       key=key or f"dl_{name}", on_click="ignore")


def downloads(df: pd.DataFrame, csv_name: str, fig, html_name: str, html_label: str) -> None:
    """A CSV of the table and an HTML file of the figure, side by side."""
    d1, d2 = st.columns(2)
    with d1:
        csv_download(df, csv_name)
    with d2:
        html_download(fig, html_name, html_label)


def view_downloads(df: pd.DataFrame, obj: dict, fig, name: str, what: str, fig_label: str, key: str) -> None:
    """A view's table (CSV), its full result (JSON) and its figure (HTML), side by side."""
    d1, d2, d3 = st.columns(3)
    with d1:
        csv_download(df, f"{name}.csv", f"{what} (CSV)", key=f"{key}_csv")
    with d2:
        st.download_button(f"{what} (JSON)", json.dumps(obj, indent=1, default=str).encode(), file_name=f"{name}.json",
                           mime="application/json", key=f"{key}_json")
    with d3:
        html_download(fig, f"{name}.html", fig_label, key=f"{key}_html")


# ---------------------------------------------------------------- the demonstrations' order

def order_editor(prefix: str) -> None:
    """The demonstrations in order, each with up/down arrows (the same moves as the Prompt lab's)."""
    for i, d in enumerate(st.session_state.demos):
        c0, c1, c2 = st.columns([12, 1, 1], vertical_alignment="center")
        text = d["text"] if len(d["text"]) <= 90 else d["text"][:87] + "…"
        c0.markdown(f"#{i + 1} · `{d['label'].replace('`', 'ˋ')}` " + (safe(text) if text else "*(empty)*"))
        c1.button("", icon="⬆️", key=f"{prefix}_up_{d['id']}", on_click=move_demo,
                  args=(i, -1), disabled=i == 0, help=f"move demonstration {i + 1} up")
        c2.button("", icon="⬇️", key=f"{prefix}_down_{d['id']}", on_click=move_demo,
                  args=(i, 1), disabled=i == len(st.session_state.demos) - 1, help=f"move demonstration {i + 1} down")
