"""Integration: the real offline default model (Qwen2.5-Coder-0.5B-Instruct, GGUF -> float32).

The first run in a fresh environment assembles and dequantizes the GGUF file (~1 min) and
caches the float32 model; later loads take seconds.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from iclviz.analyses.evaluation import EvalSetup, evaluate
from iclviz.data import load_dataset
from iclviz.engine import offline
from iclviz.engine.interventions import Plan
from iclviz.engine.models import ModelLoadError, load_model, resolve_source

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lm():
    return load_model("default")


def test_default_model_shape(lm):
    assert (lm.n_layers, lm.n_heads, lm.arch.n_kv_heads) == (24, 14, 2)
    assert lm.arch.positional == "rotary" and lm.dtype == torch.float32


def test_icl_accuracy_and_every_intervention_reaches_the_model(lm):
    setup = EvalSetup(load_dataset("sst2"), k_per_label=4, n_test=48, seeds=(0,))
    base = evaluate(lm, setup, batch_size=8)
    assert base.n == 48
    assert base.accuracy >= 0.65, base.summary()
    every_head = tuple((layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads))
    ko = evaluate(lm, setup, Plan("knockout", every_head), batch_size=8)
    changed = (ko.rows["margin"] - base.rows["margin"]).abs()
    assert (changed > 1e-3).all(), changed.describe()
    deep = tuple((layer, head) for layer in range(12, 24) for head in range(lm.n_heads))
    for kind in ("ablate", "majority_fix", "remove_positional_score"):
        sub = EvalSetup(setup.dataset, k_per_label=4, n_test=8, seeds=(0,),
                        demo_transform=(lambda d, s: d[1:]) if kind == "majority_fix" else None)
        a = evaluate(lm, sub, batch_size=8)
        b = evaluate(lm, sub, Plan(kind, deep), batch_size=8)
        assert ((a.rows["margin"] - b.rows["margin"]).abs() > 1e-4).all(), kind


def test_capture_identities_on_the_real_model(lm):
    from iclviz.analyses.evaluation import predict

    pred = predict(lm, [("a wonderful film", "foo"), ("dull and boring", "bar")], "I loved it")
    cap = pred.capture
    torch.testing.assert_close(cap.attn.sum(-1), torch.ones_like(cap.attn.sum(-1)), rtol=1e-5, atol=1e-5)
    total = cap.head_out.sum(2) + torch.stack([lm.arch.o_bias(layer).detach() if lm.arch.o_bias(layer) is not None
                                               else torch.zeros(lm.arch.d_model) for layer in range(lm.n_layers)])
    torch.testing.assert_close(total, cap.attn_block_out, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        logits = lm.arch.unembed(lm.arch.final_norm(cap.resid_final))
    res = lm.run([pred.prompt], capture=False)
    torch.testing.assert_close(logits, res.logits, rtol=1e-4, atol=1e-3)
    assert pred.predicted == "foo"


def test_corrupt_parts_are_refused_before_parsing(tmp_path, monkeypatch):
    parts = []
    for i in range(6):
        p = tmp_path / f"part{i + 1:02d}.bin"
        p.write_bytes(b"x" * 10)
        parts.append(p)
    with pytest.raises(ModelLoadError, match="add up to 60 bytes"):
        offline.assemble_gguf(tmp_path / "out.gguf", parts=parts)
    spec = dataclasses.replace(offline.QWEN_05B, size=60)
    with pytest.raises(ModelLoadError, match="sha256"):
        offline.assemble_gguf(tmp_path / "out.gguf", spec=spec, parts=parts)
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("name,message", [
    ("../etc", "not a folder"),
    ("a/b/c", "neither a Hugging Face model name"),
    ("/nonexistent/folder", "not a folder"),
    ("rm -rf /", "neither a Hugging Face model name"),
])
def test_bad_model_names_give_a_message(name, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_source(name)


def test_unknown_hub_model_offline_gives_a_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_model("no-such-org/no-such-model")


def test_local_folder_loads(tmp_path):
    from iclviz.testing import save_tiny_model

    save_tiny_model(tmp_path)
    lm = load_model(str(tmp_path))
    assert lm.n_layers == 3 and lm.arch.n_kv_heads == 2


def test_unknown_hub_model_fails_fast_with_a_message(monkeypatch):
    """Online: no such repository; offline (CI): the Hub cannot be reached. Either way, a message."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_model("no-such-org/no-such-model")


