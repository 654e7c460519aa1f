"""What a page can honestly say about what it shows: live paired effects, intervals, plain readings.

No streamlit here. The app's pages call these functions; tests call the same ones.

- ``paired_effect``: on one prompt, the margin change from intervening on the in-context heads
  beside the changes from several random head sets of the same size and layers (the control),
  with a one-sentence verdict.
- ``top_n_margins``: the margin after intervening on the top 1, 2, ..., N heads, to see where
  (if anywhere) the prediction gives way.
- ``progress_text``: done/total, elapsed and a finish estimate for long runs.
- ``ratio_reading`` and ``bias_reading``: sample sizes, Wilson intervals (the label ratio) or paired
  bootstrap intervals and a permutation test (the biases, ``bias.bias_intervals``), a warning when the
  sample cannot resolve the effect, and one plain sentence reading the result.
- ``token_table``, ``label_attention_table``, ``label_sums``, ``label_mass``: tidy tables of one
  prompt's tokens and of the attention from T to its label positions.
- ``LabelCapture`` and ``slim_prediction``: a prediction that keeps only that label attention
  (what the app caches).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..engine.interventions import Plan
from ..prompt import BuiltPrompt
from ..stats import format_p
from ..validation import head_name
from .evaluation import Prediction, predict_prompt, wilson_interval
from .heads import control_heads

Z95 = 1.96


# ---------------------------------------------------------------- live effect on one prompt

@dataclass
class EffectReadout:
    """Margin (logit first label - logit second label) before and after intervening."""

    kind: str
    heads: list[tuple[int, int]]
    label_words: tuple[str, ...]
    before_margin: float
    before_pred: str
    icl_margin: float
    icl_pred: str
    random_margins: list[float] = field(default_factory=list)
    random_preds: list[str] = field(default_factory=list)
    random_heads: list[list[tuple[int, int]]] = field(default_factory=list)

    @property
    def icl_change(self) -> float:
        return self.icl_margin - self.before_margin

    @property
    def random_changes(self) -> list[float]:
        return [m - self.before_margin for m in self.random_margins]

    @property
    def n_draws(self) -> int:
        return len(self.random_margins)

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_changes)) if self.random_margins else float("nan")

    @property
    def random_range(self) -> tuple[float, float]:
        ch = self.random_changes
        return (float(min(ch)), float(max(ch))) if ch else (float("nan"), float("nan"))

    def _towards_other(self, change: float) -> float:
        """Positive when the change moves the margin towards the label not predicted before."""
        return -change if self.before_margin >= 0 else change

    @property
    def verdict(self) -> str:
        """'effect', 'control-like' or 'none' for this prompt."""
        own = self._towards_other(self.icl_change)
        if own <= 0:
            return "none"
        if not self.random_margins or own > max(self._towards_other(c) for c in self.random_changes):
            return "effect"
        return "control-like"

    def sentence(self) -> str:
        w = self.label_words
        verb = {"ablate": "Removing the output of", "knockout": "Knocking out attention from T to the labels in"}.get(
            self.kind, f"{self.kind} on")
        lo, hi = self.random_range
        flips = sum(p != self.before_pred for p in self.random_preds)
        text = (f"{verb} the {len(self.heads)} in-context heads changes the margin {w[0]}−{w[1]} by "
                f"{self.icl_change:+.2f} (prediction {self.before_pred} → {self.icl_pred}); "
                f"{self.n_draws} random sets of {len(self.heads)} heads change it by {self.random_mean:+.2f} "
                "on average "
                f"(range {lo:+.2f} to {hi:+.2f}, {flips} of {self.n_draws} flip the prediction). ")
        v = self.verdict
        if v == "effect":
            text += ("The in-context heads move the prediction towards the other label more than every random set: "
                     "on this prompt this model shows the effect.")
        elif v == "control-like":
            text += ("Some random set moves it as much or more: on this prompt the in-context heads cannot be told "
                     "apart from the control.")
        else:
            text += ("The in-context heads do not move the prediction towards the other label: on this prompt this "
                     "model does not show the effect.")
        return text


def paired_effect(lm, prompt: BuiltPrompt, heads, kind: str = "ablate", draws: int = 5, seed: int = 0,
                  before=None, icl=None) -> EffectReadout:
    """The in-context heads against ``draws`` random head sets of the same size and layers, on one prompt.

    ``before`` / ``icl``: the prompt's predictions without intervention and with the in-context heads
    intervened, when already computed (each saves a pass).
    """
    heads = [tuple(h) for h in heads]
    before = before if before is not None else predict_prompt(lm, prompt, Plan(), capture=False)
    icl = icl if icl is not None else predict_prompt(lm, prompt, Plan(kind, tuple(heads)), capture=False)
    out = EffectReadout(kind, heads, prompt.label_words, before.margin, before.predicted, icl.margin, icl.predicted)
    sets = random_head_sets(lm, heads, draws, seed)
    for rnd, (margin, predicted) in zip(sets, margins_of_head_sets(lm, prompt, sets, kind)):
        out.random_margins.append(margin)
        out.random_preds.append(predicted)
        out.random_heads.append(rnd)
    return out


def random_head_sets(lm, heads, draws: int, seed: int = 0) -> list[list[tuple[int, int]]]:
    """``draws`` random sets of as many heads from the same layers (``heads.control_heads``, seeds ``seed``,
    ``seed + 1``, ...), repeated draws left out."""
    sets, seen = [], set()
    for i in range(draws):
        rnd = control_heads(heads, lm.n_layers, lm.n_heads, seed + i)
        if tuple(rnd) in seen:
            continue
        seen.add(tuple(rnd))
        sets.append(rnd)
    return sets


def margins_of_head_sets(lm, prompt: BuiltPrompt, head_sets, kind: str = "ablate", with_probs: bool = False):
    """(margin, predicted label[, probabilities]) of ``prompt`` with each head set intervened, all sets as
    rows of one batched run (an empty set: no intervention). Knockout acts at ``T`` only, so its rows are
    single-token passes over the prompt's cache; ablation rows are whole passes, each row its own heads."""
    import torch

    from ..engine.interventions import ablate_rows
    from ..engine.runs import RowEdit, last_position_logits

    sets = [[tuple(h) for h in hs] for hs in head_sets]
    if not sets:
        return []
    if kind == "knockout":
        logits = last_position_logits(lm, [prompt], [RowEdit.of("knockout", hs) for hs in sets])[0]
    elif kind == "ablate":
        ids = prompt.label_token_id_list()
        logits = lm.run([prompt] * len(sets), ablate_rows(sets), capture=False).logits[:, ids]
    else:
        raise ValueError(f"kind must be ablate or knockout, not {kind!r}")
    words = prompt.label_words
    probs = torch.softmax(logits.double(), -1)
    out = []
    for r in range(len(sets)):
        margin = float(logits[r, 0] - logits[r, 1])
        predicted = words[int(logits[r].argmax())]
        out.append((margin, predicted, dict(zip(words, probs[r].tolist()))) if with_probs else (margin, predicted))
    return out


