"""Pure helpers for the Streamlit app (no streamlit import here).

- the app's starting prompt and the default in-context heads per model;
- the shareable state (prompt + head set) as JSON and as one URL query parameter;
- tidy tables the prompt lab draws (tokens, attention from T to label positions);
- a tiny random model with a tokenizer trained on the fly, for fast app tests
  (``ICLVIZ_TEST_MODEL=tiny-llama``);
- a full attention pass (a private eager copy of the model) for the bertviz views.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .prompt import DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE, TEMPLATES, BuiltPrompt
from .validation import MAX_DEMOS, MAX_TEXT, head_name, load_json_limited, parse_head, parse_shared_state

Head = tuple[int, int]

START_DEMOS: list[tuple[str, str]] = [
    ("a wonderful, moving film with superb acting", "foo"),
    ("dull, slow and far too long", "bar"),
    ("the best comedy I have seen this year", "foo"),
    ("a boring mess with no story at all", "bar"),
]
START_QUERY = "I loved every minute of it"

TINY_MODELS = ("tiny-llama", "tiny-gpt2", "tiny-qwen2")
__all__ = ["MAX_DEMOS", "MAX_TEXT", "head_name", "parse_head"]  # re-exported for the pages


def default_heads(model_name: str, n_layers: int, n_heads: int, rule: str = "importance") -> list[Head]:
    """A head set before any scan: the heads the report located on this model by ``rule`` (on its
    SST-2 location sample; ``heads.located_heads``), else the first heads of the last layer(s)
    (about 1% of all heads, at least 2)."""
    from .heads import located_heads

    found = located_heads(model_name, rule)
    if found and all(0 <= a < n_layers and 0 <= b < n_heads for a, b in found["heads"]):
        return list(found["heads"])
    n = max(2, round(0.01 * n_layers * n_heads))
    out = []
    layer = n_layers - 1
    while len(out) < n and layer >= 0:
        for h in range(n_heads):
            if len(out) < n:
                out.append((layer, h))
        layer -= 1
    return out


def valid_heads(heads, n_layers: int, n_heads: int) -> list[Head]:
    return [(int(a), int(b)) for a, b in heads if 0 <= int(a) < n_layers and 0 <= int(b) < n_heads]


def control_heads(heads, n_layers: int, n_heads: int, seed: int = 0) -> list[Head]:
    """As many random heads as ``heads``, from the same layers, none of ``heads`` (the control)."""
    from .heads import random_heads

    heads = [tuple(h) for h in heads]
    layers = sorted({a for a, _ in heads}) or [n_layers - 1]
    if len(layers) * n_heads - len(set(heads)) < len(heads):  # widen to all layers when these are nearly full
        layers = list(range(n_layers))
    return random_heads(len(heads), layers, n_heads, seed, exclude=heads)


# ---------------------------------------------------------------- shareable state

@dataclass
class LabState:
    """What a user can share: the prompt and the chosen heads."""

    demos: list[tuple[str, str]] = field(default_factory=lambda: list(START_DEMOS))
    query: str = START_QUERY
    label_words: tuple[str, ...] = DEFAULT_LABEL_WORDS
    template: str = DEFAULT_TEMPLATE
    heads: list[Head] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"demonstrations": [{"text": t, "label": lab} for t, lab in self.demos], "query": self.query,
                "label_words": list(self.label_words), "template": self.template,
                "heads": [head_name(h) for h in self.heads]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_query_param(self) -> str:
        raw = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def state_from_dict(d) -> LabState:
    """Validate untrusted data (an upload or a URL) into a LabState; ValueError with a clear message."""
    v = parse_shared_state(d, TEMPLATES)
    return LabState(v["demos"], v["query"], v["label_words"], v["template"], v["heads"])


def state_from_json(text: str | bytes) -> LabState:
    return state_from_dict(load_json_limited(text))


def state_from_query_param(value: str) -> LabState:
    if not isinstance(value, str) or len(value) > 200_000:
        raise ValueError("the shared link is damaged or too long")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        raise ValueError("the shared link is damaged") from None
    return state_from_json(raw)


# ---------------------------------------------------------------- tables for the prompt lab

def token_table(tokenizer, prompt: BuiltPrompt) -> pd.DataFrame:
    """One row per token: position, token text, role (label word, query, demo, template, T)."""
    role = ["template"] * prompt.n_tokens
    demo_of = [0] * prompt.n_tokens
    for i, (a, b) in enumerate(prompt.demo_spans):
        for p in range(a, b):
            role[p], demo_of[p] = "demonstration", i + 1
    a, b = prompt.query_span
    for p in range(a, b):
        role[p] = "query"
    label_of = [""] * prompt.n_tokens
    for i, (p, w) in enumerate(zip(prompt.label_positions, prompt.demo_labels)):
        role[p], label_of[p], demo_of[p] = "label", w, i + 1
    role[prompt.last_position] = "T"
    toks = [tokenizer.decode([t]) for t in prompt.input_ids]
    return pd.DataFrame({"position": range(prompt.n_tokens), "token": toks, "role": role, "label": label_of,
                         "demo": demo_of})


def label_attention_table(prompt: BuiltPrompt, capture, heads, condition: str = "") -> pd.DataFrame:
    """Attention from T to every label position, per head: head, demo, position, label, attention."""
    attn = capture.attention_at(0, prompt.label_positions)  # [L, H, P]
    rows = []
    for layer, head in heads:
        for i, (p, w) in enumerate(zip(prompt.label_positions, prompt.demo_labels)):
            rows.append({"condition": condition, "head": head_name((layer, head)), "layer": layer, "head_index": head,
                         "demo": i + 1, "position": p, "label": w, "slot": f"#{i + 1} {w} @{p}",
                         "attention": float(attn[layer, head, i])})
    return pd.DataFrame(rows)


def label_sums(table: pd.DataFrame) -> pd.DataFrame:
    """Per condition, head and label: the summed attention from T on that label's positions."""
    if table.empty:
        return table
    return (table.groupby(["condition", "head", "label"], sort=False)["attention"].sum().reset_index())


