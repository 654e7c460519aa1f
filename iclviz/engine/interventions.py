"""Interventions on heads, applied inside the instrumented attention function.

All positions are a prompt's own token indices (as in ``BuiltPrompt``); the runner
shifts them for left padding. A head is ``(layer, head)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Head = tuple[int, int]


@dataclass(frozen=True)
class AttentionEdit:
    """Multiply the attention from the last position ``T`` at chosen positions.

    ``factors[b]`` maps a position of prompt ``b`` to its factor (0 knocks it out).
    ``heads`` None means every head. With ``renormalize`` the edited row is rescaled
    to sum to one again; by default it is not (the paper sets ``A[T, p] = 0``).
    """

    factors: tuple[dict[int, float], ...]
    heads: frozenset[Head] | None = None
    renormalize: bool = False
    row_heads: tuple[frozenset[Head], ...] | None = None  # per batch row: the heads edited in that row

    def heads_of_row(self, b: int) -> frozenset[Head] | None:
        return self.row_heads[b] if self.row_heads is not None else self.heads


@dataclass(frozen=True)
class Interventions:
    """What to change in one forward pass.

    - ``ablate``: heads whose output is removed at every position (the same as
      zeroing their columns of ``W_O``).
    - ``attention``: edits of the attention from ``T`` (knockout, rescaling).
    - ``row_ablate``: per batch row, more heads whose output is removed in that row only
      (many single-head ablations run as rows of one batch).
    - ``positional_score_heads``: heads in which the query-key score from ``T`` to the positions in
      ``positional_score_positions[b]`` is computed without its positional part (rotary
      models: each key is rotated to the query's position, so the score depends on
      content only).
    - ``qkv``: query/key/value patches and recorders (``qkv.QKVPatch``, ``qkv.QKVRecorder``),
      acting on the last position's row of their heads only (the two towers, causally).
    """

    ablate: frozenset[Head] = frozenset()
    attention: tuple[AttentionEdit, ...] = ()
    positional_score_heads: frozenset[Head] = frozenset()
    positional_score_positions: tuple[tuple[int, ...], ...] = field(default=())
    row_ablate: tuple[frozenset[Head], ...] = ()
    qkv: tuple = ()  # QKVPatch / QKVRecorder objects (per-row by construction)

    def is_empty(self) -> bool:
        return (not self.ablate and not self.attention and not self.positional_score_heads
                and not any(self.row_ablate) and not self.qkv)

    def has_rows(self) -> bool:
        """Whether rows of one batch get different heads (per-row masks)."""
        return bool(self.row_ablate) or any(e.row_heads is not None for e in self.attention) or bool(self.qkv)

    def layers_touched(self) -> set[int]:
        layers = {layer for layer, _ in self.ablate} | {layer for layer, _ in self.positional_score_heads}
        layers |= {layer for hs in self.row_ablate for layer, _ in hs}
        for edit in self.attention:
            if edit.row_heads is not None:
                layers |= {layer for hs in edit.row_heads for layer, _ in hs}
            elif edit.heads is None:
                return {-1} | layers  # every layer
            else:
                layers |= {layer for layer, _ in edit.heads}
        return layers


NONE = Interventions()


def ablate(heads) -> Interventions:
    return Interventions(ablate=frozenset(_heads(heads)))


def knockout(positions_per_prompt, heads=None) -> Interventions:
    """Set the attention from ``T`` to the given positions to zero in ``heads`` (None: all)."""
    factors = tuple({int(p): 0.0 for p in ps} for ps in positions_per_prompt)
    return Interventions(attention=(AttentionEdit(factors, None if heads is None else frozenset(_heads(heads))),))


def knockout_rows(positions_per_row, heads_per_row) -> Interventions:
    """Row ``b`` of a batch knocks out the attention from ``T`` to ``positions_per_row[b]`` in
    ``heads_per_row[b]`` only (an empty set leaves the row unchanged)."""
    if len(positions_per_row) != len(heads_per_row):
        raise ValueError("one position list and one head set per row")
    factors = tuple({int(p): 0.0 for p in ps} for ps in positions_per_row)
    rows = tuple(frozenset(_heads(hs)) for hs in heads_per_row)
    return Interventions(attention=(AttentionEdit(factors, None, False, rows),))


def ablate_rows(heads_per_row) -> Interventions:
    """Row ``b`` of a batch has the heads ``heads_per_row[b]`` removed (at every position of the pass)."""
    return Interventions(row_ablate=tuple(frozenset(_heads(hs)) for hs in heads_per_row))


def rescale(factors_per_prompt, heads=None, renormalize: bool = False) -> Interventions:
    factors = tuple({int(p): float(f) for p, f in d.items()} for d in factors_per_prompt)
    return Interventions(
        attention=(AttentionEdit(factors, None if heads is None else frozenset(_heads(heads)), renormalize),)
    )


def remove_positional_score(positions_per_prompt, heads) -> Interventions:
    return Interventions(
        positional_score_heads=frozenset(_heads(heads)),
        positional_score_positions=tuple(tuple(int(p) for p in ps) for ps in positions_per_prompt),
    )


def combine(*parts: Interventions) -> Interventions:
    dep_positions = ()
    for p in parts:
        if p.positional_score_heads:
            if dep_positions and p.positional_score_positions != dep_positions:
                raise ValueError("cannot combine positional-score removals at different positions")
            dep_positions = p.positional_score_positions
    return Interventions(
        ablate=frozenset().union(*(p.ablate for p in parts)),
        attention=tuple(e for p in parts for e in p.attention),
        positional_score_heads=frozenset().union(*(p.positional_score_heads for p in parts)),
        positional_score_positions=dep_positions,
        row_ablate=_combine_rows([p.row_ablate for p in parts]),
        qkv=tuple(h for p in parts for h in p.qkv),
    )


def _combine_rows(row_sets):
    row_sets = [r for r in row_sets if r]
    if not row_sets:
        return ()
    if len({len(r) for r in row_sets}) != 1:
        raise ValueError("cannot combine per-row ablations of different batch sizes")
    return tuple(frozenset().union(*parts) for parts in zip(*row_sets))


def _heads(heads) -> list[Head]:
    return [(int(layer), int(head)) for layer, head in heads]


# ---------------------------------------------------------------- plans over prompts

PLAN_KINDS = ("none", "ablate", "knockout", "majority_fix", "remove_positional_score")


@dataclass(frozen=True)
class Plan:
    """A named intervention on a head set, turned into Interventions for a batch of prompts.

    - ``ablate``: remove the heads' outputs.
    - ``knockout``: zero the heads' attention from T to every label position.
    - ``majority_fix``: in the heads, multiply attention at label ``c``'s positions by
      ``N / (K * n_c)`` (N demonstrations, K labels, n_c of label c), so each label
      gets the share it would have with balanced demonstrations; 1 when balanced.
    - ``remove_positional_score``: in the heads, remove the positional part of the score at label positions.
    """

    kind: str = "none"
    heads: tuple[Head, ...] = ()

    def __post_init__(self):
        if self.kind not in PLAN_KINDS:
            raise ValueError(f"unknown intervention {self.kind!r}; choose one of {', '.join(PLAN_KINDS)}")

    def build(self, prompts) -> Interventions:
        if self.kind == "none" or not self.heads and self.kind != "none":
            return NONE
        if self.kind == "ablate":
            return ablate(self.heads)
        if self.kind == "knockout":
            return knockout([p.label_positions for p in prompts], heads=self.heads)
        if self.kind == "majority_fix":
            return rescale([majority_factors(p) for p in prompts], heads=self.heads)
        return remove_positional_score([p.label_positions for p in prompts], self.heads)

    def label(self) -> str:
        return self.kind if self.kind == "none" else f"{self.kind} {len(self.heads)} heads"


def majority_factors(prompt) -> dict[int, float]:
    counts = {w: prompt.demo_labels.count(w) for w in set(prompt.demo_labels)}
    n, k = len(prompt.demo_labels), len(prompt.label_words)
    return {p: n / (k * counts[w]) for p, w in zip(prompt.label_positions, prompt.demo_labels)}
