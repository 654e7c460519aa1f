"""Majority-label and recency bias, and their mitigations inside the in-context heads.

- Majority bias (PAPER.md finding 5, the paper's metric): accuracy with balanced
  demonstrations minus accuracy with one fewer demonstration of a label (averaged over the
  label removed), beside the prediction shift towards the majority label. Mitigation
  (``majority_fix``): in the in-context heads, attention at label c's positions is
  multiplied by N / (K n_c), so each label gets the attention share it would get if the
  demonstrations were balanced (identity when they are).
- Recency bias (finding 6, the paper's metric): the standard deviation of accuracy over
  demonstration orders of one demonstration set, the orders including every
  all-of-one-label-last order. Mitigation (``remove_positional_score``): in the in-context heads, the
  query-key score at label positions is computed without its positional part (rotary
  models; refused with a message for absolute positions).
Each mitigation is also applied to as many random heads of the same layers (the control).
The reduction is ``1 - bias_with_fix / bias_without_fix``; it is reported as NaN when the
bias without the fix is not positive (nothing to reduce).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .evaluation import Cancelled, EvalSetup, Progress, evaluate
from .heads import layers_of, random_heads
from .interventions import Plan
from .models import LoadedModel


def reduction(bias: float, bias_fixed: float) -> float:
    return float("nan") if not bias > 0 else 1.0 - bias_fixed / bias


@dataclass
class BiasResult:
    kind: str
    rows: pd.DataFrame  # one row per condition x arrangement
    summary: pd.DataFrame  # per condition: bias, and reduction against no fix
    notes: list[str] = field(default_factory=list)

    def reduction(self, condition: str = "fix in-context heads") -> float:
        s = self.summary.set_index("condition")
        return float(s.loc[condition, "reduction"]) if condition in s.index else float("nan")


def _drop_one(label: int):
    def transform(demos, seed):
        idx = [i for i, (_, y) in enumerate(demos) if y == label]
        drop = random.Random(seed).choice(idx)
        return [d for i, d in enumerate(demos) if i != drop]
    return transform


def _conditions(lm, heads, kind, seed):
    heads = tuple(tuple(h) for h in heads)
    rnd = tuple(random_heads(len(heads), layers_of(heads), lm.n_heads, seed=seed, exclude=heads))
    return [("no fix", Plan()), ("fix in-context heads", Plan(kind, heads)), ("fix random heads", Plan(kind, rnd))]


def majority_bias(lm: LoadedModel, setup: EvalSetup, heads, batch_size: int = 8, seed: int = 0,
                  progress: Progress | None = None) -> BiasResult:
    """Balanced vs one-fewer-of-a-label demonstrations, with and without the fix."""
    words = setup.words()
    arrangements = [("balanced", None)] + [(f"one fewer {w}", k) for k, w in enumerate(words)]
    conds = _conditions(lm, heads, "majority_fix", seed)
    rows = []
    total = len(arrangements) * len(conds)
    step = 0
    for arr, drop in arrangements:
        s = setup if drop is None else replace(setup, demo_transform=_drop_one(drop))
        for cname, plan in conds:
            res = evaluate(lm, s, plan, batch_size=batch_size)
            share = res.prediction_share()
            minority = None if drop is None else words[drop]
            row = {"condition": cname, "arrangement": arr, "accuracy": res.accuracy, "n": res.n,
                   **{f"share_{w}": v for w, v in share.items()}}
            row["minority_share"] = share[minority] if minority else float("nan")
            rows.append(row)
            step += 1
            if progress is not None and progress(step, total, f"{arr}, {cname}") is False:
                raise Cancelled("stopped")
    df = pd.DataFrame(rows)
    summ = []
    for cname, _ in conds:
        d = df[df.condition == cname]
        bal = d[d.arrangement == "balanced"].iloc[0]
        unb = d[d.arrangement != "balanced"]
        bias = float(bal.accuracy - unb.accuracy.mean())
        # prediction shift: how much less often the minority label is predicted than when balanced
        shift = float(np.mean([bal[f"share_{w}"] - r.minority_share for w, (_, r) in
                               zip(words, unb.iterrows())]))
        summ.append({"condition": cname, "acc_balanced": float(bal.accuracy),
                     "acc_one_fewer": float(unb.accuracy.mean()), "bias": bias, "prediction_shift": shift})
    summary = pd.DataFrame(summ)
    base = summary.set_index("condition").loc["no fix"]
    summary["reduction"] = [reduction(base.bias, b) for b in summary.bias]
    summary["shift_reduction"] = [reduction(base.prediction_shift, b) for b in summary.prediction_shift]
    return BiasResult("majority", df, summary)


def demonstration_orders(n_labels: int, n_random: int = 3, seed: int = 0) -> list[tuple[str, object]]:
    """Order names and keys: every all-of-one-label-last order plus seeded shuffles."""
    orders: list[tuple[str, object]] = [(f"label {k} last", ("last", k)) for k in range(n_labels)]
    orders += [(f"shuffle {i}", ("shuffle", seed * 1000 + i)) for i in range(n_random)]
    return orders


def _reorder(key):
    how, arg = key

    def transform(demos, seed):
        if how == "last":
            return [d for d in demos if d[1] != arg] + [d for d in demos if d[1] == arg]
        out = list(demos)
        random.Random(arg + seed).shuffle(out)
        return out
    return transform


def _layout(lm: LoadedModel) -> str:
    return f" ({lm.arch.rotary_layout.replace('_', '-')})" if lm.arch.rotary_layout else ""


def recency_bias(lm: LoadedModel, setup: EvalSetup, heads, n_random_orders: int = 3, batch_size: int = 8,
                 seed: int = 0, progress: Progress | None = None) -> BiasResult:
    """Accuracy over demonstration orders, with and without removing the positional score."""
    notes = []
    if not lm.can_remove_positional_score:
        notes.append(f"{lm.name} has {lm.arch.positional} positions{_layout(lm)}: the recency fix needs rotate-half "
                     "rotary positions; only the bias is measured")
    words = setup.words()
    orders = demonstration_orders(len(words), n_random_orders, seed)
    conds = _conditions(lm, heads, "remove_positional_score", seed)
    if notes:
        conds = conds[:1]
    rows = []
    total = len(orders) * len(conds)
    step = 0
    for oname, key in orders:
        s = replace(setup, demo_transform=_reorder(key))
        for cname, plan in conds:
            res = evaluate(lm, s, plan, batch_size=batch_size)
            rows.append({"condition": cname, "order": oname, "accuracy": res.accuracy, "n": res.n,
                         **{f"share_{w}": v for w, v in res.prediction_share().items()}})
            step += 1
            if progress is not None and progress(step, total, f"{oname}, {cname}") is False:
                raise Cancelled("stopped")
    df = pd.DataFrame(rows)
    summary = df.groupby("condition", sort=False).agg(bias=("accuracy", lambda a: float(np.std(a, ddof=0))),
                                                      mean_accuracy=("accuracy", "mean"),
                                                      orders=("accuracy", "size")).reset_index()
    base = float(summary.set_index("condition").loc["no fix", "bias"])
    summary["reduction"] = [reduction(base, b) for b in summary.bias]
    return BiasResult("recency", df, summary, notes)
