"""Each demonstration's contribution (issue 11, item 2): identities on the tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from views_common import HEADS, SPEC, close

from iclviz.analyses.compare import PromptSpec
from iclviz.analyses.contributions import demo_contributions
from iclviz.engine import interventions as iv
from iclviz.engine.lens import logit_minus


def test_contributions_add_up_to_the_heads_direct_effect_through_label_positions(tiny):
    prompt = SPEC.build(tiny)
    c = demo_contributions(tiny, prompt, HEADS)
    assert c.pair == ("foo", "bar")
    base = tiny.run([prompt])
    cap = base.capture
    ta, tb = prompt.label_token_ids["foo"], prompt.label_token_ids["bar"]
    for layer, head in HEADS:
        # the head's output through the label positions = its output minus its output with them knocked out
        ko = tiny.run([prompt], iv.knockout([prompt.label_positions], heads=[(layer, head)])).capture
        through = cap.head_out[0, layer, head] - ko.head_out[0, layer, head]
        want = logit_minus(tiny.arch, through[None], cap.resid_final[:1], ta, tb)[0]
        got = c.per_head[c.per_head["head"] == f"L{layer}H{head}"]["contribution"].sum()
        close(got, want, 1e-5)
    close(c.table["contribution"].sum(), c.total_contribution, 1e-6)
    close(c.baseline_margin + c.total_contribution, c.prediction_margin, 1e-6)
    margin = float(base.label_logits[0, 0] - base.label_logits[0, 1])
    close(c.prediction_margin, margin, 1e-6)
    w = c.waterfall()
    assert list(w["measure"]) == ["absolute"] + ["relative"] * len(prompt.label_positions) + ["total"]
    close(w["cumulative"].iloc[-2], c.prediction_margin, 1e-5)
    json.dumps(c.to_dict())


def test_contribution_knockouts_equal_separate_single_runs(tiny):
    prompt = SPEC.build(tiny)
    c = demo_contributions(tiny, prompt, HEADS)
    base = tiny.run([prompt], capture=False).label_logits[0]
    m0 = float(base[0] - base[1])
    for r in c.table.itertuples():
        one = tiny.run([prompt], iv.knockout([[r.position]], heads=HEADS), capture=False).label_logits[0]
        close(r.knockout_effect, float(one[0] - one[1]) - m0, 1e-5)
    every = tiny.run([prompt], iv.knockout([prompt.label_positions], heads=HEADS), capture=False).label_logits[0]
    close(c.knockout_all, float(every[0] - every[1]) - m0, 1e-5)


def test_contributions_for_more_labels_use_the_predicted_pair(tiny_llama):
    spec = PromptSpec((("good", "foo"), ("bad", "bar"), ("so so", "film")), "fine", ("foo", "bar", "film"))
    prompt = spec.build(tiny_llama)
    c = demo_contributions(tiny_llama, prompt, HEADS)
    logits = tiny_llama.run([prompt], capture=False).label_logits[0]
    order = torch.argsort(logits, descending=True).tolist()
    assert c.pair == (prompt.label_words[order[0]], prompt.label_words[order[1]])
    assert demo_contributions(tiny_llama, prompt, HEADS, pair=("film", "foo")).pair == ("film", "foo")
    with pytest.raises(ValueError):
        demo_contributions(tiny_llama, prompt, HEADS, scaling="final_norm")


def test_stored_contributions_draw_the_same_waterfall(tiny_llama, tokenizer):
    """A lesson file stores ``to_dict``; ``from_dict`` gives back what the waterfall is drawn from."""
    import pandas as pd

    from iclviz.analyses.contributions import Contributions
    from iclviz.outputs.figures import waterfall_figure
    from iclviz.prompt import build_prompt

    p = build_prompt(tokenizer, [("a wonderful film", "foo"), ("dull and boring", "bar"), ("great", "foo")],
                     "I loved it", ("foo", "bar"))
    c = demo_contributions(tiny_llama, p, [(1, 0), (2, 3)])
    back = Contributions.from_dict(json.loads(json.dumps(c.to_dict())))
    pd.testing.assert_frame_equal(back.waterfall(), c.waterfall())
    assert back.heads == c.heads and back.pair == c.pair
    assert waterfall_figure(back).to_json() == waterfall_figure(c).to_json()
