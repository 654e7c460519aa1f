"""Heads that read the demonstrations, told apart from heads that vote for a label, and the paper's claim
judged on discrimination.

Rule ``context``: each head of the searched layers is knocked out alone (attention from ``T`` to the
label positions, ``causal.causal_scan``) on *location* prompts, and the heads are ranked by the
in-context part of their support for the gold label (``context_effect``: the label-balanced mean, see
``discrimination``). Label voters are listed apart, by their signed prior. The location prompts use the
``locate`` half of the test split and their own demonstration seed; every test uses the ``evaluate``
half and other seeds, so location never sees a test prompt.

How many heads: a top-k curve on the location prompts (the AUC with the top k knocked out, against
random sets of k heads of the searched layers). The rule, in :func:`choose_n_heads`: the smallest k
whose AUC lies below every random set of its size and whose AUC drop reaches at least half of the
largest drop on the curve. The app opens with that many.

The test (:func:`context_test`) runs every condition as rows of one batched run over the same held-out
prompts: no intervention, the top k for each k of a grid, other named head sets (label voters, the
logit-lens importance heads), and random sets of each size; the AUC, recentred accuracy, accuracy and
mean margin are read for each (``discrimination.measures``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..engine.interventions import Head
from ..engine.models import LoadedModel
from ..engine.runs import RowEdit
from ..stats import empirical_p
from ..validation import head_name
from .causal import CausalScan, causal_scan, run_rows
from .discrimination import MEASURES, Change, measures, measures_table, paired_change, seed_groups
from .evaluation import EvalSetup, Progress
from .heads import default_layers, random_heads

RULE = "context"
CURVE_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)
SHARES = (0.01, 0.02, 0.05)  # the paper intervenes on ~1% of heads; 2% and 5% beside it


def share_sizes(n_total_heads: int, shares=SHARES) -> dict[float, int]:
    """How many heads ``shares`` of a model's heads are (at least one)."""
    return {s: max(1, int(round(s * n_total_heads))) for s in shares}


def locate_context_heads(lm: LoadedModel, setup: EvalSetup, layers=None, chunk: int = 64,
                         progress: Progress | None = None) -> CausalScan:
    """The knockout scan of every head of ``layers`` on the location prompts of ``setup`` (rank it with
    :func:`context_ranking`)."""
    return causal_scan(lm, setup, layers=layers, kinds=("knockout",), chunk=chunk, progress=progress)


def context_ranking(scan: CausalScan) -> list[Head]:
    """Heads by their in-context support, best first (``context_effect``)."""
    return scan.top(len(scan.table), "knockout", by="context_effect")


def voter_ranking(scan: CausalScan) -> list[Head]:
    """Heads by the size of their constant vote for one label (``prior_effect``), largest first."""
    return scan.top(len(scan.table), "knockout", by="prior_effect")


def head_parts(scan: CausalScan, kind: str = "knockout") -> pd.DataFrame:
    """One row per scanned head: name, in-context support, prior (signed toward the first label for two
    labels) and the label it votes for; sorted by in-context support."""
    df = scan.ranked(kind, "context_effect").copy()
    df.insert(0, "name", [head_name(h) for h in zip(df.layer, df["head"])])
    cols = ["name", "layer", "head", "context_effect", "prior_effect", "prior_toward", "prior_first", "effect",
            "acc_drop"] + [c for c in df.columns if c.startswith("effect_")]
    return df[[c for c in cols if c in df.columns]].reset_index(drop=True)


# ---------------------------------------------------------------- the batched test

