"""GPU check (run where a CUDA device exists): identities and overhead on the GPU.

1. On tiny random models of each architecture, on CUDA in float32: captured attention equals
   ``output_attentions``, ablation equals zeroing W_O columns, the shared-prefix path equals the
   padded batch. Prints the largest relative differences (and in bfloat16, for information).
2. Instrumented vs plain pass on a randomly initialised model with Qwen2.5-0.5B's shape (no
   download), float32 and bfloat16, ~250-token prompts, batch 8.

    python benchmarks/gpu_check.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iclviz.engine import interventions as iv  # noqa: E402
from iclviz.engine.architecture import UnsupportedArchitecture  # noqa: E402
from iclviz.engine.capture import instrument, pad_batch
from iclviz.engine.runs import run_ids, run_ids_shared_prefix  # noqa: E402
from iclviz.testing import ARCHITECTURES, build_tiny_model  # noqa: E402


def rel(a, b):
    return float((a.float() - b.float()).abs().max() / max(1.0, float(b.float().abs().max())))


def identities(dtype):
    worst = {}
    for arch in ARCHITECTURES:
        model = build_tiny_model(arch).to("cuda", dtype)
        try:
            instrument(model)
        except UnsupportedArchitecture as exc:  # older transformers: GPT-J had no attention registry
            print(f"  {arch:9s} {str(dtype):15s} refused with a message: {exc}")
            continue
        g = torch.Generator().manual_seed(0)
        ids = [torch.randint(1, 400, (n,), generator=g).tolist() for n in (23, 17, 30)]
        res = run_ids(model, ids, [5, 7])
        x, m, pos, _ = pad_batch(ids, 0, "cuda")
        model.set_attn_implementation("eager")
        with torch.no_grad():
            ref = model(input_ids=x, attention_mask=m, position_ids=pos, output_attentions=True)
        model.set_attn_implementation("iclviz")
        want = torch.stack([a[:, :, -1, :] for a in ref.attentions], 1).cpu()
        d_attn = rel(res.capture.attn, want)
        d_logits = rel(res.logits, ref.logits[:, -1].cpu())
        prefix = ids[0][:15]
        pids = [prefix + p[:5] for p in ids]
        a = run_ids(model, pids, [5, 7], interventions=iv.ablate([(1, 1)]), value_positions=[[3, 9]] * 3)
        b = run_ids_shared_prefix(model, pids, [5, 7], 15, interventions=iv.ablate([(1, 1)]),
                                  value_positions=[[3, 9]] * 3)
        d_prefix = max(rel(b.logits, a.logits), rel(b.capture.attn, a.capture.attn))
        worst[arch] = (d_attn, d_logits, d_prefix)
        print(f"  {arch:9s} {str(dtype):15s} attn {d_attn:.1e}  logits {d_logits:.1e}  shared-prefix {d_prefix:.1e}")
    return worst


def overhead(dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                      tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg).to("cuda", dtype).eval()
    instrument(model)
    ids = [torch.randint(0, 150000, (250,)).tolist() for _ in range(8)]
    x = torch.tensor(ids, device="cuda")

    def plain():
        with torch.no_grad():
            model(input_ids=x)
        torch.cuda.synchronize()

    def inst():
        run_ids(model, ids, [5, 7], value_positions=[[10, 50, 90, 130, 170, 210, 230, 240]] * 8)
        torch.cuda.synchronize()

    def uninstrumented():  # through iclviz, no capture: padding, positions, logits at T only
        run_ids(model, ids, [5, 7], capture=False)
        torch.cuda.synchronize()

    def no_values():
        run_ids(model, ids, [5, 7])
        torch.cuda.synchronize()

    for f in (plain, inst, uninstrumented, no_values):
        f()
    tp = statistics.median([_t(plain) for _ in range(10)])
    ti = statistics.median([_t(inst) for _ in range(10)])
    tu = statistics.median([_t(uninstrumented) for _ in range(10)])
    tn = statistics.median([_t(no_values) for _ in range(10)])
    print(f"  Qwen2.5-0.5B shape, {dtype}, batch 8 x 250 tokens: plain {tp * 1000:.1f} ms, instrumented "
          f"{ti * 1000:.1f} ms, ratio {ti / tp:.2f}x (iclviz without capture {tu * 1000:.1f} ms, capture without "
          f"value vectors {tn * 1000:.1f} ms)")


def _t(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


if __name__ == "__main__":
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    for dt in (torch.float32, torch.bfloat16):
        identities(dt)
    for dt in (torch.float32, torch.bfloat16):
        overhead(dt)
