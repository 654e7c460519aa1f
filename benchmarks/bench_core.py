"""Core benchmark: prints ratios, never fails.

1. The instrumented pass (capture of every head) vs a plain ``model(**inputs)`` pass on the
   same prompts (goal: at most 1.3x).
2. Per-head importance for all heads from one instrumented pass vs scanning heads by
   ablation, one forward pass per head (timed on a subset of heads, extrapolated).
3. Evaluating a dataset sample with the shared demonstrations computed once (KV cache)
   vs one left-padded batch.

    python benchmarks/bench_core.py [--model default] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iclviz.analyses.evaluation import EvalSetup, evaluate  # noqa: E402
from iclviz.analyses.heads import head_importance  # noqa: E402
from iclviz.data import load_dataset  # noqa: E402
from iclviz.engine.interventions import ablate  # noqa: E402
from iclviz.engine.models import load_model  # noqa: E402


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scan-heads", type=int, default=28, help="heads timed in the ablation scan")
    args = ap.parse_args()
    lm = load_model(args.model)
    print(f"model: {lm.describe()}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    setup = EvalSetup(load_dataset("sst2"), k_per_label=4, n_test=8, seeds=(0,))
    prompts, _ = setup.prompts(lm, 0)
    p = prompts[0]
    ids = torch.tensor([p.input_ids])
    print(f"prompt: {p.n_tokens} tokens (4+4 SST-2 demonstrations, review template)")

    def plain():
        with torch.no_grad():
            lm.model(input_ids=ids)

    def plain_at_t():
        with torch.no_grad():
            lm.model(input_ids=ids, logits_to_keep=1)

    def instrumented():
        lm.run([p], capture=True)

    def no_capture():
        lm.run([p], capture=False)

    for f in (plain, instrumented):  # warm up
        f()
    t_plain = timed(plain, args.repeats)
    t_plain_t = timed(plain_at_t, args.repeats)
    t_inst = timed(instrumented, args.repeats)
    t_run = timed(no_capture, args.repeats)
    print(f"1. plain model(**inputs): {t_plain * 1000:.0f} ms; plain with logits at T only: {t_plain_t * 1000:.0f} ms; "
          f"instrumented pass (all heads captured, label readouts): {t_inst * 1000:.0f} ms; ratio "
          f"{t_inst / t_plain:.2f}x against the first, {t_inst / t_plain_t:.2f}x against the second (goal <= 1.3x); "
          f"uninstrumented run through iclviz: {t_run * 1000:.0f} ms")

    def importance_one_pass():
        res = lm.run([p], capture=True, value_positions=None, importance=("final_scale", range(lm.n_layers)))
        head_importance(lm.arch, res.capture, p.label_token_id_list(), layers=range(lm.n_layers))

    t_imp = timed(importance_one_pass, max(1, args.repeats // 2))
    heads = [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]
    subset = heads[:: max(1, len(heads) // args.scan_heads)][: args.scan_heads]
    t0 = time.perf_counter()
    for h in subset:
        lm.run([p], interventions=ablate([h]), capture=False)
    per_head = (time.perf_counter() - t0) / len(subset)
    t_scan = per_head * len(heads)
    print(f"2. importance of all {len(heads)} heads from one pass: {t_imp:.2f} s; ablation scan, one pass per "
          f"head: {per_head * 1000:.0f} ms/head x {len(heads)} = {t_scan:.1f} s (timed on {len(subset)} heads); "
          f"ratio {t_scan / t_imp:.0f}x faster")

    setup16 = EvalSetup(setup.dataset, k_per_label=4, n_test=16, seeds=(0,))
    lm.reuse_prefix = False
    t_batch = timed(lambda: evaluate(lm, setup16, batch_size=8), 1)
    lm.reuse_prefix = True
    t_prefix = timed(lambda: evaluate(lm, setup16, batch_size=8), 1)
    print(f"3. 16 SST-2 prompts: padded batches of 8 {t_batch:.1f} s; shared demonstrations computed once "
          f"{t_prefix:.1f} s; ratio {t_batch / t_prefix:.2f}x")
    long_prompt(lm, setup.dataset)


def long_prompt(lm, dataset) -> None:
    """4. A ~2000-token prompt (64+ demonstrations): capture with label readouts vs the plain pass, time and the
    capture's size (O(L x H x T): rows from T, never T x T)."""
    k = 32
    while True:
        prompts, _ = EvalSetup(dataset, k_per_label=k, n_test=2, seeds=(0,)).prompts(lm, 0)
        if prompts[0].n_tokens >= 2000 or k >= 256:
            break
        k *= 2
    p = prompts[0]
    ids = torch.tensor([p.input_ids])

    def plain():
        with torch.no_grad():
            lm.model(input_ids=ids, logits_to_keep=1)

    t_plain = timed(plain, 2)
    t_cap = timed(lambda: lm.run([p], capture=True), 2)
    cap = lm.run([p], capture=True).capture
    size = sum(t.numel() * t.element_size() for t in (cap.attn, cap.scores, cap.head_out, cap.resid_in,
                                                       cap.attn_block_out, cap.value_label_logits))
    print(f"4. {p.n_tokens}-token prompt ({len(p.label_positions)} demonstrations): plain pass (logits at T) "
          f"{t_plain:.1f} s; capture with label readouts {t_cap:.1f} s, ratio {t_cap / t_plain:.2f}x; the capture "
          f"holds {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
