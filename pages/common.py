"""Shared Streamlit helpers for the app's pages: model picker, per-session state, cached runs.

Per-user state lives in ``st.session_state`` only. The model is loaded once per process
(``st.cache_resource``); predictions are cached by their inputs (model, prompt, plan), so
two sessions share work but never each other's state.
"""

from __future__ import annotations

import os
import traceback

import pandas as pd
import streamlit as st

from iclviz.app_support import (
    TINY_MODELS,
    LabState,
    default_heads,
    head_name,
    slim_prediction,
    state_from_query_param,
    tiny_model,
    valid_heads,
)
from iclviz.data import DataError, dataset_from_table, list_datasets, load_dataset, read_table
from iclviz.evaluation import predict_prompt
from iclviz.interventions import Plan
from iclviz.models import ModelLoadError, load_model
from iclviz.offline import DEFAULT_MODEL, OFFLINE_MODELS, offline_model
from iclviz.prompt import PromptError, build_prompt
from iclviz.settings import Settings, load_settings
from iclviz.validation import (
    ValidationError,
    check_demo_count,
    check_device,
    check_prompt_size,
    escape_markdown,
    parse_heads,
)

APP_MODEL = DEFAULT_MODEL  # the offline model the app opens with (README: why)
DEFAULT_HEAD_RULE = "causal"  # how the default in-context heads were located (the Head finder switches it)
CITATION = ("Yu & Ananiadou, *How do Large Language Models Learn In-Context? Query and Key Matrices of "
            "In-Context Heads are Two Towers for Metric Learning*, EMNLP 2024 "
            "([arXiv 2402.02872](https://arxiv.org/abs/2402.02872))")


def safe(text) -> str:
    """User-supplied text (words, file names, messages quoting them) made inert for markdown."""
    return escape_markdown(text)


def _settings() -> tuple[Settings, str]:  # read on every run: a few environment variables
    try:
        return load_settings(), ""
    except ValidationError as exc:  # a bad operator setting: safe defaults, and say so
        return Settings(), f"Ignoring the operator settings: {exc}"


def settings() -> Settings:
    s, problem = _settings()
    if problem:
        st.error(safe(problem))
    return s


def sync_from_widgets() -> None:
    """Copy the prompt lab's widget values into the session's prompt (widgets update before a run starts)."""
    ss = st.session_state
    if "w_label_words" in ss:
        ss.label_words = [w.strip() for w in ss.w_label_words.split(",")]
    if "w_query" in ss:
        ss.query = ss.w_query
    if "w_template" in ss:
        ss.template = ss.w_template
    words = "|".join(ss.label_words)
    for d in ss.get("demos", []):
        d["text"] = ss.get(f"dt_{d['id']}", d["text"])
        d["label"] = ss.get(f"dl_{d['id']}_{words}", d["label"])


def page_setup() -> None:
    """Session defaults and the shared sidebar; every page calls this first."""
    init_state()
    sync_from_widgets()
    try:
        sidebar()
    except Exception as exc:  # noqa: BLE001 - the sidebar never takes the page down
        show_page_error(exc)


def help_text(text: str) -> None:
    st.caption(f"{text} See {CITATION}.")


# ---------------------------------------------------------------- model

def test_model_name() -> str | None:
    name = os.environ.get("ICLVIZ_TEST_MODEL", "").strip()
    return name if name in TINY_MODELS else None


@st.cache_resource(show_spinner=False, max_entries=2)
def _load(name: str, device: str, dtype: str, trust_remote_code: bool):
    if name in TINY_MODELS and test_model_name():
        return tiny_model(name)
    settings().check_model(name, trust_remote_code)  # what visitors may load: the operator's choice
    if device != "auto":
        check_device(device)
    return load_model(name, device=None if device == "auto" else device, dtype=None if dtype == "auto" else dtype,
                      trust_remote_code=trust_remote_code)


def model_spec() -> tuple[str, str, str, bool]:
    return st.session_state.setdefault("model_spec", (test_model_name() or APP_MODEL, "auto", "auto", False))


def model_key() -> str:
    return "|".join(map(str, model_spec()))


