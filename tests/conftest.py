"""Tiny random models of every supported architecture and a tokenizer trained here.

Nothing is downloaded: configs build the models, and a byte-level BPE tokenizer is
trained on SST-2 sentences from ../shared/data (or the copy shipped in iclviz/data).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from iclviz.data import dataset_path
from iclviz.models import wrap_model

VOCAB = 400
ARCHITECTURES = ["gpt2", "llama", "mistral", "qwen2", "gptj", "gpt_neox"]


def build_tiny_model(arch: str, seed: int = 0, vocab: int = VOCAB):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, initializer_range=0.3)
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=1024, **common)
        model = GPT2LMHeadModel(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=1024, **common)
        model = LlamaForCausalLM(cfg)
    elif arch == "mistral":
        cfg = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                            num_key_value_heads=1, max_position_embeddings=1024, sliding_window=None, **common)
        model = MistralForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, **common)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gptj":
        cfg = GPTJConfig(n_embd=32, n_layer=3, n_head=4, rotary_dim=4, n_positions=1024, **common)
        model = GPTJForCausalLM(cfg)
    elif arch == "gpt_neox":
        cfg = GPTNeoXConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                            rotary_pct=0.5, max_position_embeddings=1024, **common)
        model = GPTNeoXForCausalLM(cfg)
    else:
        raise ValueError(arch)
    # Non-zero biases so that bias handling is exercised too.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.dim() == 1:
                p.normal_(0, 0.1)
    return model.eval()


def _train_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rows = [json.loads(line)["text"] for line in open(dataset_path("sst2") / "train.jsonl")][:3000]
    rows += ["Review: x\nLabel: foo", "Review: x\nLabel: bar", "x : foo", "x : bar", "Label: baz"] * 200
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(rows, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tokenizer():
    return _train_tokenizer()


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
