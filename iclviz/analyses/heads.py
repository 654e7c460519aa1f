"""Locating in-context heads: per-head importance from one pass (the paper's formula, arXiv 2402.02872).

``Imp(l,h; w) = log p(w | r[l,T] + o[l,h,T]) - log p(w | r[l,T])`` with
``p(.|x) = softmax(W_U . lens(x))``; the lens is a setting (see ``lens.py``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ..engine.capture import Capture
from ..engine.lens import DEFAULT_SCALING, importance_of


def default_layers(n_layers: int) -> list[int]:
    """The deep half of the model, where the paper looks for in-context heads."""
    return list(range(n_layers // 2, n_layers))


def head_importance(arch, capture: Capture, label_token_ids: list[int], scaling: str = DEFAULT_SCALING,
                    layers: list[int] | None = None) -> torch.Tensor:
    """[B, L, H, n_labels] log-probability increase of each label word by each head (NaN outside ``layers``).

    Returns the importance the run computed on the model's device when it was asked for with
    the same label words, scaling and layers (``LoadedModel.run(..., importance=...)``); otherwise
    computes it from the captured records.
    """
    pre = capture.importance
    if pre is not None and pre.label_token_ids == tuple(label_token_ids) and pre.scaling == scaling:
        wanted = set(range(pre.values.shape[1]) if layers is None else layers)
        if wanted <= set(pre.layers):
            keep = torch.zeros(pre.values.shape[1], dtype=torch.bool)
            keep[sorted(wanted)] = True
            return pre.values.masked_fill(~keep[None, :, None, None], float("nan"))
    return importance_of(arch, capture.resid_in, capture.head_out, capture.resid_final, label_token_ids, scaling,
                         layers).cpu()


@dataclass
class HeadScan:
    """Per-head importance averaged over a dataset sample."""

    table: pd.DataFrame  # layer, head, label, importance (mean over prompts whose gold is label), n
    overall: pd.DataFrame  # layer, head, importance (mean of gold-label importance), favours
    n_layers: int
    n_heads: int
    label_words: tuple[str, ...]
    scaling: str
    layers: list[int]
    n_prompts: int

    def matrix(self, label: str | None = None) -> pd.DataFrame:
        """layer x head table of importance (overall, or for one label)."""
        if label is None:
            df = self.overall
        else:
            df = self.table[self.table["label"] == label]
        return df.pivot(index="layer", columns="head", values="importance").reindex(range(self.n_layers))

    def top(self, n: int | None = None) -> list[tuple[int, int]]:
        n = default_top_n(self.n_layers * self.n_heads) if n is None else n
        df = self.overall.dropna(subset=["importance"]).sort_values("importance", ascending=False)
        return [(int(r.layer), int(r.head)) for r in df.head(n).itertuples()]

    def top_by_label(self, n: int | None = None) -> dict[str, list[tuple[int, int]]]:
        """The top heads split by the label they raise most."""
        top = set(self.top(n))
        df = self.overall[[(int(a), int(b)) in top for a, b in zip(self.overall["layer"], self.overall["head"])]]
        return {w: [(int(r.layer), int(r.head)) for r in df[df.favours == w].sort_values(
            "importance", ascending=False).itertuples()] for w in self.label_words}


def default_top_n(n_total_heads: int) -> int:
    """About 1% of all heads, at least 2."""
    return max(2, round(0.01 * n_total_heads))


def summarize_importance(importance: torch.Tensor, gold: list[int], label_words, scaling: str, layers) -> HeadScan:
    """Average [N, L, H, n_labels] importance into a HeadScan (gold-label means)."""
    N, L, H, K = importance.shape
    gold_t = torch.tensor(gold)
    rows = []
    per_label = torch.full((L, H, K), float("nan"))
    for k, w in enumerate(label_words):
        sel = gold_t == k
        if sel.any():
            per_label[..., k] = importance[sel, ..., k].mean(0)
        for layer in range(L):
            for head in range(H):
                rows.append((layer, head, w, float(per_label[layer, head, k]), int(sel.sum())))
    table = pd.DataFrame(rows, columns=["layer", "head", "label", "importance", "n"])
    gold_imp = importance.gather(-1, gold_t.view(N, 1, 1, 1).expand(N, L, H, 1))[..., 0]
    overall = gold_imp.mean(0)
    favours = per_label.nan_to_num(float("-inf")).argmax(-1)
    orows = [(layer, head, float(overall[layer, head]), label_words[int(favours[layer, head])])
             for layer in range(L) for head in range(H)]
    return HeadScan(table, pd.DataFrame(orows, columns=["layer", "head", "importance", "favours"]), L, H,
                    tuple(label_words), scaling, list(layers), N)


def random_heads(n: int, layers, n_heads: int, seed: int, exclude=()) -> list[tuple[int, int]]:
    """``n`` random heads from ``layers`` (the control for any head set)."""
    pool = [(layer, h) for layer in layers for h in range(n_heads) if (layer, h) not in set(exclude)]
    return sorted(random.Random(seed).sample(pool, min(n, len(pool))))


def layers_of(heads) -> list[int]:
    return sorted({layer for layer, _ in heads})


# ---------------------------------------------------------------- heads located by the report

LOCATED_HEADS_FILE = Path(__file__).parents[1] / "located_heads.json"
HEAD_RULES = {
    "importance": "logit-lens importance (the paper's attribution, one pass)",
    "causal": "causal effect (each head's label attention from T knocked out alone, per label: label voters "
              "rank first)",
    "context": "in-context effect (each head's label attention from T knocked out alone: the part of its effect "
               "that helps whichever label is gold, on location prompts the tests never see)",
}


def model_key(model_name: str) -> str:
    """A model's short name, as the report records it ('Qwen2.5-Coder-0.5B-Instruct'); an offline
    model's ``--model`` name ('default', 'qwen2.5-coder-1.5b') gives the same key as its label."""
    from ..engine.offline import OFFLINE_MODELS

    spec = OFFLINE_MODELS.get(str(model_name).strip().lower())
    return (spec.label if spec is not None else str(model_name)).split(" (")[0]


