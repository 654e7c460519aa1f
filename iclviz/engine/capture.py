"""One instrumented forward pass that sees every head at the last position.

``instrument(model)`` registers an attention function named ``iclviz`` in transformers'
attention-function registry and switches the model to it. Outside a run it is plain SDPA.
Inside ``run_prompts`` it also computes, per layer, the last position's attention row
(probabilities and pre-softmax scores), applies the requested interventions, and records
head outputs and value-output vectors. Forward hooks (installed once, inert outside a run)
record the residual stream entering each layer, the final residual and each attention
block's output. Per-run state lives in a ContextVar, so two threads can run one cached
model with different interventions at the same time.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from ..errors import IclvizError
from .architecture import Architecture, UnsupportedArchitecture, describe
from .interventions import Interventions
from .lens import final_scale_of, importance_of, label_directions

ATTENTION_NAME = "iclviz"
ACTIVE_RUN: contextvars.ContextVar[RunState | None] = contextvars.ContextVar("iclviz_run", default=None)
_INSTRUMENT_LOCK = threading.Lock()


class MissingRecord(IclvizError, LookupError):
    """A capture field that this run did not record (the message says why and how to get it)."""


@dataclass
class Importance:
    """Head importance computed on the model's device during a run (see ``lens.importance_of``)."""

    values: torch.Tensor  # [B, L, H, K], NaN outside ``layers``
    label_token_ids: tuple[int, ...]
    scaling: str
    layers: tuple[int, ...]


