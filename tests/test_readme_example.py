"""The README's Python example runs as written, offline, on the default model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_readme_python_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## The library in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    before, after = namespace["before"], namespace["after"]
    assert set(before.probs) == {"foo", "bar"} and before.predicted == "foo"
    assert after.probs != before.probs  # the knockout reached the model
    assert "attention from T" in capsys.readouterr().out
