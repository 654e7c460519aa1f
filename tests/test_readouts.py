"""The small readouts a run computes where the model is, against the plain formulas on the host.

Importance (every head, one batched log-softmax per layer), the value vectors' label-word
logits, full attention rows for chosen layers, per-prompt views, missing records: each is
checked on a tiny random model of every architecture against the formula it replaces.
"""

from __future__ import annotations

import pytest
import torch
from test_capture import LABEL_IDS, close, prompts, reference_forward

from iclviz.analyses.heads import head_importance
from iclviz.engine.capture import MissingRecord
from iclviz.engine.lens import frozen_norm, log_probs, project
from iclviz.engine.runs import run_ids
from iclviz.prompt import build_prompt
from iclviz.testing import ARCHITECTURES, build_tiny_model

DEMOS = [("a wonderful film", "foo"), ("dull and boring", "bar"), ("great acting", "foo"), ("a waste", "bar")]


def importance_on_host(arch, cap, label_ids, scaling):
    """The formula as first written: W_U copied to the host, full log-softmax, bias added."""
    w_u = arch.unembed_matrix().detach().float().cpu()
    b_u = arch.unembed_bias()
    norm = arch.final_norm

    def logprobs(x):
        y = norm(x) if scaling == "final_norm" else frozen_norm(arch, x, cap.resid_final)
        logits = y.float() @ w_u.T + (b_u.detach().float() if b_u is not None else 0)
        return torch.log_softmax(logits, -1)[..., label_ids]

    B, L, H, _ = cap.head_out.shape
    out = torch.empty(B, L, H, len(label_ids))
    for layer in range(L):
        r = cap.resid_in[:, layer]
        out[:, layer] = logprobs(r[:, None] + cap.head_out[:, layer]) - logprobs(r)[:, None]
    return out


@pytest.mark.parametrize("scaling", ["final_scale", "final_norm"])
def test_importance_computed_in_the_run_equals_the_host_formula(tiny, scaling):
    ids = prompts(tiny.model.config.vocab_size)
    res = run_ids(tiny.model, ids, LABEL_IDS, importance=scaling)
    cap = res.capture
    want = importance_on_host(tiny.arch, cap, LABEL_IDS, scaling)
    assert cap.importance is not None and cap.importance.scaling == scaling
    close(cap.importance.values, want)
    close(head_importance(tiny.arch, cap, LABEL_IDS, scaling), want)  # served from the run
    plain = run_ids(tiny.model, ids, LABEL_IDS).capture  # no importance asked: computed from the records
    close(head_importance(tiny.arch, plain, LABEL_IDS, scaling), want)
    part = head_importance(tiny.arch, cap, LABEL_IDS, scaling, layers=[1])
    assert torch.isnan(part[:, 0]).all() and not torch.isnan(part[:, 1]).any()


