"""How far lower-precision vocabulary products move head importance (default model, SST-2 prompts).

Importance (the paper's formula, arXiv 2402.02872) needs a log-softmax over the whole vocabulary for every
head. On a GPU the products ``x @ W_U^T`` could run in TF32 (what ``lens.log_probs`` does for half-precision models) or
in bfloat16 at twice that rate. This script computes every head's importance on real prompts with the
products in float32 (the reference), then with each lower precision emulated on the CPU, and prints how far
the values move, per prompt and averaged over the prompts (Spearman and top-10 overlap of the deep half's
heads by gold-label importance). Never fails.

    python benchmarks/bench_importance_precision.py [--prompts 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import iclviz  # noqa: E402
from iclviz.data import sample_demonstrations, sample_test  # noqa: E402
from iclviz.engine.lens import normed  # noqa: E402


def tf32(t: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32's 10 mantissa bits (nearest)."""
    i = t.float().contiguous().view(torch.int32)
    return ((i + 0x1000) & ~0x1FFF).view(torch.float32)


PRODUCTS = {
    "float32": lambda x, w: x @ w.T,
    "TF32": lambda x, w: tf32(x) @ tf32(w).T,
    "bfloat16 in, float32 out": lambda x, w: x.bfloat16().float() @ w.bfloat16().float().T,
    "bfloat16 in and out": lambda x, w: (x.bfloat16() @ w.bfloat16().T).float(),
}


def importance(arch, cap, label_ids, products, chunk=16384):
    """Every head's importance with the log-normaliser's products computed by ``products``."""
    B, L, H, D = cap.head_out.shape
    r = cap.resid_in.float()[:, :, None, :]
    x = normed(arch, torch.cat([r, r + cap.head_out.float()], 2).reshape(B, L * (H + 1), D), cap.resid_final,
               "final_scale")
    w = arch.unembed_matrix().detach().float()
    lse = torch.cat([torch.logsumexp(products(x, w[s:s + chunk]), -1, keepdim=True)
                     for s in range(0, w.shape[0], chunk)], -1).logsumexp(-1)
    lp = (x @ w[label_ids].T - lse[..., None]).reshape(B, L, H + 1, -1)  # the label words' own logits in float32
    return lp[:, :, 1:] - lp[:, :, :1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    args = ap.parse_args()
    lm = iclviz.load_model()
    sst2 = iclviz.load_dataset("sst2")
    words = ("foo", "bar")
    tests = sample_test(sst2, args.prompts, seed=3)
    prompts = [lm.prompt([(t, words[y]) for t, y in sample_demonstrations(sst2.short_demonstrations(80), 2, seed=i)],
                         text, label_words=words) for i, (text, _) in enumerate(tests)]
    cap = lm.run(prompts).capture
    label_ids = prompts[0].label_token_id_list()
    gold = torch.tensor([y for _, y in tests])
    ref = importance(lm.arch, cap, label_ids, PRODUCTS["float32"])
    L, H = ref.shape[1], ref.shape[2]
    deep = list(range(L // 2, L))

    def gold_mean(t):
        return t.gather(-1, gold.view(-1, 1, 1, 1).expand(-1, L, H, 1))[..., 0].mean(0)[deep].flatten()

    print(f"{lm.name}, {len(tests)} SST-2 prompts, 2+2 demonstrations; median |importance| "
          f"{ref.abs().median():.4f}, largest {ref.abs().max():.3f}")
    for name, products in PRODUCTS.items():
        if name == "float32":
            continue
        imp = importance(lm.arch, cap, label_ids, products)
        d = (imp - ref).abs()
        a, b = gold_mean(imp), gold_mean(ref)
        top = len(set(a.topk(10).indices.tolist()) & set(b.topk(10).indices.tolist()))
        print(f"{name}: one prompt's head importance moves by at most {d.max():.4f} (median {d.median():.5f}); "
              f"averaged over the prompts: Spearman {spearmanr(a.numpy(), b.numpy()).statistic:.4f}, "
              f"top-10 overlap {top}/10, at most {(a - b).abs().max():.4f}")


if __name__ == "__main__":
    main()
