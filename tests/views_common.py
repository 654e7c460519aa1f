"""Shared prompt, heads and tolerance of the issue-11 tests (prompt A/B, contributions, towers, lesson files)."""

from __future__ import annotations

import numpy as np
import torch

from iclviz.analyses.compare import PromptSpec

SPEC = PromptSpec((("a great film with fine acting", "foo"), ("boring and slow", "bar"),
                   ("I loved it", "foo"), ("a bad mess", "bar"), ("warm and funny", "foo")),
                  "what a good movie")
HEADS = [(1, 0), (1, 3), (2, 1)]


def close(a, b, atol=1e-5):
    """Equal to ``atol`` relative to the expected value's scale (float32 sums in another order differ)."""
    a = torch.tensor(np.asarray(a, dtype=np.float64)).float() if not torch.is_tensor(a) else a.float()
    b = torch.tensor(np.asarray(b, dtype=np.float64)).float() if not torch.is_tensor(b) else b.float()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=1e-5, atol=atol * scale)
