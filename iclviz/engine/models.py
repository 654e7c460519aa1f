"""Model loading: the offline models (``offline.py``), Hub names and local folders.

``load_model`` returns a ``LoadedModel``: the instrumented model, its tokenizer and
architecture handles, and ``run`` (one instrumented pass over built prompts).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..prompt import BuiltPrompt
from .architecture import Architecture, UnsupportedArchitecture
from .capture import RunResult, instrument
from .interventions import NONE, Interventions
from .offline import DEFAULT_MODEL, offline_model, offline_model_dir, weights_sha256
from .runs import check_finite, common_prefix_length, prefix_store, run_ids, run_ids_cached, run_ids_shared_prefix

log = logging.getLogger(__name__)

_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


# ---------------------------------------------------------------- loading any model

@dataclass
class LoadedModel:
    """A model ready for instrumented runs, with its tokenizer and architecture handles."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    arch: Architecture
    device: str
    dtype: torch.dtype
    context_length: int
    load_seconds: float = 0.0
    reuse_prefix: bool = True  # compute a batch's shared demonstrations once (KV cache)
    notes: list[str] = field(default_factory=list)
    weights_sha256: str = ""  # the default model's recorded weights hash (checkpoints record it)

    @property
    def n_layers(self) -> int:
        return self.arch.n_layers

    @property
    def n_heads(self) -> int:
        return self.arch.n_heads

    @property
    def can_remove_positional_score(self) -> bool:
        """Whether ``remove_positional_score`` (the recency fix) works on this model: rotate-half
        rotary positions only (GPT-J's interleaved rotation and absolute positions are refused)."""
        return self.arch.can_remove_positional_score

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, 0):
            if cand is not None:
                return cand
        return 0

    def run(self, prompts: list[BuiltPrompt], interventions: Interventions = NONE, capture: bool = True,
            value_positions: list[list[int]] | None | str = "labels", hidden_layer: int | None = None,
            value_heads=None, importance=None, full_rows_layers=()) -> RunResult:
        """One instrumented forward pass over ``prompts`` (left-padded into one batch).

        At the value positions (default: the label positions) every head's value-output vector is
        read out as label-word logits (``Capture.value_label_logits``); the full vectors are kept for
        ``value_heads`` only ("all", or a list of heads). ``importance``: a lens scaling, or
        ``(scaling, layers)``, to compute every head's importance on the model's device.
        ``full_rows_layers``: layers whose full attention matrix is kept (``Capture.full_attn``).
        """
        if not prompts:
            raise ValueError("no prompts to run")
        for p in prompts:
            if p.n_tokens > self.context_length:
                from ..prompt import PromptError

                raise PromptError(f"the prompt is {p.n_tokens} tokens, longer than the model's context of "
                                  f"{self.context_length}")
        why_missing = None
        if value_positions == "labels":
            value_positions = [p.label_positions for p in prompts]
            counts = [len(v) for v in value_positions]
            if len(set(counts)) != 1:
                value_positions = None
                why_missing = (f"no value vectors: the prompts of this batch have different numbers of label "
                               f"positions ({', '.join(map(str, counts))}); run them one at a time or in batches "
                               "with as many demonstrations each")
        ids = [p.input_ids for p in prompts]
        prefix = common_prefix_length(ids) if (len(ids) > 1 and hidden_layer is None and self.reuse_prefix
                                              and not interventions.has_rows() and not full_rows_layers) else 0
        label_ids = prompts[0].label_token_id_list()
        same_prompt = len({tuple(i) for i in ids}) == 1  # one prompt, or one prompt as rows with per-row edits at T
        store = prefix_store(self.reuse_prefix) if (same_prompt and hidden_layer is None and not full_rows_layers
                                                    and not any(interventions.row_ablate)) else None
        if store is not None:
            # the keys and values of the prompt's longest prefix any earlier run left (this session's or
            # another's) are reused; only the rest is computed (engine/prefix_cache.py)
            res = run_ids_cached(self.model, ids[0], label_ids, store, interventions=interventions, capture=capture,
                                 value_positions=value_positions[0] if value_positions is not None else None,
                                 value_heads=value_heads, importance=importance, rows=len(ids))
        elif prefix >= 16 and prefix >= 0.5 * min(len(p) for p in ids):
            # the prompts share their demonstrations: compute them once (KV cache), then each query
            res = run_ids_shared_prefix(self.model, ids, label_ids, prefix, interventions=interventions,
                                        capture=capture, value_positions=value_positions, value_heads=value_heads,
                                        importance=importance)
        else:
            res = run_ids(self.model, ids, label_ids, interventions=interventions, capture=capture,
                          value_positions=value_positions, pad_id=self.pad_id, hidden_layer=hidden_layer,
                          value_heads=value_heads, importance=importance, full_rows_layers=full_rows_layers)
        if why_missing and res.capture is not None:
            res.capture.missing.update(value_out=why_missing, value_label_logits=why_missing)
        check_finite(res, self.name)
        return res

    def prompt(self, demonstrations, query: str, label_words=None, template: str | None = None):
        """Build a prompt for this model (its tokenizer and context length): ``demonstrations`` are
        ``(sentence, label word)`` pairs; label words default to the demonstrations' own, in order."""
        from ..prompt import DEFAULT_TEMPLATE, build_prompt

        demos = [tuple(d) for d in demonstrations]
        words = tuple(label_words) if label_words else tuple(dict.fromkeys(label for _, label in demos))
        return build_prompt(self.tokenizer, demos, query, words, template or DEFAULT_TEMPLATE,
                            max_tokens=self.context_length)

    def describe(self) -> str:
        return (f"{self.name}: {self.n_layers} layers x {self.n_heads} heads "
                f"({self.arch.n_kv_heads} key-value heads), {self.arch.positional} positions, "
                f"{self.device}, {str(self.dtype).replace('torch.', '')}")


