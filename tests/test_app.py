"""AppTest checks of every page on a tiny random model (ICLVIZ_TEST_MODEL=tiny-llama).

They check behaviour: the numbers shown change when the widgets change, and bad input gives
a message, never an exception.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["ICLVIZ_TEST_MODEL"] = "tiny-llama"

from streamlit.testing.v1 import AppTest  # noqa: E402

from iclviz.sharing import LabState, state_from_json, state_from_query_param  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def new_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def predictions(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("`Prediction:")]


def errors(at) -> str:
    return " | ".join(e.value for e in at.error)


def goto(at, page: str) -> AppTest:
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture()
def at():
    return new_app()


def test_prompt_lab_renders_prediction_tokens_and_attention(at):
    assert len(predictions(at)) == 1
    assert "p(foo)=" in predictions(at)[0] and "p(bar)=" in predictions(at)[0]
    assert "T=" in " ".join(m.value for m in at.markdown)  # the last position is marked
    assert not any(m.value.startswith("All chosen heads:") for m in at.markdown)  # the full chart on request
    at.toggle(key="w_full_chart").set_value(True).run()
    assert any(m.value.startswith("All chosen heads:") for m in at.markdown)
    assert not at.error


def test_query_and_demonstration_edits_change_the_prediction(at):
    first = predictions(at)[0]
    at.text_input(key="w_query").set_value("a tedious, dull and far too long film").run()
    second = predictions(at)[0]
    assert second != first
    demo_key = [t.key for t in at.text_area if t.key and t.key.startswith("dt_")][0]
    at.text_area(key=demo_key).set_value("the worst film ever made").run()
    assert predictions(at)[0] != second


def test_ablation_modes_change_the_after_numbers(at):
    before = predictions(at)[0]
    at.selectbox(key="w_kind").set_value("ablate").run()  # (on a tiny random model a knockout moves little)
    at.radio(key="w_mode").set_value("all in-context heads").run()
    both = predictions(at)
    assert len(both) == 2 and both[0] == before and both[1] != before
    at.radio(key="w_mode").set_value("random heads (control)").run()
    control = predictions(at)
    assert control[1] not in (both[1], before)
    at.radio(key="w_mode").set_value("ticked heads").run()
    assert len(predictions(at)) == 1  # nothing ticked yet: no "after"
    tick = [c for c in at.checkbox if c.key and c.key.startswith("w_tick_")][0]
    tick.check().run()
    assert len(predictions(at)) == 2 and predictions(at)[1] != before
    at.selectbox(key="w_kind").set_value("knockout").run()
    assert len(predictions(at)) == 2


def test_sessions_do_not_share_ablations():
    a, b = new_app(), new_app()
    a.radio(key="w_mode").set_value("all in-context heads").run()
    b.text_input(key="w_query").set_value("boring").run()
    b.run()
    assert len(predictions(a)) == 2 and len(predictions(b)) == 1
    assert a.session_state["query"] != b.session_state["query"]


def test_demonstration_editor_add_move_delete(at):
    n = len(at.session_state["demos"])
    shown = predictions(at)
    at.button(key="w_add_demo").click().run()
    assert len(at.session_state["demos"]) == n + 1
    # The new, empty row is skipped (and said so): the prediction stays on screen, unchanged.
    assert not at.error and predictions(at) == shown
    assert any(f"demonstration(s) {n + 1} are skipped" in c.value for c in at.caption)
    last = at.session_state["demos"][-1]["id"]
    at.text_area(key=f"dt_{last}").set_value("an utterly charming surprise").run()
    assert not at.error
    texts = [d["text"] for d in at.session_state["demos"]]
    at.button(key=f"up_{last}").click().run()
    moved = [d["text"] for d in at.session_state["demos"]]
    assert moved[-2] == texts[-1] and moved[-1] == texts[-2]
    at.button(key=f"del_{last}").click().run()
    assert len(at.session_state["demos"]) == n
    at.button(key="w_reverse").click().run()
    assert [d["text"] for d in at.session_state["demos"]] == list(reversed(texts[:-1]))


def test_sample_from_dataset_replaces_the_prompt(at):
    first = predictions(at)[0]
    at.number_input(key="w_lab_k").set_value(3).run()
    at.button(key="w_sample").click().run()
    assert len(at.session_state["demos"]) == 6
    assert predictions(at)[0] != first


@pytest.mark.parametrize("words, message", [
    ("foo, foo", "must differ"),
    ("foo, xylophonequartzbanana", "single token"),
    ("foo", "at least two"),
])
def test_bad_label_words_give_a_message(at, words, message):
    at.text_input(key="w_label_words").set_value(words).run()
    assert not at.exception
    assert message in errors(at)
    assert not predictions(at)


def test_an_invalid_label_word_leaves_the_demonstrations_labels_alone(at):
    """Type one label word (invalid), then the two words again, then edit the query: before, every
    demonstration had become the first word."""
    labels = [d["label"] for d in at.session_state["demos"]]
    assert set(labels) == {"foo", "bar"}
    for words in ("good", "foo, bar"):
        at.text_input(key="w_label_words").set_value(words).run()
        assert not at.exception
        assert [d["label"] for d in at.session_state["demos"]] == labels
    at.text_input(key="w_query").set_value("a fine film").run()
    assert [d["label"] for d in at.session_state["demos"]] == labels
    assert not errors(at)
    at.text_input(key="w_label_words").set_value("good, bad").run()  # valid words relabel, in order
    assert [d["label"] for d in at.session_state["demos"]] == [{"foo": "good", "bar": "bad"}[w] for w in labels]


def test_empty_demonstrations_and_query_give_a_message(at):
    at.text_input(key="w_query").set_value("   ").run()
    assert "query sentence is empty" in errors(at)
    at.text_input(key="w_query").set_value("fine").run()
    for d in list(at.session_state["demos"]):
        at.button(key=f"del_{d['id']}").click().run()
    assert "add at least one demonstration" in errors(at)
    assert not at.exception


def test_bad_head_names_give_a_message(at):
    key = [t.key for t in at.text_input if t.key and t.key.startswith("w_heads_")][0]
    at.text_input(key=key).set_value("L99H0").run()
    assert "not in this model" in errors(at)
    key = [t.key for t in at.text_input if t.key and t.key.startswith("w_heads_")][0]
    at.text_input(key=key).set_value("nonsense").run()
    assert "not a head" in errors(at)
    key = [t.key for t in at.text_input if t.key and t.key.startswith("w_heads_")][0]
    at.text_input(key=key).set_value("L1H2, L0H3").run()
    assert at.session_state["heads"] == [(1, 2), (0, 3)]


def test_shared_link_round_trip_and_damaged_link():
    state = LabState(demos=[("good", "foo"), ("bad", "bar")], query="nice", heads=[(1, 1), (2, 3)])
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["s"] = state.to_query_param()
    at.run()
    assert not at.exception
    assert at.session_state["query"] == "nice" and at.session_state["heads"] == [(1, 1), (2, 3)]
    assert [d["text"] for d in at.session_state["demos"]] == ["good", "bad"]
    bad = AppTest.from_file(APP, default_timeout=120)
    bad.query_params["s"] = "bm90IGpzb24"  # base64 of "not json"
    bad.run()
    assert not bad.exception and "could not be read" in errors(bad)


def test_json_state_validation():
    good = LabState(heads=[(21, 1)]).to_json()
    assert state_from_json(good).heads == [(21, 1)]
    assert state_from_query_param(LabState().to_query_param()).query == LabState().query
    for bad, msg in [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                     (json.dumps({"demonstrations": "x"}), "must be a list"),
                     (json.dumps({"demonstrations": [{"text": 1, "label": "foo"}]}), "must be strings"),
                     (json.dumps({"demonstrations": [], "template": "../etc"}), "unknown template"),
                     (b"\xff\xfe", "not UTF-8")]:
        with pytest.raises(ValueError, match=msg):
            state_from_json(bad)


def test_model_picker_errors_are_messages(monkeypatch):
    monkeypatch.setenv("ICLVIZ_ALLOW_LOCAL", "1")  # the operator opened these sources
    monkeypatch.setenv("ICLVIZ_ALLOW_HUB", "1")
    at = new_app()
    at.radio(key="w_model_source").set_value("Local folder").run()
    at.text_input(key="w_model_dir").set_value("/no/such/folder").run()
    at.button(key="w_load_model").click().run()
    assert not at.exception
    assert "not a folder" in errors(at) and "previous model stays in use" in errors(at)
    assert predictions(at)  # the page still works with the previous model
    at.radio(key="w_model_source").set_value("Hugging Face Hub name").run()
    at.text_input(key="w_model_hub").set_value("rm -rf /; echo").run()
    at.button(key="w_load_model").click().run()
    assert "neither a Hugging Face model name" in errors(at) and predictions(at)


def test_head_finder_scan_sets_heads_and_intervention_table(at):
    goto(at, "head_finder")
    assert any("No scan yet" in i.value for i in at.info)
    at.number_input(key="w_hf_n").set_value(4)
    at.button[0].click()  # the scan form's submit button
    at.run()
    assert not at.exception and not at.error
    scan = at.session_state["scan"]
    top = scan.top(3)
    at.number_input(key="w_hf_topn").set_value(3).run()
    at.button(key="w_use_top").click().run()
    assert at.session_state["heads"] == top
    submit = [b for b in at.button if "intervention" in str(b.label).lower()][0]
    submit.click().run()
    table = at.session_state["iv_table"]
    assert {"in-context heads", "random heads", "none"} <= set(table["heads"])
    assert not at.exception


def test_label_vectors_page_numbers_follow_scaling_and_prompt(at):
    goto(at, "label_vectors")
    assert not at.error
    t1 = at.dataframe[-1].value
    assert set(t1["label"]) <= {"foo", "bar"} and len(t1) == 2 * 4  # 2 default heads x 4 label positions
    at.selectbox(key="w_lv_scaling").set_value("final_norm").run()
    t2 = at.dataframe[-1].value
    assert not t1["logit_minus"].round(6).equals(t2["logit_minus"].round(6))
    assert t1["attention"].round(6).equals(t2["attention"].round(6))


def test_two_towers_page_swap_and_similarity(at):
    goto(at, "two_towers")
    assert not at.error
    swap = at.dataframe[0].value
    assert set(swap["condition"]) == {"original", "swapped"}
    # the first screen only: the patch and the scores wait for a click (the page opens fast)
    assert not [d for d in at.dataframe if "similarity" in d.value.columns or "patched" in d.value.columns]
    at.toggle(key="w_tt_on").set_value(True).run()
    sims1 = at.dataframe[-1].value["similarity"].round(6).tolist()
    at.checkbox(key="w_tt_ctrl").check().run()
    corr = [d.value for d in at.dataframe if "group" in d.value.columns and "head" in d.value.columns][0]
    assert set(corr["group"]) == {"in-context", "random (control)"} and "sd" not in corr.columns
    assert corr.iloc[:, -1].notna().all()
    at.checkbox(key="w_tt_ctrl").uncheck().run()
    at.slider(key="w_tt_layer").set_value(2).run()
    sims2 = at.dataframe[-1].value["similarity"].round(6).tolist()
    assert sims1 != sims2
    at.button(key="w_tt_go").click().run()
    assert not at.exception and not at.error
    corr = at.session_state["tt_corr"]
    assert set(corr["group"]) <= {"in-context", "random"} and len(at.session_state["tt_swap"]) > 0


def test_bias_lab_current_prompt_and_label_ratio(at):
    goto(at, "bias_lab")
    assert not at.exception
    assert any("Demonstrations per label" in m.value for m in at.markdown)
    at.radio(key="w_bias_size").set_value("custom").run()
    at.number_input(key="w_bias_n").set_value(4).run()
    at.slider(key="w_ratio_first").set_value(1).run()
    at.button(key="w_ratio_go").click().run()
    r1 = at.session_state["ratio_table"]
    at.slider(key="w_ratio_first").set_value(5).run()
    at.button(key="w_ratio_go").click().run()
    r2 = at.session_state["ratio_table"]
    assert set(r1["condition"]) == {"no fix", "majority fix"}
    assert not r1["value"].round(6).equals(r2["value"].round(6))
    # Reorder with arrows: each click moves once (nothing re-applies itself on the next click or rerun).
    texts = [d["text"] for d in at.session_state["demos"]]
    first_id = at.session_state["demos"][0]["id"]
    at.button(key=f"bias_order_down_{first_id}").click().run()
    assert [d["text"] for d in at.session_state["demos"]] == [texts[1], texts[0], *texts[2:]]
    at.button(key=f"bias_order_down_{first_id}").click().run()
    assert [d["text"] for d in at.session_state["demos"]] == [texts[1], texts[2], texts[0], *texts[3:]]
    at.run()
    assert [d["text"] for d in at.session_state["demos"]] == [texts[1], texts[2], texts[0], *texts[3:]]
    assert not at.error


def test_bias_lab_label_ratio_reads_its_result_with_n_and_intervals(at):
    goto(at, "bias_lab")
    at.radio(key="w_bias_size").set_value("custom").run()
    at.number_input(key="w_bias_n").set_value(4).run()
    at.number_input(key="w_ratio_total").set_value(4).run()
    at.slider(key="w_ratio_first").set_value(3).run()
    at.button(key="w_ratio_go").click().run()
    t = at.session_state["ratio_table"]
    assert {"n", "ci_low", "ci_high"} <= set(t.columns) and (t["n"] == 4).all()
    md = " ".join(m.value for m in at.markdown)
    assert "of 4 test sentences (95% interval" in md
    assert "With 3 foo / 1 bar" in md and "majority bias" in md  # the reading says which way the result goes
    assert any("Only 4 test sentences" in w.value for w in at.warning)
    assert not [b for b in at.button if b.key == "ratio_stop"]  # no Stop left on screen after the run


def test_attention_page_draws_bertviz_for_chosen_layers(at):
    import re

    goto(at, "attention")
    assert not at.error
    frames = at.get("iframe")
    html1 = frames[0].proto.srcdoc
    assert "cdnjs.cloudflare.com/ajax/libs/require.js" not in html1  # works offline: d3/jQuery inlined
    assert "d3js.org" in html1 and "jQuery" in html1
    heads = at.session_state["heads"]
    layer = sorted({a for a, _ in heads})[0]
    # Real layer numbers, and the in-context heads of that layer preselected (head view).
    assert re.search(rf'"include_layers": \[{layer}\]', html1)
    assert re.search(r'"heads": \[' + ", ".join(str(b) for a, b in sorted(heads) if a == layer) + r"\]", html1)
    n_tokens = len(re.search(r'"left_text": (\[.*?\])', html1).group(1).split('", "'))
    at.checkbox(key="w_att_sink").check().run()
    assert len(re.search(r'"left_text": (\[.*?\])', at.get("iframe")[0].proto.srcdoc).group(1).split('", "')) \
        == n_tokens - 1
    at.checkbox(key="w_att_only").uncheck().run()
    html2 = at.get("iframe")[0].proto.srcdoc
    assert html2 != html1
    at.multiselect(key="w_att_layers").set_value([0, 1]).run()
    assert len(at.get("iframe")) == 2  # one view per chosen layer, each with its own heads
    at.radio(key="w_att_view").set_value("model").run()
    html4 = at.get("iframe")[1].proto.srcdoc
    assert not at.exception and re.search(r'"include_layers": \[1\]', html4)


def test_every_page_survives_a_broken_prompt(at):
    at.text_input(key="w_label_words").set_value("foo, foo").run()
    for page in ("head_finder", "label_vectors", "two_towers", "bias_lab", "attention"):
        goto(at, page)


def test_json_upload_loads_a_prompt_and_rejects_malformed_files(at):
    first = predictions(at)[0]
    up = [u for u in at.file_uploader if u.key and u.key.startswith("w_upload_")][0]
    up.set_value(("broken.json", b"{\"demonstrations\": [", "application/json")).run()
    assert not at.exception
    assert "Could not load broken.json" in errors(at) and "not valid JSON" in errors(at)
    state = LabState(demos=[("terrible", "bar"), ("lovely", "foo"), ("awful", "bar")], query="so good",
                     heads=[(2, 2)])
    up = [u for u in at.file_uploader if u.key and u.key.startswith("w_upload_")][0]
    up.set_value(("mine.json", state.to_json().encode(), "application/json")).run()
    assert not at.exception and not at.error
    assert [d["text"] for d in at.session_state["demos"]] == ["terrible", "lovely", "awful"]
    assert at.text_input(key="w_query").value == "so good"
    assert at.session_state["heads"] == [(2, 2)]
    assert predictions(at)[0] != first


def test_malformed_csv_dataset_upload_gives_a_message(at):
    goto(at, "head_finder")
    at.selectbox(key="w_hf_dataset").set_value("your own file (CSV/JSONL)").run()
    at.file_uploader(key="w_hf_dataset_upload").set_value(("data.csv", b"sentence,y\nhello,1\n", "text/csv")).run()
    assert not at.exception
    assert "needs columns 'text' and 'label'" in errors(at)
    good = b"text,label\n" + b"".join(f"sentence number {i},{i % 2}\n".encode() for i in range(40))
    at.file_uploader(key="w_hf_dataset_upload").set_value(("data.csv", good, "text/csv")).run()
    assert not at.exception and not at.error


def test_prompt_longer_than_the_context_gives_a_message(at):
    at.text_input(key="w_query").set_value(" ".join(["wonderful"] * 1100)).run()
    assert not at.exception
    assert "longer than the model's context" in errors(at)


def test_sidebar_share_puts_the_current_prompt_in_the_url(at):
    at.text_input(key="w_query").set_value("shared query").run()
    at.button(key="w_side_url").click().run()
    value = at.query_params["s"]
    value = value[0] if isinstance(value, list) else value
    state = state_from_query_param(value)
    assert state.query == "shared query"
    assert [list(h) for h in state.heads] == [list(h) for h in at.session_state["heads"]]
    goto(at, "label_vectors")  # the share button is on every page
    assert at.button(key="w_side_url") is not None


def test_bias_lab_paper_metrics_run_with_controls(at, monkeypatch):
    import iclviz.analyses.readout

    # the random tiny model is at chance, which the page would say instead (test_bias_lab_flags_chance)
    monkeypatch.setattr(iclviz.analyses.readout, "at_chance", lambda res, n: None)
    goto(at, "bias_lab")
    at.radio(key="w_bias_size").set_value("custom").run()
    at.number_input(key="w_bias_n").set_value(4).run()
    at.button(key="w_majority_go").click().run()
    assert not at.exception and not at.error
    res = at.session_state["majority_result"]
    assert {"no fix", "fix in-context heads", "fix random heads"} <= set(res.summary["condition"])
    md = " ".join(m.value for m in at.markdown)
    assert "the same in every arrangement" in md and "95% interval" in md and "permutation test" in md
    assert {"bias_low", "bias_high", "p_no_bias"} <= set(at.dataframe[0].value.columns)
    at.button(key="w_recency_go").click().run()
    assert not at.exception and not at.error
    rec = at.session_state["recency_result"]
    assert "no fix" in set(rec.summary["condition"]) and len(rec.rows) > 0


def test_head_finder_causal_scan_and_null_distribution(at):
    goto(at, "head_finder")
    at.number_input(key="w_hf_n").set_value(4).run()
    [b for b in at.button if b.label == "Run the causal scan"][0].click().run()
    assert not at.exception and not at.error
    cs = at.session_state["causal_scan"]
    lo, hi = at.slider(key="w_hf_layers").value
    assert len(cs.table) == (hi - lo + 1) * 4 and set(cs.table.kind) == {"knockout"}
    # beside the in-context heatmap, a scatter of each head's in-context part against its prior, clickable
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    scatter = [sp for sp in specs if "In-context part against prior" in sp]
    assert scatter and '"name": "head"' in scatter[0].replace('"name":"head"', '"name": "head"')
    at.number_input(key="w_cs_topn").set_value(2).run()
    at.button(key="w_use_causal").click().run()
    want = cs.top(2, by="context_effect")
    assert at.session_state["heads"] == want and at.session_state["head_rule"] == "context"
    assert cs.table.set_index(["layer", "head"]).loc[want[0], "context_effect"] == cs.table.context_effect.max()
    [b for b in at.button if b.label == "Test against random heads"][0].click().run()
    assert not at.exception and not at.error
    nt = at.session_state["null_test"]
    assert nt.heads == want and nt.verdict["draws"] == 50
    # discrimination against random heads: the numbers shown are the library's, the words follow them
    at.number_input(key="w_disc_draws").set_value(6)  # a form: applied by its submit button
    [b for b in at.button if b.label == "Test discrimination against random heads"][0].click().run()
    assert not at.exception and not at.error
    dt = at.session_state["disc_test"]
    dv = dt.verdict("top:2", n_resamples=500)
    assert dt.ranking == want and len(dt.draws[2]) == 6
    assert metrics(at)["AUC"] == f"{dv['auc before']:.3f} → {dv['auc after']:.3f}"
    assert any(m.value.startswith(f"**{dv['reading'].split(';')[0]}") for m in at.markdown)
    shown = {m.label: m.value for m in at.metric}
    assert shown["Accuracy drop: percentile among random"] == f"{nt.verdict['acc_percentile']:.0f}"
    assert any(verdict.value.startswith("**") and "random draws" in verdict.value for verdict in at.markdown)


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_prompt_lab_shows_live_paired_effect_and_top_n(at):
    from iclviz.analyses.readout import paired_effect
    from iclviz.prompt import build_prompt
    from iclviz.testing import tiny_model

    m = metrics(at)
    icl = [v for k, v in m.items() if k.startswith("Δ margin") and "in-context" in k]
    rnd = [k for k in m if k.startswith("Δ margin, random")]
    assert icl and rnd
    # The same number the library computes on the same prompt.
    lm = tiny_model("tiny-llama")
    ss = at.session_state
    prompt = build_prompt(lm.tokenizer, [(d["text"], d["label"]) for d in ss["demos"]], ss["query"],
                          tuple(ss["label_words"]), ss["template"])
    kind = at.selectbox(key="w_kind").value
    assert kind == "knockout"  # the default: the paper's intervention, rows over the cached prefix
    eff = paired_effect(lm, prompt, ss["heads"], kind, 3)
    assert icl[0] == f"{eff.icl_change:+.2f}"
    assert any(eff.sentence() == md.value for md in at.markdown)
    # The label-swap split: the two parts shown are the library's, add up to the change, and the sentence says
    # which part dominates (the words follow the numbers).
    from iclviz.analyses.readout import swap_check

    sw = swap_check(lm, [(d["text"], d["label"]) for d in ss["demos"]], ss["query"], tuple(ss["label_words"]),
                    ss["template"], ss["heads"], kind)
    assert m["In-context part"] == f"{sw.split['context']:+.2f}" and m["Prior part"] == f"{sw.split['prior']:+.2f}"
    assert abs(sw.split["context"] + sw.split["prior"] - eff.icl_change) < 1e-4
    small = max(abs(sw.split[k]) for k in ("context", "prior", "change")) < 0.05
    word = ("barely moves" if small else "mostly in-context reading"
            if abs(sw.split["context"]) >= abs(sw.split["prior"]) else "mostly a prior")
    assert any(word in md.value and "On this prompt" in md.value for md in at.markdown)
    # Top N: a slider, the curve, and where (if anywhere) the prediction gives way.
    assert not [c for c in at.checkbox if c.key and c.key.startswith("w_tick_")]  # ticks only in "ticked heads"
    at.radio(key="w_mode").set_value("top N in-context heads").run()
    assert at.slider(key="w_topn") is not None
    assert any("gives way" in c.value for c in at.caption)
    at.radio(key="w_mode").set_value("ticked heads").run()
    assert [c for c in at.checkbox if c.key and c.key.startswith("w_tick_")]


def test_ablated_heads_are_marked_attention_unchanged(at):
    at.selectbox(key="w_kind").set_value("ablate").run()
    at.radio(key="w_mode").set_value("all in-context heads").run()
    assert any("output removed, attention unchanged" in c.value for c in at.caption)
    at.selectbox(key="w_kind").set_value("knockout").run()
    assert not any("output removed, attention unchanged" in c.value for c in at.caption)


def test_shared_url_keeps_the_intervention_mode(at):
    at.radio(key="w_mode").set_value("random heads (control)").run()
    at.button(key="w_side_url").click().run()
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert params["mode"] == "random heads (control)"
    other = AppTest.from_file(APP, default_timeout=120)
    other.query_params.update(params)
    other.run()
    assert other.radio(key="w_mode").value == "random heads (control)" and len(predictions(other)) == 2


def test_guided_lesson_walks_five_steps_and_resets(at):
    from iclviz.analyses.heads import APP_HEAD_RULE, default_heads
    from iclviz.analyses.lesson import LESSON_STATE, STEPS

    at.text_input(key="w_query").set_value("a prepared query").run()
    goto(at, "lesson")
    assert not at.error
    assert at.session_state["query"] == "a prepared query"  # the lesson keeps its own prompt
    assert [d["text"] for d in at.session_state["demos"]] != [t for t, _ in LESSON_STATE.demos]
    lesson_heads = default_heads("tiny-llama", 3, 4, APP_HEAD_RULE)
    names = ", ".join(f"L{a}H{b}" for a, b in lesson_heads)
    assert any(names in c.value and APP_HEAD_RULE in c.value for c in at.caption)  # which heads, by which rule
    seen = []
    for i, step in enumerate(STEPS):
        assert any(h.value == f"{i + 1}. {step.title}" for h in at.header)
        assert any(step.explanation in m.value for m in at.markdown)
        assert at.metric  # a live result in large type
        seen.append(tuple(m.value for m in at.metric))
        if i < len(STEPS) - 1:
            at.button(key="w_lesson_next").click().run()
            assert not at.exception and not at.error
    assert len(set(seen)) == len(STEPS)  # each step shows its own result
    goto(at, "prompt_lab")
    assert at.text_input(key="w_query").value == "a prepared query"
    goto(at, "lesson")
    at.button(key="w_lesson_reset").click().run()
    assert at.session_state["lesson_step"] == 0 and at.session_state["query"] == "a prepared query"
    assert any(h.value == f"1. {STEPS[0].title}" for h in at.header)
    # Only on request: the lesson's step opens in the Prompt lab; Undo brings the prepared query back.
    at.button(key="w_lesson_next").click().run()
    at.button(key="w_lesson_next").click().run()
    at.button(key="w_lesson_open_lab").click().run()
    assert not at.exception
    goto(at, "prompt_lab")  # (AppTest reruns the page it last switched to, not the one the script switched to)
    assert at.text_input(key="w_query").value == LESSON_STATE.query
    assert at.session_state["heads"] == lesson_heads and at.radio(key="w_mode").value == "all in-context heads"
    at.button(key="w_undo").click().run()
    assert at.text_input(key="w_query").value == "a prepared query"


def test_mode_and_how_persist_across_pages_and_in_the_url(at):
    at.radio(key="w_mode").set_value("top N in-context heads").run()
    at.selectbox(key="w_kind").set_value("knockout").run()
    assert at.query_params["mode"] in ("top N in-context heads", ["top N in-context heads"])
    goto(at, "two_towers")
    assert at.query_params["mode"] in ("top N in-context heads", ["top N in-context heads"])
    goto(at, "prompt_lab")
    assert at.radio(key="w_mode").value == "top N in-context heads"
    assert at.selectbox(key="w_kind").value == "knockout"
    assert len(predictions(at)) == 2
    at.button(key="w_side_url").click().run()
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert params["mode"] == "top N in-context heads"


def test_undo_restores_the_prompt(at):
    assert at.button(key="w_undo").disabled
    at.text_input(key="w_query").set_value("first edit").run()
    at.text_input(key="w_label_words").set_value("good, bad").run()
    at.button(key="w_undo").click().run()
    assert at.text_input(key="w_label_words").value == "foo, bar"
    assert {d["label"] for d in at.session_state["demos"]} == {"foo", "bar"}
    assert at.text_input(key="w_query").value == "first edit"
    at.button(key="w_undo").click().run()
    assert at.text_input(key="w_query").value != "first edit"


# ---------------------------------------------------------------- issue 11: the views no other tool has

def _tiny_and_spec(at):
    from iclviz.analyses.compare import PromptSpec
    from iclviz.testing import tiny_model

    ss = at.session_state
    spec = PromptSpec(tuple((d["text"], d["label"]) for d in ss["demos"]), ss["query"], tuple(ss["label_words"]),
                      ss["template"])
    return tiny_model("tiny-llama"), spec, [tuple(h) for h in ss["heads"]]


def _table(at, column):
    """The one table on the page with this column."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) == 1, [list(d.value.columns) for d in at.dataframe]
    return found[0]


