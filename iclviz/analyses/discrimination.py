"""Does the model still tell the classes apart? Discrimination beside accuracy, and a head's effect
split into the part that follows the demonstrations and a constant vote for one label.

Accuracy reads the sign of the margin. A head that pushes every prompt toward one label (a shift of
the label prior) moves accuracy although the model separates the classes exactly as well as before.
So every comparison here reads the whole distribution of the label logits over a label-balanced set:

- **AUC**: two labels: the margin ``m = logit(first) - logit(second)`` scored against "gold is the
  first label" (threshold-free, Mann-Whitney); more labels: the mean one-vs-rest AUC of each label's
  logit minus the mean label logit of that prompt.
- **Recentred accuracy** (contextual calibration): two labels: ``m`` thresholded at its median over
  the set; more labels: each label's centred logit minus its median over the set, then the argmax.
  On a label-balanced set a pure prior shift leaves it unchanged.
- **Mean margin**: the mean of ``m`` (positive: toward the first label). A prior shift moves it.

Prompts built on different demonstration sets (seeds) have different label priors: one set may push every
margin toward foo, another toward bar. Pooled over sets, the AUC would read that difference between sets (a
prior) as if it were the query deciding the label. So where the prompts come from several demonstration sets
(``groups``), the AUC is computed within each set and averaged (weighted by the set's size), and the recentred
accuracy recentres each set at its own median.

One sign convention everywhere: a margin is ``logit(first label) - logit(second)``, and a change is
*after minus before*. A head's *support* for the gold label is the drop of the gold margin when the
head is knocked out (before minus after): positive means the head helps the right answer.

The split of a head's support (two labels; more labels: each label's deviation from the mean):

- **in-context part**: the label-balanced mean support (the mean over labels of the support on that
  label's prompts). It helps whichever label is gold, so it follows the demonstrations and the query.
- **prior part**: what remains on each label's prompts, the same whatever the query: a constant vote,
  with a sign (toward which label). For two labels ``(support_first - support_second) / 2``.

On one prompt, the label swap tells the two apart: the change of ``m`` that flips sign when every
demonstration's label is swapped follows the demonstrations; the change that stays is a vote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..stats import unit_bootstrap

MEASURES = ("accuracy", "recentred_accuracy", "auc", "mean_margin")
MEASURE_TEXT = {
    "accuracy": "accuracy",
    "recentred_accuracy": "recentred accuracy",
    "auc": "AUC",
    "mean_margin": "mean margin",
}


def auc(scores, positive) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` units (ties count one half);
    NaN when either class is empty."""
    s = np.asarray(scores, dtype=float)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def first_margin(logits) -> np.ndarray:
    """``logit(first label) - logit(second)`` of ``[..., K]`` label logits."""
    lg = np.asarray(logits, dtype=float)
    return lg[..., 0] - lg[..., 1]


def _centred(logits: np.ndarray) -> np.ndarray:
    return logits - logits.mean(-1, keepdims=True)


def label_auc(logits, gold) -> float:
    """AUC of the label logits ``[N, K]`` against the gold labels (one-vs-rest mean for K > 2)."""
    lg = np.asarray(logits, dtype=float)
    g = np.asarray(gold)
    if lg.shape[-1] == 2:
        return auc(first_margin(lg), g == 0)
    c = _centred(lg)
    vals = [auc(c[:, k], g == k) for k in range(lg.shape[-1])]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def recentred_predictions(logits, groups=None) -> np.ndarray:
    """Predictions after removing the set's label prior (contextual calibration), ``[N]``; with ``groups``,
    each group (demonstration set) is recentred at its own median."""
    lg = np.asarray(logits, dtype=float)
    if groups is not None:
        gr = np.asarray(groups)
        out = np.zeros(len(lg), dtype=int)
        for v in np.unique(gr):
            sel = gr == v
            out[sel] = recentred_predictions(lg[sel])
        return out
    if lg.shape[-1] == 2:
        m = first_margin(lg)
        return np.where(m > np.median(m), 0, 1)
    c = _centred(lg)
    return (c - np.median(c, axis=0, keepdims=True)).argmax(-1)