def label_mass(prompt: BuiltPrompt, capture, heads) -> dict[str, float]:
    """Per label word: the attention from T on its positions, summed over ``heads``."""
    table = label_attention_table(prompt, capture, heads)
    sums = table.groupby("label")["attention"].sum() if not table.empty else {}
    return {w: float(sums.get(w, 0.0)) for w in prompt.label_words}


# ---------------------------------------------------------------- tiny model for tests

_TINY_LOCK = threading.Lock()
_TOKENIZER = None


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained here on SST-2 sentences (as tests/conftest.py does)."""
    global _TOKENIZER
    with _TINY_LOCK:
        if _TOKENIZER is None:
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
            from transformers import PreTrainedTokenizerFast

            from .data import dataset_path

            with open(dataset_path("sst2") / "train.jsonl") as f:
                rows = [json.loads(line)["text"] for line in f][:3000]
            rows += ["Review: x\nLabel: foo", "Review: x\nLabel: bar", "x : foo", "x : bar", "Label: baz",
                     "Sentence: x\nAnswer: foo", "Sentence: x\nAnswer: bar"] * 200
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
            tok.train_from_iterator(rows, trainer)
            _TOKENIZER = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                                 pad_token="<|endoftext|>")
    return _TOKENIZER


def tiny_model(name: str = "tiny-llama", seed: int = 0):
    """A LoadedModel around a tiny random model (3 layers x 4 heads), built from a config."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from .models import ModelLoadError, wrap_model

    torch.manual_seed(seed)
    common = dict(vocab_size=400, initializer_range=0.3)
    if name == "tiny-llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=1024, **common))
    elif name == "tiny-qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=1024, tie_word_embeddings=True, **common))
    elif name == "tiny-gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=1024, **common))
    else:
        raise ModelLoadError(f"unknown test model {name!r}; choose one of {', '.join(TINY_MODELS)}")
    lm = wrap_model(model.eval(), tiny_tokenizer(), name=name)
    lm.notes.append("random weights: a test model, its predictions mean nothing")
    return lm


# ---------------------------------------------------------------- full attention for bertviz

_EAGER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_EAGER_LOCK = threading.Lock()


def eager_copy(lm) -> torch.nn.Module:
    """A private copy of the model that returns full attention matrices (one per loaded model,
    dropped with it). The shared model is never switched to another attention implementation."""
    with _EAGER_LOCK:
        if lm.model not in _EAGER:
            m = copy.deepcopy(lm.model)
            m.set_attn_implementation("eager")
            _EAGER[lm.model] = m.eval()
        return _EAGER[lm.model]


class _Enough(Exception):
    """Raised by the last chosen layer's hook: the layers above it need not run."""


