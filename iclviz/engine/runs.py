"""Runs: every forward pass the library makes, on top of the attention instrumentation in ``capture``.

- ``run_ids``: one pass over left-padded prompts, with interventions and capture.
- ``run_ids_shared_prefix``: the prompts' shared prefix (the demonstrations) computed once, into a KV cache.
- ``T``-rows (``last_position_logits``, ``knockout_each``): one prompt runs up to ``T - 1`` once; each row of a
  batch of single-token passes over that cache changes something at ``T`` only (a knockout, an ablation at
  ``T``). A scan of every deep head costs about as much as a few plain passes.
- ``full_ablation_logits``: heads removed at every position (the demonstrations' keys and values change too,
  so these rows are whole passes).
- ``check_finite``: the one check that a pass produced finite logits (``NonFiniteOutput`` otherwise).

Where a ``PrefixCache`` is given, a prompt's prefix is read from it and stored back (``prefix_cache``).
"""

from __future__ import annotations

import contextvars
import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import Cancelled, NonFiniteOutput
from .capture import ACTIVE_RUN, RunResult, RunState, assemble_capture, importance_key, instrument, pad_batch
from .interventions import NONE, Head, Interventions, ablate_rows, combine, knockout_rows
from .prefix_cache import PrefixCache, cropped_copy, prefix_key, shared_prefix_cache, stacked

if TYPE_CHECKING:
    from .models import LoadedModel


def check_finite(values, name: str = "the model") -> None:
    """Raise ``NonFiniteOutput`` when a pass produced NaN or infinite label logits (never show garbage).

    ``values``: a tensor of logits, or a ``RunResult`` (its label logits are checked)."""
    logits = values if isinstance(values, torch.Tensor) else getattr(values, "label_logits", None)
    if logits is not None and not bool(torch.isfinite(logits).all()):
        from .offline import cache_root

        raise NonFiniteOutput(f"{name} produced NaN or infinite logits: its weights are damaged (for an offline "
                              f"model, run `python -m iclviz verify`, or delete {cache_root() / 'models'} to rebuild "
                              "it) or the dtype overflows (try float32)")


@torch.no_grad()
def run_ids(model, prompt_ids: list[list[int]], label_token_ids: list[int], interventions: Interventions = NONE,
            capture: bool = True, value_positions: list[list[int]] | None = None, pad_id: int = 0,
            hidden_layer: int | None = None, value_heads="all", importance=None, full_rows_layers=()) -> RunResult:
    """One forward pass over left-padded prompts, with interventions and (optionally) capture.

    ``value_heads``: whose full value-output vectors to keep ("all", a list of heads, or None:
    only their label-word logits). ``importance``: a lens scaling (or ``(scaling, layers)``) to
    compute every head's importance on the model's device. ``full_rows_layers``: layers whose
    every query row of attention is kept (``Capture.full_attn``).
    """
    arch = instrument(model)
    device = input_device(model)
    ids, mask, position_ids, pad = pad_batch(prompt_ids, pad_id, device)
    vpos = None
    if capture and value_positions is not None:
        if len({len(v) for v in value_positions}) != 1:
            raise ValueError("every prompt in a batch needs the same number of value positions")
        vpos = torch.tensor(value_positions, dtype=torch.long) + pad[:, None]
    if interventions.attention:
        for edit in interventions.attention:
            if len(edit.factors) != len(prompt_ids):
                raise ValueError("an attention edit needs one position map per prompt")
    if interventions.positional_score_heads and len(interventions.positional_score_positions) != len(prompt_ids):
        raise ValueError("a positional-score removal needs one position list per prompt")
    state = RunState(arch, interventions, capture, pad, vpos, getattr(model, "_iclviz_rotary", None), hidden_layer,
                      label_ids=label_token_ids, value_heads=value_heads, full_rows_layers=full_rows_layers)
    token = ACTIVE_RUN.set(state if (capture or not interventions.is_empty()) else None)
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False, logits_to_keep=1)
    finally:
        ACTIVE_RUN.reset(token)
    logits = out.logits[:, -1].float().cpu()
    cap = None
    if capture:
        cap = assemble_capture(arch, [state], ids.shape[1], pad, vpos - pad[:, None] if vpos is not None else None,
                        importance_key(importance, arch.n_layers))
    return RunResult(logits=logits, label_token_ids=list(label_token_ids), capture=cap)


