"""The command line's arguments: limits, argument types, validation before and after the model loads, and the
option groups several subcommands share."""

from __future__ import annotations

import argparse

from ..prompt import DEFAULT_TEMPLATE, TEMPLATES
from ..validation import (
    DEVICES,
    ValidationError,
    check_device,
    check_file_target,
    check_heads,
    check_layers,
    check_output_dir,
    check_text,
    int_type,
    parse_heads,
)

MAX_TOKENS = 4096  # longest prompt the CLI runs unless --max-tokens says otherwise
MAX_SECONDS = 60.0  # longest estimated forward pass of one prompt on a CPU unless --max-seconds says otherwise


# a rough CPU rate (float32) for the estimate, on the high side of the time: the default model's pass over 1,021
# and 2,021 tokens took 18 s and 35 s on 2 cores shared with other work (estimated: 29 s and 58 s)
CPU_FLOPS = 5e10



def pass_seconds(lm, n_tokens: int) -> float:
    """A rough estimate of one forward pass over ``n_tokens`` tokens on a CPU: the weights' products
    (2 x parameters per token) plus attention (4 x layers x width per pair of tokens)."""
    n_params = sum(t.numel() for t in lm.model.parameters())
    width = int(getattr(lm.model.config, "hidden_size", 0) or getattr(lm.model.config, "n_embd", 0) or 0)
    flops = 2.0 * n_params * n_tokens + 4.0 * lm.n_layers * width * n_tokens * n_tokens
    return flops / CPU_FLOPS



def check_prompt_tokens(prompts, limit: int, lm=None, max_seconds: float | None = None) -> None:
    """Refuse, before the forward pass, a prompt longer than ``limit`` tokens (saying how long it is), and on a
    CPU a prompt whose pass is estimated to take more than ``max_seconds`` (saying the estimate)."""
    longest = max((p.n_tokens for p in prompts), default=0)
    if longest > limit:
        raise ValidationError(f"a prompt is {longest:,} tokens; --max-tokens is {limit:,} (raise it if you mean it)")
    if lm is not None and max_seconds is not None and getattr(lm.device, "type", str(lm.device)) == "cpu":
        est = pass_seconds(lm, longest)
        if est > max_seconds:
            raise ValidationError(f"a prompt is {longest:,} tokens: one pass would take about {est:,.0f} s on this "
                                  f"CPU (a rough estimate); --max-seconds is {max_seconds:g} (raise it if you mean it)")



class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (exit status 2), like the library's errors."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")



def device_type(text: str) -> str:
    t = text.strip().lower()
    if t not in DEVICES and not (t.startswith("cuda:") and t[5:].isdigit()):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; choose auto, cpu, cuda, cuda:N or mps")
    return t



def seconds_type(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-seconds must be a number; got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"--max-seconds must be a finite number above 0; got {text!r}")
    return value



