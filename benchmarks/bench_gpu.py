"""GPU benchmark at the paper's scale: iclviz's readouts against the model's own forward pass.

Random weights of Llama-2-7B's and Qwen2.5-7B's shapes (no download), bfloat16, on one CUDA
device. For each shape and batch (1 x 250, 8 x 250 and 1 x 2000 tokens; 16 label positions per
250 tokens, 128 at 2000) it prints, as ratios to a plain ``model(input_ids, logits_to_keep=1)``
measured in the same run, and with the peak GPU memory of each:

- capture without value vectors;
- capture with the label readouts (every head's value vectors at the label positions, as
  label-word logits) and every head's importance, computed on the device (what the app shows);
- the usual way: eager attention with ``output_attentions=True``.

Goals: the second column at most 1.3x the plain pass at 1 x 250 and 8 x 250, never
slower than eager + ``output_attentions``, peak memory at most the plain pass's + 10%.

    python benchmarks/bench_gpu.py                 # needs CUDA; says so and exits 0 without it
    python benchmarks/bench_gpu.py --smoke         # a tiny shape on the CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iclviz.analyses.heads import head_importance  # noqa: E402
from iclviz.engine.capture import instrument
from iclviz.engine.lens import vocab_chunk_rows  # noqa: E402
from iclviz.engine.runs import run_ids  # noqa: E402

SHAPES = {
    "Llama-2-7B": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                 max_position_embeddings=4096)),
    "Qwen2.5-7B": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                 num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                 max_position_embeddings=32768)),
}
SMOKE = {"tiny-llama": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=32,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                                      max_position_embeddings=4096))}
RUNS = [(1, 250, 16), (8, 250, 16), (1, 2000, 128)]  # batch, tokens, label positions
LABEL_IDS = [11, 17]


def build(kind: str, cfg: dict, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config = (LlamaConfig if kind == "llama" else Qwen2Config)(**cfg)
    with torch.device(device):
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = (LlamaForCausalLM if kind == "llama" else Qwen2ForCausalLM)(config)
        finally:
            torch.set_default_dtype(old)
    return model.eval()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn, device, repeats):
    """(median seconds, peak bytes above the memory in use before)."""
    fn()
    sync(device)
    times, peak = [], 0
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
        if device == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
    return statistics.median(times), peak


class _KernelCount(TorchDispatchMode):
    """Counts the operators that launch work (views and metadata-only operators left out)."""

    VIEWS = {"view", "_unsafe_view", "reshape", "select", "slice", "expand", "transpose", "permute", "unsqueeze",
             "squeeze", "t", "alias", "detach", "as_strided", "split", "split_with_sizes", "chunk", "unbind",
             "lift_fresh"}

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in self.VIEWS:
            self.n += 1
        return func(*args, **(kwargs or {}))


def kernels_per_layer(fn, n_layers: int) -> float:
    """Operators that launch work in one call of ``fn``, per layer: on a GPU at batch 1 each is a kernel
    launch, and their count (not the arithmetic) is what a small batch waits for."""
    with _KernelCount() as count:
        fn()
    return count.n / n_layers


def bench(name, kind, cfg, device, dtype, repeats, runs):
    model = build(kind, cfg, device, dtype)
    instrument(model)
    vocab = cfg["vocab_size"]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"\n{name}: {cfg['num_hidden_layers']} layers x {cfg['num_attention_heads']} heads "
          f"({cfg['num_key_value_heads']} key-value heads), {str(dtype).replace('torch.', '')}, "
          f"weights {weights / 2**30:.1f} GiB")
    print("| batch x tokens | plain pass | capture, no value vectors | capture + label readouts + all-head "
          "importance | eager + output_attentions |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for batch, tokens, n_labels in runs:
        ids = torch.randint(100, vocab, (batch, tokens), generator=g)
        print(one_row(model, ids, n_labels, device, repeats), flush=True)
    print(importance_arithmetic(cfg, weights / dtype.itemsize, runs))
    print(vocabulary_products(model, device, repeats))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def importance_arithmetic(cfg: dict, n_params: float, runs) -> str:
    """The floor the importance sets, from arithmetic alone: every head's importance needs a log-softmax
    over the whole vocabulary for L x (H + 1) vectors per prompt (``heads.importance_of``), against about
    2 x parameters multiply-adds per token for the forward pass."""
    L, H, D, V = (cfg[k] for k in ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size"))
    imp = 2 * L * (H + 1) * D * V  # per prompt
    parts = []
    for batch, tokens, _ in runs:
        fwd = 2 * n_params * tokens
        parts.append(f"{batch} x {tokens}: {imp / fwd:.1%}")
    return (f"importance arithmetic per prompt: {imp / 1e9:.0f} GFLOP, as a share of the forward pass's "
            f"({', '.join(parts)}); at equal throughput that share is the least the importance adds")


def vocabulary_products(model, device: str, repeats: int) -> str:
    """One prompt's importance products, ``[L x (H + 1), D] @ W_U^T``, timed alone: float32 inputs with
    TF32 (what ``lens.log_probs`` does on a half-precision model) against the model's dtype in with
    float32 out (``torch.mm(..., out_dtype=torch.float32)``, CUDA only), which keeps the logits in
    float32 at the half-precision rate."""
    cfg = model.config
    w = model.get_output_embeddings().weight.detach()
    rows = cfg.num_hidden_layers * (cfg.num_attention_heads + 1)
    x = torch.randn(rows, w.shape[1], device=w.device)
    chunk = vocab_chunk_rows(w.shape[1], rows)  # as lens.log_probs chunks it

    def tf32():
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = device == "cuda"
        try:
            for start in range(0, w.shape[0], chunk):
                torch.logsumexp(x @ w[start:start + chunk].float().T, -1)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    def half_in_float_out():
        xh = x.to(w.dtype)
        for start in range(0, w.shape[0], chunk):
            torch.logsumexp(torch.mm(xh, w[start:start + chunk].T, out_dtype=torch.float32), -1)

    t_tf32, _ = measure(tf32, device, repeats)
    try:
        t_half, _ = measure(half_in_float_out, device, repeats)
        half = f"{t_half * 1000:.1f} ms"
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        half = f"not available here ({type(exc).__name__})"
    return (f"importance products alone, one prompt ({rows} rows x {w.shape[0]} words): float32/TF32 "
            f"{t_tf32 * 1000:.1f} ms; {str(w.dtype).replace('torch.', '')} in, float32 out: {half}")


def one_row(model, ids: torch.Tensor, n_labels: int, device: str, repeats: int) -> str:
    batch, tokens = ids.shape
    step = tokens // (n_labels + 1)
    labels = [list(range(step, step * (n_labels + 1), step))[:n_labels]] * batch
    x = ids.to(device)

    def plain():
        with torch.no_grad():
            model(input_ids=x, use_cache=False, logits_to_keep=1)

    def capture():
        run_ids(model, ids.tolist(), LABEL_IDS, value_positions=None)

    def readouts():
        res = run_ids(model, ids.tolist(), LABEL_IDS, value_positions=labels, value_heads=None,
                      importance="final_scale")
        head_importance(model._iclviz_arch, res.capture, LABEL_IDS)  # served from the run

    def eager():
        with torch.no_grad():
            model(input_ids=x, use_cache=False, logits_to_keep=1, output_attentions=True)

    L = model.config.num_hidden_layers
    model.set_attn_implementation("sdpa")
    t_plain, m_plain = measure(plain, device, repeats)
    k_plain = kernels_per_layer(plain, L)
    model.set_attn_implementation("iclviz")
    t_cap, m_cap = measure(capture, device, repeats)
    k_cap = kernels_per_layer(capture, L)
    t_read, m_read = measure(readouts, device, repeats)
    k_read = kernels_per_layer(readouts, L)
    model.set_attn_implementation("eager")
    try:
        t_eager, m_eager = measure(eager, device, repeats)
        k_eager = kernels_per_layer(eager, L)
    except torch.OutOfMemoryError:
        t_eager, m_eager, k_eager = float("nan"), float("nan"), float("nan")
        torch.cuda.empty_cache()
    finally:
        model.set_attn_implementation("iclviz")

    def cell(t, m, k):
        mem = f", peak +{m / 2**30:.2f} GiB" if device == "cuda" and m == m else ""
        return f"{t / t_plain:.2f}x ({t * 1000:.0f} ms{mem}, {k:.0f} ops/layer)"

    plain_mem = f", peak +{m_plain / 2**30:.2f} GiB" if device == "cuda" else ""
    return (f"| {batch} x {tokens} ({n_labels} label positions) | {t_plain * 1000:.0f} ms{plain_mem}, "
            f"{k_plain:.0f} ops/layer | {cell(t_cap, m_cap, k_cap)} | {cell(t_read, m_read, k_read)} | "
            f"{cell(t_eager, m_eager, k_eager)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU (checks the script runs)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    args = ap.parse_args()
    if args.smoke:
        for name, (kind, cfg) in SMOKE.items():
            for dtype in (torch.float32, torch.bfloat16):
                bench(name, kind, cfg, "cpu", dtype, args.repeats, [(1, 250, 16), (2, 250, 16)])
        return 0
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured (run it where a GPU is, or --smoke on the CPU)")
        return 0
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for name in args.shapes:
        kind, cfg = SHAPES[name]
        bench(name, kind, cfg, "cuda", torch.bfloat16, args.repeats, RUNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
