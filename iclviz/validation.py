"""One validation layer for every input that crosses into the library.

Each kind of input is checked in one place: head names, layers, whole numbers with their
ranges, devices, output paths, prompt sizes and the shared/uploaded prompt state (types,
lengths, ranges, nesting depth). Everything raises :class:`ValidationError` (a ValueError)
with a message meant for the user: the CLI prints it as one line and exits with status 2,
the app shows it and keeps the previous state.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path

from .errors import IclvizError

Head = tuple[int, int]

MAX_HEADS = 256  # head sets longer than this are refused (no model here has a use for more)
MAX_JSON_DEPTH = 6  # the shared state nests 3 levels; anything deeper is refused before parsing
MAX_JSON_BYTES = 1_000_000
MAX_DEMOS = 64
MAX_TEXT = 2000
MAX_LABEL_CHARS = 50
MAX_LABEL_WORDS = 8
DEVICES = ("auto", "cpu", "cuda", "mps")

_HEAD = re.compile(r"^L([0-9]{1,4})H([0-9]{1,4})$")
_HEAD_DOT = re.compile(r"^([0-9]{1,4})\.([0-9]{1,4})$")


class ValidationError(IclvizError, ValueError):
    """Bad input; the message says what and why, for the user."""


# ---------------------------------------------------------------- heads and layers

def head_name(head: Head) -> str:
    """(21, 1) -> 'L21H1' (the one formatter; :func:`parse_heads` reads it back)."""
    return f"L{int(head[0])}H{int(head[1])}"


def parse_head(text, n_layers: int | None = None, n_heads: int | None = None) -> Head:
    """'L21H1' or '21.1' -> (21, 1); negative, malformed or (given the model) out-of-range heads are refused."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValidationError(f"{text!r} is not a head; write it like L21H1")
    t = text.strip().upper().replace(" ", "")
    m = _HEAD.match(t) or _HEAD_DOT.match(t)
    if not m:
        raise ValidationError(f"{text!r} is not a head; write it like L21H1 (layer and head from 0)")
    head = (int(m.group(1)), int(m.group(2)))
    if n_layers is not None or n_heads is not None:
        check_heads([head], n_layers, n_heads)
    return head


def parse_heads(text, n_layers: int | None = None, n_heads: int | None = None) -> list[Head]:
    """'L21H1 L20H10', 'L21H1, L20H10' or a list of such names -> [(21, 1), (20, 10)] (duplicates dropped).

    Given ``n_layers``/``n_heads`` every head is checked against the model.
    """
    if text is None:
        return []
    if isinstance(text, str):
        parts = [p for p in re.split(r"[\s,;]+", text) if p]
    elif isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        raise ValidationError("heads must be names like L21H1 separated by spaces or commas")
    if len(parts) > MAX_HEADS:
        raise ValidationError(f"{len(parts)} heads given; at most {MAX_HEADS}")
    heads = list(dict.fromkeys(parse_head(p) for p in parts))
    if n_layers is not None or n_heads is not None:
        check_heads(heads, n_layers, n_heads)
    return heads


def check_heads(heads, n_layers: int | None, n_heads: int | None) -> list[Head]:
    bad = [h for h in heads if h[0] < 0 or h[1] < 0 or (n_layers is not None and h[0] >= n_layers)
           or (n_heads is not None and h[1] >= n_heads)]
    if bad:
        size = f"{n_layers} layers x {n_heads} heads, numbered from 0" if n_layers and n_heads else "numbered from 0"
        raise ValidationError(f"{', '.join(map(head_name, bad))} not in this model ({size})")
    return list(heads)


def check_layers(layers, n_layers: int) -> list[int]:
    if layers is None:
        return None
    layers = list(dict.fromkeys(int(a) for a in layers))
    if not layers:
        raise ValidationError("give at least one layer")
    bad = [a for a in layers if not 0 <= a < n_layers]
    if bad:
        raise ValidationError(f"layer {', '.join(map(str, bad))} not in this model (layers 0 to {n_layers - 1})")
    return layers


# ---------------------------------------------------------------- numbers

