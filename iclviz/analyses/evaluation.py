"""Prediction for one prompt and accuracy over a dataset sample, batched, with intervals."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..data import Dataset, label_words_for, sample_demonstrations, sample_test
from ..engine.interventions import NONE, Interventions, Plan
from ..engine.models import LoadedModel
from ..errors import Cancelled
from ..prompt import DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE, BuiltPrompt, build_prompt
from ..validation import ValidationError, check_regular_file

Progress = Callable[[int, int, str], bool | None]  # return False to stop


@dataclass
class Prediction:
    prompt: BuiltPrompt
    probs: dict[str, float]  # over the label words only
    logits: dict[str, float]
    predicted: str
    capture: object | None = None

    @property
    def margin(self) -> float:
        """logit(first label) - logit(second label)."""
        w = self.prompt.label_words
        return self.logits[w[0]] - self.logits[w[1]]


def predict(lm: LoadedModel, demonstrations, query: str, label_words=DEFAULT_LABEL_WORDS,
            template=DEFAULT_TEMPLATE, interventions: Interventions | Plan = NONE, capture: bool = True
            ) -> Prediction:
    prompt = build_prompt(lm.tokenizer, demonstrations, query, label_words, template, max_tokens=lm.context_length)
    return predict_prompt(lm, prompt, interventions, capture)


def predict_prompt(lm: LoadedModel, prompt: BuiltPrompt, interventions: Interventions | Plan = NONE,
                   capture: bool = True) -> Prediction:
    iv = interventions.build([prompt]) if isinstance(interventions, Plan) else interventions
    res = lm.run([prompt], interventions=iv, capture=capture)
    words = prompt.label_words
    probs = res.label_probs[0].tolist()
    logits = res.label_logits[0].tolist()
    return Prediction(prompt, dict(zip(words, probs)), dict(zip(words, logits)), words[int(res.predictions[0])],
                      res.capture)


@dataclass
class EvalSetup:
    """Which prompts an evaluation runs: k demonstrations per label, n test sentences, seeds."""

    dataset: Dataset
    k_per_label: int | list[int] = 4
    n_test: int = 48
    seeds: tuple[int, ...] = (0,)
    label_words: tuple[str, ...] | None = None
    template: str = DEFAULT_TEMPLATE
    order: str = "shuffle"
    demo_transform: Callable[[list, int], list] | None = None  # (demos, seed) -> demos, e.g. drop or reorder

    def words(self) -> tuple[str, ...]:
        return label_words_for(len(self.dataset.labels), self.label_words)

    def prompts(self, lm: LoadedModel, seed: int, demos=None) -> tuple[list[BuiltPrompt], list[int]]:
        """The seed's demonstrations with each test sentence as the query; gold label indices."""
        words = self.words()
        if demos is None:
            demos = sample_demonstrations(self.dataset, self.k_per_label, seed, self.order)
            if self.demo_transform is not None:
                demos = self.demo_transform(demos, seed)
        demo_pairs = [(t, words[y]) for t, y in demos]
        tests = sample_test(self.dataset, self.n_test, seed=seed)
        prompts = [build_prompt(lm.tokenizer, demo_pairs, t, words, self.template, max_tokens=lm.context_length)
                   for t, _ in tests]
        return prompts, [y for _, y in tests]


@dataclass
class EvalResult:
    rows: pd.DataFrame  # one row per prompt: seed, index, gold, pred, correct, margin, p_<label>
    label_words: tuple[str, ...]
    plan: str
    extras: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(self.rows["correct"].mean()) if len(self.rows) else float("nan")

    @property
    def n(self) -> int:
        return len(self.rows)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        return wilson_interval(int(self.rows["correct"].sum()), self.n, z)

    def per_seed(self) -> pd.Series:
        return self.rows.groupby("seed")["correct"].mean()

    def prediction_share(self) -> dict[str, float]:
        return {w: float((self.rows["pred"] == i).mean()) for i, w in enumerate(self.label_words)}

    def summary(self) -> dict:
        lo, hi = self.interval()
        ps = self.per_seed()
        return {"plan": self.plan, "n": self.n, "accuracy": self.accuracy, "ci_low": lo, "ci_high": hi,
                "seed_sd": float(ps.std(ddof=1)) if len(ps) > 1 else float("nan"), "seeds": len(ps)}


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def prompt_batches(lm: LoadedModel, setup: EvalSetup, batch_size: int, progress: Progress | None = None,
                   note: str = "", demos_for_seed=None):
    """Yield ``(seed, start, prompts, gold)`` batches over every seed's prompts, reporting progress.

    ``demos_for_seed(seed)`` may supply the demonstrations; raises Cancelled when ``progress``
    returns False.
    """
    total = len(setup.seeds) * setup.n_test
    done = 0
    for seed in setup.seeds:
        prompts, gold = setup.prompts(lm, seed, demos_for_seed(seed) if demos_for_seed else None)
        for i in range(0, len(prompts), batch_size):
            yield seed, i, prompts[i:i + batch_size], gold[i:i + batch_size]
            done += len(prompts[i:i + batch_size])
            if progress is not None and progress(done, total, note) is False:
                raise Cancelled(f"stopped after {done} of {total} prompts")


