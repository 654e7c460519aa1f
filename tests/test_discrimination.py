"""Discrimination beside accuracy, and a head's effect split into an in-context part and a prior part.

The measures are checked against scipy and hand counts; the split against constructed cases whose
answer is known exactly; the scan's split on the tiny models of every architecture, where the gold
labels are made to carry no information about the prompts (so every head's in-context part must be 0);
the one-prompt label-swap split against independent full passes, and exactly on two constructed models:
one that cannot tell foo from bar in its input (every effect a pure constant push: no in-context part) and
one for which foo and bar are mirror images (every effect flips with the labels: no prior part)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import mannwhitneyu

from iclviz.analyses.causal import causal_scan
from iclviz.analyses.context_heads import ContextTest, choose_n_heads, context_test, n_heads_choice
from iclviz.analyses.discrimination import (
    auc,
    label_auc,
    measures,
    paired_change,
    reading,
    recentred_predictions,
    split_support,
    swap_reading,
    swap_split,
)
from iclviz.analyses.evaluation import EvalSetup
from iclviz.analyses.readout import exchange_first_two, swap_check
from iclviz.data import Dataset, load_dataset
from iclviz.engine.interventions import NONE, knockout
from iclviz.prompt import DEFAULT_TEMPLATE, build_prompt

RNG = np.random.default_rng(0)


def _two_label_logits(n=200, separation=1.0, shift=0.0):
    gold = np.repeat([0, 1], n // 2)
    m = np.where(gold == 0, separation, -separation) + RNG.normal(0, 1, n) + shift
    return np.stack([m / 2, -m / 2], -1), gold


def test_auc_equals_mann_whitney_and_pair_counts():
    s = RNG.normal(size=60).round(1)  # ties on purpose
    pos = RNG.random(60) < 0.4
    u = mannwhitneyu(s[pos], s[~pos]).statistic
    assert auc(s, pos) == pytest.approx(u / (pos.sum() * (~pos).sum()))
    pairs = [(a > b) + 0.5 * (a == b) for a in s[pos] for b in s[~pos]]
    assert auc(s, pos) == pytest.approx(np.mean(pairs))
    assert np.isnan(auc(s, np.zeros(60, bool)))


def test_a_prior_shift_moves_accuracy_but_not_auc_nor_recentred_accuracy():
    lg, gold = _two_label_logits(shift=0.0)
    shifted = lg + np.array([2.0, -2.0])  # every prompt pushed toward the first label by 4 logits of m
    before, after = measures(lg, gold), measures(shifted, gold)
    assert after["auc"] == pytest.approx(before["auc"])
    assert after["recentred_accuracy"] == pytest.approx(before["recentred_accuracy"])
    assert after["mean_margin"] == pytest.approx(before["mean_margin"] + 4)
    assert after["accuracy"] < before["accuracy"] - 0.1  # the test could fail: accuracy does move
    # more labels: a constant per-label push leaves the one-vs-rest AUC and the recentred predictions alone
    lg3 = RNG.normal(size=(90, 3)) + 1.5 * np.eye(3)[np.repeat([0, 1, 2], 30)]
    gold3 = np.repeat([0, 1, 2], 30)
    push = lg3 + np.array([3.0, 0.0, -1.0])
    assert label_auc(push, gold3) == pytest.approx(label_auc(lg3, gold3))
    assert (recentred_predictions(push) == recentred_predictions(lg3)).all()
    assert measures(push, gold3)["accuracy"] != pytest.approx(measures(lg3, gold3)["accuracy"])


def test_the_reading_follows_the_intervals():
    lg, gold = _two_label_logits(n=300, separation=1.5)
    shifted = lg + np.array([1.5, -1.5])
    scrambled = np.stack([lg[RNG.permutation(len(lg))][:, 0], lg[RNG.permutation(len(lg))][:, 1]], -1) * 0
    scrambled += RNG.normal(0, 1, scrambled.shape)
    both = np.stack([lg, shifted, scrambled, lg + 1e-9], 1)
    prior = paired_change(both, gold, 0, 1, ("foo", "bar"), n_resamples=300)
    lost = paired_change(both, gold, 0, 2, ("foo", "bar"), n_resamples=300)
    same = paired_change(both, gold, 0, 3, ("foo", "bar"), n_resamples=300)
    assert prior.separable("mean_margin") and not prior.separable("auc")
    assert "a prior shift" in reading(prior) and "toward foo" in reading(prior)
    assert lost.separable("auc") and lost.change["auc"] < 0
    assert "in-context reading lost" in reading(lost)
    assert reading(same).startswith("no measurable change")
    # the interval is a paired bootstrap: it contains the observed change
    assert lost.low["auc"] <= lost.change["auc"] <= lost.high["auc"]


def test_split_support_pure_vote_and_pure_in_context():
    vote = split_support({"foo": 2.35, "bar": -2.35})  # L23H10-like: a constant push toward foo
    assert vote["context"] == pytest.approx(0) and vote["prior"] == pytest.approx(2.35)
    assert vote["prior_toward"] == "foo" and vote["prior_first"] == pytest.approx(2.35)
    ctx = split_support({"foo": 0.8, "bar": 0.8})  # helps whichever label is gold
    assert ctx["context"] == pytest.approx(0.8) and ctx["prior"] == pytest.approx(0)
    bar_voter = split_support({"foo": -0.2, "bar": 0.6})
    assert bar_voter["prior_toward"] == "bar" and bar_voter["prior_first"] == pytest.approx(-0.4)
    assert bar_voter["context"] + bar_voter["prior"] == pytest.approx(0.6)
    three = split_support({"foo": 1.0, "bar": 1.0, "baz": 1.0})
    assert three["prior"] == pytest.approx(0) and np.isnan(three["prior_first"])


def _no_information_dataset() -> Dataset:
    """Every test sentence twice, once with each gold label: the gold label says nothing about the prompt."""
    sst = load_dataset("sst2")
    texts = sst.test["text"].head(3).tolist()
    test = pd.DataFrame({"text": texts * 2, "label": [0] * 3 + [1] * 3})
    return Dataset("no-information", sst.labels, sst.train, test)


def test_scan_split_is_all_prior_when_gold_carries_no_information(tiny):
    """With each prompt present under both gold labels, a head's support on foo-gold prompts is minus its
    support on bar-gold prompts: the in-context part is 0 for every head, on every architecture, and the
    prior part is the head's mean push on m."""
    setup = EvalSetup(_no_information_dataset(), k_per_label=2, n_test=6, seeds=(0,))
    scan = causal_scan(tiny, setup, layers=[tiny.n_layers - 1], kinds=("knockout",))
    t = scan.table
    assert np.allclose(t.context_effect, 0, atol=1e-5)
    assert np.allclose(t.prior_first, (t.effect_foo - t.effect_bar) / 2, atol=1e-6)
    assert (t.prior_effect.abs() > 1e-4).any()  # the heads do push: the test could fail
    assert np.allclose(t.prior_effect, t.prior_first.abs(), atol=1e-6)


