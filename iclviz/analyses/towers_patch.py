"""The two towers, causally: patch the query, the keys or the values of chosen heads from B into A.

The paper's finding 4 (arXiv 2402.02872) says the query matrix (at ``T``) and the key matrix (at each label position)
of an in-context head compute a similarity that decides how much of each demonstration's label
flows into ``T``, and the value-output vectors carry the label. Here, in the chosen heads only:

- ``q``: the post-rotary query at ``T`` of prompt A is replaced by B's;
- ``k``: the post-rotary keys at A's label positions are replaced by B's keys at B's label
  positions, matched by demonstration index (``positions="all"``: every position, for prompts
  of equal token length);
- ``v``: the values, likewise;

and the prediction, the label margin and the heads' attention from ``T`` to each label's
positions are reported for each condition (``none``, ``q``, ``k``, ``v``, ``q+k``, ``all`` by
default; any ``+``-joined subset of q, k, v is accepted), all conditions as rows of one batch.

How: B runs once with a ``qkv.QKVRecorder`` (the chosen heads' vectors as the registered
attention function receives them, after the rotary embedding), then A runs as one row per
condition with a ``qkv.QKVPatch``. A patch acts on the row of ``T`` only: the query at ``T``, and
the keys/values as ``T`` sees them (earlier positions keep attending to A's own keys and values).
Post-rotary keys carry their own position: where B's label positions differ from A's (a
reordering, a longer sentence), each patched key is rotated on by ``p_A - p_B`` with the model's
own rotary embedding, so it carries B's content at A's position (rotate-half models; GPT-J's
interleaved rotation keeps B's phase, and says so in ``notes``). Absolute-position models have
no phase in the keys to correct.
Grouped-query attention: the chosen query head's row is recomputed with its own patched copy of
the shared key/value head; the other query heads sharing it are untouched (``qkv.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from ..engine.interventions import Head, Interventions
from ..engine.qkv import HeadPatch, QKVPatch, QKVRecorder
from ..prompt import BuiltPrompt, PromptError
from ..validation import head_name
from .compare import PromptSpec, table_records
from .readout import head_label_mass

DEFAULT_CONDITIONS = ("none", "q", "k", "v", "q+k", "all")
POSITION_MODES = ("labels", "all")


def condition_parts(condition: str) -> frozenset[str]:
    """``"none"`` -> {}, ``"all"`` -> {q, k, v}, ``"q+k"`` -> {q, k}."""
    c = str(condition).strip().lower()
    if c == "none":
        return frozenset()
    if c == "all":
        return frozenset("qkv")
    parts = frozenset(p.strip() for p in c.split("+"))
    if not parts or not parts <= set("qkv"):
        raise ValueError(f"unknown condition {condition!r}: use none, all, or q, k, v joined by '+'")
    return parts


def _positions(a: BuiltPrompt, b: BuiltPrompt, mode: str) -> tuple[list[int], list[int]]:
    if mode == "labels":
        if len(a.label_positions) != len(b.label_positions):
            raise PromptError(f"prompt A has {len(a.label_positions)} demonstrations and B {len(b.label_positions)}: "
                              "label positions are matched by demonstration index, so they need as many")
        return list(a.label_positions), list(b.label_positions)
    if mode == "all":
        if a.n_tokens != b.n_tokens:
            raise PromptError(f"patching every position needs prompts of equal length (A {a.n_tokens} tokens, "
                              f"B {b.n_tokens})")
        return list(range(a.n_tokens)), list(range(b.n_tokens))
    raise ValueError(f"positions must be one of {', '.join(POSITION_MODES)}")


@dataclass
class TowersPatch:
    """One row per condition (``summary``) and per condition and head (``per_head``).

    ``summary``: condition, patched parts, predicted, prob_<w> and logit_<w> per label word, margin
    (logit of the first label minus the second), attn_<w> (attention from T to label w's positions of A,
    summed over the heads); a last row ``donor (B)`` gives B's own run (B's label positions).
    """

    heads: list[Head]
    positions: str
    label_words: tuple[str, ...]
    summary: pd.DataFrame
    per_head: pd.DataFrame
    capture: object | None = None  # A's patched run's Capture (row i: condition i), for tests and drill-down
    donor_capture: object | None = None
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return self.summary.copy()

    def to_dict(self) -> dict:
        return {"heads": [head_name(h) for h in self.heads], "positions": self.positions,
                "label_words": list(self.label_words), "notes": list(self.notes),
                "summary": table_records(self.summary), "per_head": table_records(self.per_head)}


@torch.no_grad()
def record_qkv(lm, prompt: BuiltPrompt, heads, positions, capture: bool = True):
    """One run of ``prompt`` recording the heads' query at T and keys/values at ``positions``:
    (the recorder, the run's RunResult)."""
    rec = QKVRecorder(heads, [positions])
    res = lm.run([prompt], interventions=Interventions(qkv=(rec,)), capture=capture, value_positions=None)
    return rec, res


def shift_keys(lm, rec: QKVRecorder, pos_a, pos_b) -> None:
    """Rotate the recorded keys from B's positions to A's (``R(p_B)`` then ``R(p_A - p_B)`` is ``R(p_A)``)."""
    rotate = lm.model._iclviz_rotary
    for key, k in rec.k.items():
        offsets = torch.tensor([a - b for a, b in zip(pos_a, pos_b)], dtype=torch.long, device=k.device)
        rec.k[key] = rotate(k[None], offsets)[0]


def patch_interventions(rec: QKVRecorder, heads, positions_a, conditions) -> Interventions:
    """Row ``r`` patches ``conditions[r]``'s parts of the heads with the recorded vectors at ``positions_a``."""
    rows = []
    for cond in conditions:
        parts = condition_parts(cond)
        row = {}
        if parts:
            for h in heads:
                key = (0, h[0], h[1])
                row[h] = HeadPatch(q=rec.q[key] if "q" in parts else None,
                                   positions=tuple(positions_a) if parts & {"k", "v"} else (),
                                   k=rec.k[key] if "k" in parts else None, v=rec.v[key] if "v" in parts else None)
        rows.append(row)
    return Interventions(qkv=(QKVPatch(rows),))


@torch.no_grad()
def towers_patch(lm, prompt_a: BuiltPrompt | PromptSpec, prompt_b: BuiltPrompt | PromptSpec, heads,
                 positions: str = "labels", conditions=DEFAULT_CONDITIONS, keep_captures: bool = False
                 ) -> TowersPatch:
    """Patch the chosen heads' query at T / keys / values from B (the donor) into A, per condition."""
    a = prompt_a.build(lm) if isinstance(prompt_a, PromptSpec) else prompt_a
    b = prompt_b.build(lm) if isinstance(prompt_b, PromptSpec) else prompt_b
    heads = [(int(x), int(y)) for x, y in dict.fromkeys((int(x), int(y)) for x, y in heads)]
    if not heads:
        raise ValueError("choose at least one head")
    conditions = list(conditions)
    for c in conditions:
        condition_parts(c)
    pos_a, pos_b = _positions(a, b, positions)
    notes = []
    if a.label_words != b.label_words:
        notes.append("A and B have different label words; the report uses A's")
    rec, res_b = record_qkv(lm, b, heads, pos_b)
    if pos_a != pos_b and lm.arch.positional == "rotary":
        if lm.can_remove_positional_score:
            shift_keys(lm, rec, pos_a, pos_b)
        else:
            notes.append("B's label positions differ from A's and this model's rotation is "
                         f"{lm.arch.rotary_layout}: patched keys keep B's rotary phase")
    iv = patch_interventions(rec, heads, pos_a, conditions)
    res = lm.run([a] * len(conditions), interventions=iv, capture=True, value_positions=None)
    words = a.label_words
    rows, per_head = [], []

    def add(name, parts, r, res_, prompt, cap_row):
        probs, logits = res_.label_probs[r], res_.label_logits[r]
        mass = head_label_mass(prompt, res_.capture, heads, cap_row)
        row = {"condition": name, "patched": parts, "predicted": words[int(logits.argmax())],
               **{f"prob_{w}": float(probs[k]) for k, w in enumerate(words)},
               **{f"logit_{w}": float(logits[k]) for k, w in enumerate(words)},
               "margin": float(logits[0] - logits[1]),
               **{f"attn_{w}": float(mass[:, k].sum()) for k, w in enumerate(words)}}
        rows.append(row)
        for j, h in enumerate(heads):
            per_head.append({"condition": name, "head": head_name(h),
                             **{f"attn_{w}": float(mass[j, k]) for k, w in enumerate(words)}})

    for r, cond in enumerate(conditions):
        add(cond, "+".join(p for p in "qkv" if p in condition_parts(cond)) or "-", r, res, a, r)
    add("donor (B)", "-", 0, res_b, b, 0)
    return TowersPatch(heads, positions, words, pd.DataFrame(rows), pd.DataFrame(per_head),
                       res.capture if keep_captures else None, res_b.capture if keep_captures else None, notes)
