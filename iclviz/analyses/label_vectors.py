"""Label vectors: what each in-context head's value-output vector at a label position says.

For head (l, h) and label position p_i: the attention ``A[l,h,T,p_i]``, the logit minus
(first label word minus second) of the unweighted ``z = v W_O^h`` and of the weighted
``A * z``, the rank of each label word in the projection of ``z`` (1 = top of the
vocabulary) and the top tokens.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..engine.capture import Capture
from ..engine.lens import project
from ..engine.models import LoadedModel
from ..prompt import BuiltPrompt
from ..validation import head_name
from .heads import DEFAULT_SCALING


@torch.no_grad()
def label_vector_table(lm: LoadedModel, prompt: BuiltPrompt, heads, scaling: str = DEFAULT_SCALING,
                       capture=None, top_k: int = 5, interventions=None) -> pd.DataFrame:
    """One row per (head, label position) of ``prompt``."""
    heads = [tuple(h) for h in heads]
    if not isinstance(capture, Capture) or not capture.has_values(heads):
        from ..engine.interventions import NONE

        capture = lm.run([prompt], interventions=interventions or NONE, capture=True, value_heads=heads).capture
    words = prompt.label_words
    ids = prompt.label_token_id_list()
    attn = capture.attention_at(0, prompt.label_positions)  # [L, H, P]
    rows = []
    for layer, head in heads:
        z = capture.values(layer, head)[0]  # [P, D]
        a = attn[layer, head]  # [P]
        logits = project(lm.arch, z[None], capture.resid_final[:1], scaling)[0]  # [P, V]
        weighted = project(lm.arch, (a[:, None] * z)[None], capture.resid_final[:1], scaling, token_ids=ids)[0]
        for i, (pos, label) in enumerate(zip(prompt.label_positions, prompt.demo_labels)):
            lg = logits[i]
            order = torch.topk(lg, top_k).indices  # no full sort of the vocabulary: a rank is a count

            def rank(t, lg=lg):
                return int((lg > lg[int(t)]).sum()) + 1

            row = {
                "layer": layer, "head": head, "head_name": head_name((layer, head)), "demo": i + 1, "position": pos,
                "label": label, "attention": float(a[i]),
                "logit_minus": float(lg[ids[0]] - lg[ids[1]]),
                "weighted_logit_minus": float(weighted[i, 0] - weighted[i, 1]),
                "own_label_rank": rank(prompt.label_token_ids[label]),
                "top_tokens": " | ".join(lm.tokenizer.decode([int(t)]) for t in order[:top_k]),
            }
            row.update({f"rank_{w}": rank(t) for w, t in zip(words, ids)})
            rows.append(row)
    return pd.DataFrame(rows)


def label_vector_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per head: attention mass per label, mean logit minus per label, share of positions whose
    own label word outranks the other label words."""
    if table.empty:
        return table
    rank_cols = [c for c in table.columns if c.startswith("rank_")]

    def own_first(r):
        own = r[f"rank_{r['label']}"]
        return all(own <= r[c] for c in rank_cols)

    t = table.assign(own_label_first=table.apply(own_first, axis=1))
    return t.groupby(["head_name", "label"], sort=False).agg(
        attention=("attention", "sum"), logit_minus=("logit_minus", "mean"),
        weighted_logit_minus=("weighted_logit_minus", "sum"), own_label_first=("own_label_first", "mean"),
        positions=("position", "size")).reset_index()