def test_prompt_ab_pin_flip_and_label_swap_match_the_library(at):
    import pandas as pd

    from iclviz.analyses.compare import compare_prompts, flip_label, label_swap_pair

    goto(at, "prompt_ab")
    assert any("Pin the current prompt" in i.value for i in at.info)
    at.button(key="w_ab_pin").click().run()
    assert not at.exception and not at.error
    lm, spec, heads = _tiny_and_spec(at)
    assert at.session_state["ab_a"] == spec
    same = _table(at, "head_logit_diff")  # B is a copy of A: every difference is zero
    assert (same["attention_diff"] == 0).all() and (same["head_logit_diff"] == 0).all()
    at.selectbox(key="w_ab_flip_i").set_value(0).run()
    at.button(key="w_ab_flip").click().run()
    assert not at.exception and not at.error
    want = compare_prompts(lm, spec, flip_label(spec, 0), heads)
    shown = _table(at, "head_logit_diff")
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), want.head_table, check_exact=False, rtol=1e-5)
    assert (shown["attention_diff"].abs() > 0).any()
    shown_b = [m.value for m in at.markdown if m.value.startswith("`Prediction B:")]
    assert shown_b and shown_b[0].startswith(f"`Prediction B: {want.predicted_b} — "), shown_b
    assert f"p({want.label_words_b[0]})={want.labels['prob_b'].iloc[0]:.3f}" in shown_b[0]
    assert at.session_state["ab_log"] == ["flip #1"]
    # the preset: B = A with every label swapped (label_swap_pair)
    at.button(key="w_ab_swap").click().run()
    want = compare_prompts(lm, *label_swap_pair(spec), heads)
    pd.testing.assert_frame_equal(_table(at, "prob_diff").reset_index(drop=True), want.labels,
                                  check_exact=False, rtol=1e-5)
    # under the label swap each head's contribution to the margin splits into what flips and what stays
    split = want.swap_split()
    pd.testing.assert_frame_equal(_table(at, "flips").reset_index(drop=True), split, check_exact=False, rtol=1e-5)
    assert (split["flips"] + split["stays"] - split["margin_part_a"]).abs().max() < 1e-9
    n_reads = int(split["reads"].sum())
    assert any(m.value.startswith(f"{n_reads} of the {len(split)} heads read") for m in at.markdown)
    # a bad edit is a message and keeps B
    at.text_input(key="w_ab_words").set_value("foo").run()
    at.button(key="w_ab_words_go").click().run()
    assert not at.exception and "The edit was not applied" in errors(at)
    at.button(key="w_ab_reverse").click().run()
    assert at.session_state["ab_b"].demos == tuple(reversed(label_swap_pair(spec)[1].demos))


