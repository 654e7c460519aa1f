"""Causal head effects, many heads per batch, and a random-head null distribution.

Two kinds of intervention touch only the last position ``T``:

- ``knockout``: the head's attention from ``T`` to every label position is set to zero;
- ``ablate_t``: the head's output at ``T`` is removed.

So each prompt is run once up to ``T - 1`` (the demonstrations shared by a seed's prompts are
computed once, into a KV cache), and then every head's intervention is one row of a batch of
single-token passes over that cache (a per-row head mask). A scan of all deep heads costs about
as much as a few plain passes, not one pass per head. The full ablation (the head removed at
every position, ``ablate``) changes the demonstrations' keys and values too, so its rows are
whole passes; it is run for chosen candidate heads.

Outcomes are per prompt: the gold label's margin (its logit minus the best other label's),
the gold probability over the label words and correctness, so conditions are compared on the
same prompts (paired).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..engine.interventions import Head
from ..engine.models import LoadedModel
from ..engine.runs import RowEdit, full_ablation_logits, last_position_logits
from ..stats import empirical_p, mcnemar_exact, paired_bootstrap, proportion_ci
from .discrimination import split_support
from .evaluation import EvalSetup, Progress
from .heads import default_layers, random_heads

KINDS = ("knockout", "ablate_t", "ablate")
KIND_TEXT = {
    "knockout": "attention from T to the label positions knocked out",
    "ablate_t": "head output at T removed",
    "ablate": "head output removed at every position",
}


# ---------------------------------------------------------------- per-prompt outcomes

def outcomes(logits: torch.Tensor, gold) -> dict[str, np.ndarray]:
    """Per prompt and row: gold margin, gold probability (over the label words), correctness.

    ``logits`` [N, R, K]; returns arrays [N, R].
    """
    lg = logits.double()
    g = torch.as_tensor(list(gold), dtype=torch.long)
    N, R, K = lg.shape
    gi = g.view(N, 1, 1).expand(N, R, 1)
    gold_logit = lg.gather(-1, gi)[..., 0]
    other = lg.scatter(-1, gi, float("-inf")).max(-1).values
    probs = torch.softmax(lg, -1).gather(-1, gi)[..., 0]
    pred = lg.argmax(-1)
    return {"margin": (gold_logit - other).numpy(), "p_gold": probs.numpy(),
            "correct": (pred == g.view(N, 1)).numpy(), "pred": pred.numpy()}


def _seed_prompts(lm, setup: EvalSetup):
    for seed in setup.seeds:
        prompts, gold = setup.prompts(lm, seed)
        yield seed, prompts, gold


def _progress_counter(progress: Progress | None, total: int, note: str):
    state = {"done": 0}

    def on_prompt(_):
        state["done"] += 1
        if progress is None:
            return True
        return progress(state["done"], total, note)

    return on_prompt


def _over_seeds(lm: LoadedModel, setup: EvalSetup, run_seed) -> tuple[torch.Tensor, list[int]]:
    """``run_seed(prompts)`` -> [n, R, K] for every seed's prompts, concatenated, and the gold labels."""
    parts, gold_all = [], []
    for _, prompts, gold in _seed_prompts(lm, setup):
        parts.append(run_seed(prompts))
        gold_all += gold
    return torch.cat(parts), gold_all


def run_rows(lm: LoadedModel, setup: EvalSetup, rows: list[RowEdit], chunk: int = 64,
             progress: Progress | None = None, note: str = "") -> tuple[torch.Tensor, list[int]]:
    """[N, R, K] label logits over every seed's prompts under each row, and the gold labels."""
    on_prompt = _progress_counter(progress, len(setup.seeds) * setup.n_test, note)
    return _over_seeds(lm, setup, lambda prompts: last_position_logits(lm, prompts, rows, chunk, on_prompt))


def run_full_ablation(lm: LoadedModel, setup: EvalSetup, head_sets: list, chunk: int = 8,
                      progress: Progress | None = None, note: str = "") -> tuple[torch.Tensor, list[int]]:
    """[N, R, K] label logits with each head set removed at every position (row r: head_sets[r])."""
    n_chunks = (len(head_sets) + chunk - 1) // chunk
    on_chunk = _progress_counter(progress, len(setup.seeds) * n_chunks, note)
    return _over_seeds(lm, setup, lambda prompts: full_ablation_logits(lm, prompts, head_sets, chunk, on_chunk))


# ---------------------------------------------------------------- the causal scan