def test_label_swap_split_adds_up_to_full_pass_knockouts(tiny):
    """On one prompt, the change of m under the knockout (from T-rows over the cache) equals the change in
    independent full passes, on the prompt and on its swapped twin; the two parts add up to it."""
    demos = [("a wonderful film", "foo"), ("dull and boring", "bar"), ("I loved every minute", "foo"),
             ("a waste of time", "bar")]
    query, words = "great acting", ("foo", "bar")
    L = tiny.n_layers
    heads = [(L - 1, 0), (L - 2, 1)]
    chk = swap_check(tiny, demos, query, words, DEFAULT_TEMPLATE, heads, "knockout")

    def full_change(demo_list):
        p = build_prompt(tiny.tokenizer, demo_list, query, words, DEFAULT_TEMPLATE)
        ids = p.label_token_id_list()
        lg0 = tiny.run([p], NONE, capture=False).logits[0, ids]
        lg1 = tiny.run([p], knockout([p.label_positions], heads=heads), capture=False).logits[0, ids]
        return float((lg1[0] - lg1[1]) - (lg0[0] - lg0[1]))

    d_orig, d_swap = full_change(demos), full_change(exchange_first_two(demos, words))
    assert chk.split["change"] == pytest.approx(d_orig, abs=1e-4)
    assert chk.split["context"] == pytest.approx((d_orig - d_swap) / 2, abs=1e-4)
    assert chk.split["prior"] == pytest.approx((d_orig + d_swap) / 2, abs=1e-4)
    assert chk.split["context"] + chk.split["prior"] == pytest.approx(chk.split["change"], abs=1e-9)
    assert abs(d_orig) > 1e-4 and abs(d_orig - d_swap) > 1e-5  # something moved: the test could fail
    assert len(chk.per_head()) == 2
    assert chk.sentence().startswith("On this prompt, the 2 heads change the margin")