def get_model():
    """The session's model (loaded once per process), or None after showing why not."""
    spec = model_spec()
    try:
        with st.spinner(f"Loading {spec[0]} (the first load of the default model builds its cache, ~1 minute)"):
            return _load(*spec)
    except (ModelLoadError, ValidationError) as exc:
        st.error(safe(f"The model could not be loaded: {exc}"))
    except Exception as exc:  # noqa: BLE001 - anything else becomes a message, not a crash
        st.error(safe(f"The model could not be loaded ({type(exc).__name__}): {str(exc)[:300]}"))
    return None


def sidebar() -> None:
    with st.sidebar:
        st.subheader("Model")
        name, device, dtype, trust = model_spec()
        cfg = settings()
        sources = cfg.model_sources
        if test_model_name():
            sources.append("Tiny test model")
        if name in TINY_MODELS:
            current = "Tiny test model" if "Tiny test model" in sources else sources[0]
        elif offline_model(name) is not None:
            current = sources[0]
        elif name.startswith("/") or name.startswith("."):
            current = "Local folder"
        else:
            current = "Hugging Face Hub name"
        if current not in sources:
            current = sources[0]
        src = st.radio("Source", sources, index=sources.index(current), key="w_model_source")
        typed = name
        if src == "Hugging Face Hub name" and not cfg.allow_hub:  # only the operator's list
            allowed = [m for m in cfg.allowed_models if not m.startswith(("/", ".", "~"))]
            typed = st.selectbox("Model name (allowed on this server)", allowed, key="w_model_hub_pick")
        elif src == "Hugging Face Hub name":
            typed = st.text_input("Model name", value="" if current != src else name, placeholder="gpt2",
                                  key="w_model_hub")
        elif src == "Local folder" and not cfg.allow_local:
            allowed = [m for m in cfg.allowed_models if m.startswith(("/", ".", "~"))]
            typed = st.selectbox("Folder (allowed on this server)", allowed, key="w_model_dir_pick")
        elif src == "Local folder":
            typed = st.text_input("Folder (absolute path)", value="" if current != src else name,
                                  placeholder="/path/to/model", key="w_model_dir")
        elif src == "Tiny test model":
            typed = st.selectbox("Test model", TINY_MODELS, key="w_model_tiny")
        else:
            names = list(dict.fromkeys(m.name for m in OFFLINE_MODELS.values()))
            now = offline_model(name).name if offline_model(name) is not None else APP_MODEL
            typed = st.selectbox("Which offline model", names, index=names.index(now), key="w_model_offline",
                                 format_func=lambda n: OFFLINE_MODELS[n].label.split(" (")[0])
        with st.expander("Device and dtype"):
            dev = st.selectbox("Device", ["auto", "cpu", "cuda"], index=["auto", "cpu", "cuda"].index(device),
                               key="w_device")
            dt = st.selectbox("dtype", ["auto", "float32", "bfloat16", "float16"],
                              index=["auto", "float32", "bfloat16", "float16"].index(dtype), key="w_dtype")
            tr = False
            if cfg.allow_remote_code:
                tr = st.checkbox("trust_remote_code (runs the model repository's code)", value=trust, key="w_trust")
        new = ((typed or "").strip() or APP_MODEL, dev, dt, tr)
        if new != model_spec() and st.button("Load model", type="primary", key="w_load_model"):
            # Loaded here, once per click: a failure keeps the previous model and is not retried on every rerun.
            try:
                cfg.check_model(new[0], new[3])
                with st.spinner(f"Loading {new[0]}"):
                    _load(*new)
                st.session_state.model_spec = new
                st.session_state.pop("model_error", None)
            except (ModelLoadError, ValidationError) as exc:
                st.session_state.model_error = f"{new[0]!r} could not be loaded: {exc}"
            except Exception as exc:  # noqa: BLE001 - anything else becomes a message
                st.session_state.model_error = f"{new[0]!r} could not be loaded ({type(exc).__name__}): {exc}"[:500]
            st.rerun()
        if st.session_state.get("model_error"):
            st.error(safe(st.session_state.model_error) + " The previous model stays in use.")
        lm = get_model()
        if lm is not None:
            st.caption(safe(lm.describe()))
            st.caption(f"device **{lm.device}**, dtype **{str(lm.dtype).replace('torch.', '')}**, "
                       f"context {lm.context_length} tokens")
            for note in lm.notes:
                st.caption(f"note: {note}")
            heads = chosen_heads(lm)
            st.markdown("**In-context heads** (shared by all pages): " + (", ".join(map(head_name, heads)) or "none"))
        with st.expander("Share the prompt and heads"):
            state = current_state()
            st.download_button("Download as JSON", state.to_json().encode(), file_name="iclviz_prompt.json",
                               mime="application/json", key="w_side_json")
            if st.button("Put them in the page address", key="w_side_url"):
                st.query_params["s"] = state.to_query_param()
                st.query_params["mode"] = st.session_state.get("w_mode", "none")
                st.caption("Done: copy the address from the browser's address bar; opening it restores them.")


