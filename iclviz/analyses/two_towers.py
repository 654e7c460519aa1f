"""Two towers: the query-key score at each label position against query-demonstration similarity.

The paper's finding 4 (arXiv 2402.02872). Similarity is defined here as the cosine between the mean residual
stream over the query sentence's tokens and the mean over a demonstration sentence's
tokens, entering a shallow layer (``sim_layer``, default a quarter of the depth). The
score is the in-context head's pre-softmax ``q_T . k_p / sqrt(d)`` at the demonstration's
label position ``p``. Rank correlation (Spearman) is computed within each prompt across
its label positions and averaged; random heads from the same layers are the control.
"""

from __future__ import annotations

import pandas as pd
import torch
from scipy.stats import spearmanr

from ..engine.models import LoadedModel
from ..prompt import BuiltPrompt
from ..validation import head_name
from .evaluation import EvalSetup, Progress, prompt_batches


def default_sim_layer(n_layers: int) -> int:
    return max(1, n_layers // 4)


def sentence_similarity(hidden: torch.Tensor, prompt: BuiltPrompt, pad: int) -> torch.Tensor:
    """Cosine between the query's mean hidden state and each demonstration's, [n_demos]."""
    def mean(span):
        a, b = span
        return hidden[a + pad:b + pad].mean(0)

    q = mean(prompt.query_span)
    d = torch.stack([mean(s) for s in prompt.demo_spans])
    return torch.nn.functional.cosine_similarity(d, q[None], dim=-1)


@torch.no_grad()
def score_similarity_rows(lm: LoadedModel, prompts: list[BuiltPrompt], heads, sim_layer: int | None = None
                          ) -> pd.DataFrame:
    sim_layer = default_sim_layer(lm.n_layers) if sim_layer is None else sim_layer
    res = lm.run(prompts, capture=True, value_positions=None, hidden_layer=sim_layer)
    cap = res.capture
    rows = []
    for b, p in enumerate(prompts):
        sim = sentence_similarity(cap.hidden[b], p, int(cap.pad[b]))
        scores = cap.scores_at(b, p.label_positions)  # [L, H, P]
        attn = cap.attention_at(b, p.label_positions)
        for layer, head in heads:
            for i, pos in enumerate(p.label_positions):
                rows.append({"prompt": b, "layer": layer, "head": head, "head_name": head_name((layer, head)),
                             "demo": i + 1, "position": pos, "label": p.demo_labels[i],
                             "score": float(scores[layer, head, i]), "attention": float(attn[layer, head, i]),
                             "similarity": float(sim[i])})
    return pd.DataFrame(rows)


def score_similarity(lm: LoadedModel, prompt: BuiltPrompt, heads, sim_layer: int | None = None) -> pd.DataFrame:
    """Per head and label position of one prompt: score, attention and similarity."""
    return score_similarity_rows(lm, [prompt], heads, sim_layer).drop(columns=["prompt"])


def two_towers_table(lm: LoadedModel, setup: EvalSetup, heads, control_heads=(), sim_layer: int | None = None,
                     batch_size: int = 8, progress: Progress | None = None) -> pd.DataFrame:
    """Rows for every prompt, head (in-context and control) and label position."""
    frames = []
    groups = [("in-context", list(heads)), ("random", list(control_heads))]
    all_heads = [h for _, hs in groups for h in hs]
    group_of = {tuple(h): g for g, hs in groups for h in hs}
    for seed, start, batch, _ in prompt_batches(lm, setup, batch_size, progress, "two towers"):
        df = score_similarity_rows(lm, batch, all_heads, sim_layer)
        df["prompt"] += start
        df["seed"] = seed
        df["group"] = [group_of[(a, b)] for a, b in zip(df["layer"], df["head"])]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def rank_correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation of score vs similarity within each prompt, averaged per head."""
    per = []
    keys = ["seed", "prompt", "head_name"] if "seed" in table else ["prompt", "head_name"]
    for _, g in table.groupby(keys):
        if len(g) >= 3 and g["similarity"].nunique() > 1 and g["score"].nunique() > 1:
            rho = spearmanr(g["score"], g["similarity"]).statistic
            per.append({"head_name": g["head_name"].iloc[0], "group": g.get("group", pd.Series(["-"])).iloc[0],
                        "rho": float(rho)})
    df = pd.DataFrame(per)
    if df.empty:
        return df
    return df.groupby(["group", "head_name"]).agg(mean_rho=("rho", "mean"), sd=("rho", "std"),
                                                  prompts=("rho", "size")).reset_index()
