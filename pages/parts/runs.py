"""Cached runs on the session's prompt: predictions, live paired effects, per-head tables.

The model is loaded once per process; results are cached by their inputs (model, prompt, heads, plan),
so two sessions share work but never each other's state. The caches hold what the pages show
(probabilities, label attention, small tables), bounded in number and time (ICLVIZ_CACHE_ENTRIES,
ICLVIZ_CACHE_TTL), so a server's memory stays flat.
"""

from __future__ import annotations

import streamlit as st

from iclviz.analyses.compare import PromptSpec, compare_prompts
from iclviz.analyses.contributions import demo_contributions
from iclviz.analyses.evaluation import predict_prompt
from iclviz.analyses.label_swap import label_swap_one
from iclviz.analyses.label_vectors import label_vector_table
from iclviz.analyses.readout import live_check, slim_prediction, top_n_margins
from iclviz.analyses.towers_patch import towers_patch
from iclviz.analyses.two_towers import score_similarity
from iclviz.engine.interventions import Plan
from iclviz.prompt import build_prompt
from pages.parts.state import CFG, model_key, prompt_key

_BOUNDED = dict(show_spinner=False, max_entries=CFG.cache_entries, ttl=CFG.cache_ttl)


def _build(lm, demos, query: str, words, template: str):
    return build_prompt(lm.tokenizer, list(demos), query, tuple(words), template, max_tokens=lm.context_length)


@st.cache_resource(**_BOUNDED)
def _predict(_lm, key: str, demos, query: str, words, template: str, kind: str, heads):
    return slim_prediction(predict_prompt(_lm, _build(_lm, demos, query, words, template), Plan(kind, tuple(heads))))


def predict_current(lm, kind: str = "none", heads=()):
    """Prediction (with the label attention) of the session's prompt under an intervention plan."""
    heads = tuple(sorted(tuple(h) for h in heads)) if kind != "none" else ()
    return _predict(lm, model_key(), *prompt_key(), kind, heads)


@st.cache_resource(show_spinner=False, max_entries=64)
def _live_check(_lm, key: str, demos, query: str, words, template: str, heads, kind: str, draws: int):
    return live_check(_lm, list(demos), query, tuple(words), template, list(heads), kind, draws)


def live_check_current(lm, heads, kind: str = "knockout", draws: int = 3):
    """iclviz.analyses.readout.live_check on the session's prompt: the heads against random sets and the label-swap
    split (a knockout: every row of the prompt and its swapped twin as one batch over their cached prefixes)."""
    return _live_check(lm, model_key(), *prompt_key(), tuple(map(tuple, heads)), kind, int(draws))


@st.cache_resource(show_spinner=False, max_entries=64)
def _top_n(_lm, key: str, demos, query: str, words, template: str, heads, kind: str):
    return top_n_margins(_lm, _build(_lm, demos, query, words, template), list(heads), kind)


def top_n_current(lm, heads, kind: str = "ablate"):
    """iclviz.analyses.readout.top_n_margins on the session's prompt (heads in their listed order)."""
    return _top_n(lm, model_key(), *prompt_key(), tuple(map(tuple, heads)), kind)


@st.cache_resource(**_BOUNDED)
def _label_vectors(_lm, key: str, demos, query: str, words, template: str, heads, scaling: str):
    return label_vector_table(_lm, _build(_lm, demos, query, words, template), list(heads), scaling)


def label_vectors_current(lm, heads, scaling: str):
    """iclviz.analyses.label_vectors.label_vector_table on the session's prompt (a small table, not the vectors)."""
    return _label_vectors(lm, model_key(), *prompt_key(), tuple(map(tuple, heads)), scaling)


@st.cache_resource(**_BOUNDED)
def _label_swap(_lm, key: str, demos, query: str, words, template: str, heads):
    return label_swap_one(_lm, list(demos), query, tuple(words), template, list(heads))


def label_swap_current(lm, heads):
    """iclviz.analyses.label_swap.label_swap_one: the session's prompt with its labels as they are and swapped."""
    return _label_swap(lm, model_key(), *prompt_key(), tuple(map(tuple, heads)))


@st.cache_resource(**_BOUNDED)
def _score_similarity(_lm, key: str, demos, query: str, words, template: str, heads, sim_layer: int):
    return score_similarity(_lm, _build(_lm, demos, query, words, template), list(heads), sim_layer)


def score_similarity_current(lm, heads, sim_layer: int):
    """iclviz.analyses.two_towers.score_similarity on the session's prompt."""
    return _score_similarity(lm, model_key(), *prompt_key(), tuple(map(tuple, heads)), int(sim_layer))


# ---------------------------------------------------------------- two prompts (A/B, the towers patch), contributions

def spec_key(spec: PromptSpec) -> tuple:
    """A PromptSpec as cache-key arguments (``PromptSpec(*spec_key(spec)) == spec``)."""
    return spec.demos, spec.query, spec.label_words, spec.template


@st.cache_resource(**_BOUNDED)
def _compare(_lm, key: str, a: tuple, b: tuple, heads):
    return compare_prompts(_lm, PromptSpec(*a), PromptSpec(*b), list(heads))


def compare_specs(lm, a: PromptSpec, b: PromptSpec, heads):
    """iclviz.analyses.compare.compare_prompts of prompts A and B (per head and label, A, B and B - A)."""
    return _compare(lm, model_key(), spec_key(a), spec_key(b), tuple(map(tuple, heads)))


@st.cache_resource(**_BOUNDED)
def _contributions(_lm, key: str, demos, query: str, words, template: str, heads, pair):
    return demo_contributions(_lm, _build(_lm, demos, query, words, template), list(heads), pair)


def contributions_current(lm, heads, pair=None):
    """iclviz.analyses.contributions.demo_contributions on the session's prompt."""
    return _contributions(lm, model_key(), *prompt_key(), tuple(map(tuple, heads)), tuple(pair) if pair else None)


@st.cache_resource(**_BOUNDED)
def _towers(_lm, key: str, a: tuple, b: tuple, heads, positions: str):
    return towers_patch(_lm, PromptSpec(*a), PromptSpec(*b), list(heads), positions)


def towers_patch_specs(lm, a: PromptSpec, b: PromptSpec, heads, positions: str = "labels"):
    """iclviz.analyses.towers_patch.towers_patch: the heads' q / k / v patched from B (the donor) into A."""
    return _towers(lm, model_key(), spec_key(a), spec_key(b), tuple(map(tuple, heads)), positions)
