"""Fixtures: tiny random models of every supported architecture and a tokenizer trained here.

Nothing is downloaded: ``iclviz.testing`` builds the models from configs and trains a byte-level
BPE tokenizer on SST-2 sentences (the same factory the app's test mode and the benchmarks use).
"""

from __future__ import annotations

import pytest

from iclviz.engine.models import wrap_model
from iclviz.testing import ARCHITECTURES, build_tiny_model, tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer(sentence_template=False)


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny(request, tokenizer):
    """A LoadedModel around a tiny random model, one per architecture."""
    return wrap_model(build_tiny_model(request.param), tokenizer, name=f"tiny-{request.param}")


@pytest.fixture(scope="session")
def tiny_llama(tokenizer):
    return wrap_model(build_tiny_model("llama"), tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tokenizer):
    return wrap_model(build_tiny_model("gpt2"), tokenizer, name="tiny-gpt2")


def pytest_collection_modifyitems(config, items):
    """Run the default-model integration tests first: on a fresh machine they build the model
    cache (~1 min), so that the browser test then drives the app on the real model too."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("integration") else 1)
