"""Operator settings: what visitors of the app may load, and how much work one request may ask for.

Read from environment variables by whoever starts the server (the command line, run by the
machine's owner, is not restricted by them). Safe defaults: only the offline models, no
``trust_remote_code``, only the shipped datasets, bounded prompts.

=============================  =======  =====================================================
variable                       default  meaning
=============================  =======  =====================================================
ICLVIZ_ALLOW_HUB               0        visitors may load any Hugging Face Hub model by name
ICLVIZ_ALLOW_LOCAL             0        visitors may load any model folder on the server
ICLVIZ_ALLOW_REMOTE_CODE       0        visitors may tick trust_remote_code (runs the model's code!)
ICLVIZ_ALLOWED_MODELS          (none)   comma-separated Hub names or absolute folders visitors may
                                        load even when the two switches above are off
ICLVIZ_ALLOW_DATA_DIRS         0        the app lists datasets from ICLVIZ_DATA / shared folders too
ICLVIZ_MAX_TOKENS              1024     longest prompt (tokens) the app runs
ICLVIZ_MAX_DEMOS               64       most demonstrations in the app's prompt
ICLVIZ_MAX_ATTENTION_TOKENS    512      longest prompt the Attention page draws
ICLVIZ_CACHE_TTL               600      seconds a cached result lives in the app
ICLVIZ_CACHE_ENTRIES           64       cached results per kind in the app
ICLVIZ_LESSON_FILE             (none)   a lesson file (JSON) the app opens at start, read-only,
                                        without a model (for a class or a static host)
ICLVIZ_OFFLOAD_FOLDER          (none)   where the "spread" device choice (device_map="auto") may put
                                        layers that fit on no GPU and not in memory (disk offload)
ICLVIZ_PREFIX_CACHE_MB         256      memory (MB) for the keys and values of prompts' prefixes that
                                        every session's reruns reuse (least recently used out; 0: off)
ICLVIZ_VERIFY_WEIGHTS          0        hash every weights file of an offline model's cache at each
                                        load (sha256, ~seconds per GB) instead of the fast check of
                                        sizes and modification times; applies to the CLI too
=============================  =======  =====================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..validation import ValidationError

_TRUE = ("1", "true", "yes", "on")


def _flag(env, name: str) -> bool:
    return str(env.get(name, "")).strip().lower() in _TRUE


def _int(env, name: str, default: int, lo: int, hi: int) -> int:
    raw = str(env.get(name, "")).strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name}={raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise ValidationError(f"{name}={value} must be between {lo} and {hi}")
    return value


@dataclass(frozen=True)
class Settings:
    allow_hub: bool = False
    allow_local: bool = False
    allow_remote_code: bool = False
    allowed_models: tuple[str, ...] = ()
    allow_data_dirs: bool = False
    max_tokens: int = 1024
    max_demos: int = 64
    max_attention_tokens: int = 512
    cache_ttl: int = 600
    cache_entries: int = 64
    lesson_file: str = ""
    offload_folder: str = ""

    @property
    def model_sources(self) -> list[str]:
        """The sidebar's model sources a visitor may choose."""
        out = ["Offline model"]
        if self.allow_hub or any(not _is_path(m) for m in self.allowed_models):
            out.append("Hugging Face Hub name")
        if self.allow_local or any(_is_path(m) for m in self.allowed_models):
            out.append("Local folder")
        return out

    def check_model(self, name: str, trust_remote_code: bool = False) -> None:
        """Raise ValidationError unless a visitor may load ``name`` (the server's messages never
        say whether a path exists)."""
        name = (name or "").strip()
        if trust_remote_code and not self.allow_remote_code:
            raise ValidationError("trust_remote_code is turned off on this server (the operator can allow it "
                                  "with ICLVIZ_ALLOW_REMOTE_CODE=1)")
        from .offline import offline_model

        if not name or offline_model(name) is not None:  # the offline models are always allowed
            return
        if name in self.allowed_models or (_is_path(name) and _norm(name) in {_norm(m) for m in self.allowed_models
                                                                              if _is_path(m)}):
            return
        if _is_path(name):
            if not self.allow_local:
                raise ValidationError("loading model folders is turned off on this server (the operator can allow "
                                      "it with ICLVIZ_ALLOW_LOCAL=1 or list folders in ICLVIZ_ALLOWED_MODELS)")
            return
        if not self.allow_hub:
            raise ValidationError("loading Hub models is turned off on this server (the operator can allow it with "
                                  "ICLVIZ_ALLOW_HUB=1 or list names in ICLVIZ_ALLOWED_MODELS)")


def _is_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name


def _norm(name: str) -> str:
    return os.path.normpath(str(Path(name).expanduser()))


def load_settings(env=None) -> Settings:
    """Settings from ``env`` (default ``os.environ``); a bad value raises ValidationError."""
    env = os.environ if env is None else env
    allowed = tuple(m.strip() for m in str(env.get("ICLVIZ_ALLOWED_MODELS", "")).split(",") if m.strip())
    return Settings(
        allow_hub=_flag(env, "ICLVIZ_ALLOW_HUB"),
        allow_local=_flag(env, "ICLVIZ_ALLOW_LOCAL"),
        allow_remote_code=_flag(env, "ICLVIZ_ALLOW_REMOTE_CODE"),
        allowed_models=allowed,
        allow_data_dirs=_flag(env, "ICLVIZ_ALLOW_DATA_DIRS"),
        max_tokens=_int(env, "ICLVIZ_MAX_TOKENS", 1024, 16, 1_000_000),
        max_demos=_int(env, "ICLVIZ_MAX_DEMOS", 64, 1, 10_000),
        max_attention_tokens=_int(env, "ICLVIZ_MAX_ATTENTION_TOKENS", 512, 8, 100_000),
        cache_ttl=_int(env, "ICLVIZ_CACHE_TTL", 600, 1, 7 * 24 * 3600),
        cache_entries=_int(env, "ICLVIZ_CACHE_ENTRIES", 64, 1, 100_000),
        lesson_file=_path(env, "ICLVIZ_LESSON_FILE"),
        offload_folder=_path(env, "ICLVIZ_OFFLOAD_FOLDER"),
    )


def prefix_cache_megabytes(env=None) -> int:
    """ICLVIZ_PREFIX_CACHE_MB: the byte bound of the shared prefix cache (``engine.prefix_cache``), in MB."""
    return _int(os.environ if env is None else env, "ICLVIZ_PREFIX_CACHE_MB", 256, 0, 1_000_000)


def verify_weights_at_load(env=None) -> bool:
    """ICLVIZ_VERIFY_WEIGHTS: the full sha256 check of an offline model's cache at every load (CLI and app)."""
    return _flag(os.environ if env is None else env, "ICLVIZ_VERIFY_WEIGHTS")


def _path(env, name: str) -> str:
    raw = str(env.get(name, "")).strip()
    if len(raw) > 1000 or "\x00" in raw:
        raise ValidationError(f"{name} is not a usable path")
    return str(Path(raw).expanduser()) if raw else ""
