"""Label swap: the same prompt with the demonstrations' labels swapped.

The paper's finding 3 (arXiv 2402.02872): the prediction follows the swap, the value-output vectors still map
foo positions to foo and bar positions to bar, and the in-context heads' attention from T
moves between the foo and the bar positions.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..data import sample_demonstrations
from ..engine.lens import project
from ..engine.models import LoadedModel
from ..prompt import BuiltPrompt
from ..validation import head_name
from .evaluation import EvalSetup, Progress, prompt_batches
from .heads import DEFAULT_SCALING


@torch.no_grad()
def _per_head(lm: LoadedModel, prompts: list[BuiltPrompt], heads, scaling, gold: list[str]) -> pd.DataFrame:
    """Rows per (prompt, head): attention mass on each label's positions, VO sign agreement."""
    res = lm.run(prompts, capture=True, value_heads=[tuple(h) for h in heads])
    cap = res.capture
    words = prompts[0].label_words
    ids = prompts[0].label_token_id_list()
    rows = []
    for b, p in enumerate(prompts):
        attn = cap.attention_at(b, p.label_positions)  # [L, H, P]
        for layer, head in heads:
            z = cap.values(layer, head)[b]  # [P, D]
            lg = project(lm.arch, z[None], cap.resid_final[b:b + 1], scaling, token_ids=ids)[0]  # [P, K]
            own = torch.tensor([words.index(w) for w in p.demo_labels])
            agrees = (lg.argmax(-1) == own).float().mean()
            row = {"prompt": b, "layer": layer, "head": head, "head_name": head_name((layer, head)),
                   "pred": words[int(res.predictions[b])], "gold_word": gold[b],
                   "vo_agrees_with_label": float(agrees),
                   "vo_logit_minus_first": float((lg[:, 0] - lg[:, 1])[own == 0].mean()) if (own == 0).any()
                   else float("nan"),
                   "vo_logit_minus_second": float((lg[:, 0] - lg[:, 1])[own == 1].mean()) if (own == 1).any()
                   else float("nan")}
            for k, w in enumerate(words):
                row[f"attn_{w}"] = float(attn[layer, head][own == k].sum())
            row["attn_gold_word"] = row[f"attn_{gold[b]}"]
            rows.append(row)
    return pd.DataFrame(rows)


def swapped_demos(demos: list[tuple[str, int]], n_labels: int) -> list[tuple[str, int]]:
    return [(t, (y + 1) % n_labels) for t, y in demos]


def label_swap_table(lm: LoadedModel, setup: EvalSetup, heads, scaling: str = DEFAULT_SCALING, batch_size: int = 8,
                     progress: Progress | None = None) -> pd.DataFrame:
    """Per (prompt, head, condition) rows over the setup's prompts, original and swapped."""
    words = setup.words()
    frames = []
    for cond in ("original", "swapped"):
        def demos_for_seed(seed, cond=cond):
            demos = sample_demonstrations(setup.dataset, setup.k_per_label, seed, setup.order)
            return demos if cond == "original" else swapped_demos(demos, len(words))

        for seed, start, batch, gold in prompt_batches(lm, setup, batch_size, progress, f"label swap, {cond}",
                                                       demos_for_seed):
            df = _per_head(lm, batch, heads, scaling, [words[y] for y in gold])
            df["prompt"] += start
            df["seed"] = seed
            df["condition"] = cond
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


def summarize_label_swap(table: pd.DataFrame) -> pd.DataFrame:
    """Per head and condition: attention on the gold word's positions, VO agreement, and how
    often the prediction is the gold word (original) or the swapped word."""
    t = table.assign(pred_is_gold_word=table["pred"] == table["gold_word"])
    out = t.groupby(["head_name", "condition"], sort=False).agg(
        attn_gold_word=("attn_gold_word", "mean"), vo_agrees_with_label=("vo_agrees_with_label", "mean"),
        vo_logit_minus_first=("vo_logit_minus_first", "mean"),
        vo_logit_minus_second=("vo_logit_minus_second", "mean"),
        pred_is_gold_word=("pred_is_gold_word", "mean"), prompts=("prompt", "size")).reset_index()
    return out


def label_swap_one(lm: LoadedModel, demos, query: str, label_words, template, heads,
                   scaling: str = DEFAULT_SCALING) -> pd.DataFrame:
    """Before/after table for one prompt (demos as (text, label_word))."""
    from ..prompt import build_prompt, swap_labels

    orig = build_prompt(lm.tokenizer, demos, query, label_words, template, max_tokens=lm.context_length)
    swap = build_prompt(lm.tokenizer, swap_labels(demos, label_words), query, label_words, template,
                        max_tokens=lm.context_length)
    frames = []
    for cond, p in (("original", orig), ("swapped", swap)):
        df = _per_head(lm, [p], heads, scaling, [label_words[0]])
        df["condition"] = cond
        frames.append(df)
    return pd.concat(frames, ignore_index=True).drop(columns=["gold_word", "attn_gold_word", "prompt"])
