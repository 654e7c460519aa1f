"""Hostile and faulty inputs (issue 20): no traceback, exit 2 for an input error, no write to a non-regular file,
nothing trusted that a file says (datasets, checkpoints, lesson files, shared links, the model cache).

Categories: CLI inputs, output paths that are devices or FIFOs, dataset folders, checkpoint rows, lesson files,
shared links, the weights cache. A tiny model saved to a folder; every check that can happen before the model
loads is proven to (the loader fails the test if it is reached).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_safety import _fake_default_cache, error_lines, run_cli

import iclviz.cli as cli
import iclviz.cli.common as cli_common
from iclviz.validation import MAX_TEXT, ValidationError, atomic_write

ROOT = Path(__file__).resolve().parents[1]
DEMOS = ["--demo", "a good film=foo", "--demo", "a bad film=bar"]
EVAL = ["--dataset", "sst2", "--k", "1", "--n-test", "2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from iclviz.testing import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2-fuzz")))


@pytest.fixture()
def no_model(monkeypatch):
    """Fail the test if the model is loaded: the input must be refused before."""
    monkeypatch.setattr(cli_common, "load_model_of",
                        lambda args: pytest.fail("the model was loaded before the input was checked"))


@contextlib.contextmanager
def no_hang(seconds: int = 30):
    """A write that blocks on a FIFO fails the test instead of hanging it."""
    def alarm(*_):
        raise TimeoutError("blocked (on a FIFO?)")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def special_files(folder: Path) -> dict[str, Path]:
    """A FIFO, a character device (made here with mknod, as root; never /dev/null itself), a folder, and links to
    them: paths a write must refuse and leave as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"fifo": folder / "fifo"}
    os.mkfifo(out["fifo"])
    with contextlib.suppress(PermissionError):
        os.mknod(folder / "device", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        out["device"] = folder / "device"
    out["folder"] = folder / "a_folder"
    out["folder"].mkdir()
    for name in ("fifo", "device"):
        if name in out:
            link = folder / f"link-to-{name}"
            link.symlink_to(out[name])
            out[f"link to a {name}"] = link
    return out


def kinds(paths: dict[str, Path]) -> dict[str, int]:
    return {k: stat.S_IFMT(os.stat(p).st_mode) for k, p in paths.items()}


def check_rc2(rc, err, message):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and message in lines[0], err


# ---------------------------------------------------------------- non-regular outputs

def test_atomic_write_refuses_every_non_regular_file(tmp_path):
    paths = special_files(tmp_path)
    before = kinds(paths)
    for p in paths.values():
        with no_hang(), pytest.raises(ValidationError, match="not a regular file"):
            atomic_write(p, "x")
    assert kinds(paths) == before  # nothing replaced: a FIFO is still a FIFO, a device a device
    regular = tmp_path / "ok.json"
    atomic_write(regular, "{}")
    atomic_write(regular, "[]")
    assert regular.read_text() == "[]"


OUTPUT_OPTIONS = [
    ("lesson --save", ["lesson", *DEMOS, "--query", "fine", "--heads", "L1H1", "--save"]),
    ("contributions --html", ["contributions", *DEMOS, "--query", "fine", "--heads", "L1H1", "--html"]),
    ("compare --html", ["compare", *DEMOS, "--query", "fine", "--heads", "L1H1", "--label-swap", "--html"]),
    ("evaluate --checkpoint", ["evaluate", *EVAL, "--checkpoint"]),
]


@pytest.mark.parametrize("case", OUTPUT_OPTIONS, ids=[c[0] for c in OUTPUT_OPTIONS])
def test_cli_output_that_is_a_device_or_fifo_is_refused_before_the_model(case, tmp_path, capsys, no_model):
    _, argv = case
    paths = special_files(tmp_path)
    before = kinds(paths)
    for name, p in paths.items():
        with no_hang():
            rc, err = run_cli([argv[0], "--model", "unused", *argv[1:], str(p)], capsys)
        msg = "is a folder" if name == "folder" else "not a regular file"
        check_rc2(rc, err, msg)
    assert kinds(paths) == before


def test_cli_out_folder_holding_a_fifo_is_left_alone(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "predict.json")
    with no_hang():
        rc, err = run_cli(["predict", "--model", model_dir, *DEMOS, "--query", "fine", "--out", str(out)], capsys)
    check_rc2(rc, err, "not a regular file")
    assert stat.S_ISFIFO(os.stat(out / "predict.json").st_mode)


# ---------------------------------------------------------------- CLI inputs

CLI_CASES = [
    # (id, argv, message): every one is refused before the model loads
    ("rtol negative", ["replay", "LESSON", "--rtol", "-1"], "--rtol must be a finite number of at least 0"),
    ("atol nan", ["replay", "LESSON", "--atol", "nan"], "--atol must be a finite number of at least 0"),
    ("atol inf", ["replay", "LESSON", "--atol", "inf"], "--atol must be a finite number"),
    ("rtol text", ["replay", "LESSON", "--rtol", "x"], "--rtol must be a number"),
    ("duplicate seeds", ["evaluate", "--model", "unused", *EVAL, "--seeds", "0", "0"],
     "seed 0 is given more than once"),
    ("duplicate seeds among others", ["evaluate", "--model", "unused", *EVAL, "--seeds", "3", "1", "3"],
     "seed 3 is given more than once"),
    ("lone surrogate in --query", ["predict", "--model", "unused", *DEMOS, "--query", "\udcff"],
     "--query holds a character that is not valid text"),
    ("lone surrogate in --demo", ["predict", "--model", "unused", "--demo", "a\udcff=foo", "--demo", "b=bar",
                                  "--query", "q"], "--demo holds a character"),
    ("lone surrogate in --labels", ["evaluate", "--model", "unused", *EVAL, "--labels", "f\udcffo", "bar"],
     "--labels holds a character"),
    ("empty --out", ["predict", "--model", "unused", *DEMOS, "--query", "q", "--out", ""], "--out is empty"),
    ("empty --out on a dataset", ["evaluate", "--model", "unused", *EVAL, "--out", ""], "--out is empty"),
    ("empty --save", ["lesson", "--model", "unused", *DEMOS, "--query", "q", "--save", ""], "--save is empty"),
    ("max-seconds zero", ["predict", "--model", "unused", *DEMOS, "--query", "q", "--max-seconds", "0"],
     "--max-seconds must be a finite number above 0"),
    ("lesson text too long", ["lesson", "--model", "unused", "--demo", "x" * (MAX_TEXT + 1) + "=foo", "--demo", "b=bar",
                              "--query", "q", "--save", "LESSON"], "demonstration 1 is 2,001 characters"),
    ("verify a model that is not offline", ["verify", "--model", "gpt2"], "'gpt2' is not an offline model"),
    ("labels do not fit the classes", ["evaluate", "--model", "unused", *EVAL, "--labels", "foo"], "label words"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_input_errors_exit_2_before_the_model(case, tmp_path, capsys, no_model):
    _, argv, message = case
    argv = [str(tmp_path / "lesson.json") if a == "LESSON" else a for a in argv]
    rc, err = run_cli(argv, capsys)
    check_rc2(rc, err, message)


def test_cli_undecodable_bytes_in_argv_are_a_message(tmp_path):
    """A real command line with a byte that is not UTF-8 (bash: --query $'\\xff'): exit 2, one line."""
    r = subprocess.run([sys.executable.encode(), b"-m", b"iclviz", b"predict", b"--model", str(tmp_path).encode(),
                        b"--demo", b"a=foo", b"--demo", b"b=bar", b"--query", b"\xff"], cwd=ROOT, capture_output=True,
                       timeout=120)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 2 and "Traceback" not in err and "--query holds a character that is not valid text" in err


def test_cli_prompt_past_the_time_budget_is_refused_with_an_estimate(model_dir, capsys):
    rc, err = run_cli(["predict", "--model", model_dir, *DEMOS, "--query", "fine " * 200, "--max-seconds", "1e-6"],
                      capsys)
    check_rc2(rc, err, "one pass would take about")
    assert "--max-seconds is 1e-06" in err


def test_sigint_says_why_it_stopped(model_dir, tmp_path):
    """A real process interrupted with SIGINT (Ctrl-C): 'stopped:' with a reason, exit 130, no traceback."""
    ck = tmp_path / "ck.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "iclviz", "evaluate", "--model", model_dir, "--dataset", "sst2",
                             "--k", "1", "--n-test", "400", "--batch-size", "1", "--checkpoint", str(ck)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            # a shell's background job inherits SIGINT ignored; Ctrl-C in a terminal is not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ck.exists() and len(ck.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert "stopped: interrupted (Ctrl-C or SIGINT)" in err and "--checkpoint" in err
    assert "Traceback" not in err


def test_evaluate_json_writes_null_not_nan(model_dir, tmp_path, capsys):
    rc, err = run_cli(["evaluate", "--model", model_dir, *EVAL, "--out", str(tmp_path)], capsys)
    assert rc == 0, err

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    summary = json.loads((tmp_path / "evaluate.json").read_text(), parse_constant=refuse)
    assert summary["seeds"] == 1 and summary["seed_sd"] is None


# ---------------------------------------------------------------- dataset folders

def _dataset(folder: Path, meta=None, train=None, test=None) -> Path:
    d = folder / "mydata"
    d.mkdir(parents=True)
    rows = "".join(json.dumps({"text": f"sentence {i}", "label": i % 2}) + "\n" for i in range(8))
    for name, content in (("meta.json", meta if meta is not None else json.dumps({"labels": ["neg", "pos"]})),
                          ("train.jsonl", train if train is not None else rows),
                          ("test.jsonl", test if test is not None else rows)):
        if isinstance(content, bytes):
            (d / name).write_bytes(content)
        elif callable(content):
            content(d / name)
        else:
            (d / name).write_text(content)
    return folder


def _chardev(path: Path):
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # like /dev/zero: endless bytes
    except PermissionError:
        pytest.skip("mknod needs root")


GOOD = "".join(json.dumps({"text": f"sentence {i}", "label": i % 2}) + "\n" for i in range(8))
DATA_CASES = [
    ("empty train", {"train": ""}, "train.jsonl: the file is empty"),
    ("empty meta", {"meta": ""}, "meta.json: the file is empty"),
    ("invalid JSONL", {"train": GOOD + "{not json\n"}, "train.jsonl line 9: not valid JSON"),
    ("binary train", {"train": b"\x00\xff\xfe" + os.urandom(64)}, "train.jsonl line 1: not UTF-8 text"),
    ("meta without labels", {"meta": json.dumps({"name": "x"})}, "meta.json: needs \"labels\""),
    ("meta not JSON", {"meta": "labels: [a, b]"}, "meta.json line 1: not valid JSON"),
    ("meta one label", {"meta": json.dumps({"labels": ["only"]})}, "at least two distinct class names"),
    ("missing text column", {"train": json.dumps({"sentence": "x", "label": 0}) + "\n"},
     "train.jsonl line 1: each line needs \"text\" and \"label\""),
    ("null text", {"test": GOOD + json.dumps({"text": None, "label": 0}) + "\n"},
     "test.jsonl line 9: \"text\" must be a non-empty string"),
    ("label out of range", {"train": GOOD + json.dumps({"text": "x", "label": 7}) + "\n"},
     "train.jsonl line 9: \"label\" must be a class index from 0 to 1"),
    ("label as bool", {"train": json.dumps({"text": "x", "label": True}) + "\n"}, "line 1: \"label\" must be"),
    ("a row that is a list", {"train": "[1, 2]\n"}, "train.jsonl line 1: each line needs"),
    ("symlink to a system file", {"train": lambda p: p.symlink_to("/etc/passwd")},
     "train.jsonl line 1: not valid JSON"),
    ("symlink to a folder", {"train": lambda p: p.symlink_to("/etc")}, "train.jsonl: not a regular file"),
    ("a FIFO", {"train": lambda p: os.mkfifo(p)}, "train.jsonl: not a regular file"),
    ("a device", {"train": _chardev}, "train.jsonl: not a regular file"),
    ("missing test file", {"test": lambda p: None}, "test.jsonl: missing"),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_dir_is_validated_before_the_model(case, tmp_path, capsys, no_model):
    _, files, message = case
    data = _dataset(tmp_path / "data", **files)
    with no_hang():
        rc, err = run_cli(["evaluate", "--model", "unused", "--data-dir", str(data), "--dataset", "mydata", "--k", "1",
                           "--n-test", "2"], capsys)
    check_rc2(rc, err, message)
    assert str(data / "mydata") in err  # the file is named with its folder


def test_a_valid_data_dir_with_label_names_loads(tmp_path):
    from iclviz.data import load_dataset

    rows = "".join(json.dumps({"text": f"s {i}", "label": ["neg", "pos"][i % 2]}) + "\n" for i in range(6))
    ds = load_dataset("mydata", _dataset(tmp_path / "data", train=rows))
    assert ds.labels == ["neg", "pos"] and ds.train["label"].tolist() == [0, 1, 0, 1, 0, 1]


# ---------------------------------------------------------------- checkpoint rows

@pytest.fixture(scope="module")
def checkpoint(model_dir, tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck") / "ck.jsonl"
    rc = cli.main(["evaluate", "--model", model_dir, "--dataset", "sst2", "--k", "1", "--n-test", "4", "--checkpoint",
                   str(ck)])
    assert rc == 0
    return ck.read_text()


def _edit_row(text: str, line: int, **changes) -> str:
    lines = text.splitlines()
    row = json.loads(lines[line - 1])
    for k, v in changes.items():
        if v is KeyError:
            row.pop(k)
        else:
            row[k] = v
    lines[line - 1] = json.dumps(row)
    return "\n".join(lines) + "\n"


def _flip(text: str, line: int) -> str:
    """Line ``line`` says correct when it is wrong (or the reverse), the rest of the row untouched."""
    row = json.loads(text.splitlines()[line - 1])
    return _edit_row(text, line, correct=not row["correct"])


CHECKPOINT_CASES = [
    ("correct contradicts gold and pred", lambda t: _flip(t, 3), "line 3: 'correct' is"),
    ("margin as text", lambda t: _edit_row(t, 2, margin="abc"), "line 2: 'margin' must be a finite number"),
    ("margin missing", lambda t: _edit_row(t, 2, margin=KeyError), "line 2: 'margin' must be a finite number"),
    ("gold out of range", lambda t: _edit_row(t, 4, gold=5), "line 4: 'gold' must be a label index from 0 to 1"),
    ("pred as a bool", lambda t: _edit_row(t, 2, pred=True), "line 2: 'pred' must be a whole number"),
    ("index past n-test", lambda t: _edit_row(t, 2, index=99), "line 2: 'index' must be from 0 to 3"),
    ("negative seed", lambda t: _edit_row(t, 2, seed=-1), "line 2: 'seed' must be at least 0"),
    ("probability above 1", lambda t: _edit_row(t, 2, p_foo=1.5), "line 2: 'p_foo' must be a probability"),
    ("another plan's row", lambda t: _edit_row(t, 2, plan="ablate 2 heads"), "line 2: 'plan' is"),
    ("a row that is a list", lambda t: t + "[1, 2]\n", "line 6: not a row object"),
]


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_checkpoint_rows_are_checked_not_trusted(case, checkpoint, model_dir, tmp_path, capsys):
    _, edit, message = case
    ck = tmp_path / "ck.jsonl"
    ck.write_text(edit(checkpoint))
    before = ck.read_text()
    rc, err = run_cli(["evaluate", "--model", model_dir, "--dataset", "sst2", "--k", "1", "--n-test", "4",
                       "--checkpoint", str(ck), "--out", str(tmp_path / "out")], capsys)
    check_rc2(rc, err, message)
    assert ck.read_text() == before and not (tmp_path / "out" / "evaluate.json").exists()


def test_untouched_checkpoint_still_resumes(checkpoint, model_dir, tmp_path, capsys):
    ck = tmp_path / "ck.jsonl"
    ck.write_text(checkpoint)
    rc, err = run_cli(["evaluate", "--model", model_dir, "--dataset", "sst2", "--k", "1", "--n-test", "4",
                       "--checkpoint", str(ck)], capsys)
    assert rc == 0, err
    assert ck.read_text() == checkpoint


# ---------------------------------------------------------------- lesson files

@pytest.fixture(scope="module")
def lesson_text(model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("lesson") / "lesson.json"
    rc = cli.main(["lesson", "--model", model_dir, *DEMOS, "--query", "fine", "--heads", "L1H1", "--save", str(path)])
    assert rc == 0
    return path.read_text()


def _lesson_with(text: str, **changes) -> str:
    d = json.loads(text)
    d.update(changes)
    return json.dumps(d)


def test_replay_of_a_file_without_results_is_an_input_error(lesson_text, tmp_path, capsys, no_model):
    f = tmp_path / "empty.json"
    f.write_text(_lesson_with(lesson_text, results={}))
    rc, err = run_cli(["replay", str(f)], capsys)
    check_rc2(rc, err, "holds no results to compare")


def test_replay_rtol_negative_is_refused_on_an_untampered_file(lesson_text, tmp_path, capsys, no_model):
    f = tmp_path / "lesson.json"
    f.write_text(lesson_text)
    for flags, message in ((["--rtol", "-1"], "--rtol must be"), (["--atol", "nan"], "--atol must be")):
        rc, err = run_cli(["replay", str(f), *flags], capsys)
        assert rc == 2 and message in err and "differ" not in err


@pytest.mark.parametrize("stored, chosen", [
    ("gpt2", "default"),  # a Hub name in a file: never fetched
    ("/etc", "default"),  # a folder in a file: never probed
    ("../../models/x", "default"),
    ("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b"),  # an offline model: used
    ("Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5-Coder-0.5B-Instruct"),  # an offline model's label
    ("", "default"),
])
def test_replay_loads_only_an_offline_model_the_file_names(stored, chosen, lesson_text, capsys):
    from iclviz.outputs.lesson_file import load_lesson

    lesson = load_lesson(_lesson_with(lesson_text, model={"name": stored}))
    assert cli.replay_model_name(lesson, None) == chosen
    assert cli.replay_model_name(lesson, "/some/folder") == "/some/folder"  # --model is the user's own choice
    err = capsys.readouterr().err
    assert ("not an offline model" in err) == (chosen == "default" and bool(stored))


def test_replay_reports_a_weights_mismatch(lesson_text, tiny_llama):
    from iclviz.outputs.lesson_file import load_lesson, replay

    lesson = load_lesson(_lesson_with(lesson_text, model={"name": "default", "weights_sha256": "ab" * 32},
                                      heads=["L1H1"]))
    report = replay(lesson, tiny_llama)
    assert any("sha256 abababababab" in n and "may differ" in n for n in report.notes), report.notes
    tiny_llama.weights_sha256 = "cd" * 32
    try:
        report = replay(lesson, tiny_llama)
    finally:
        tiny_llama.weights_sha256 = ""
    assert any("weights differ" in n for n in report.notes), report.notes


def test_replay_on_a_folder_given_with_model_runs(lesson_text, model_dir, tmp_path, capsys):
    f = tmp_path / "lesson.json"
    f.write_text(_lesson_with(lesson_text, model={"name": "/etc"}))
    rc = cli.main(["replay", str(f), "--model", model_dir])
    out = capsys.readouterr().out
    assert rc == 0 and "stored values agree" in out and "stored with model '/etc'" in out, out


TEXT_CASES = [
    ("demonstration past the limit", {"demonstrations": [{"text": "x" * (MAX_TEXT + 1), "label": "foo"}]},
     "demonstration 1 is 2,001 characters"),
    ("query past the limit", {"query": "q" * (MAX_TEXT + 5)}, "the query is 2,005 characters"),
    ("label past the limit", {"label_words": ["f" * 51, "bar"]}, "label word 1 is 51 characters"),
    ("lone surrogate", {"query": "\udcff"}, "the query holds a character that is not valid text"),
]


@pytest.mark.parametrize("case", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_text_is_never_cut_without_a_word(case, lesson_text):
    """Shared links and lesson files: text past the limit is refused with its length (before, it was cut to 2,000
    characters silently)."""
    from iclviz.outputs.lesson_file import load_lesson
    from iclviz.sharing import state_from_query_param

    _, change, message = case
    d = json.loads(lesson_text)
    d["prompt"].update(change)
    with pytest.raises(ValidationError, match=message):
        load_lesson(json.dumps(d))
    state = dict(d["prompt"])
    link = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
    with pytest.raises(ValueError, match=message):
        state_from_query_param(link)


def test_a_lesson_is_never_saved_with_text_it_cannot_read_back(tiny_llama):
    from iclviz.analyses.compare import PromptSpec
    from iclviz.outputs.lesson_file import make_lesson

    long = PromptSpec((("x" * (MAX_TEXT + 1), "foo"), ("bad", "bar")), "q", ("foo", "bar"), "review")
    with pytest.raises(ValidationError, match="demonstration 1 is 2,001 characters"):
        make_lesson(tiny_llama, long, [(1, 1)])


def _mutations(obj, rng: random.Random, n: int):
    """``n`` damaged copies of a JSON object: a value replaced by another type, a key dropped, a list emptied or
    grown, a string made huge or hostile."""
    odd = [None, True, -1, 1e308, float("nan"), "", "x" * 6000, "![p](http://203.0.113.9/p.png)", "\udcff", [], {},
           [[[[]]]], {"a": {"b": {"c": {}}}}, "L99H99", -0.0, 2**70]

    def paths(o, prefix=()):
        yield prefix
        if isinstance(o, dict):
            for k, v in o.items():
                yield from paths(v, prefix + (k,))
        elif isinstance(o, list):
            for i, v in enumerate(o[:3]):
                yield from paths(v, prefix + (i,))

    all_paths = [p for p in paths(obj) if p]
    for _ in range(n):
        o = json.loads(json.dumps(obj))
        for _ in range(rng.randint(1, 3)):
            p = rng.choice(all_paths)
            parent = o
            try:
                for k in p[:-1]:
                    parent = parent[k]
                if rng.random() < 0.2 and isinstance(parent, dict):
                    parent.pop(p[-1], None)
                else:
                    parent[p[-1]] = copy.deepcopy(rng.choice(odd))
            except (KeyError, IndexError, TypeError):
                continue
        yield o


def test_fuzz_lesson_files_give_a_message_or_a_lesson(lesson_text):
    from iclviz.outputs.lesson_file import Lesson, load_lesson

    rng = random.Random(20)
    for d in _mutations(json.loads(lesson_text), rng, 400):
        try:
            text = json.dumps(d)
        except ValueError:
            continue
        try:
            lesson = load_lesson(text)
        except ValidationError:
            continue
        assert isinstance(lesson, Lesson)
        lesson.tables()  # a loaded lesson can be shown


def test_fuzz_shared_links_give_a_message_or_a_state():
    from iclviz.sharing import LabState, state_from_query_param

    rng = random.Random(2402)
    base = LabState().to_dict()
    for d in _mutations(base, rng, 400):
        link = base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
        try:
            state = state_from_query_param(link)
        except ValueError:
            continue
        assert isinstance(state, LabState)
        assert all(isinstance(t, str) and len(t) <= MAX_TEXT for t, _ in state.demos)
    for raw in (b"", b"\xff\xfe", b"null", b"[]", b'"x"', b"{" * 10, os.urandom(200)):
        with pytest.raises(ValueError):
            state_from_query_param(base64.urlsafe_b64encode(raw).decode())


# ---------------------------------------------------------------- the weights cache

@pytest.fixture()
def fake_cache(tmp_path, monkeypatch):
    """A converted cache of a tiny model in ICLVIZ_CACHE (the real model's conversion takes minutes)."""
    from iclviz.engine import offline

    monkeypatch.setenv("ICLVIZ_CACHE", str(tmp_path / "cache"))
    builds = []

    def build(folder, progress=None):
        builds.append(folder)
        _fake_default_cache(folder)

    monkeypatch.setattr(offline, "build_default_cache", build)
    return offline.default_model_dir(), builds


def _zero_in_place(w: Path) -> None:
    """10 KB of zeros written into the weights, size and modification time restored (the fast check's blind spot)."""
    st = w.stat()
    with open(w, "r+b") as f:
        f.seek(st.st_size // 2)
        f.write(b"\0" * 10_000)
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_verify_finds_bytes_changed_with_size_and_mtime_kept(fake_cache, capsys, monkeypatch):
    from iclviz.engine import models, offline

    folder, builds = fake_cache
    rc, out = cli.main(["verify"]), capsys.readouterr().out
    assert rc == 0 and "default: ok" in out and str(folder) in out
    _zero_in_place(folder / offline.WEIGHTS_FILE)
    assert offline.check_model_cache(folder) is None  # the fast check cannot see it (README says so)
    assert offline.verify_model_cache(folder) == f"{offline.WEIGHTS_FILE} does not match its recorded sha256"
    rc, out = cli.main(["verify", "--model", "default"]), capsys.readouterr().out
    assert rc == 1 and "DAMAGED" in out and str(folder) in out
    models.load_model("default")
    assert len(builds) == 1  # the fast check at load trusts it
    monkeypatch.setenv("ICLVIZ_VERIFY_WEIGHTS", "1")
    models.load_model("default")
    assert len(builds) == 2 and offline.verify_model_cache(folder) is None  # the full check rebuilt it


def test_verify_without_a_cache_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ICLVIZ_CACHE", str(tmp_path / "nothing"))
    assert cli.main(["verify"]) == 0 and "nothing to verify" in capsys.readouterr().out


def test_nan_hint_names_the_actual_cache_folder(tmp_path, monkeypatch):
    import torch

    from iclviz.engine.runs import check_finite
    from iclviz.errors import NonFiniteOutput

    monkeypatch.setenv("ICLVIZ_CACHE", str(tmp_path / "my-cache"))

    class Result:
        label_logits = torch.tensor([[float("nan"), 0.0]])

    with pytest.raises(NonFiniteOutput) as exc:
        check_finite(Result())
    assert str(tmp_path / "my-cache" / "models") in str(exc.value) and "~/.cache" not in str(exc.value)


def test_replay_counts_never_say_more_differ_than_were_compared(lesson_text, tiny_llama):
    """Before: a file without results gave '204 of 0 stored values differ'."""
    from iclviz.outputs.lesson_file import load_lesson, replay

    d = json.loads(lesson_text)
    d["results"] = {"prediction": d["results"]["prediction"]}  # the attention values are missing from the file
    report = replay(load_lesson(json.dumps(d)), tiny_llama)
    assert 0 < len(report.differences) <= report.n_compared, report.summary()
    d["results"] = {}
    with pytest.raises(ValidationError, match="holds no results"):
        replay(load_lesson(json.dumps(d)), tiny_llama)


# ---------------------------------------------------------------- the pages' sources: visitors' text reaches markdown
# only through the escaping helper (widgets.safe); the browser test shows the rendered result

MD_CALLS = {"markdown", "caption", "info", "warning", "error", "success", "toast", "write", "metric", "subheader",
            "header", "title", "expander", "tabs", "button", "checkbox", "radio", "slider", "select_slider", "toggle",
            "text_input", "text_area", "number_input", "selectbox", "multiselect", "download_button", "popover",
            "spinner", "help_text", "progress", "page_link", "link_button", "segmented_control", "pills", "status"}
MD_KEYWORDS = {"label", "help", "body", "text", "placeholder", "caption"}  # ``value`` only for st.metric
USER_TEXT = r"\b(text|texts|query|(\w+_)?words?|w|demos?|up|exc|note|notes|predicted|sentence|warning|msg)\b"
# escape_markdown is widgets.safe's body (state.py cannot import widgets); tokens_html escapes every token as HTML;
# prompt_ab's _demo_line escapes the text and puts the label in a code span
ESCAPERS = {"safe", "escape_markdown", "head_name", "tokens_html", "_demo_line"}


def _reaching_values(node):
    """Expressions whose text reaches a markdown argument unescaped: f-string fields and bare names, not under
    an escaper, not a number format, not a comprehension's loop variable."""
    import ast

    if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in ESCAPERS:
        return
    if isinstance(node, ast.JoinedStr):
        for v in node.values:
            if isinstance(v, ast.FormattedValue) and v.format_spec is None:
                yield from _reaching_values(v.value)
        return
    if isinstance(node, (ast.GeneratorExp, ast.ListComp)):
        yield from _reaching_values(node.elt)
        return
    if isinstance(node, ast.IfExp):  # the condition is not shown
        yield from _reaching_values(node.body)
        yield from _reaching_values(node.orelse)
        return
    if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
        yield node
        return
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "replace" and "'`'" in ast.unparse(node):
        return  # a code span's content with its backticks replaced: inert
    for child in ast.iter_child_nodes(node):
        yield from _reaching_values(child)


def unescaped_markdown(root: Path) -> list[str]:
    import ast
    import re

    found = []
    for f in sorted([root / "app.py", *root.glob("pages/*.py"), *root.glob("pages/parts/*.py")]):
        lines = f.read_text().splitlines()
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name not in MD_CALLS or "# inert:" in lines[node.lineno - 1]:
                continue
            args = list(node.args[:3] if name == "metric" else node.args[:1])
            args += [k.value for k in node.keywords if k.arg in MD_KEYWORDS or (name == "metric" and k.arg == "value")]
            for a in args:
                for v in _reaching_values(a):
                    if re.search(USER_TEXT, ast.unparse(v)):
                        found.append(f"{f.relative_to(root)}:{node.lineno}: {ast.unparse(v)}")
    return found


def test_pages_pass_visitors_text_through_the_escaping_helper():
    assert unescaped_markdown(ROOT) == []
