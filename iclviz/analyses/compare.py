"""Prompt A/B, per head: what an edit of the prompt changes in each in-context head.

``compare_prompts(lm, a, b, heads)`` runs prompt A and prompt B (one instrumented pass each,
so a prompt compared with itself gives exactly zero differences) and reports, per head and
per label (labels are matched by their index in the label words, so a change of label words
compares the first label with the first label):

- ``attention``: the attention from ``T`` summed over that label's positions;
- ``head_logit``: the head's direct contribution to that label's logit, its output at ``T``
  ``o[l,h,T]`` projected with the lens (``lens.project``; by default the linear
  ``final_scale`` lens, with each prompt's own final residual);
- per label, the model's probability (over the label words) and logit, and the prediction,

for A, B and B - A. Per demonstration index, ``positions`` gives the attention from ``T`` to
that demonstration's label position in A and in B (demonstrations matched by index).

Edits that build B from A work on a ``PromptSpec`` (the demonstrations, query, label words and
template, i.e. what ``build_prompt`` takes): ``flip_label``, ``reorder``, ``swap_query``,
``change_label_words``, ``swap_all_labels``. The label swap (``label_swap.py``) and the Bias
lab's demonstration orders (``bias.demonstration_orders``) are instances: ``label_swap_pair``
and ``reorder_pairs`` yield those A/B pairs (``tests/test_views.py`` checks the equivalence).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
import torch

from ..engine.interventions import NONE, Head, Interventions, Plan
from ..engine.lens import project
from ..prompt import DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE, TEMPLATES, BuiltPrompt, PromptError, build_prompt
from ..validation import head_name, parse_shared_state
from .heads import DEFAULT_SCALING
from .readout import head_label_mass

# ---------------------------------------------------------------- the prompt as data

@dataclass(frozen=True)
class PromptSpec:
    """What ``build_prompt`` takes: demonstrations ``(text, label word)``, query, label words, template name."""

    demos: tuple[tuple[str, str], ...]
    query: str
    label_words: tuple[str, ...] = DEFAULT_LABEL_WORDS
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self):
        object.__setattr__(self, "demos", tuple((str(t), str(w)) for t, w in self.demos))
        object.__setattr__(self, "label_words", tuple(self.label_words))

    def build(self, lm) -> BuiltPrompt:
        """The tokenized prompt for ``lm`` (a LoadedModel; its tokenizer and context length)."""
        return build_prompt(lm.tokenizer, self.demos, self.query, self.label_words, self.template,
                            max_tokens=lm.context_length)

    def to_dict(self) -> dict:
        return {"demonstrations": [{"text": t, "label": w} for t, w in self.demos], "query": self.query,
                "label_words": list(self.label_words), "template": self.template}

    @staticmethod
    def from_dict(d) -> PromptSpec:
        """Validate untrusted data (ValidationError with a clear message)."""
        v = parse_shared_state(d, TEMPLATES)
        return PromptSpec(tuple(v["demos"]), v["query"], tuple(v["label_words"]), v["template"])


def _check_index(spec: PromptSpec, i: int) -> int:
    if not 0 <= int(i) < len(spec.demos):
        raise PromptError(f"there is no demonstration {int(i) + 1} (the prompt has {len(spec.demos)})")
    return int(i)


def flip_label(spec: PromptSpec, i: int, to: str | None = None) -> PromptSpec:
    """Demonstration ``i`` (0-based) gets label ``to`` (default: the next label word, cyclically)."""
    i = _check_index(spec, i)
    words = spec.label_words
    text, old = spec.demos[i]
    new = to if to is not None else words[(words.index(old) + 1) % len(words)] if old in words else words[0]
    if new not in words:
        raise PromptError(f"{new!r} is not one of the label words {', '.join(words)}")
    demos = list(spec.demos)
    demos[i] = (text, new)
    return PromptSpec(tuple(demos), spec.query, words, spec.template)


def reorder(spec: PromptSpec, order) -> PromptSpec:
    """The demonstrations in ``order`` (a permutation of 0..n-1: the new i-th is the old ``order[i]``)."""
    order = [int(o) for o in order]
    if sorted(order) != list(range(len(spec.demos))):
        raise PromptError(f"an order must list each of the {len(spec.demos)} demonstrations once")
    return PromptSpec(tuple(spec.demos[o] for o in order), spec.query, spec.label_words, spec.template)


def swap_query(spec: PromptSpec, query: str) -> PromptSpec:
    return PromptSpec(spec.demos, query, spec.label_words, spec.template)


def change_label_words(spec: PromptSpec, words) -> PromptSpec:
    """New label words, matched to the old by index (every demonstration's label is renamed)."""
    words = tuple(words)
    if len(words) != len(spec.label_words):
        raise PromptError(f"give {len(spec.label_words)} label words, one for each of {', '.join(spec.label_words)}")
    rename = dict(zip(spec.label_words, words))
    return PromptSpec(tuple((t, rename[w]) for t, w in spec.demos), spec.query, words, spec.template)


def swap_all_labels(spec: PromptSpec) -> PromptSpec:
    """Every demonstration's label moved to the next label word (foo <-> bar): the label swap."""
    words = spec.label_words
    nxt = {w: words[(i + 1) % len(words)] for i, w in enumerate(words)}
    return PromptSpec(tuple((t, nxt[w]) for t, w in spec.demos), spec.query, words, spec.template)


def is_label_swap(a: PromptSpec, b: PromptSpec) -> bool:
    """B is A with every demonstration's label swapped (two label words), nothing else changed."""
    return (len(a.label_words) == 2 and a.label_words == b.label_words and a.query == b.query
            and a.template == b.template and len(a.demos) == len(b.demos) and b == swap_all_labels(a))


def label_swap_pair(spec: PromptSpec) -> tuple[PromptSpec, PromptSpec]:
    """The label swap of ``label_swap.py`` as an A/B pair."""
    return spec, swap_all_labels(spec)


def order_of(spec: PromptSpec, key, seed: int = 0) -> list[int]:
    """The permutation the Bias lab's order ``key`` (``bias.demonstration_orders``) applies to ``spec``'s
    demonstrations: ``("last", k)`` moves label word k's demonstrations last (stable), ``("shuffle", s)``
    shuffles with ``random.Random(s + seed)``."""
    how, arg = key
    idx = list(range(len(spec.demos)))
    if how == "last":
        word = spec.label_words[arg]
        return [i for i in idx if spec.demos[i][1] != word] + [i for i in idx if spec.demos[i][1] == word]
    if how == "shuffle":
        random.Random(arg + seed).shuffle(idx)
        return idx
    raise ValueError(f"unknown order {key!r}")


def reorder_pairs(spec: PromptSpec, n_random: int = 3, seed: int = 0, order_seed: int = 0
                  ) -> Iterator[tuple[str, PromptSpec, PromptSpec]]:
    """``(order name, A, B)`` for each of the Bias lab's demonstration orders
    (``bias.demonstration_orders(K, n_random, order_seed)``, each applied with the sample seed ``seed``)."""
    from .bias import demonstration_orders

    for name, key in demonstration_orders(len(spec.label_words), n_random, order_seed):
        yield name, spec, reorder(spec, order_of(spec, key, seed))


# ---------------------------------------------------------------- the comparison

@dataclass
class PromptComparison:
    """Prompt A against prompt B, per head and label (see the module's docstring).

    ``heads`` table: one row per (head, label index): ``attention_a/_b/_diff``, ``head_logit_a/_b/_diff``.
    ``labels`` table: one row per label index: ``prob_a/_b/_diff``, ``logit_a/_b/_diff``.
    ``positions`` table: one row per (head, demonstration index): position, label and attention in A and B.
    """

    heads: list[Head]
    label_words_a: tuple[str, ...]
    label_words_b: tuple[str, ...]
    predicted_a: str
    predicted_b: str
    head_table: pd.DataFrame
    labels: pd.DataFrame
    positions: pd.DataFrame
    scaling: str
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One table for a CSV: the per-head rows (``kind`` = "head") and the model's rows (``kind`` = "model")."""
        model = self.labels.assign(kind="model", head="model")
        return pd.concat([self.head_table.assign(kind="head"), model], ignore_index=True)

    def to_dict(self) -> dict:
        return {"heads": [head_name(h) for h in self.heads], "label_words_a": list(self.label_words_a),
                "label_words_b": list(self.label_words_b), "predicted_a": self.predicted_a,
                "predicted_b": self.predicted_b, "scaling": self.scaling, "notes": list(self.notes),
                "head_table": table_records(self.head_table), "labels": table_records(self.labels),
                "positions": table_records(self.positions)}

    def swap_split(self) -> pd.DataFrame:
        """When B is A with the labels swapped: each head's direct contribution to the margin
        ``logit(first) - logit(second)`` in A and in B, the part that flips with the labels
        (``(A - B) / 2``: it follows the demonstrations) and the part that stays (``(A + B) / 2``: a vote)."""
        t = self.head_table
        rows = []
        for name in dict.fromkeys(t["head"]):
            h = t[t["head"] == name].set_index("label_index")
            ma = float(h.loc[0, "head_logit_a"] - h.loc[1, "head_logit_a"])
            mb = float(h.loc[0, "head_logit_b"] - h.loc[1, "head_logit_b"])
            rows.append({"head": name, "margin_part_a": ma, "margin_part_b": mb, "flips": (ma - mb) / 2,
                         "stays": (ma + mb) / 2})
        df = pd.DataFrame(rows, columns=["head", "margin_part_a", "margin_part_b", "flips", "stays"])
        df["reads"] = df["flips"].abs() > df["stays"].abs()
        return df

    def diff(self, head: Head, label: int = 0) -> dict:
        r = self.head_table[(self.head_table["head"] == head_name(head)) & (self.head_table["label_index"] == label)]
        return r.iloc[0].to_dict()


def table_records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in df.to_dict(orient="records")]