@dataclass
class ContextTest:
    """Label logits ``[N, R, K]`` of every held-out prompt under every named row.

    Row names: ``none``; ``top:<k>`` (the top k of ``ranking``); ``set:<name>`` for other head sets;
    ``random:<k>:<d>`` for the random draws of size k."""

    logits: torch.Tensor
    gold: list[int]
    names: list[str]
    ranking: list[Head]
    head_sets: dict[str, list[Head]]
    draws: dict[int, list[list[Head]]]
    label_words: tuple[str, ...]
    layers: list[int]
    meta: dict = field(default_factory=dict)

    def _col(self, name: str) -> int:
        return self.names.index(name)

    def heads_of(self, name: str) -> list[Head]:
        if name.startswith("top:"):
            return self.ranking[:int(name[4:])]
        if name.startswith("set:"):
            return self.head_sets[name[4:]]
        raise KeyError(name)

    def sizes(self) -> list[int]:
        return sorted(int(n[4:]) for n in self.names if n.startswith("top:"))

    @property
    def groups(self):
        """Each prompt's demonstration set (AUC within sets, ``discrimination.grouped_auc``), or None."""
        if self.meta.get("groups") is not None:
            return np.asarray(self.meta["groups"])
        return seed_groups(len(self.gold), self.meta.get("seeds"), self.meta.get("n_test", 0))

    def table(self) -> pd.DataFrame:
        """Every row's measures."""
        return measures_table(self.logits.double().numpy(), self.gold, self.names, self.groups)

    def null(self, k: int) -> pd.DataFrame:
        """The measures of every random draw of ``k`` heads."""
        cols = [self._col(f"random:{k}:{d}") for d in range(len(self.draws.get(k, [])))]
        lg = self.logits.double().numpy()
        gr = self.groups
        return pd.DataFrame([measures(lg[:, c], self.gold, gr) | {"draw": d} for d, c in enumerate(cols)])

    def change(self, name: str, n_resamples: int = 1000) -> Change:
        """Paired change (after minus before) of every measure with ``name``'s heads knocked out."""
        return paired_change(self.logits.double().numpy(), self.gold, 0, self._col(name), self.label_words,
                             n_resamples=n_resamples, groups=self.groups)

    def verdict(self, name: str, n_resamples: int = 1000) -> dict:
        """``name``'s change against the random draws of its size: the AUC drop's percentile among the
        draws, whether it is beyond every draw, and the same for recentred accuracy and accuracy."""
        heads = self.heads_of(name)
        k = len(heads)
        c = self.change(name, n_resamples)
        null = self.null(k)
        out = {"name": name, "heads": " ".join(map(head_name, heads)), "k": k, "n_prompts": c.n,
               "draws": len(null), **{f"{m} before": c.before[m] for m in MEASURES},
               **{f"{m} after": c.after[m] for m in MEASURES},
               **{f"{m} change": c.change[m] for m in MEASURES},
               **{f"{m} low": c.low[m] for m in MEASURES}, **{f"{m} high": c.high[m] for m in MEASURES}}
        for m in ("auc", "recentred_accuracy", "accuracy"):
            drops = (c.before[m] - null[m]).to_numpy() if len(null) else np.array([])
            ep = empirical_p(c.before[m] - c.after[m], drops)
            out[f"{m} null min"] = float(null[m].min()) if len(null) else float("nan")
            out[f"{m} null median"] = float(null[m].median()) if len(null) else float("nan")
            out[f"{m} percentile"] = ep["percentile"]
            out[f"{m} p"] = ep["p"]
            out[f"{m} beyond all"] = bool(len(null) and c.after[m] < null[m].min())
        chance = 1 / len(self.label_words) if len(self.label_words) > 2 else 0.5
        auc0, auc1 = c.before["auc"], c.after["auc"]
        out["auc share to chance"] = (auc0 - auc1) / (auc0 - chance) if auc0 - chance > 1e-9 else float("nan")
        out["reading"] = verdict_text(out, c)
        return out

    def curve(self) -> pd.DataFrame:
        """AUC (and recentred accuracy) of the top k against the random sets of k: the null band."""
        rows = []
        lg = self.logits.double().numpy()
        for k in self.sizes():
            top = measures(lg[:, self._col(f"top:{k}")], self.gold, self.groups)
            null = self.null(k)
            row = {"k": k, "auc top": top["auc"], "recentred top": top["recentred_accuracy"],
                   "accuracy top": top["accuracy"], "draws": len(null)}
            for m, short in (("auc", "auc"), ("recentred_accuracy", "recentred")):
                v = null[m].to_numpy() if len(null) else np.array([np.nan])
                row |= {f"{short} null min": float(np.nanmin(v)), f"{short} null p2.5": float(np.nanpercentile(v, 2.5)),
                        f"{short} null median": float(np.nanmedian(v)),
                        f"{short} null p97.5": float(np.nanpercentile(v, 97.5))}
            rows.append(row)
        return pd.DataFrame(rows)

    def save(self, path) -> None:
        torch.save({k: getattr(self, k) for k in self.__dataclass_fields__}, path)

    @staticmethod
    def load(path) -> ContextTest:
        return ContextTest(**torch.load(path, weights_only=False))