def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int within [lo, hi]; bools, floats with a fraction and text are refused."""
    if isinstance(value, bool):
        raise ValidationError(f"{name} must be a whole number; got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValidationError(f"{name} must be a whole number; got {value!r}") from None
    if not isinstance(value, int):
        raise ValidationError(f"{name} must be a whole number; got {value!r}")
    if lo is not None and value < lo:
        raise ValidationError(f"{name} must be at least {lo}; got {value}")
    if hi is not None and value > hi:
        raise ValidationError(f"{name} must be at most {hi}; got {value}")
    return value


def int_type(lo: int | None = None, hi: int | None = None):
    """An argparse ``type`` for whole numbers in [lo, hi] (argparse turns the error into one line)."""
    import argparse

    def parse(text: str) -> int:
        try:
            return check_int("the value", text, lo, hi)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "whole number"
    return parse


# ---------------------------------------------------------------- device

def check_device(device: str | None) -> str:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', and only when this machine has it."""
    import torch

    d = (device or "auto").strip().lower()
    m = re.match(r"^(cuda)(?::(\d+))?$", d)
    if d in ("auto", "cpu"):
        return d
    if m:
        if not torch.cuda.is_available():
            raise ValidationError(f"device {device!r}: this machine has no CUDA GPU that torch can use; "
                                  "use --device cpu or auto")
        if m.group(2) is not None and int(m.group(2)) >= torch.cuda.device_count():
            raise ValidationError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return d
    if d == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValidationError("device 'mps': not available on this machine; use cpu or auto")
        return d
    raise ValidationError(f"unknown device {device!r}; choose auto, cpu, cuda, cuda:N or mps")


# ---------------------------------------------------------------- paths and atomic writes

