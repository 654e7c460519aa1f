"""The prefix cache: every readout from a cached prefix equals the full pass (float32, 1e-5) on each tiny
architecture, for each kind of edit, and when the cache evicts mid-run."""

from __future__ import annotations

import pytest
import torch
from test_capture import LABEL_IDS, close, prompts

from iclviz.engine import interventions as iv
from iclviz.engine.prefix_cache import PrefixCache, _common_length, set_shared_prefix_cache
from iclviz.engine.runs import RowEdit, knockout_each, last_position_logits, run_ids, run_ids_cached

# a prompt of 40 tokens: "template" 0-2, first demonstration 3-12 (label word at 12), more demonstrations,
# the last one 24-33 (label word at 33), the query 34-39 (T = 39)
EDITS = {
    "query": [36, 37],
    "last demonstration": [27, 28],
    "first demonstration": [5],
    "label word": [33],
    "template": [1],
}
VALUE_POSITIONS = [12, 22, 33]


def _edited(ids, positions, vocab, k=1):
    out = list(ids)
    for p in positions:
        out[p] = 1 + (out[p] + 7 * k) % (vocab - 1)
    return out


def _same_capture(a, b):
    for name in ("attn", "scores", "head_out", "resid_in", "resid_final", "attn_block_out", "value_label_logits"):
        x, y = getattr(a, name, None), getattr(b, name, None)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        close(x, y)
    if a.importance is not None or b.importance is not None:
        close(a.importance.values, b.importance.values)


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_cached_prefix_gives_the_full_pass_after_each_kind_of_edit(tiny, edit):
    vocab = tiny.model.config.vocab_size
    base = prompts(vocab, lengths=(40,), seed=3)[0]
    new = _edited(base, EDITS[edit], vocab)
    store = PrefixCache(64 * 2**20)
    run_ids_cached(tiny.model, base, LABEL_IDS, store, value_positions=VALUE_POSITIONS, importance="final_scale")
    got = run_ids_cached(tiny.model, new, LABEL_IDS, store, value_positions=VALUE_POSITIONS,
                         importance="final_scale")
    want = run_ids(tiny.model, [new], LABEL_IDS, value_positions=[VALUE_POSITIONS], importance="final_scale")
    close(got.logits, want.logits)
    _same_capture(got.capture, want.capture)
    first = min(EDITS[edit])
    if store.stats.hits:  # the reuse is what the edit allows: exactly the tokens before the first change
        assert store.stats.reused_tokens == first
    else:  # only an architecture whose cache is not a plain prefix (sliding windows) may miss
        assert tiny.model.config.model_type in ("mistral",), tiny.model.config.model_type


def test_interventions_at_T_and_ablations_from_a_cached_prefix(tiny):
    vocab = tiny.model.config.vocab_size
    base = prompts(vocab, lengths=(40,), seed=4)[0]
    new = _edited(base, EDITS["query"], vocab)
    L = tiny.n_layers
    store = PrefixCache(64 * 2**20)
    setups = [iv.knockout([VALUE_POSITIONS], heads=[(L - 1, 0), (L - 2, 1)]), iv.ablate([(L - 1, 1)]),
              iv.rescale([{12: 2.0, 33: 0.5}], heads=[(L - 1, 2)]), iv.NONE, iv.ablate([(0, 0)])]
    for setup in setups:  # the same store throughout: a knocked-out run must not leave edited keys behind
        run_ids_cached(tiny.model, base, LABEL_IDS, store, interventions=setup)
        got = run_ids_cached(tiny.model, new, LABEL_IDS, store, interventions=setup, value_positions=VALUE_POSITIONS)
        want = run_ids(tiny.model, [new], LABEL_IDS, interventions=setup, value_positions=[VALUE_POSITIONS])
        close(got.logits, want.logits)
        _same_capture(got.capture, want.capture)


def test_a_cache_that_evicts_mid_run_still_gives_the_full_pass(tiny):
    vocab = tiny.model.config.vocab_size
    base = prompts(vocab, lengths=(40,), seed=5)[0]
    store = PrefixCache(64 * 2**20)
    run_ids_cached(tiny.model, base, LABEL_IDS, store)
    one = store.nbytes
    if one == 0:
        pytest.skip(f"{tiny.model.config.model_type}: its cache is not stored (sliding window)")
    small = PrefixCache(int(1.5 * one))  # room for one prompt's prefix: every new prompt evicts the last
    seq = [base] + [_edited(base, EDITS[e], vocab, k) for k, e in enumerate(EDITS, 1)] + [base]
    for ids in seq:
        got = run_ids_cached(tiny.model, ids, LABEL_IDS, small)
        close(got.logits, run_ids(tiny.model, [ids], LABEL_IDS).logits)
        assert small.nbytes <= small.max_bytes
    assert small.stats.evictions >= len(seq) - 2 and small.stats.hits >= 1