def evaluate(lm: LoadedModel, setup: EvalSetup, plan: Plan = Plan(), batch_size: int = 8,
             progress: Progress | None = None, checkpoint: str | Path | None = None) -> EvalResult:
    """Accuracy of ``plan`` over the setup's prompts (all seeds).

    With ``checkpoint`` (a JSONL path) finished prompts are appended as they complete and a
    rerun resumes after them.
    """
    words = setup.words()
    done: dict[tuple[int, int], dict] = {}
    ck = Path(checkpoint) if checkpoint else None
    warnings: list[str] = []
    if ck:
        done = open_checkpoint(ck, run_identity(lm, setup, plan), warnings)
    rows = []
    total = len(setup.seeds) * setup.n_test
    finished = 0
    for seed in setup.seeds:
        prompts, gold = setup.prompts(lm, seed)
        todo = [i for i in range(len(prompts)) if (seed, i) not in done]
        rows += [done[(seed, i)] for i in range(len(prompts)) if (seed, i) in done]
        finished += len(prompts) - len(todo)
        for j in range(0, len(todo), batch_size):
            idx = todo[j:j + batch_size]
            chunk = [prompts[i] for i in idx]
            res = lm.run(chunk, interventions=plan.build(chunk), capture=False)
            new = _rows(seed, idx, [gold[i] for i in idx], res, words, plan.label())
            rows += new
            if ck:
                ck.parent.mkdir(parents=True, exist_ok=True)
                with open(ck, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in new)
            finished += len(idx)
            if progress is not None and progress(finished, total, plan.label()) is False:
                raise Cancelled(f"stopped after {finished} of {total} prompts")
    df = pd.DataFrame(rows).sort_values(["seed", "index"]).reset_index(drop=True) if rows else pd.DataFrame(
        columns=["seed", "index", "gold", "pred", "correct", "margin"])
    return EvalResult(df, words, plan.label(), extras={"warnings": warnings})


# ---------------------------------------------------------------- checkpoints

CHECKPOINT_FORMAT = 2


class CheckpointMismatch(ValidationError):
    """A checkpoint belongs to another run (other model, data or settings) or is not a checkpoint."""


def model_fingerprint(lm: LoadedModel) -> str:
    """The weights' recorded sha256 (default model), else a hash of every parameter's name, shape and a sample."""
    if getattr(lm, "weights_sha256", ""):
        return "sha256:" + lm.weights_sha256
    import hashlib

    h = hashlib.sha256()
    for name, t in lm.model.state_dict().items():
        flat = t.detach().reshape(-1)
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(torch.cat([flat[:64], flat[-64:]]).float().cpu().numpy().tobytes())
    return "sample:" + h.hexdigest()[:32]


def _frame_hash(df: pd.DataFrame) -> str:
    import hashlib

    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).values.tobytes()).hexdigest()[:16]


def run_identity(lm: LoadedModel, setup: EvalSetup, plan: Plan) -> dict:
    """Everything that defines an evaluation's rows (seeds are recorded per row, so more seeds may be added)."""
    from .. import __version__

    tr = setup.demo_transform
    return {
        "model": lm.name, "weights": model_fingerprint(lm), "dtype": str(lm.dtype).replace("torch.", ""),
        "dataset": setup.dataset.name, "classes": list(setup.dataset.labels),
        "data": {"train": _frame_hash(setup.dataset.train), "test": _frame_hash(setup.dataset.test)},
        "k_per_label": setup.k_per_label if isinstance(setup.k_per_label, int) else list(setup.k_per_label),
        "n_test": setup.n_test, "template": setup.template, "label_words": list(setup.words()),
        "order": setup.order, "demo_transform": getattr(tr, "__qualname__", repr(tr)) if tr else None,
        "plan": {"kind": plan.kind, "heads": [list(map(int, h)) for h in sorted(plan.heads)]},
        "version": __version__,
    }


