"""Causal-scan benchmark: prints times and ratios, never fails.

The causal scan (every head of the deep half, each alone, its label attention from T knocked
out: rows of single-token batches over each prompt's cache, layers below a row's first edit run
once) against

1. the one-pass logit-lens importance for all heads (``locate_heads``), and
2. the naive scan: one evaluation pass over the prompts per head (the same knockout through
   ``evaluate``, demonstrations shared through the KV cache as usual), timed on
   ``--naive-heads`` heads and extrapolated to all of them.

    python benchmarks/bench_causal.py [--model default] [--prompts 32] [--naive-heads 6]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iclviz.analyses.causal import causal_scan  # noqa: E402
from iclviz.analyses.evaluation import EvalSetup, evaluate  # noqa: E402
from iclviz.analyses.heads import default_layers  # noqa: E402
from iclviz.analyses.locate import locate_heads  # noqa: E402
from iclviz.data import load_dataset  # noqa: E402
from iclviz.engine.interventions import Plan  # noqa: E402
from iclviz.engine.models import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--naive-heads", type=int, default=6)
    args = ap.parse_args()
    lm = load_model(args.model)
    layers = default_layers(lm.n_layers)
    n_heads = len(layers) * lm.n_heads
    setup = EvalSetup(load_dataset("sst2").short_demonstrations(300), k_per_label=4, n_test=args.prompts, seeds=(0,))
    print(f"{lm.describe()}; {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"{args.prompts} SST-2 prompts (4+4 demonstrations), {n_heads} heads (layers {layers[0]}-{layers[-1]})")

    t = time.perf_counter()
    locate_heads(lm, setup, layers=layers)
    t_imp = time.perf_counter() - t
    t = time.perf_counter()
    scan = causal_scan(lm, setup, layers=layers, kinds=("knockout",))
    t_scan = time.perf_counter() - t
    heads = [(layer, h) for layer in layers for h in range(lm.n_heads)][::max(1, n_heads // args.naive_heads)]
    heads = heads[:args.naive_heads]
    t = time.perf_counter()
    base = evaluate(lm, setup)
    naive = {}
    for h in heads:
        naive[h] = evaluate(lm, setup, Plan("knockout", (h,)))
    t_naive_some = time.perf_counter() - t
    t_naive = t_naive_some / (len(heads) + 1) * (n_heads + 1)
    # the scan's effects are the naive ones (the same interventions, batched)
    worst = 0.0
    for h, res in naive.items():
        want = float((base.rows["margin"] - res.rows["margin"]).mean())
        got = scan.table[(scan.table.layer == h[0]) & (scan.table["head"] == h[1])].effect.iloc[0]
        worst = max(worst, abs(got - want))
    print(f"{'importance, all heads (one pass per prompt batch)':58s} {t_imp:8.1f} s")
    print(f"{'causal scan, all heads (batched rows)':58s} {t_scan:8.1f} s   {t_scan / t_imp:5.1f}x importance")
    print(f"{'naive scan, one evaluation per head (extrapolated from ' + str(len(heads)) + ')':58s} {t_naive:8.1f} s"
          f"   {t_naive / t_scan:5.1f}x the causal scan")
    print(f"largest difference between the scan's and the naive per-head margin effect: {worst:.2e} logits")


if __name__ == "__main__":
    main()