# ---------------------------------------------------------------- session state

def init_state() -> None:
    """Defaults for this session; a shared link (?s=...) fills them on the first run."""
    ss = st.session_state
    if ss.get("_initialised"):
        return
    ss._initialised = True
    ss.demo_counter = 0
    apply_state(LabState())
    mode = st.query_params.get("mode")
    if mode in INTERVENTION_MODES:
        ss.w_mode = mode
    shared = st.query_params.get("s")
    if shared:
        try:
            apply_state(state_from_query_param(shared))
            ss.share_message = ("success", "Loaded the prompt and heads from the shared link.")
        except ValueError as exc:
            ss.share_message = ("error", safe(f"The shared link could not be read: {exc}"))


def apply_state(state: LabState) -> None:
    ss = st.session_state
    ss.demos = []
    for text, label in state.demos:
        ss.demo_counter = ss.get("demo_counter", 0) + 1
        ss.demos.append({"id": ss.demo_counter, "text": text, "label": label})
    ss.query = state.query
    ss.label_words = list(state.label_words)
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


def heads_from_text(text: str) -> list[tuple[int, int]]:
    return parse_heads(text)


# ---------------------------------------------------------------- prompts and cached runs

def demo_tuple() -> tuple[tuple[str, str], ...]:
    """The session's demonstrations; empty rows (just added, not yet filled) are skipped and listed in
    ``skipped_demos`` so that the page can say so instead of blanking the prediction."""
    ss = st.session_state
    ss.skipped_demos = [i + 1 for i, d in enumerate(ss.demos) if not str(d["text"]).strip()]
    if len(ss.skipped_demos) == len(ss.demos):  # nothing filled: let build_prompt report it
        ss.skipped_demos = []
        return tuple((d["text"], d["label"]) for d in ss.demos)
    return tuple((d["text"], d["label"]) for d in ss.demos if str(d["text"]).strip())


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
            st.error(safe(f"The prompt cannot be run: {exc}"))
        return None
    if show_errors:
        for w in prompt.warnings:
            st.warning(safe(w))
    return prompt


_CFG = _settings()[0]


# Result caches hold what the pages show (probabilities, label attention, small tables), bounded in
# number and time (ICLVIZ_CACHE_ENTRIES, ICLVIZ_CACHE_TTL), so a server's memory stays flat.
@st.cache_resource(show_spinner=False, max_entries=_CFG.cache_entries, ttl=_CFG.cache_ttl)
def _predict(_lm, key: str, demos, query: str, words, template: str, kind: str, heads):
    prompt = build_prompt(_lm.tokenizer, list(demos), query, tuple(words), template, max_tokens=_lm.context_length)
    return slim_prediction(predict_prompt(_lm, prompt, Plan(kind, tuple(heads))))


def predict_current(lm, kind: str = "none", heads=()):
    """Prediction (with capture) of the session's prompt under an intervention plan; cached by inputs."""
    ss = st.session_state
    heads = tuple(sorted(tuple(h) for h in heads)) if kind != "none" else ()
    return _predict(lm, model_key(), demo_tuple(), ss.query, tuple(ss.label_words), ss.template, kind, heads)


@st.cache_resource(show_spinner=False)
def dataset(name: str):
    return load_dataset(name)


UPLOAD = "your own file (CSV/JSONL)"


@st.cache_data(show_spinner=False, max_entries=8, ttl=_CFG.cache_ttl)
def _uploaded_dataset(content: bytes, filename: str):
    return dataset_from_table(read_table(content, filename), name=filename)


def dataset_picker(key: str, default: str = "sst2"):
    """A shipped dataset, or an uploaded CSV/JSONL with text and label columns; None after a message."""
    from iclviz.data import SHIPPED_DIR

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


