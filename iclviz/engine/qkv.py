"""Query/key/value patches and recorders, applied inside the registered attention function.

Both act on the last position ``T`` of chosen heads only, and are carried by
``Interventions.qkv`` (see ``towers_patch.py`` for the analysis built on them):

- ``QKVRecorder`` keeps, for chosen heads, the post-rotary query at ``T`` and the keys and
  values at chosen positions, as the attention function receives them (the donor run).
- ``QKVPatch`` recomputes, per batch row, the row of ``T`` of chosen heads with the query at
  ``T`` and/or the keys/values at chosen positions replaced.

Grouped-query attention (fewer key-value heads than query heads, Qwen2 and Llama-style): a
key-value head is shared by several query heads. A patch of head ``(l, h)`` never writes into
the shared key/value tensors: the chosen query head's row is recomputed from its own patched
copy, and the other query heads sharing that key-value head are left exactly as they were.
A patched row replaces whatever other attention edit the same head got in that row (do not
combine a patch with knockouts of the same heads); a head ablation still applies afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

Head = tuple[int, int]


@dataclass(frozen=True, eq=False)
class HeadPatch:
    """What one head's row at ``T`` uses instead of its own vectors (None: its own).

    ``q`` [Dh]: the post-rotary query at ``T``; ``k``/``v`` [P, Dh]: keys/values written at the
    prompt positions ``positions`` (prompt positions, not padded).
    """

    q: torch.Tensor | None = None
    positions: tuple[int, ...] = ()
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


def _mask_row(attention_mask, b: int, h: int, S: int):
    if attention_mask is None:
        return None
    m = attention_mask[b, min(h, attention_mask.shape[1] - 1), -1, :S]
    return m


class QKVRecorder:
    """Records the post-rotary query at ``T`` and the keys/values at ``positions_per_row[b]``
    of the chosen heads: ``q[(b, layer, head)]`` [Dh], ``k``/``v[(b, layer, head)]`` [P, Dh]."""

    def __init__(self, heads: Iterable[Head], positions_per_row: Sequence[Sequence[int]]):
        self.heads = sorted({(int(a), int(b)) for a, b in heads})
        self.positions = [tuple(int(p) for p in ps) for ps in positions_per_row]
        self._layers = {a for a, _ in self.heads}
        self.q: dict[tuple[int, int, int], torch.Tensor] = {}
        self.k: dict[tuple[int, int, int], torch.Tensor] = {}
        self.v: dict[tuple[int, int, int], torch.Tensor] = {}

    def layers(self) -> set[int]:
        return set(self._layers)

    def apply(self, layer, query, key, value, attention_mask, scaling, pad, out, probs, scores):
        if layer not in self._layers:
            return probs, scores
        B, H = query.shape[0], query.shape[1]
        G = H // key.shape[1]
        if len(self.positions) != B:
            raise ValueError(f"a query/key/value recorder for {len(self.positions)} rows in a batch of {B}")
        for b in range(B):
            cols = torch.tensor(self.positions[b], dtype=torch.long, device=key.device) + int(pad[b])
            for lay, h in self.heads:
                if lay != layer:
                    continue
                self.q[(b, lay, h)] = query[b, h, -1].detach().clone()
                self.k[(b, lay, h)] = key[b, h // G].index_select(0, cols).detach().clone()
                self.v[(b, lay, h)] = value[b, h // G].index_select(0, cols).detach().clone()
        return probs, scores


class QKVPatch:
    """Per batch row ``b``, ``rows[b]`` maps a head to its HeadPatch (an empty map: the row is unchanged)."""

    def __init__(self, rows: Sequence[Mapping[Head, HeadPatch]]):
        self.rows = [{(int(a), int(b)): p for (a, b), p in r.items()} for r in rows]
        self._layers = {a for r in self.rows for a, _ in r}

    def layers(self) -> set[int]:
        return set(self._layers)

    def apply(self, layer, query, key, value, attention_mask, scaling, pad, out, probs, scores):
        """Overwrite ``out[b, -1, h]`` (and the captured ``probs``/``scores`` rows, when given) of each
        patched head with its row recomputed from the patched query/keys/values."""
        if layer not in self._layers:
            return probs, scores
        B, H, _, Dh = query.shape
        S = key.shape[2]
        G = H // key.shape[1]
        if len(self.rows) != B:
            raise ValueError(f"a query/key/value patch for {len(self.rows)} rows in a batch of {B}")
        scale = scaling if scaling is not None else Dh ** -0.5
        for b, patches in enumerate(self.rows):
            for (lay, h), hp in patches.items():
                if lay != layer:
                    continue
                q = query[b, h, -1] if hp.q is None else hp.q.to(query.device, query.dtype)
                k, v = key[b, h // G], value[b, h // G]  # [S, Dh], shared by the G query heads: copied below
                if hp.positions and (hp.k is not None or hp.v is not None):
                    cols = torch.tensor(hp.positions, dtype=torch.long, device=key.device) + int(pad[b])
                    if hp.k is not None:
                        k = k.clone()
                        k[cols] = hp.k.to(k.device, k.dtype)
                    if hp.v is not None:
                        v = v.clone()
                        v[cols] = hp.v.to(v.device, v.dtype)
                s = (k @ q) * scale  # [S]
                m = _mask_row(attention_mask, b, h, S)
                if m is not None:
                    s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
                p = torch.softmax(s.float(), dim=-1).to(query.dtype)
                out[b, -1, h] = p @ v
                if probs is not None:
                    probs[b, h] = p
                if scores is not None:
                    scores[b, h] = s
        return probs, scores