def test_demonstrations_waterfall_matches_the_library(at):
    import pandas as pd

    from iclviz.analyses.contributions import demo_contributions

    goto(at, "contributions")
    assert not at.error
    lm, spec, heads = _tiny_and_spec(at)
    want = demo_contributions(lm, spec, heads)
    shown = _table(at, "knockout_effect")
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), want.table, check_exact=False, rtol=1e-5)
    assert abs(shown["contribution"].sum() - want.total_contribution) < 1e-5  # they add up
    m = metrics(at)
    assert m["Baseline margin (heads' label terms removed)"] == f"{want.baseline_margin:+.3f}"
    assert any(k.startswith("Prediction's margin") and v == f"{want.prediction_margin:+.3f}" for k, v in m.items())
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert fig["data"][0]["type"] == "waterfall" and len(fig["data"][0]["x"]) == len(spec.demos) + 2
    # a new prompt, new numbers
    goto(at, "prompt_lab")
    demo_key = [t.key for t in at.text_area if t.key and t.key.startswith("dt_")][0]
    at.text_area(key=demo_key).set_value("the worst film ever made").run()
    goto(at, "contributions")
    assert not _table(at, "knockout_effect")["contribution"].round(6).equals(shown["contribution"].round(6))


def test_knockout_effect_has_one_sign_on_the_prompt_lab_and_the_demonstrations_page(at):
    """The same knockout (every label position, all in-context heads): before, the Demonstrations page said
    "+1.892" where the Prompt lab said "-1.89"."""
    import re

    at.radio(key="w_mode").set_value("all in-context heads").run()
    at.selectbox(key="w_kind").set_value("knockout").run()
    lab = [m for m in at.metric if m.label.startswith("Margin after")][0]
    lab_change = float(str(lab.delta).replace("−", "-"))
    goto(at, "contributions")
    text = " ".join(m.value for m in at.markdown)
    page_change = float(re.search(r"changes the margin by ([+-][0-9.]+)", text).group(1))
    assert abs(lab_change - page_change) < 0.011, (lab_change, page_change)
    assert any("an effect is the margin after" in c.value for c in at.caption)  # the convention, stated


