"""A lesson file: one JSON file with a prompt, its heads, interventions, model, versions and results.

(Not the guided lesson of ``lesson.py``.) A lesson file holds what a view showed and how to get it
again: the prompt (demonstrations, query, label words, template), the heads, the intervention
(a ``Plan``: kind and heads), the optional second prompt of the A/B view, the optional donor prompt
of the two-towers patch, whether the contributions were shown, the model's name and weights'
sha256 where known (``LoadedModel.weights_sha256``: the offline models record it), the package
versions, and the results:

- ``prediction``: predicted label, probabilities and logits over the label words (with the plan);
- ``attention``: per head and label, the attention from T on that label's positions (with the plan);
- ``compare``: ``compare.PromptComparison.to_dict()`` (the plan in both runs), if a prompt B is given;
- ``contributions``: ``contributions.Contributions.to_dict()`` (no intervention), if asked;
- ``towers``: ``towers_patch.TowersPatch.to_dict()`` (no other intervention), if a donor is given.

``load_lesson`` reads untrusted files: a size limit, JSON only (nothing is executed or unpickled),
a schema check with clear messages. The app can show a loaded lesson without a model
(``Lesson.tables()``); ``replay(lesson, lm)`` recomputes every stored result and lists what differs
beyond a tolerance (``python -m iclviz replay FILE``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..analyses.compare import PromptSpec, compare_prompts
from ..analyses.heads import DEFAULT_SCALING
from ..engine.interventions import PLAN_KINDS, Head, Plan
from ..engine.lens import SCALINGS
from ..validation import ValidationError, atomic_write, head_name, load_json_limited, parse_head

FORMAT = "iclviz-lesson"
VERSION = 1
MAX_LESSON_BYTES = 5_000_000
MAX_DEPTH = 8
MAX_LEAVES = 200_000
RTOL, ATOL = 1e-3, 1e-4  # replay tolerances: another machine, another BLAS
_KEYS = {"format", "version", "created", "model", "packages", "prompt", "heads", "interventions", "scaling",
         "prompt_b", "donor", "towers_positions", "contributions", "pair", "results"}


@dataclass
class Lesson:
    prompt: PromptSpec
    heads: list[Head]
    plan: Plan = field(default_factory=Plan)
    scaling: str = DEFAULT_SCALING
    prompt_b: PromptSpec | None = None
    donor: PromptSpec | None = None
    towers_positions: str = "labels"
    contributions: bool = False
    pair: tuple[str, str] | None = None
    model: dict = field(default_factory=dict)
    packages: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "created": self.created, "model": dict(self.model),
                "packages": dict(self.packages), "prompt": self.prompt.to_dict(),
                "heads": [head_name(h) for h in self.heads],
                "interventions": {"kind": self.plan.kind, "heads": [head_name(h) for h in self.plan.heads]},
                "scaling": self.scaling, "prompt_b": self.prompt_b.to_dict() if self.prompt_b else None,
                "donor": self.donor.to_dict() if self.donor else None, "towers_positions": self.towers_positions,
                "contributions": self.contributions, "pair": list(self.pair) if self.pair else None,
                "results": _clean(self.results)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False, ensure_ascii=False)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The stored results as tables (for showing a lesson without a model)."""
        r = self.results
        out = {}
        if "prediction" in r:
            p = r["prediction"]
            out["prediction"] = pd.DataFrame([{"label": w, "probability": p["probs"].get(w),
                                               "logit": p.get("logits", {}).get(w),
                                               "predicted": w == p.get("predicted")}
                                              for w in p.get("probs", {})])
        if "attention" in r:
            out["attention"] = pd.DataFrame(r["attention"])
        if "compare" in r:
            out["compare"] = pd.DataFrame(r["compare"].get("head_table", []))
            out["compare_labels"] = pd.DataFrame(r["compare"].get("labels", []))
        if "contributions" in r:
            out["contributions"] = pd.DataFrame(r["contributions"].get("table", []))
        if "towers" in r:
            out["towers"] = pd.DataFrame(r["towers"].get("summary", []))
        return out