@torch.no_grad()
def full_attention(lm, prompt: BuiltPrompt, layers: list[int], heads: list[int] | None = None,
                   max_tokens: int | None = None) -> dict[int, torch.Tensor]:
    """{layer: [len(heads), S, S]} full attention probabilities of the prompt, for the chosen layers only.

    Only the chosen layers' (and heads') matrices are kept (hooks on their attention modules); the pass
    stops after the last chosen layer. Memory: one layer's matrices at a time plus what is returned.
    A prompt longer than ``max_tokens`` is refused before the pass.
    """
    from .architecture import describe
    from .validation import ValidationError, check_layers, check_prompt_size

    if max_tokens is not None:
        check_prompt_size(prompt.n_tokens, max_tokens, "the attention view's limit")
    layers = check_layers(layers, lm.n_layers)
    heads = list(range(lm.n_heads)) if heads is None else [int(h) for h in heads]
    if not heads or any(not 0 <= h < lm.n_heads for h in heads):
        raise ValidationError(f"heads must be between 0 and {lm.n_heads - 1}")
    model = eager_copy(lm)
    attn_modules = describe(model).attentions
    device = next(model.parameters()).device
    ids = torch.tensor([prompt.input_ids], device=device)
    out: dict[int, torch.Tensor] = {}
    last = max(layers)
    idx = torch.tensor(heads)

    def hook_for(layer):
        def hook(module, args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("the eager attention did not return its weights")
            out[layer] = weights[0].index_select(0, idx.to(weights.device)).float().cpu()
            if layer == last:
                raise _Enough
        return hook

    handles = [attn_modules[a].register_forward_hook(hook_for(a)) for a in layers]
    try:
        model(input_ids=ids, use_cache=False)
    except _Enough:
        pass
    finally:
        for h in handles:
            h.remove()
    return out


VENDOR_DIR = Path(__file__).resolve().parents[1] / "assets" / "vendor"
_REQUIRE_TAG = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/require\.js/[^"]*"></script>')
_SHIM = ("window.require = window.require || {}; window.require.config = function () {};\n"
         "window.requirejs = function (deps, cb) { cb(window.jQuery, window.d3); };")


def offline_bertviz_html(html: str) -> str:
    """bertviz HTML that works without internet: d3 and jQuery inlined, require.js shimmed.

    Returns the HTML unchanged when the vendored files are missing.
    """
    try:
        d3 = (VENDOR_DIR / "d3.v5.min.js").read_text(encoding="utf-8")
        jq = (VENDOR_DIR / "jquery.min.js").read_text(encoding="utf-8")
    except OSError:
        return html
    head = f"<script>{jq}</script>\n<script>{d3}</script>\n<script>{_SHIM}</script>\n"
    return head + _REQUIRE_TAG.sub("", html)


# ---------------------------------------------------------------- bertviz views with real layer and head numbers

def bertviz_layer_inputs(att: dict[int, torch.Tensor], n_layers: int, layer: int, tokens: list[str],
                         only_from_t: bool = False, hide_first: bool = False) -> tuple[tuple, list[str]]:
    """The attention tuple and tokens bertviz needs to draw ``layer`` under its real number.

    bertviz indexes layers by position in the tuple it receives, so the tuple has all ``n_layers``
    entries (the other layers are the same tensor, never drawn: pass ``include_layers=[layer]``) and
    all heads (so head numbers stay real). ``only_from_t`` keeps only the last position's attention row
    (what the in-context heads use); ``hide_first`` drops the first token, whose large attention share
    (the "attention sink") dwarfs the rest, renormalizing nothing (the values stay those of the model).
    """
    a = att[layer].float().clone()  # [H, S, S]
    if only_from_t:
        keep = torch.zeros_like(a)
        keep[:, -1, :] = a[:, -1, :]
        a = keep
    toks = list(tokens)
    if hide_first and a.shape[-1] > 1:
        a = a[:, 1:, 1:]
        toks = toks[1:]
    a = a[None]
    return tuple(a for _ in range(n_layers)), toks


def bertviz_height(view: str, n_tokens: int, total_heads: int, n_layers_drawn: int = 1) -> int:
    """Frame height (px) that shows a whole bertviz view, from bertviz's own layout constants."""
    if view == "head":
        return int(22.5 * n_tokens + 30 + 120)  # BOXHEIGHT per token + TEXT_TOP + layer menu and head boxes
    box = 7 * (12 / max(total_heads, 1))
    thumb = n_tokens * box + 10
    detail = n_tokens * 18 + 2 * 15 + 25
    return int(max(n_layers_drawn * thumb + 38, detail) + 120)


# ---------------------------------------------------------------- what the app's caches hold

@dataclass
class LabelCapture:
    """The part of a capture the pages draw: attention from T at the label positions, [L, H, P].

    The app caches predictions with this instead of the full capture (value-output vectors and
    residuals of every head), so a cached result is kilobytes, not megabytes.
    """

    label_attn: torch.Tensor
    positions: tuple[int, ...]
    value_out = None  # analyses that need vectors run their own pass

    def attention_at(self, b: int, positions) -> torch.Tensor:
        idx = [self.positions.index(int(p)) for p in positions]
        return self.label_attn[..., idx]


def slim_prediction(pred):
    """A Prediction whose capture is only the label attention (what the pages show)."""
    from .evaluation import Prediction

    cap = None
    if pred.capture is not None:
        positions = tuple(pred.prompt.label_positions)
        cap = LabelCapture(pred.capture.attention_at(0, positions).detach().float().cpu().clone(), positions)
    return Prediction(pred.prompt, dict(pred.probs), dict(pred.logits), pred.predicted, cap)