def test_the_lesson_teaches_readers_and_voters_with_its_own_numbers(lm):
    """Step 3 of the guided lesson on the prepared prompt: the app's heads and the label voters, each split by
    the label swap; every number in the sentence is the library's, and its words follow those numbers."""
    from iclviz.analyses.discrimination import swap_reading
    from iclviz.analyses.heads import APP_HEAD_RULE, default_heads, default_voters
    from iclviz.analyses.lesson import LESSON_STATE, step_result
    from iclviz.analyses.readout import swap_check
    from iclviz.prompt import DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE

    heads = default_heads(lm.name, lm.n_layers, lm.n_heads, APP_HEAD_RULE)
    voters = [h for h in default_voters(lm.name, lm.n_layers, lm.n_heads) if h not in set(heads)]
    assert voters, "the report lists the label voters beside the context heads"
    words = DEFAULT_LABEL_WORDS
    res = step_result(lm, 2, LESSON_STATE.demos, LESSON_STATE.query, words, DEFAULT_TEMPLATE, heads)
    readers = swap_check(lm, LESSON_STATE.demos, LESSON_STATE.query, words, DEFAULT_TEMPLATE, heads)
    vote = swap_check(lm, LESSON_STATE.demos, LESSON_STATE.query, words, DEFAULT_TEMPLATE, voters)
    for split in (readers.split, vote.split):
        assert f"{split['change']:+.2f}" in res.sentence
        assert swap_reading(split, words) in res.sentence
    assert f"{readers.split['context']:+.2f} that flips with the labels" in res.sentence
    # what the prepared prompt was chosen to show: the in-context heads read (most of their change flips with the
    # labels, against the gold label bar), the label voters vote (most of theirs stays), and the sentence says so
    assert readers.split["context"] > 2 * abs(readers.split["prior"]) and readers.split["context"] > 0.3
    assert abs(vote.split["prior"]) > 2 * abs(vote.split["context"])
    assert f"{readers.split['prior']:+.2f} that stays: mostly in-context reading" in res.sentence
    assert "mostly a prior shift" in res.sentence.split("The label voters")[1]
    assert "more than every random set" in res.sentence


def test_the_lessons_prepared_prompt_shows_each_step(lm):
    """Steps 1, 2 and 4 on the prepared prompt: the prediction is the gold label, the in-context heads attend most
    to its positions, and after the label swap the prediction and their attention follow the labels; the
    sentences say so from the numbers."""
    from iclviz.analyses.evaluation import predict_prompt
    from iclviz.analyses.heads import APP_HEAD_RULE, default_heads
    from iclviz.analyses.lesson import LESSON_STATE, step_result
    from iclviz.analyses.readout import label_mass
    from iclviz.prompt import DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE, build_prompt, swap_labels

    heads = default_heads(lm.name, lm.n_layers, lm.n_heads, APP_HEAD_RULE)
    args = (LESSON_STATE.demos, LESSON_STATE.query, DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE, heads)
    first = step_result(lm, 0, *args)
    assert "The model predicts bar" in first.sentence  # the query is negative: bar is its gold label word
    p = build_prompt(lm.tokenizer, LESSON_STATE.demos, LESSON_STATE.query, DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE)
    mass = label_mass(p, predict_prompt(lm, p).capture, heads)
    assert mass["bar"] > mass["foo"]
    assert f"{mass['bar']:.2f} to the bar positions: most to bar" in step_result(lm, 1, *args).sentence
    swapped = build_prompt(lm.tokenizer, [(d.text, d.label) for d in swap_labels(LESSON_STATE.demos,
                                                                                 DEFAULT_LABEL_WORDS)],
                           LESSON_STATE.query, DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE)
    after = predict_prompt(lm, swapped)
    assert after.predicted == "foo" and label_mass(swapped, after.capture, heads)["foo"] > mass["foo"]
    assert "the prediction follows the swapped labels" in step_result(lm, 3, *args).sentence