@dataclass
class CausalScan:
    """Each head intervened alone, averaged over a dataset sample.

    ``table``: one row per (kind, layer, head) with ``effect`` (mean drop of the gold margin,
    in logits; positive = the head supports the correct label), ``effect_<label>`` (the same on
    prompts whose gold label is that word), ``label_effect`` (the larger of those),
    ``supports`` (that label), ``vote`` (mean drop of logit(first label) - logit(second):
    positive = the head pushes toward the first label), ``acc_drop`` and ``n``; and the effect split in
    two (``discrimination.split_support``): ``context_effect`` (the label-balanced mean of the
    ``effect_<label>``: the part that helps whichever label is gold, i.e. follows the demonstrations),
    ``prior_effect`` (the constant vote, >= 0) toward ``prior_toward``, and for two labels
    ``prior_first`` (signed, positive = toward the first label).
    """

    table: pd.DataFrame
    base: dict  # accuracy, margin, p_gold without intervention
    n_layers: int
    n_heads: int
    label_words: tuple[str, ...]
    layers: list[int]
    n_prompts: int
    kinds: tuple[str, ...]
    per_prompt: dict = field(default_factory=dict, repr=False)  # kind -> [N, R] margin drops

    def __post_init__(self):
        if "context_effect" not in self.table.columns and len(self.table):  # a table saved before the split
            parts = [split_support({w: r[f"effect_{w}"] for w in self.label_words}) for _, r in self.table.iterrows()]
            for col, key in (("context_effect", "context"), ("prior_effect", "prior"), ("prior_toward", "prior_toward"),
                             ("prior_first", "prior_first")):
                self.table[col] = [p[key] for p in parts]

    def ranked(self, kind: str = "knockout", by: str = "label_effect") -> pd.DataFrame:
        df = self.table[self.table.kind == kind]
        return df.sort_values(by, ascending=False).reset_index(drop=True)

    def top(self, n: int, kind: str = "knockout", by: str = "label_effect") -> list[Head]:
        return [(int(r.layer), int(r.head)) for r in self.ranked(kind, by).head(n).itertuples()]

    def top_by_label(self, n: int, kind: str = "knockout", by: str = "label_effect") -> dict[str, list[Head]]:
        df = self.ranked(kind, by).head(n)
        return {w: [(int(r.layer), int(r.head)) for r in df[df.supports == w].itertuples()] for w in self.label_words}

    def matrix(self, kind: str = "knockout", value: str = "effect") -> pd.DataFrame:
        df = self.table[self.table.kind == kind]
        return df.pivot(index="layer", columns="head", values=value).reindex(range(self.n_layers))


def causal_scan(lm: LoadedModel, setup: EvalSetup, layers=None, kinds=("knockout", "ablate_t"),
                full_ablation_heads=None, chunk: int = 64, progress: Progress | None = None) -> CausalScan:
    """Every head of ``layers`` intervened alone (knockout and/or output removal at T), as rows of
    single-token batches over each prompt's cache; plus full ablation of ``full_ablation_heads``
    (whole passes, so only for chosen candidates)."""
    layers = default_layers(lm.n_layers) if layers is None else sorted({int(x) for x in layers})
    words = setup.words()
    heads = [(layer, h) for layer in layers for h in range(lm.n_heads)]
    last_kinds = [k for k in kinds if k in ("knockout", "ablate_t")]
    rows = [RowEdit()] + [RowEdit.of(k, [hd]) for k in last_kinds for hd in heads]
    logits, gold = run_rows(lm, setup, rows, chunk, progress, "causal scan")
    blocks = {k: (logits[:, 1 + i * len(heads):1 + (i + 1) * len(heads)], heads) for i, k in enumerate(last_kinds)}
    base_logits = logits[:, :1]
    if full_ablation_heads:
        fa = [(int(a), int(b)) for a, b in full_ablation_heads]
        fl, _ = run_full_ablation(lm, setup, [[h] for h in fa], progress=progress, note="full ablation")
        blocks["ablate"] = (fl, fa)
    base = outcomes(base_logits, gold)
    g = np.asarray(gold)
    first_minus_second = (base_logits[:, 0, 0] - base_logits[:, 0, 1]).double().numpy()
    records, per_prompt = [], {}
    for kind, (lg, hs) in blocks.items():
        o = outcomes(lg, gold)
        drop = base["margin"][:, :1] - o["margin"]  # [N, R]
        vote = first_minus_second[:, None] - (lg[..., 0] - lg[..., 1]).double().numpy()
        per_prompt[kind] = drop
        for r, (layer, head) in enumerate(hs):
            rec = {"kind": kind, "layer": layer, "head": head, "effect": float(drop[:, r].mean()),
                   "vote": float(vote[:, r].mean()),
                   "acc_drop": float(base["correct"][:, 0].mean() - o["correct"][:, r].mean()),
                   "p_gold_drop": float((base["p_gold"][:, 0] - o["p_gold"][:, r]).mean()), "n": len(g)}
            per_label = {}
            for k, w in enumerate(words):
                sel = g == k
                per_label[w] = float(drop[sel, r].mean()) if sel.any() else float("nan")
                rec[f"effect_{w}"] = per_label[w]
            best = max(per_label, key=lambda w: -np.inf if np.isnan(per_label[w]) else per_label[w])
            rec["label_effect"] = per_label[best]
            rec["supports"] = best
            parts = split_support(per_label)
            rec["context_effect"] = parts["context"]
            rec["prior_effect"] = parts["prior"]
            rec["prior_toward"] = parts["prior_toward"]
            rec["prior_first"] = parts["prior_first"]
            records.append(rec)
    table = pd.DataFrame(records)
    base_summary = {"accuracy": float(base["correct"][:, 0].mean()), "margin": float(base["margin"][:, 0].mean()),
                    "p_gold": float(base["p_gold"][:, 0].mean()), "n": len(g)}
    return CausalScan(table, base_summary, lm.n_layers, lm.n_heads, tuple(words), layers, len(g),
                      tuple(blocks), per_prompt)


