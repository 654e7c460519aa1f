"""The model layer: every forward pass the library makes goes through these modules.

- ``architecture``: where each supported architecture keeps its attention, its weights and its rotary maps.
- ``capture``: the attention instrumentation (a function in transformers' attention registry), the per-run
  state and ``Capture``, the records of one pass.
- ``runs``: one pass, a pass over a shared prefix, and ``T``-rows (interventions at the last position as
  rows of one batch over the cached prefix); ``check_finite``.
- ``prefix_cache``: the keys and values of prompts' prefixes, shared across reruns and sessions.
- ``models`` and ``offline``: loading (the offline models, the Hub for users with internet).
- ``interventions``, ``qkv``, ``lens`` (the logit lens and the paper's importance formula),
  ``attention_matrix``, ``memory``, ``settings`` (what the operator of a server allows).

Modules outside the engine import only its public names (a test enforces it).
"""