@dataclass
class Capture:
    """Everything recorded at the last position ``T`` (float32, CPU).

    Shapes: B prompts, L layers, H heads, S padded length, P value positions, K label words,
    D d_model. Positions in ``attn``/``scores`` are padded positions; ``pad[b]`` is prompt b's
    left padding, so prompt position ``p`` is column ``p + pad[b]``; ``prompt(b)`` gives
    prompt b's records without padding.

    The same quantities in TransformerLens' hook names (``blocks.{l}.`` prefix, ``[:, T]``
    meaning the last position):

    ============================  ==========================================================
    ``attn[:, l]``                ``attn.hook_pattern[:, :, T, :]`` (after interventions)
    ``scores[:, l]``              ``attn.hook_attn_scores[:, :, T, :]`` (masked: -inf)
    ``head_out[:, l]``            ``attn.hook_result[:, T]`` (per head, after W_O, without b_O)
    ``value_out[:, l, h, j]``     ``attn.hook_v[:, p_j, h] @ W_O[h]`` (not ``hook_z``: unweighted)
    ``value_label_logits``        ``value_out`` through the ``final_scale`` lens, label words only
    ``resid_in[:, l]``            ``hook_resid_pre[:, T]``
    ``attn_block_out[:, l]``      ``hook_attn_out[:, T]`` (includes b_O)
    ``resid_final``               ``blocks.{L-1}.hook_resid_post[:, T]`` (input of ``ln_final``)
    ``hidden``                    ``blocks.{hidden_layer}.hook_resid_pre`` (every position)
    ``full_attn[l]``              ``attn.hook_pattern`` (every query row; layers asked for only)
    ============================  ==========================================================
    """

    attn: torch.Tensor  # [B, L, H, S] attention probabilities from T (after interventions)
    scores: torch.Tensor  # [B, L, H, S] pre-softmax scores q_T.k_j * scale (-inf where masked)
    head_out: torch.Tensor  # [B, L, H, D] o[l,h,T]: head outputs after W_O (no bias)
    value_positions: torch.Tensor | None  # [B, P] prompt positions (not padded)
    resid_in: torch.Tensor  # [B, L, D] residual stream entering each layer at T
    resid_final: torch.Tensor  # [B, D] residual stream entering the final norm at T
    attn_block_out: torch.Tensor  # [B, L, D] each attention block's output at T
    pad: torch.Tensor  # [B] left padding
    hidden: torch.Tensor | None = None  # [B, S, D] residual entering ``hidden_layer`` at every position
    value_label_logits: torch.Tensor | None = None  # [B, L, H, P, K] label-word logits of z[l,h,j] (final_scale)
    value_vectors: dict | None = None  # {(l, h): [B, P, D]} z[l,h,j] = v_j W_O^h, for the heads asked for
    full_attn: dict | None = None  # {l: [B, H, S, S]} every query row, for the layers asked for
    importance: Importance | None = None  # all heads' importance, computed on the model's device
    missing: dict = field(default_factory=dict)  # field -> why this run did not record it

    def _require(self, name: str, present: bool):
        if not present:
            raise MissingRecord(self.missing.get(name) or f"this run did not record {name}")

    @property
    def value_out(self) -> torch.Tensor:
        """[B, L, H, P, D] value-output vectors of every head (a run with ``value_heads="all"``)."""
        v = self.value_vectors or {}
        L, H = self.head_out.shape[1:3]
        self._require("value_out", len(v) == L * H)
        if "_stacked" not in self.__dict__:
            self.__dict__["_stacked"] = torch.stack(
                [torch.stack([v[(layer, h)] for h in range(H)], 1) for layer in range(L)], 1)
        return self.__dict__["_stacked"]

    def has_values(self, heads) -> bool:
        """Whether the value-output vectors of every head in ``heads`` were recorded."""
        return self.value_vectors is not None and all((int(a), int(b)) in self.value_vectors for a, b in heads)

    def values(self, layer: int, head: int) -> torch.Tensor:
        """[B, P, D] value-output vectors of one head at the value positions."""
        self._require("value_out", self.value_vectors is not None)
        key = (int(layer), int(head))
        if key not in self.value_vectors:
            raise MissingRecord(f"value vectors of L{layer}H{head} were not recorded; run with value_heads "
                                "including it (or 'all')")
        return self.value_vectors[key]

    def attention_at(self, b: int, positions) -> torch.Tensor:
        """[L, H, len(positions)] attention from T to prompt positions of prompt b."""
        cols = torch.as_tensor(list(positions), dtype=torch.long) + int(self.pad[b])
        return self.attn[b][..., cols]

    def scores_at(self, b: int, positions) -> torch.Tensor:
        cols = torch.as_tensor(list(positions), dtype=torch.long) + int(self.pad[b])
        return self.scores[b][..., cols]

    def prompt(self, b: int) -> PromptCapture:
        """Prompt b's records without padding (positions are the prompt's own)."""
        p = int(self.pad[b])
        vl = self.value_label_logits
        return PromptCapture(
            attn=self.attn[b][..., p:], scores=self.scores[b][..., p:], head_out=self.head_out[b],
            resid_in=self.resid_in[b], resid_final=self.resid_final[b], attn_block_out=self.attn_block_out[b],
            value_positions=self.value_positions[b] if self.value_positions is not None else None,
            value_label_logits=vl[b] if vl is not None else None,
            value_vectors={k: v[b] for k, v in self.value_vectors.items()} if self.value_vectors else None,
            full_attn={k: v[b][:, p:, p:] for k, v in self.full_attn.items()} if self.full_attn else None,
            importance=self.importance.values[b] if self.importance is not None else None,
            hidden=self.hidden[b][p:] if self.hidden is not None else None,
        )


@dataclass
class PromptCapture:
    """One prompt's records, unpadded: ``Capture``'s fields without the batch dimension."""

    attn: torch.Tensor  # [L, H, n]
    scores: torch.Tensor  # [L, H, n]
    head_out: torch.Tensor  # [L, H, D]
    resid_in: torch.Tensor  # [L, D]
    resid_final: torch.Tensor  # [D]
    attn_block_out: torch.Tensor  # [L, D]
    value_positions: torch.Tensor | None = None  # [P]
    value_label_logits: torch.Tensor | None = None  # [L, H, P, K]
    value_vectors: dict | None = None  # {(l, h): [P, D]}
    full_attn: dict | None = None  # {l: [H, n, n]}
    importance: torch.Tensor | None = None  # [L, H, K]
    hidden: torch.Tensor | None = None  # [n, D]