def compare_rankings(importance_overall: pd.DataFrame, scan: CausalScan, kind: str = "knockout", n: int = 10,
                     by: str = "label_effect") -> dict:
    """Rank correlation (Spearman, over the scanned heads) and top-n overlap of the logit-lens
    importance ranking and the causal ranking."""
    from scipy.stats import spearmanr

    causal = scan.table[scan.table.kind == kind][["layer", "head", by]]
    merged = causal.merge(importance_overall[["layer", "head", "importance"]], on=["layer", "head"]).dropna()
    rho = spearmanr(merged["importance"], merged[by]) if len(merged) > 2 else None
    top_imp = {(int(r.layer), int(r.head)) for r in merged.sort_values("importance", ascending=False).head(n)
               .itertuples()}
    top_causal = {(int(r.layer), int(r.head)) for r in merged.sort_values(by, ascending=False).head(n).itertuples()}
    return {"spearman": float(rho.statistic) if rho is not None else float("nan"),
            "spearman_p": float(rho.pvalue) if rho is not None else float("nan"),
            "top_n": n, "overlap": len(top_imp & top_causal), "heads": len(merged),
            "both": sorted(top_imp & top_causal)}


# ---------------------------------------------------------------- random-head null distribution

@dataclass
class NullTest:
    """A head set's effect against as many random heads from the same layers, many draws."""

    kind: str
    heads: list[Head]
    summary: pd.DataFrame  # one row per condition: none, in-context heads, random draw d
    verdict: dict  # effect, null mean and 2.5/97.5 percentiles, empirical p and percentile, paired tests
    per_prompt: pd.DataFrame  # prompt, gold, condition columns of margins

    def null(self, column: str = "margin_drop") -> np.ndarray:
        return self.summary[self.summary.condition == "random"][column].to_numpy()


def null_distribution(lm: LoadedModel, setup: EvalSetup, heads, kind: str = "knockout", n_draws: int = 100,
                      seed: int = 0, layers=None, chunk: int = 64, progress: Progress | None = None) -> NullTest:
    """The effect of intervening on ``heads`` against ``n_draws`` random sets of as many heads from
    the same layers, all on the same prompts. Knockout and output removal at T run every draw as a
    row of one batch per prompt; full ablation (``kind="ablate"``) runs whole passes per draw."""
    heads = [(int(a), int(b)) for a, b in heads]
    if not heads:
        raise ValueError("no heads to test")
    layers = sorted({a for a, _ in heads}) if layers is None else list(layers)
    draws = [random_heads(len(heads), layers, lm.n_heads, seed=seed + d, exclude=heads) for d in range(n_draws)]
    if kind == "ablate":
        logits, gold = run_full_ablation(lm, setup, [[]] + [heads] + draws, progress=progress, note="null (ablate)")
    else:
        rows = [RowEdit(), RowEdit.of(kind, heads)] + [RowEdit.of(kind, d) for d in draws]
        logits, gold = run_rows(lm, setup, rows, chunk, progress, f"null ({kind})")
    return summarize_null(logits, gold, kind, heads, draws)


