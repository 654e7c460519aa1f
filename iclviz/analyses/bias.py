"""Majority-label and recency bias, and their mitigations inside the in-context heads.

- Majority bias (the paper's finding 5 and metric, arXiv 2402.02872): accuracy with balanced
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
from scipy import stats

from ..engine.interventions import Plan
from ..engine.models import LoadedModel
from ..errors import Cancelled
from ..stats import unit_bootstrap
from .evaluation import EvalSetup, Progress, evaluate
from .heads import layers_of, random_heads


def reduction(bias: float, bias_fixed: float) -> float:
    return float("nan") if not bias > 0 else 1.0 - bias_fixed / bias


@dataclass
class BiasResult:
    kind: str
    rows: pd.DataFrame  # one row per condition x arrangement
    summary: pd.DataFrame  # per condition: bias, and reduction against no fix
    notes: list[str] = field(default_factory=list)
    prompts: pd.DataFrame | None = None  # per prompt: condition, arrangement/order, seed, index, correct, margin
    _intervals: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    def reduction(self, condition: str = "fix in-context heads") -> float:
        s = self.summary.set_index("condition")
        return float(s.loc[condition, "reduction"]) if condition in s.index else float("nan")

    def intervals(self, **kwargs) -> pd.DataFrame:
        """Paired bootstrap intervals over the test prompts (``bias_intervals``); with the default settings
        computed once per result (a page that shows the result reruns often; the resamples take ~0.3 s)."""
        if kwargs:
            return bias_intervals(self.kind, self.prompts, **kwargs)
        if self._intervals is None:
            self._intervals = bias_intervals(self.kind, self.prompts)
        return self._intervals


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
    rows, per_prompt = [], []
    total = len(arrangements) * len(conds)
    step = 0
    for arr, drop in arrangements:
        s = setup if drop is None else replace(setup, demo_transform=_drop_one(drop))
        for cname, plan in conds:
            res = evaluate(lm, s, plan, batch_size=batch_size)
            per_prompt.append(_prompt_rows(res, cname, "arrangement", arr))
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
    return BiasResult("majority", df, summary, prompts=pd.concat(per_prompt, ignore_index=True))


def demonstration_orders(n_labels: int, n_random: int = 3, seed: int = 0) -> list[tuple[str, object]]:
    """Order names and keys: every all-of-one-label-last order plus seeded shuffles."""
    orders: list[tuple[str, object]] = [(f"label {k} last", ("last", k)) for k in range(n_labels)]
    orders += [(f"shuffle {i}", ("shuffle", seed * 1000 + i)) for i in range(n_random)]
    return orders


def reorder_transform(key):
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
    rows, per_prompt = [], []
    total = len(orders) * len(conds)
    step = 0
    for oname, key in orders:
        s = replace(setup, demo_transform=reorder_transform(key))
        for cname, plan in conds:
            res = evaluate(lm, s, plan, batch_size=batch_size)
            per_prompt.append(_prompt_rows(res, cname, "order", oname))
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
    return BiasResult("recency", df, summary, notes, prompts=pd.concat(per_prompt, ignore_index=True))


def _prompt_rows(res, condition: str, column: str, value: str) -> pd.DataFrame:
    """One evaluation's per-prompt outcomes, keyed by the test prompt (seed, index) for pairing."""
    r = res.rows[["seed", "index", "correct", "margin", "pred"]].copy()
    r.insert(0, column, value)
    r.insert(0, "condition", condition)
    return r


def _bias_statistic(kind: str):
    """The bias of every condition from accuracies ``acc`` [condition, arrangement] (the paper's metrics)."""
    if kind == "majority":  # arrangement 0 is balanced, the others one fewer of a label
        return lambda acc: acc[:, 0] - acc[:, 1:].mean(1)
    return lambda acc: acc.std(1)  # recency: spread of accuracy over orders (ddof 0)


def bias_intervals(kind: str, prompts: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """Each condition's bias with a bootstrap interval over test prompts, and for each fix its drop
    (``bias without fix - bias with it``, in the units of the bias) and relative reduction, with intervals;
    for the in-context heads' fix, also how much more it removes than the random heads' fix
    (``beyond_random``: ``bias with random fix - bias with in-context fix``). ``kind``: "majority" or
    "recency"; ``prompts``: ``BiasResult.prompts``.

    Every arrangement (or order) and condition is evaluated on the same test prompts, so a resample
    draws prompts (seed, index) with replacement and recomputes every condition's bias on them: the
    intervals are paired. scipy's percentile bootstrap; the relative reduction's interval is NaN when
    resamples leave no bias to reduce. ``p_no_bias``: a permutation test (scipy, one-sided) of whether
    there is a bias at all, which a bootstrap interval cannot say for the recency bias (a spread over
    orders is positive from sampling noise alone).
    """
    p = prompts
    if p is None or p.empty:
        raise ValueError("no per-prompt outcomes (a bias result computed before they were kept)")
    column = "arrangement" if kind == "majority" else "order"
    conds = list(dict.fromkeys(p["condition"]))
    arrs = list(dict.fromkeys(p[column]))
    keys = sorted(set(zip(p["seed"], p["index"])))
    at = {k: i for i, k in enumerate(keys)}
    correct = np.full((len(conds), len(arrs), len(keys)), np.nan)
    for c, a, s, i, ok in zip(p["condition"], p[column], p["seed"], p["index"], p["correct"]):
        correct[conds.index(c), arrs.index(a), at[(s, i)]] = float(ok)
    if np.isnan(correct).any():
        raise ValueError("every condition and arrangement needs the same test prompts")
    bias_of = _bias_statistic(kind)
    base = conds.index("no fix")
    fixes = [j for j in range(len(conds)) if j != base]
    control = (conds.index("fix in-context heads"), conds.index("fix random heads")) \
        if {"fix in-context heads", "fix random heads"} <= set(conds) else None

    def statistics(idx):
        """[biases..., drops..., reductions..., beyond random] of the prompts ``idx``."""
        b = bias_of(correct[:, :, idx].mean(-1))
        extra = [b[control[1]] - b[control[0]]] if control else []
        return np.concatenate([b, b[base] - b[fixes], [reduction(b[base], b[j]) for j in fixes], extra])

    def no_bias_p(j):
        """Permutation test of "the arrangement does not matter": each prompt's outcomes are shuffled
        among the arrangements (orders), which keeps the prompts' difficulty and breaks any bias."""
        res = stats.permutation_test(tuple(correct[j]), lambda *a: float(bias_of(np.array([[x.mean() for x in a]]))[0]),
                                     permutation_type="samples", alternative="greater", vectorized=False,
                                     n_resamples=n_resamples, rng=np.random.default_rng(seed))
        return float(res.pvalue)

    est = statistics(np.arange(len(keys)))
    lo, hi = unit_bootstrap(len(keys), statistics, confidence, n_resamples, seed)
    C, F = len(conds), len(fixes)

    def entry(i):
        return float(est[i]), float(lo[i]), float(hi[i])

    rows = []
    for j, c in enumerate(conds):
        row = {"condition": c}
        row["bias"], row["bias_low"], row["bias_high"] = entry(j)
        row["p_no_bias"] = no_bias_p(j)
        if j != base:
            f = fixes.index(j)
            row["drop"], row["drop_low"], row["drop_high"] = entry(C + f)
            row["reduction"], row["reduction_low"], row["reduction_high"] = entry(C + F + f)
        if control and j == control[0]:
            row["beyond_random"], row["beyond_random_low"], row["beyond_random_high"] = entry(C + 2 * F)
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(prompts=len(keys), confidence=confidence, resamples=n_resamples)
    return out
