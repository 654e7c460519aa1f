"""The two towers patched (issue 11, item 3): identities on the tiny models of every architecture."""

from __future__ import annotations

import json

import pytest
import torch
from views_common import HEADS, SPEC, close

from iclviz.analyses.compare import PromptSpec, swap_all_labels, swap_query
from iclviz.analyses.towers_patch import towers_patch
from iclviz.engine import interventions as iv
from iclviz.engine.qkv import QKVPatch


def _equal_length_pair(lm):
    a, b = SPEC.build(lm), swap_all_labels(SPEC).build(lm)
    assert a.n_tokens == b.n_tokens and a.input_ids[-1] == b.input_ids[-1]
    return a, b


def test_patching_q_k_v_everywhere_gives_the_donors_head_outputs(tiny):
    a, b = _equal_length_pair(tiny)
    heads = [(0, 1), (1, 0), (1, 3), (2, 2)]
    t = towers_patch(tiny, a, b, heads, positions="all", conditions=("none", "all"), keep_captures=True)
    cap, cap_b = t.capture, t.donor_capture
    plain_a = tiny.run([a], value_positions=None).capture
    for layer, head in heads:
        close(cap.head_out[1, layer, head], cap_b.head_out[0, layer, head])
        close(cap.attn[1, layer, head], cap_b.attn[0, layer, head])
    assert not torch.allclose(plain_a.head_out[0, 2, 2], cap_b.head_out[0, 2, 2], atol=1e-4)  # B differs from A
    # the first patched layer's other heads (some share the patched key-value head) are A's own
    for head in range(tiny.n_heads):
        if head != 1:
            close(cap.head_out[1, 0, head], plain_a.head_out[0, 0, head])
    # the "none" row is A unchanged
    close(cap.head_out[0], plain_a.head_out[0])


def test_patching_every_head_makes_a_equal_b(tiny):
    """Every head of every layer patched (q at T, k and v everywhere): the residual at T is B's."""
    a, b = _equal_length_pair(tiny)
    heads = [(layer, h) for layer in range(tiny.n_layers) for h in range(tiny.n_heads)]
    res_b = tiny.run([b], capture=False)
    t = towers_patch(tiny, a, b, heads, positions="all", conditions=("all",), keep_captures=True)
    close(t.summary.iloc[0][["logit_foo", "logit_bar"]].to_numpy(dtype=float), res_b.label_logits[0])


def test_patching_nothing_changes_nothing(tiny):
    a, b = _equal_length_pair(tiny)
    from iclviz.engine.runs import run_ids

    # the same full pass with and without a patch of nothing (LoadedModel.run would read a one-prompt run without a
    # patch from the prefix cache, which is equal only up to float rounding)
    ids, label_ids = [a.input_ids], a.label_token_id_list()
    plain = run_ids(tiny.model, ids, label_ids, capture=False)
    empty = run_ids(tiny.model, ids, label_ids, iv.Interventions(qkv=(QKVPatch([{}]),)), capture=False)
    assert torch.equal(empty.logits, plain.logits)
    t = towers_patch(tiny, a, b, HEADS, conditions=("none", "q", "k", "v", "q+k", "all"))
    none = t.summary[t.summary.condition == "none"].iloc[0]
    close(torch.tensor([none.logit_foo, none.logit_bar]), plain.label_logits[0])
    assert list(t.summary.condition) == ["none", "q", "k", "v", "q+k", "all", "donor (B)"]
    json.dumps(t.to_dict())


def test_value_patch_leaves_attention_and_query_key_patch_leaves_values(tiny_llama):
    """One layer's heads: v moves no attention; q+k moves attention but the label-position z stay A's."""
    a, b = _equal_length_pair(tiny_llama)
    heads = [(1, 0), (1, 2)]
    t = towers_patch(tiny_llama, a, b, heads, conditions=("none", "v", "q+k"), keep_captures=True)
    cap = t.capture
    for layer, head in heads:
        close(cap.attn[1, layer, head], cap.attn[0, layer, head])  # v only: same attention
        assert not torch.allclose(cap.head_out[1, layer, head], cap.head_out[0, layer, head])
    # GQA: head 1 shares head 0's key-value head and is untouched
    close(cap.head_out[2, 1, 1], cap.head_out[0, 1, 1])
    close(cap.head_out[1, 1, 3], cap.head_out[0, 1, 3])


def test_towers_patch_refuses_mismatched_prompts(tiny_llama):
    from iclviz.prompt import PromptError

    a = SPEC.build(tiny_llama)
    fewer = PromptSpec(SPEC.demos[:3], SPEC.query).build(tiny_llama)
    with pytest.raises(PromptError, match="as many"):
        towers_patch(tiny_llama, a, fewer, HEADS)
    longer = swap_query(SPEC, "what a good movie and a great story too").build(tiny_llama)
    with pytest.raises(PromptError, match="equal length"):
        towers_patch(tiny_llama, a, longer, HEADS, positions="all")
    with pytest.raises(ValueError, match="unknown condition"):
        towers_patch(tiny_llama, a, a, HEADS, conditions=("q+x",))


def test_keys_patched_from_other_positions_are_rotated_to_a_positions(tiny_llama, tokenizer):
    """B is A with two extra tokens in front: in layer 0 (token embeddings only, no absolute positions)
    B's keys at its label positions are A's keys two positions later. Rotated back to A's positions
    they are A's own keys, so patching them leaves A's run unchanged; left unrotated, they change it."""
    import dataclasses

    from iclviz.analyses.towers_patch import towers_patch
    from iclviz.prompt import build_prompt

    a = build_prompt(tokenizer, [("a wonderful film", "foo"), ("dull and boring", "bar"), ("great", "foo")],
                     "I loved it", ("foo", "bar"))
    b = dataclasses.replace(a, input_ids=[7, 9] + a.input_ids, label_positions=[p + 2 for p in a.label_positions],
                            demo_spans=[(s + 2, e + 2) for s, e in a.demo_spans],
                            query_span=(a.query_span[0] + 2, a.query_span[1] + 2))
    heads = [(0, 0), (0, 3)]
    out = towers_patch(tiny_llama, a, b, heads, conditions=("none", "k"))
    rows = out.summary.set_index("condition")
    assert rows.loc["k", "margin"] == pytest.approx(rows.loc["none", "margin"], abs=1e-5)
    assert not out.notes
    rotate = tiny_llama.model._iclviz_rotary
    tiny_llama.model._iclviz_rotary = lambda keys, offsets: keys  # no re-rotation: the patch now changes A
    try:
        unrotated = towers_patch(tiny_llama, a, b, heads, conditions=("none", "k")).summary.set_index("condition")
    finally:
        tiny_llama.model._iclviz_rotary = rotate
    assert abs(unrotated.loc["k", "margin"] - unrotated.loc["none", "margin"]) > 1e-4