def test_bias_lab_flags_chance(at):
    goto(at, "bias_lab")
    at.radio(key="w_bias_size").set_value("custom").run()
    at.number_input(key="w_bias_n").set_value(4).run()
    at.button(key="w_majority_go").click().run()
    assert "the model is at chance here: no bias can be read" in " ".join(w.value for w in at.warning).lower()


def test_two_towers_patch_section_matches_the_library(at):
    import pandas as pd

    from iclviz.analyses.compare import reorder, swap_all_labels
    from iclviz.analyses.towers_patch import towers_patch

    goto(at, "two_towers")
    assert not at.error
    at.toggle(key="w_tp_on").set_value(True).run()
    lm, spec, heads = _tiny_and_spec(at)
    want = towers_patch(lm, spec, swap_all_labels(spec), heads, "labels")
    shown = _table(at, "patched")
    assert list(shown["condition"]) == ["none", "q", "k", "v", "q+k", "all", "donor (B)"]
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), want.summary, check_exact=False, rtol=1e-5)
    assert any("the values (v) carry the label" in c.value for c in at.caption)
    at.radio(key="w_tp_donor").set_value("order reversed").run()
    at.radio(key="w_tp_positions").set_value("all").run()
    assert not at.exception
    rev = reorder(spec, list(reversed(range(len(spec.demos)))))
    if not at.error:  # "all" needs prompts of equal token length
        want = towers_patch(lm, spec, rev, heads, "all")
        pd.testing.assert_frame_equal(_table(at, "patched").reset_index(drop=True), want.summary,
                                      check_exact=False, rtol=1e-5)
    else:
        assert "equal length" in errors(at)


