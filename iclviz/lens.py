"""Vocabulary projection (logit lens) of residual-stream components.

Two scalings, a setting everywhere they are used:
- ``"final_norm"``: ``W_U . norm_f(u)``, the model's final norm re-applied to ``u``.
- ``"final_scale"`` (default, the authors' choice): the final norm's weight (and centring,
  for LayerNorm) applied to ``u``, divided by the scale of the final residual at ``T``
  instead of ``u``'s own, so that small component vectors are not blown up. This lens is
  linear (no norm or unembedding bias): component vectors' logits add up.
"""

from __future__ import annotations

import torch

SCALINGS = ("final_scale", "final_norm")


def _norm_parts(norm):
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    centred = isinstance(norm, torch.nn.LayerNorm) or "LayerNorm" in type(norm).__name__
    return weight, bias, float(eps), centred


def frozen_norm(arch, u: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The final norm applied to ``u`` with the scale of ``reference`` (broadcast over leading dims)."""
    weight, bias, eps, centred = _norm_parts(arch.final_norm)
    ref = reference.float()
    if centred:
        u = u - u.mean(-1, keepdim=True)
        scale = torch.sqrt(ref.var(-1, unbiased=False, keepdim=True) + eps)
    else:
        scale = torch.sqrt(ref.pow(2).mean(-1, keepdim=True) + eps)
    while scale.dim() < u.dim():
        scale = scale.unsqueeze(-2)
    out = u / scale
    if weight is not None:
        out = out * weight.detach().float().cpu()
    return out


@torch.no_grad()
def project(arch, u: torch.Tensor, resid_final: torch.Tensor | None = None, scaling: str = "final_scale",
            token_ids: list[int] | None = None) -> torch.Tensor:
    """Logits of vector(s) ``u`` [..., D]; only the columns ``token_ids`` if given.

    ``resid_final`` [B, D] is needed for ``final_scale``; ``u`` is then [B, ..., D].
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}")
    u = u.float()
    if scaling == "final_norm":
        norm = arch.final_norm
        p = next(norm.parameters(), None)
        x = norm(u.to(p.device, p.dtype) if p is not None else u).float().cpu()
    else:
        if resid_final is None:
            raise ValueError("final_scale needs the final residual")
        x = frozen_norm(arch, u, resid_final)
    w = arch.unembed_matrix().detach()
    w = (w[token_ids] if token_ids is not None else w).float().cpu()
    logits = x @ w.T
    b = arch.unembed_bias()
    if b is not None and scaling == "final_norm":  # final_scale stays linear: a component gets no bias
        b = b.detach().float().cpu()
        logits = logits + (b[token_ids] if token_ids is not None else b)
    return logits


def logit_minus(arch, u, resid_final, token_a: int, token_b: int, scaling: str = "final_scale") -> torch.Tensor:
    """``logits(u)[a] - logits(u)[b]`` (the softmax does not enter)."""
    lg = project(arch, u, resid_final, scaling, token_ids=[token_a, token_b])
    return lg[..., 0] - lg[..., 1]
