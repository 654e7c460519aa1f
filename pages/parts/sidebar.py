"""The shared sidebar: the model picker (loaded once per process), the chosen heads, sharing."""

from __future__ import annotations

import streamlit as st

from iclviz.engine.models import ModelLoadError, load_model
from iclviz.engine.offline import OFFLINE_MODELS, offline_model
from iclviz.testing import TINY_MODELS, tiny_model
from iclviz.validation import ValidationError, check_device, head_name
from pages.parts.state import (
    APP_MODEL,
    chosen_heads,
    current_mode,
    current_state,
    model_spec,
    settings,
    test_model_name,
)
from pages.parts.widgets import safe


@st.cache_resource(show_spinner=False, max_entries=2)
def _load(name: str, device: str, dtype: str, trust_remote_code: bool):
    if name in TINY_MODELS and test_model_name():
        return tiny_model(name)
    settings().check_model(name, trust_remote_code)  # what visitors may load: the operator's choice
    if device == SPREAD:  # accelerate places the layers over the GPUs and the CPU (and the operator's disk folder)
        return load_model(name, dtype=None if dtype == "auto" else dtype, trust_remote_code=trust_remote_code,
                          device_map="auto", offload_folder=settings().offload_folder or None)
    if device != "auto":
        check_device(device)
    return load_model(name, device=None if device == "auto" else device, dtype=None if dtype == "auto" else dtype,
                      trust_remote_code=trust_remote_code)


SPREAD = "spread (device_map=auto)"
DEVICES = ["auto", "cpu", "cuda", SPREAD]


LOADED: set = set()  # the model specs this process has loaded (a set's add is atomic: sessions share it safely)


def is_loaded() -> bool:
    """Whether the session's model is loaded in this process already (no loading message is needed)."""
    return model_spec() in LOADED


def get_model():
    """The session's model (loaded once per process), or None after showing why not."""
    spec = model_spec()
    try:
        with st.spinner(f"Loading {spec[0]} (the first load of the default model builds its cache, ~1 minute)"):
            lm = _load(*spec)
        LOADED.add(spec)
        return lm
    except (ModelLoadError, ValidationError) as exc:
        st.error(safe(f"The model could not be loaded: {exc}"))
    except Exception as exc:  # noqa: BLE001 - anything else becomes a message, not a crash
        st.error(safe(f"The model could not be loaded ({type(exc).__name__}): {str(exc)[:300]}"))
    return None


def figure_format() -> None:
    """One choice for every chart's camera button: PNG or SVG (plotly has one image button per chart)."""
    st.radio("Charts' camera button saves", ["png", "svg"], format_func=str.upper, horizontal=True,
             key="w_image_format", help="every chart's camera button (top right of the chart, on hover) downloads "
                                        "it in this format, drawn in your browser; HTML downloads have both")


def sidebar(load: bool = True) -> None:
    """``load``: load the session's model (a page that only shows stored results passes False)."""
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
            dev = st.selectbox("Device", DEVICES, index=DEVICES.index(device) if device in DEVICES else 0,
                               key="w_device", help="'spread' puts a model larger than one GPU over the GPUs and "
                                                    "the CPU (accelerate's device_map='auto'), and over the disk "
                                                    "folder the operator named in ICLVIZ_OFFLOAD_FOLDER")
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
        lm = get_model() if load else None
        if not load:
            st.caption("This page loads no model until you ask it to (replaying or saving a lesson).")
        if lm is not None:
            st.caption(safe(lm.describe()))
            st.caption(f"device **{lm.device}**, dtype **{str(lm.dtype).replace('torch.', '')}**, "
                       f"context {lm.context_length} tokens")
            for note in lm.notes:
                st.caption(safe(f"note: {note}"))
            heads = chosen_heads(lm)
            st.markdown("**In-context heads** (shared by all pages): " + (", ".join(map(head_name, heads)) or "none"))
        with st.expander("Figures"):
            figure_format()
        with st.expander("Share the prompt and heads"):
            state = current_state()
            st.download_button("Download as JSON", state.to_json().encode(), file_name="iclviz_prompt.json",
                               mime="application/json", key="w_side_json")
            if st.button("Put them in the page address", key="w_side_url"):
                st.query_params["s"] = state.to_query_param()
                st.query_params["mode"] = current_mode()
                st.caption("Done: copy the address from the browser's address bar; opening it restores them.")