def test_lesson_file_opens_read_only_without_a_model_and_replays(monkeypatch, tmp_path):
    import pandas as pd

    import pages.parts.sidebar
    from iclviz.analyses.compare import PromptSpec, flip_label, swap_all_labels
    from iclviz.outputs.lesson_file import make_lesson, save_lesson
    from iclviz.testing import tiny_model

    lm = tiny_model("tiny-llama")
    spec = PromptSpec((("a lovely film", "foo"), ("a dull film", "bar"), ("great fun", "foo")), "so good")
    lesson = make_lesson(lm, spec, [(2, 0), (2, 1)], prompt_b=flip_label(spec, 0), donor=swap_all_labels(spec),
                         contributions=True)
    path = save_lesson(lesson, tmp_path / "class.json")
    monkeypatch.setenv("ICLVIZ_LESSON_FILE", str(path))

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(pages.parts.sidebar, "_load", no_model)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()  # the operator's lesson opens first
    assert not at.exception and not at.error, errors(at)
    assert any("Read-only" in s.value and "class.json" in s.value for s in at.success)
    tables = lesson.tables()
    for column, name in (("head_logit_diff", "compare"), ("knockout_effect", "contributions"), ("patched", "towers")):
        pd.testing.assert_frame_equal(_table(at, column).reset_index(drop=True), tables[name], check_exact=False)
    drawn = {c.key: json.loads(c.proto.spec)["data"] for c in at.get("plotly_chart")}  # from the stored values
    steps = drawn["fig_lesson_waterfall"][0]
    assert steps["type"] == "waterfall" and len(steps["x"]) == len(tables["contributions"]) + 2
    # a damaged upload is a message
    at.file_uploader(key="w_lesson_upload").set_value(("bad.json", b'{"format": "iclviz-lesson", "version": 9}',
                                                       "application/json")).run()
    assert not at.exception and "Could not open bad.json" in errors(at) and "version" in errors(at)
    at.file_uploader(key="w_lesson_upload").set_value(("mine.json", lesson.to_json().encode(),
                                                       "application/json")).run()
    assert not at.error and any("mine.json" in s.value for s in at.success)
    monkeypatch.undo()  # the model may load now: replay recomputes on it
    at.button(key="w_lesson_replay").click().run()
    assert not at.exception and not at.error, errors(at)
    report = at.session_state["lesson_replay"][1]
    assert report.ok and any("all" in s.value and "agree" in s.value for s in at.success)
    # saving: the current prompt and heads, computed on the model
    at.checkbox(key="w_lesson_towers").check()
    at.button(key="w_lesson_save").click().run()
    assert not at.exception and not at.error, errors(at)
    saved = at.session_state["lesson_saved"]
    from iclviz.outputs.lesson_file import load_lesson

    back = load_lesson(saved)
    assert back.donor is not None and back.contributions and "towers" in back.results
    assert [tuple(h) for h in back.heads] == [tuple(h) for h in at.session_state["heads"]]


