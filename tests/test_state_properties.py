"""Property-based tests (hypothesis) of the head-name parser and the shared/uploaded state parser:
whatever a visitor sends, the result is a valid state or a ValueError with a message, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iclviz.sharing import LabState, state_from_dict, state_from_json, state_from_query_param
from iclviz.validation import ValidationError, head_name, json_depth, parse_heads

# no per-example deadline: CI machines are shared and slow; the example counts keep the file under a few seconds
settings.register_profile("iclviz", deadline=None, derandomize=False)
settings.load_profile("iclviz")


@given(st.integers(0, 9999), st.integers(0, 9999))
def test_head_name_round_trip(layer, head):
    assert parse_heads(head_name((layer, head))) == [(layer, head)]
    assert parse_heads(f"l{layer}h{head}, {layer}.{head}") == [(layer, head)]


@given(st.text(max_size=40))
def test_parse_heads_gives_heads_or_a_validation_error(text):
    try:
        heads = parse_heads(text, 24, 14)
    except ValidationError:
        return
    assert all(0 <= a < 24 and 0 <= b < 14 for a, b in heads)


def test_parse_heads_table():
    assert parse_heads("L21H1 L20H10, l21h1") == [(21, 1), (20, 10)]
    for bad in ["L1H-1", "L-1H1", "LxHy", "L1H2H3", "21", "L21", "H1", "L1.5H2", "L１H1"]:
        with pytest.raises(ValidationError):
            parse_heads(bad)
    with pytest.raises(ValidationError, match="L24H0 not in this model"):
        parse_heads("L24H0", 24, 14)
    with pytest.raises(ValidationError, match="at most"):
        parse_heads(" ".join(f"L{i}H0" for i in range(300)))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=6)
state_like = st.fixed_dictionaries({}, optional={
    "demonstrations": st.lists(st.fixed_dictionaries({"text": json_values, "label": json_values}) | json_values,
                               max_size=4) | json_values,
    "query": st.text(max_size=20) | json_values,
    "label_words": st.lists(st.text(max_size=5), max_size=10) | json_values,
    "template": st.sampled_from(["paper", "review", "sentence", "../x"]) | json_values,
    "heads": st.lists(st.text(max_size=6) | st.lists(st.integers(-3, 30), max_size=3) | json_values, max_size=4)
    | json_values,
})


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(state_like)
def test_shared_state_parser_gives_a_state_or_a_value_error(d):
    try:
        s = state_from_dict(d)
    except ValueError:
        return
    assert all(isinstance(t, str) and isinstance(w, str) for t, w in s.demos)
    assert isinstance(s.query, str) and 2 <= len(s.label_words) <= 8 and s.template in ("paper", "review", "sentence")
    assert all(isinstance(a, int) and isinstance(b, int) and a >= 0 and b >= 0 for a, b in s.heads)
    assert state_from_json(s.to_json()) == s  # what was accepted round-trips


@settings(max_examples=150)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_shared_link_parser_never_raises_anything_but_value_error(value):
    try:
        state_from_query_param(value)
    except ValueError:
        pass


@settings(max_examples=40)
@given(st.integers(1, 20_000))
def test_deep_json_is_refused_before_parsing(depth):
    text = "[" * depth + "]" * depth
    assert json_depth(text) == depth
    if depth > 6:
        with pytest.raises(ValueError, match="nested"):
            state_from_json(text)


def test_state_round_trips_through_a_link():
    s = LabState(demos=[("a", "foo"), ("b [x](y)", "bar")], query="q", heads=[(1, 2), (0, 3)])
    assert state_from_query_param(s.to_query_param()) == s


def test_a_shared_link_is_compressed_and_older_links_still_open():
    import base64
    import json

    s = LabState(demos=[(f"a sentence about a film, number {i}, with some words", "foo" if i % 2 else "bar")
                        for i in range(16)], query="what a film", heads=[(16, 12), (16, 3)])
    link = s.to_query_param()
    plain = base64.urlsafe_b64encode(json.dumps(s.to_dict(), separators=(",", ":")).encode()).decode().rstrip("=")
    assert link.startswith("z") and len(link) < len(plain) / 2
    assert state_from_query_param(link) == s and state_from_query_param(plain) == s  # links made before still open


def test_a_compressed_link_cannot_inflate_past_its_bound():
    import base64
    import zlib

    from iclviz.sharing import MAX_SHARED_JSON_BYTES

    bomb = b'{"query": "' + b"x" * (MAX_SHARED_JSON_BYTES * 4) + b'"}'
    link = "z" + base64.urlsafe_b64encode(zlib.compress(bomb, 9)).decode()
    assert len(link) < 20_000  # a short link ...
    with pytest.raises(ValueError, match="too long"):  # ... refused without inflating it whole
        state_from_query_param(link)
    with pytest.raises(ValueError, match="damaged"):
        state_from_query_param("z" + base64.urlsafe_b64encode(b"not deflate").decode())