def summarize_null(logits: torch.Tensor, gold, kind: str, heads, draws) -> NullTest:
    """Row 0: no intervention; row 1: the head set; rows 2..: random draws."""
    o = outcomes(logits, gold)
    N = len(gold)
    rows = []
    for r in range(logits.shape[1]):
        cond = "none" if r == 0 else "in-context heads" if r == 1 else "random"
        k = int(o["correct"][:, r].sum())
        lo, hi = proportion_ci(k, N)
        hs = [] if r == 0 else heads if r == 1 else draws[r - 2]
        rows.append({"condition": cond, "draw": r - 2 if r >= 2 else -1,
                     "head_set": " ".join(f"L{a}H{b}" for a, b in hs),
                     "accuracy": k / N, "ci_low": lo, "ci_high": hi, "margin": float(o["margin"][:, r].mean()),
                     "p_gold": float(o["p_gold"][:, r].mean()),
                     "margin_drop": float((o["margin"][:, 0] - o["margin"][:, r]).mean()),
                     "abs_change": float(np.abs(o["margin"][:, 0] - o["margin"][:, r]).mean()),
                     "acc_drop": float((o["correct"][:, 0].astype(float) - o["correct"][:, r]).mean()), "n": N})
    summary = pd.DataFrame(rows)
    rnd = summary[summary.condition == "random"]
    null_margin = rnd["margin_drop"].to_numpy()
    null_acc = rnd["acc_drop"].to_numpy()
    null_abs = rnd["abs_change"].to_numpy()
    eff = summary.iloc[1]
    diff = o["margin"][:, 0] - o["margin"][:, 1]
    mean, lo, hi = paired_bootstrap(diff)
    _, abs_lo, abs_hi = paired_bootstrap(np.abs(diff))
    _, acc_lo, acc_hi = paired_bootstrap(o["correct"][:, 0].astype(float) - o["correct"][:, 1])
    # the in-context heads against the median random draw (by accuracy), on the same prompts
    med = 2 + int(np.argsort(null_acc, kind="stable")[len(null_acc) // 2]) if len(null_acc) else 1
    ep = empirical_p(float(eff.margin_drop), null_margin)
    epa = empirical_p(float(eff.acc_drop), null_acc)
    epb = empirical_p(float(eff.abs_change), null_abs)
    verdict = {
        "kind": kind, "heads": " ".join(f"L{a}H{b}" for a, b in heads), "n_prompts": N, "draws": len(null_margin),
        "accuracy_none": float(summary.iloc[0].accuracy), "accuracy_heads": float(eff.accuracy),
        "accuracy_random_mean": float(rnd.accuracy.mean()) if len(rnd) else float("nan"),
        "margin_drop": float(eff.margin_drop), "margin_drop_ci_low": lo, "margin_drop_ci_high": hi,
        "null_margin_drop_mean": float(null_margin.mean()) if len(null_margin) else float("nan"),
        "null_margin_drop_p2.5": float(np.percentile(null_margin, 2.5)) if len(null_margin) else float("nan"),
        "null_margin_drop_p97.5": float(np.percentile(null_margin, 97.5)) if len(null_margin) else float("nan"),
        "percentile": ep["percentile"], "p_empirical": ep["p"],
        "abs_change": float(eff.abs_change), "abs_change_ci_low": abs_lo, "abs_change_ci_high": abs_hi,
        "null_abs_change_mean": float(null_abs.mean()) if len(null_abs) else float("nan"),
        "null_abs_change_p97.5": float(np.percentile(null_abs, 97.5)) if len(null_abs) else float("nan"),
        "abs_percentile": epb["percentile"], "abs_p_empirical": epb["p"],
        "acc_drop": float(eff.acc_drop), "acc_drop_ci_low": acc_lo, "acc_drop_ci_high": acc_hi,
        "null_acc_drop_p97.5": float(np.percentile(null_acc, 97.5)) if len(null_acc) else float("nan"),
        "acc_percentile": epa["percentile"], "acc_p_empirical": epa["p"],
        "mcnemar_vs_none": mcnemar_exact(o["correct"][:, 0], o["correct"][:, 1]),
        "mcnemar_vs_median_random": mcnemar_exact(o["correct"][:, med], o["correct"][:, 1]),
    }
    per_prompt = pd.DataFrame({"gold": list(gold), "margin_none": o["margin"][:, 0],
                               "margin_heads": o["margin"][:, 1]})
    return NullTest(kind, list(heads), summary, verdict, per_prompt)


def verdict_line(v: dict, alpha: float = 0.05) -> str:
    """One plain sentence reading a null test.

    The paper's claim is about accuracy: intervening on the in-context heads lowers it, and as many
    random heads do not. *Reproduced*: the accuracy drop is beyond the random draws (empirical
    p <= alpha, or beyond every draw when there are too few draws for that, with an exact McNemar
    test against the median draw below alpha). *Partly*: the heads move the decision more than
    random heads (mean |margin change|, p <= alpha) without that accuracy drop, or the drop is at
    the 80th percentile or above. Otherwise *not reproduced*.
    """
    if not v or v.get("draws", 0) == 0:
        return "not measured"
    min_p = 1 / (1 + v["draws"])
    beyond_all = v["acc_percentile"] >= 100 and v["mcnemar_vs_median_random"]["p"] <= alpha
    if v["acc_drop"] > 0 and (v["acc_p_empirical"] <= alpha or (min_p > alpha and beyond_all)):
        word = "reproduced"
    elif v["abs_p_empirical"] <= max(alpha, min_p) or (v["acc_drop"] > 0 and v["acc_percentile"] >= 80):
        word = "partly"
    else:
        word = "not reproduced"
    few = f", the smallest {v['draws']} draws can give" if min_p > alpha else ""
    return (f"{word}: {KIND_TEXT[v['kind']]} in {v['heads']} moves accuracy {v['accuracy_none']:.1%} -> "
            f"{v['accuracy_heads']:.1%} (random sets: {v['accuracy_random_mean']:.1%}), a drop at the "
            f"{v['acc_percentile']:.0f}th percentile of {v['draws']} random draws (p = {v['acc_p_empirical']:.3f}"
            f"{few}; McNemar against the median draw p = {v['mcnemar_vs_median_random']['p']:.2g}); the gold margin "
            f"changes by {v['abs_change']:.2f} on average in absolute value ({v['abs_percentile']:.0f}th percentile) "
            f"and falls by {v['margin_drop']:.2f} on average (95% CI {v['margin_drop_ci_low']:.2f} to "
            f"{v['margin_drop_ci_high']:.2f}); n = {v['n_prompts']} prompts")


# ---------------------------------------------------------------- label-specific heads

def label_specific(lm: LoadedModel, setup: EvalSetup, heads_by_label: dict[str, list[Head]], kind: str = "knockout",
                   n_draws: int = 50, seed: int = 0, chunk: int = 64, progress: Progress | None = None) -> NullTest:
    """Knock out each label's heads on the prompts whose gold is that label (the foo heads on foo-gold
    queries, the bar heads on bar-gold ones), against random sets of the same sizes and layers."""
    words = setup.words()
    sets = [[(int(a), int(b)) for a, b in heads_by_label.get(w, [])] for w in words]
    all_heads = sorted({h for s in sets for h in s})
    if not all_heads:
        raise ValueError("no label-specific heads to test")
    layers = sorted({a for a, _ in all_heads})
    draws = [[random_heads(len(s), layers, lm.n_heads, seed=seed + 1000 * k + d, exclude=all_heads) if s else []
              for k, s in enumerate(sets)] for d in range(n_draws)]
    rows = [RowEdit()] + [RowEdit.of(kind, s) for s in sets] + [RowEdit.of(kind, s) for dr in draws for s in dr]
    logits, gold = run_rows(lm, setup, rows, chunk, progress, "label-specific heads")
    K = len(words)
    g = torch.as_tensor(gold)
    pick = torch.zeros(len(gold), 2 + n_draws, logits.shape[-1])
    pick[:, 0] = logits[:, 0]
    idx = torch.arange(len(gold))
    pick[:, 1] = logits[idx, 1 + g]
    for d in range(n_draws):
        pick[:, 2 + d] = logits[idx, 1 + K + d * K + g]
    flat_draws = [sorted({h for s in dr for h in s}) for dr in draws]
    return summarize_null(pick, gold, kind, all_heads, flat_draws)


# ---------------------------------------------------------------- one batched causal test

@dataclass
class CausalTest:
    """Label logits ``[N, R, K]`` of every prompt under every named row, from one batched run.

    Row names: ``none``; ``<kind>:<set>`` for each head set and kind; ``<kind>:random:<d>`` for
    random draws (as many heads as the sets, from ``layers``); ``ls:<label>`` and
    ``ls:random:<d>:<label>`` for the label-specific test.
    """

    logits: torch.Tensor
    gold: list[int]
    names: list[str]
    head_sets: dict[str, list[Head]]
    draws: list[list[Head]]
    label_heads: dict[str, list[Head]]
    ls_draws: list[dict[str, list[Head]]]
    label_words: tuple[str, ...]

    def _col(self, name: str) -> int:
        return self.names.index(name)

    def null(self, set_name: str, kind: str = "knockout") -> NullTest:
        cols = [0, self._col(f"{kind}:{set_name}")]
        cols += [self._col(f"{kind}:random:{d}") for d in range(len(self.draws)) if f"{kind}:random:{d}" in self.names]
        drawn = self.draws if len(cols) > 2 else []
        return summarize_null(self.logits[:, cols], self.gold, kind, self.head_sets[set_name], drawn)

    def label_specific(self) -> NullTest:
        g = torch.as_tensor(self.gold)
        idx = torch.arange(len(self.gold))
        K = len(self.label_words)
        own = torch.tensor([self._col(f"ls:{w}") for w in self.label_words])
        cols = [self.logits[:, 0], self.logits[idx, own[g]]]
        for d in range(len(self.ls_draws)):
            rc = torch.tensor([self._col(f"ls:random:{d}:{w}") for w in self.label_words])
            cols.append(self.logits[idx, rc[g]])
        assert K == len(own)
        heads = sorted({h for hs in self.label_heads.values() for h in hs})
        flat = [sorted({h for hs in dr.values() for h in hs}) for dr in self.ls_draws]
        return summarize_null(torch.stack(cols, 1), self.gold, "knockout", heads, flat)

    def save(self, path) -> None:
        torch.save({k: getattr(self, k) for k in self.__dataclass_fields__}, path)

    @staticmethod
    def load(path) -> CausalTest:
        return CausalTest(**torch.load(path, weights_only=False))


def causal_test(lm: LoadedModel, setup: EvalSetup, head_sets: dict[str, list], layers=None,
                kinds=("knockout", "ablate_t"), null_kinds=("knockout",), n_draws: int = 50,
                label_heads: dict[str, list] | None = None, ls_draws: int = 25, seed: int = 0, chunk: int = 64,
                progress: Progress | None = None) -> CausalTest:
    """Every head set under every kind, ``n_draws`` random sets of the same size from ``layers``
    (default: the deep half, where the sets were searched) under each null kind, and the
    label-specific knockout, as rows of one batched run over the same prompts."""
    sets = {k: [(int(a), int(b)) for a, b in v] for k, v in head_sets.items()}
    sizes = {len(v) for v in sets.values()}
    if len(sizes) != 1:
        raise ValueError("the head sets compared against one null distribution need the same size")
    size = sizes.pop()
    layers = default_layers(lm.n_layers) if layers is None else sorted({int(x) for x in layers})
    exclude = sorted({h for v in sets.values() for h in v})
    draws = [random_heads(size, layers, lm.n_heads, seed=seed + d, exclude=exclude) for d in range(n_draws)]
    names, rows = ["none"], [RowEdit()]
    for kind in kinds:
        for name, hs in sets.items():
            names.append(f"{kind}:{name}")
            rows.append(RowEdit.of(kind, hs))
    for kind in null_kinds:
        for d, hs in enumerate(draws):
            names.append(f"{kind}:random:{d}")
            rows.append(RowEdit.of(kind, hs))
    words = setup.words()
    lh = {w: [(int(a), int(b)) for a, b in (label_heads or {}).get(w, [])] for w in words} if label_heads else {}
    lsd: list[dict[str, list[Head]]] = []
    if lh and any(lh.values()):
        all_lh = sorted({h for v in lh.values() for h in v})
        for w in words:
            names.append(f"ls:{w}")
            rows.append(RowEdit.of("knockout", lh[w]))
        for d in range(ls_draws):
            dr = {w: random_heads(len(lh[w]), layers, lm.n_heads, seed=seed + 7919 + 31 * d + k, exclude=all_lh)
                  if lh[w] else [] for k, w in enumerate(words)}
            lsd.append(dr)
            for w in words:
                names.append(f"ls:random:{d}:{w}")
                rows.append(RowEdit.of("knockout", dr[w]))
    logits, gold = run_rows(lm, setup, rows, chunk, progress, f"causal test ({len(rows)} conditions)")
    return CausalTest(logits, gold, names, sets, draws, lh, lsd, tuple(words))


# ---------------------------------------------------------------- one prompt, per-row position knockouts