@dataclass
class RunResult:
    logits: torch.Tensor  # [B, V] next-token logits at T
    label_token_ids: list[int]
    capture: Capture | None

    @property
    def label_logits(self) -> torch.Tensor:
        return self.logits[:, self.label_token_ids]

    @property
    def label_probs(self) -> torch.Tensor:
        """Probabilities over the label words only (softmax of their logits)."""
        return torch.softmax(self.label_logits.float(), dim=-1)

    @property
    def predictions(self) -> list[int]:
        return self.label_logits.argmax(-1).tolist()


class RunState:
    """Per-forward state read by the attention function and the hooks."""

    def __init__(self, arch: Architecture, interventions: Interventions, capture: bool, pad, value_positions,
                 rotary_fn, hidden_layer: int | None = None, *, label_ids=None, value_heads="all",
                 full_rows_layers=()):
        self.arch = arch
        self.iv = interventions
        self.capture = capture
        self.pad = pad  # [B] long
        self.value_positions = value_positions  # [B, P] padded positions or None
        self.rotary_fn = rotary_fn
        self.hidden_layer = hidden_layer
        self.hidden = None
        L, H = arch.n_layers, arch.n_heads
        self.ablate_mask = torch.zeros(L, H, dtype=torch.bool)
        for layer, head in interventions.ablate:
            self.ablate_mask[layer, head] = True
        self.row_ablate_mask = None  # [B, L, H] per-row head ablations
        if interventions.row_ablate:
            self.row_ablate_mask = torch.zeros(len(interventions.row_ablate), L, H, dtype=torch.bool)
            for b, hs in enumerate(interventions.row_ablate):
                for layer, head in hs:
                    self.row_ablate_mask[b, layer, head] = True
        self.dep_mask = torch.zeros(L, H, dtype=torch.bool)
        for layer, head in interventions.positional_score_heads:
            self.dep_mask[layer, head] = True
        self.touched = interventions.layers_touched()
        # per-layer switches as Python booleans: no tensor test inside the layers' loop
        ablates = self.ablate_mask.any(1)
        if self.row_ablate_mask is not None:
            ablates = ablates | self.row_ablate_mask.any(0).any(1)
        self._ablates = ablates.tolist()
        self._removes_positional = self.dep_mask.any(1).tolist()
        self.label_ids = list(label_ids) if label_ids is not None else None
        self.value_heads = value_heads  # "all", or the (layer, head) pairs whose full value vectors are kept
        self.full_rows_layers = frozenset(full_rows_layers)
        self._device_cache: dict = {}
        self.records: dict[str, list] = {k: [None] * L for k in ("attn", "scores", "head_out", "value_label_logits",
                                                                 "value_vectors", "resid_in", "attn_block_out")}
        self.full_attn: dict[int, torch.Tensor] = {}
        self.resid_final = None
        self._edit_cache: dict[tuple, torch.Tensor] = {}

    def edits_row(self, layer: int) -> bool:
        return bool(self.iv.attention) and (-1 in self.touched or layer in self.touched) or \
            self._removes_positional[layer]

    def _factor(self, layer: int, batch: int, length: int, device, dtype) -> torch.Tensor | None:
        """[B, H, S] multiplicative factor on the attention row of this layer, or None. Computed on ``device``
        from each edit's head mask and factors, copied there once per run (not once per layer)."""
        factor = None
        for i, edit in enumerate(self.iv.attention):
            heads = self._edit_heads(i, edit, batch)  # [B or 1, L, H] on the host: the test below syncs nothing
            if not heads[:, layer].any():
                continue
            h = self._on(device, ("edit_heads", i), heads)[:, layer]
            f = self._on(device, ("edit_row", i, length), self._edit_row(i, edit, batch, length)).to(dtype)
            f = torch.where(h[:, :, None], f[:, None, :], torch.ones((), dtype=dtype, device=device))
            factor = f if factor is None else factor * f
        return factor

    def _edit_heads(self, i: int, edit, batch: int) -> torch.Tensor:
        """[B or 1, L, H] which heads edit ``i`` touches (built once per run)."""
        key = ("heads", i)
        if key not in self._edit_cache:
            L, H = self.arch.n_layers, self.arch.n_heads
            if edit.row_heads is not None:
                if len(edit.row_heads) != batch:
                    raise ValueError(f"per-row attention edit for {len(edit.row_heads)} rows in a batch of {batch}")
                m = torch.zeros(batch, L, H, dtype=torch.bool)
                for b, hs in enumerate(edit.row_heads):
                    for layer, h in hs:
                        m[b, layer, h] = True
            elif edit.heads is None:
                m = torch.ones(1, L, H, dtype=torch.bool)
            else:
                m = torch.zeros(1, L, H, dtype=torch.bool)
                for layer, h in edit.heads:
                    m[0, layer, h] = True
            self._edit_cache[key] = m
        return self._edit_cache[key]

    def _edit_row(self, i: int, edit, batch: int, length: int) -> torch.Tensor:
        """[B, S] the factors of edit ``i`` at padded positions (built once per run)."""
        key = ("row", i, length)
        if key not in self._edit_cache:
            f = torch.ones(batch, length)
            for b, d in enumerate(edit.factors):
                for p, v in d.items():
                    f[b, p + int(self.pad[b])] = v
            self._edit_cache[key] = f
        return self._edit_cache[key]

    def attend(self, module, query, key, value, attention_mask, scaling, out):
        arch = self.arch
        layer = arch.layer_of(module)
        B, H, _, Dh = query.shape
        S = key.shape[2]
        ablates, edits = self._ablates[layer], self.edits_row(layer)
        qkv = [hk for hk in self.iv.qkv if layer in hk.layers()] if self.iv.qkv else ()
        if not (self.capture or edits or ablates or qkv):
            return out
        KV = key.shape[1]
        G = H // KV  # query heads per key-value head: computed grouped, never copied per head
        probs = scores = None
        if self.capture or edits:
            scale = scaling if scaling is not None else Dh ** -0.5
            q = query[:, :, -1, :]  # [B, H, Dh]
            scores = torch.einsum("bkgd,bksd->bkgs", q.reshape(B, KV, G, Dh), key).reshape(B, H, S) * scale
            if self._removes_positional[layer]:
                k = key.repeat_interleave(G, dim=1) if G > 1 else key
                scores = self._positional_free_scores(q, k, scores, layer, scale)
            if attention_mask is not None:
                m = attention_mask[:, :, -1, :S]
                if m.dtype == torch.bool:
                    scores = scores.masked_fill(~m, float("-inf"))
                else:
                    scores = scores + m
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32)  # kept in float32 (the record's dtype)
            factor = self._factor(layer, B, S, probs.device, probs.dtype)
            if factor is not None:
                probs = probs * factor
                if any(e.renormalize for e in self.iv.attention):
                    probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)
            if edits:  # T's row from the edited pattern, written into SDPA's fresh output (read by no one else)
                row = torch.einsum("bkgs,bksd->bkgd", probs.to(value.dtype).reshape(B, KV, G, S), value).reshape(
                    B, H, Dh)
                out[:, -1] = row
            # no edit: SDPA's own row stays, so a capture leaves the model's computation untouched
        for hook in qkv:  # query/key/value patches and recorders (qkv.py): T's row of their heads only
            probs, scores = hook.apply(layer, query, key, value, attention_mask, scaling, self.pad, out, probs, scores)
        if ablates:
            out = out.masked_fill(self._ablation(B, out.device)[:, layer, None, :, None], 0)
        if self.capture:
            self._record(layer, out, probs, scores, query, key, value, attention_mask, scale, G)
        return out

    def _record(self, layer, out, probs, scores, query, key, value, attention_mask, scale, G):
        """Keep this layer's readouts at T, in the model's dtype and on its device (one transfer at the end)."""
        B, H, _, Dh = query.shape
        w_o = self.arch.w_o(layer).to(out.device, out.dtype)  # [H, Dh, D], a view of the weight
        rec = self.records
        rec["attn"][layer] = probs
        rec["scores"][layer] = scores  # the model's dtype; float32 on the host
        rec["head_out"][layer] = torch.einsum("bhd,hdm->bhm", out[:, -1], w_o)
        if self.value_positions is not None:
            idx = self._on(value.device, "value_positions", self.value_positions)  # [B, P]
            P, KV = idx.shape[1], value.shape[1]
            vv = torch.gather(value, 2, idx[:, None, :, None].expand(B, KV, P, Dh))  # [B, KV, P, Dh]
            if self.label_ids is not None:  # label-word logits of every head's z, without building z
                # in the model's dtype: no float32 copy of W_O (float32 models stay exact)
                dirs = self._label_directions(value.device, w_o.dtype)  # [K, D]
                w_dir = torch.einsum("hdm,km->hdk", w_o, dirs).reshape(KV, G, Dh, -1)
                rec["value_label_logits"][layer] = torch.einsum(
                    "bkpd,kgdc->bkgpc", vv, w_dir).reshape(B, H, P, -1)
            heads = self._vector_heads(layer)
            if heads:
                sel = self._on(value.device, "value_heads", self._value_head_table)[layer, :len(heads)]
                z = torch.einsum("bnpd,ndm->bnpm", vv[:, sel // G], w_o[sel])
                rec["value_vectors"][layer] = (heads, z)
        if layer in self.full_rows_layers:
            self.full_attn[layer] = self._full_rows(query, key, attention_mask, scale, probs, G)

    def _ablation(self, batch: int, device) -> torch.Tensor:
        """[B, L, H] the heads zeroed, per row and layer (on ``device``, copied there once per run)."""
        key = ("ablate", device)
        if key not in self._device_cache:
            ablate = self.ablate_mask[None].expand(batch, -1, -1)
            if self.row_ablate_mask is not None:
                if self.row_ablate_mask.shape[0] != batch:
                    raise ValueError(
                        f"per-row ablation for {self.row_ablate_mask.shape[0]} rows in a batch of {batch}")
                ablate = ablate | self.row_ablate_mask
            self._device_cache[key] = ablate.to(device)
        return self._device_cache[key]

    def _on(self, device, name, t) -> torch.Tensor:
        """``t`` (a host tensor, or a function making it) on ``device``, copied there once per run (not once
        per layer: no host-to-device copy inside the layers' loop, which would make the host wait)."""
        key = (name, device)
        if key not in self._device_cache:
            self._device_cache[key] = (t() if callable(t) else t).to(device)
        return self._device_cache[key]

    def _label_directions(self, device, dtype) -> torch.Tensor:
        key = ("label_directions", device, dtype)
        if key not in self._device_cache:
            self._device_cache[key] = label_directions(self.arch, self.label_ids, device).to(dtype)
        return self._device_cache[key]

    def _value_head_table(self) -> torch.Tensor:
        """[L, H] each layer's value heads first (``_vector_heads``), so one copy serves every layer."""
        table = torch.zeros(self.arch.n_layers, self.arch.n_heads, dtype=torch.long)
        for layer in range(self.arch.n_layers):
            heads = self._vector_heads(layer)
            table[layer, :len(heads)] = torch.as_tensor(heads, dtype=torch.long)
        return table

    def _vector_heads(self, layer: int) -> list[int]:
        if self.value_heads == "all":
            return list(range(self.arch.n_heads))
        return sorted(h for lay, h in (self.value_heads or ()) if lay == layer)

    @staticmethod
    def _full_rows(query, key, attention_mask, scale, last_row, G):
        """[B, H, S_q, S] every query row's attention (the last row as edited by the interventions)."""
        B, H, Sq, Dh = query.shape
        S = key.shape[2]
        k = key.repeat_interleave(G, dim=1) if G > 1 else key
        scores = torch.einsum("bhqd,bhsd->bhqs", query.float(), k.float()) * scale
        if attention_mask is None:  # a causal mask the attention function left to SDPA
            causal = torch.ones(Sq, S, dtype=torch.bool, device=query.device).tril(S - Sq)
            scores = scores.masked_fill(~causal, float("-inf"))
        elif attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask[:, :, :, :S], float("-inf"))
        else:
            scores = scores + attention_mask[:, :, :, :S].float()
        rows = torch.softmax(scores, -1).nan_to_num(0.0)  # fully masked (padding) rows: zeros
        rows[:, :, -1] = last_row.float()
        return rows

    def _positional_free_scores(self, q, k, scores, layer, scale):
        """Scores at the chosen positions with each key rotated to T's position (the positions, offsets and
        head mask are copied to the device once per run)."""
        if self.rotary_fn is None:
            raise UnsupportedArchitecture("removing the positional part of the score needs a rotary model")
        scores = scores.clone()
        dev, T = k.device, k.shape[2] - 1
        dep = self._on(dev, "positional_heads", self.dep_mask)[layer]
        for b, positions in enumerate(self.iv.positional_score_positions):
            if not positions:
                continue
            cols = self._on(dev, ("positional_cols", b),  # padded positions of prompt b
                            lambda b=b, p=positions: torch.tensor(p, dtype=torch.long) + int(self.pad[b]))
            rotated = self.rotary_fn(k[b][:, cols, :], T - cols)  # rotate by (T - p) more: R(p) R(T - p) = R(T)
            new = torch.einsum("hd,hpd->hp", q[b], rotated) * scale  # [H, P]
            scores[b][:, cols] = torch.where(dep[:, None], new, scores[b][:, cols])
        return scores


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                    **kwargs)
    state = ACTIVE_RUN.get()
    if state is None:
        return out, None
    return state.attend(module, query, key, value, attention_mask, scaling, out), None


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotary_fn(model, arch: Architecture):
    """A function rotating keys [H, P, Dh] by per-position offsets, for rotate-half models.

    Uses the model's own rotary embedding module for the angles; None where the model
    has none we can use (absolute positions, or GPT-J's interleaved rotation).
    """
    rotary = getattr(model.base_model, "rotary_emb", None)
    if rotary is None or model.config.model_type == "gptj":
        return None

    def rotate(keys, offsets):
        cos, sin = rotary(keys[None, 0], offsets[None, :])  # [1, P, rot_dim]
        cos, sin = cos[0].to(keys.dtype), sin[0].to(keys.dtype)
        rot = cos.shape[-1]
        k_rot, k_pass = keys[..., :rot], keys[..., rot:]
        k_rot = k_rot * cos[None] + _rotate_half(k_rot) * sin[None]
        return torch.cat([k_rot, k_pass], dim=-1)

    return rotate