def test_swap_reading_says_which_part_dominates():
    assert swap_reading(swap_split(-1.0, 1.0)).startswith("mostly in-context reading")
    assert swap_reading(swap_split(-1.0, -0.9)).startswith("mostly a prior shift")
    assert "toward bar" in swap_reading(swap_split(-1.0, -0.9))
    assert swap_reading(swap_split(0.01, 0.0)).startswith("the margin barely moves")


def test_context_test_rows_and_null(tiny_llama):
    lm = tiny_llama
    setup = EvalSetup(load_dataset("sst2").test_part("evaluate"), k_per_label=2, n_test=8, seeds=(0,))
    ranking = [(2, 1), (2, 3), (1, 0), (1, 2)]
    t = context_test(lm, setup, ranking, sizes=(1, 3), head_sets={"other": [(0, 1)]}, n_draws={1: 3, 3: 2},
                     layers=[1, 2])
    assert t.names[:4] == ["none", "top:1", "top:3", "set:other"]
    assert len(t.draws[1]) == 3 and len(t.draws[3]) == 2
    for k, sets in t.draws.items():  # random sets come from the layers given and avoid the top k
        for hs in sets:
            assert len(hs) == k and all(a in (1, 2) for a, _ in hs)
            assert not set(hs) & set(ranking[:k])
    tbl = t.table()
    lg = t.logits.double().numpy()
    assert tbl.loc[1, "auc"] == pytest.approx(measures(lg[:, 1], t.gold)["auc"])
    v = t.verdict("top:3", n_resamples=200)
    null = t.null(3)
    assert v["auc null min"] == pytest.approx(null["auc"].min())
    assert v["auc beyond all"] == bool(v["auc after"] < null["auc"].min())
    curve = t.curve()
    assert list(curve.k) == [1, 3]
    assert t.verdict("set:other", n_resamples=200)["draws"] == 3  # a set of 1 head meets the draws of size 1


def test_test_halves_are_disjoint_and_cover_the_split():
    sst = load_dataset("sst2")
    a, b = sst.test_part("locate").test, sst.test_part("evaluate").test
    assert len(a) + len(b) == len(sst.test)
    assert not set(zip(a.text, a.label)) & set(zip(b.text, b.label)) or sst.test.duplicated().any()
    with pytest.raises(ValueError):
        sst.test_part("train")


def test_choose_n_heads_rule():
    curve = pd.DataFrame({"k": [1, 2, 4, 8], "auc top": [0.70, 0.66, 0.58, 0.55],
                          "auc null min": [0.68, 0.67, 0.66, 0.64]})
    curve.attrs["auc none"] = 0.72
    # drops 0.02, 0.06, 0.14, 0.17: half of the largest is 0.085 -> k = 4 (below every random set)
    assert choose_n_heads(curve) == 4
    assert n_heads_choice(curve)[1].startswith("the smallest k of the curve whose AUC is below every random set")
    curve["auc null min"] = [0.5, 0.5, 0.5, 0.5]  # nothing beyond the null: the largest drop
    assert choose_n_heads(curve) == 8
    assert "the k of the largest drop" in n_heads_choice(curve)[1]
    curve["auc top"] = [0.73, 0.74, 0.72, 0.75]  # no drop at all: the first k, said to be a placeholder
    assert choose_n_heads(curve) == 1 and "not a finding" in n_heads_choice(curve)[1]


def test_context_test_round_trips(tmp_path, tiny_llama):
    setup = EvalSetup(load_dataset("sst2"), k_per_label=1, n_test=4, seeds=(0,))
    t = context_test(tiny_llama, setup, [(2, 0), (2, 1)], sizes=(1,), n_draws=2, layers=[2])
    t.save(tmp_path / "t.pt")
    back = ContextTest.load(tmp_path / "t.pt")
    torch.testing.assert_close(back.logits, t.logits)
    assert back.names == t.names and back.draws == t.draws


