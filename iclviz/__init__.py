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

_MODULES = {
    # models and prompts
    "engine.models": ["load_model", "LoadedModel"], "errors": ["ModelLoadError"], "engine.offline": ["OFFLINE_MODELS"],
    "prompt": ["build_prompt", "BuiltPrompt", "PromptError"],
    # one instrumented pass
    "analyses.evaluation": ["predict", "predict_prompt", "EvalSetup", "evaluate"],
    "engine.capture": ["Capture", "RunResult", "MissingRecord"], "engine.attention_matrix": ["full_attention"],
    # interventions
    "engine.interventions": ["ablate", "knockout", "rescale", "remove_positional_score", "combine", "Interventions",
                             "Plan"],
    # datasets
    "data": ["load_dataset"],
    # locating heads
    "analyses.locate": ["locate_heads"], "analyses.heads": ["head_importance"],
    "engine.lens": ["project", "logit_minus"],
    "analyses.causal": ["causal_scan", "null_distribution", "causal_test", "label_specific"],
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'iclviz' has no attribute {name!r}")


def __dir__():
    return __all__
