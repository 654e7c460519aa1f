"""Integration (issue 11): prompt A/B, contributions and the two towers patched, on the default model.

Only identities and shapes are asserted (no effect sizes); the numbers are printed (``-s``).
"""

from __future__ import annotations

import pytest
import torch
from views_common import close

from iclviz.analyses.compare import PromptSpec, compare_prompts, flip_label, swap_all_labels
from iclviz.analyses.contributions import demo_contributions
from iclviz.analyses.heads import APP_HEAD_RULE, located_heads
from iclviz.analyses.towers_patch import towers_patch
from iclviz.engine import interventions as iv
from iclviz.engine.models import load_model

pytestmark = pytest.mark.integration

SST2 = PromptSpec((("a gorgeous, witty, seductive movie", "foo"),
                   ("the plot is nothing but boilerplate clichés", "bar"),
                   ("an enthralling, playful film", "foo"), ("a dull, simple-minded and stereotypical tale", "bar"),
                   ("one of the year's most intriguing explorations", "foo"), ("it's a mess, and a boring one", "bar")),
                  "a warm, funny, engaging film")


@pytest.fixture(scope="module")
def lm():
    return load_model("default")


@pytest.fixture(scope="module")
def heads(lm):
    entry = located_heads(lm.name, rule=APP_HEAD_RULE)  # keyed by the model's short name, not the alias "default"
    assert entry is not None and entry["heads"]
    return entry["heads"]


def test_prompt_ab_on_the_default_model(lm, heads):
    same = compare_prompts(lm, SST2, SST2, heads)
    assert (same.head_table[["attention_diff", "head_logit_diff"]] == 0).all().all()
    c = compare_prompts(lm, SST2, swap_all_labels(SST2), heads)
    assert len(c.head_table) == 2 * len(heads)
    assert c.labels["prob_a"].sum() == pytest.approx(1) and c.labels["prob_b"].sum() == pytest.approx(1)
    print("\nA/B label swap:", c.predicted_a, "->", c.predicted_b)
    print(c.head_table[["head", "label", "attention_a", "attention_b", "head_logit_a", "head_logit_b"]]
          .round(3).to_string())
    print(c.labels.round(3).to_string())
    f = compare_prompts(lm, SST2, flip_label(SST2, 5), heads)
    print("flip demo 6:", f.predicted_a, "->", f.predicted_b, f.labels[["label", "prob_a", "prob_b"]].round(3).values)


def test_contributions_on_the_default_model(lm, heads):
    prompt = SST2.build(lm)
    c = demo_contributions(lm, prompt, heads)
    close(c.baseline_margin + c.table["contribution"].sum(), c.prediction_margin, 1e-5)
    base = lm.run([prompt], capture=True)
    m0 = float(base.label_logits[0, 0] - base.label_logits[0, 1])
    close(c.prediction_margin, m0, 1e-5)
    ta, tb = prompt.label_token_ids["foo"], prompt.label_token_ids["bar"]
    from iclviz.engine.lens import logit_minus
    for layer, head in heads:
        ko = lm.run([prompt], iv.knockout([prompt.label_positions], heads=[(layer, head)])).capture
        through = base.capture.head_out[0, layer, head] - ko.head_out[0, layer, head]
        want = logit_minus(lm.arch, through[None], base.capture.resid_final[:1], ta, tb)[0]
        close(c.per_head[c.per_head["head"] == f"L{layer}H{head}"]["contribution"].sum(), want, 1e-4)
    for r in c.table.itertuples():
        one = lm.run([prompt], iv.knockout([[r.position]], heads=heads), capture=False).label_logits[0]
        close(r.knockout_effect, float(one[0] - one[1]) - m0, 1e-4)
    print("\ncontributions:", f"margin {c.prediction_margin:.3f}, baseline {c.baseline_margin:.3f}, "
          f"sum {c.total_contribution:.3f}, knockout effect (all, after - before) {c.knockout_all:+.3f}")
    print(c.table[["demo", "label", "attention", "contribution", "knockout_effect"]].round(3).to_string())


def test_towers_patch_on_the_default_model(lm, heads):
    a, b = SST2.build(lm), swap_all_labels(SST2).build(lm)
    t = towers_patch(lm, a, b, heads, keep_captures=True)
    assert list(t.summary.condition) == ["none", "q", "k", "v", "q+k", "all", "donor (B)"]
    plain = lm.run([a], capture=False).label_logits[0]
    none = t.summary.iloc[0]
    close(torch.tensor([none.logit_foo, none.logit_bar]), plain, 1e-4)
    first = min(x for x, _ in heads)
    for x, y in heads:
        if x == first:  # a value patch moves no attention in the first patched layer
            close(t.capture.attn[3, x, y], t.capture.attn[0, x, y], 1e-6)
    print("\ntowers (label-swapped donor, label positions):")
    print(t.summary.drop(columns=["patched"]).round(3).to_string())
    full = towers_patch(lm, a, b, heads, positions="all", conditions=("none", "all"), keep_captures=True)
    for x, y in heads:
        close(full.capture.head_out[1, x, y], full.donor_capture.head_out[0, x, y], 1e-4)
    print("all positions:", full.summary[["condition", "predicted", "margin"]].round(3).values.tolist())