def grouped_auc(logits, gold, groups=None) -> float:
    """:func:`label_auc` within each group (demonstration set), averaged weighted by the groups' sizes (groups
    where it is undefined, one class only, are left out); without groups, over all prompts."""
    lg = np.asarray(logits, dtype=float)
    g = np.asarray(gold)
    if groups is None:
        return label_auc(lg, g)
    gr = np.asarray(groups)
    vals, weights = [], []
    for v in np.unique(gr):
        sel = gr == v
        a = label_auc(lg[sel], g[sel])
        if math.isfinite(a):
            vals.append(a)
            weights.append(int(sel.sum()))
    return float(np.average(vals, weights=weights)) if vals else float("nan")


def seed_groups(n_prompts: int, seeds, n_per_seed: int) -> np.ndarray | None:
    """The demonstration set of each prompt of a run over ``seeds`` with ``n_per_seed`` prompts each (the
    order every evaluation here uses: seed by seed); None for one seed or when the counts do not match."""
    seeds = list(seeds or [])
    if len(seeds) < 2 or n_prompts != len(seeds) * int(n_per_seed):
        return None
    return np.repeat(np.arange(len(seeds)), int(n_per_seed))


def measures(logits, gold, groups=None) -> dict:
    """Accuracy, recentred accuracy, AUC and mean margin of label logits ``[N, K]`` (``groups``: the prompts'
    demonstration sets, for the AUC and the recentring)."""
    lg = np.asarray(logits, dtype=float)
    g = np.asarray(gold)
    if len(g) == 0:
        return {k: float("nan") for k in MEASURES} | {"n": 0}
    return {"accuracy": float((lg.argmax(-1) == g).mean()),
            "recentred_accuracy": float((recentred_predictions(lg, groups) == g).mean()),
            "auc": grouped_auc(lg, g, groups), "mean_margin": float(first_margin(lg).mean()), "n": len(g)}


def measures_table(logits, gold, names=None, groups=None) -> pd.DataFrame:
    """One row of :func:`measures` per condition of ``[N, R, K]`` logits."""
    lg = np.asarray(logits, dtype=float)
    names = list(names) if names is not None else [str(r) for r in range(lg.shape[1])]
    return pd.DataFrame([{"condition": names[r], **measures(lg[:, r], gold, groups)} for r in range(lg.shape[1])])


def _measure_vector(lg: np.ndarray, g: np.ndarray, groups=None) -> np.ndarray:
    m = measures(lg, g, groups)
    return np.array([m[k] for k in MEASURES])


@dataclass
class Change:
    """Every measure before (row ``a``) and after (row ``b``) on the same prompts, the change
    (after minus before) and its paired bootstrap interval (prompts resampled)."""

    before: dict
    after: dict
    change: dict
    low: dict
    high: dict
    n: int
    label_words: tuple[str, ...]

    def separable(self, measure: str) -> bool:
        """The change's interval excludes zero."""
        lo, hi = self.low[measure], self.high[measure]
        return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)

    def as_row(self) -> dict:
        row = {}
        for k in MEASURES:
            row[f"{k} before"] = self.before[k]
            row[f"{k} after"] = self.after[k]
            row[f"{k} change"] = self.change[k]
            row[f"{k} low"] = self.low[k]
            row[f"{k} high"] = self.high[k]
        return row | {"n": self.n}


def paired_change(logits, gold, a: int = 0, b: int = 1, label_words=("foo", "bar"), confidence: float = 0.95,
                  n_resamples: int = 1000, seed: int = 0, groups=None) -> Change:
    """The measures of condition ``b`` against ``a`` (columns of ``[N, R, K]`` logits) on the same prompts
    (``groups``: their demonstration sets; a resample keeps each prompt's set)."""
    lg = np.asarray(logits, dtype=float)
    g = np.asarray(gold)
    gr = np.asarray(groups) if groups is not None else None
    la, lb = lg[:, a], lg[:, b]
    before, after = measures(la, g, gr), measures(lb, g, gr)
    change = {k: after[k] - before[k] for k in MEASURES}

    def stat(idx):
        sub = gr[idx] if gr is not None else None
        return _measure_vector(lb[idx], g[idx], sub) - _measure_vector(la[idx], g[idx], sub)

    if len(g) >= 4:
        lo, hi = unit_bootstrap(len(g), stat, confidence=confidence, n_resamples=n_resamples, seed=seed)
    else:
        lo = hi = np.full(len(MEASURES), np.nan)
    return Change(before, after, change, dict(zip(MEASURES, lo.tolist())), dict(zip(MEASURES, hi.tolist())), len(g),
                  tuple(label_words))


