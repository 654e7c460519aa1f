"""Long runs: one helper that runs a computation under a progress bar with a Stop button and turns
its failures into messages."""

from __future__ import annotations

import time

import streamlit as st

from iclviz.analyses.readout import format_seconds, progress_text
from iclviz.errors import Cancelled
from pages.parts.widgets import safe


class ProgressRun:
    """A long run's progress bar with done/total, elapsed time and a finish estimate, and a Stop button
    that disappears when the run ends. ``with ProgressRun("Scanning heads", key) as cb: fn(progress=cb)``.

    Stop works the way Streamlit works: the click starts a new script run, which ends this one at its
    next progress update; the ``{key}_running`` flag in the session says so on that next run.
    """

    def __init__(self, label: str, key: str):
        self.label, self.key = label, key
        self.stop_slot = st.empty()
        self.bar = st.progress(0.0, text=f"{label}: starting")
        self.t0 = time.perf_counter()

    def __call__(self, done, total, note=""):
        self.total = total
        self.bar.progress(min(1.0, done / max(total, 1)),
                          text=safe(progress_text(self.label, done, total, time.perf_counter() - self.t0, str(note))))

    def __enter__(self):
        st.session_state[f"{self.key}_running"] = True
        self.stop_slot.button("Stop", key=f"{self.key}_stop", icon="⏹️")
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and exc_type.__name__ in ("RerunException", "StopException"):
            return False  # Stop was clicked (or the page left): the flag stays set, the next run says so
        st.session_state[f"{self.key}_running"] = False
        self.stop_slot.empty()
        self.bar.empty()
        return False


def was_stopped(key: str) -> bool:
    """True (once) when the last run under ``key`` ended without finishing (Stop, or the page was left)."""
    return bool(st.session_state.pop(f"{key}_running", False))


MEASURED: dict[str, tuple[float, int]] = {}  # key -> (seconds, steps) of the last finished run in this process


def measured_caption(key: str) -> None:
    """Before a long run starts: what the last finished run of the same kind took on this server (a measured rate,
    not a guess), so that the user knows what the button costs."""
    if key in MEASURED:
        sec, steps = MEASURED[key]
        st.caption(f"Measured on this server: the last run of this kind took {format_seconds(sec)} for {steps} steps "
                   f"({sec / max(steps, 1):.1f} s per step); the time grows with the number of steps.")


def run_with_progress(go: bool, label: str, key: str, fn, failure: str, stopped: str):
    """With ``go``: ``fn(progress)`` under a progress bar with Stop; its result, or None after a message
    (stopped: a warning; a ValueError or RuntimeError: ``failure: <why>``). Without ``go``: None, after
    the warning ``stopped`` when the last run under ``key`` was stopped before it finished."""
    if not go:
        if was_stopped(key):
            st.warning(stopped)
        measured_caption(key)
        return None
    try:
        with ProgressRun(label, key) as progress:
            out = fn(progress)
        MEASURED[key] = (time.perf_counter() - progress.t0, int(getattr(progress, "total", 0) or 0))
        return out
    except Cancelled as exc:
        st.warning(safe(exc))
    except (ValueError, RuntimeError) as exc:
        st.error(safe(f"{failure}: {exc}"))
    return None
