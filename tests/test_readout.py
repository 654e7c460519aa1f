"""The readouts pages show beside their claims: live paired effects, progress estimates, intervals, readings."""

from __future__ import annotations

import pandas as pd
import pytest

from iclviz.analyses.bias import BiasResult
from iclviz.analyses.lesson import LESSON_STATE, STEPS, step_result
from iclviz.analyses.readout import (
    EffectReadout,
    bias_reading,
    first_flip,
    paired_effect,
    progress_text,
    ratio_reading,
    top_n_margins,
)
from iclviz.prompt import build_prompt
from iclviz.testing import tiny_model


@pytest.fixture(scope="module")
def lm():
    return tiny_model("tiny-llama")


def test_progress_text_counts_and_estimates():
    assert progress_text("Scan", 0, 10, 0.0).startswith("Scan: 0/10 done")
    t = progress_text("Scan", 5, 20, 10.0, now=0)
    assert "5/20 done" in t and "about 30 s left" in t
    assert "left" not in progress_text("Scan", 20, 20, 40.0)


def test_effect_verdicts():
    e = EffectReadout("ablate", [(1, 1)], ("foo", "bar"), 2.0, "foo", -1.0, "bar", [1.8, 2.1], ["foo", "foo"])
    assert e.icl_change == -3.0 and e.verdict == "effect" and "shows the effect" in e.sentence()
    e.random_margins = [-2.0, 2.0]
    assert e.verdict == "control-like"
    e.icl_margin = 2.5
    assert e.verdict == "none" and "does not show" in e.sentence()


def test_paired_effect_and_top_n_on_a_prompt(lm):
    s = LESSON_STATE
    p = build_prompt(lm.tokenizer, s.demos, s.query, s.label_words, s.template)
    heads = [(2, 0), (2, 1), (1, 3)]
    eff = paired_effect(lm, p, heads, "ablate", draws=3)
    assert eff.n_draws >= 1 and all(set(r).isdisjoint(heads) for r in eff.random_heads)
    curve = top_n_margins(lm, p, heads, "ablate")
    assert list(curve["n"]) == [0, 1, 2, 3]
    assert curve["margin"].iloc[0] == pytest.approx(eff.before_margin, abs=1e-5)
    assert curve["margin"].iloc[3] == pytest.approx(eff.icl_margin, abs=1e-5)
    flip = first_flip(curve)
    assert flip is None or curve.set_index("n").loc[flip, "predicted"] != curve["predicted"].iloc[0]


def test_ratio_reading_says_when_the_result_reverses_majority_bias():
    t = pd.DataFrame([
        {"condition": "no fix", "quantity": "predicted foo", "n": 24, "value": 0.08, "ci_low": 0.02, "ci_high": 0.26},
        {"condition": "no fix", "quantity": "predicted bar", "n": 24, "value": 0.92, "ci_low": 0.74, "ci_high": 0.98},
        {"condition": "no fix", "quantity": "accuracy", "n": 24, "value": 0.5, "ci_low": 0.3, "ci_high": 0.7}])
    text, warning = ratio_reading(t, {"foo": 3, "bar": 1})
    assert "predicted bar for 92% of 24" in text and "reverse of majority bias" in text
    assert warning and "24 test sentences" in warning
    text, warning = ratio_reading(t.assign(n=400), {"foo": 1, "bar": 3})
    assert "as majority bias predicts" in text and warning is None


