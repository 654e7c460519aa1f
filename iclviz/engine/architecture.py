"""Where the parts of a Hugging Face decoder live: layers, attention, W_O, final norm, W_U.

One small adapter covers every model whose attention goes through transformers'
attention-function registry (GPT-2, Llama, Mistral, Qwen2, GPT-J, GPT-NeoX, ...). It only
reads module attributes; nothing in transformers is patched or copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import IclvizError

_LAYER_LISTS = ("layers", "h", "blocks")
_ATTENTION_NAMES = ("self_attn", "attn", "attention")
_OUT_PROJ_NAMES = ("o_proj", "out_proj", "c_proj", "dense")
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")


class UnsupportedArchitecture(IclvizError, ValueError):
    """The model's attention cannot be instrumented by iclviz."""


@dataclass
class Architecture:
    """Handles on one model's parts, by layer index."""

    layers: list[nn.Module]
    attentions: list[nn.Module]
    out_projs: list[nn.Module]
    final_norm: nn.Module
    unembed: nn.Module
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    positional: str  # "rotary", "absolute" or "none"
    rotary_layout: str = ""  # "rotate_half" (Llama, Qwen2, GPT-NeoX) or "interleaved" (GPT-J); "" without rotary

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def layer_of(self, attention_module: nn.Module) -> int:
        return self._index[id(attention_module)]

    def __post_init__(self):
        self._index = {id(m): i for i, m in enumerate(self.attentions)}

    def w_o(self, layer: int) -> torch.Tensor:
        """W_O of one layer as [n_heads, head_dim, d_model], so that z = v @ W_O[h] (a view, no copy)."""
        proj = self.out_projs[layer]
        weight = parameter(proj, "weight")
        if type(proj).__name__ == "Conv1D":  # GPT-2 stores [in, out]
            return weight.view(self.n_heads, self.head_dim, -1)
        return weight.view(-1, self.n_heads, self.head_dim).permute(1, 2, 0)  # nn.Linear stores [out, in]

    def o_bias(self, layer: int) -> torch.Tensor | None:
        return parameter(self.out_projs[layer], "bias")

    def unembed_matrix(self) -> torch.Tensor:
        return parameter(self.unembed, "weight")  # [vocab, d_model]

    def unembed_bias(self) -> torch.Tensor | None:
        return parameter(self.unembed, "bias")

    @property
    def can_remove_positional_score(self) -> bool:
        """Whether the positional part of a query-key score can be removed: rotate-half rotary
        positions only (absolute positions have none in the score; GPT-J's interleaved rotation
        is not supported)."""
        return self.positional == "rotary" and self.rotary_layout == "rotate_half"


def parameter(module: nn.Module, name: str) -> torch.Tensor | None:
    """``module.<name>``, read from accelerate's offload store when the model is offloaded.

    With ``device_map=... offload_folder=...`` an offloaded module's parameters stay on the
    ``meta`` device between calls; accelerate's hook (``module._hf_hook.weights_map``) holds
    the real tensor, which is returned on the module's execution device.
    """
    t = getattr(module, name, None)
    if t is None or t.device.type != "meta":
        return t
    hook = getattr(module, "_hf_hook", None)
    weights = getattr(hook, "weights_map", None)
    if weights is None:
        raise UnsupportedArchitecture(f"{type(module).__name__}.{name} is on the meta device with no offload store")
    real = weights[name]
    device = getattr(hook, "execution_device", None)
    return real.to(device) if device is not None else real


def _first_attr(obj, names):
    for n in names:
        m = getattr(obj, n, None)
        if m is not None:
            return n, m
    return None, None


def describe(model) -> Architecture:
    """Find layers, attention modules, output projections and the unembedding of ``model``."""
    base = model.base_model
    _, layers = _first_attr(base, _LAYER_LISTS)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UnsupportedArchitecture(f"{type(model).__name__}: no list of decoder layers found")
    attentions, out_projs = [], []
    for layer in layers:
        _, attn = _first_attr(layer, _ATTENTION_NAMES)
        if attn is None:
            raise UnsupportedArchitecture(f"{type(layer).__name__}: no attention module found")
        _, proj = _first_attr(attn, _OUT_PROJ_NAMES)
        if proj is None or not hasattr(proj, "weight"):
            raise UnsupportedArchitecture(f"{type(attn).__name__}: no output projection found")
        attentions.append(attn)
        out_projs.append(proj)
    _, norm = _first_attr(base, _FINAL_NORM_NAMES)
    unembed = model.get_output_embeddings()
    if norm is None or unembed is None:
        raise UnsupportedArchitecture(f"{type(model).__name__}: no final norm or unembedding found")
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    proj = out_projs[0]
    in_features = proj.weight.shape[0] if type(proj).__name__ == "Conv1D" else proj.weight.shape[1]
    if in_features % n_heads:
        raise UnsupportedArchitecture("the output projection's width is not a multiple of the head count")
    head_dim = in_features // n_heads
    d_model = cfg.hidden_size
    if hasattr(base, "rotary_emb") or getattr(cfg, "rotary_dim", None) or getattr(cfg, "rotary_pct", None):
        positional = "rotary"
    elif hasattr(base, "wpe") or hasattr(base, "embed_positions"):
        positional = "absolute"
    else:
        positional = "none"
    return Architecture(
        layers=list(layers),
        attentions=attentions,
        out_projs=out_projs,
        final_norm=norm,
        unembed=unembed,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_model=d_model,
        positional=positional,
        rotary_layout=("interleaved" if model.config.model_type == "gptj" else "rotate_half")
        if positional == "rotary" else "",
    )