def test_rows_at_T_over_the_shared_cache_equal_the_uncached_rows(tiny, tokenizer):
    from iclviz.prompt import build_prompt

    demos = [("a fine film", "foo"), ("dull and slow", "bar"), ("great fun", "foo"), ("boring", "bar")]
    p1 = build_prompt(tokenizer, demos, "what a film", ("foo", "bar"))
    p2 = build_prompt(tokenizer, demos, "awful", ("foo", "bar"))
    L = tiny.n_layers
    rows = [RowEdit(), RowEdit.of("knockout", [(L - 1, 0)]), RowEdit.of("ablate_t", [(L - 2, 1), (L - 1, 2)])]
    set_shared_prefix_cache(PrefixCache(0))  # off
    try:
        want = [last_position_logits(tiny, [p], rows)[0] for p in (p1, p2)]
        want_ko = knockout_each(tiny, p2, [[], p2.label_positions[:1], p2.label_positions], [(L - 1, 0)])
        shared = PrefixCache(64 * 2**20)
        set_shared_prefix_cache(shared)
        got = [last_position_logits(tiny, [p], rows)[0] for p in (p1, p2)]
        got_ko = knockout_each(tiny, p2, [[], p2.label_positions[:1], p2.label_positions], [(L - 1, 0)])
    finally:
        set_shared_prefix_cache(None)
    for a, b in zip(got, want):
        close(a, b)
    close(got_ko, want_ko)
    if tiny.model.config.model_type != "mistral":
        assert shared.stats.hits >= 2  # p2 reused p1's demonstrations, and knockout_each p2's whole prefix


def test_the_prediction_of_an_edited_prompt_reuses_its_prefix(tiny, tokenizer):
    from iclviz.prompt import build_prompt

    demos = [("a fine film", "foo"), ("dull and slow", "bar"), ("great fun", "foo"), ("boring", "bar")]
    p1 = build_prompt(tokenizer, demos, "what a film", ("foo", "bar"))
    p2 = build_prompt(tokenizer, demos, "what an awful film", ("foo", "bar"))
    shared = PrefixCache(64 * 2**20)
    set_shared_prefix_cache(shared)
    try:
        tiny.run([p1])
        got = tiny.run([p2], value_heads="all")
    finally:
        set_shared_prefix_cache(None)
    want = run_ids(tiny.model, [p2.input_ids], p2.label_token_id_list(), value_positions=[p2.label_positions])
    close(got.logits, want.logits)
    _same_capture(got.capture, want.capture)
    query_start = next(i for i, (a, b) in enumerate(zip(p1.input_ids, p2.input_ids)) if a != b)
    if tiny.model.config.model_type != "mistral":
        assert shared.stats.reused_tokens == query_start


def test_common_length():
    assert _common_length((1, 2, 3, 4), (1, 2, 9, 4), 10) == 2
    assert _common_length((1, 2, 3), (1, 2, 3, 4), 3) == 3
    assert _common_length((1, 2, 3), (1, 2, 3), 2) == 2
    assert _common_length((5,), (1,), 1) == 0
    assert _common_length(tuple(range(1000)), tuple(range(500)) + (0,) * 500, 999) == 500


def test_the_bound_is_in_bytes_and_least_recently_used_goes_first():
    from transformers import DynamicCache

    def kv(n):
        c = DynamicCache()
        for layer in range(2):
            c.update(torch.zeros(1, 2, n, 4), torch.zeros(1, 2, n, 4), layer)
        return c

    per_token = 2 * 2 * (2 * 4 * 4)  # layers x (keys, values) x heads x dims x bytes
    store = PrefixCache(25 * per_token)
    assert store.put("m", list(range(10)), kv(10)) and store.nbytes == 10 * per_token
    assert store.put("m", list(range(100, 110)), kv(10))
    n, _ = store.take("m", list(range(10)) + [99])  # the first is now the most recently used
    assert n == 10
    assert store.put("m", list(range(200, 210)), kv(10))  # 30 tokens > 25: the least recent (the second) goes
    assert store.take("m", list(range(100, 111)))[0] == 0
    assert store.take("m", list(range(11)))[0] == 10
    assert store.take("other model", list(range(11)))[0] == 0
    assert not store.put("m", list(range(30)), kv(30))  # larger than the whole bound: not stored