def test_attention_page_draws_a_heatmap_past_bertviz_size(at):
    import numpy as np

    from iclviz.engine.attention_matrix import BERTVIZ_MAX_TOKENS, full_attention

    at.text_input(key="w_query").set_value(" ".join(["a warm, funny and moving film"] * 15)).run()
    goto(at, "attention")
    assert not at.error, errors(at)
    lm, spec, heads = _tiny_and_spec(at)
    prompt = spec.build(lm)
    assert BERTVIZ_MAX_TOKENS < prompt.n_tokens <= 512
    assert not at.get("iframe")  # no bertviz
    assert any(f"past {BERTVIZ_MAX_TOKENS}" in i.value for i in at.info)
    layer = sorted({a for a, _ in heads})[0]
    in_layer = sorted(b for a, b in heads if a == layer)
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    want = full_attention(lm, prompt, [layer])[layer][in_layer, -1, :].numpy()
    assert np.allclose(np.array(fig["data"][0]["z"]), want, atol=1e-6)
    assert fig["data"][0]["y"] == [f"L{layer}H{b}" for b in in_layer]
    config = json.loads(at.get("plotly_chart")[0].proto.config)
    assert config["toImageButtonOptions"]["format"] == "png"
    at.checkbox(key="w_att_only_t").uncheck().run()  # every position: one n x n map per head
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    full = full_attention(lm, prompt, [layer])[layer][in_layer[0]].numpy()
    assert np.allclose(np.array(fig["data"][0]["z"]), full, atol=1e-6)
    at.checkbox(key="w_att_sink").check().run()  # the first token hidden
    assert len(json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["x"]) == prompt.n_tokens - 1
    at.radio(key="w_image_format").set_value("svg").run()  # the sidebar's choice reaches every chart
    assert json.loads(at.get("plotly_chart")[0].proto.config)["toImageButtonOptions"]["format"] == "svg"
    assert not at.exception


