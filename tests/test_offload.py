"""A model split across devices, part of it offloaded to disk (accelerate), captures the same records.

On this CPU machine the split is CPU + disk: accelerate keeps the offloaded layers' weights on the
``meta`` device between calls and loads them from ``offload_folder`` for each forward. The capture
reads W_O, the final norm and W_U through ``architecture.parameter`` (accelerate's offload store)
and gathers every layer's records onto one device before stacking.
"""

from __future__ import annotations

import pytest
import torch
from test_capture import close

from iclviz.analyses.evaluation import predict_prompt
from iclviz.engine import interventions as iv
from iclviz.engine.models import load_model, wrap_model
from iclviz.engine.runs import RowEdit, last_position_logits
from iclviz.testing import build_tiny_model

DEMOS = [("a wonderful film", "foo"), ("dull and boring", "bar"), ("great acting", "foo"), ("a waste", "bar")]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request, tokenizer, tmp_path_factory):
    """The same tiny model twice: in memory, and loaded with layers 1-2, the final norm and lm_head on disk."""
    folder = tmp_path_factory.mktemp(f"saved-{request.param}")
    model = build_tiny_model(request.param)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if request.param == "llama":
        device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                      "model.layers.2": "disk", "model.norm": "disk", "model.rotary_emb": "cpu", "lm_head": "disk"}
    else:
        device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu",
                      "transformer.h.1": "disk", "transformer.h.2": "disk", "transformer.ln_f": "disk",
                      "lm_head": "cpu"}  # tied to wte: accelerate keeps tied weights together
    offloaded = load_model(str(folder), device="cpu", dtype="float32", device_map=device_map,
                           offload_folder=folder / "offload")
    return wrap_model(model, tokenizer, name="in memory"), offloaded


def test_offloaded_layers_are_really_on_disk(pair):
    _, off = pair
    assert "disk" in off.device
    assert off.arch.out_projs[2].weight.device.type == "meta"  # loaded for each call only
    assert off.arch.w_o(2).device.type == "cpu"  # read from accelerate's offload store


def test_capture_of_an_offloaded_model_equals_the_model_in_memory(pair, tokenizer):
    mem, off = pair
    prompt = mem.prompt(DEMOS, "I loved it", ("foo", "bar"))
    other = mem.prompt(DEMOS[::-1], "what a bore", ("foo", "bar"))
    heads = [(1, 0), (2, 3)]
    for kind in (iv.NONE, iv.ablate(heads), iv.knockout([prompt.label_positions, other.label_positions], heads)):
        a = mem.run([prompt, other], kind, value_heads=heads, importance="final_scale", full_rows_layers=[2])
        b = off.run([prompt, other], kind, value_heads=heads, importance="final_scale", full_rows_layers=[2])
        close(b.logits, a.logits)
        for name in ("attn", "scores", "head_out", "resid_in", "resid_final", "attn_block_out",
                     "value_label_logits"):
            close(getattr(b.capture, name), getattr(a.capture, name))
        close(b.capture.importance.values, a.capture.importance.values)
        close(b.capture.values(2, 3), a.capture.values(2, 3))
        close(b.capture.full_attn[2], a.capture.full_attn[2])
    pa, pb = predict_prompt(mem, prompt), predict_prompt(off, prompt)
    assert pa.predicted == pb.predicted
    rows = [RowEdit(knockout=frozenset([(2, 1)])), RowEdit(ablate=frozenset([(1, 0)]))]
    close(last_position_logits(off, [prompt, other], rows), last_position_logits(mem, [prompt, other], rows))
    torch.testing.assert_close(torch.tensor(list(pb.probs.values())), torch.tensor(list(pa.probs.values())))