def choose_device_and_dtype(device: str | None = None, dtype: str | None = None) -> tuple[str, torch.dtype]:
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype in (None, "auto"):
        torch_dtype = torch.float32 if device == "cpu" else (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16)
    else:
        torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    return device, torch_dtype


def resolve_source(name: str) -> tuple[str, str]:
    """Classify a user-typed model name: ('default', ''), ('local', path) or ('hub', name)."""
    name = (name or "").strip()
    if offline_model(name) is not None:
        return "offline", offline_model(name).name
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith("."):
        resolved = path.resolve()
        if not resolved.is_dir():
            raise ModelLoadError(f"{name!r} is not a folder on this machine")
        if not (resolved / "config.json").is_file():
            raise ModelLoadError(f"{name!r} has no config.json: not a transformers model folder")
        return "local", str(resolved)
    if not _HUB_NAME.match(name) or ".." in name:
        raise ModelLoadError(f"{name!r} is neither a Hugging Face model name (like gpt2 or Qwen/Qwen2.5-0.5B) "
                             "nor a local folder (give an absolute path)")
    return "hub", name


def _hub_cached(name: str) -> bool:
    """Whether the Hub model's config is already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - any failure means: not known to be cached
        return False


def _check_hub(name: str, timeout: float = 10.0) -> None:
    """Fail fast, with a message, when the Hub cannot be reached or has no such model.

    Without this, an offline machine spends minutes in the Hub client's retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelLoadError(f"{name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import model_info
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        return
    try:
        model_info(name, timeout=timeout)
    except GatedRepoError as exc:
        raise ModelLoadError(f"{name!r} is gated on the Hub: log in (huggingface-cli login) and accept its "
                             "licence first") from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(f"no model {name!r} on the Hugging Face Hub (check the spelling, or log in for "
                             "private models)") from exc
    except Exception as exc:  # noqa: BLE001 - network errors of any kind
        raise ModelLoadError(f"could not reach the Hugging Face Hub to fetch {name!r} (no network?): "
                             f"{type(exc).__name__}") from exc


def load_model(name: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None,
               trust_remote_code: bool = False, device_map: str | dict | None = None, progress=None,
               offload_folder: str | Path | None = None, max_memory: dict | None = None) -> LoadedModel:
    """Load a causal LM for instrumented runs. Errors come as ModelLoadError with a clear message.

    ``device_map="auto"`` (accelerate) spreads a model larger than one device over the GPUs, the
    CPU and, with ``offload_folder``, the disk (``max_memory`` caps each device, e.g.
    ``{0: "70GiB", "cpu": "100GiB"}``); the capture gathers each layer's records onto one device.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    kind, where = resolve_source(name)
    device, torch_dtype = choose_device_and_dtype(device, dtype)
    spec = offline_model(where) if kind == "offline" else None
    if spec is not None:
        where = str(offline_model_dir(spec, progress=progress))
    kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if kind == "hub" and _hub_cached(where):
        kwargs["local_files_only"] = True
    elif kind == "hub":
        _check_hub(where)
    if device_map:
        kwargs["device_map"] = device_map
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code,
                                                      local_files_only=kwargs.get("local_files_only", False))
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a damaged default cache is rebuilt once
            if spec is None or isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
                raise
            log.warning("the cache of %s could not be loaded (%s): rebuilding it", spec.name, exc)
            if progress:
                progress(0.0, "the cached model could not be loaded; rebuilding it from the GGUF file")
            where = str(offline_model_dir(spec, progress=progress, rebuild=True))
            tokenizer = AutoTokenizer.from_pretrained(where)
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as exc:
        text = str(exc)
        if kind == "hub" and ("offline" in text.lower() or "connect" in text.lower() or "resolve" in text.lower()
                              or "couldn't" in text.lower() or "is not a local folder" in text.lower()):
            raise ModelLoadError(f"could not fetch {name!r} from the Hugging Face Hub (no network, or no such "
                                 f"model): {text.splitlines()[0][:300]}") from exc
        raise ModelLoadError(f"could not load {name!r}: {text.splitlines()[0][:300] if text else type(exc).__name__}"
                             ) from exc
    except torch.OutOfMemoryError as exc:
        raise ModelLoadError(f"not enough memory to load {name!r} in {torch_dtype}") from exc
    except MemoryError as exc:
        raise ModelLoadError(f"not enough memory to load {name!r} in {torch_dtype}") from exc
    if not device_map:
        model.to(device)
    model.eval()
    try:
        arch = instrument(model)
    except UnsupportedArchitecture as exc:
        raise ModelLoadError(f"{name!r} is loaded but its attention cannot be instrumented: {exc}") from exc
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    label = spec.label if spec is not None else name
    if device_map:
        placed = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
        device = "+".join(placed) or str(device)
    lm = LoadedModel(name=label, model=model, tokenizer=tokenizer, arch=arch, device=str(device), dtype=torch_dtype,
                     context_length=int(ctx), load_seconds=time.perf_counter() - t0)
    if spec is not None:
        lm.weights_sha256 = weights_sha256(Path(where))
    return lm


def wrap_model(model, tokenizer, name: str = "model") -> LoadedModel:
    """Wrap an already built model (tests build tiny random ones from configs)."""
    model.eval()
    arch = instrument(model)
    cfg = model.config
    ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    p = next(model.parameters())
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, arch=arch, device=str(p.device), dtype=p.dtype,
                       context_length=int(ctx))