def json_safe(obj):
    """JSON-safe copy: NaN and infinities become None (``null``), tuples lists, numpy scalars Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


_clean = json_safe


def package_versions() -> dict:
    import torch
    import transformers

    from .. import __version__

    return {"iclviz": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def model_info(lm) -> dict:
    return {"name": str(lm.name), "weights_sha256": str(getattr(lm, "weights_sha256", "") or ""),
            "n_layers": int(lm.n_layers), "n_heads": int(lm.n_heads), "dtype": str(lm.dtype).replace("torch.", ""),
            "device": str(lm.device)}


def compute_results(lm, lesson: Lesson) -> dict:
    """Every result the lesson asks for, computed on ``lm``."""
    from ..analyses.contributions import demo_contributions
    from ..analyses.readout import head_label_mass
    from ..analyses.towers_patch import towers_patch

    prompt = lesson.prompt.build(lm)
    iv = lesson.plan.build([prompt])
    res = lm.run([prompt], interventions=iv, capture=True, value_positions=None)
    words = prompt.label_words
    probs, logits = res.label_probs[0], res.label_logits[0]
    out: dict = {"prediction": {"predicted": words[int(res.predictions[0])],
                                "probs": {w: float(probs[k]) for k, w in enumerate(words)},
                                "logits": {w: float(logits[k]) for k, w in enumerate(words)}}}
    mass = head_label_mass(prompt, res.capture, lesson.heads)  # [n_heads, K]
    out["attention"] = [{"head": head_name(h), "label": w, "attention": float(mass[j, k])}
                        for j, h in enumerate(lesson.heads) for k, w in enumerate(words)]
    if lesson.prompt_b is not None:
        out["compare"] = compare_prompts(lm, prompt, lesson.prompt_b.build(lm), lesson.heads, lesson.scaling,
                                         lesson.plan).to_dict()
    if lesson.contributions:
        out["contributions"] = demo_contributions(lm, prompt, lesson.heads, lesson.pair).to_dict()
    if lesson.donor is not None:
        out["towers"] = towers_patch(lm, prompt, lesson.donor.build(lm), lesson.heads,
                                     lesson.towers_positions).to_dict()
    return _clean(out)


def make_lesson(lm, prompt: PromptSpec, heads, plan: Plan | None = None, prompt_b: PromptSpec | None = None,
                donor: PromptSpec | None = None, towers_positions: str = "labels", contributions: bool = False,
                pair=None, scaling: str = DEFAULT_SCALING) -> Lesson:
    """A lesson of the current views' state, with its results computed on ``lm``.

    A prompt the file could not read back (text past the limits) is refused first (ValidationError)."""
    for spec in (prompt, prompt_b, donor):
        if spec is not None:
            PromptSpec.from_dict(spec.to_dict())
    heads = [(int(a), int(b)) for a, b in heads]
    _check_heads_fit(heads, lm)
    lesson = Lesson(prompt, heads, plan or Plan(), scaling, prompt_b, donor, towers_positions, contributions,
                    tuple(pair) if pair else None, model_info(lm), package_versions(),
                    created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    lesson.results = compute_results(lm, lesson)
    return lesson


def save_lesson(lesson: Lesson, path) -> Path:
    path = Path(path)
    atomic_write(path, lesson.to_json())
    return path


# ---------------------------------------------------------------- reading untrusted files

def _leaves(obj, prefix: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def _str_map(d, what: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict) or len(d) > 50:
        raise ValidationError(f"'{what}' must be an object of at most 50 entries")
    for k, v in d.items():
        if not isinstance(v, (str, int, float, type(None))) or isinstance(v, bool):
            raise ValidationError(f"'{what}.{k}' must be a string or a number")
        if isinstance(v, str) and len(v) > 500:
            raise ValidationError(f"'{what}.{k}' is longer than 500 characters")
    return dict(d)


def _heads(raw, what: str) -> list[Head]:
    if not isinstance(raw, list) or len(raw) > 256:
        raise ValidationError(f"'{what}' must be a list of at most 256 heads like \"L21H1\"")
    out = []
    for h in raw:
        if isinstance(h, str):
            out.append(parse_head(h))
        elif isinstance(h, list) and len(h) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                         for x in h):
            out.append((h[0], h[1]))
        else:
            raise ValidationError(f"'{what}': head {str(h)[:40]!r} is not like \"L21H1\"")
    return list(dict.fromkeys(out))


_RESULT_TABLES = {"attention": None, "compare": ("head_table", "labels"), "contributions": ("table",),
                  "towers": ("summary",)}


def _check_results(results) -> None:
    """The stored results' shapes (what ``Lesson.tables`` and the app read): objects and lists of rows."""
    if not isinstance(results, dict):
        raise ValidationError("'results' must be an object")
    unknown = sorted(set(results) - {"prediction", *_RESULT_TABLES})
    if unknown:
        raise ValidationError(f"unknown result(s) in the lesson file: {', '.join(k[:40] for k in unknown[:5])}")

    def rows(value, where: str) -> None:
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise ValidationError(f"'{where}' must be a list of rows (objects)")

    if "prediction" in results:
        p = results["prediction"]
        if (not isinstance(p, dict) or not isinstance(p.get("probs"), dict)
                or not isinstance(p.get("logits", {}), dict) or not isinstance(p.get("predicted", ""), str)):
            raise ValidationError("'results.prediction' must hold 'predicted' (a label word), 'probs' and 'logits' "
                                  "(objects of label word: number)")
    for key, tables in _RESULT_TABLES.items():
        if key not in results:
            continue
        if tables is None:
            rows(results[key], f"results.{key}")
            continue
        if not isinstance(results[key], dict):
            raise ValidationError(f"'results.{key}' must be an object")
        for t in tables:
            if t in results[key]:
                rows(results[key][t], f"results.{key}.{t}")


