"""The command line on a tiny model saved to a folder: outputs, files, exit codes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from iclviz.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from iclviz.testing import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2")))


def test_predict_prints_probabilities(model_dir, capsys, tmp_path):
    rc = main(["predict", "--model", model_dir, "--demo", "a wonderful film=foo", "--demo", "dull and boring=bar",
               "--query", "I loved it", "--out", str(tmp_path)])
    assert rc == 0
    out = json.loads((tmp_path / "predict.json").read_text())
    assert set(out["probabilities"]) == {"foo", "bar"}
    assert sum(out["probabilities"].values()) == pytest.approx(1.0)
    assert out["prediction"] in ("foo", "bar")
    assert '"prediction"' in capsys.readouterr().out


def test_bad_input_exits_with_a_message(model_dir, capsys):
    assert main(["predict", "--model", model_dir, "--demo", "good=foo", "--query", "x"]) == 2
    assert "at least two labels" in capsys.readouterr().err
    assert main(["predict", "--model", "a/b/c", "--demo", "good=foo", "--query", "x"]) == 2
    assert main(["evaluate", "--model", model_dir, "--dataset", "nope"]) == 2


def test_evaluate_and_locate_write_csv_and_json(model_dir, tmp_path):
    assert main(["evaluate", "--model", model_dir, "--dataset", "sst2", "--k", "1", "--n-test", "4",
                 "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "evaluate.json").read_text())
    rows = pd.read_csv(tmp_path / "evaluate_rows.csv")
    assert summary["n"] == len(rows) == 4 and summary["accuracy"] == rows["correct"].mean()
    assert main(["locate", "--model", model_dir, "--dataset", "sst2", "--k", "1", "--n-test", "4",
                 "--out", str(tmp_path)]) == 0
    top = json.loads((tmp_path / "top_heads.json").read_text())
    assert len(top["top"]) == 2 and top["layers"] == [1, 2]


def test_causal_scan_drops_per_head(model_dir, tmp_path):
    assert main(["causal", "--model", model_dir, "--dataset", "sst2", "--k", "1", "--n-test", "4", "--candidates", "3",
                 "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "causal.csv")
    assert len(df) == 3 and set(df["kind"]) == {"ablate"}
    base = df["accuracy"] + df["drop"]  # the same no-intervention accuracy in every row
    assert base.max() - base.min() < 1e-9 and 0 <= base.iloc[0] <= 1


def test_hub_dataset_without_the_package_or_network_is_a_message(model_dir, capsys):
    assert main(["evaluate", "--model", model_dir, "--dataset", "hub:no-such/dataset", "--n-test", "2"]) == 2
    err = capsys.readouterr().err
    assert "datasets" in err or "no-such/dataset" in err


def test_report_quick_on_a_tiny_model(model_dir, tmp_path):
    out = tmp_path / "results.md"
    assert main(["report", "--models", model_dir, "--datasets", "sst2", "--quick", "--out", str(out),
                 "--work", str(tmp_path / "work"), "--classic-on"]) == 0
    text = out.read_text()
    # the central section: heads located by the in-context part on the locate half, tested on held-out prompts
    assert "### Heads that read the demonstrations, and heads that vote for a label" in text
    assert "### Does knocking them out stop the model telling the classes apart?" in text
    assert "**Verdict (the app's" in text and "percentile of the random sets'" in text
    # both confirmations, then every fresh prompt against one set of random draws
    assert "**A second confirmation** (8 more fresh prompts" in text
    assert "**All fresh prompts together** (16 prompts" in text
    assert "(issue" not in text and "(item" not in text  # a document for readers, not a log
    # the older rules, read on accuracy and then on discrimination
    assert "**Verdicts.** Importance heads: " in text and "percentile of 8 random draws" in text
    assert "**The same knockouts read on discrimination.**" in text
    test = torch.load(next((tmp_path / "work").rglob("context_test.pt")), weights_only=False)
    assert test["meta"]["test_part"] == "evaluate"
    # the bias fixes on the context rule's heads, with paired intervals, and whether those heads read the demos
    assert text.count(", fix in the in-context heads (") == 2 and "The heads the fixes act on, one at a time" in text
    assert (tmp_path / "effect_by_model_size.svg").read_text().startswith("<svg")
    summary = pd.read_csv(tmp_path / "work" / "summary.csv")
    assert len(summary) == 1 and summary["n"].iloc[0] == 8
    # every run's sample size, with the count of runs below 256 computed from the table itself
    sizes = text.split("## Sample sizes")[1].split("\n# ")[0]
    rows = [line for line in sizes.splitlines() if line.startswith("| ") and "model" not in line]
    small = sum(line.rstrip(" |").endswith("no") for line in rows)
    assert f"{len(rows) - small} of {len(rows)} runs reach 256; the other {small} are smaller" in sizes
    held = next(line for line in rows if "held-out curve" in line)
    assert [c.strip() for c in held.split("|")][4] == str(len(test["gold"]))
    assert small == len(rows)  # a quick run: every run is small
    shares = next(line for line in rows if "1%, 2% and 5%" in line)
    assert [c.strip() for c in shares.split("|")][5] == "5"  # the share sizes' draws topped up to share_draws_total
    # a rerun reuses every experiment
    mtime = (tmp_path / "work").stat().st_mtime
    assert main(["report", "--models", model_dir, "--datasets", "sst2", "--quick", "--out", str(out),
                 "--work", str(tmp_path / "work"), "--classic-on"]) == 0
    assert out.read_text().split("## Overview")[1] == text.split("## Overview")[1]
    assert mtime <= (tmp_path / "work").stat().st_mtime


def test_report_bias_sections_have_paired_intervals(model_dir, tmp_path):
    out, work = tmp_path / "results.md", tmp_path / "work"
    args = ["report", "--models", model_dir, "--datasets", "sst2", "--quick", "--out", str(out), "--work", str(work),
            "--classic-on", model_dir]
    assert main(args) == 0
    text = out.read_text()
    # the biases come with paired intervals from the per-prompt outcomes kept beside them ...
    # (twice for the importance heads' fixes, twice for the context rule's heads' fixes)
    assert text.count(" bias [95% CI] ") == 4 and text.count("**Verdict: ") == 4
    prompts = list(work.rglob("majority_bias_prompts.csv"))
    assert len(prompts) == 1 and len(pd.read_csv(prompts[0])) == 3 * 3 * 8  # arrangements x conditions x prompts
    # ... and a summary cached without them says so instead of inventing an interval
    prompts[0].unlink()
    assert main(args) == 0
    assert out.read_text().count("No intervals: this result was computed before per-prompt outcomes") == 1


def test_locate_both_rankings_and_null_distribution(model_dir, tmp_path):
    args = ["--model", model_dir, "--dataset", "sst2", "--k", "1", "--n-test", "4", "--out", str(tmp_path)]
    assert main(["locate", "--method", "both", *args]) == 0
    top = json.loads((tmp_path / "top_heads.json").read_text())
    scan = pd.read_csv(tmp_path / "causal_scan.csv")
    assert len(scan) == 2 * 4 * 2  # layers 1-2 x 4 heads x (knockout, ablate_t)
    assert len(top["causal"]["top_by_label_effect"]) == 2 and "spearman" in top["rankings"]["label_effect_top10"]
    assert main(["null", "--rule", "causal", "--draws", "12", *args]) == 0
    verdict = json.loads((tmp_path / "null_verdict.json").read_text())
    summary = pd.read_csv(tmp_path / "null_summary.csv")
    assert verdict["draws"] == 12 and (summary.condition == "random").sum() == 12
    assert 0 < verdict["p_empirical"] <= 1
    assert main(["label-specific", "--draws", "5", *args]) == 0
    assert (tmp_path / "label_specific_summary.csv").exists()


VIEW_PROMPT = ["--demo", "a wonderful film=foo", "--demo", "dull and boring=bar", "--demo", "great acting=foo",
               "--query", "I loved it", "--heads", "L1H0 L2H3"]


def test_compare_writes_a_b_and_differences_equal_to_the_library(model_dir, tmp_path):
    from iclviz.analyses.compare import PromptSpec, compare_prompts, flip_label
    from iclviz.engine.models import load_model

    assert main(["compare", "--model", model_dir, *VIEW_PROMPT, "--flip", "2", "--out", str(tmp_path),
                 "--html", str(tmp_path / "ab.html")]) == 0
    got = pd.read_csv(tmp_path / "compare.csv")
    lm = load_model(model_dir)
    a = PromptSpec((("a wonderful film", "foo"), ("dull and boring", "bar"), ("great acting", "foo")), "I loved it",
                   ("foo", "bar"))
    want = compare_prompts(lm, a, flip_label(a, 1), [(1, 0), (2, 3)]).to_frame()
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False, atol=1e-6)
    assert json.loads((tmp_path / "compare.json").read_text())["heads"] == ["L1H0", "L2H3"]
    page = (tmp_path / "ab.html").read_text()
    assert "<script src=" not in page and "plotly.js v" in page  # plotly.js embedded: opens offline
    assert main(["compare", "--model", model_dir, *VIEW_PROMPT]) == 2  # no edit: B would equal A


def test_contributions_and_towers_patch_from_the_command_line(model_dir, tmp_path, capsys):
    assert main(["contributions", "--model", model_dir, *VIEW_PROMPT, "--out", str(tmp_path)]) == 0
    c = pd.read_csv(tmp_path / "contributions.csv")
    assert list(c["demo"]) == [1, 2, 3] and {"contribution", "knockout_effect"} <= set(c.columns)
    d = json.loads((tmp_path / "contributions.json").read_text())
    assert d["baseline_margin"] + c["contribution"].sum() == pytest.approx(d["prediction_margin"], abs=1e-5)
    assert main(["towers-patch", "--model", model_dir, *VIEW_PROMPT, "--out", str(tmp_path)]) == 0
    t = pd.read_csv(tmp_path / "towers_patch.csv")
    assert list(t["condition"]) == ["none", "q", "k", "v", "q+k", "all", "donor (B)"]
    assert main(["towers-patch", "--model", model_dir, *VIEW_PROMPT, "--conditions", "x+y"]) == 2
    assert "unknown condition" in capsys.readouterr().err


def test_lesson_file_replays_clean_and_a_tampered_one_does_not(model_dir, tmp_path, capsys):
    path = tmp_path / "lesson.json"
    assert main(["lesson", "--model", model_dir, *VIEW_PROMPT, "--label-swap", "--towers", "--contributions",
                 "--save", str(path)]) == 0
    assert main(["replay", str(path), "--model", model_dir]) == 0
    assert "agree" in capsys.readouterr().out
    data = json.loads(path.read_text())
    data["results"]["prediction"]["probs"]["foo"] += 0.25
    path.write_text(json.dumps(data))
    assert main(["replay", str(path), "--model", model_dir, "--out", str(tmp_path / "diff")]) == 1
    diff = pd.read_csv(tmp_path / "diff" / "replay.csv")
    assert any("foo" in k for k in diff.iloc[:, 0].astype(str))
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["replay", str(tmp_path / "bad.json"), "--model", model_dir]) == 2


def test_device_map_options_are_checked_before_loading(model_dir, tmp_path, capsys):
    assert main(["predict", "--model", model_dir, "--demo", "a=foo", "--demo", "b=bar", "--query", "c",
                 "--offload-folder", str(tmp_path)]) == 2
    assert "needs --device-map auto" in capsys.readouterr().err
    assert main(["predict", "--model", model_dir, "--demo", "a=foo", "--demo", "b=bar", "--query", "c",
                 "--device-map", "balanced"]) == 2
    assert main(["predict", "--model", model_dir, "--demo", "a wonderful film=foo", "--demo", "dull=bar",
                 "--query", "I loved it", "--device-map", "auto", "--offload-folder", str(tmp_path / "off"),
                 "--out", str(tmp_path)]) == 0


def test_bias_commands_write_paired_intervals_and_read_them(model_dir, tmp_path, capsys, monkeypatch):
    import iclviz.analyses.readout

    monkeypatch.setattr(iclviz.analyses.readout, "at_chance", lambda res, n: None)  # a random model: at chance
    args = ["--model", model_dir, "--dataset", "sst2", "--k", "1", "--n-test", "4", "--out", str(tmp_path)]
    assert main(["majority-bias", *args]) == 0
    err = capsys.readouterr().err
    assert "permutation test of no bias" in err and "the same in every arrangement" in err
    iv = pd.read_csv(tmp_path / "majority_bias_intervals.csv").set_index("condition")
    summary = pd.read_csv(tmp_path / "majority_bias.csv").set_index("condition")
    for cond in summary.index:  # the interval table's estimates are the summary's biases
        assert iv.loc[cond, "bias"] == pytest.approx(summary.loc[cond, "bias"])
    assert len(pd.read_csv(tmp_path / "majority_bias_prompts.csv")) == 3 * 3 * len(
        pd.read_csv(tmp_path / "majority_bias_prompts.csv").groupby(["seed", "index"]))
    assert main(["recency-bias", *args, "--orders", "1"]) == 0
    assert "demonstration orders" in capsys.readouterr().err
    assert (tmp_path / "recency_bias_intervals.csv").exists()


def test_context_rule_and_context_test_from_the_command_line(model_dir, tmp_path, capsys):
    """locate --method context: each head's in-context part and prior, on the locate half; context-test: the
    discrimination measures of the top-k curve against random sets, on the evaluate half, with a verdict."""
    args = ["--model", model_dir, "--dataset", "sst2", "--k", "1", "--n-test", "4", "--out", str(tmp_path)]
    assert main(["locate", "--method", "context", "--n-heads", "2", *args]) == 0
    scan = pd.read_csv(tmp_path / "context_scan.csv")
    assert len(scan) == 2 * 4  # layers 1-2 x 4 heads, knockout only
    assert (scan.context_effect.diff().dropna() <= 1e-12).all()  # ranked by the in-context part
    assert scan.context_effect.iloc[0] + scan.prior_first.iloc[0] == pytest.approx(scan.effect_foo.iloc[0], abs=1e-6)
    top = json.loads((tmp_path / "top_heads.json").read_text())
    assert top["context"]["test_part"] == "locate" and len(top["context"]["heads"]) == 2
    capsys.readouterr()
    assert main(["context-test", "--n-heads", "2", "--draws", "3", "--sizes", "1", "2", *args]) == 0
    table = pd.read_csv(tmp_path / "context_test.csv")
    assert list(table.condition[:3]) == ["none", "top:1", "top:2"] and len(table) == 3 + 2 * 3
    assert {"auc", "recentred_accuracy", "accuracy", "mean_margin"} <= set(table.columns)
    verdict = json.loads((tmp_path / "context_verdict.json").read_text())
    assert verdict["k"] == 2 and verdict["draws"] == 3
    assert verdict["reading"] in capsys.readouterr().err