def test_head_finder_altair_heatmap_and_the_selected_head_panel(at):
    goto(at, "head_finder")
    at.number_input(key="w_hf_n").set_value(4)
    at.button[0].click()  # the scan form's submit button
    at.run()
    assert not at.exception and not at.error
    scan = at.session_state["scan"]
    charts = at.get("vega_lite_chart")
    assert len(charts) == 1 + len(scan.label_words)  # one altair heatmap per tab
    spec = json.loads(charts[0].proto.spec)
    assert any(p.get("name") == "head" for p in spec.get("params", []))  # clicking selects a head
    head = scan.top(1)[0]
    at.session_state["hf_focus"] = head  # what a click on that cell sets
    at.run()
    panel = [m.value for m in at.markdown if m.value.startswith(f"**Selected head L{head[0]}H{head[1]}**")]
    assert panel
    row = scan.overall[(scan.overall["layer"] == head[0]) & (scan.overall["head"] == head[1])].iloc[0]
    assert any(f"Importance (gold label) {row['importance']:.4f}, rank 1 of" in m.value for m in at.markdown)
    [b for b in at.button if b.label == "Run the causal scan"][0].click().run()
    assert not at.exception and not at.error
    cs = at.session_state["causal_scan"]
    focus = _table(at, "kind")  # the panel follows: the causal scan's rows for that head
    want = cs.table[(cs.table["layer"] == head[0]) & (cs.table["head"] == head[1])]
    assert focus["label_effect"].round(6).tolist() == want["label_effect"].round(6).tolist()
    assert focus["context_effect"].round(6).tolist() == want["context_effect"].round(6).tolist()