def merge_tests(tests) -> ContextTest:
    """Several tests of the same rows (the same heads and the same random draws) on different prompts, as one
    test over all their prompts. Each test's demonstration sets stay separate groups (the AUC is read within a
    demonstration set), even where two tests used the same seed numbers."""
    tests = list(tests)
    first = tests[0]
    for t in tests[1:]:
        if t.names != first.names or t.draws != first.draws or t.ranking[:len(first.ranking)] != first.ranking:
            raise ValueError("tests with different rows or random draws cannot be merged")
    groups, offset = [], 0
    for t in tests:
        g = t.groups
        g = np.zeros(len(t.gold), dtype=int) if g is None else np.asarray(g)
        groups += [int(x) + offset for x in g]
        offset += int(g.max()) + 1
    meta = dict(first.meta, seeds=[s for t in tests for s in t.meta.get("seeds", [])], groups=groups,
                n_test=None, merged=len(tests))
    return ContextTest(torch.cat([t.logits for t in tests]), [g for t in tests for g in t.gold], list(first.names),
                       first.ranking, first.head_sets, first.draws, first.label_words, first.layers, meta)


def add_draws(test: ContextTest, extra: ContextTest, atol: float = 1e-4) -> ContextTest:
    """``test`` with the random draws of ``extra`` (the same prompts, other draws) appended to its own, so that a
    size's null grows without rerunning the rest. The rows both have (``none``, ``top:k``) must agree: the same
    prompts through the same model."""
    if list(extra.gold) != list(test.gold):
        raise ValueError("the extra draws were run on other prompts")
    for name in extra.names:
        if not name.startswith("random:") and name in test.names:
            if not torch.allclose(extra.logits[:, extra._col(name)], test.logits[:, test._col(name)], atol=atol):
                raise ValueError(f"row {name} differs between the two runs: not the same prompts or model")
    names, cols, draws = list(test.names), [test.logits], {k: list(v) for k, v in test.draws.items()}
    for k, sets in extra.draws.items():
        have = len(draws.setdefault(k, []))
        for d, hs in enumerate(sets):
            names.append(f"random:{k}:{have + d}")
            cols.append(extra.logits[:, extra._col(f"random:{k}:{d}")].unsqueeze(1))
            draws[k].append(hs)
    return ContextTest(torch.cat(cols, 1), list(test.gold), names, test.ranking, test.head_sets, draws,
                       test.label_words, test.layers, dict(test.meta))


def verdict_text(v: dict, c: Change) -> str:
    """The paper's claim read on discrimination, in words that follow the numbers of ``v``."""
    auc_part = (f"AUC {v['auc before']:.3f} -> {v['auc after']:.3f} (change {v['auc change']:+.3f}, 95% CI "
                f"{v['auc low']:+.3f} to {v['auc high']:+.3f}; lowest of {v['draws']} random sets "
                f"{v['auc null min']:.3f})")
    rec = f"recentred accuracy {v['recentred_accuracy before']:.1%} -> {v['recentred_accuracy after']:.1%}"
    acc = f"accuracy {v['accuracy before']:.1%} -> {v['accuracy after']:.1%}"
    falls = c.separable("auc") and c.change["auc"] < 0
    if falls and v["auc beyond all"]:
        word = "reproduced on discrimination: the model tells the classes apart less well"
    elif falls:
        word = "partly: the AUC falls, but some random set of the same size lowers it as much"
    elif v["auc beyond all"] and c.change["auc"] < 0:
        word = "partly: the AUC is below every random set, but its paired interval includes no change"
    elif c.separable("accuracy") or c.separable("mean_margin"):
        moved = "accuracy moves" if c.separable("accuracy") else "the mean margin moves"
        word = f"not reproduced on discrimination: a prior shift ({moved}, the classes stay apart)"
    else:
        word = "not reproduced: no measurable change"
    return f"{word}; {auc_part}, {rec}, {acc}; n = {v['n_prompts']} prompts"


def _draw_sizes(sizes, n_draws) -> dict[int, int]:
    if isinstance(n_draws, dict):
        return {k: int(n_draws.get(k, 0)) for k in sizes}
    return {k: int(n_draws) for k in sizes}


