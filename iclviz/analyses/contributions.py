"""Each demonstration's contribution to the prediction, through the in-context heads.

For demonstration ``i`` with label position ``p_i`` and the in-context heads ``H``::

    contribution_i = sum_{(l,h) in H} A[l,h,T,p_i] * logit_minus(z[l,h,p_i])

with ``z[l,h,p] = v_p W_O^h`` the value-output vector (read from the run as label-word logits,
``Capture.value_label_logits``: ``z`` itself is never built) and
``logit_minus(u) = logits(u)[a] - logits(u)[b]`` under the linear ``final_scale`` lens
(``lens.py``: the final norm's weight and the final residual's scale at ``T``). That lens is
linear, so the contributions add up exactly to the heads' direct effect through the label
positions (the heads' outputs at ``T`` restricted to the label positions, projected); the
``final_norm`` lens is not linear and is refused here.

The label pair ``(a, b)``: the first and the second label word for two labels (the margin the
rest of iclviz shows, ``logit(first) - logit(second)``); for more labels, the predicted label
and the runner-up (by the model's label logits), unless ``pair`` names two label words.

Beside each contribution, the measured knockout effect (``conventions.SIGN_CONVENTION``: the margin
after minus the margin before) of knocking out the attention from ``T`` to ``p_i`` in the heads
(``A[l,h,T,p_i] = 0``, not renormalized), all demonstrations as rows of one batched run
(``engine.runs.knockout_each``: one pass up to ``T-1``, then one single-token row per demonstration),
plus a row with every label position knocked out.

The waterfall goes from the baseline margin to the prediction's margin: the baseline is the
prediction's margin minus the sum of the contributions, i.e. the margin with the heads'
label-position terms removed from the final residual (a direct-effect decomposition at the
frozen final-norm scale: nothing downstream is recomputed), then one step per demonstration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from ..conventions import effect
from ..engine.interventions import Head
from ..engine.lens import logit_minus
from ..engine.runs import knockout_each
from ..prompt import BuiltPrompt, PromptError
from ..validation import head_name, parse_heads
from .compare import PromptSpec, table_records

LINEAR_SCALING = "final_scale"


@dataclass
class Contributions:
    """Per demonstration: ``contribution`` (the formula above: a term of the margin) and ``knockout_effect``
    (the margin with that position knocked out minus the margin without: after − before, so the opposite sign
    of the contribution when the direct term dominates); ``per_head``: the terms of each contribution."""

    heads: list[Head]
    pair: tuple[str, str]
    prediction_margin: float  # logit(a) - logit(b) of the model, no intervention
    baseline_margin: float  # prediction_margin - sum of contributions
    total_contribution: float  # sum over demonstrations
    heads_direct: float  # the heads' whole output at T (every position), projected: for context
    knockout_all: float  # after − before: every label position knocked out in the heads
    predicted: str
    table: pd.DataFrame  # demo, position, label, text, attention (summed over heads), contribution, knockout_effect
    per_head: pd.DataFrame  # demo, head, attention, logit_minus_z, contribution
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def waterfall(self) -> pd.DataFrame:
        """Steps from the baseline margin to the prediction's: ``measure`` is plotly's
        (absolute, relative, total); ``cumulative`` the margin after the step."""
        rows = [{"step": "baseline (heads' label terms removed)", "measure": "absolute",
                 "value": self.baseline_margin, "cumulative": self.baseline_margin}]
        cum = self.baseline_margin
        for r in self.table.itertuples():
            cum += r.contribution
            rows.append({"step": f"#{r.demo} {r.label} @{r.position}", "measure": "relative",
                         "value": r.contribution, "cumulative": cum})
        rows.append({"step": "prediction", "measure": "total", "value": self.prediction_margin,
                     "cumulative": self.prediction_margin})
        return pd.DataFrame(rows)

    @staticmethod
    def from_dict(d: dict) -> Contributions:
        """The inverse of ``to_dict`` (a lesson file's stored contributions, drawn without a model). A file from
        before the one sign convention stored ``measured`` as before − after: it is turned around."""
        table = pd.DataFrame(d["table"])
        if "measured" in table.columns and "knockout_effect" not in table.columns:
            table = table.rename(columns={"measured": "knockout_effect"})
            table["knockout_effect"] = -table["knockout_effect"]
        everything = float(d["knockout_all"]) if "knockout_all" in d else -float(d["measured_all"])
        return Contributions(parse_heads(" ".join(d["heads"])), tuple(d["pair"]), float(d["prediction_margin"]),
                             float(d["baseline_margin"]), float(d["total_contribution"]), float(d["heads_direct"]),
                             everything, str(d["predicted"]), table,
                             pd.DataFrame(d.get("per_head", [])), list(d.get("notes", [])))

    def to_dict(self) -> dict:
        return {"heads": [head_name(h) for h in self.heads], "pair": list(self.pair),
                "prediction_margin": self.prediction_margin, "baseline_margin": self.baseline_margin,
                "total_contribution": self.total_contribution, "heads_direct": self.heads_direct,
                "knockout_all": self.knockout_all, "predicted": self.predicted, "notes": list(self.notes),
                "table": table_records(self.table), "per_head": table_records(self.per_head)}


def choose_pair(label_words, label_logits, pair=None) -> tuple[str, str]:
    """The label pair of the margin (see the module's docstring)."""
    words = tuple(label_words)
    if pair is not None:
        a, b = (str(x) for x in pair)
        if a not in words or b not in words or a == b:
            raise PromptError(f"the pair must be two different label words of {', '.join(words)}")
        return a, b
    if len(words) == 2:
        return words[0], words[1]
    order = torch.argsort(torch.as_tensor(label_logits), descending=True).tolist()
    return words[order[0]], words[order[1]]


def _text_of(lm, prompt: BuiltPrompt, i: int) -> str:
    a, b = prompt.demo_spans[i]
    return lm.tokenizer.decode(prompt.input_ids[a:b]).strip()


@torch.no_grad()
def demo_contributions(lm, prompt: BuiltPrompt | PromptSpec, heads, pair=None,
                       scaling: str = LINEAR_SCALING) -> Contributions:
    """Each demonstration's contribution through ``heads`` beside its measured knockout effect."""
    if scaling != LINEAR_SCALING:
        raise ValueError(f"contributions add up only under the linear lens {LINEAR_SCALING!r}")
    prompt = prompt.build(lm) if isinstance(prompt, PromptSpec) else prompt
    heads = [(int(a), int(b)) for a, b in dict.fromkeys((int(x), int(y)) for x, y in heads)]
    if not heads:
        raise ValueError("choose at least one head")
    # every head's value vectors at the label positions come out of the run as label-word logits (final_scale)
    res = lm.run([prompt], capture=True, value_positions=[prompt.label_positions])
    cap = res.capture
    label_logits = res.label_logits[0]
    a, b = choose_pair(prompt.label_words, label_logits, pair)
    ta, tb = prompt.label_token_ids[a], prompt.label_token_ids[b]
    ka, kb = prompt.label_words.index(a), prompt.label_words.index(b)
    z_minus = cap.value_label_logits[0, ..., ka] - cap.value_label_logits[0, ..., kb]  # [L, H, P]
    margin = float(label_logits[ka] - label_logits[kb])
    attn = cap.attention_at(0, prompt.label_positions)  # [L, H, P]
    P = len(prompt.label_positions)
    contrib = torch.zeros(len(heads), P)
    per_head = []
    heads_direct = 0.0
    for j, (x, y) in enumerate(heads):
        lm_z = z_minus[x, y]  # [P]: logit_minus(z[x, y, p]) under the linear lens
        contrib[j] = attn[x, y] * lm_z
        heads_direct += float(logit_minus(lm.arch, cap.head_out[:1, x, y], cap.resid_final[:1], ta, tb)[0])
        for i in range(P):
            per_head.append({"demo": i + 1, "position": prompt.label_positions[i], "label": prompt.demo_labels[i],
                             "head": head_name((x, y)), "attention": float(attn[x, y, i]),
                             "logit_minus_z": float(lm_z[i]), "contribution": float(contrib[j, i])})
    per_demo = contrib.sum(0)
    total = float(per_demo.sum())
    rows_pos = [[]] + [[p] for p in prompt.label_positions] + [list(prompt.label_positions)]
    kl = knockout_each(lm, prompt, rows_pos, heads)  # [P + 2, K]
    margins = (kl[:, ka] - kl[:, kb]).tolist()
    notes = []
    if abs(margins[0] - margin) > 1e-3 * max(1.0, abs(margin)):
        notes.append(f"the cached run's margin {margins[0]:.5f} differs from the full pass's {margin:.5f}")
    table = pd.DataFrame([{"demo": i + 1, "position": prompt.label_positions[i], "label": prompt.demo_labels[i],
                           "text": _text_of(lm, prompt, i), "attention": float(sum(attn[x, y, i] for x, y in heads)),
                           "contribution": float(per_demo[i]),
                           "knockout_effect": effect(margins[0], margins[1 + i])}
                          for i in range(P)],
                         columns=["demo", "position", "label", "text", "attention", "contribution", "knockout_effect"])
    return Contributions(heads, (a, b), margin, margin - total, total, heads_direct, effect(margins[0], margins[-1]),
                         prompt.label_words[int(label_logits.argmax())], table,
                         pd.DataFrame(per_head, columns=["demo", "position", "label", "head", "attention",
                                                         "logit_minus_z", "contribution"]), notes)
