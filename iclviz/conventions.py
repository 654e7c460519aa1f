"""The one sign convention for every number iclviz calls a margin or an effect (app, CLI, report, lesson file).

No streamlit here, no torch.
"""

from __future__ import annotations

MARGIN = "logit(first label) − logit(second label)"  # positive: the model leans to the first label word
SIGN_CONVENTION = ("Signs: the margin is logit(first label) − logit(second label); an effect is the margin after "
                   "the intervention minus the margin before (negative: the intervention pushed toward the second "
                   "label).")
DIRECT_VS_EFFECT = ("A contribution is a term of the margin (what the heads write directly, positive toward the "
                    "first label); a knockout effect is after − before, so a demonstration that pushes toward the "
                    "first label should have a negative knockout effect; where the two have the same sign, the "
                    "knockout's downstream effects (attention moving to the other label positions) outweigh the "
                    "direct term.")


def effect(before: float, after: float) -> float:
    """The effect of an intervention on a margin: after minus before."""
    return float(after) - float(before)
