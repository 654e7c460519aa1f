"""The command line on a tiny model saved to a folder: outputs, files, exit codes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

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
    assert "Head location: logit-lens importance beside causal effect" in text
    assert "**Verdicts.** Importance heads: " in text and "percentile of 8 random draws" in text
    assert (tmp_path / "effect_by_model_size.svg").read_text().startswith("<svg")
    summary = pd.read_csv(tmp_path / "work" / "summary.csv")
    assert len(summary) == 1 and summary["n"].iloc[0] == 8
    # a rerun reuses every experiment
    mtime = (tmp_path / "work").stat().st_mtime
    assert main(["report", "--models", model_dir, "--datasets", "sst2", "--quick", "--out", str(out),
                 "--work", str(tmp_path / "work"), "--classic-on"]) == 0
    assert out.read_text().split("## Overview")[1] == text.split("## Overview")[1]
    assert mtime <= (tmp_path / "work").stat().st_mtime


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
