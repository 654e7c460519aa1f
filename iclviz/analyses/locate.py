"""Locating in-context heads over a dataset sample, and the intervention table against random heads."""

from __future__ import annotations

import pandas as pd
import torch

from ..engine.interventions import Plan
from ..engine.models import LoadedModel
from ..errors import Cancelled
from ..validation import head_name
from .evaluation import EvalSetup, Progress, evaluate, prompt_batches
from .heads import (
    DEFAULT_SCALING,
    HeadScan,
    default_layers,
    head_importance,
    layers_of,
    random_heads,
    summarize_importance,
)


def locate_heads(lm: LoadedModel, setup: EvalSetup, scaling: str = DEFAULT_SCALING, layers=None,
                 batch_size: int = 8, progress: Progress | None = None) -> HeadScan:
    """Per-head importance (gold label's log-probability increase), one pass per prompt batch."""
    layers = default_layers(lm.n_layers) if layers is None else list(layers)
    chunks, gold_all = [], []
    for _, _, batch, gold in prompt_batches(lm, setup, batch_size, progress, "locating heads"):
        res = lm.run(batch, capture=True, value_positions=None, importance=(scaling, layers))
        chunks.append(head_importance(lm.arch, res.capture, batch[0].label_token_id_list(), scaling, layers))
        gold_all += gold
    importance = torch.cat(chunks) if chunks else torch.zeros(0, lm.n_layers, lm.n_heads, len(setup.words()))
    return summarize_importance(importance, gold_all, setup.words(), scaling, layers)


def intervention_table(lm: LoadedModel, setup: EvalSetup, heads, kinds=("ablate", "knockout"), random_draws: int = 3,
                       seed: int = 0, batch_size: int = 8, progress: Progress | None = None) -> pd.DataFrame:
    """Accuracy with no intervention, with ``heads`` intervened, and with as many random heads
    from the same layers (``random_draws`` draws), for each kind."""
    heads = [tuple(h) for h in heads]
    layers = layers_of(heads)
    plans: list[tuple[str, int, Plan]] = [("none", -1, Plan())]
    for kind in kinds:
        plans.append(("in-context heads", -1, Plan(kind, tuple(heads))))
        for d in range(random_draws):
            rnd = random_heads(len(heads), layers, lm.n_heads, seed=seed + d, exclude=heads)
            plans.append(("random heads", d, Plan(kind, tuple(rnd))))
    rows = []
    total = len(plans)
    for i, (group, draw, plan) in enumerate(plans):
        res = evaluate(lm, setup, plan, batch_size=batch_size)
        s = res.summary()
        rows.append({"heads": group, "kind": plan.kind, "draw": draw, "n_heads": len(plan.heads),
                     "head_set": " ".join(map(head_name, plan.heads)), **{k: s[k] for k in (
                         "accuracy", "ci_low", "ci_high", "n")},
                     **{f"share_{w}": v for w, v in res.prediction_share().items()}})
        if progress is not None and progress(i + 1, total, plan.label()) is False:
            raise Cancelled(f"stopped after {i + 1} of {total} conditions")
    return pd.DataFrame(rows)


def summarize_interventions(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (heads, kind): accuracy mean (random draws averaged, with their sd)."""
    g = table.groupby(["heads", "kind"], sort=False)
    out = g.agg(accuracy=("accuracy", "mean"), draw_sd=("accuracy", "std"), draws=("accuracy", "size"),
                n=("n", "first")).reset_index()
    return out


def candidate_accuracy_drops(lm: LoadedModel, setup: EvalSetup, candidates, kind: str = "ablate", batch_size: int = 8,
                progress: Progress | None = None) -> pd.DataFrame:
    """Accuracy drop when each candidate head is intervened alone (rows of one batch: ``causal.py``)."""
    from ..engine.runs import RowEdit
    from .causal import outcomes, run_full_ablation, run_rows

    cands = [(int(a), int(b)) for a, b in candidates]
    if kind == "ablate":
        logits, gold = run_full_ablation(lm, setup, [[]] + [[h] for h in cands], chunk=batch_size,
                                         progress=progress, note="ablate each head")
    else:
        logits, gold = run_rows(lm, setup, [RowEdit()] + [RowEdit.of(kind, [h]) for h in cands],
                                progress=progress, note=f"{kind} each head")
    correct = outcomes(logits, gold)["correct"]
    base = float(correct[:, 0].mean())
    return pd.DataFrame([{"layer": h[0], "head": h[1], "kind": kind, "accuracy": float(correct[:, r + 1].mean()),
                          "drop": base - float(correct[:, r + 1].mean())} for r, h in enumerate(cands)])


def top_n_curve(lm: LoadedModel, setup: EvalSetup, ranked_heads, ns=(1, 2, 4, 8, 16), kind: str = "knockout",
                random_draws: int = 2, seed: int = 0, batch_size: int = 8, progress: Progress | None = None
                ) -> pd.DataFrame:
    """Accuracy with the top-n located heads intervened vs n random heads of the same layers."""
    rows = []
    steps = [(n, None) for n in ns] + [(n, d) for n in ns for d in range(random_draws)]
    for i, (n, d) in enumerate(steps):
        top = [tuple(h) for h in ranked_heads[:n]]
        heads = top if d is None else random_heads(n, layers_of(ranked_heads[:max(ns)]), lm.n_heads, seed + d,
                                                   exclude=top)
        acc = evaluate(lm, setup, Plan(kind, tuple(heads)), batch_size=batch_size).accuracy
        rows.append({"n": n, "heads": "top" if d is None else "random", "draw": -1 if d is None else d,
                     "kind": kind, "accuracy": acc})
        if progress is not None and progress(i + 1, len(steps), f"n={n}") is False:
            raise Cancelled("stopped")
    return pd.DataFrame(rows)