def lesson_from_dict(d) -> Lesson:
    """Validate a parsed lesson (ValidationError with a clear message)."""
    if not isinstance(d, dict):
        raise ValidationError("a lesson file is a JSON object")
    if d.get("format") != FORMAT:
        raise ValidationError(f"not an iclviz lesson file ('format' must be {FORMAT!r})")
    if d.get("version") != VERSION:
        raise ValidationError(f"lesson file version {str(d.get('version'))[:20]!r}; "
                              f"this iclviz reads version {VERSION}")
    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise ValidationError(f"unknown field(s) in the lesson file: {', '.join(k[:40] for k in unknown[:5])}")
    if "prompt" not in d:
        raise ValidationError("the lesson file has no 'prompt'")
    prompt = PromptSpec.from_dict(d["prompt"])
    heads = _heads(d.get("heads", []), "heads")
    iv = d.get("interventions") or {"kind": "none", "heads": []}
    if not isinstance(iv, dict) or iv.get("kind", "none") not in PLAN_KINDS:
        raise ValidationError(f"'interventions.kind' must be one of {', '.join(PLAN_KINDS)}")
    plan = Plan(iv.get("kind", "none"), tuple(_heads(iv.get("heads", []), "interventions.heads")))
    scaling = d.get("scaling", DEFAULT_SCALING)
    if scaling not in SCALINGS:
        raise ValidationError(f"'scaling' must be one of {', '.join(SCALINGS)}")
    prompt_b = PromptSpec.from_dict(d["prompt_b"]) if d.get("prompt_b") is not None else None
    donor = PromptSpec.from_dict(d["donor"]) if d.get("donor") is not None else None
    positions = d.get("towers_positions", "labels")
    if positions not in ("labels", "all"):
        raise ValidationError("'towers_positions' must be 'labels' or 'all'")
    contributions = d.get("contributions", False)
    if not isinstance(contributions, bool):
        raise ValidationError("'contributions' must be true or false")
    pair = d.get("pair")
    if pair is not None and not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(w, str) for w in pair)):
        raise ValidationError("'pair' must be two label words")
    results = d.get("results", {})
    _check_results(results)
    n = 0
    for key, leaf in _leaves(results):
        n += 1
        if n > MAX_LEAVES:
            raise ValidationError(f"'results' holds more than {MAX_LEAVES} values")
        if isinstance(leaf, str) and len(leaf) > 5000:
            raise ValidationError(f"'results.{key[:80]}' is longer than 5000 characters")
    created = d.get("created", "")
    return Lesson(prompt, heads, plan, scaling, prompt_b, donor, positions, contributions,
                  tuple(pair) if pair else None, _str_map(d.get("model"), "model"),
                  _str_map(d.get("packages"), "packages"), results, str(created)[:64] if created else "")


