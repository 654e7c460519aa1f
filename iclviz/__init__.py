"""iclviz: see how a language model learns in context (Yu & Ananiadou, EMNLP 2024).

The library never imports streamlit; the app in ``app.py`` and ``pages/`` only draws
what these modules return. A five-line start (offline, on the default model)::

    import iclviz
    lm = iclviz.load_model()
    p = lm.prompt([("a wonderful film", "foo"), ("dull and boring", "bar")], "I loved it")
    before = iclviz.predict_prompt(lm, p)                       # .probs, .capture (every head at T)
    after = iclviz.predict_prompt(lm, p, iclviz.knockout([p.label_positions], heads=[(21, 1)]))

Names are imported on first use, so ``import iclviz`` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    # models and prompts
    "load_model": "models", "LoadedModel": "models", "ModelLoadError": "errors", "OFFLINE_MODELS": "offline",
    "build_prompt": "prompt", "BuiltPrompt": "prompt", "PromptError": "prompt",
    # one instrumented pass
    "predict": "evaluation", "predict_prompt": "evaluation", "Capture": "capture", "RunResult": "capture",
    "MissingRecord": "capture", "full_attention": "attention_matrix",
    # interventions
    "ablate": "interventions", "knockout": "interventions", "rescale": "interventions",
    "remove_positional_score": "interventions", "combine": "interventions", "Interventions": "interventions",
    "Plan": "interventions",
    # datasets and evaluation
    "load_dataset": "data", "EvalSetup": "evaluation", "evaluate": "evaluation",
    # locating heads
    "locate_heads": "locate", "head_importance": "heads", "project": "lens", "logit_minus": "lens",
    "causal_scan": "causal", "null_distribution": "causal", "causal_test": "causal", "label_specific": "causal",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'iclviz' has no attribute {name!r}")


def __dir__():
    return __all__
