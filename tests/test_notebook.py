"""docs/tour.ipynb (issue 9, item 1): stored without outputs, and every code cell runs in order on the
default model, offline. Only identities and shapes are asserted (no effect sizes); ``-s`` prints the time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tour.ipynb"


def _notebook() -> dict:
    return json.loads(NOTEBOOK.read_text())


def _source(cell) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def test_notebook_is_stored_without_outputs():
    nb = _notebook()
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert 8 <= len(code) <= 16 and any(c["cell_type"] == "markdown" for c in nb["cells"])
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None, f"cell {i} has outputs"
            lines = _source(c).splitlines()
            assert not any(line.lstrip().startswith(("%", "!")) for line in lines), f"cell {i} uses IPython magics"
        else:
            assert "outputs" not in c and "execution_count" not in c


@pytest.fixture(scope="module")
def ns():
    """The notebook's namespace after running every code cell in order."""
    namespace: dict = {"__name__": "tour"}
    start = time.perf_counter()
    for i, c in enumerate(_notebook()["cells"]):
        if c["cell_type"] == "code":
            exec(compile(_source(c), f"tour.ipynb cell {i}", "exec"), namespace)  # noqa: S102 - our own notebook
    print(f"\ntour.ipynb ran in {time.perf_counter() - start:.1f} s")
    return namespace


def close(a, b, tol=1e-4):
    assert abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b))), (a, b)


def test_prediction_and_heads(ns):
    p, pred, words, heads = ns["p"], ns["pred"], ns["words"], ns["heads"]
    assert tuple(pred.probs) == words and sum(pred.probs.values()) == pytest.approx(1)
    close(pred.margin, pred.logits["foo"] - pred.logits["bar"])
    assert heads and all(ns["lm"].n_layers // 2 <= layer < ns["lm"].n_layers for layer, _ in heads)
    attention = ns["attention"]
    assert list(attention.index) == [f"L{a}H{b}" for a, b in heads]
    assert attention.shape == (len(heads), len(p.label_positions) + 1)
    assert ((attention >= 0) & (attention <= 1 + 1e-6)).all().all()


def test_knockout_reaches_the_model(ns):
    pred, ko, ko_random, heads, rnd = ns["pred"], ns["ko"], ns["ko_random"], ns["heads"], ns["rnd"]
    assert ko.margin != pred.margin and ko_random.margin != pred.margin
    assert not set(rnd) & set(heads) and sorted({a for a, _ in rnd}) <= sorted({a for a, _ in heads})
    # the knocked-out heads put no attention from T on any label position
    attn = ko.capture.attention_at(0, ns["p"].label_positions)
    assert all(float(attn[a, b].abs().sum()) == 0 for a, b in heads)
    assert list(ns["knocked"]["margin"]) == [pred.margin, ko.margin, ko_random.margin]


def test_importance_covers_the_deep_half(ns):
    lm, importance = ns["lm"], ns["importance"]
    assert len(importance) == (lm.n_layers - lm.n_layers // 2) * lm.n_heads
    assert importance["importance"].notna().all() and importance["importance"].is_monotonic_decreasing


def test_evaluation_is_paired(ns):
    results = ns["results"]
    keys = [r.rows[["seed", "index", "gold"]].reset_index(drop=True) for r in results.values()]
    assert all(k.equals(keys[0]) for k in keys) and len(keys[0]) == ns["sample"].n_test
    assert list(results) == ["none", "knockout in-context heads", "knockout random heads"]


def test_value_vectors_table(ns):
    vectors, p, heads = ns["vectors"], ns["p"], ns["heads"]
    assert len(vectors) == len(heads) * len(p.label_positions)
    assert list(vectors["label"][: len(p.demo_labels)]) == p.demo_labels
    # the table's attention is the prompt's attention from T (same prompt, same model)
    attn = ns["pred"].capture.attention_at(0, p.label_positions)
    for r in vectors.itertuples():
        close(r.attention, attn[r.layer, r.head, r.demo - 1], 1e-5)


def test_label_swap_and_towers(ns):
    ab, towers, pred, heads = ns["ab"], ns["towers"], ns["pred"], ns["heads"]
    assert len(ab.head_table) == 2 * len(heads)
    assert ab.labels["prob_a"].sum() == pytest.approx(1) and ab.labels["prob_b"].sum() == pytest.approx(1)
    close(ab.labels["prob_a"][0], pred.probs["foo"], 1e-4)  # prompt A is the notebook's prompt
    s = towers.summary.set_index("condition")
    assert list(s.index) == ["none", "q+k", "v", "all", "donor (B)"]
    close(s.loc["none", "margin"], pred.margin)  # nothing patched: A's plain run
    close(s.loc["donor (B)", "prob_foo"], ab.labels["prob_b"][0])  # B's own run
    # patched values move no attention in the first patched layer (later layers see a changed residual)
    first = min(layer for layer, _ in heads)
    per_head = towers.per_head.set_index(["condition", "head"])
    for layer, head in heads:
        if layer == first:
            for w in ns["words"]:
                close(per_head.loc[("v", f"L{layer}H{head}"), f"attn_{w}"],
                      per_head.loc[("none", f"L{layer}H{head}"), f"attn_{w}"], 1e-5)


def test_contributions_add_up(ns):
    c, pred = ns["contrib"], ns["pred"]
    close(c.prediction_margin, pred.margin)
    close(c.baseline_margin + c.table["contribution"].sum(), c.prediction_margin, 1e-5)
    assert len(c.table) == len(ns["p"].label_positions)
