"""Errors a user sees as messages (the app and the CLI show them without a traceback).

Every such error derives from ``IclvizError``; the CLI catches that one class (exit 2) and the app shows its
message. Each also derives from the builtin class it always was (``ValueError``, ``RuntimeError``, ...), so
callers that catch those keep working.
"""

from __future__ import annotations


class IclvizError(Exception):
    """Base of every error whose message is meant for the user."""


class ModelLoadError(IclvizError, RuntimeError):
    """A model could not be loaded; the message says why, for the app to show."""


class NonFiniteOutput(ModelLoadError):
    """The model produced NaN or infinite logits: its weights are damaged or the dtype overflows."""


class Cancelled(RuntimeError):
    """The user stopped a long computation (a progress callback returned False). Not an ``IclvizError``: the CLI
    reports it as an interruption (exit 130), not as bad input."""