def list_datasets_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if (p / "meta.json").is_file() and (p / "train.jsonl").is_file())


def csv_download(df: pd.DataFrame, name: str, label: str = "Download CSV", key: str | None = None) -> None:
    st.download_button(label, df.to_csv(index=False).encode(), file_name=name, mime="text/csv", key=key or name)


def downloads(df: pd.DataFrame, csv_name: str, fig, html_name: str, html_label: str) -> None:
    """A CSV of the table and an HTML file of the figure, side by side."""
    from iclviz.plots import figure_html

    d1, d2 = st.columns(2)
    with d1:
        csv_download(df, csv_name)
    with d2:
        st.download_button(html_label, figure_html(fig).encode(), file_name=html_name, mime="text/html")


INTERVENTION_MODES = ["none", "all in-context heads", "top N in-context heads", "ticked heads",
                      "random heads (control)"]


@st.cache_resource(show_spinner=False, max_entries=64)
def _paired_effect(_lm, key: str, demos, query: str, words, template: str, heads, kind: str, draws: int):
    from iclviz.readout import paired_effect

    prompt = build_prompt(_lm.tokenizer, list(demos), query, tuple(words), template, max_tokens=_lm.context_length)
    before = _predict(_lm, key, demos, query, words, template, "none", ())  # cached: the page has it already
    # The same cached pass the page shows for "all in-context heads" (computed once, shared both ways).
    icl = _predict(_lm, key, demos, query, words, template, kind, tuple(sorted(tuple(h) for h in heads)))
    return paired_effect(_lm, prompt, list(heads), kind, draws, before=before, icl=icl)


def paired_effect_current(lm, heads, kind: str = "ablate", draws: int = 3):
    """iclviz.readout.paired_effect on the session's prompt; cached by its inputs."""
    ss = st.session_state
    return _paired_effect(lm, model_key(), demo_tuple(), ss.query, tuple(ss.label_words), ss.template,
                          tuple(map(tuple, heads)), kind, int(draws))


@st.cache_resource(show_spinner=False, max_entries=64)
def _top_n(_lm, key: str, demos, query: str, words, template: str, heads, kind: str):
    from iclviz.readout import top_n_margins

    prompt = build_prompt(_lm.tokenizer, list(demos), query, tuple(words), template, max_tokens=_lm.context_length)
    return top_n_margins(_lm, prompt, list(heads), kind)


def top_n_current(lm, heads, kind: str = "ablate"):
    """iclviz.readout.top_n_margins on the session's prompt (heads in their listed order); cached."""
    ss = st.session_state
    return _top_n(lm, model_key(), demo_tuple(), ss.query, tuple(ss.label_words), ss.template,
                  tuple(map(tuple, heads)), kind)


class ProgressRun:
    """A long run's progress bar with done/total, elapsed time and a finish estimate, and a Stop button
    that disappears when the run ends. Use ``with ProgressRun("Scanning heads", key) as cb: fn(progress=cb)``.

    Stop works the way Streamlit works: the click starts a new script run, which ends this one at its
    next progress update; ``stopped_key`` in the session says so on that next run.
    """

    def __init__(self, label: str, key: str):
        import time

        self.label, self.key, self._time = label, key, time
        self.stop_slot = st.empty()
        self.bar = st.progress(0.0, text=f"{label}: starting")
        self.t0 = time.perf_counter()

    def __call__(self, done, total, note=""):
        from iclviz.readout import progress_text

        self.bar.progress(min(1.0, done / max(total, 1)),
                          text=progress_text(self.label, done, total, self._time.perf_counter() - self.t0, str(note)))

    def __enter__(self):
        st.session_state[f"{self.key}_running"] = True
        self.stop_slot.button("Stop", key=f"{self.key}_stop", icon=":material/stop_circle:")
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


def run_size(key: str, quick: int, full: int, label: str = "Test sentences") -> int:
    """A quick / full size choice, with a custom number; returns the number of test sentences."""
    c1, c2 = st.columns([2, 1])
    size = c1.radio("Run size", [f"quick ({quick})", f"full ({full})", "custom"], horizontal=True,
                    key=f"{key}_size", help="quick: a first look in seconds to a minute; full: enough sentences to "
                                            "resolve a 15-20 point difference")
    if size == "custom":
        return int(c2.number_input(label, 2, 1000, quick, key=f"{key}_n"))
    return quick if size.startswith("quick") else full


