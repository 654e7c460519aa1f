"""Vocabulary projection (logit lens) of residual-stream components.

Two scalings, a setting everywhere they are used:
- ``"final_norm"``: ``W_U . norm_f(u)``, the model's final norm re-applied to ``u``.
- ``"final_scale"`` (default, the authors' choice): the final norm's weight (and centring,
  for LayerNorm) applied to ``u``, divided by the scale of the final residual at ``T``
  instead of ``u``'s own, so that small component vectors are not blown up. This lens is
  linear (no norm or unembedding bias): component vectors' logits add up.

Everything is computed on the device of the vectors given (the model's device when they
come straight from a run): no copy of ``W_U`` goes to the host.
"""

from __future__ import annotations

import contextlib

import torch

from .architecture import parameter

SCALINGS = ("final_scale", "final_norm")


def _norm_parts(norm):
    weight = parameter(norm, "weight")
    bias = parameter(norm, "bias")
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    centred = isinstance(norm, torch.nn.LayerNorm) or "LayerNorm" in type(norm).__name__
    return weight, bias, float(eps), centred


def final_scale_of(arch, reference: torch.Tensor) -> torch.Tensor:
    """[..., 1] the final norm's scale of the residual ``reference`` [..., D] (RMS, or std for LayerNorm)."""
    _, _, eps, centred = _norm_parts(arch.final_norm)
    ref = reference.float()
    if centred:
        return torch.sqrt(ref.var(-1, unbiased=False, keepdim=True) + eps)
    return torch.sqrt(ref.pow(2).mean(-1, keepdim=True) + eps)


def label_directions(arch, token_ids: list[int], device) -> torch.Tensor:
    """[K, D] the ``final_scale`` lens as directions: ``logits(u)[k] = u . dir[k] / scale``.

    ``dir[k] = W_U[k] * norm weight`` (centred for LayerNorm, which folds the mean removal
    into the direction), so a projection can be taken per layer, inside a pass, before the
    final residual's scale is known (``capture`` divides by it at the end).
    """
    weight, _, _, centred = _norm_parts(arch.final_norm)
    w_u = arch.unembed_matrix().detach()
    rows = w_u[torch.as_tensor(list(token_ids), dtype=torch.long, device=w_u.device)].to(device, torch.float32)
    if weight is not None:
        rows = rows * weight.detach().to(device, torch.float32)
    if centred:
        rows = rows - rows.mean(-1, keepdim=True)
    return rows


