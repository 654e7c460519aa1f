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


@dataclass(frozen=True)
class Interventions:
    """What to change in one forward pass.

    - ``ablate``: heads whose output is removed at every position (the same as
      zeroing their columns of ``W_O``).
    - ``attention``: edits of the attention from ``T`` (knockout, rescaling).
    - ``depositional``: heads in which the query-key score from ``T`` to the positions in
      ``depositional_positions[b]`` is computed without its positional part (rotary
      models: each key is rotated to the query's position, so the score depends on
      content only).
    """

    ablate: frozenset[Head] = frozenset()
    attention: tuple[AttentionEdit, ...] = ()
    depositional: frozenset[Head] = frozenset()
    depositional_positions: tuple[tuple[int, ...], ...] = field(default=())

    def is_empty(self) -> bool:
        return not self.ablate and not self.attention and not self.depositional

    def layers_touched(self) -> set[int]:
        layers = {layer for layer, _ in self.ablate} | {layer for layer, _ in self.depositional}
        for edit in self.attention:
            if edit.heads is None:
                return {-1} | layers  # every layer
            layers |= {layer for layer, _ in edit.heads}
        return layers


NONE = Interventions()


def ablate(heads) -> Interventions:
    return Interventions(ablate=frozenset(_heads(heads)))


def knockout(positions_per_prompt, heads=None) -> Interventions:
    """Set the attention from ``T`` to the given positions to zero in ``heads`` (None: all)."""
    factors = tuple({int(p): 0.0 for p in ps} for ps in positions_per_prompt)
    return Interventions(attention=(AttentionEdit(factors, None if heads is None else frozenset(_heads(heads))),))


def rescale(factors_per_prompt, heads=None, renormalize: bool = False) -> Interventions:
    factors = tuple({int(p): float(f) for p, f in d.items()} for d in factors_per_prompt)
    return Interventions(
        attention=(AttentionEdit(factors, None if heads is None else frozenset(_heads(heads)), renormalize),)
    )


def remove_positional_score(positions_per_prompt, heads) -> Interventions:
    return Interventions(
        depositional=frozenset(_heads(heads)),
        depositional_positions=tuple(tuple(int(p) for p in ps) for ps in positions_per_prompt),
    )


def combine(*parts: Interventions) -> Interventions:
    dep_positions = ()
    for p in parts:
        if p.depositional:
            if dep_positions and p.depositional_positions != dep_positions:
                raise ValueError("cannot combine positional-score removals at different positions")
            dep_positions = p.depositional_positions
    return Interventions(
        ablate=frozenset().union(*(p.ablate for p in parts)),
        attention=tuple(e for p in parts for e in p.attention),
        depositional=frozenset().union(*(p.depositional for p in parts)),
        depositional_positions=dep_positions,
    )


def _heads(heads) -> list[Head]:
    return [(int(layer), int(head)) for layer, head in heads]
