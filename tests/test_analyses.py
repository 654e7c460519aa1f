"""The analyses on tiny random models: identities, invariants and controls."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from iclviz.analyses import bias, label_swap, label_vectors, locate, two_towers
from iclviz.analyses.evaluation import EvalSetup, evaluate, predict
from iclviz.analyses.heads import head_importance
from iclviz.data import load_dataset
from iclviz.engine.interventions import Plan, majority_factors
from iclviz.engine.lens import project
from iclviz.errors import Cancelled

DEMOS = [("a wonderful film", "foo"), ("dull and boring", "bar"), ("what a great story", "foo"),
         ("I hated every minute", "bar")]


@pytest.fixture(scope="module")
def sst2():
    return load_dataset("sst2")


@pytest.fixture(scope="module")
def setup(sst2):
    return EvalSetup(sst2, k_per_label=2, n_test=6, seeds=(0, 1))


def test_head_importance_is_the_log_probability_increase(tiny_llama, tiny_gpt2):
    for lm in (tiny_llama, tiny_gpt2):
        pred = predict(lm, DEMOS, "I loved it")
        cap = pred.capture
        ids = pred.prompt.label_token_id_list()
        imp = head_importance(lm.arch, cap, ids, scaling="final_norm")
        for layer in range(lm.n_layers):
            for head in range(lm.n_heads):
                r = cap.resid_in[0, layer]
                with torch.no_grad():
                    lp0 = torch.log_softmax(lm.arch.unembed(lm.arch.final_norm(r)), -1)[ids]
                    lp1 = torch.log_softmax(lm.arch.unembed(lm.arch.final_norm(r + cap.head_out[0, layer, head])),
                                            -1)[ids]
                torch.testing.assert_close(imp[0, layer, head], lp1 - lp0, rtol=1e-4, atol=1e-5)


def test_final_scale_lens_of_the_final_residual_is_the_logits(tiny_llama):
    pred = predict(tiny_llama, DEMOS, "I loved it")
    cap = pred.capture
    logits = project(tiny_llama.arch, cap.resid_final, cap.resid_final, "final_scale")
    res = tiny_llama.run([pred.prompt], capture=False)
    torch.testing.assert_close(logits, res.logits, rtol=1e-5, atol=1e-4)


def test_evaluate_does_not_depend_on_batching(tiny_llama, setup):
    a = evaluate(tiny_llama, setup, batch_size=1)
    b = evaluate(tiny_llama, setup, batch_size=4)
    assert a.n == b.n == 12
    assert (a.rows["pred"] == b.rows["pred"]).all()
    assert torch.allclose(torch.tensor(a.rows["margin"].values), torch.tensor(b.rows["margin"].values), atol=1e-4)
    lo, hi = a.interval()
    assert 0 <= lo <= a.accuracy <= hi <= 1


def test_evaluate_can_stop_and_resume(tiny_llama, setup, tmp_path):
    ck = tmp_path / "ck.jsonl"
    full = evaluate(tiny_llama, setup, batch_size=2)
    with pytest.raises(Cancelled):
        evaluate(tiny_llama, setup, batch_size=2, checkpoint=ck, progress=lambda done, total, note: done < 4)
    assert len(ck.read_text().splitlines()) == 1 + 4  # the run's header line, then the finished rows
    resumed = evaluate(tiny_llama, setup, batch_size=2, checkpoint=ck)
    assert resumed.rows[["seed", "index", "pred"]].equals(full.rows[["seed", "index", "pred"]])
    assert len(ck.read_text().splitlines()) == 1 + 12


def test_locate_and_top_heads(tiny_llama, setup):
    scan = locate.locate_heads(tiny_llama, setup, layers=[1, 2], batch_size=4)
    assert scan.n_prompts == 12
    m = scan.matrix()
    assert m.shape == (tiny_llama.n_layers, tiny_llama.n_heads)
    assert m.loc[0].isna().all() and m.loc[1].notna().all()
    top = scan.top(3)
    assert len(top) == 3 and all(layer in (1, 2) for layer, _ in top)
    by_label = scan.top_by_label(3)
    assert sorted(h for hs in by_label.values() for h in hs) == sorted(top)


def test_intervention_table_has_controls_from_the_same_layers(tiny_llama, setup):
    heads = [(2, 0), (2, 3)]
    df = locate.intervention_table(tiny_llama, setup, heads, kinds=("ablate", "knockout"), random_draws=2)
    assert len(df) == 1 + 2 * (1 + 2)
    rnd = df[df["heads"] == "random heads"]
    for hs in rnd["head_set"]:
        parsed = [tuple(int(x) for x in h[1:].split("H")) for h in hs.split()]
        assert len(parsed) == 2 and all(layer == 2 for layer, _ in parsed)
        assert not set(parsed) & set(heads)
    summ = locate.summarize_interventions(df)
    assert set(summ["heads"]) == {"none", "in-context heads", "random heads"}


def test_knocking_out_label_positions_zeroes_label_vector_mass(tiny):
    heads = [(1, 0), (2, 1)]
    pred = predict(tiny, DEMOS, "I loved it", capture=False)
    # final_norm: the projection of a label position's vector does not involve T's residual
    table = label_vectors.label_vector_table(tiny, pred.prompt, heads, scaling="final_norm")
    assert (table["attention"] > 0).all()
    ko = label_vectors.label_vector_table(tiny, pred.prompt, heads, scaling="final_norm",
                                          interventions=Plan("knockout", tuple(heads)).build([pred.prompt]))
    assert (ko["attention"] == 0).all()
    ko_linear = label_vectors.label_vector_table(tiny, pred.prompt, heads, scaling="final_scale",
                                                 interventions=Plan("knockout", tuple(heads)).build([pred.prompt]))
    assert (ko_linear["weighted_logit_minus"] == 0).all()  # the final_scale lens is linear: no mass, no logits
    # the unweighted value-output vectors at earlier positions do not depend on the attention from T
    torch.testing.assert_close(torch.tensor(ko["logit_minus"].values), torch.tensor(table["logit_minus"].values))
    assert (table["own_label_rank"] >= 1).all()


def test_majority_fix_is_identity_when_balanced_and_acts_when_not(tiny_llama):
    heads = ((1, 0), (2, 1))
    balanced = predict(tiny_llama, DEMOS, "I loved it", capture=False)
    fixed = predict(tiny_llama, DEMOS, "I loved it", interventions=Plan("majority_fix", heads), capture=False)
    assert balanced.logits == pytest.approx(fixed.logits, abs=1e-5)
    unbalanced = DEMOS + [("superb", "foo")]
    a = predict(tiny_llama, unbalanced, "I loved it", capture=False)
    b = predict(tiny_llama, unbalanced, "I loved it", interventions=Plan("majority_fix", heads), capture=False)
    assert abs(a.margin - b.margin) > 1e-5
    f = majority_factors(a.prompt)
    per_label = {w: sum(f[p] for p in a.prompt.positions_of(w)) for w in ("foo", "bar")}
    assert per_label["foo"] == pytest.approx(per_label["bar"])  # each label gets the same total weight


def test_majority_bias_reports_controls(tiny_llama, sst2):
    res = bias.majority_bias(tiny_llama, EvalSetup(sst2, k_per_label=2, n_test=4), [(2, 0), (2, 1)])
    assert list(res.summary["condition"]) == ["no fix", "fix in-context heads", "fix random heads"]
    assert set(res.rows["arrangement"]) == {"balanced", "one fewer foo", "one fewer bar"}
    # the fix does nothing to balanced prompts
    bal = res.rows[res.rows.arrangement == "balanced"].set_index("condition")["accuracy"]
    assert bal["no fix"] == bal["fix in-context heads"] == bal["fix random heads"]


def test_recency_bias_orders_and_absolute_position_note(tiny_llama, tiny_gpt2, sst2):
    setup = EvalSetup(sst2, k_per_label=2, n_test=4)
    res = bias.recency_bias(tiny_llama, setup, [(2, 0)], n_random_orders=1)
    assert res.rows["order"].nunique() == 3 and not res.notes
    res2 = bias.recency_bias(tiny_gpt2, setup, [(2, 0)], n_random_orders=1)
    assert res2.notes and set(res2.rows["condition"]) == {"no fix"}


def test_label_swap_table(tiny_llama, sst2):
    setup = EvalSetup(sst2, k_per_label=2, n_test=4)
    t = label_swap.label_swap_table(tiny_llama, setup, [(2, 0), (1, 1)])
    assert set(t["condition"]) == {"original", "swapped"} and len(t) == 2 * 4 * 2
    assert ((t["attn_foo"] >= 0) & (t["attn_foo"] + t["attn_bar"] <= 1 + 1e-6)).all()
    s = label_swap.summarize_label_swap(t)
    assert len(s) == 4
    one = label_swap.label_swap_one(tiny_llama, DEMOS, "I loved it", ("foo", "bar"), "review", [(2, 0)])
    o, w = one.set_index("condition").loc["original"], one.set_index("condition").loc["swapped"]
    # the swapped prompt's foo positions are the original's bar positions: same sentences, same count here
    assert o["attn_foo"] + o["attn_bar"] == pytest.approx(w["attn_foo"] + w["attn_bar"], abs=0.2)


def test_similarity_of_identical_sentences_is_one(tokenizer):
    from iclviz.engine.models import wrap_model
    from iclviz.prompt import build_prompt
    from iclviz.testing import build_tiny_model

    lm = wrap_model(build_tiny_model("llama", seed=5), tokenizer)
    p = build_prompt(lm.tokenizer, DEMOS, "dull and boring")
    res = lm.run([p], hidden_layer=0)
    sim = two_towers.sentence_similarity(res.capture.hidden[0], p, 0)
    assert sim[1] == pytest.approx(1.0, abs=1e-5)  # layer 0: embeddings only, no positions in a rotary model
    assert (sim[[0, 2, 3]] < 0.999).all()
    df = two_towers.score_similarity(lm, p, [(1, 0), (2, 2)])
    assert len(df) == 2 * 4
    rc = two_towers.rank_correlations(two_towers.two_towers_table(
        lm, EvalSetup(load_dataset("sst2"), k_per_label=2, n_test=4), [(1, 0)], control_heads=[(1, 1)]))
    assert set(rc["group"]) == {"in-context", "random"} and rc["mean_rho"].between(-1, 1).all()


def test_bias_intervals_are_paired_over_prompts_and_agree_with_the_summary(tiny_llama, sst2):
    """The intervals' point estimates are the summary's biases (computed another way, from accuracies per
    arrangement); each interval holds its estimate; a fix that changes no prediction has a drop of exactly
    zero in every resample, which only a paired resample gives."""
    res = bias.majority_bias(tiny_llama, EvalSetup(sst2, k_per_label=2, n_test=6), [(2, 0), (2, 1)])
    iv = res.intervals(n_resamples=200).set_index("condition")
    summ = res.summary.set_index("condition")
    for cond in summ.index:
        assert iv.loc[cond, "bias"] == pytest.approx(summ.loc[cond, "bias"], abs=1e-12)
        assert iv.loc[cond, "bias_low"] <= iv.loc[cond, "bias"] + 1e-12 <= iv.loc[cond, "bias_high"] + 2e-12
    assert iv.attrs["prompts"] == res.prompts.groupby(["seed", "index"]).ngroups == int(res.rows.n.iloc[0])
    # the same outcomes under another name: a "fix" that changed nothing
    same = res.prompts[res.prompts.condition == "no fix"].assign(condition="fix in-context heads")
    none = bias.bias_intervals("majority", pd.concat([res.prompts[res.prompts.condition == "no fix"], same]),
                               n_resamples=200).set_index("condition")
    assert none.loc["fix in-context heads", ["drop", "drop_low", "drop_high"]].tolist() == [0.0, 0.0, 0.0]


def test_recency_bias_interval_is_the_spread_over_orders(tiny_llama, sst2):
    res = bias.recency_bias(tiny_llama, EvalSetup(sst2, k_per_label=2, n_test=4), [(2, 0)], n_random_orders=1)
    iv = res.intervals(n_resamples=200).set_index("condition")
    for cond, b in res.summary.set_index("condition")["bias"].items():
        assert iv.loc[cond, "bias"] == pytest.approx(b, abs=1e-12)
    assert "beyond_random" in iv.columns and iv.loc["fix in-context heads", "beyond_random"] == pytest.approx(
        res.summary.set_index("condition").loc["fix random heads", "bias"] - iv.loc["fix in-context heads", "bias"])