def test_log_probs_in_vocabulary_chunks_equal_one_log_softmax(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    cap = run_ids(tiny.model, ids, LABEL_IDS).capture
    u = cap.resid_in[:, 2]
    for scaling in ("final_scale", "final_norm"):
        full = torch.log_softmax(project(tiny.arch, u, cap.resid_final, scaling, unembed_bias=True), -1)[:, LABEL_IDS]
        close(log_probs(tiny.arch, u, cap.resid_final, LABEL_IDS, scaling, chunk_rows=37), full)


def test_lm_head_bias_enters_importance_and_final_norm_but_not_components(tiny):
    """GPT-J has an ``lm_head`` bias: the one lens gives importance (log-probabilities of whole
    residuals, with the bias) and components' logits (linear, without it) on every model."""
    arch = tiny.arch
    bias = arch.unembed_bias()
    assert (bias is not None) == (tiny.model.config.model_type == "gptj")
    ids = prompts(tiny.model.config.vocab_size)
    cap = run_ids(tiny.model, ids, LABEL_IDS).capture
    u = cap.head_out[:, 1]  # [B, H, D]: components
    with_bias = project(arch, u, cap.resid_final, "final_scale", LABEL_IDS, unembed_bias=True)
    without = project(arch, u, cap.resid_final, "final_scale", LABEL_IDS)
    shift = bias.detach()[LABEL_IDS].expand_as(without) if bias is not None else torch.zeros_like(without)
    if bias is not None:
        assert shift.abs().max() > 0
    close(with_bias - without, shift)
    # components' logits add up under final_scale (linear, no bias) ...
    close(project(arch, u.sum(1), cap.resid_final, token_ids=LABEL_IDS), without.sum(1))
    # ... and the importance, a log-probability of whole residuals, is the lens with the bias
    for scaling in ("final_scale", "final_norm"):
        close(head_importance(arch, cap, LABEL_IDS, scaling), importance_on_host(arch, cap, LABEL_IDS, scaling))


def test_value_label_logits_equal_the_lens_on_the_value_vectors(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    positions = [[2, 5, 9], [3, 4, 11], [0, 9, 16]]
    cap = run_ids(tiny.model, ids, LABEL_IDS, value_positions=positions).capture
    want = project(tiny.arch, cap.value_out, cap.resid_final, "final_scale", token_ids=LABEL_IDS)
    close(cap.value_label_logits, want)
    # only some heads' vectors kept: those equal the full run's, the label logits are unchanged
    some = run_ids(tiny.model, ids, LABEL_IDS, value_positions=positions, value_heads=[(1, 0), (2, 3)]).capture
    close(some.value_label_logits, cap.value_label_logits)
    close(some.values(2, 3), cap.value_out[:, 2, 3])
    assert some.has_values([(1, 0)]) and not some.has_values([(0, 0)])
    with pytest.raises(MissingRecord, match="L0H1"):
        some.values(0, 1)
    with pytest.raises(MissingRecord):
        some.value_out  # noqa: B018 - not every head was kept
    none = run_ids(tiny.model, ids, LABEL_IDS, value_positions=positions, value_heads=None).capture
    assert none.value_vectors is None
    with pytest.raises(MissingRecord, match="not asked for"):
        none.value_out  # noqa: B018


def test_full_rows_equal_the_models_own_attentions(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    res = run_ids(tiny.model, ids, LABEL_IDS, full_rows_layers=[0, 2])
    ref = reference_forward(tiny.model, ids, output_attentions=True)
    assert sorted(res.capture.full_attn) == [0, 2]
    for layer in (0, 2):
        got, want = res.capture.full_attn[layer], ref.attentions[layer]
        for b, pad in enumerate(res.capture.pad.tolist()):  # padded query rows are not compared
            close(got[b, :, pad:], want[b, :, pad:])
        close(got[:, :, -1], res.capture.attn[:, layer])


def test_prompt_view_is_unpadded_and_equals_a_run_of_that_prompt_alone(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    positions = [[2, 5], [3, 4], [0, 9]]
    cap = run_ids(tiny.model, ids, LABEL_IDS, value_positions=positions, importance="final_scale",
                  full_rows_layers=[1]).capture
    for b in range(3):
        alone = run_ids(tiny.model, [ids[b]], LABEL_IDS, value_positions=[positions[b]], importance="final_scale",
                        full_rows_layers=[1]).capture
        view = cap.prompt(b)
        assert view.attn.shape[-1] == len(ids[b])
        close(view.attn, alone.attn[0])
        close(view.scores, alone.scores[0])
        close(view.head_out, alone.head_out[0])
        close(view.value_label_logits, alone.value_label_logits[0])
        close(view.value_vectors[(1, 2)], alone.values(1, 2)[0])
        close(view.importance, alone.importance.values[0])
        close(view.full_attn[1], alone.full_attn[1][0])
        assert view.value_positions.tolist() == positions[b]


def test_label_counts_that_differ_in_a_batch_say_why_there_are_no_value_vectors(tiny_llama, tokenizer):
    three = build_prompt(tokenizer, DEMOS[:3], "I loved it", ("foo", "bar"))
    four = build_prompt(tokenizer, DEMOS, "I loved it", ("foo", "bar"))
    cap = tiny_llama.run([three, four], value_heads="all").capture
    with pytest.raises(MissingRecord, match=r"different numbers of label positions \(3, 4\)"):
        cap.value_out  # noqa: B018
    with pytest.raises(MissingRecord, match="different numbers"):
        cap.values(0, 0)
    assert cap.value_label_logits is None
    one = tiny_llama.run([four]).capture  # by default: label logits of every head, no full vectors
    assert one.value_label_logits.shape == (1, 3, 4, 4, 2) and one.value_vectors is None


def test_attention_view_matrices_come_from_the_same_model_without_a_copy(tiny, tokenizer, monkeypatch):
    import copy

    from iclviz.engine.attention_matrix import full_attention

    real = copy.deepcopy

    def no_model_copies(obj, *args, **kwargs):
        assert not isinstance(obj, torch.nn.Module), "the attention view copied the model"
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    prompt = build_prompt(tokenizer, DEMOS, "I loved it", ("foo", "bar"))
    att = full_attention(tiny, prompt, [2, 0], heads=[3, 1])
    ref = reference_forward(tiny.model, [prompt.input_ids], output_attentions=True)
    assert sorted(att) == [0, 2]
    for layer in (0, 2):
        close(att[layer], ref.attentions[layer][0, [3, 1]])
    assert tiny.model.config._attn_implementation == "iclviz"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_capture_leaves_the_models_computation_bit_for_bit(arch, dtype):
    """A capture with no intervention reads the pass and writes nothing into it: the logits are the
    plain pass's bit for bit, in float32 and in bfloat16 (where recomputing T's attention row and
    writing it back would round differently from the fused kernel)."""
    model = build_tiny_model(arch).to(dtype)
    ids = prompts(model.config.vocab_size)
    captured = run_ids(model, ids, LABEL_IDS, value_positions=[[1, 2]] * 3, importance="final_scale")
    plain = run_ids(model, ids, LABEL_IDS, capture=False)
    assert torch.equal(captured.logits, plain.logits)
    assert captured.capture.importance.values.isfinite().all()
