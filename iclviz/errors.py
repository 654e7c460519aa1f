"""Errors a user sees as messages (the app and the CLI show them without a traceback)."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why, for the app to show."""


class NonFiniteOutput(ModelLoadError):
    """The model produced NaN or infinite logits: its weights are damaged or the dtype overflows."""