def instrument(model) -> Architecture:
    """Switch ``model`` to the ``iclviz`` attention function and install inert hooks (idempotent)."""
    with _INSTRUMENT_LOCK:
        arch = getattr(model, "_iclviz_arch", None)
        if arch is not None:
            return arch
        arch = describe(model)
        AttentionInterface.register(ATTENTION_NAME, _attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
        try:
            model.set_attn_implementation(ATTENTION_NAME)
        except Exception as exc:  # noqa: BLE001 - reported as an unsupported architecture
            raise UnsupportedArchitecture(
                f"{type(model).__name__} cannot use a registered attention function: {exc}") from exc
        if model.config._attn_implementation != ATTENTION_NAME:
            raise UnsupportedArchitecture(f"{type(model).__name__} ignored the registered attention function")

        for i, layer in enumerate(arch.layers):
            layer.register_forward_pre_hook(_resid_hook(i), with_kwargs=True)
            arch.attentions[i].register_forward_hook(_attn_out_hook(i))
        arch.final_norm.register_forward_pre_hook(_final_hook)
        model._iclviz_arch = arch
        model._iclviz_rotary = _rotary_fn(model, arch)
        return arch


def _resid_hook(i):
    def hook(module, args, kwargs):
        state = ACTIVE_RUN.get()
        if state is not None and state.capture:
            hidden = args[0] if args else kwargs["hidden_states"]
            state.records["resid_in"][i] = hidden[:, -1].clone()
            if state.hidden_layer == i:
                state.hidden = hidden.clone()
    return hook


def _attn_out_hook(i):
    def hook(module, args, output):
        state = ACTIVE_RUN.get()
        if state is not None and state.capture:
            o = output[0] if isinstance(output, tuple) else output
            state.records["attn_block_out"][i] = o[:, -1].clone()
    return hook


def _final_hook(module, args):
    state = ACTIVE_RUN.get()
    if state is not None and state.capture:
        state.resid_final = args[0][:, -1].clone()


def pad_batch(prompt_ids: list[list[int]], pad_id: int, device):
    """Left-pad token ids; returns input_ids, attention_mask, position_ids, pad amounts."""
    S = max(len(p) for p in prompt_ids)
    pad = torch.tensor([S - len(p) for p in prompt_ids], dtype=torch.long)
    ids = torch.full((len(prompt_ids), S), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), S), dtype=torch.long)
    for b, p in enumerate(prompt_ids):
        ids[b, S - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, S - len(p):] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), position_ids.to(device), pad