def located_heads(model_name: str, rule: str = "importance", dataset: str = "sst2", path: Path | None = None
                  ) -> dict | None:
    """The heads ``python -m iclviz report`` located on a model, by ``rule``, with how they were found:
    ``{"heads": [(l, h), ...], "n_prompts": ..., "dataset": ..., "rule": ..., "seed": ...}`` or None."""
    return _entry(_read_located(path), model_name, rule, dataset)


def _read_located(path: Path | None) -> dict:
    try:
        return json.loads(Path(path or LOCATED_HEADS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _entry(data: dict, model_name: str, rule: str, dataset: str) -> dict | None:
    entry = data.get(model_key(model_name), {}).get(dataset, {}).get(rule)
    if not entry:
        return None
    return dict(entry, heads=[(int(a), int(b)) for a, b in entry["heads"]], dataset=dataset, rule=rule)


def located_on_other_datasets(model_name: str, rule: str, first: str = "sst2", path: Path | None = None
                              ) -> list[dict]:
    """The heads the report located by ``rule`` on the model's other datasets than ``first``, each with the first
    clause of its fresh-prompt verdict (``verdict_short``: on all fresh prompts together where the report read
    them so, else on the first confirmation), datasets in alphabetical order."""
    data = _read_located(path)
    out = []
    for dataset in sorted(data.get(model_key(model_name), {})):
        found = _entry(data, model_name, rule, dataset) if dataset != first else None
        if found:
            verdict = found.get("verdict_all_fresh") or found.get("verdict", "")
            n = found.get("n_all_fresh") or found.get("test", {}).get("n_prompts")
            found["verdict_short"] = str(verdict).split(";")[0].split(":")[0] + (f", {n} prompts" if n else "")
            out.append(found)
    return out


def record_located_heads(model_name: str, dataset: str, entries: dict, path: Path | None = None) -> None:
    """Add a model's located heads (per rule) to the file the app reads its default heads from."""
    path = path or LOCATED_HEADS_FILE
    data = _read_located(path)
    data.setdefault(model_key(model_name), {})[dataset] = entries
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- head sets for the app and the CLI

APP_HEAD_RULE = "context"  # the rule the app's in-context heads come from until a user picks others (Head finder)


def default_heads(model_name: str, n_layers: int, n_heads: int, rule: str = "importance") -> list[tuple[int, int]]:
    """A head set before any scan: the heads the report located on this model by ``rule`` (on its
    SST-2 location sample; :func:`located_heads`), else the first heads of the last layer(s)
    (``default_top_n`` of them: about 1% of all heads, at least 2)."""
    found = located_heads(model_name, rule)
    if found and all(0 <= a < n_layers and 0 <= b < n_heads for a, b in found["heads"]):
        return list(found["heads"])
    n = default_top_n(n_layers * n_heads)
    out = []
    layer = n_layers - 1
    while len(out) < n and layer >= 0:
        for h in range(n_heads):
            if len(out) < n:
                out.append((layer, h))
        layer -= 1
    return out


def default_voters(model_name: str, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """The label voters the report listed beside the context rule's heads on this model (the heads with the
    largest constant vote for one label), or none."""
    found = located_heads(model_name, "context")
    voters = [(int(a), int(b)) for a, b in (found or {}).get("voters", [])]
    return [h for h in voters if 0 <= h[0] < n_layers and 0 <= h[1] < n_heads]


def valid_heads(heads, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """The heads of ``heads`` that exist in a model of ``n_layers`` x ``n_heads``, as int pairs."""
    return [(int(a), int(b)) for a, b in heads if 0 <= int(a) < n_layers and 0 <= int(b) < n_heads]


def control_heads(heads, n_layers: int, n_heads: int, seed: int = 0) -> list[tuple[int, int]]:
    """As many random heads as ``heads``, from the same layers, none of ``heads`` (the control)."""
    heads = [tuple(h) for h in heads]
    layers = layers_of(heads) or [n_layers - 1]
    if len(layers) * n_heads - len(set(heads)) < len(heads):  # widen to all layers when these are nearly full
        layers = list(range(n_layers))
    return random_heads(len(heads), layers, n_heads, seed, exclude=heads)