def move_demo(i: int, step: int) -> None:
    """Move demonstration i up (step -1) or down (+1): a button callback shared by the pages."""
    sync_from_widgets()
    demos = st.session_state.demos
    j = i + step
    if 0 <= i < len(demos) and 0 <= j < len(demos):
        demos[i], demos[j] = demos[j], demos[i]


def order_editor(prefix: str) -> None:
    """The demonstrations in order, each with up/down arrows (the same moves as the Prompt lab's)."""
    for i, d in enumerate(st.session_state.demos):
        c0, c1, c2 = st.columns([12, 1, 1], vertical_alignment="center")
        text = d["text"] if len(d["text"]) <= 90 else d["text"][:87] + "…"
        c0.markdown(f"#{i + 1} · `{d['label']}` {text or '*(empty)*'}")
        c1.button("", icon=":material/arrow_upward:", key=f"{prefix}_up_{d['id']}", on_click=move_demo,
                  args=(i, -1), disabled=i == 0, help=f"move demonstration {i + 1} up")
        c2.button("", icon=":material/arrow_downward:", key=f"{prefix}_down_{d['id']}", on_click=move_demo,
                  args=(i, 1), disabled=i == len(st.session_state.demos) - 1, help=f"move demonstration {i + 1} down")


def show_page_error(exc: BaseException) -> None:
    st.error(safe(f"This page hit an error and stopped: {type(exc).__name__}: {str(exc)[:400]}.")
             + " The other pages still work; change the inputs or reload.")
    with st.expander("Details for a bug report"):
        st.code("".join(traceback.format_exception(exc))[-4000:])


# ---------------------------------------------------------------- analyses (guarded: a missing module is a message)

def analysis(module: str, name: str):
    """A function from an iclviz analysis module, or None after a clear message."""
    import importlib

    try:
        return getattr(importlib.import_module(f"iclviz.{module}"), name)
    except (ImportError, AttributeError):
        st.info(f"iclviz.{module}.{name} is not available in this version of the library yet.")
        return None


def locate_heads(lm, setup, scaling, layers, batch_size, progress):
    fn = analysis("locate", "locate_heads")
    if fn is None:
        raise RuntimeError("head location is not available yet")
    return fn(lm, setup, scaling=scaling, layers=layers, batch_size=batch_size, progress=progress)


def intervention_table(lm, setup, heads, kinds, random_draws, seed, batch_size, progress):
    fn = analysis("locate", "intervention_table")
    if fn is None:
        raise RuntimeError("the intervention table is not available yet")
    return fn(lm, setup, heads, kinds=kinds, random_draws=random_draws, seed=seed, batch_size=batch_size,
              progress=progress)


@st.cache_resource(show_spinner=False, max_entries=_CFG.cache_entries, ttl=_CFG.cache_ttl)
def _cached_prompt_analysis(_lm, key: str, module: str, name: str, demos, query, words, template, args):
    import importlib

    fn = getattr(importlib.import_module(f"iclviz.{module}"), name)
    if name == "label_swap_one":
        return fn(_lm, list(demos), query, tuple(words), template, *args)
    prompt = build_prompt(_lm.tokenizer, list(demos), query, tuple(words), template, max_tokens=_lm.context_length)
    return fn(_lm, prompt, *args)


def prompt_analysis(lm, module: str, name: str, *args):
    """``iclviz.<module>.<name>`` on the session's prompt, cached by model, prompt and arguments.

    Returns None after a message when the function is not available. ``args`` must be hashable.
    """
    if analysis(module, name) is None:
        return None
    ss = st.session_state
    return _cached_prompt_analysis(lm, model_key(), module, name, demo_tuple(), ss.query, tuple(ss.label_words),
                                   ss.template, tuple(args))


def model_heads_prompt():
    """The loaded model, the chosen heads and the current prompt; stops the page with a message
    when the model or the prompt is missing."""
    lm = get_model()
    if lm is None:
        st.stop()
    heads = chosen_heads(lm)
    prompt = current_prompt(lm)
    if prompt is None:
        st.info("Fix the prompt on the Prompt lab page.")
        st.stop()
    return lm, heads, prompt