def reading(c: Change) -> str:
    """One sentence that says what an intervention did, read from the intervals of ``c``:
    in-context reading lost (the AUC falls), a prior shift (accuracy or the mean margin moves while
    the AUC does not), or no measurable change."""
    words = c.label_words
    auc_text = f"AUC {c.before['auc']:.3f} -> {c.after['auc']:.3f}"
    acc_text = f"accuracy {c.before['accuracy']:.1%} -> {c.after['accuracy']:.1%}"
    toward = words[0] if c.change["mean_margin"] > 0 else words[1]
    shift = (f"every prediction moved toward {toward} (mean margin {c.before['mean_margin']:+.2f} -> "
             f"{c.after['mean_margin']:+.2f})")
    if c.separable("auc") and c.change["auc"] < 0:
        tail = f"; {shift}" if c.separable("mean_margin") else ""
        return f"the query no longer decides the label as well: in-context reading lost ({auc_text}, {acc_text}{tail})"
    if c.separable("auc") and c.change["auc"] > 0:
        return f"the classes are told apart better than before ({auc_text}, {acc_text})"
    if c.separable("mean_margin") or c.separable("accuracy"):
        return f"the classes stay apart ({auc_text}); {shift}: a prior shift ({acc_text})"
    return f"no measurable change ({auc_text}, {acc_text}, n = {c.n})"


# ---------------------------------------------------------------- a head's support, split in two

def split_support(support_by_label: dict[str, float]) -> dict:
    """``{label: mean support on that label's prompts}`` -> the in-context part (label-balanced mean),
    the prior part (the largest deviation from it, >= 0) and the label it votes for; for two labels
    also ``prior_first`` (signed: positive = toward the first label)."""
    words = list(support_by_label)
    vals = np.array([support_by_label[w] for w in words], dtype=float)
    ok = np.isfinite(vals)
    if not ok.any():
        return {"context": float("nan"), "prior": float("nan"), "prior_toward": "", "prior_first": float("nan")}
    context = float(vals[ok].mean())
    dev = np.where(ok, vals - context, -np.inf)
    k = int(dev.argmax())
    out = {"context": context, "prior": float(dev[k]), "prior_toward": words[k]}
    out["prior_first"] = float((vals[0] - vals[1]) / 2) if len(vals) == 2 and ok.all() else float("nan")
    return out


def support_by_label(drop, gold, label_words) -> dict[str, float]:
    """Mean of per-prompt gold-margin drops ``[N]`` on each gold label's prompts."""
    d = np.asarray(drop, dtype=float)
    g = np.asarray(gold)
    return {w: float(d[g == k].mean()) if (g == k).any() else float("nan") for k, w in enumerate(label_words)}


def swap_split(change_original: float, change_swapped: float) -> dict:
    """One prompt: the change of ``m`` under an intervention on the prompt and on its label-swapped
    twin -> the part that flips with the labels (in-context) and the part that stays (prior);
    they add up to the change on the original prompt."""
    return {"change": float(change_original), "context": (change_original - change_swapped) / 2,
            "prior": (change_original + change_swapped) / 2}


def swap_reading(split: dict, label_words=("foo", "bar"), tolerance: float = 0.05) -> str:
    """One sentence for :func:`swap_split`: which part dominates the change of the margin."""
    ctx, prior, ch = split["context"], split["prior"], split["change"]
    if abs(ch) < tolerance and abs(ctx) < tolerance and abs(prior) < tolerance:
        return "the margin barely moves: these heads do little on this prompt"
    toward = label_words[0] if prior > 0 else label_words[1]
    if abs(ctx) >= abs(prior):
        return (f"mostly in-context reading: {ctx:+.2f} of the margin's change {ch:+.2f} flips with the "
                f"demonstrations' labels, {prior:+.2f} is a constant vote")
    return (f"mostly a prior shift: {prior:+.2f} of the margin's change {ch:+.2f} pushes toward {toward} whatever "
            f"the labels say, {ctx:+.2f} follows the demonstrations")