def test_a_prior_that_differs_between_demonstration_sets_is_not_read_as_discrimination():
    """Two demonstration sets (groups), the same query-dependent margins in each, but one set pushes every margin
    toward foo and the other toward bar. Pooled, that offset dilutes the AUC, and an intervention that only
    removes the offset would look like a gain; within sets nothing changed."""
    from iclviz.analyses.discrimination import grouped_auc, measures, paired_change, seed_groups

    rng = np.random.default_rng(0)
    n = 40
    gold = np.tile([0, 1], n)  # label-balanced in each set
    signal = np.where(gold == 0, 1.0, -1.0) + rng.normal(0, 1.0, 2 * n)
    groups = seed_groups(4 * n, [0, 1], 2 * n)
    margins_before = np.concatenate([signal + 4.0, signal - 4.0])
    margins_after = np.concatenate([signal, signal])  # the offset gone, the reading of the query unchanged
    g = np.concatenate([gold, gold])

    def logits(m):
        return np.stack([m / 2, -m / 2], -1)

    within = grouped_auc(logits(margins_before), g, groups)
    assert within == pytest.approx(grouped_auc(logits(margins_after), g, groups))
    assert within == pytest.approx(auc(signal, gold == 0))
    pooled_before = measures(logits(margins_before), g)["auc"]
    assert pooled_before < within - 0.1  # pooling reads the sets' priors as noise in the margin
    both = np.stack([logits(margins_before), logits(margins_after)], 1)
    c = paired_change(both, g, 0, 1, groups=groups, n_resamples=200)
    assert c.change["auc"] == pytest.approx(0.0, abs=1e-12)
    assert c.change["recentred_accuracy"] == pytest.approx(0.0, abs=1e-12)
    pooled = paired_change(both, g, 0, 1, n_resamples=200)
    assert pooled.change["auc"] > 0.1  # what a pooled AUC would have called a gain
    assert seed_groups(10, [0, 1], 4) is None and seed_groups(8, [3], 8) is None