def open_checkpoint(path: Path, identity: dict, warnings: list[str]) -> dict[tuple[int, int], dict]:
    """Read a checkpoint's finished rows, or start one with ``identity`` as its first line.

    A checkpoint of another run is refused (CheckpointMismatch, nothing is changed); a cut-off last
    line (the process was killed while writing it) is dropped with a warning and cut from the file.
    """
    header = {"iclviz_checkpoint": CHECKPOINT_FORMAT, "run": identity}
    check_regular_file(path, "the checkpoint")
    if not path.exists() or path.stat().st_size == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(header) + "\n")
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    if tail.strip():  # no newline after the last line: it was cut off while being written
        try:
            json.loads(tail)
            complete.append(tail)  # a whole record whose newline was lost
            with open(path, "ab") as f:
                f.write(b"\n")
        except ValueError:
            warnings.append(f"{path}: dropped a cut-off last line ({len(tail)} bytes); it will be computed again")
            with open(path, "r+b") as f:
                f.truncate(len(raw) - len(tail))
    try:
        first = json.loads(complete[0]) if complete else None
    except ValueError:
        first = None
    if not isinstance(first, dict) or "iclviz_checkpoint" not in first:
        raise CheckpointMismatch(f"{path} is not an iclviz checkpoint of this version (no header line); "
                                 "give another --checkpoint file or delete it")
    old = first.get("run", {})
    if old != identity:
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        detail = "; ".join(f"{k}: {_short(old.get(k))} in the file, {_short(identity.get(k))} now" for k in diff[:4])
        raise CheckpointMismatch(f"{path} belongs to another run ({detail}); resume with the same settings, "
                                 "or give another --checkpoint file")
    done: dict[tuple[int, int], dict] = {}
    for n, line in enumerate(complete[1:], start=2):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError:
            raise CheckpointMismatch(f"{path} line {n} is damaged; delete the checkpoint to start again") from None
        problem = checkpoint_row_problem(r, identity)
        if problem:
            raise CheckpointMismatch(f"{path} line {n}: {problem}; its rows are not trusted: delete that line (the "
                                     "prompt is computed again) or the checkpoint")
        done[(r["seed"], r["index"])] = r
    return done


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def checkpoint_row_problem(r, identity: dict) -> str | None:
    """Why a checkpoint row cannot be one of this run's rows (types, ranges, internal consistency), or None."""
    if not isinstance(r, dict):
        return "not a row object"
    words = list(identity.get("label_words") or [])
    k = len(words)
    n_test = identity.get("n_test")
    for key in ("seed", "index", "gold", "pred"):
        if not _is_int(r.get(key)):
            return f"{key!r} must be a whole number; got {_short(r.get(key))}"
    if r["seed"] < 0:
        return f"'seed' must be at least 0; got {r['seed']}"
    if not 0 <= r["index"] < (n_test if _is_int(n_test) else r["index"] + 1):
        return f"'index' must be from 0 to {n_test - 1}; got {r['index']}"
    for key in ("gold", "pred"):
        if not 0 <= r[key] < k:
            return f"{key!r} must be a label index from 0 to {k - 1}; got {r[key]}"
    if not isinstance(r.get("correct"), bool):
        return f"'correct' must be true or false; got {_short(r.get('correct'))}"
    if r["correct"] != (r["gold"] == r["pred"]):
        return f"'correct' is {json.dumps(r['correct'])} but gold {r['gold']} and pred {r['pred']} say otherwise"
    if not _is_number(r.get("margin")):
        return f"'margin' must be a finite number; got {_short(r.get('margin'))}"
    if (r["correct"] and r["margin"] < 0) or (not r["correct"] and r["margin"] > 0):
        return f"'margin' {r['margin']:g} contradicts 'correct' {json.dumps(r['correct'])}"
    probs = []
    for w in words:
        v = r.get(f"p_{w}")
        if not _is_number(v) or not 0.0 <= v <= 1.0:
            return f"'p_{w}' must be a probability from 0 to 1; got {_short(v)}"
        probs.append(v)
    if probs and probs[r["pred"]] < max(probs) - 1e-6:
        return f"'pred' {r['pred']} is not the most probable label word"
    plan = identity.get("plan") or {}
    if isinstance(plan, dict) and "kind" in plan:
        want = Plan(plan["kind"], tuple(map(tuple, plan.get("heads", [])))).label()
        if r.get("plan") != want:
            return f"'plan' is {_short(r.get('plan'))}, this run's is {want!r}"
    return None


def _short(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _rows(seed, idx, gold, res, words, plan_label) -> list[dict]:
    probs = res.label_probs
    logits = res.label_logits
    out = []
    for b, i in enumerate(idx):
        lg = logits[b]
        g = gold[b]
        other = torch.cat([lg[:g], lg[g + 1:]]).max()
        row = {"plan": plan_label, "seed": seed, "index": i, "gold": g, "pred": int(lg.argmax()),
               "correct": bool(int(lg.argmax()) == g), "margin": float(lg[g] - other)}
        row.update({f"p_{w}": float(probs[b, k]) for k, w in enumerate(words)})
        out.append(row)
    return out
