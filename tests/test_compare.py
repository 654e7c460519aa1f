"""Prompt A/B per head (issue 11, item 1): identities on the tiny models."""

from __future__ import annotations

import json

import pytest
from views_common import HEADS, SPEC, close

from iclviz.analyses.compare import (
    PromptSpec,
    change_label_words,
    compare_prompts,
    flip_label,
    label_swap_pair,
    reorder,
    reorder_pairs,
    swap_all_labels,
    swap_query,
)


def test_prompt_compared_with_itself_differs_by_exactly_zero(tiny):
    c = compare_prompts(tiny, SPEC, SPEC, HEADS)
    for col in ("attention_diff", "head_logit_diff"):
        assert (c.head_table[col] == 0).all(), col
    assert (c.labels[["prob_diff", "logit_diff"]] == 0).all().all()
    assert (c.positions["attention_diff"] == 0).all()
    assert c.predicted_a == c.predicted_b
    assert len(c.head_table) == len(HEADS) * 2
    json.dumps(c.to_dict())  # JSON-ready
    assert set(c.to_frame()["kind"]) == {"head", "model"}


def test_label_flip_moves_attention_as_the_captures_say(tiny):
    a, b = SPEC.build(tiny), flip_label(SPEC, 1).build(tiny)
    assert b.demo_labels[1] == "foo" and a.demo_labels[1] == "bar"
    c = compare_prompts(tiny, a, b, HEADS)
    cap_a = tiny.run([a], value_positions=None).capture
    cap_b = tiny.run([b], value_positions=None).capture
    for r in c.head_table.itertuples():
        want_a = cap_a.attention_at(0, a.positions_of(r.label))[r.layer, r.head_index].sum()
        want_b = cap_b.attention_at(0, b.positions_of(r.label))[r.layer, r.head_index].sum()
        close(r.attention_a, want_a, 1e-6)
        close(r.attention_b, want_b, 1e-6)
        close(r.attention_diff, want_b - want_a, 1e-6)
    # the flipped demonstration's position changed label: its attention moved from bar's mass to foo's
    for (layer, head) in HEADS:
        pos = c.positions[(c.positions["head"] == f"L{layer}H{head}") & (c.positions["demo"] == 2)].iloc[0]
        assert pos.label_a == "bar" and pos.label_b == "foo"
        close(pos.attention_b, cap_b.attention_at(0, [b.label_positions[1]])[layer, head, 0], 1e-6)
    # head logits: the head's output at T, projected
    from iclviz.engine.lens import project
    ho = cap_b.head_out[0, 2, 1]
    want = project(tiny.arch, ho[None, None], cap_b.resid_final[:1], token_ids=b.label_token_id_list())[0, 0]
    got = c.head_table[c.head_table["head"] == "L2H1"]["head_logit_b"].to_numpy()
    close(got, want, 1e-5)


def test_edits_build_b_from_a():
    assert flip_label(SPEC, 0).demos[0] == (SPEC.demos[0][0], "bar")
    assert reorder(SPEC, [4, 3, 2, 1, 0]).demos == SPEC.demos[::-1]
    assert swap_query(SPEC, "dull").query == "dull"
    renamed = change_label_words(SPEC, ["yes", "no"])
    assert renamed.label_words == ("yes", "no") and renamed.demos[1][1] == "no"
    assert [w for _, w in swap_all_labels(SPEC).demos] == ["bar", "foo", "bar", "foo", "bar"]
    assert PromptSpec.from_dict(SPEC.to_dict()) == SPEC


def test_label_swap_and_bias_orders_are_ab_pairs(tiny_llama):
    """The label swap view (label_swap_one) and the Bias lab's orders are instances of the A/B comparison."""
    import random

    from iclviz.analyses.bias import demonstration_orders, reorder_transform
    from iclviz.analyses.label_swap import label_swap_one

    a, b = label_swap_pair(SPEC)
    c = compare_prompts(tiny_llama, a, b, HEADS)
    ls = label_swap_one(tiny_llama, list(SPEC.demos), SPEC.query, SPEC.label_words, SPEC.template, HEADS)
    for cond, col, pred in (("original", "attention_a", c.predicted_a), ("swapped", "attention_b", c.predicted_b)):
        part = ls[ls.condition == cond]
        for r in part.itertuples():
            for w in SPEC.label_words:
                got = c.head_table[(c.head_table["head"] == r.head_name) & (c.head_table["label"] == w)][col].iloc[0]
                assert got == pytest.approx(getattr(r, f"attn_{w}"), abs=1e-6)
            assert r.pred == pred
    # orders: the same permutation bias.py applies to a seed's demonstrations (labels as indices there)
    idx_demos = [(t, SPEC.label_words.index(w)) for t, w in SPEC.demos]
    for seed in (0, 3):
        pairs = list(reorder_pairs(SPEC, n_random=3, seed=seed))
        orders = demonstration_orders(len(SPEC.label_words), 3, 0)
        assert [n for n, _, _ in pairs] == [n for n, _ in orders]
        for (_, pa, pb), (_, key) in zip(pairs, orders):
            want = reorder_transform(key)(list(idx_demos), seed)
            assert pa == SPEC
            assert [(t, SPEC.label_words.index(w)) for t, w in pb.demos] == want
    random.seed(0)