@pytest.mark.parametrize("destroys", [True, False])
def test_the_report_says_the_heads_carry_reading_only_when_the_confirmation_does(destroys):
    from types import SimpleNamespace

    from iclviz.outputs.report_context import _together

    rng = np.random.default_rng(1)
    n = 60
    gold = np.tile([0, 1], n // 2)
    m = np.where(gold == 0, 1.5, -1.5) + rng.normal(0, 1, n)
    rows = {"none": m}
    rows["top:1"] = rng.normal(0, 1, n) if destroys else m + rng.normal(0, 0.05, n)
    for d in range(20):
        rows[f"random:1:{d}"] = m + rng.normal(0, 0.3, n)
    lg = torch.tensor(np.stack([np.stack([v / 2, -v / 2], -1) for v in rows.values()], 1))
    t = ContextTest(lg, gold.tolist(), list(rows), [(0, 0)], {}, {1: [[(0, 1)]] * 20}, ("foo", "bar"), [0],
                    {"seeds": [0], "n_test": n})
    text = _together(SimpleNamespace(confirm=t, confirm_more=None, n_heads=1))
    assert ("they carry in-context reading" in text) == destroys
    assert ("not separated from random sets" in text) == (not destroys)
    both = _together(SimpleNamespace(confirm=t, confirm_more=t, n_heads=1))
    assert ("they carry in-context reading" in both) == destroys


def _confirmation(rng, seeds, n_per_seed, offsets, destroys, n_draws=20):
    """A stored confirmation: every demonstration set (seed) has its own label prior (``offsets``); the top
    heads either destroy the query's signal or leave it; random sets add a little noise."""
    gold = np.tile([0, 1], len(seeds) * n_per_seed // 2)
    prior = np.repeat(offsets, n_per_seed)
    signal = np.where(gold == 0, 1.5, -1.5) + rng.normal(0, 1, len(gold))
    rows = {"none": signal + prior, "top:1": (rng.normal(0, 1, len(gold)) if destroys else signal) + prior}
    for d in range(n_draws):
        rows[f"random:1:{d}"] = signal + prior + rng.normal(0, 0.3, len(gold))
    lg = torch.tensor(np.stack([np.stack([v / 2, -v / 2], -1) for v in rows.values()], 1))
    return ContextTest(lg, gold.tolist(), list(rows), [(0, 0)], {}, {1: [[(0, d + 1)] for d in range(n_draws)]},
                       ("foo", "bar"), [0], {"seeds": list(seeds), "n_test": n_per_seed})


def test_merged_confirmations_keep_each_demonstration_set_apart():
    """Two confirmations merged: every measure equals one computed by hand from the stacked rows with every
    demonstration set its own group, even where the two tests used the same seed numbers; tests with other
    random draws are refused."""
    from iclviz.analyses.context_heads import merge_tests

    rng = np.random.default_rng(3)
    a = _confirmation(rng, [2, 3], 20, [-2.0, 1.0], destroys=True)
    b = _confirmation(rng, [2, 3], 20, [3.0, -1.0], destroys=True)  # the same seed numbers, other priors
    m = merge_tests([a, b])
    stacked = np.concatenate([a.logits.numpy(), b.logits.numpy()])
    groups = np.repeat([0, 1, 2, 3], 20)
    assert len(m.gold) == 80 and list(m.groups) == list(groups)
    for col in range(stacked.shape[1]):
        assert measures(m.logits.numpy()[:, col], m.gold, m.groups) == measures(stacked[:, col], a.gold + b.gold,
                                                                                 groups)
    # the seed numbers alone would merge the two tests' sets, whose priors differ: a different (diluted) AUC
    merged_by_seed = measures(stacked[:, 0], a.gold + b.gold, np.tile(np.repeat([0, 1], 20), 2))["auc"]
    assert m.table()["auc"].iloc[0] > merged_by_seed + 0.02
    assert m.verdict("top:1", n_resamples=200)["draws"] == 20
    other = _confirmation(rng, [4, 5], 20, [0.0, 0.0], destroys=True, n_draws=19)
    with pytest.raises(ValueError, match="cannot be merged"):
        merge_tests([a, other])


@pytest.mark.parametrize("destroys", [True, False])
def test_the_pooled_sentence_follows_its_verdict(destroys):
    from types import SimpleNamespace

    from iclviz.analyses.context_heads import merge_tests
    from iclviz.outputs.report_context import pooled_reading

    rng = np.random.default_rng(4)
    a = _confirmation(rng, [2, 3], 32, [-1.0, 1.0], destroys)
    b = _confirmation(rng, [4, 5], 32, [0.5, -0.5], destroys)
    r = pooled_reading(SimpleNamespace(pooled=merge_tests([a, b]), n_heads=1))
    assert r["n"] == 128 and r["draws"] == 20
    assert r["reproduced"] == destroys
    assert ("**Verdict.** reproduced on discrimination" in r["text"]) == destroys
    assert f"{r['auc before']:.3f} -> {r['auc after']:.3f}" in r["text"]
    assert pooled_reading(SimpleNamespace(pooled=None, n_heads=1)) is None


_SWAP_DEMOS = [("a wonderful film", "foo"), ("dull and boring", "bar"), ("I loved every minute", "foo"),
               ("a waste of time", "bar")]


def _label_ids(lm):
    p = build_prompt(lm.tokenizer, _SWAP_DEMOS, "great acting", ("foo", "bar"), DEFAULT_TEMPLATE)
    ids = p.label_token_id_list()
    return ids[0], ids[1]


def _split_of_two_deep_heads(lm) -> dict:
    """The one-prompt label-swap split of a knockout of two deep heads (which do move the margin)."""
    L = lm.n_layers
    chk = swap_check(lm, _SWAP_DEMOS, "great acting", ("foo", "bar"), DEFAULT_TEMPLATE, [(L - 1, 0), (L - 2, 1)],
                     "knockout", per_head=False)
    assert abs(chk.split["change"]) > 1e-4  # the heads do move the margin: the tests could fail
    return chk.split


def test_a_model_that_cannot_see_the_labels_has_no_in_context_part(tiny, tokenizer):
    """Every architecture, the input embeddings of foo and bar made equal (the outputs kept apart): the prompt
    and its label-swapped twin are the same input to the model, so any head's effect is a pure constant push.
    The one-prompt split must give it an in-context part of exactly 0 and a prior equal to the whole change."""
    from iclviz.engine.models import wrap_model
    from iclviz.testing import build_tiny_model

    model = build_tiny_model(tiny.name.removeprefix("tiny-"))  # a fresh copy: the fixture's model is shared
    out = model.get_output_embeddings()
    out.weight = torch.nn.Parameter(out.weight.detach().clone())  # untie where tied: the outputs stay distinct
    foo, bar = _label_ids(tiny)
    with torch.no_grad():
        model.get_input_embeddings().weight[bar] = model.get_input_embeddings().weight[foo]
    split = _split_of_two_deep_heads(wrap_model(model, tokenizer, name=f"{tiny.name}-blind"))
    assert split["context"] == pytest.approx(0, abs=1e-5)
    assert split["prior"] == pytest.approx(split["change"], abs=1e-5)


def _label_symmetric_gpt2(foo: int, bar: int):
    """A tiny GPT-2 that treats foo and bar as mirror images: exchanging the two tokens anywhere in the input
    permutes hidden dimensions 0 and 1 at every position (every weight symmetrised under that permutation, with
    head dimensions 0 and 1 of every head and MLP units 0 and 1 exchanged alongside), so the output logits of foo
    and bar trade places and the margin changes sign."""
    from iclviz.testing import build_tiny_model

    model = build_tiny_model("gpt2")
    cfg = model.config
    d, n_heads = cfg.n_embd, cfg.n_head
    hd = d // n_heads

    def swap(n, pairs):
        idx = torch.arange(n)
        for a, b in pairs:
            idx[a], idx[b] = b, a
        return idx

    P = swap(d, [(0, 1)])
    Qh = swap(d, [(h * hd, h * hd + 1) for h in range(n_heads)])
    Q3 = torch.cat([Qh, Qh + d, Qh + 2 * d])
    R = swap(cfg.n_inner or 4 * d, [(0, 1)])

    def sym(w, rows, cols):  # Conv1D y = x @ w + b: make w[rows][:, cols] == w
        w.copy_((w + w[rows][:, cols]) / 2)

    with torch.no_grad():
        for block in model.transformer.h:
            for ln in (block.ln_1, block.ln_2):
                ln.weight.copy_((ln.weight + ln.weight[P]) / 2)
                ln.bias.copy_((ln.bias + ln.bias[P]) / 2)
            sym(block.attn.c_attn.weight, P, Q3)
            block.attn.c_attn.bias.copy_((block.attn.c_attn.bias + block.attn.c_attn.bias[Q3]) / 2)
            sym(block.attn.c_proj.weight, Qh, P)
            block.attn.c_proj.bias.copy_((block.attn.c_proj.bias + block.attn.c_proj.bias[P]) / 2)
            sym(block.mlp.c_fc.weight, P, R)
            block.mlp.c_fc.bias.copy_((block.mlp.c_fc.bias + block.mlp.c_fc.bias[R]) / 2)
            sym(block.mlp.c_proj.weight, R, P)
            block.mlp.c_proj.bias.copy_((block.mlp.c_proj.bias + block.mlp.c_proj.bias[P]) / 2)
        lnf = model.transformer.ln_f
        lnf.weight.copy_((lnf.weight + lnf.weight[P]) / 2)
        lnf.bias.copy_((lnf.bias + lnf.bias[P]) / 2)
        wpe = model.transformer.wpe.weight
        wpe.copy_((wpe + wpe[:, P]) / 2)
        wte = model.transformer.wte.weight  # tied with the output embedding
        keep_foo = wte[foo].clone()
        keep_foo[0], keep_foo[1] = 10.0, -10.0  # foo and bar far apart along the mirrored dimensions
        wte.copy_((wte + wte[:, P]) / 2)
        wte[foo] = keep_foo
        wte[bar] = keep_foo[P]
    return model


def test_a_label_symmetric_model_has_no_prior_part(tokenizer, tiny_gpt2):
    """The converse: on a model for which foo and bar are mirror images, the label-swapped twin is the mirror
    of the prompt, so any head's effect on the margin flips sign exactly with the labels: a pure in-context
    effect. The one-prompt split must give it a prior part of exactly 0 and an in-context part equal to the
    whole change."""
    from iclviz.engine.models import wrap_model

    foo, bar = _label_ids(tiny_gpt2)
    lm = wrap_model(_label_symmetric_gpt2(foo, bar), tokenizer, name="tiny-gpt2-symmetric")
    p = build_prompt(lm.tokenizer, _SWAP_DEMOS, "great acting", ("foo", "bar"), DEFAULT_TEMPLATE)
    q = build_prompt(lm.tokenizer, exchange_first_two(_SWAP_DEMOS, ("foo", "bar")), "great acting",
                     ("foo", "bar"), DEFAULT_TEMPLATE)
    m = [float(lg[0] - lg[1]) for lg in (lm.run([x], NONE, capture=False).logits[0, [foo, bar]] for x in (p, q))]
    assert m[1] == pytest.approx(-m[0], abs=1e-5) and abs(m[0]) > 1e-3  # the construction holds
    split = _split_of_two_deep_heads(lm)
    assert split["prior"] == pytest.approx(0, abs=1e-5)
    assert split["context"] == pytest.approx(split["change"], abs=1e-5)


def test_the_report_names_a_reading_confirmed_only_on_all_fresh_prompts_together():
    from types import SimpleNamespace

    from iclviz.analyses.context_heads import merge_tests
    from iclviz.outputs.report_context import _together

    rng = np.random.default_rng(5)
    kept = _confirmation(rng, [2, 3], 32, [0.0, 0.0], destroys=False)
    lost = _confirmation(rng, [4, 5], 32, [0.0, 0.0], destroys=True)
    text = _together(SimpleNamespace(confirm=kept, confirm_more=lost, pooled=merge_tests([lost, lost]), n_heads=1))
    assert "confirmed on all fresh prompts together, though not on every set alone" in text
    text = _together(SimpleNamespace(confirm=kept, confirm_more=lost, pooled=merge_tests([kept, kept]), n_heads=1))
    assert "confirmed on one fresh set and not on another" in text


def test_the_way_to_chance_follows_the_sign_of_the_change():
    from iclviz.outputs.report_context import way_to_chance

    down = {"auc share to chance": 0.25, "auc change": -0.05, "auc percentile": 100.0}
    up = {"auc share to chance": -0.02, "auc change": +0.004, "auc percentile": 22.0}
    assert way_to_chance(down).startswith("The AUC falls 25% of the way") and "100th percentile" in way_to_chance(down)
    assert way_to_chance(up).startswith("The AUC does not fall (change +0.004)") and "falls" not in way_to_chance(up)
    assert way_to_chance({**up, "auc share to chance": float("nan")}).startswith("The AUC does not fall")


def test_more_random_draws_join_a_stored_test():
    """Extra draws on the same prompts join the stored ones (a size's null grows; every other row stays); a run on
    other prompts, or whose shared rows differ, is refused."""
    from iclviz.analyses.context_heads import add_draws

    rng = np.random.default_rng(6)
    base = _confirmation(rng, [0, 1], 16, [0.0, 0.0], destroys=True, n_draws=2)
    extra_rows = {"none": base.logits[:, 0], "top:1": base.logits[:, 1],
                  **{f"random:1:{d}": torch.tensor(rng.normal(0, 1, (32, 2))) for d in range(3)}}
    extra = ContextTest(torch.stack(list(extra_rows.values()), 1), list(base.gold), list(extra_rows), [(0, 0)], {},
                        {1: [[(1, d)] for d in range(3)]}, ("foo", "bar"), [0], dict(base.meta))
    merged = add_draws(base, extra)
    assert len(merged.null(1)) == 5 and merged.draws[1][2:] == extra.draws[1]
    assert torch.equal(merged.logits[:, merged._col("random:1:4")], extra.logits[:, extra._col("random:1:2")])
    assert torch.equal(merged.logits[:, :len(base.names)], base.logits)
    assert merged.verdict("top:1", n_resamples=100)["draws"] == 5
    shifted = ContextTest(extra.logits + 1.0, list(base.gold), list(extra_rows), [(0, 0)], {}, extra.draws,
                          ("foo", "bar"), [0], dict(base.meta))
    with pytest.raises(ValueError, match="differs"):
        add_draws(base, shifted)
    other = ContextTest(extra.logits, [1 - g for g in base.gold], list(extra_rows), [(0, 0)], {}, extra.draws,
                        ("foo", "bar"), [0], dict(base.meta))
    with pytest.raises(ValueError, match="other prompts"):
        add_draws(base, other)