def test_the_operator_sets_the_bound_and_zero_turns_it_off(monkeypatch):
    from iclviz.engine.runs import prefix_store
    from iclviz.engine.settings import prefix_cache_megabytes
    from iclviz.validation import ValidationError

    assert prefix_cache_megabytes({}) == 256
    assert prefix_cache_megabytes({"ICLVIZ_PREFIX_CACHE_MB": "0"}) == 0
    with pytest.raises(ValidationError):
        prefix_cache_megabytes({"ICLVIZ_PREFIX_CACHE_MB": "-1"})
    monkeypatch.setenv("ICLVIZ_PREFIX_CACHE_MB", "0")
    set_shared_prefix_cache(None)
    try:
        assert prefix_store() is None
        monkeypatch.setenv("ICLVIZ_PREFIX_CACHE_MB", "8")
        set_shared_prefix_cache(None)
        store = prefix_store()
        assert store is not None and store.max_bytes == 8 * 2**20
        assert prefix_store(enabled=False) is None
    finally:
        set_shared_prefix_cache(None)


@pytest.mark.parametrize("cache_mb", [64, 0])
def test_the_live_check_as_one_batch_equals_its_parts_run_alone(tiny, tokenizer, cache_mb):
    """The paired effect against random sets and the label-swap split, as rows of one batch over the two prompts'
    cached prefixes, equal the same readouts computed separately (and with the cache off)."""
    from iclviz.analyses.readout import live_check, paired_effect, swap_check
    from iclviz.prompt import DEFAULT_TEMPLATE, build_prompt

    demos = [("a fine film", "foo"), ("dull and slow", "bar"), ("great fun", "foo"), ("boring", "bar")]
    words = ("foo", "bar")
    L = tiny.n_layers
    heads = [(L - 1, 0), (L - 2, 1)]
    set_shared_prefix_cache(PrefixCache(cache_mb * 2**20))
    try:
        eff, sw = live_check(tiny, demos, "what a film", words, DEFAULT_TEMPLATE, heads, "knockout", draws=3)
        prompt = build_prompt(tokenizer, demos, "what a film", words, DEFAULT_TEMPLATE)
        want_eff = paired_effect(tiny, prompt, heads, "knockout", 3)
        want_sw = swap_check(tiny, demos, "what a film", words, DEFAULT_TEMPLATE, heads, "knockout", per_head=False)
    finally:
        set_shared_prefix_cache(None)
    tol = dict(abs=1e-5, rel=1e-5)
    assert eff.before_margin == pytest.approx(want_eff.before_margin, **tol)
    assert eff.icl_margin == pytest.approx(want_eff.icl_margin, **tol)
    assert eff.random_heads == want_eff.random_heads and len(eff.random_heads) >= 1
    assert eff.random_margins == pytest.approx(want_eff.random_margins, **tol)
    assert eff.random_preds == want_eff.random_preds and eff.sentence() == want_eff.sentence()
    for k in ("change", "context", "prior"):
        assert sw.split[k] == pytest.approx(want_sw.split[k], **tol)


def test_the_towers_patch_and_rows_of_one_prompt_over_the_cache_equal_the_full_passes(tiny, tokenizer):
    """One prompt as rows of a batch with per-row edits at T (q/k/v patches, per-row knockouts) over one cached
    prefix: the towers patch (its recording run and its patched rows) equals the same with the cache off."""
    from iclviz.analyses.towers_patch import towers_patch
    from iclviz.prompt import build_prompt

    demos_a = [("a fine film", "foo"), ("dull and slow", "bar"), ("great fun", "foo"), ("boring", "bar")]
    demos_b = [("a fine film", "bar"), ("dull and slow", "foo"), ("great fun", "bar"), ("boring", "foo")]
    a = build_prompt(tokenizer, demos_a, "what a film", ("foo", "bar"))
    b = build_prompt(tokenizer, demos_b, "what a film", ("foo", "bar"))
    L = tiny.n_layers
    heads = [(L - 1, 0), (L - 2, 1)]
    conds = ("none", "q", "k", "v", "q+k", "all")
    set_shared_prefix_cache(PrefixCache(0))
    try:
        want = towers_patch(tiny, a, b, heads, conditions=conds, keep_captures=True)
        shared = PrefixCache(64 * 2**20)
        set_shared_prefix_cache(shared)
        towers_patch(tiny, a, b, heads, conditions=conds)  # fills the cache
        got = towers_patch(tiny, a, b, heads, conditions=conds, keep_captures=True)
        rows = iv.knockout([a.label_positions] * 3, heads=heads)
        got_rows = tiny.run([a] * 3, rows, capture=True)
    finally:
        set_shared_prefix_cache(None)
    for col in ("logit_foo", "logit_bar"):
        close(torch.tensor(got.summary[col].to_numpy()), torch.tensor(want.summary[col].to_numpy()))
    _same_capture(got.capture, want.capture)
    want_rows = run_ids(tiny.model, [a.input_ids] * 3, a.label_token_id_list(), rows,
                        value_positions=[a.label_positions] * 3)
    close(got_rows.logits, want_rows.logits)
    _same_capture(got_rows.capture, want_rows.capture)
    if tiny.model.config.model_type != "mistral":
        assert shared.stats.hits >= 2