def load_lesson(source) -> Lesson:
    """Read a lesson file (a path, or the file's bytes/text as an upload gives them)."""
    if isinstance(source, (bytes, bytearray)) or (isinstance(source, str) and source.lstrip().startswith("{")):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ValidationError(f"{str(path)[:200]!r} is not a file")
        if path.stat().st_size > MAX_LESSON_BYTES:
            raise ValidationError(f"the lesson file is larger than {MAX_LESSON_BYTES // 1_000_000} MB")
        data = path.read_bytes()
    return lesson_from_dict(load_json_limited(data, MAX_LESSON_BYTES, MAX_DEPTH))


# ---------------------------------------------------------------- replay

@dataclass
class ReplayReport:
    """What differs between the stored results and the recomputed ones.

    ``differences``: one row per differing value (``key`` like ``compare.head_table[3].attention_b``,
    ``stored``, ``replayed``, ``abs_diff``); ``notes``: model and package differences (not errors).
    """

    differences: pd.DataFrame
    n_compared: int
    notes: list[str]
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.differences.empty

    def to_frame(self) -> pd.DataFrame:
        return self.differences.copy()

    def to_dict(self) -> dict:
        return _clean({"ok": self.ok, "n_compared": self.n_compared, "rtol": self.rtol, "atol": self.atol,
                       "notes": list(self.notes), "differences": self.differences.to_dict(orient="records")})

    def summary(self) -> str:
        head = (f"all {self.n_compared} stored values agree (rtol {self.rtol:g}, atol {self.atol:g})" if self.ok else
                f"{len(self.differences)} of {self.n_compared} values differ (rtol {self.rtol:g}, "
                f"atol {self.atol:g}; a value missing on one side counts as differing)")
        return "; ".join([head] + self.notes)


def _same(a, b, rtol: float, atol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a == b
    return abs(a - b) <= atol + rtol * abs(a)


def compare_results(stored: dict, replayed: dict, rtol: float = RTOL, atol: float = ATOL) -> tuple[pd.DataFrame, int]:
    s, r = dict(_leaves(stored)), dict(_leaves(_clean(replayed)))
    rows = []
    for key in list(s) + [k for k in r if k not in s]:
        a, b = s.get(key, "(missing)"), r.get(key, "(missing)")
        if key not in r or key not in s or not _same(a, b, rtol, atol):
            num = isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
            rows.append({"key": key, "stored": a, "replayed": b, "abs_diff": abs(a - b) if num else None})
    # every value either side holds (one missing from the file counts once, so the differences never outnumber it)
    return pd.DataFrame(rows, columns=["key", "stored", "replayed", "abs_diff"]), len(set(s) | set(r))


def replay(lesson: Lesson, lm, rtol: float = RTOL, atol: float = ATOL) -> ReplayReport:
    """Recompute every stored result on ``lm`` and report what differs (a lesson without results is refused)."""
    if not lesson.results:
        raise ValidationError("the lesson file holds no results to compare (nothing to replay)")
    _check_heads_fit(lesson.heads + list(lesson.plan.heads), lm)
    notes = []
    now = model_info(lm)
    if lesson.model.get("name") and lesson.model.get("name") != now["name"]:
        notes.append(f"stored with model {lesson.model['name']!r}, replayed on {now['name']!r}")
    sha = lesson.model.get("weights_sha256") or ""
    if sha and now["weights_sha256"] and sha != now["weights_sha256"]:
        notes.append(f"the model's weights differ from the stored model's (sha256 {now['weights_sha256'][:12]}… now, "
                     f"{sha[:12]}… in the file)")
    elif sha and not now["weights_sha256"]:
        notes.append(f"the file records the weights' sha256 {sha[:12]}…; {now['name']!r} has none to compare with "
                     "(not an offline model), so the weights may differ")
    for k, v in package_versions().items():
        if k in lesson.packages and str(lesson.packages[k]) != v and k != "python":
            notes.append(f"{k} {lesson.packages[k]} when stored, {v} now")
    diffs, n = compare_results(lesson.results, compute_results(lm, lesson), rtol, atol)
    return ReplayReport(diffs, n, notes, rtol, atol)


def _check_heads_fit(heads, lm) -> None:
    for a, b in heads:
        if not (0 <= a < lm.n_layers and 0 <= b < lm.n_heads):
            raise ValidationError(f"head {head_name((a, b))} does not exist in {lm.name} "
                                  f"({lm.n_layers} layers x {lm.n_heads} heads)")