def test_every_chart_goes_through_the_figure_config_and_no_html_uses_a_cdn():
    root = Path(APP).parent
    for p in [root / "app.py", *sorted((root / "pages").glob("*.py")), root / "iclviz" / "outputs" / "plots.py"]:
        src = p.read_text()
        assert 'include_plotlyjs="cdn"' not in src and "cdn.plot.ly" not in src, p
        if p.name != "widgets.py":  # widgets.chart adds config=plotly_config(...) (PNG or SVG, the sidebar's choice)
            assert ".plotly_chart(" not in src, p


def test_spread_device_loads_with_device_map_and_predicts_like_the_library(monkeypatch, tmp_path):
    from iclviz.engine.models import load_model
    from iclviz.testing import save_tiny_model
    from pages.parts.sidebar import SPREAD

    folder = save_tiny_model(tmp_path / "tiny")
    monkeypatch.setenv("ICLVIZ_ALLOW_LOCAL", "1")
    monkeypatch.setenv("ICLVIZ_OFFLOAD_FOLDER", str(tmp_path / "offload"))
    at = new_app()
    at.radio(key="w_model_source").set_value("Local folder").run()
    at.text_input(key="w_model_dir").set_value(str(folder)).run()
    at.selectbox(key="w_device").set_value(SPREAD).run()
    at.button(key="w_load_model").click().run()
    assert not at.exception and not at.error
    assert at.session_state["model_spec"][1] == SPREAD
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "device **cpu**" in captions  # accelerate placed every layer on the only device here
    lm = load_model(str(folder))
    want = lm.prompt([(d["text"], d["label"]) for d in at.session_state["demos"]], at.session_state["query"],
                     at.session_state["label_words"])
    from iclviz.analyses.evaluation import predict_prompt

    assert predict_prompt(lm, want).predicted in predictions(at)[0]