def input_device(model) -> torch.device:
    """Where the input ids go: the embedding's device (the first device of a sharded model)."""
    emb = model.get_input_embeddings()
    w = getattr(emb, "weight", None)
    if w is not None and w.device.type != "meta":
        return w.device
    hook = getattr(emb, "_hf_hook", None)
    return torch.device(getattr(hook, "execution_device", None) or "cpu")


def common_prefix_length(prompt_ids: list[list[int]]) -> int:
    """Length of the token prefix all prompts share (at least one token is left to each)."""
    first = prompt_ids[0]
    n = min(len(p) for p in prompt_ids) - 1
    for i in range(max(n, 0)):
        if any(p[i] != first[i] for p in prompt_ids):
            return i
    return max(n, 0)


def one_prompt(iv: Interventions, b: int) -> Interventions:
    """The part of ``iv`` that concerns prompt ``b`` of a batch, as a one-prompt intervention."""
    from .interventions import AttentionEdit

    return Interventions(
        ablate=iv.ablate,
        attention=tuple(AttentionEdit((e.factors[b],), e.heads, e.renormalize) for e in iv.attention),
        positional_score_heads=iv.positional_score_heads,
        positional_score_positions=(iv.positional_score_positions[b],) if iv.positional_score_heads else (),
    )


@torch.no_grad()
def run_ids_shared_prefix(model, prompt_ids: list[list[int]], label_token_ids: list[int], prefix_len: int,
                          interventions: Interventions = NONE, capture: bool = True,
                          value_positions: list[list[int]] | None = None, value_heads="all",
                          importance=None) -> RunResult:
    """Like ``run_ids``, but the shared prefix (the demonstrations) is computed once.

    The prefix pass carries the head ablations (they act at every position); the other
    interventions act only on the last position's attention row, so they apply in the
    per-prompt suffix passes, which read the prefix's keys and values from a KV cache.
    Results equal ``run_ids`` up to float rounding (tested); captured rows are left-padded
    to the longest prompt, as in ``run_ids``.
    """
    if interventions.has_rows():
        raise ValueError("per-row interventions need run_ids (the rows of one batch differ), not a shared prefix")
    arch = instrument(model)
    device = input_device(model)
    rotary = getattr(model, "_iclviz_rotary", None)
    cache = prefix_kv(model, prompt_ids[0], prefix_len, None, interventions.ablate)  # the ablations act here too
    cache_kw = cache_keyword(model)
    logits, states = [], []
    for b, ids in enumerate(prompt_ids):
        vpos = torch.tensor([value_positions[b]], dtype=torch.long) if capture and value_positions is not None \
            else None
        one = one_prompt(interventions, b) if not interventions.is_empty() else NONE
        state = RunState(arch, one, capture, torch.zeros(1, dtype=torch.long), vpos, rotary,
                          label_ids=label_token_ids, value_heads=value_heads)
        token = ACTIVE_RUN.set(state if (capture or not one.is_empty()) else None)
        try:
            out = model(input_ids=torch.tensor([ids[prefix_len:]], device=device), **{cache_kw: copy.deepcopy(cache)},
                        position_ids=torch.arange(prefix_len, len(ids), device=device)[None], use_cache=True,
                        logits_to_keep=1)
        finally:
            ACTIVE_RUN.reset(token)
        logits.append(out.logits[:, -1].float().cpu())
        states.append(state)
    cap = None
    if capture:
        S = max(len(p) for p in prompt_ids)
        pad = torch.tensor([S - len(p) for p in prompt_ids], dtype=torch.long)
        vpos = torch.tensor(value_positions, dtype=torch.long) if value_positions is not None else None
        cap = assemble_capture(arch, states, S, pad, vpos, importance_key(importance, arch.n_layers))
    return RunResult(logits=torch.cat(logits), label_token_ids=list(label_token_ids), capture=cap)


# ---------------------------------------------------------------- one prompt over the prefix cache

def prefix_store(enabled: bool = True) -> PrefixCache | None:
    """The shared prefix cache when it is on (``ICLVIZ_PREFIX_CACHE_MB`` > 0) and ``enabled``; else None."""
    if not enabled:
        return None
    store = shared_prefix_cache()
    return store if store.max_bytes > 0 else None


def _output_cache(out):
    return getattr(out, "cache", None) or out.past_key_values