def heads_type(text: str) -> str:
    try:
        parse_heads(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text



def validate_args(args) -> None:
    """Checks that need no model: devices that exist here, writable outputs, the checkpoint path.

    Run before the model is loaded, so that nothing is computed for output that cannot be written.
    """
    check_cli_text(args)
    seeds = getattr(args, "seeds", None)
    if seeds and len(set(seeds)) != len(seeds):
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ValidationError(f"--seeds: seed {', '.join(map(str, twice))} is given more than once; each seed is one "
                              "sample of demonstrations and counts once (give distinct seeds)")
    if getattr(args, "device", None):
        args.device = check_device(args.device)
    if getattr(args, "out", None) is not None and args.command != "report":
        check_output_dir(args.out)
    if getattr(args, "checkpoint", None) is not None:
        check_file_target(args.checkpoint, "--checkpoint")
    if getattr(args, "save", None) is not None:
        check_file_target(args.save, "--save")
    if getattr(args, "html", None) is not None:
        check_file_target(args.html, "--html")
    if getattr(args, "device_map", None) not in (None, "auto"):
        raise ValidationError(f"--device-map {args.device_map!r}: only 'auto' (or none) is accepted here")
    if getattr(args, "offload_folder", None):
        if not getattr(args, "device_map", None):
            raise ValidationError("--offload-folder needs --device-map auto")
        check_output_dir(args.offload_folder)



TEXT_OPTIONS = ("demo", "query", "labels", "b_query", "b_labels", "dataset", "pair", "heads", "ablate")



def check_cli_text(args) -> None:
    """Text options must be valid text: a lone surrogate (undecodable bytes, e.g. $'\\udcff') is refused."""
    for opt in TEXT_OPTIONS:
        value = getattr(args, opt, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                check_text(v, f"--{opt.replace('_', '-')}")



def validate_against_model(args, lm) -> None:
    """Checks against the loaded model: heads and layers exist, head counts fit."""
    total = lm.n_layers * lm.n_heads
    for opt in ("heads", "ablate"):
        text = getattr(args, opt, None)
        if text:
            try:
                check_heads(parse_heads(text), lm.n_layers, lm.n_heads)
            except ValidationError as exc:
                raise ValidationError(f"--{opt}: {exc}") from None
    if getattr(args, "layers", None) is not None:
        try:
            args.layers = check_layers(args.layers, lm.n_layers)
        except ValidationError as exc:
            raise ValidationError(f"--layers: {exc}") from None
    for opt in ("n_heads", "candidates"):
        n = getattr(args, opt, None)
        if n is not None and n > total:
            raise ValidationError(f"--{opt.replace('_', '-')} {n}: the model has {total} heads")



def common_options(p: argparse.ArgumentParser, dataset: bool = True):
    p.add_argument("--model", default="default", help="'default' (offline Qwen2.5-Coder-0.5B), a Hub name or a folder")
    p.add_argument("--device", default="auto", type=device_type, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--device-map", default=None,
                   help="'auto' spreads a model larger than one device over GPUs, the CPU and (with --offload-folder) "
                        "the disk (accelerate)")
    p.add_argument("--offload-folder", default=None, help="folder for the layers --device-map puts on disk")
    p.add_argument("--template", default=DEFAULT_TEMPLATE, choices=sorted(TEMPLATES))
    p.add_argument("--labels", nargs="+", default=None, help="label words (default foo bar ...)")
    p.add_argument("--out", default=None, help="folder for CSV/JSON output")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the trace of an error")
    p.add_argument("--max-tokens", type=int_type(16, 10_000_000), default=MAX_TOKENS,
                   help=f"refuse prompts longer than this, before any forward pass (default {MAX_TOKENS})")
    p.add_argument("--max-seconds", type=seconds_type, default=MAX_SECONDS,
                   help="on a CPU, refuse a prompt whose one pass is estimated to take longer than this "
                        f"(default {MAX_SECONDS:g})")
    if dataset:
        p.add_argument("--dataset", default="sst2", help="shipped name, a name in --data-dir, or hub:NAME")
        p.add_argument("--data-dir", default=None, help="folder with more datasets (e.g. ethos)")
        p.add_argument("--classes", type=int_type(0, 10_000), nargs="+", default=None,
                       help="keep these class indices")
        p.add_argument("--k", type=int_type(1, 1000), default=4, help="demonstrations per label")
        p.add_argument("--n-test", type=int_type(1, 1_000_000), default=48)
        p.add_argument("--seeds", type=int_type(0, 2**32 - 1), nargs="+", default=[0])
        p.add_argument("--batch-size", type=int_type(1, 4096), default=8)
        p.add_argument("--heads", default=None, type=heads_type,
                       help="in-context heads, e.g. 'L21H1 L20H10'; default: located")
        p.add_argument("--n-heads", type=int_type(1, 100_000), default=None,
                       help="how many located heads (default ~1%%, >=2)")
        p.add_argument("--scaling", default="final_scale", choices=["final_scale", "final_norm"])
        p.add_argument("--layers", type=int_type(0, 100_000), nargs="+", default=None,
                       help="layers to search (default deep half)")
        p.add_argument("--rule", default="importance", choices=["importance", "causal", "context"],
                       help="without --heads, locate heads by logit-lens importance, by causal effect (knockout "
                            "of each head's label attention, per label: label voters first) or by the in-context "
                            "part of that effect (on the locate half of the test split; heads that read the "
                            "demonstrations)")
        p.add_argument("--locate-seed", type=int_type(0, 2**32 - 1), default=100,
                       help="demonstration seed of the prompts heads are located on (kept apart from --seeds)")



EDITS_HELP = "how B is made from A (the prompt given by --demo/--query)"



def prompt_options(p: argparse.ArgumentParser) -> None:
    """One prompt (A), its heads, and how a second prompt B is made from it."""
    common_options(p, dataset=False)
    p.add_argument("--demo", action="append", default=[], help="'sentence=label' (repeat)")
    p.add_argument("--query", required=True)
    p.add_argument("--heads", default=None, type=heads_type,
                   help="in-context heads, e.g. 'L16H12 L16H3'; default: the heads the report located on this model "
                        "(the app's rule: context)")
    p.add_argument("--html", default=None, help="also write the view's figure as a standalone HTML file "
                                               "(plotly.js embedded: opens offline, PNG/SVG buttons)")



def edit_options(p: argparse.ArgumentParser, default: str | None) -> None:
    g = p.add_argument_group("prompt B", EDITS_HELP)
    g.add_argument("--label-swap", action="store_true", default=default == "label-swap",
                   help="B: every demonstration's label swapped (the paper's label swap)")
    g.add_argument("--flip", type=int_type(1, 100_000), action="append", default=[],
                   help="B: flip the label of demonstration N (1-based; repeat)")
    g.add_argument("--order", type=int_type(1, 100_000), nargs="+", default=None,
                   help="B: the demonstrations in this order (1-based), e.g. --order 3 1 2 4")
    g.add_argument("--reverse", action="store_true", help="B: the demonstrations in reverse order")
    g.add_argument("--b-query", default=None, help="B: another query")
    g.add_argument("--b-labels", nargs="+", default=None, help="B: other label words (matched by index)")