def assemble_capture(arch, states: list[RunState], S: int, pad: torch.Tensor, value_positions,
              importance: tuple[str, tuple[int, ...]] | None) -> Capture:
    """One Capture from the runs' records (one state per group of rows; its rows are left-padded to ``S``).

    Records are gathered onto the final residual's device (layers may live on different devices),
    stacked, turned into the small readouts there (label-word logits of the value vectors divided by
    the final norm's scale; importance), and moved to the host once, as float32.
    """
    dev = states[0].resid_final.device

    def layered(st, name):
        return torch.stack([t.to(dev) for t in st.records[name]], 1)

    def cat(name, fill=None):
        parts = []
        for st in states:
            t = layered(st, name)
            if fill is not None and t.shape[-1] < S:
                t = torch.nn.functional.pad(t, (S - t.shape[-1], 0), value=fill)
            parts.append(t)
        return torch.cat(parts)

    def host(t):
        return t.to("cpu").float() if t is not None else None

    resid_final = torch.cat([st.resid_final.to(dev) for st in states])
    head_out, resid_in = cat("head_out"), cat("resid_in")
    vl, vectors, missing = None, None, {}
    if value_positions is not None:
        if states[0].label_ids is not None:
            vl = cat("value_label_logits") / final_scale_of(arch, resid_final)[:, None, None, None]
        vectors = {}
        for layer in range(arch.n_layers):
            parts = [st.records["value_vectors"][layer] for st in states]
            if parts[0] is not None:
                heads = parts[0][0]
                z = torch.cat([q[1].to(dev) for q in parts])
                vectors.update({(layer, h): host(z[:, i]) for i, h in enumerate(heads)})
        if not vectors:
            missing["value_out"] = "value vectors were not asked for: run with value_heads='all' or a list of heads"
    else:
        missing["value_out"] = missing["value_label_logits"] = "this run recorded no value positions"
    imp = None
    if importance is not None:
        scaling, layers = importance
        values = importance_of(arch, resid_in, head_out, resid_final, states[0].label_ids, scaling, layers)
        imp = Importance(host(values), tuple(states[0].label_ids), scaling, tuple(layers))
    full = {}
    for layer in sorted(set().union(*(st.full_attn.keys() for st in states))):
        full[layer] = host(torch.cat([st.full_attn[layer].to(dev) for st in states]))
    hidden = [st.hidden for st in states if st.hidden is not None]
    return Capture(
        attn=host(cat("attn", 0.0)),
        scores=host(cat("scores", float("-inf"))),
        head_out=host(head_out),
        value_positions=value_positions,
        resid_in=host(resid_in),
        resid_final=host(resid_final),
        attn_block_out=host(cat("attn_block_out")),
        pad=pad,
        hidden=host(torch.cat([h.to(dev) for h in hidden])) if hidden else None,
        value_label_logits=host(vl),
        value_vectors=vectors or None,
        full_attn=full or None,
        importance=imp,
        missing=missing,
    )


def importance_key(importance, n_layers: int):
    """``importance``: None, a scaling name, or (scaling, layers)."""
    if importance is None:
        return None
    scaling, layers = (importance, None) if isinstance(importance, str) else importance
    return scaling, tuple(range(n_layers)) if layers is None else tuple(int(x) for x in layers)