@torch.no_grad()
def prefix_kv(model, ids: list[int], n: int, store: PrefixCache | None, ablate=frozenset()):
    """The keys and values of ``ids[:n]`` (heads ``ablate`` removed at every position): the longest prefix the
    store holds, the rest computed and stored back. Returns a cache the caller owns (None when ``n`` is 0)."""
    if n <= 0:
        return None
    device = input_device(model)
    key = prefix_key(model, ablate)
    m, cache = store.take(key, ids[:n + 1]) if store is not None else (0, None)
    if m < n:
        state = None
        if ablate:
            arch = instrument(model)
            state = RunState(arch, Interventions(ablate=tuple(ablate)), False, torch.zeros(1, dtype=torch.long),
                             None, getattr(model, "_iclviz_rotary", None))
        token = ACTIVE_RUN.set(state)
        try:
            kw = {cache_keyword(model): cache} if cache is not None else {}
            out = model(input_ids=torch.tensor([ids[m:n]], device=device),
                        position_ids=torch.arange(m, n, device=device)[None], use_cache=True, logits_to_keep=1, **kw)
        finally:
            ACTIVE_RUN.reset(token)
        cache = _output_cache(out)
        if store is not None:
            copy_ = cropped_copy(cache, n)
            if copy_ is not None:
                store.put(key, ids[:n], copy_)
    return cache


@torch.no_grad()
def run_ids_cached(model, ids: list[int], label_token_ids: list[int], store: PrefixCache,
                   interventions: Interventions = NONE, capture: bool = True, value_positions: list[int] | None = None,
                   value_heads="all", importance=None, rows: int = 1) -> RunResult:
    """``run_ids`` for one prompt, reading the keys and values of its longest stored prefix and computing only
    the rest: the positions before ``T`` (stored back; no intervention at ``T`` reaches them; head ablations,
    which act at every position, are part of the key), then ``T`` with the interventions and the capture. Equal
    to ``run_ids`` up to float rounding (tested on every supported architecture). ``rows``: the same prompt as
    that many rows of one batch (per-row edits at ``T``: knockouts, q/k/v patches), all over one cached prefix."""
    if any(interventions.row_ablate):
        raise ValueError("per-row ablations change every position: they need run_ids, not a cached prefix")
    arch = instrument(model)
    device = input_device(model)
    n = len(ids)
    # Everything before T first (from the store, the rest computed and stored back), then T alone: a prompt's
    # numbers do not depend on what the store held (a prompt run twice, or compared with itself, gives exactly
    # the same numbers), and what is stored never saw an intervention at T.
    cache = prefix_kv(model, ids, n - 1, store, interventions.ablate)
    if rows > 1 and cache is not None:
        cache = stacked([(cache, rows)])
        if cache is None:  # a cache layout this module does not know: the whole batch in one plain pass
            return run_ids(model, [ids] * rows, label_token_ids, interventions, capture,
                           [value_positions] * rows if value_positions is not None else None,
                           value_heads=value_heads, importance=importance)
    m = n - 1
    vpos = (torch.tensor([value_positions] * rows, dtype=torch.long) if capture and value_positions is not None
            else None)
    pad = torch.zeros(rows, dtype=torch.long)
    state = RunState(arch, interventions, capture, pad, vpos, getattr(model, "_iclviz_rotary", None),
                     label_ids=label_token_ids, value_heads=value_heads)
    token = ACTIVE_RUN.set(state if (capture or not interventions.is_empty()) else None)
    try:
        kw = {cache_keyword(model): cache} if cache is not None else {}
        out = model(input_ids=torch.tensor([ids[m:]] * rows, device=device),
                    position_ids=torch.arange(m, n, device=device)[None].expand(rows, n - m), use_cache=True,
                    logits_to_keep=1, **kw)
    finally:
        ACTIVE_RUN.reset(token)
    cap = None
    if capture:
        cap = assemble_capture(arch, [state], n, pad, vpos, importance_key(importance, arch.n_layers))
    return RunResult(logits=out.logits[:, -1].float().cpu(), label_token_ids=list(label_token_ids), capture=cap)


# ---------------------------------------------------------------- rows at T

@dataclass(frozen=True)
class RowEdit:
    """One row of a last-position batch: what is changed at ``T`` (head sets may be empty)."""

    knockout: frozenset[Head] = frozenset()
    ablate: frozenset[Head] = frozenset()

    @staticmethod
    def of(kind: str, heads) -> RowEdit:
        hs = frozenset((int(a), int(b)) for a, b in heads)
        if kind == "knockout":
            return RowEdit(knockout=hs)
        if kind == "ablate_t":
            return RowEdit(ablate=hs)
        raise ValueError(f"a last-position row is 'knockout' or 'ablate_t', not {kind!r}")


