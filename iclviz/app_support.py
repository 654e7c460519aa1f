"""A full attention pass (a private eager copy of the model) for the Attention page's bertviz views.

No streamlit here.
"""

from __future__ import annotations

import copy
import threading
import weakref

import torch

from .prompt import BuiltPrompt

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