def check_output_dir(path) -> Path:
    """Create ``path`` if needed and prove it writable now, before any work is done."""
    if not str(path).strip():
        raise ValidationError("--out is empty; give a folder (or leave --out out)")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValidationError(f"--out {str(path)!r} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".iclviz-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValidationError(f"cannot write to {str(path)!r}: {exc.strerror or exc}") from None
    return p


def check_file_target(path, what: str = "file") -> Path:
    """A file path that can be created or appended to: not a folder, its folder writable."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise ValidationError(f"{what} is empty; give a file name")
    if p.is_dir():
        raise ValidationError(f"{what} {str(path)!r} is a folder; give a file name")
    check_regular_file(p, what)
    if p.exists() and not os.access(p, os.R_OK | os.W_OK):
        raise ValidationError(f"{what} {str(path)!r} cannot be read and written")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError(f"cannot create the folder of {what} {str(path)!r}: {exc.strerror or exc}") from None
    if not os.access(p.parent, os.W_OK):
        raise ValidationError(f"the folder of {what} {str(path)!r} is not writable")
    return p


def check_regular_file(path, what: str = "file") -> None:
    """Refuse a path that exists and is not a regular file (a device, a FIFO, a socket, a folder, or a
    link to one of them): a write would replace it (``os.replace``) or block on it. A missing path is fine."""
    try:
        mode = os.stat(path).st_mode  # follows links: a link to /dev/null is a device
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ValidationError(f"{what} {str(path)!r} cannot be used: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise ValidationError(f"{what} {str(path)!r} exists and is {kind}, not a regular file; it is left "
                              "untouched: give another file name")


def atomic_write(path, data: str | bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over ``path`` (never a half-written file).

    A ``path`` that exists and is not a regular file is refused (ValidationError): never replaced.
    """
    p = Path(path)
    check_regular_file(p, "the output")
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- prompt size

def check_prompt_size(n_tokens: int, limit: int, source: str = "the limit") -> None:
    if n_tokens > limit:
        raise ValidationError(f"the prompt is {n_tokens:,} tokens; {source} is {limit:,}. "
                              "Remove demonstrations or shorten sentences")


def check_demo_count(n: int, limit: int) -> None:
    if n > limit:
        raise ValidationError(f"{n} demonstrations; at most {limit} are allowed")


# ---------------------------------------------------------------- shared / uploaded state

def json_depth(text: str) -> int:
    """Deepest nesting of arrays/objects in JSON text, found without parsing (strings skipped)."""
    depth = best = 0
    in_str = esc = False
    for c in text:
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
            best = max(best, depth)
        elif c in "]}":
            depth -= 1
    return best


def load_json_limited(text: str | bytes, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """Parse untrusted JSON: size, encoding and nesting depth are checked first."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_bytes:
            raise ValidationError(f"the file is larger than {max_bytes // 1_000_000} MB")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError("the file is not UTF-8 text") from None
    if not isinstance(text, str):
        raise ValidationError("expected JSON text")
    if len(text) > max_bytes:
        raise ValidationError(f"the text is larger than {max_bytes // 1_000_000} MB")
    if json_depth(text) > max_depth:
        raise ValidationError(f"the JSON is nested more than {max_depth} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:
        raise ValidationError("the JSON is nested too deeply") from None


def parse_shared_state(d, templates) -> dict:
    """Validate untrusted prompt state (an upload or a shared link).

    Returns ``{"demos": [(text, label)], "query", "label_words", "template", "heads"}`` with every
    field of the right type, length and range. Heads may be names ('L21H1') or [layer, head] pairs
    of non-negative integers; checking them against a model happens when a model is loaded.
    """
    if not isinstance(d, dict):
        raise ValidationError("the state must be a JSON object with 'demonstrations' and 'query'")
    demos_raw = d.get("demonstrations", d.get("demos"))
    if not isinstance(demos_raw, list):
        raise ValidationError("'demonstrations' must be a list of {\"text\": ..., \"label\": ...}")
    if len(demos_raw) > MAX_DEMOS:
        raise ValidationError(f"{len(demos_raw)} demonstrations; at most {MAX_DEMOS}")
    demos = []
    for i, item in enumerate(demos_raw):
        if isinstance(item, dict):
            text, label = item.get("text"), item.get("label")
        elif isinstance(item, list) and len(item) == 2:
            text, label = item
        else:
            raise ValidationError(f"demonstration {i + 1} must be {{\"text\": ..., \"label\": ...}}")
        if not isinstance(text, str) or not isinstance(label, str):
            raise ValidationError(f"demonstration {i + 1}: text and label must be strings")
        demos.append((_fits(text, MAX_TEXT, f"demonstration {i + 1}"),
                      _fits(label, MAX_LABEL_CHARS, f"the label of demonstration {i + 1}")))
    query = d.get("query", "")
    if not isinstance(query, str):
        raise ValidationError("'query' must be a string")
    words = d.get("label_words", ["foo", "bar"])
    if (not isinstance(words, list) or not all(isinstance(w, str) for w in words)
            or not 2 <= len(words) <= MAX_LABEL_WORDS):
        raise ValidationError(f"'label_words' must be a list of 2 to {MAX_LABEL_WORDS} strings")
    template = d.get("template", "review")
    if not isinstance(template, str):
        raise ValidationError(f"'template' must be a name, one of {', '.join(templates)}")
    if template not in templates:
        raise ValidationError(f"unknown template {template[:40]!r}; choose one of {', '.join(templates)}")
    heads_raw = d.get("heads", [])
    if not isinstance(heads_raw, list):
        raise ValidationError("'heads' must be a list like [\"L21H1\", \"L20H10\"]")
    if len(heads_raw) > MAX_HEADS:
        raise ValidationError(f"{len(heads_raw)} heads; at most {MAX_HEADS}")
    heads = []
    for h in heads_raw:
        if isinstance(h, str):
            heads.append(parse_head(h))
        elif (isinstance(h, list) and len(h) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                           for x in h)):
            heads.append(check_heads([(h[0], h[1])], None, None)[0])
        else:
            raise ValidationError(f"head {h!r}: write heads like \"L21H1\" (or [21, 1])")
    query = _fits(query, MAX_TEXT, "the query")
    words = [_fits(w, MAX_LABEL_CHARS, f"label word {i + 1}") for i, w in enumerate(words)]
    return {"demos": demos, "query": query, "label_words": tuple(words),
            "template": template, "heads": list(dict.fromkeys(heads))}


def _fits(text: str, limit: int, what: str) -> str:
    """``text`` unchanged, or a refusal: text is never cut without a word."""
    if len(text) > limit:
        raise ValidationError(f"{what} is {len(text):,} characters; a shared prompt or a lesson file holds at most "
                              f"{limit:,}: shorten it")
    return check_text(text, what)


def check_text(text: str, what: str) -> str:
    """``text`` when it is valid Unicode text; a lone surrogate (e.g. undecodable bytes on a command line,
    ``$'\\udcff'``) is refused with its position."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"{what} holds a character that is not valid text (U+{ord(text[exc.start]):04X} at "
                              f"position {exc.start + 1}; undecodable bytes?): write it as UTF-8 text") from None
    return text


def check_tolerance(name: str, value) -> float:
    """A replay tolerance: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValidationError(f"{name} must be a finite number of at least 0; got {value!r}")
    return float(value)


def tolerance_type(name: str):
    """An argparse ``type`` for a tolerance (finite, >= 0)."""
    import argparse

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number; got {text!r}") from None
        try:
            return check_tolerance(name, value)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "tolerance"
    return parse


# ---------------------------------------------------------------- markdown

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~$])")  # with [ ] and < > escaped no link, image or tag can form


def escape_markdown(text) -> str:
    """User text made inert inside Streamlit markdown: no links, images, HTML or formatting.

    Bare URLs are broken with a zero-width space after the scheme (and after ``www``), since
    markdown's autolinks would otherwise turn them into links and show the escapes inside them.
    """
    text = re.sub(r"(?i)(https?|ftp|mailto)(:)", "\\1\u200b\\2", str(text))
    text = re.sub(r"(?i)\b(www)(\.)", "\\1\u200b\\2", text)
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", " ")
