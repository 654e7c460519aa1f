"""Memory of the Attention page's matrices: from the instrumented model itself vs a deep copy (the old way).

Prints the resident memory (RSS) the process gains for each, on the default model and a real prompt.

    python benchmarks/bench_attention_memory.py
"""

from __future__ import annotations

import copy
import gc
import sys
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iclviz.analyses.evaluation import EvalSetup  # noqa: E402
from iclviz.data import load_dataset  # noqa: E402
from iclviz.engine.attention_matrix import full_attention  # noqa: E402
from iclviz.engine.models import load_model  # noqa: E402


def rss() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**30


def main():
    lm = load_model("default")
    prompts, _ = EvalSetup(load_dataset("sst2"), k_per_label=8, n_test=2, seeds=(0,)).prompts(lm, 0)
    p = prompts[0]
    layers = [20, 21, 22, 23]
    print(f"model: {lm.describe()}; prompt: {p.n_tokens} tokens; layers {layers}, every head")
    full_attention(lm, p, layers)  # warm up
    base = rss()
    t = time.perf_counter()
    att = full_attention(lm, p, layers)
    took = time.perf_counter() - t
    kept = sum(a.numel() * a.element_size() for a in att.values()) / 2**20
    print(f"instrumented model, no copy: +{rss() - base:.2f} GiB resident, {took:.2f} s, matrices kept {kept:.1f} MiB")
    base = rss()
    t = time.perf_counter()
    eager = copy.deepcopy(lm.model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        eager(input_ids=torch.tensor([p.input_ids]), output_attentions=True)
    took = time.perf_counter() - t
    print(f"deep copy + eager output_attentions (the old way): +{rss() - base:.2f} GiB resident, {took:.2f} s")


if __name__ == "__main__":
    main()
