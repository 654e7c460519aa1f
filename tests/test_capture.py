"""Exact identities of the instrumented pass, on a tiny random model of each architecture."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from iclviz.engine import interventions as iv
from iclviz.engine.capture import pad_batch
from iclviz.engine.runs import run_ids

RTOL, ATOL = 1e-5, 1e-5
LABEL_IDS = [5, 7]


def close(a, b, rtol=RTOL, atol=ATOL):
    """Equal to 1e-5 relative to the tensor's scale (float32 sums in another order differ)."""
    scale = max(1.0, float(b.abs().max()))
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale)


def prompts(vocab, lengths=(23, 17, 30), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


def reference_forward(model, ids, impl="eager", output_attentions=False):
    """The model's own forward in a stock implementation, same padding and positions."""
    x, mask, pos, _ = pad_batch(ids, 0, "cpu")
    model.set_attn_implementation(impl)
    try:
        with torch.no_grad():
            return model(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=False,
                         output_attentions=output_attentions)
    finally:
        model.set_attn_implementation("iclviz")


def test_captured_attention_equals_output_attentions(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    res = run_ids(tiny.model, ids, LABEL_IDS)
    ref = reference_forward(tiny.model, ids, output_attentions=True)
    want = torch.stack([a[:, :, -1, :] for a in ref.attentions], 1)  # [B, L, H, S]
    close(res.capture.attn, want)
    # rows sum to one and padding gets no attention
    close(res.capture.attn.sum(-1), torch.ones_like(res.capture.attn.sum(-1)))
    for b, pad in enumerate(res.capture.pad.tolist()):
        assert res.capture.attn[b, ..., :pad].abs().max() == 0 if pad else True


def test_instrumented_pass_leaves_outputs_unchanged(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    res = run_ids(tiny.model, ids, LABEL_IDS)
    plain = run_ids(tiny.model, ids, LABEL_IDS, capture=False)
    for impl in ("eager", "sdpa"):
        ref = reference_forward(tiny.model, ids, impl=impl).logits[:, -1]
        close(res.logits, ref)
        close(plain.logits, ref)


def test_weighted_value_outputs_sum_to_head_output(tiny):
    ids = prompts(tiny.model.config.vocab_size, lengths=(19,))
    every = [list(range(19))]
    cap = run_ids(tiny.model, ids, LABEL_IDS, value_positions=every).capture
    weighted = (cap.attn[..., None] * cap.value_out).sum(-2)  # sum_j A[T,j] z_j
    close(weighted, cap.head_out)
    assert cap.head_out.abs().max() > 1e-3  # not trivially zero


def test_heads_plus_bias_equal_attention_block_output(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    cap = run_ids(tiny.model, ids, LABEL_IDS).capture
    arch = tiny.arch
    total = cap.head_out.sum(2)
    for layer in range(arch.n_layers):
        bias = arch.o_bias(layer)
        if bias is not None:
            total[:, layer] += bias.detach()
    close(total, cap.attn_block_out)


def test_final_residual_gives_the_logits(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    res = run_ids(tiny.model, ids, LABEL_IDS)
    with torch.no_grad():
        logits = tiny.arch.unembed(tiny.arch.final_norm(res.capture.resid_final))
    close(logits, res.logits)
    # and the first layer's input is the embedding stream, the last layer's input differs from the final
    assert not torch.allclose(res.capture.resid_in[:, -1], res.capture.resid_final)


def test_batch_equals_single_prompts(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    batch = run_ids(tiny.model, ids, LABEL_IDS, value_positions=[[2, 5], [3, 4], [0, 9]])
    for b, one in enumerate(ids):
        single = run_ids(tiny.model, [one], LABEL_IDS, value_positions=[[[2, 5], [3, 4], [0, 9]][b]])
        close(batch.logits[b], single.logits[0])
        close(batch.capture.attention_at(b, range(len(one))), single.capture.attn[0])
        close(batch.capture.value_out[b], single.capture.value_out[0])


def zero_w_o_columns(model, arch, heads):
    clone = copy.deepcopy(model)
    from iclviz.engine.architecture import describe

    carch = describe(clone)
    with torch.no_grad():
        for layer, head in heads:
            proj = carch.out_projs[layer]
            sl = slice(head * arch.head_dim, (head + 1) * arch.head_dim)
            if type(proj).__name__ == "Conv1D":
                proj.weight[sl, :] = 0
            else:
                proj.weight[:, sl] = 0
    return clone


def test_ablation_equals_zeroing_w_o_columns(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    heads = [(0, 1), (1, 3), (2, 0)]
    res = run_ids(tiny.model, ids, LABEL_IDS, interventions=iv.ablate(heads))
    clone = zero_w_o_columns(tiny.model, tiny.arch, heads)
    x, mask, pos, _ = pad_batch(ids, 0, "cpu")
    with torch.no_grad():
        want = clone(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
    close(res.logits, want)
    base = run_ids(tiny.model, ids, LABEL_IDS, capture=False)
    assert (res.logits - base.logits).abs().max() > 1e-4  # the ablation does something
    for layer, head in heads:
        assert res.capture.head_out[:, layer, head].abs().max() == 0


def test_knockout_all_positions_in_last_layer_equals_its_ablation(tiny):
    """In the last layer only T's output reaches T's logits: zeroing T's whole attention row
    in a head is then exactly the head's ablation."""
    ids = prompts(tiny.model.config.vocab_size)
    last = tiny.arch.n_layers - 1
    heads = [(last, 0), (last, 2)]
    ko = run_ids(tiny.model, ids, LABEL_IDS, interventions=iv.knockout([range(len(p)) for p in ids], heads=heads))
    ab = run_ids(tiny.model, ids, LABEL_IDS, interventions=iv.ablate(heads))
    close(ko.logits, ab.logits)


def test_knockout_zeroes_chosen_positions_only(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    positions = [[1, 4], [2, 3], [5, 6]]
    heads = [(1, 0), (1, 2)]
    base = run_ids(tiny.model, ids, LABEL_IDS, value_positions=positions)
    ko = run_ids(tiny.model, ids, LABEL_IDS, interventions=iv.knockout(positions, heads=heads),
                 value_positions=positions)
    for b in range(len(ids)):
        a = ko.capture.attention_at(b, positions[b])
        assert a[1, 0].abs().max() == 0 and a[1, 2].abs().max() == 0
        close(a[1, 1], base.capture.attention_at(b, positions[b])[1, 1])
        close(ko.capture.attn[b, 0], base.capture.attn[b, 0])  # earlier layer untouched
    # the head output is the remaining weighted sum: it drops exactly the knocked-out terms
    drop = (base.capture.attn.gather(-1, (torch.tensor(positions) + base.capture.pad[:, None])[:, None, None, :]
                                     .expand(-1, 3, 4, -1))[..., None] * base.capture.value_out).sum(-2)
    close(ko.capture.head_out[:, 1, [0, 2]], (base.capture.head_out - drop)[:, 1, [0, 2]])


def test_rescale_by_one_changes_nothing_and_by_two_doubles(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    positions = [[1, 4], [2, 3], [5, 6]]
    base = run_ids(tiny.model, ids, LABEL_IDS)
    same = run_ids(tiny.model, ids, LABEL_IDS, interventions=iv.rescale([{p: 1.0 for p in ps} for ps in positions]))
    close(same.logits, base.logits)
    two = run_ids(tiny.model, ids, LABEL_IDS, interventions=iv.rescale([{p: 2.0 for p in ps} for ps in positions],
                                                                        heads=[(0, 1)]))
    for b in range(len(ids)):
        close(two.capture.attention_at(b, positions[b])[0, 1], 2 * base.capture.attention_at(b, positions[b])[0, 1])


def test_interventions_are_scoped_and_removed_on_error(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    base = run_ids(tiny.model, ids, LABEL_IDS, capture=False)
    with pytest.raises(ValueError):
        run_ids(tiny.model, ids, LABEL_IDS, interventions=iv.knockout([[1]]))  # one map for three prompts
    bad = iv.Interventions(ablate=frozenset({(99, 0)}))
    with pytest.raises(IndexError):
        run_ids(tiny.model, ids, LABEL_IDS, interventions=bad)
    after = run_ids(tiny.model, ids, LABEL_IDS, capture=False)
    close(after.logits, base.logits)


def test_two_threads_with_different_interventions(tiny):
    ids = prompts(tiny.model.config.vocab_size)
    setups = [iv.ablate([(0, 0), (1, 1)]), iv.knockout([[1, 2]] * 3, heads=[(2, 3)]), iv.NONE]
    want = [run_ids(tiny.model, ids, LABEL_IDS, interventions=s).logits for s in setups]
    got: dict[int, list] = {i: [] for i in range(len(setups))}
    barrier = threading.Barrier(len(setups))

    def work(i):
        barrier.wait()
        for _ in range(8):
            got[i].append(run_ids(tiny.model, ids, LABEL_IDS, interventions=setups[i]).logits)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(setups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(setups)):
        assert len(got[i]) == 8
        for logits in got[i]:
            close(logits, want[i])
    assert (want[0] - want[2]).abs().max() > 1e-4


def test_positional_score_removal_makes_scores_position_free(tokenizer):
    """In layer 0 of a rotary model a key depends only on its token; with the positional part
    removed, two positions holding the same token get the same score from T."""
    from iclviz.engine.models import wrap_model
    from iclviz.testing import build_tiny_model

    for arch in ("llama", "qwen2", "gpt_neox"):
        lm = wrap_model(build_tiny_model(arch, seed=3), tokenizer, name=arch)
        ids = [[11, 42, 13, 42, 15, 16, 42, 18, 19, 20]]
        same = [1, 3, 6]
        heads = [(0, h) for h in range(lm.n_heads)]
        base = run_ids(lm.model, ids, LABEL_IDS)
        dep = run_ids(lm.model, ids, LABEL_IDS, interventions=iv.remove_positional_score([same], heads))
        s_base = base.capture.scores_at(0, same)[0]
        s_dep = dep.capture.scores_at(0, same)[0]
        assert (s_base - s_base[:, :1]).abs().max() > 1e-4, arch  # position matters normally
        close(s_dep, s_dep[:, :1].expand_as(s_dep))  # not any more
        close(dep.capture.scores_at(0, [0, 2])[0], base.capture.scores_at(0, [0, 2])[0])  # others untouched


def test_positional_score_removal_refused_for_absolute_positions(tiny_gpt2):
    from iclviz.engine.architecture import UnsupportedArchitecture

    with pytest.raises(UnsupportedArchitecture):
        run_ids(tiny_gpt2.model, [[1, 2, 3, 4]], LABEL_IDS, interventions=iv.remove_positional_score([[1]], [(0, 0)]))


def test_shared_prefix_path_equals_padded_batch(tiny):
    """Computing the shared demonstrations once (KV cache) gives the same numbers."""
    from iclviz.engine.runs import common_prefix_length, run_ids_shared_prefix

    g = torch.Generator().manual_seed(4)
    prefix = torch.randint(1, tiny.model.config.vocab_size, (20,), generator=g).tolist()
    ids = [prefix + torch.randint(1, tiny.model.config.vocab_size, (n,), generator=g).tolist() for n in (3, 7, 5)]
    assert common_prefix_length(ids) >= 20
    positions = [[2, 9, 15]] * 3
    heads = [(0, 1), (1, 2), (2, 3)]
    setups = [iv.NONE, iv.ablate(heads), iv.knockout(positions, heads=heads),
              iv.rescale([{2: 0.5, 9: 2.0}] * 3, heads=heads)]
    if tiny.model._iclviz_rotary is not None:
        setups.append(iv.remove_positional_score(positions, heads))
    for setup in setups:
        a = run_ids(tiny.model, ids, LABEL_IDS, interventions=setup, value_positions=positions)
        b = run_ids_shared_prefix(tiny.model, ids, LABEL_IDS, 20, interventions=setup, value_positions=positions)
        close(b.logits, a.logits)
        for name in ("attn", "head_out", "value_out", "resid_in", "resid_final", "attn_block_out"):
            close(getattr(b.capture, name), getattr(a.capture, name))
        assert torch.equal(b.capture.pad, a.capture.pad)
