"""Full attention matrices of chosen layers, from the same instrumented model (no second copy).

The registered attention function keeps every query row of the layers asked for
(``LoadedModel.run(..., full_rows_layers=...)``); the Attention page draws them with bertviz,
or, past a size where bertviz's view freezes the browser, as a plotly heatmap of the rows
of the chosen heads.
"""

from __future__ import annotations

import torch

from ..prompt import BuiltPrompt
from ..validation import ValidationError, check_layers, check_prompt_size

BERTVIZ_MAX_TOKENS = 160  # past this many tokens bertviz's views stop being responsive: offer a heatmap


@torch.no_grad()
def full_attention(lm, prompt: BuiltPrompt, layers, heads=None, max_tokens: int | None = None
                   ) -> dict[int, torch.Tensor]:
    """{layer: [len(heads), n, n]} attention probabilities of ``prompt`` in the chosen layers and heads.

    One pass of the shared model with its own attention function (never a copy of the model);
    every other readout of the pass stays at ``T`` only. A prompt longer than ``max_tokens`` is
    refused before the pass.
    """
    if max_tokens is not None:
        check_prompt_size(prompt.n_tokens, max_tokens, "the attention view's limit")
    layers = check_layers(layers, lm.n_layers)
    heads = list(range(lm.n_heads)) if heads is None else [int(h) for h in heads]
    if not heads or any(not 0 <= h < lm.n_heads for h in heads):
        raise ValidationError(f"heads must be between 0 and {lm.n_heads - 1}")
    cap = lm.run([prompt], capture=True, value_positions=None, full_rows_layers=tuple(layers)).capture
    idx = torch.tensor(heads)
    return {layer: cap.full_attn[layer][0].index_select(0, idx) for layer in layers}