def test_bias_reading_refuses_a_reduction_from_a_tiny_sample():
    """Four sentences: one fewer of a label costs a quarter of them, which shuffling the outcomes among
    the arrangements gives often, so the reading declines to read the fix's 200% reduction."""
    outcomes = {"no fix": {"balanced": [1, 1, 1, 0], "one fewer foo": [1, 1, 0, 0], "one fewer bar": [1, 0, 1, 0]},
                "fix in-context heads": {"balanced": [1, 1, 1, 0], "one fewer foo": [1, 1, 1, 1],
                                         "one fewer bar": [1, 1, 1, 1]}}
    prompts = pd.DataFrame([{"condition": c, "arrangement": a, "seed": 0, "index": i, "correct": ok, "margin": 0.0,
                             "pred": 0} for c, arr in outcomes.items() for a, oks in arr.items()
                            for i, ok in enumerate(oks)])
    rows = prompts.groupby(["condition", "arrangement"], sort=False).correct.agg(["mean", "size"]).reset_index()
    rows = rows.rename(columns={"mean": "accuracy", "size": "n"})
    summary = pd.DataFrame({"condition": ["no fix", "fix in-context heads"], "reduction": [0.0, 2.0]})
    text, warning, table = bias_reading(BiasResult("majority", rows, summary, prompts=prompts))
    # 7 of 12 right with two labels: the model is at chance on this sample, and the reading says so
    assert "at chance here: no bias can be read" in text and "200%" not in text + warning
    t = table.set_index("condition")
    assert t.loc["no fix", "bias"] == pytest.approx(0.75 - 0.5) and t.loc["no fix", "p_no_bias"] > 0.05
    assert t.loc["fix in-context heads", "drop"] == pytest.approx(0.25 - (0.75 - 1.0))
    assert t.loc["no fix", "bias_low"] <= 0.25 <= t.loc["no fix", "bias_high"]


def test_reductions_outside_0_to_100_percent_are_not_percentages():
    from iclviz.analyses.readout import reduction_text

    assert reduction_text(0.4, 0.1) == "40%"
    assert "%" not in reduction_text(2.0, 0.1).replace("over 100%", "")
    assert "no bias" in reduction_text(0.5, -0.05) and "larger" in reduction_text(-0.5, 0.1)


def test_every_lesson_step_has_a_live_result(lm):
    s = LESSON_STATE
    heads = [(2, 0), (2, 1)]
    for i in range(len(STEPS)):
        r = step_result(lm, i, s.demos, s.query, s.label_words, s.template, heads)
        assert r.sentence and r.metrics
    swapped = step_result(lm, 3, s.demos, s.query, s.label_words, s.template, heads)
    assert "swapped labels" in swapped.sentence
    with pytest.raises(ValueError):
        step_result(lm, len(STEPS), s.demos, s.query, s.label_words, s.template, heads)


def test_heatmap_draws_scanned_layers_with_clickable_cells_and_a_titled_colour_bar():
    import numpy as np

    from iclviz.outputs.plots import heatmap_selection, importance_heatmap

    m = pd.DataFrame(np.nan, index=range(6), columns=range(4))
    m.loc[3:5] = np.arange(12).reshape(3, 4) / 10
    fig = importance_heatmap(m, "importance", chosen=[(4, 1), (0, 0)])
    heat, cells = fig.data
    assert list(heat.y) == [3, 4, 5]  # only the scanned layers
    assert "nats" in heat.colorbar.title.text
    assert heat.hoverinfo == "skip" and cells.hoverinfo != "skip"  # clicks land on the cell markers
    assert len(cells.x) == 12 and fig.layout.dragmode is None  # Streamlit makes clicks select only without "select"
    assert fig.layout.height >= 30 * 3
    assert len(fig.layout.shapes) == 1  # the chosen head outside the scanned layers is not drawn
    event = {"selection": {"points": [{"curve_number": 1, "x": 2, "y": 4}, {"curve_number": 0, "x": 1, "y": 3}]}}
    assert heatmap_selection(event) == [(4, 2)]
    assert heatmap_selection(None) == []


