"""Prompt building: label positions from offsets, and clear errors for bad input."""

from __future__ import annotations

import pytest

from iclviz.prompt import PromptError, build_prompt, label_token_ids, swap_labels

DEMOS = [("a wonderful film", "foo"), ("dull and boring", "bar"), ("what a great story", "foo")]


@pytest.mark.parametrize("template", ["review", "paper", "sentence"])
def test_label_positions_hold_the_label_tokens(tokenizer, template):
    p = build_prompt(tokenizer, DEMOS, "I loved it", template=template)
    assert len(p.label_positions) == 3
    for pos, label in zip(p.label_positions, p.demo_labels):
        assert p.input_ids[pos] == p.label_token_ids[label]
        assert tokenizer.decode([p.input_ids[pos]]).strip() == label
    assert p.last_position == len(p.input_ids) - 1
    assert p.label_positions == sorted(p.label_positions)
    assert p.demo_labels == ["foo", "bar", "foo"]
    assert p.positions_of("foo") == [p.label_positions[0], p.label_positions[2]]


def test_label_word_inside_a_sentence_is_not_a_label_position(tokenizer):
    demos = [("foo bar foo is what they said", "foo"), ("bar none", "bar")]
    p = build_prompt(tokenizer, demos, "foo", template="review")
    assert len(p.label_positions) == 2
    text_tokens = [i for i, t in enumerate(p.input_ids) if t == p.label_token_ids["foo"]]
    assert len(text_tokens) > 1  # the word also occurs in the sentence ...
    assert p.label_positions[0] == max(i for i in text_tokens if i < p.label_positions[1])  # ... but only the label


def test_sentence_spans_cover_the_sentences(tokenizer):
    p = build_prompt(tokenizer, DEMOS, "I loved it")
    for (a, b), (text, _) in zip(p.demo_spans, DEMOS):
        assert tokenizer.decode(p.input_ids[a:b]).strip() == text
    a, b = p.query_span
    assert tokenizer.decode(p.input_ids[a:b]).strip() == "I loved it"


@pytest.mark.parametrize("demos,query,words,message", [
    ([], "x", ("foo", "bar"), "at least one demonstration"),
    (DEMOS, "   ", ("foo", "bar"), "query"),
    ([("", "foo")], "x", ("foo", "bar"), "no text"),
    ([("good", "baz")], "x", ("foo", "bar"), "not one of"),
    (DEMOS, "x", ("foo", "foo"), "must differ"),
    (DEMOS, "x", ("foo",), "at least two"),
    (DEMOS, "x", ("foo", "two words"), "white space"),
])
def test_bad_input_gives_a_clear_message(tokenizer, demos, query, words, message):
    with pytest.raises(PromptError, match=message):
        build_prompt(tokenizer, demos, query, words)


def test_multi_token_label_is_refused(tokenizer):
    with pytest.raises(PromptError, match="tokens"):
        label_token_ids(tokenizer, ("foo", "antidisestablishmentarianism"))


def test_too_long_prompt_is_refused(tokenizer):
    with pytest.raises(PromptError, match="longer than the model's context"):
        build_prompt(tokenizer, DEMOS * 20, "x", max_tokens=50)


def test_missing_label_warns(tokenizer):
    p = build_prompt(tokenizer, [("good", "foo")], "x")
    assert any("bar" in w for w in p.warnings)


def test_swap_twice_is_identity():
    demos = [(t, w) for t, w in DEMOS]
    once = swap_labels(demos)
    assert [d.label for d in once] == ["bar", "foo", "bar"]
    assert [(d.text, d.label) for d in swap_labels(once)] == demos