def top_n_margins(lm, prompt: BuiltPrompt, ranked_heads, kind: str = "ablate", max_n: int | None = None
                  ) -> pd.DataFrame:
    """Margin and prediction after intervening on the top n heads, n = 0..max_n (ranked order)."""
    ranked = [tuple(h) for h in ranked_heads]
    max_n = len(ranked) if max_n is None else min(int(max_n), len(ranked))
    rows = []
    sets = [ranked[:n] for n in range(max_n + 1)]
    results = margins_of_head_sets(lm, prompt, sets, kind, with_probs=True)
    base = results[0][1]
    for n, (margin, predicted, probs) in enumerate(results):
        rows.append({"n": n, "heads": ", ".join(map(head_name, ranked[:n])) or "none", "margin": margin,
                     "predicted": predicted, "flipped": predicted != base,
                     **{f"p_{w}": p for w, p in probs.items()}})
    return pd.DataFrame(rows)


def first_flip(curve: pd.DataFrame) -> int | None:
    """The smallest n at which the prediction gives way, or None."""
    f = curve[curve["flipped"]]
    return int(f["n"].iloc[0]) if len(f) else None


# ---------------------------------------------------------------- progress

def format_seconds(s: float) -> str:
    s = max(0.0, float(s))
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600 * 1.5:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def progress_text(label: str, done: int, total: int, elapsed: float, note: str = "", now: float | None = None) -> str:
    """'label: 3/24 done · 12 s so far · about 40 s left (done at 14:05)'; no estimate before the first step."""
    total = max(int(total), 1)
    done = min(max(int(done), 0), total)
    text = f"{label}: {done}/{total} done · {format_seconds(elapsed)} so far"
    if 0 < done < total:
        left = elapsed / done * (total - done)
        at = time.strftime("%H:%M:%S", time.localtime((now if now is not None else time.time()) + left))
        text += f" · about {format_seconds(left)} left (done at {at})"
    elif done == 0:
        text += " · estimating the time left after the first step"
    return text + (f" · {note}" if note else "")


