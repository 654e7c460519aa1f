"""Lesson files (issue 11, item 5): round trip, replay, tampering, refusing bad files."""

from __future__ import annotations

import json

import pytest
import torch
from views_common import HEADS, SPEC

from iclviz.analyses.compare import flip_label, swap_all_labels
from iclviz.engine import interventions as iv


def test_lesson_round_trip_replay_and_tamper(tiny_llama, tmp_path):
    from iclviz.outputs.lesson_file import load_lesson, make_lesson, replay, save_lesson

    lesson = make_lesson(tiny_llama, SPEC, HEADS, iv.Plan("knockout", ((2, 1),)), prompt_b=flip_label(SPEC, 1),
                         donor=swap_all_labels(SPEC), contributions=True)
    path = save_lesson(lesson, tmp_path / "lesson.json")
    back = load_lesson(path)
    assert back.to_dict() == lesson.to_dict()
    assert back.prompt == SPEC and back.heads == HEADS and back.plan == iv.Plan("knockout", ((2, 1),))
    assert set(back.results) == {"prediction", "attention", "compare", "contributions", "towers"}
    assert {"prediction", "attention", "compare", "contributions", "towers"} <= set(back.tables())
    assert back.packages["torch"] == torch.__version__
    report = replay(back, tiny_llama)
    assert report.ok, report.differences
    assert report.n_compared > 100
    # a tampered number is reported
    d = json.loads(path.read_text())
    d["results"]["compare"]["head_table"][3]["attention_b"] += 0.01
    d["results"]["prediction"]["predicted"] = "baz"
    path.write_text(json.dumps(d))
    report = replay(load_lesson(path), tiny_llama)
    assert not report.ok
    assert set(report.differences["key"]) == {"compare.head_table[3].attention_b", "prediction.predicted"}
    assert "differ" in report.summary()


@pytest.mark.parametrize("text, match", [
    ("not json", "not valid JSON"),
    ('{"format": "other"}', "not an iclviz lesson"),
    ('{"format": "iclviz-lesson", "version": 2}', "version"),
    ('{"format": "iclviz-lesson", "version": 1, "prompt": {"demonstrations": [], "query": "x"}, "evil": 1}',
     "unknown field"),
    ('{"format": "iclviz-lesson", "version": 1, "prompt": {"demonstrations": 3, "query": "x"}}', "demonstrations"),
    ('{"format": "iclviz-lesson", "version": 1, "prompt": {"demonstrations": [], "query": "x"}, '
     '"interventions": {"kind": "exec"}}', "interventions.kind"),
    ('{"format": "iclviz-lesson", "version": 1, "prompt": {"demonstrations": [], "query": "x"}, "heads": ["x"]}',
     "head"),
    ("[" * 50 + "]" * 50, "nested"),
])
def test_load_lesson_refuses_bad_files_with_clear_messages(text, match):
    from iclviz.outputs.lesson_file import load_lesson
    from iclviz.validation import ValidationError

    with pytest.raises(ValidationError, match=match):
        load_lesson(text.encode())


def test_load_lesson_size_limit(tmp_path, monkeypatch):
    from iclviz.outputs import lesson_file
    from iclviz.validation import ValidationError

    monkeypatch.setattr(lesson_file, "MAX_LESSON_BYTES", 100)
    p = tmp_path / "big.json"
    p.write_text("{" + " " * 200 + "}")
    with pytest.raises(ValidationError, match="larger"):
        lesson_file.load_lesson(p)