def context_test(lm: LoadedModel, setup: EvalSetup, ranking, sizes=CURVE_SIZES, head_sets: dict | None = None,
                 n_draws: int | dict = 20, layers=None, seed: int = 0, chunk: int = 64,
                 progress: Progress | None = None) -> ContextTest:
    """Knock out (attention from T to the label positions) the top k of ``ranking`` for each k of
    ``sizes``, each of ``head_sets``, and ``n_draws`` random sets of k heads of ``layers`` (default: the
    deep half; a dict gives the draws per k), as rows of one batched run over ``setup``'s prompts."""
    ranking = [(int(a), int(b)) for a, b in ranking]
    sizes = sorted({int(k) for k in sizes if 0 < int(k) <= len(ranking)})
    layers = default_layers(lm.n_layers) if layers is None else sorted({int(x) for x in layers})
    sets = {k: [(int(a), int(b)) for a, b in v] for k, v in (head_sets or {}).items()}
    names, rows = ["none"], [RowEdit()]
    for k in sizes:
        names.append(f"top:{k}")
        rows.append(RowEdit.of("knockout", ranking[:k]))
    for name, hs in sets.items():
        names.append(f"set:{name}")
        rows.append(RowEdit.of("knockout", hs))
    draws: dict[int, list[list[Head]]] = {}
    all_sizes = sorted(set(sizes) | {len(v) for v in sets.values()})
    per = _draw_sizes(all_sizes, n_draws)
    for k in all_sizes:
        draws[k] = [random_heads(k, layers, lm.n_heads, seed=seed + 1009 * k + d, exclude=ranking[:k])
                    for d in range(per[k])]
        for d, hs in enumerate(draws[k]):
            names.append(f"random:{k}:{d}")
            rows.append(RowEdit.of("knockout", hs))
    logits, gold = run_rows(lm, setup, rows, chunk, progress, f"context test ({len(rows)} conditions)")
    meta = {"dataset": setup.dataset.name, "test_part": setup.dataset.meta.get("test_part", "all"),
            "seeds": list(setup.seeds), "k_per_label": setup.k_per_label, "n_test": setup.n_test}
    return ContextTest(logits, gold, names, ranking, sets, draws, tuple(setup.words()), layers, meta)


def choose_n_heads(curve: pd.DataFrame, min_share: float = 0.5) -> int:
    """The smallest k of the curve whose AUC lies below every random set of its size and whose AUC drop
    is at least ``min_share`` of the largest drop on the curve; without such a k, the k of the largest
    drop; without any drop, the curve's first k. ``curve`` needs the base AUC in ``attrs['auc none']``."""
    return n_heads_choice(curve, min_share)[0]


def n_heads_choice(curve: pd.DataFrame, min_share: float = 0.5) -> tuple[int, str]:
    """:func:`choose_n_heads`'s k and which of its three cases chose it, in words."""
    base = float(curve.attrs["auc none"])
    drops = base - curve["auc top"]
    best = float(drops.max())
    if not math.isfinite(best) or best <= 0:
        return int(curve["k"].iloc[0]), ("no k of the curve lowers the AUC at all, so the rule falls back to the "
                                         "curve's first k (a placeholder, not a finding)")
    ok = curve[(curve["auc top"] < curve["auc null min"]) & (drops >= min_share * best)]
    if len(ok):
        return int(ok["k"].iloc[0]), (f"the smallest k of the curve whose AUC is below every random set of its size "
                                      f"and whose AUC drop is at least {min_share:.0%} of the largest on the curve")
    return int(curve.loc[drops.idxmax(), "k"]), ("no k is both below every random set of its size and within "
                                                 f"{min_share:.0%} of the largest drop, so the rule takes the k of "
                                                 "the largest drop")


def location_curve(lm: LoadedModel, setup: EvalSetup, ranking, sizes=CURVE_SIZES, n_draws: int = 10, layers=None,
                   progress: Progress | None = None) -> pd.DataFrame:
    """The top-k curve on the location prompts, for :func:`choose_n_heads` (``attrs['auc none']`` set)."""
    t = context_test(lm, setup, ranking, sizes, n_draws=n_draws, layers=layers, seed=5000, progress=progress)
    curve = t.curve()
    curve.attrs["auc none"] = measures(t.logits[:, 0].double().numpy(), t.gold, t.groups)["auc"]
    return curve