# ---------------------------------------------------------------- intervals and plain readings

def resolvable_difference(n: int, p: float = 0.5) -> float:
    """The smallest difference between two proportions from n prompts each that a 95% interval resolves."""
    return Z95 * math.sqrt(2 * p * (1 - p) / n) if n > 0 else float("inf")


def share_table(rows: pd.DataFrame, words) -> pd.DataFrame:
    """Per-prompt rows (pred index, correct) -> per label: n, share predicted, 95% Wilson interval."""
    n = len(rows)
    out = []
    for i, w in enumerate(words):
        k = int((rows["pred"] == i).sum())
        lo, hi = wilson_interval(k, n)
        out.append({"quantity": f"predicted {w}", "n": n, "value": k / n if n else float("nan"), "ci_low": lo,
                    "ci_high": hi})
    k = int(rows["correct"].sum())
    lo, hi = wilson_interval(k, n)
    out.append({"quantity": "accuracy", "n": n, "value": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out)


def ratio_reading(table: pd.DataFrame, counts: dict[str, int]) -> tuple[str, str | None]:
    """One sentence reading a label-ratio run, and a warning when the sample is too small.

    ``table``: condition, quantity ('predicted <w>' / 'accuracy'), n, value, ci_low, ci_high;
    ``counts``: demonstrations per label word.
    """
    base = table[table["condition"] == "no fix"].set_index("quantity")
    n = int(base["n"].iloc[0])
    words = list(counts)
    parts = " / ".join(f"{c} {w}" for w, c in counts.items())
    top = max(words, key=lambda w: base.loc[f"predicted {w}", "value"])
    r = base.loc[f"predicted {top}"]
    text = (f"With {parts}, the model predicted {top} for {r['value']:.0%} of {n} test sentences "
            f"(95% interval {r['ci_low']:.0%}–{r['ci_high']:.0%}).")
    if len(set(counts.values())) > 1:
        majority = max(counts, key=counts.get)
        if top == majority:
            text += f" That leans towards the majority label {majority}, as majority bias predicts."
        else:
            text += (f" That is the reverse of majority bias: the majority label is {majority}, yet {top} is "
                     "predicted more often.")
    else:
        text += " The demonstrations are balanced, so there is no majority label."
    if "majority fix" in set(table["condition"]):
        fix = table[table["condition"] == "majority fix"].set_index("quantity").loc[f"predicted {top}"]
        text += (f" With the majority fix in the in-context heads: {fix['value']:.0%} "
                 f"({fix['ci_low']:.0%}–{fix['ci_high']:.0%}).")
    warning = None
    d = resolvable_difference(n)
    if d > 0.15:
        warning = (f"Only {n} test sentences: differences smaller than about {d:.0%} between conditions are within "
                   "sampling noise (95%). Use the full size for a reading you can trust.")
    return text, warning


def bias_reading(res) -> tuple[str, str | None, pd.DataFrame]:
    """A sentence, a warning (or None) and the interval table for a BiasResult.

    The table is ``BiasResult.intervals()`` (``bias.bias_intervals``): paired bootstrap intervals over
    the test prompts, and a permutation test of whether there is a bias at all; the report reads the
    same table.
    """
    t = res.intervals()
    s = t.set_index("condition")
    base = s.loc["no fix"]
    n, p = int(t.attrs["prompts"]), float(base.p_no_bias)
    p_text = format_p(p)
    chance = at_chance(res, n)
    if chance:
        return chance, chance, t
    if res.kind == "majority":
        summ = res.summary.set_index("condition").loc["no fix"] if "acc_balanced" in res.summary else None
        accs = f"accuracy {summ.acc_balanced:.2f} -> {summ.acc_one_fewer:.2f}, " if summ is not None else ""
        text = (f"Without a fix, one fewer demonstration of a label changes {accs}a change of {-base.bias:+.2f} (95% "
                f"interval {-base.bias_high:+.2f} to {-base.bias_low:+.2f}; {n} test sentences, the same in every "
                f"arrangement; permutation test of no bias p {p_text}).")
    else:
        orders = int((res.rows["condition"] == "no fix").sum())
        text = (f"Without a fix, accuracy varies by {base.bias:.0%} (sd) over {orders} demonstration orders ({n} "
                f"test sentences, the same in every order; permutation test of no bias p {p_text}).")
    resolved = p < 0.05
    if resolved and "fix in-context heads" in s.index:
        fix = s.loc["fix in-context heads"]
        text += (f" Fixing the in-context heads changes the bias {base.bias:.2f} -> {fix.bias:.2f} (a change of "
                 f"{-fix.drop:+.2f}, 95% interval {-fix.drop_high:+.2f} to {-fix.drop_low:+.2f}); reduction "
                 f"{reduction_text(fix.reduction, base.bias)}.")
        if "beyond_random" in s.columns and fix.beyond_random == fix.beyond_random:
            text += (f" Compared with the same fix in random heads, it lowers the bias {fix.beyond_random:+.2f} more "
                     f"({fix.beyond_random_low:+.2f} to {fix.beyond_random_high:+.2f}).")
    elif not resolved:
        text += (" Shuffling each sentence's outcomes among the arrangements gives a bias this large often, so a "
                 "reduction cannot be read from this sample.")
    warning = None if resolved else (
        f"With {n} test sentences the {res.kind} bias is not resolved (p {p_text}): the reduction "
        f"({reduction_text(res.reduction(), base.bias)}) means little here. Use more test sentences.")
    return text, warning, t


def reduction_text(r: float, bias: float) -> str:
    """A relative reduction as a percentage only where one makes sense: a bias there to reduce, and 0-100%."""
    if r != r or not bias > 0:
        return "not shown as a percentage: there is no bias to reduce"
    if r > 1:
        return "over 100%, not shown as a percentage: the fix reverses the bias"
    if r < 0:
        return "negative, not shown as a percentage: the fix makes the bias larger"
    return f"{r:.0%}"


def at_chance(res, n: int) -> str | None:
    """The sentence for a sample on which the model (no fix) is at chance, within sampling noise (two standard
    errors of 1/K on ``n`` test sentences), else None: no bias can be read from a model that is guessing."""
    k = sum(str(c).startswith("share_") for c in res.rows.columns) or 2
    no_fix = res.rows[res.rows["condition"] == "no fix"] if "condition" in res.rows else res.rows
    if no_fix.empty or n <= 0:
        return None
    acc = float(no_fix["accuracy"].mean())
    p0 = 1.0 / k
    if acc - p0 > 2 * (p0 * (1 - p0) / n) ** 0.5:
        return None
    return (f"The model is at chance here: no bias can be read (accuracy {acc:.2f} without a fix, chance "
            f"{p0:.2f} with {k} labels, {n} test sentences).")


# ---------------------------------------------------------------- one prompt's tokens and label attention

def token_table(tokenizer, prompt: BuiltPrompt) -> pd.DataFrame:
    """One row per token: position, token text, role (label word, query, demo, template, T)."""
    role = ["template"] * prompt.n_tokens
    demo_of = [0] * prompt.n_tokens
    for i, (a, b) in enumerate(prompt.demo_spans):
        for p in range(a, b):
            role[p], demo_of[p] = "demonstration", i + 1
    a, b = prompt.query_span
    for p in range(a, b):
        role[p] = "query"
    label_of = [""] * prompt.n_tokens
    for i, (p, w) in enumerate(zip(prompt.label_positions, prompt.demo_labels)):
        role[p], label_of[p], demo_of[p] = "label", w, i + 1
    role[prompt.last_position] = "T"
    toks = [tokenizer.decode([t]) for t in prompt.input_ids]
    return pd.DataFrame({"position": range(prompt.n_tokens), "token": toks, "role": role, "label": label_of,
                         "demo": demo_of})


def label_attention_table(prompt: BuiltPrompt, capture, heads, condition: str = "") -> pd.DataFrame:
    """Attention from T to every label position, per head: head, demo, position, label, attention."""
    attn = capture.attention_at(0, prompt.label_positions)  # [L, H, P]
    rows = []
    for layer, head in heads:
        for i, (p, w) in enumerate(zip(prompt.label_positions, prompt.demo_labels)):
            rows.append({"condition": condition, "head": head_name((layer, head)), "layer": layer, "head_index": head,
                         "demo": i + 1, "position": p, "label": w, "slot": f"#{i + 1} {w} @{p}",
                         "attention": float(attn[layer, head, i])})
    return pd.DataFrame(rows)


def label_sums(table: pd.DataFrame) -> pd.DataFrame:
    """Per condition, head and label: the summed attention from T on that label's positions."""
    if table.empty:
        return table
    return (table.groupby(["condition", "head", "label"], sort=False)["attention"].sum().reset_index())


def head_label_mass(prompt: BuiltPrompt, capture, heads, b: int = 0) -> torch.Tensor:
    """[len(heads), K] per head and label word: the attention from T on that label's positions (row ``b``)."""
    attn = capture.attention_at(b, prompt.label_positions)  # [L, H, P]
    own = torch.zeros(len(prompt.label_positions), len(prompt.label_words))
    for i, w in enumerate(prompt.demo_labels):
        own[i, prompt.label_words.index(w)] = 1.0
    rows = torch.stack([attn[x, y].float() for x, y in heads]) if heads else torch.zeros(0, own.shape[0])
    return rows @ own


def label_mass(prompt: BuiltPrompt, capture, heads) -> dict[str, float]:
    """Per label word: the attention from T on its positions, summed over ``heads``."""
    sums = head_label_mass(prompt, capture, [tuple(h) for h in heads]).sum(0)
    return {w: float(sums[k]) for k, w in enumerate(prompt.label_words)}


@dataclass
class LabelCapture:
    """The part of a capture the pages draw: attention from T at the label positions, [L, H, P].

    The app caches predictions with this instead of the full capture (value-output vectors and
    residuals of every head), so a cached result is kilobytes, not megabytes.
    """

    label_attn: torch.Tensor
    positions: tuple[int, ...]
    value_out = None  # analyses that need vectors run their own pass

    def attention_at(self, b: int, positions) -> torch.Tensor:
        idx = [self.positions.index(int(p)) for p in positions]
        return self.label_attn[..., idx]


def slim_prediction(pred: Prediction) -> Prediction:
    """A Prediction whose capture is only the label attention (what the pages show)."""
    cap = None
    if pred.capture is not None:
        positions = tuple(pred.prompt.label_positions)
        cap = LabelCapture(pred.capture.attention_at(0, positions).detach().float().cpu().clone(), positions)
    return Prediction(pred.prompt, dict(pred.probs), dict(pred.logits), pred.predicted, cap)


# ---------------------------------------------------------------- one prompt: in-context part and prior part

def exchange_first_two(demonstrations, label_words) -> list:
    """The demonstrations with the first two label words exchanged (the others kept): the paper's label
    swap for two labels, and for more labels the swap that flips ``m = logit(first) - logit(second)``."""
    from ..prompt import Demonstration

    a, b = label_words[0], label_words[1]
    out = []
    for d in demonstrations:
        d = d if isinstance(d, Demonstration) else Demonstration(*d)
        out.append(Demonstration(d.text, b if d.label == a else a if d.label == b else d.label))
    return out


@dataclass
class SwapCheck:
    """One prompt and its label-swapped twin, each before and after intervening on ``heads`` (and on
    each head alone): the margin ``m = logit(first) - logit(second)`` and its change (after minus
    before), split into the part that flips with the demonstrations' labels and the part that stays
    (``discrimination.swap_split``)."""

    kind: str
    heads: list[tuple[int, int]]
    label_words: tuple[str, ...]
    margins: pd.DataFrame  # rows: the set, then each head; columns: before/after on original/swapped
    split: dict  # the set's change, in-context part, prior part

    def per_head(self) -> pd.DataFrame:
        """Each head alone: change, in-context part and prior part."""
        from .discrimination import swap_split

        rows = []
        for r in self.margins.itertuples():
            if r.heads == "set":
                continue
            s = swap_split(r.after_original - r.before_original, r.after_swapped - r.before_swapped)
            rows.append({"head": r.heads, **s})
        return pd.DataFrame(rows)

    def sentence(self) -> str:
        from .discrimination import swap_reading

        w = self.label_words
        return (f"On this prompt, the {len(self.heads)} head{'s' if len(self.heads) != 1 else ''} change the margin "
                f"{w[0]}−{w[1]} by {self.split['change']:+.2f}: " + swap_reading(self.split, w) + ".")


def _prompt_and_swap(lm, demonstrations, query: str, words, template):
    """The prompt and its twin with every demonstration's label swapped (the first two label words exchanged)."""
    from ..prompt import build_prompt

    def build(demos):
        return build_prompt(lm.tokenizer, demos, query, words, template, max_tokens=lm.context_length)

    return build(demonstrations), build(exchange_first_two(demonstrations, words))


def swap_check(lm, demonstrations, query: str, label_words, template, heads, kind: str = "knockout",
               per_head: bool = True) -> SwapCheck:
    """Intervene on ``heads`` (together, and each alone unless ``per_head`` is False) on the prompt and on its
    label-swapped twin: one batched run per prompt (``margins_of_head_sets``; ablation rows are whole passes,
    so the live check asks for the set only)."""
    from .discrimination import swap_split

    heads = [(int(a), int(b)) for a, b in heads]
    words = tuple(label_words)
    orig, swap = _prompt_and_swap(lm, demonstrations, query, words, template)
    each = per_head and len(heads) > 1
    sets = [[], heads] + ([[h] for h in heads] if each else [])
    mo = [m for m, _ in margins_of_head_sets(lm, orig, sets, kind)]
    ms = [m for m, _ in margins_of_head_sets(lm, swap, sets, kind)]
    names = ["set"] + ([head_name(h) for h in heads] if each else [])
    margins = pd.DataFrame([{"heads": n, "before_original": mo[0], "after_original": mo[1 + i],
                             "before_swapped": ms[0], "after_swapped": ms[1 + i]} for i, n in enumerate(names)])
    split = swap_split(mo[1] - mo[0], ms[1] - ms[0])
    return SwapCheck(kind, heads, words, margins, split)


def live_check(lm, demonstrations, query: str, label_words, template, heads, kind: str = "knockout", draws: int = 3,
               seed: int = 0) -> tuple[EffectReadout, SwapCheck]:
    """The Prompt lab's live check: :func:`paired_effect` (the heads against ``draws`` random sets) and
    :func:`swap_check` (the change split by the label swap), the same numbers. With a knockout (it changes ``T``
    only) every row of both prompts runs as one batch of single-token passes over their cached prefixes
    (``engine.runs.rows_over_prompts``); an ablation changes every position, so it falls back to whole passes."""
    import torch

    from ..engine.runs import RowEdit, rows_over_prompts
    from .discrimination import swap_split

    heads = [(int(a), int(b)) for a, b in heads]
    words = tuple(label_words)
    orig, swap = _prompt_and_swap(lm, demonstrations, query, words, template)
    if kind != "knockout":
        return (paired_effect(lm, orig, heads, kind, draws, seed),
                swap_check(lm, demonstrations, query, words, template, heads, kind, per_head=False))
    sets = random_head_sets(lm, heads, draws, seed)
    rows_o = [RowEdit(), RowEdit.of("knockout", heads)] + [RowEdit.of("knockout", hs) for hs in sets]
    rows_s = [RowEdit(), RowEdit.of("knockout", heads)]
    lo, ls = rows_over_prompts(lm, [(orig, rows_o), (swap, rows_s)])
    mo = (lo[:, 0] - lo[:, 1]).tolist()
    ms = (ls[:, 0] - ls[:, 1]).tolist()
    pred = [words[int(i)] for i in torch.as_tensor(lo).argmax(-1).tolist()]
    eff = EffectReadout(kind, heads, words, mo[0], pred[0], mo[1], pred[1])
    for rnd, margin, predicted in zip(sets, mo[2:], pred[2:]):
        eff.random_margins.append(margin)
        eff.random_preds.append(predicted)
        eff.random_heads.append(rnd)
    margins = pd.DataFrame([{"heads": "set", "before_original": mo[0], "after_original": mo[1],
                             "before_swapped": ms[0], "after_swapped": ms[1]}])
    return eff, SwapCheck(kind, heads, words, margins, swap_split(mo[1] - mo[0], ms[1] - ms[0]))