def cache_keyword(model) -> str:
    """The keyword of ``model.forward`` that takes a KV cache (transformers renamed ``past_key_values`` to
    ``cache``; whichever this version has)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _forward(model, ids, start: int, cache, rows: int = 1, state=None, label_ids=None):
    """Run token ids [rows, n] at positions start.. on top of ``cache``.

    Returns (label-word logits at the last position, or None without ``label_ids``; the cache).
    The base model is called (no vocabulary-wide unembedding): only the label words' rows of
    ``W_U`` are applied to the final hidden state.
    """
    device = input_device(model)
    n = ids.shape[1]
    base = model.base_model
    kw = {cache_keyword(base): cache} if cache is not None else {}
    token = ACTIVE_RUN.set(state)
    try:
        out = base(input_ids=ids.to(device), position_ids=torch.arange(start, start + n, device=device)[None].expand(
            rows, n), use_cache=True, **kw)
    finally:
        ACTIVE_RUN.reset(token)
    new_cache = getattr(out, "cache", None) or out.past_key_values
    if label_ids is None:
        return None, new_cache
    arch = model._iclviz_arch
    w = arch.unembed_matrix()[label_ids]
    hidden = out.last_hidden_state[:, -1]
    logits = hidden @ w.to(hidden.device).T
    b = arch.unembed_bias()
    if b is not None:
        logits = logits + b[label_ids].to(hidden.device)
    return logits.float(), new_cache


def rows_by_first_layer(rows: list[RowEdit], n_layers: int, min_rows: int = 24) -> list[tuple[int, list[int]]]:
    """Row indices in buckets, each with the first layer any of its rows' edits touches: the
    layers below it run once for the whole bucket. Neighbouring layers are merged until a
    bucket holds ``min_rows`` rows, since every pass reads all the weights it uses (on a CPU
    that, not the arithmetic, is the cost of a few rows)."""
    by_layer: dict[int, list[int]] = {}
    for j, r in enumerate(rows):
        layers = [a for a, _ in r.knockout | r.ablate]
        by_layer.setdefault(min(layers) if layers else n_layers - 1, []).append(j)
    buckets: list[tuple[int, list[int]]] = []
    for layer in sorted(by_layer, reverse=True):  # deepest first; a bucket starts at its shallowest layer
        if buckets and len(buckets[-1][1]) < min_rows:
            buckets[-1] = (layer, buckets[-1][1] + by_layer[layer])
        else:
            buckets.append((layer, list(by_layer[layer])))
    if len(buckets) > 1 and len(buckets[-1][1]) < min_rows:  # a small shallow remainder joins its neighbour
        first, idx = buckets.pop()
        buckets[-1] = (first, buckets[-1][1] + idx)
    return sorted(buckets)


def _repeat_from(cache, rows: int, first: int):
    """A copy of ``cache`` whose layers from ``first`` on hold ``rows`` copies of the one prompt."""
    c = copy.deepcopy(cache)
    if rows > 1:
        for layer in c.layers[first:]:
            layer.batch_repeat_interleave(rows)
    return c


_EXPAND: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("iclviz_expand", default=None)


class _rows_from_layer:
    """While active (in this context only), the residual stream entering layer ``first`` is
    repeated into ``rows`` rows: the layers below run once for all rows, since no row differs
    there. A forward pre-hook, removed on exit; other threads never see it."""

    def __init__(self, arch, first: int, rows: int):
        self.arch, self.first, self.rows = arch, first, rows

    def __enter__(self):
        self.token = _EXPAND.set((self.first, self.rows))
        self.handle = self.arch.layers[self.first].register_forward_pre_hook(_expand_hook(self.first),
                                                                             with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        _EXPAND.reset(self.token)
        return False


def _expand_hook(first: int):
    def hook(module, args, kwargs):
        want = _EXPAND.get()
        if want is None or want[0] != first or want[1] == 1:
            return None
        rows = want[1]
        if args:
            hidden = args[0]
            return (hidden.expand(rows, *hidden.shape[1:]).contiguous(), *args[1:]), kwargs
        hidden = kwargs["hidden_states"]
        kwargs = dict(kwargs, hidden_states=hidden.expand(rows, *hidden.shape[1:]).contiguous())
        return args, kwargs
    return hook


def _batch_setup(lm: LoadedModel, prompts):
    """The instrumented model's handles, the label ids, the prompts' ids and the length of the prefix they
    share (at least one token is left to each prompt)."""
    model = lm.model
    arch = instrument(model)
    ids_all = [p.input_ids for p in prompts]
    prefix = common_prefix_length(ids_all) if len(ids_all) > 1 else len(ids_all[0]) - 1
    prefix = min(prefix, min(len(i) for i in ids_all) - 1)
    return (model, arch, getattr(model, "_iclviz_rotary", None), prompts[0].label_token_id_list(), ids_all,
            prefix)


@torch.no_grad()
def last_position_logits(lm: LoadedModel, prompts, rows: list[RowEdit], chunk: int = 64,
                         on_prompt: Callable[[int], bool | None] | None = None, bucket_rows: int = 24
                         ) -> torch.Tensor:
    """[N, R, K] label-word logits of each prompt under each row's edit at ``T``.

    The prompts' shared prefix is computed once; each prompt then runs up to ``T - 1`` once and
    its rows run as batches of ``chunk`` single-token passes, bucketed by the first layer they
    edit (``bucket_rows`` rows at least per bucket). ``on_prompt(i)`` is called after
    each prompt (return False to stop: raises Cancelled).
    """
    if not prompts:
        return torch.zeros(0, len(rows), 0)
    model, arch, rotary, label_ids, ids_all, prefix = _batch_setup(lm, prompts)
    store = prefix_store(lm.reuse_prefix) if len(prompts) == 1 else None  # one prompt: the shared prefix cache
    prefix_cache = None
    if prefix > 0 and store is None:
        _, prefix_cache = _forward(model, torch.tensor([ids_all[0][:prefix]]), 0, None)
    out = torch.zeros(len(prompts), len(rows), len(label_ids))
    for i, p in enumerate(prompts):
        ids = p.input_ids
        n = len(ids)
        if store is not None:
            cache = prefix_kv(model, ids, n - 1, store)
        else:
            cache = copy.deepcopy(prefix_cache) if prefix_cache is not None else None
            if n - 1 > prefix:
                _, cache = _forward(model, torch.tensor([ids[prefix:n - 1]]), prefix, cache)
        for first, idx in rows_by_first_layer(rows, lm.n_layers, bucket_rows):
            for start in range(0, len(idx), chunk):
                part_idx = idx[start:start + chunk]
                part = [rows[j] for j in part_idx]
                R = len(part)
                iv = combine(knockout_rows([p.label_positions] * R, [r.knockout for r in part]),
                             ablate_rows([r.ablate for r in part]))
                state = RunState(arch, iv, False, torch.zeros(R, dtype=torch.long), None, rotary)
                c = _repeat_from(cache, R, first) if cache is not None else None
                with _rows_from_layer(arch, first, R):
                    logits, _ = _forward(model, torch.tensor([[ids[-1]]]), n - 1, c, 1, state, label_ids)
                out[i, part_idx] = logits.cpu()
        check_finite(out[i])
        if on_prompt is not None and on_prompt(i + 1) is False:
            raise Cancelled(f"stopped after {i + 1} of {len(prompts)} prompts")
    return out


@torch.no_grad()
def full_ablation_logits(lm: LoadedModel, prompts, head_sets: list, chunk: int = 8,
                         on_prompt: Callable[[int], bool | None] | None = None) -> torch.Tensor:
    """[N, R, K] label-word logits with head set ``r`` removed at every position (row ``r``).

    The shared prefix runs once per chunk of head sets (as rows of one batch, each its own
    ablation), then each prompt's remaining tokens on top of its copy of that cache.
    """
    if not prompts:
        return torch.zeros(0, len(head_sets), 0)
    model, arch, rotary, label_ids, ids_all, prefix = _batch_setup(lm, prompts)
    out = torch.zeros(len(prompts), len(head_sets), len(label_ids))
    sets = [frozenset((int(a), int(b)) for a, b in hs) for hs in head_sets]
    done = 0
    n_chunks = (len(sets) + chunk - 1) // chunk
    for start in range(0, len(sets), chunk):
        part = sets[start:start + chunk]
        R = len(part)
        iv = ablate_rows(part)
        cache = None
        if prefix > 0:
            state = RunState(arch, iv, False, torch.zeros(R, dtype=torch.long), None, rotary)
            _, cache = _forward(model, torch.tensor([ids_all[0][:prefix]] * R), 0, None, R, state)
        for i, p in enumerate(prompts):
            ids = p.input_ids
            state = RunState(arch, iv, False, torch.zeros(R, dtype=torch.long), None, rotary)
            c = copy.deepcopy(cache) if cache is not None else None
            logits, _ = _forward(model, torch.tensor([ids[prefix:]] * R), prefix, c, R, state, label_ids)
            out[i, start:start + R] = logits.cpu()
        done += 1
        if on_prompt is not None and on_prompt(done) is False:
            raise Cancelled(f"stopped after {done} of {n_chunks} batches of head sets")
    check_finite(out)
    return out


@torch.no_grad()
def knockout_each(lm: LoadedModel, prompt, position_sets, heads) -> torch.Tensor:
    """[R, K] label-word logits of one prompt where row ``r`` knocks out the attention from ``T`` to the
    positions ``position_sets[r]`` in ``heads`` (an empty set: the row is the prompt unchanged).

    The prompt runs up to ``T - 1`` once (KV cache); the rows are one batch of single-token passes
    over that cache, with per-row knockouts (``knockout_rows``); layers below the first edited
    layer run once for all rows.
    """
    model, arch, rotary, label_ids, _, _ = _batch_setup(lm, [prompt])
    hs = frozenset((int(a), int(b)) for a, b in heads)
    sets = [sorted({int(p) for p in ps}) for ps in position_sets]
    R = len(sets)
    if R == 0:
        return torch.zeros(0, len(label_ids))
    ids = prompt.input_ids
    n = len(ids)
    cache = prefix_kv(model, ids, n - 1, prefix_store(lm.reuse_prefix))
    iv = knockout_rows(sets, [hs if s else frozenset() for s in sets])
    first = min((a for a, _ in hs), default=lm.n_layers - 1)
    state = RunState(arch, iv, False, torch.zeros(R, dtype=torch.long), None, rotary)
    c = _repeat_from(cache, R, first)
    with _rows_from_layer(arch, first, R):
        logits, _ = _forward(model, torch.tensor([[ids[-1]]]), n - 1, c, 1, state, label_ids)
    out = logits.cpu()
    check_finite(out)
    return out


@torch.no_grad()
def rows_over_prompts(lm: LoadedModel, prompt_rows) -> list[torch.Tensor]:
    """``[R_i, K]`` label-word logits for each ``(prompt, rows)`` of ``prompt_rows``, every row of every prompt
    in one batch of single-token passes at ``T`` over the prompts' cached prefixes (read from the shared prefix
    cache and stored back). The prompts must have one length and the same label words (a prompt and its
    label-swapped twin do); otherwise each prompt runs alone (``last_position_logits``)."""
    prompt_rows = [(p, list(rows)) for p, rows in prompt_rows]
    lengths = {p.n_tokens for p, _ in prompt_rows}
    words = {tuple(p.label_token_id_list()) for p, _ in prompt_rows}
    if len(lengths) != 1 or len(words) != 1 or any(not rows for _, rows in prompt_rows):
        return [last_position_logits(lm, [p], rows)[0] if rows else torch.zeros(0, len(p.label_words))
                for p, rows in prompt_rows]
    model, arch, rotary, label_ids, _, _ = _batch_setup(lm, [p for p, _ in prompt_rows])
    store = prefix_store(lm.reuse_prefix)
    n = lengths.pop()
    caches = [prefix_kv(model, p.input_ids, n - 1, store) for p, _ in prompt_rows]
    cache = stacked([(c, len(rows)) for c, (_, rows) in zip(caches, prompt_rows)])
    if cache is None:
        return [last_position_logits(lm, [p], rows)[0] for p, rows in prompt_rows]
    all_rows = [(p, r) for p, rows in prompt_rows for r in rows]
    R = len(all_rows)
    iv = combine(knockout_rows([p.label_positions for p, _ in all_rows], [r.knockout for _, r in all_rows]),
                 ablate_rows([r.ablate for _, r in all_rows]))
    state = RunState(arch, iv, False, torch.zeros(R, dtype=torch.long), None, rotary)
    ids = torch.tensor([[p.input_ids[-1]] for p, _ in all_rows])
    logits, _ = _forward(model, ids, n - 1, cache, R, state, label_ids)
    logits = logits.cpu()
    check_finite(logits)
    out, start = [], 0
    for _, rows in prompt_rows:
        out.append(logits[start:start + len(rows)])
        start += len(rows)
    return out
