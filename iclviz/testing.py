"""Tiny random models of every supported architecture and a tokenizer trained here, for tests,
benchmarks and the app's test mode (``ICLVIZ_TEST_MODEL=tiny-llama``).

Nothing is downloaded: configs build the models (3 layers x 4 heads, seeded), and a byte-level BPE
tokenizer is trained on SST-2 sentences shipped with iclviz. Their predictions mean nothing.
"""

from __future__ import annotations

import json
import threading

import torch

VOCAB = 400
ARCHITECTURES = ("gpt2", "llama", "mistral", "qwen2", "gptj", "gpt_neox")
TINY_MODELS = ("tiny-llama", "tiny-gpt2", "tiny-qwen2")  # what the app's test mode offers

_TINY_LOCK = threading.Lock()
_TOKENIZERS: dict[bool, object] = {}
_TEMPLATE_ROWS = ["Review: x\nLabel: foo", "Review: x\nLabel: bar", "x : foo", "x : bar", "Label: baz"]
_SENTENCE_ROWS = ["Sentence: x\nAnswer: foo", "Sentence: x\nAnswer: bar"]


def build_tiny_model(arch: str, seed: int = 0, vocab: int = VOCAB):
    """A tiny random ``*ForCausalLM`` of architecture ``arch`` (one of ``ARCHITECTURES``), in eval mode.

    Biases (where the architecture has them) are drawn non-zero, so that bias handling is exercised too.
    """
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
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, initializer_range=0.3)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=1024, **common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=1024, **common))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                 num_attention_heads=4, num_key_value_heads=1,
                                                 max_position_embeddings=1024, sliding_window=None, **common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=1024, tie_word_embeddings=True, **common))
    elif arch == "gptj":
        model = GPTJForCausalLM(GPTJConfig(n_embd=32, n_layer=3, n_head=4, rotary_dim=4, n_positions=1024,
                                           **common))
    elif arch == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                 intermediate_size=64, rotary_pct=0.5, max_position_embeddings=1024,
                                                 **common))
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.dim() == 1:
                p.normal_(0, 0.1)
    return model.eval()


def tiny_tokenizer(sentence_template: bool = True):
    """A byte-level BPE tokenizer (``VOCAB`` tokens) trained here on SST-2 sentences and the templates'
    words; trained once per process (per flavour) and shared.

    ``sentence_template``: also train on the "sentence" template's words (what the app's test mode
    uses); the library tests use the tokenizer without them, whose token counts they pin.
    """
    with _TINY_LOCK:
        if sentence_template not in _TOKENIZERS:
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
            from transformers import PreTrainedTokenizerFast

            from .data import dataset_path

            with open(dataset_path("sst2") / "train.jsonl") as f:
                rows = [json.loads(line)["text"] for line in f][:3000]
            rows += (_TEMPLATE_ROWS + (_SENTENCE_ROWS if sentence_template else [])) * 200
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
            tok.train_from_iterator(rows, trainer)
            _TOKENIZERS[sentence_template] = PreTrainedTokenizerFast(
                tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return _TOKENIZERS[sentence_template]


def tiny_model(name: str = "tiny-llama", seed: int = 0):
    """A LoadedModel around ``build_tiny_model`` and ``tiny_tokenizer``: ``name`` is 'tiny-<arch>'."""
    from .engine.models import ModelLoadError, wrap_model

    arch = name[5:] if name.startswith("tiny-") else ""
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"unknown test model {name!r}; choose one of {', '.join(TINY_MODELS)}")
    lm = wrap_model(build_tiny_model(arch, seed), tiny_tokenizer(), name=name)
    lm.notes.append("random weights: a test model, its predictions mean nothing")
    return lm


def save_tiny_model(path, arch: str = "qwen2", seed: int = 0, sentence_template: bool = False):
    """Save a tiny model and a tokenizer to the folder ``path`` (what a local checkpoint looks like)."""
    build_tiny_model(arch, seed).save_pretrained(path)
    tiny_tokenizer(sentence_template).save_pretrained(path)
    return path