def frozen_norm(arch, u: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The final norm applied to ``u`` with the scale of ``reference`` (broadcast over leading dims)."""
    weight, _, _, centred = _norm_parts(arch.final_norm)
    if centred:
        u = u - u.mean(-1, keepdim=True)
    scale = final_scale_of(arch, reference)
    while scale.dim() < u.dim():
        scale = scale.unsqueeze(-2)
    out = u / scale.to(u.device)
    if weight is not None:
        out = out * weight.detach().to(u.device, torch.float32)
    return out


def normed(arch, u: torch.Tensor, resid_final: torch.Tensor | None, scaling: str) -> torch.Tensor:
    """``u`` [..., D] as the unembedding sees it under ``scaling`` (float32, on ``u``'s device)."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}")
    u = u.float()
    if scaling == "final_norm":
        norm = arch.final_norm
        p = next(norm.parameters(), None)
        return norm(u.to(p.device, p.dtype) if p is not None and p.device.type != "meta" else u).to(
            u.device, torch.float32)
    if resid_final is None:
        raise ValueError("final_scale needs the final residual")
    return frozen_norm(arch, u, resid_final.to(u.device))


def _with_bias(arch, scaling: str, unembed_bias: bool | None):
    b = arch.unembed_bias()
    return b if b is not None and (scaling == "final_norm" if unembed_bias is None else unembed_bias) else None


@torch.no_grad()
def project(arch, u: torch.Tensor, resid_final: torch.Tensor | None = None, scaling: str = "final_scale",
            token_ids: list[int] | None = None, unembed_bias: bool | None = None) -> torch.Tensor:
    """Logits of vector(s) ``u`` [..., D]; only the columns ``token_ids`` if given.

    ``resid_final`` [B, D] is needed for ``final_scale``; ``u`` is then [B, ..., D].
    ``unembed_bias``: add the unembedding bias (models with an ``lm_head`` bias, e.g. GPT-J).
    By default it is added under ``final_norm`` and left out under ``final_scale`` (a component
    vector gets no bias, so components' logits add up); log-probabilities of a whole residual
    (``log_probs``) always include it. Computed on ``u``'s device, float32.
    """
    x = normed(arch, u, resid_final, scaling)
    device = x.device
    w = arch.unembed_matrix().detach()
    rows = torch.as_tensor(token_ids, dtype=torch.long, device=w.device) if token_ids is not None else None
    w = (w[rows] if rows is not None else w).to(device, torch.float32)
    logits = x @ w.T
    b = _with_bias(arch, scaling, unembed_bias)
    if b is not None:
        logits = logits + (b.detach()[rows] if rows is not None else b.detach()).to(device, torch.float32)
    return logits


@torch.no_grad()
def log_probs(arch, u: torch.Tensor, resid_final: torch.Tensor | None, token_ids: list[int],
              scaling: str = "final_scale", chunk_rows: int | None = None) -> torch.Tensor:
    """``log softmax(W_U . lens(u) + b_U)`` at ``token_ids`` [..., K], for whole residual streams.

    The log-normaliser runs over the vocabulary in chunks of ``chunk_rows`` rows of ``W_U`` (default:
    about 32M numbers a chunk) cast to float32 one chunk at a time, so a bfloat16 model never holds a
    float32 copy of ``W_U``. On a GPU, the float32 products of a half-precision model use TF32.
    """
    x = normed(arch, u, resid_final, scaling)
    device = x.device
    w = arch.unembed_matrix().detach()
    chunk_rows = chunk_rows or vocab_chunk_rows(w.shape[1], x[..., 0].numel())
    b = _with_bias(arch, scaling, True)
    b = b.detach() if b is not None else None
    lse = None
    with _tf32(device.type == "cuda" and w.dtype != torch.float32):
        for start in range(0, w.shape[0], chunk_rows):
            part = torch.logsumexp(_logits(x, w, b, slice(start, start + chunk_rows)), -1)
            lse = part if lse is None else torch.logaddexp(lse, part)
    rows = torch.as_tensor(list(token_ids), dtype=torch.long, device=w.device)
    return _logits(x, w, b, rows) - lse[..., None]


def vocab_chunk_rows(d_model: int, n_vectors: int) -> int:
    """Rows of ``W_U`` per chunk of ``log_probs``: a chunk in float32 and its logits each stay near 32M numbers."""
    return max(1024, (1 << 25) // max(d_model, n_vectors))


def _logits(x, w, b, rows):
    """``x . W_U[rows] + b_U[rows]`` in float32 on ``x``'s device (only those rows are cast)."""
    out = x @ w[rows].to(x.device, torch.float32).T
    return out + b[rows].to(x.device, torch.float32) if b is not None else out


@contextlib.contextmanager
def _tf32(on: bool):
    """Allow TF32 matmuls inside the block (CUDA, half-precision models only); restore after."""
    if not on:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def logit_minus(arch, u, resid_final, token_a: int, token_b: int, scaling: str = "final_scale") -> torch.Tensor:
    """``logits(u)[a] - logits(u)[b]`` (the softmax does not enter)."""
    lg = project(arch, u, resid_final, scaling, token_ids=[token_a, token_b])
    return lg[..., 0] - lg[..., 1]


DEFAULT_SCALING = "final_scale"


@torch.no_grad()
def importance_of(arch, resid_in: torch.Tensor, head_out: torch.Tensor, resid_final: torch.Tensor,
                  label_token_ids: list[int], scaling: str = DEFAULT_SCALING, layers=None) -> torch.Tensor:
    """[B, L, H, n_labels] the importance formula on tensors of any device (computed there).

    ``resid_in`` [B, L, D], ``head_out`` [B, L, H, D], ``resid_final`` [B, D]. One batched
    log-softmax over the vocabulary for every layer asked at once (``lens.log_probs``: the lens
    with the unembedding bias, which a log-probability of a whole residual stream needs), so each
    chunk of ``W_U`` is read once per run, not once per layer.
    """
    B, L, H, D = head_out.shape
    layers = list(range(L)) if layers is None else sorted(set(int(x) for x in layers))
    out = torch.full((B, L, H, len(label_token_ids)), float("nan"), device=head_out.device)
    if not layers:
        return out
    n = len(layers)
    r = resid_in[:, layers].float()[:, :, None, :]  # [B, n, 1, D]
    x = torch.cat([r, r + head_out[:, layers].float()], 2)  # [B, n, 1 + H, D]
    lp = log_probs(arch, x.reshape(B, n * (1 + H), D), resid_final, label_token_ids, scaling)
    lp = lp.reshape(B, n, 1 + H, -1)
    out[:, layers] = lp[:, :, 1:] - lp[:, :, :1]
    return out