def _interventions(plan, prompt) -> Interventions:
    if plan is None:
        return NONE
    return plan.build([prompt]) if isinstance(plan, Plan) else plan


@torch.no_grad()
def _side(lm, prompt: BuiltPrompt, heads, scaling, plan):
    res = lm.run([prompt], interventions=_interventions(plan, prompt), capture=True, value_positions=None)
    cap = res.capture
    ids = prompt.label_token_id_list()
    ho = torch.stack([cap.head_out[0, a, b] for a, b in heads]) if heads else torch.zeros(0, lm.arch.d_model)
    head_logits = project(lm.arch, ho[None], cap.resid_final[:1], scaling, token_ids=ids)[0]  # [n_heads, K]
    attn = cap.attention_at(0, prompt.label_positions)  # [L, H, P]
    return res, cap, head_logits, head_label_mass(prompt, cap, heads), attn


def compare_prompts(lm, prompt_a: BuiltPrompt | PromptSpec, prompt_b: BuiltPrompt | PromptSpec, heads,
                    scaling: str = DEFAULT_SCALING, plan: Plan | Interventions | None = None) -> PromptComparison:
    """Per in-context head and label: attention from T to the label's positions, the head's direct
    contribution to the label's logit, and the prediction, for A, B and B - A (``plan``: the same
    intervention in both runs, built for each prompt)."""
    a = prompt_a.build(lm) if isinstance(prompt_a, PromptSpec) else prompt_a
    b = prompt_b.build(lm) if isinstance(prompt_b, PromptSpec) else prompt_b
    heads = [(int(x), int(y)) for x, y in heads]
    if len(a.label_words) != len(b.label_words):
        raise PromptError("prompts A and B need as many label words (labels are matched by their index)")
    notes = []
    if a.label_words != b.label_words:
        notes.append("label words differ: label k of A is compared with label k of B ("
                     + ", ".join(f"{x}->{y}" for x, y in zip(a.label_words, b.label_words)) + ")")
    if len(a.label_positions) != len(b.label_positions):
        notes.append(f"A has {len(a.label_positions)} demonstrations and B {len(b.label_positions)}: "
                     "per-position rows are matched by index where both have one")
    res_a, _, hl_a, mass_a, attn_a = _side(lm, a, heads, scaling, plan)
    res_b, _, hl_b, mass_b, attn_b = _side(lm, b, heads, scaling, plan)
    rows = []
    for j, (x, y) in enumerate(heads):
        for k in range(len(a.label_words)):
            rows.append({"head": head_name((x, y)), "layer": x, "head_index": y, "label_index": k,
                         "label": a.label_words[k], "label_b": b.label_words[k],
                         "attention_a": float(mass_a[j, k]), "attention_b": float(mass_b[j, k]),
                         "attention_diff": float(mass_b[j, k] - mass_a[j, k]),
                         "head_logit_a": float(hl_a[j, k]), "head_logit_b": float(hl_b[j, k]),
                         "head_logit_diff": float(hl_b[j, k] - hl_a[j, k])})
    head_table = pd.DataFrame(rows, columns=["head", "layer", "head_index", "label_index", "label", "label_b",
                                             "attention_a", "attention_b", "attention_diff", "head_logit_a",
                                             "head_logit_b", "head_logit_diff"])
    pa, pb = res_a.label_probs[0], res_b.label_probs[0]
    la, lb = res_a.label_logits[0], res_b.label_logits[0]
    labels = pd.DataFrame([{"label_index": k, "label": a.label_words[k], "label_b": b.label_words[k],
                            "prob_a": float(pa[k]), "prob_b": float(pb[k]), "prob_diff": float(pb[k] - pa[k]),
                            "logit_a": float(la[k]), "logit_b": float(lb[k]), "logit_diff": float(lb[k] - la[k])}
                           for k in range(len(a.label_words))])
    prow = []
    n = max(len(a.label_positions), len(b.label_positions))
    for x, y in heads:
        for i in range(n):
            ina, inb = i < len(a.label_positions), i < len(b.label_positions)
            at_a = float(attn_a[x, y, i]) if ina else float("nan")
            at_b = float(attn_b[x, y, i]) if inb else float("nan")
            prow.append({"head": head_name((x, y)), "demo": i + 1,
                         "position_a": a.label_positions[i] if ina else None,
                         "label_a": a.demo_labels[i] if ina else None, "attention_a": at_a,
                         "position_b": b.label_positions[i] if inb else None,
                         "label_b": b.demo_labels[i] if inb else None, "attention_b": at_b,
                         "attention_diff": at_b - at_a})
    positions = pd.DataFrame(prow, columns=["head", "demo", "position_a", "label_a", "attention_a", "position_b",
                                            "label_b", "attention_b", "attention_diff"])
    return PromptComparison(heads, a.label_words, b.label_words, a.label_words[res_a.predictions[0]],
                            b.label_words[res_b.predictions[0]], head_table, labels, positions, scaling, notes)