def test_figures_use_label_colours_for_labels_only_plain_legends_and_one_axis_title():
    from iclviz.outputs.plots import LABEL_COLORS, bias_bars, label_vector_bars, score_similarity_scatter, swap_bars

    t = pd.DataFrame({"condition": ["no fix", "majority fix", "recency fix"] * 2, "label": ["foo"] * 3 + ["bar"] * 3,
                      "probability": [0.1, 0.2, 0.3, 0.9, 0.8, 0.7]})
    fig = bias_bars(t, "label", "probability")
    assert not {tr.marker.color for tr in fig.data} & set(LABEL_COLORS)
    wide = pd.DataFrame({"head_name": ["L1H1"], "vo_logit_minus_first (swapped)": [1.0]})
    fig = swap_bars(wide, ["vo_logit_minus_first (swapped)"], "head_name",
                    names={"vo_logit_minus_first (swapped)": "at foo positions, labels swapped"})
    assert [tr.name for tr in fig.data] == ["at foo positions, labels swapped"]
    lv = pd.DataFrame({"demo": [1, 2] * 3, "label": ["foo", "bar"] * 3, "position": [3, 7] * 3,
                       "head_name": ["L1H1"] * 2 + ["L1H2"] * 2 + ["L2H0"] * 2, "weighted_logit_minus": range(6),
                       "attention": [0.1] * 6, "logit_minus": [1.0] * 6, "top_tokens": ["x"] * 6})
    fig = label_vector_bars(lv, ("foo", "bar"))
    assert all(not ax.title.text for k, ax in fig.layout.to_plotly_json().items() if k.startswith("yaxis")
               for ax in [fig.layout[k]])
    assert sum("logit" in (a.text or "") for a in fig.layout.annotations) == 1
    sc = pd.DataFrame({"similarity": [0.1, 0.2, 0.3, 0.4], "score": [1.0, 2.0, 100.0, 200.0], "label": ["foo"] * 4,
                       "head": ["L1H1", "L1H1", "L2H2", "L2H2"]})
    fig = score_similarity_scatter(sc, ("foo", "bar"))
    assert fig.layout.yaxis2.matches is None  # each head its own score axis


def test_bertviz_inputs_keep_real_numbers_and_frames_fit_their_content():
    import torch

    from pages.parts.bertviz_view import bertviz_height, bertviz_layer_inputs

    att = {2: torch.rand(4, 5, 5)}
    tup, toks = bertviz_layer_inputs(att, 3, 2, list("abcde"), only_from_t=True)
    assert len(tup) == 3 and tup[2].shape == (1, 4, 5, 5)  # every layer slot, so layer 2 is drawn as "2"
    assert tup[2][0, :, :-1].abs().sum() == 0 and torch.equal(tup[2][0, :, -1], att[2][:, -1])
    tup, toks = bertviz_layer_inputs(att, 3, 2, list("abcde"), hide_first=True)
    assert toks == list("bcde") and tup[2].shape == (1, 4, 4, 4)
    # bertviz's head view draws 22.5 px per token below a 30 px top: 70 tokens need > 1,600 px, not 600.
    assert bertviz_height("head", 70, 14) >= 22.5 * 70 + 30
    assert bertviz_height("model", 70, 3, 1) >= 70 * 18 + 55


@pytest.mark.parametrize("kind", ["ablate", "knockout"])
def test_head_sets_in_one_batch_equal_separate_predictions(tiny_llama, kind):
    from iclviz.analyses.evaluation import predict_prompt
    from iclviz.analyses.readout import margins_of_head_sets
    from iclviz.engine.interventions import Plan
    from iclviz.prompt import build_prompt

    lm = tiny_llama
    p = build_prompt(lm.tokenizer, [("a wonderful film", "foo"), ("dull and boring", "bar"), ("great", "foo")],
                     "a fine film", ("foo", "bar"))
    sets = [[], [(2, 1)], [(1, 0), (2, 3)], [(0, 2)]]
    got = margins_of_head_sets(lm, p, sets, kind, with_probs=True)
    for hs, (margin, predicted, probs) in zip(sets, got):
        want = predict_prompt(lm, p, Plan(kind if hs else "none", tuple(hs)), capture=False)
        assert margin == pytest.approx(want.margin, abs=1e-4) and predicted == want.predicted
        assert probs["foo"] == pytest.approx(want.probs["foo"], abs=1e-5)
    assert len({round(m, 4) for m, _, _ in got}) > 1  # the sets change the margin
