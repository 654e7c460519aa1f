"""The causal scan and the null distribution: batched rows equal the same interventions run alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iclviz.analyses.causal import causal_scan, label_specific, null_distribution, outcomes
from iclviz.analyses.evaluation import EvalSetup
from iclviz.data import load_dataset
from iclviz.engine.interventions import NONE, ablate, knockout
from iclviz.engine.runs import RowEdit, full_ablation_logits, last_position_logits
from iclviz.prompt import build_prompt
from iclviz.stats import empirical_p, mcnemar_exact, paired_bootstrap, proportion_ci

TOL = dict(rtol=1e-4, atol=1e-4)


def _prompts(lm, n=3):
    demos = [("a wonderful film", "foo"), ("dull and boring", "bar"), ("I loved every minute", "foo"),
             ("a waste of time", "bar")]
    queries = ["great acting", "terrible plot and bad jokes", "fine"][:n]
    return [build_prompt(lm.tokenizer, demos, q, ("foo", "bar")) for q in queries]


def test_scan_rows_equal_each_intervention_run_alone(tiny):
    """A single-head knockout (or output removal in the last layer) as a row of the batched scan
    equals the same intervention in its own full pass, for every architecture."""
    prompts = _prompts(tiny)
    L, H = tiny.n_layers, tiny.n_heads
    heads = [(0, 1), (L - 1, 0), (L - 1, H - 1)]
    rows = [RowEdit()] + [RowEdit.of("knockout", [h]) for h in heads] + [RowEdit.of("ablate_t", [(L - 1, 2)]),
                                                                        RowEdit.of("knockout", heads)]
    # chunks smaller than the rows, and one bucket per first layer: the layers below run once for a bucket
    batched = last_position_logits(tiny, prompts, rows, chunk=2, bucket_rows=1)
    torch.testing.assert_close(last_position_logits(tiny, prompts, rows), batched, **TOL)
    ids = prompts[0].label_token_id_list()
    for i, p in enumerate(prompts):
        alone = [tiny.run([p], NONE, capture=False).logits[0, ids]]
        alone += [tiny.run([p], knockout([p.label_positions], heads=[h]), capture=False).logits[0, ids] for h in heads]
        # in the last layer, removing a head's output at T is the same as removing it everywhere
        alone += [tiny.run([p], ablate([(L - 1, 2)]), capture=False).logits[0, ids]]
        alone += [tiny.run([p], knockout([p.label_positions], heads=heads), capture=False).logits[0, ids]]
        torch.testing.assert_close(batched[i], torch.stack(alone), **TOL)
    # the knockouts change something (the test could fail)
    assert not torch.allclose(batched[:, 0], batched[:, -1], atol=1e-4)


def test_rows_are_bucketed_by_their_first_layer():
    from iclviz.engine.runs import rows_by_first_layer

    rows = [RowEdit()] + [RowEdit.of("knockout", [(layer, 0)]) for layer in (5, 5, 3, 1, 1, 1)]
    assert rows_by_first_layer(rows, 6, 1) == [(1, [4, 5, 6]), (3, [3]), (5, [0, 1, 2])]
    assert rows_by_first_layer(rows, 6, 4) == [(1, [0, 1, 2, 3, 4, 5, 6])]
    assert rows_by_first_layer(rows, 6, 3) == [(1, [3, 4, 5, 6]), (5, [0, 1, 2])]


def test_full_ablation_rows_equal_ablation_alone(tiny):
    prompts = _prompts(tiny)
    sets = [[], [(0, 0)], [(1, 1), (0, 2)]]
    batched = full_ablation_logits(tiny, prompts, sets, chunk=2)
    ids = prompts[0].label_token_id_list()
    for i, p in enumerate(prompts):
        alone = torch.stack([tiny.run([p], ablate(s), capture=False).logits[0, ids] for s in sets])
        torch.testing.assert_close(batched[i], alone, **TOL)
    assert not torch.allclose(batched[:, 0], batched[:, 1], atol=1e-4)


@pytest.fixture(scope="module")
def setup():
    return EvalSetup(load_dataset("sst2"), k_per_label=2, n_test=6, seeds=(0,))


def test_causal_scan_table_matches_its_rows(tiny_llama, setup):
    lm = tiny_llama
    scan = causal_scan(lm, setup, layers=[1, 2], kinds=("knockout", "ablate_t"), full_ablation_heads=[(2, 1)])
    assert set(scan.table.kind) == {"knockout", "ablate_t", "ablate"}
    assert len(scan.table[scan.table.kind == "knockout"]) == 2 * lm.n_heads
    # the table's effect for one head is the mean margin drop of that head's knockout run alone
    prompts, gold = setup.prompts(lm, 0)
    h = (2, 3)
    ids = prompts[0].label_token_id_list()
    base = torch.stack([lm.run([p], NONE, capture=False).logits[0, ids] for p in prompts])
    ko = torch.stack([lm.run([p], knockout([p.label_positions], heads=[h]), capture=False).logits[0, ids]
                      for p in prompts])
    o = outcomes(torch.stack([base, ko], 1), gold)
    want = float((o["margin"][:, 0] - o["margin"][:, 1]).mean())
    row = scan.table[(scan.table.kind == "knockout") & (scan.table.layer == 2) & (scan.table["head"] == 3)].iloc[0]
    assert row.effect == pytest.approx(want, abs=1e-4)
    # in the last layer, full ablation and output removal at T agree
    fa = scan.table[(scan.table.kind == "ablate") & (scan.table.layer == 2) & (scan.table["head"] == 1)].iloc[0]
    at = scan.table[(scan.table.kind == "ablate_t") & (scan.table.layer == 2) & (scan.table["head"] == 1)].iloc[0]
    assert fa.effect == pytest.approx(at.effect, abs=1e-4)
    # per-label effects average to the overall effect with the label counts as weights
    g = np.asarray(gold)
    w = [(g == k).mean() for k in range(2)]
    assert row.effect == pytest.approx(w[0] * row.effect_foo + w[1] * row.effect_bar, abs=1e-5)
    assert scan.top(3)[0] in {(int(a), int(b)) for a, b in zip(scan.table.layer, scan.table["head"])}


def test_null_distribution_draws_and_percentile(tiny_llama, setup):
    lm = tiny_llama
    heads = [(2, 0), (2, 1)]
    nt = null_distribution(lm, setup, heads, kind="knockout", n_draws=12, seed=3)
    summary = nt.summary
    assert (summary.condition == "random").sum() == 12
    rnd = summary[summary.condition == "random"]
    # every draw: as many heads, from the heads' layers, never the heads themselves
    for hs in rnd.head_set:
        names = hs.split()
        assert len(names) == 2 and all(n.startswith("L2H") for n in names)
        assert not set(names) & {"L2H0", "L2H1"}
    # row 0 is the plain model: its drop is zero
    assert summary.iloc[0].margin_drop == pytest.approx(0.0, abs=1e-9)
    v = nt.verdict
    assert v["draws"] == 12
    assert v["p_empirical"] == pytest.approx(empirical_p(v["margin_drop"], rnd.margin_drop)["p"])
    # the in-context row equals the same knockout run alone over the prompts
    prompts, gold = setup.prompts(lm, 0)
    ids = prompts[0].label_token_id_list()
    ko = torch.stack([lm.run([p], knockout([p.label_positions], heads=heads), capture=False).logits[0, ids]
                      for p in prompts])
    acc = float((ko.argmax(-1) == torch.tensor(gold)).float().mean())
    assert summary.iloc[1].accuracy == pytest.approx(acc)


def test_label_specific_picks_the_gold_labels_heads(tiny_llama, setup):
    lm = tiny_llama
    nt = label_specific(lm, setup, {"foo": [(2, 0)], "bar": [(1, 3)]}, n_draws=5)
    prompts, gold = setup.prompts(lm, 0)
    ids = prompts[0].label_token_id_list()
    want = []
    for p, g in zip(prompts, gold):
        hs = [(2, 0)] if g == 0 else [(1, 3)]
        want.append(lm.run([p], knockout([p.label_positions], heads=hs), capture=False).logits[0, ids])
    want = torch.stack(want)
    o = outcomes(want[:, None], gold)
    assert nt.summary.iloc[1].margin == pytest.approx(float(o["margin"][:, 0].mean()), abs=1e-4)


def test_statistics_match_scipy_and_hand_counts():
    lo, hi = proportion_ci(7, 10)
    assert lo < 0.7 < hi and 0.39 < lo < 0.40  # Wilson: 0.397 .. 0.892
    a = [True, True, False, True, False, True]
    b = [False, True, False, False, True, True]
    m = mcnemar_exact(a, b)
    assert (m["a_only"], m["b_only"], m["discordant"]) == (2, 1, 3)
    assert m["p"] == pytest.approx(1.0)
    assert mcnemar_exact([True] * 12, [False] * 12)["p"] == pytest.approx(2 * 0.5 ** 12)
    mean, lo, hi = paired_bootstrap(np.arange(20.0))
    assert mean == pytest.approx(9.5) and lo < 9.5 < hi
    e = empirical_p(5.0, [1, 2, 3, 6])
    assert e["p"] == pytest.approx(2 / 5) and e["percentile"] == pytest.approx(75.0)


def test_one_batched_causal_test_equals_the_separate_tests(tiny_llama, setup, tmp_path):
    from iclviz.analyses.causal import CausalTest, causal_test

    lm = tiny_llama
    heads = [(2, 0), (2, 1)]
    ct = causal_test(lm, setup, {"located": heads}, layers=[2], n_draws=2, seed=3,
                     label_heads={"foo": [(2, 0)], "bar": [(1, 3)]}, ls_draws=2)
    alone = null_distribution(lm, setup, heads, kind="knockout", n_draws=2, seed=3, layers=[2])
    got = ct.null("located", "knockout")
    np.testing.assert_allclose(got.summary[["accuracy", "margin", "margin_drop"]].to_numpy(),
                               alone.summary[["accuracy", "margin", "margin_drop"]].to_numpy(), atol=1e-4)
    assert got.summary.head_set.tolist() == alone.summary.head_set.tolist()
    # output removal at T of the same set, paired against the same base row
    assert ct.null("located", "ablate_t").summary.iloc[0].margin == pytest.approx(got.summary.iloc[0].margin)
    ls = label_specific(lm, setup, {"foo": [(2, 0)], "bar": [(1, 3)]}, n_draws=1)
    assert ct.label_specific().summary.iloc[1].margin == pytest.approx(ls.summary.iloc[1].margin, abs=1e-4)
    ct.save(tmp_path / "t.pt")
    again = CausalTest.load(tmp_path / "t.pt")
    assert again.names == ct.names and torch.equal(again.logits, ct.logits)


def test_located_heads_answer_to_the_offline_models_cli_names_as_to_their_labels():
    from iclviz.analyses.heads import located_heads
    from iclviz.engine.offline import QWEN_05B

    by_label = located_heads(QWEN_05B.label, rule="causal")
    assert by_label is not None and by_label["heads"]
    assert located_heads("default", rule="causal") == by_label
    assert located_heads("no-such-model", rule="causal") is None


def test_heads_located_on_other_datasets_come_with_their_own_verdicts(tmp_path):
    import json

    from iclviz.analyses.heads import located_on_other_datasets, record_located_heads

    path = tmp_path / "located.json"
    entry = {"heads": [[16, 3]], "n_prompts": 32, "seed": 100,
             "verdict": "not reproduced on discrimination: a prior shift (the mean margin moves); AUC 0.989 -> 0.989"}
    record_located_heads("default", "sst2", {"context": dict(entry, heads=[[16, 12]])}, path)
    record_located_heads("default", "trec:3,4", {"context": entry}, path)
    record_located_heads("default", "zz", {"context": dict(entry, verdict_all_fresh="reproduced on discrimination: "
                                                       "the model tells the classes apart less well", n_all_fresh=256)},
                         path)
    record_located_heads("default", "amazon_polarity", {"importance": entry}, path)  # another rule only
    others = located_on_other_datasets("default", "context", path=path)
    assert [(o["dataset"], o["heads"]) for o in others] == [("trec:3,4", [(16, 3)]), ("zz", [(16, 3)])]
    assert others[0]["verdict_short"] == "not reproduced on discrimination"
    assert others[1]["verdict_short"] == "reproduced on discrimination, 256 prompts"  # all fresh prompts first
    assert located_on_other_datasets("no-such-model", "context", path=path) == []
    assert json.loads(path.read_text())["Qwen2.5-Coder-0.5B-Instruct"]["sst2"]["context"]["heads"] == [[16, 12]]
