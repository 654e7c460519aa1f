"""Keys and values of prompts' prefixes, shared across reruns and sessions.

An edit of a prompt changes its tokens from some position on; everything before it was computed already, by
this session or another one on the same server. ``PrefixCache`` keeps the KV cache of the prompts the engine has
run, keyed by the model's identity, dtype and device, what changes every position's keys and values (the heads
ablated at every position) and the token ids. A new prompt takes the stored entry that shares its longest
token prefix, cropped to that prefix (at least its last token is recomputed), and runs only the rest:

- a query edit recomputes the query's tokens;
- an edit of a demonstration recomputes from that demonstration on;
- twenty students on the lesson's prompt share its prefix.

What is stored is what does not depend on an intervention at ``T``: every position before ``T``. The cache is
bounded in bytes (``ICLVIZ_PREFIX_CACHE_MB``, an operator setting), least recently used first out. Entries are
never changed in place: a reader gets its own cropped copy.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import torch

DEFAULT_MAX_MB = 256


def prefix_key(model, ablate=frozenset()) -> tuple:
    """The part of an entry's key that is not tokens: the model object (a stable id it is given once), its
    dtype and device, and the heads ablated at every position."""
    ident = getattr(model, "_iclviz_prefix_id", None)
    if ident is None:
        ident = uuid.uuid4().hex
        model._iclviz_prefix_id = ident
    p = next(model.parameters())
    return ident, str(p.dtype), str(p.device), tuple(sorted((int(a), int(b)) for a, b in ablate))


def _layers(cache):
    """The cache's layers when their layout is the one this module knows: plain key/value tensors per layer, no
    sliding window (a sliding-window layer drops old positions: its cache is not a prefix of the prompt)."""
    layers = getattr(cache, "layers", None)
    if layers is None or not all(getattr(x, "keys", None) is not None and hasattr(x, "values") for x in layers):
        return None
    if any(getattr(x, "sliding_window", None) for x in layers):
        return None
    return layers


def cache_bytes(cache) -> int:
    layers = _layers(cache) or []
    return sum(t.numel() * t.element_size() for x in layers for t in (x.keys, x.values))


def cache_length(cache) -> int:
    layers = _layers(cache) or []
    return max((x.keys.shape[-2] for x in layers), default=0)


def _rebuilt(cache, tensors):
    """A copy of ``cache``'s structure whose layer ``i`` holds ``tensors(i)`` = (keys, values). The deep copy skips
    the cache's own tensors (the memo maps them to None), so the original is never touched and other threads may
    read it meanwhile."""
    memo = {id(t): None for x in cache.layers for t in (x.keys, x.values)}
    out = copy.deepcopy(cache, memo)
    for i, x in enumerate(out.layers):
        x.keys, x.values = tensors(i)
    return out


def cropped_copy(cache, length: int):
    """A copy of ``cache`` holding its first ``length`` positions (its own tensors; the original is untouched),
    or None where the cache's layout is not the one this module knows (then the caller runs in full)."""
    layers = _layers(cache)
    if layers is None:
        return None
    return _rebuilt(cache, lambda i: (layers[i].keys[..., :length, :].clone(),
                                      layers[i].values[..., :length, :].clone()))


def stacked(parts) -> object | None:
    """One cache holding, along the batch, each ``(cache, repeats)`` of ``parts`` repeated (all of one length and
    layout); None where the layout is not the one this module knows."""
    layers = [_layers(c) for c, _ in parts]
    if any(x is None for x in layers) or len({cache_length(c) for c, _ in parts}) != 1:
        return None
    reps = [r for _, r in parts]
    return _rebuilt(parts[0][0], lambda i: tuple(
        torch.cat([getattr(ls[i], name).repeat_interleave(r, 0) for ls, r in zip(layers, reps)])
        for name in ("keys", "values")))


@dataclass
class _Entry:
    ids: tuple[int, ...]
    cache: object
    nbytes: int


@dataclass
class PrefixStats:
    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0
    computed_tokens: int = 0
    evictions: int = 0


class PrefixCache:
    """Least-recently-used store of KV caches, bounded in bytes; safe to share between threads (sessions)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_MB * 2**20, min_tokens: int = 1):
        self.max_bytes = int(max_bytes)
        self.min_tokens = int(min_tokens)
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.stats = PrefixStats()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def take(self, key: tuple, ids) -> tuple[int, object]:
        """(n, cache): a copy of the stored keys and values of ``ids[:n]``, the longest prefix of ``ids`` any entry
        of ``key`` holds, and never all of ``ids`` (the last token is always run); (0, None) when none is."""
        ids = tuple(int(i) for i in ids)
        limit = len(ids) - 1
        best, best_n = None, 0
        with self._lock:
            for k, e in self._entries.items():
                if k[0] != key:
                    continue
                n = _common_length(e.ids, ids, limit)
                if n > best_n:
                    best, best_n = k, n
            if best is None or best_n < self.min_tokens:
                self.stats.misses += 1
                self.stats.computed_tokens += len(ids)
                return 0, None
            self._entries.move_to_end(best)
            entry = self._entries[best]
        out = cropped_copy(entry.cache, best_n)
        with self._lock:
            if out is None:
                self.stats.misses += 1
                self.stats.computed_tokens += len(ids)
                return 0, None
            self.stats.hits += 1
            self.stats.reused_tokens += best_n
            self.stats.computed_tokens += len(ids) - best_n
        return best_n, out

    def put(self, key: tuple, ids, cache) -> bool:
        """Store ``cache`` as the keys and values of ``ids`` (as many positions as it holds); the store owns it
        afterwards. False when not stored (an unknown layout, a length that does not match, over the bound)."""
        n = cache_length(cache)
        ids = tuple(int(i) for i in ids)
        if _layers(cache) is None or n <= 0 or len(ids) != n:
            return False
        size = cache_bytes(cache)
        if size > self.max_bytes:
            return False
        with self._lock:
            k = (key, ids)
            old = self._entries.pop(k, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._entries[k] = _Entry(ids, cache, size)
            self.nbytes += size
            while self.nbytes > self.max_bytes and self._entries:
                _, e = self._entries.popitem(last=False)
                self.nbytes -= e.nbytes
                self.stats.evictions += 1
        return True


def _common_length(a: tuple, b: tuple, limit: int) -> int:
    n = min(len(a), len(b), limit)
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # the longest equal prefix, by bisection on tuple slices (fast in C)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


_SHARED: PrefixCache | None = None
_SHARED_LOCK = threading.Lock()


def shared_prefix_cache() -> PrefixCache:
    """The process's prefix cache (one per server: every session's prompts), bounded by
    ``ICLVIZ_PREFIX_CACHE_MB`` (0 turns it off)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            from .settings import prefix_cache_megabytes

            _SHARED = PrefixCache(prefix_cache_megabytes() * 2**20)
        return _SHARED


def set_shared_prefix_cache(cache: PrefixCache | None) -> None:
    """Replace the process's prefix cache (tests and benchmarks; None: rebuilt from the settings on next use)."""
    global _SHARED
    with _SHARED_LOCK:
        _SHARED = cache

