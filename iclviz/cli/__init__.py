"""Command line: every analysis headless, with a progress bar and CSV/JSON output.

    python -m iclviz predict --demo "a wonderful film=foo" --demo "dull and boring=bar" --query "I loved it"
    python -m iclviz evaluate --dataset sst2 --k 4 --n-test 48 --seeds 0 1 2
    python -m iclviz locate --dataset sst2 --out runs/sst2
    python -m iclviz report --out docs/results.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..data import load_dataset
from ..errors import Cancelled, IclvizError
from ..prompt import DEFAULT_TEMPLATE, TEMPLATES, PromptError
from ..validation import (
    DEVICES,
    ValidationError,
    atomic_write,
    check_device,
    check_file_target,
    check_heads,
    check_layers,
    check_output_dir,
    check_text,
    head_name,
    int_type,
    parse_heads,
    tolerance_type,
)


class _Bar:
    """A tqdm progress callback for the library's ``progress(done, total, note)``."""

    def __init__(self, desc: str):
        self.bar = None
        self.desc = desc

    def __call__(self, done, total, note=""):
        if self.bar is None or self.bar.total != total:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=self.desc, file=sys.stderr, leave=False)
        self.bar.n = done
        self.bar.set_postfix_str(str(note)[:40])
        self.bar.refresh()
        return True

    def close(self):
        if self.bar is not None:
            self.bar.close()


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


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (exit status 2), like the library's errors."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _device_type(text: str) -> str:
    t = text.strip().lower()
    if t not in DEVICES and not (t.startswith("cuda:") and t[5:].isdigit()):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; choose auto, cpu, cuda, cuda:N or mps")
    return t


def _seconds_type(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-seconds must be a number; got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"--max-seconds must be a finite number above 0; got {text!r}")
    return value


def _heads_type(text: str) -> str:
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


def _common(p: argparse.ArgumentParser, dataset: bool = True):
    p.add_argument("--model", default="default", help="'default' (offline Qwen2.5-Coder-0.5B), a Hub name or a folder")
    p.add_argument("--device", default="auto", type=_device_type, help="auto, cpu, cuda, cuda:N or mps")
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
    p.add_argument("--max-seconds", type=_seconds_type, default=MAX_SECONDS,
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
        p.add_argument("--heads", default=None, type=_heads_type,
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


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m iclviz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show the trace of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="label probabilities for one prompt")
    _common(p, dataset=False)
    p.add_argument("--demo", action="append", default=[], help="'sentence=label' (repeat)")
    p.add_argument("--query", required=True)
    p.add_argument("--ablate", default=None, type=_heads_type, help="heads to ablate, e.g. 'L21H1 L20H10'")
    p.set_defaults(func=cmd_predict)
    for name, func, helptext in [
        ("evaluate", cmd_evaluate, "accuracy over test sentences, seeds, with an interval"),
        ("locate", cmd_locate, "per-head importance (layer x head) and the top in-context heads"),
        ("interventions", cmd_interventions, "accuracy: none vs in-context heads vs random heads (ablation, knockout)"),
        ("causal", cmd_causal, "accuracy drop when each of the top-N located heads is intervened alone"),
        ("null", cmd_null, "the in-context heads' effect against a null distribution of random heads (many draws)"),
        ("context-test", cmd_context_test,
         "the paper's claim on discrimination: AUC, recentred accuracy and accuracy with the in-context heads knocked "
         "out (top-k curve) against random head sets, on the evaluate half of the test split"),
        ("label-specific", cmd_label_specific,
         "knock out the foo heads on foo-gold queries and the bar heads on bar-gold ones"),
        ("label-vectors", cmd_label_vectors, "value-output vectors at label positions for the first test prompt"),
        ("label-swap", cmd_label_swap, "attention on foo vs bar positions before/after swapping labels"),
        ("two-towers", cmd_two_towers, "query-key score vs query-demonstration similarity"),
        ("majority-bias", cmd_majority_bias, "majority label bias and its fix in the in-context heads"),
        ("recency-bias", cmd_recency_bias, "recency bias over demonstration orders and its fix"),
    ]:
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(func=func)
        _common(p)
        if name == "evaluate":
            p.add_argument("--intervention", default="none", choices=["none", "ablate", "knockout"])
            p.add_argument("--checkpoint", default=None, help="JSONL to resume from / append to")
        if name in ("interventions",):
            p.add_argument("--draws", type=int_type(1, 1000), default=3)
        if name == "locate":
            p.add_argument("--method", default="importance", choices=["importance", "causal", "both", "context"],
                           help="logit-lens importance (one pass), causal effect of each head alone (knockout and "
                                "output removal at T, batched), both side by side, or the context rule (each "
                                "head's effect split into its in-context part and its label prior, on the locate "
                                "half of the test split; the label voters listed apart; k from a top-k curve)")
            p.add_argument("--kinds", nargs="+", default=["knockout", "ablate_t"], choices=["knockout", "ablate_t"])
            p.add_argument("--full-ablation-top", type=int_type(0, 100_000), default=0,
                           help="also ablate (at every position) the top N heads of the causal ranking, alone")
        if name == "context-test":
            p.add_argument("--draws", type=int_type(1, 10_000), default=50,
                           help="random head sets per size (at least 50 recommended)")
            p.add_argument("--sizes", type=int_type(1, 100_000), nargs="+", default=None,
                           help="the k of the top-k curve (default: 1 2 3 4 6 8 12 16, the chosen k and 1%%, 2%%, "
                                "5%% of the heads)")
        if name in ("null", "label-specific"):
            p.add_argument("--draws", type=int_type(1, 10_000), default=100,
                           help="random head sets (at least 50 recommended)")
            p.add_argument("--kind", default="knockout", choices=["knockout", "ablate_t", "ablate"])
        if name == "causal":
            p.add_argument("--candidates", type=int_type(1, 100_000), default=8,
                           help="how many top located heads to test")
            p.add_argument("--intervention", default="ablate", choices=["ablate", "knockout"])
        if name == "recency-bias":
            p.add_argument("--orders", type=int_type(0, 1000), default=3,
                           help="random orders besides the label-last ones")
    _view_parsers(sub)
    p = sub.add_parser("verify", help="hash every weights file of the offline models' caches (sha256) against "
                                      "their record (the load's fast check compares sizes and modification times)")
    p.add_argument("--model", default=None,
                   help="one offline model (default: every offline model whose cache is built)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the trace of an error")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("report", help="regenerate docs/results.md on several models and datasets")
    p.add_argument("--models", nargs="+", default=["default", "qwen2.5-coder-1.5b"],
                   help="offline model names, Hub names or folders")
    p.add_argument("--classic-on", nargs="*", default=None,
                   help="run the first report's analyses (label swap, two towers, biases) only on these models")
    p.add_argument("--datasets", nargs="+", default=["sst2", "amazon_polarity", "trec:3,4"])
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--work", default="docs/results_data", help="folder for the per-experiment CSVs (resumable)")
    p.add_argument("--quick", action="store_true", help="tiny sample sizes (a smoke run)")
    p.add_argument("--n-test", type=int, default=None,
                   help="test sentences per demonstration seed in the causal test (default 128 on the first dataset, "
                        "64 on the others)")
    p.add_argument("--cached-only", action="store_true",
                   help="write the page from the finished experiments in --work only (the rest: 'not measured')")
    p.add_argument("--context-on", nargs="*", default=None,
                   help="the datasets that get the context rule (default: all; its bias fixes run on the first)")
    p.add_argument("--curve-on", default="sst2", help="the dataset that gets the top-n curve")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the trace of an error")
    p.set_defaults(func=cmd_report)
    return ap


EDITS_HELP = "how B is made from A (the prompt given by --demo/--query)"


def _prompt_options(p: argparse.ArgumentParser) -> None:
    """One prompt (A), its heads, and how a second prompt B is made from it."""
    _common(p, dataset=False)
    p.add_argument("--demo", action="append", default=[], help="'sentence=label' (repeat)")
    p.add_argument("--query", required=True)
    p.add_argument("--heads", default=None, type=_heads_type,
                   help="in-context heads, e.g. 'L16H12 L16H3'; default: the heads the report located on this model "
                        "(the app's rule: context)")
    p.add_argument("--html", default=None, help="also write the view's figure as a standalone HTML file "
                                               "(plotly.js embedded: opens offline, PNG/SVG buttons)")


def _edit_options(p: argparse.ArgumentParser, default: str | None) -> None:
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


def _view_parsers(sub) -> None:
    p = sub.add_parser("compare", help="prompt A/B per head: attention from T to each label, head logits, prediction",
                       description="Prompt A/B per in-context head and label, for A, B and B - A.")
    _prompt_options(p)
    _edit_options(p, None)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("contributions", help="each demonstration's contribution through the heads, beside the "
                                             "measured effect of knocking it out (a waterfall)")
    _prompt_options(p)
    p.add_argument("--pair", nargs=2, default=None, metavar=("LABEL", "LABEL"),
                   help="the margin's two labels (default: the first two, or predicted vs runner-up)")
    p.set_defaults(func=cmd_contributions)
    p = sub.add_parser("towers-patch", help="the two towers causally: patch the query at T, the keys or the values "
                                            "of the heads from B into A")
    _prompt_options(p)
    _edit_options(p, "label-swap")
    p.add_argument("--positions", default="labels", choices=["labels", "all"],
                   help="keys/values patched at the label positions (matched by demonstration) or at every position")
    p.add_argument("--conditions", nargs="+", default=["none", "q", "k", "v", "q+k", "all"],
                   help="what is patched per row: none, all, or q, k, v joined by '+'")
    p.set_defaults(func=cmd_towers_patch)
    p = sub.add_parser("lesson", help="save a lesson file: the prompt, heads, B, and the results of the views")
    _prompt_options(p)
    _edit_options(p, None)
    p.add_argument("--save", required=True, help="the lesson file to write (JSON)")
    p.add_argument("--contributions", action="store_true", help="include each demonstration's contribution")
    p.add_argument("--towers", action="store_true", help="include the towers patch (B as the donor)")
    p.set_defaults(func=cmd_lesson)
    p = sub.add_parser("replay", help="recompute a lesson file on a model and say what differs")
    p.add_argument("file", help="a lesson file (JSON) written by the app or `lesson --save`")
    p.add_argument("--model", default=None, help="the model to replay on (default: the offline model the file names, "
                                                 "else the default offline model; a Hub name or a folder only here)")
    p.add_argument("--device", default="auto", type=_device_type)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--out", default=None, help="folder for the differences (CSV/JSON)")
    p.add_argument("--rtol", type=tolerance_type("--rtol"), default=1e-3, help="relative tolerance (finite, >= 0)")
    p.add_argument("--atol", type=tolerance_type("--atol"), default=1e-4, help="absolute tolerance (finite, >= 0)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the trace of an error")
    p.set_defaults(func=cmd_replay)


def _load(args):
    from ..engine.models import load_model

    bar = _Bar("loading model")
    try:
        return load_model(args.model, device=args.device if hasattr(args, "device") else None,
                          dtype=getattr(args, "dtype", None), trust_remote_code=getattr(args, "trust_remote_code",
                                                                                       False),
                          device_map=getattr(args, "device_map", None),
                          offload_folder=getattr(args, "offload_folder", None),
                          progress=lambda f, msg: bar(int(f * 100), 100, msg))
    finally:
        bar.close()


def _setup(args):
    from ..analyses.evaluation import EvalSetup

    if args.dataset.startswith("hub:"):  # a Hugging Face dataset by name (internet and `datasets` needed)
        from ..data import load_hub_dataset

        ds = load_hub_dataset(args.dataset[4:])
    else:
        ds = load_dataset(args.dataset, args.data_dir)
    if args.classes:
        ds = ds.restrict(args.classes)
    setup = EvalSetup(ds, k_per_label=args.k, n_test=args.n_test, seeds=tuple(args.seeds),
                      label_words=tuple(args.labels) if args.labels else None, template=args.template)
    setup.words()  # label words that do not fit the classes: refused before the model loads
    return setup


def _locate_setup(args, setup):
    import dataclasses

    return dataclasses.replace(setup, seeds=(args.locate_seed,))


def _located_heads(args, lm, setup):
    """The heads given with --heads, or the top located ones by --rule on the --locate-seed prompts."""
    heads = parse_heads(args.heads)
    if heads:
        return heads, None
    from ..analyses.heads import default_top_n

    n = args.n_heads or default_top_n(lm.n_layers * lm.n_heads)
    bar = _Bar(f"locating heads ({args.rule})")
    try:
        if args.rule == "context":
            return _context_heads(args, lm, setup, bar)
        if args.rule == "causal":
            from ..analyses.causal import causal_scan

            scan = causal_scan(lm, _locate_setup(args, setup), layers=args.layers, kinds=("knockout",), progress=bar)
            return scan.top(n), scan
        from ..analyses.locate import locate_heads

        scan = locate_heads(lm, _locate_setup(args, setup), scaling=args.scaling, layers=args.layers,
                            batch_size=args.batch_size, progress=bar)
        return scan.top(n), scan
    finally:
        bar.close()


def _context_location(args, setup):
    """The location prompts of the context rule: the locate half of the test split, --locate-seed."""
    import dataclasses

    return dataclasses.replace(setup, dataset=setup.dataset.test_part("locate"), seeds=(args.locate_seed,))


def _context_heads(args, lm, setup, bar, curve_out: dict | None = None):
    """The context rule: scan on the location prompts, rank by the in-context part; k from --n-heads or
    from the location top-k curve (``context_heads.choose_n_heads``)."""
    from ..analyses import context_heads

    loc = _context_location(args, setup)
    scan = context_heads.locate_context_heads(lm, loc, layers=args.layers, progress=bar)
    ranking = context_heads.context_ranking(scan)
    if args.n_heads:
        return ranking[:args.n_heads], scan
    bar.close()
    curve = context_heads.location_curve(lm, loc, ranking, n_draws=5, layers=args.layers, progress=bar)
    k = context_heads.choose_n_heads(curve)
    print(f"context rule: k = {k} from the location top-k curve", file=sys.stderr)
    if curve_out is not None:
        curve_out["curve"] = curve
    return ranking[:k], scan


def _heads_by_label(args, lm, setup) -> dict:
    heads, scan = _located_heads(args, lm, setup)
    if scan is None:
        raise PromptError("label-specific needs located heads (their labels come from the scan): drop --heads")
    return scan.top_by_label(len(heads))


def _write(args, name: str, df=None, obj=None):
    if df is not None:
        print(df.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    elif obj is not None:
        from ..outputs.lesson_file import json_safe

        obj = json_safe(obj)
        print(json.dumps(obj, indent=2, allow_nan=False))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if df is not None:
            atomic_write(out / f"{name}.csv", df.to_csv(index=False))
        if obj is not None:
            atomic_write(out / f"{name}.json", json.dumps(obj, indent=2, allow_nan=False))
        print(f"wrote {out}/{name}.*", file=sys.stderr)


def _save_json(args, name: str, obj) -> None:
    """Write ``obj`` as ``--out/name.json`` (nothing without --out; the table went to stdout)."""
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from ..outputs.lesson_file import json_safe

        atomic_write(out / f"{name}.json", json.dumps(json_safe(obj), indent=2, allow_nan=False))


# ---------------------------------------------------------------- one function per subcommand

def cmd_report(args) -> int:
    from ..outputs.report import make_report

    make_report(models=tuple(args.models), datasets=tuple(args.datasets), out=args.out, work=args.work,
                quick=args.quick, curve_on=args.curve_on, data_dir=args.data_dir,
                classic_on=tuple(args.classic_on) if args.classic_on is not None else None,
                record_heads=not args.quick, cached_only=args.cached_only, n_test=args.n_test,
                context_on=tuple(args.context_on) if args.context_on is not None else None)
    return 0


def cmd_verify(args) -> int:
    """The full check of the offline models' caches: exit 0 when every file matches, 1 when one does not."""
    from ..engine.offline import OFFLINE_MODELS, cache_root, offline_model, verify_model_cache

    if args.model:
        spec = offline_model(args.model)
        if spec is None:
            raise ValidationError(f"{args.model[:80]!r} is not an offline model; choose one of "
                                  f"{', '.join(OFFLINE_MODELS)}")
        specs = [spec]
    else:
        specs = list(dict.fromkeys(OFFLINE_MODELS.values()))
    root = cache_root() / "models"
    checked = damaged = 0
    for spec in specs:
        folder = root / spec.f32_dir
        if not folder.is_dir():
            if args.model:
                print(f"{spec.name}: no cache in {folder} yet (it is built on first use)")
            continue
        checked += 1
        print(f"{spec.name}: hashing {folder} ...", file=sys.stderr)
        problem = verify_model_cache(folder)
        if problem:
            damaged += 1
            print(f"{spec.name}: DAMAGED: {problem} ({folder}); delete that folder and it is rebuilt on the next load")
        else:
            print(f"{spec.name}: ok: every weights file matches its recorded sha256 ({folder})")
    if not checked and not args.model:
        print(f"no offline model cache in {root} yet: nothing to verify")
    return 1 if damaged else 0


def _model(args):
    """Validate what needs no model, load it, then validate against it."""
    validate_args(args)
    lm = _load(args)
    print(f"model: {lm.describe()}", file=sys.stderr)
    validate_against_model(args, lm)
    return lm


def cmd_predict(args) -> int:
    from ..analyses.evaluation import predict_prompt
    from ..engine.interventions import Plan

    spec = _spec(args)
    lm = _model(args)
    plan = Plan("ablate", tuple(parse_heads(args.ablate))) if args.ablate else Plan()
    prompt = spec.build(lm)
    check_prompt_tokens([prompt], args.max_tokens, lm, args.max_seconds)
    t0 = time.perf_counter()
    pred = predict_prompt(lm, prompt, plan, capture=False)
    obj = {"prediction": pred.predicted, "probabilities": pred.probs, "logits": pred.logits,
           "tokens": pred.prompt.n_tokens, "seconds": round(time.perf_counter() - t0, 3),
           "intervention": plan.label(), "warnings": pred.prompt.warnings}
    _write(args, "predict", obj=obj)
    return 0


def _on_dataset(body):
    """A subcommand over a dataset sample: ``body(args, lm, setup, bar)`` after loading the model, building
    the sample and refusing too-long prompts, with one progress bar."""

    def command(args) -> int:
        validate_args(args)
        setup = _setup(args)  # the dataset is read and checked before the model loads
        lm = _model(args)
        for seed in setup.seeds:  # tokenizing is cheap; a pass over a too-long prompt is not
            check_prompt_tokens(setup.prompts(lm, seed)[0], args.max_tokens, lm, args.max_seconds)
        bar = _Bar(args.command)
        try:
            body(args, lm, setup, bar)
        finally:
            bar.close()
        return 0

    command.__name__ = command.__qualname__ = body.__name__
    command.__doc__ = body.__doc__
    return command


def _write_rows_and_summary(args, name: str, rows, summary) -> None:
    """An analysis's per-prompt rows (``<name>_rows``) and its summary table (``<name>``)."""
    _write(args, f"{name}_rows", df=rows)
    _write(args, name, df=summary)


def _write_bias(args, name: str, res) -> None:
    """A bias result: its rows and summary, the per-prompt outcomes (``<name>_prompts``), the paired
    intervals and permutation test (``<name>_intervals``), and the reading on stderr."""
    from ..analyses.readout import bias_reading

    _write_rows_and_summary(args, name, res.rows, res.summary)
    _write(args, f"{name}_prompts", df=res.prompts)
    text, warning, intervals = bias_reading(res)
    _write(args, f"{name}_intervals", df=intervals)
    print(text, file=sys.stderr)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _write_null_test(args, name: str, nt) -> None:
    """A test against random heads: its summary table, its verdict, and the verdict's line on stderr."""
    from ..analyses.causal import verdict_line

    _write(args, f"{name}_summary", df=nt.summary)
    _write(args, f"{name}_verdict", obj=nt.verdict)
    print(verdict_line(nt.verdict), file=sys.stderr)


def _names(heads) -> list[str]:
    return [head_name(h) for h in heads]


def _in_context_heads(args, lm, setup):
    """The heads of --heads, or the located ones (said on stderr)."""
    heads, _ = _located_heads(args, lm, setup)
    print(f"in-context heads: {' '.join(_names(heads))}", file=sys.stderr)
    return heads


@_on_dataset
def cmd_evaluate(args, lm, setup, bar):
    from ..analyses.evaluation import evaluate
    from ..engine.interventions import Plan

    heads = parse_heads(args.heads)
    plan = Plan(args.intervention, tuple(heads)) if args.intervention != "none" else Plan()
    res = evaluate(lm, setup, plan, batch_size=args.batch_size, progress=bar, checkpoint=args.checkpoint)
    bar.close()
    for w in res.extras.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    _write(args, "evaluate_rows", df=res.rows)
    _write(args, "evaluate", obj=res.summary())


@_on_dataset
def cmd_locate(args, lm, setup, bar):
    from ..analyses.heads import default_layers, default_top_n

    layers = args.layers or default_layers(lm.n_layers)
    result = {"scaling": args.scaling, "layers": layers, "method": args.method}
    scan = None
    if args.method == "context":
        from ..analyses.context_heads import head_parts, voter_ranking

        args.layers = layers
        extra: dict = {}
        heads, cs = _context_heads(args, lm, setup, bar, extra)
        bar.close()
        _write(args, "context_scan", df=head_parts(cs))
        if "curve" in extra:
            _write(args, "context_location_curve", df=extra["curve"])
        result["context"] = {"prompts": cs.n_prompts, "test_part": "locate", "seed": args.locate_seed,
                             "heads": _names(heads), "label_voters": _names(voter_ranking(cs)[:len(heads)])}
        _write(args, "top_heads", obj=result)
        return
    if args.method in ("importance", "both"):
        from ..analyses.locate import locate_heads

        scan = locate_heads(lm, setup, scaling=args.scaling, layers=layers, batch_size=args.batch_size, progress=bar)
        bar.close()
        _write(args, "head_importance", df=scan.table)
        result.update({"top": _names(scan.top(args.n_heads)), "by_label": {
            w: _names(hs) for w, hs in scan.top_by_label(args.n_heads).items()}, "prompts": scan.n_prompts})
    if args.method in ("causal", "both"):
        from ..analyses.causal import causal_scan, compare_rankings

        cs = causal_scan(lm, setup, layers=layers, kinds=tuple(args.kinds), progress=bar)
        bar.close()
        if args.full_ablation_top:
            cands = cs.top(args.full_ablation_top, kind=args.kinds[0])
            cs = causal_scan(lm, setup, layers=layers, kinds=tuple(args.kinds), full_ablation_heads=cands,
                             progress=bar)
            bar.close()
        _write(args, "causal_scan", df=cs.table)
        n = args.n_heads or default_top_n(lm.n_layers * lm.n_heads)
        kind = args.kinds[0]
        result["causal"] = {"kind": kind, "base": cs.base, "prompts": cs.n_prompts,
                            "top_by_label_effect": _names(cs.top(n, kind)),
                            "top_by_mean_effect": _names(cs.top(n, kind, by="effect")),
                            "by_label": {w: _names(hs) for w, hs in cs.top_by_label(n, kind).items()}}
        if scan is not None:
            result["rankings"] = {k: compare_rankings(scan.overall, cs, kind, n=m, by=by) for k, m, by in (
                ("label_effect_top10", 10, "label_effect"), ("mean_effect_top10", 10, "effect"))}
            for v in result["rankings"].values():
                v["both"] = _names(v["both"])
            side = scan.overall.merge(cs.table[cs.table.kind == kind], on=["layer", "head"])
            side["rank_importance"] = side["importance"].rank(ascending=False)
            side["rank_causal"] = side["label_effect"].rank(ascending=False)
            _write(args, "rankings", df=side.sort_values("rank_causal").head(20)[
                ["layer", "head", "importance", "favours", "rank_importance", "effect", "label_effect",
                 "supports", "vote", "rank_causal"]])
    _write(args, "top_heads", obj=result)


@_on_dataset
def cmd_label_specific(args, lm, setup, bar):
    from ..analyses.causal import label_specific

    if args.kind == "ablate":
        raise PromptError("label-specific acts at T on each prompt's heads: use --kind knockout or ablate_t")
    by_label = _heads_by_label(args, lm, setup)
    print("label heads: " + "; ".join(f"{w}: {' '.join(_names(hs)) or '-'}" for w, hs in by_label.items()),
          file=sys.stderr)
    nt = label_specific(lm, setup, by_label, kind=args.kind, n_draws=args.draws, progress=bar)
    bar.close()
    _write_null_test(args, "label_specific", nt)


@_on_dataset
def cmd_interventions(args, lm, setup, bar):
    from ..analyses.locate import intervention_table

    heads = _in_context_heads(args, lm, setup)
    df = intervention_table(lm, setup, heads, random_draws=args.draws, batch_size=args.batch_size, progress=bar)
    bar.close()
    _write(args, "interventions", df=df)


@_on_dataset
def cmd_causal(args, lm, setup, bar):
    from ..analyses.locate import candidate_accuracy_drops

    if args.n_heads is None:
        args.n_heads = args.candidates
    heads = _in_context_heads(args, lm, setup)
    df = candidate_accuracy_drops(lm, setup, heads[:args.candidates], kind=args.intervention,
                                  batch_size=args.batch_size, progress=bar)
    bar.close()
    _write(args, "causal", df=df)


@_on_dataset
def cmd_null(args, lm, setup, bar):
    from ..analyses.causal import null_distribution

    heads = _in_context_heads(args, lm, setup)
    nt = null_distribution(lm, setup, heads, kind=args.kind, n_draws=args.draws, layers=args.layers, progress=bar)
    bar.close()
    _write_null_test(args, "null", nt)


@_on_dataset
def cmd_context_test(args, lm, setup, bar):
    """Knock out the top k in-context heads for every k of the curve, and random sets of k heads, on the
    evaluate half of the test split: every measure, the curve with its null band, and the verdict."""
    import dataclasses

    from ..analyses import context_heads
    from ..analyses.heads import default_layers

    if args.rule != "context" and not args.heads:
        print("context-test locates heads by the context rule (--rule context)", file=sys.stderr)
        args.rule = "context"
    heads, scan = _located_heads(args, lm, setup)
    bar.close()
    ranking = context_heads.context_ranking(scan) if scan is not None else list(heads)
    k = len(heads)
    sizes = args.sizes or sorted(set(context_heads.CURVE_SIZES) | {k}
                                 | set(context_heads.share_sizes(lm.n_layers * lm.n_heads).values()))
    sizes = [s for s in sizes if s <= len(ranking)] or [k]
    test_setup = dataclasses.replace(setup, dataset=setup.dataset.test_part("evaluate"))
    layers = args.layers or default_layers(lm.n_layers)
    t = context_heads.context_test(lm, test_setup, ranking[:max(sizes)], sizes, n_draws=args.draws, layers=layers,
                                   progress=bar)
    bar.close()
    _write(args, "context_test", df=t.table())
    _write(args, "context_curve", df=t.curve())
    v = t.verdict(f"top:{k}" if f"top:{k}" in t.names else t.names[1])
    _write(args, "context_verdict", obj=v)
    print(v["reading"], file=sys.stderr)


@_on_dataset
def cmd_label_vectors(args, lm, setup, bar):
    from ..analyses.label_vectors import label_vector_table

    heads = _in_context_heads(args, lm, setup)
    prompts, _ = setup.prompts(lm, setup.seeds[0])
    _write(args, "label_vectors", df=label_vector_table(lm, prompts[0], heads, args.scaling))


@_on_dataset
def cmd_label_swap(args, lm, setup, bar):
    from ..analyses.label_swap import label_swap_table, summarize_label_swap

    heads = _in_context_heads(args, lm, setup)
    df = label_swap_table(lm, setup, heads, args.scaling, args.batch_size, progress=bar)
    bar.close()
    _write_rows_and_summary(args, "label_swap", df, summarize_label_swap(df))


@_on_dataset
def cmd_two_towers(args, lm, setup, bar):
    from ..analyses.heads import control_heads
    from ..analyses.two_towers import rank_correlations, two_towers_table

    heads = _in_context_heads(args, lm, setup)
    control = control_heads(heads, lm.n_layers, lm.n_heads, 0)
    df = two_towers_table(lm, setup, heads, control, batch_size=args.batch_size, progress=bar)
    bar.close()
    _write_rows_and_summary(args, "two_towers", df, rank_correlations(df))


@_on_dataset
def cmd_majority_bias(args, lm, setup, bar):
    from ..analyses.bias import majority_bias

    heads = _in_context_heads(args, lm, setup)
    res = majority_bias(lm, setup, heads, args.batch_size, progress=bar)
    bar.close()
    _write_bias(args, "majority_bias", res)


@_on_dataset
def cmd_recency_bias(args, lm, setup, bar):
    from ..analyses.bias import recency_bias

    heads = _in_context_heads(args, lm, setup)
    res = recency_bias(lm, setup, heads, args.orders, args.batch_size, progress=bar)
    bar.close()
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    _write_bias(args, "recency_bias", res)


# ---------------------------------------------------------------- the views on one prompt

def _spec(args):
    """Prompt A as data (demonstrations, query, label words, template) from --demo/--query."""
    from ..analyses.compare import PromptSpec

    demos = []
    for d in args.demo:
        if "=" not in d:
            raise PromptError(f"write each demonstration as 'sentence=label'; got {d!r}")
        text, label = d.rsplit("=", 1)
        demos.append((text.strip(), label.strip()))
    words = tuple(args.labels) if args.labels else tuple(dict.fromkeys(lab for _, lab in demos))
    if len(words) < 2:
        raise PromptError("give demonstrations of at least two labels, or name the label words with --labels")
    return PromptSpec(tuple(demos), args.query, words, args.template)


def _spec_b(args, a):
    """Prompt B: A with the edits given (None when none is given)."""
    from ..analyses import compare

    b, edited = a, False
    if args.label_swap:
        b, edited = compare.swap_all_labels(b), True
    for i in args.flip:
        b, edited = compare.flip_label(b, i - 1), True
    if args.order:
        b, edited = compare.reorder(b, [i - 1 for i in args.order]), True
    if args.reverse:
        b, edited = compare.reorder(b, list(range(len(b.demos)))[::-1]), True
    if args.b_query is not None:
        b, edited = compare.swap_query(b, args.b_query), True
    if args.b_labels:
        b, edited = compare.change_label_words(b, args.b_labels), True
    return b if edited else None


def _view_setup(args):
    """The model, prompt A (built and checked against --max-tokens) and the heads."""
    from ..analyses.heads import APP_HEAD_RULE, located_heads

    spec = _spec(args)
    lm = _model(args)
    prompt = spec.build(lm)
    check_prompt_tokens([prompt], args.max_tokens, lm, args.max_seconds)
    heads = parse_heads(args.heads)
    if not heads:
        entry = located_heads(lm.name, rule=APP_HEAD_RULE)
        if entry is None:
            raise ValidationError(f"no located heads are recorded for {lm.name}: give --heads (e.g. from "
                                  "`locate --method context`)")
        heads = entry["heads"]
        print(f"heads: {' '.join(map(head_name, heads))} (located by the report, {APP_HEAD_RULE} rule)",
              file=sys.stderr)
    check_heads(heads, lm.n_layers, lm.n_heads)
    return lm, spec, prompt, heads


def _write_html(args, fig) -> None:
    if args.html:
        from ..outputs.figures import write_html

        print(f"wrote {write_html(fig, args.html)}", file=sys.stderr)


def cmd_compare(args) -> int:
    from ..analyses.compare import compare_prompts
    from ..outputs.plots import ab_bars

    lm, spec, prompt, heads = _view_setup(args)
    spec_b = _spec_b(args, spec)
    if spec_b is None:
        raise ValidationError("say how B differs from A: --label-swap, --flip N, --order ..., --reverse, --b-query "
                              "or --b-labels")
    b = spec_b.build(lm)
    check_prompt_tokens([b], args.max_tokens, lm, args.max_seconds)
    cmp = compare_prompts(lm, prompt, b, heads)
    for n in cmp.notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"A predicts {cmp.predicted_a}, B predicts {cmp.predicted_b}", file=sys.stderr)
    _write(args, "compare", df=cmp.to_frame())
    _save_json(args, "compare", cmp.to_dict())
    _write_html(args, ab_bars(cmp.head_table, "attention", "attention from T"))
    return 0


def cmd_contributions(args) -> int:
    from ..analyses.contributions import demo_contributions
    from ..outputs.figures import waterfall_figure

    lm, _, prompt, heads = _view_setup(args)
    c = demo_contributions(lm, prompt, heads, pair=tuple(args.pair) if args.pair else None)
    print(f"margin logit({c.pair[0]}) - logit({c.pair[1]}): {c.prediction_margin:+.3f} = baseline "
          f"{c.baseline_margin:+.3f} + contributions {c.total_contribution:+.3f}; knocking out every label "
          f"position changes it by {c.knockout_all:+.3f} (after - before)", file=sys.stderr)
    _write(args, "contributions", df=c.to_frame())
    _save_json(args, "contributions", c.to_dict())
    _write_html(args, waterfall_figure(c))
    return 0


def cmd_towers_patch(args) -> int:
    from ..analyses.towers_patch import towers_patch

    lm, spec, prompt, heads = _view_setup(args)
    spec_b = _spec_b(args, spec)
    if spec_b is None:
        raise ValidationError("say how the donor B differs from A (--label-swap is the default; it was turned off)")
    b = spec_b.build(lm)
    check_prompt_tokens([b], args.max_tokens, lm, args.max_seconds)
    try:
        tp = towers_patch(lm, prompt, b, heads, positions=args.positions, conditions=args.conditions)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    for n in tp.notes:
        print(f"note: {n}", file=sys.stderr)
    _write(args, "towers_patch", df=tp.summary)
    _save_json(args, "towers_patch", tp.to_dict())
    if args.html:
        from ..outputs.plots import towers_patch_bars

        _write_html(args, towers_patch_bars(tp.summary, prompt.label_words))
    return 0


def cmd_lesson(args) -> int:
    from ..analyses.compare import PromptSpec
    from ..outputs.lesson_file import make_lesson, save_lesson

    PromptSpec.from_dict(_spec(args).to_dict())  # a lesson file holds what it can read back (lengths), or nothing
    lm, spec, _, heads = _view_setup(args)
    spec_b = _spec_b(args, spec)
    if args.towers and spec_b is None:
        raise ValidationError("--towers needs a donor B: --label-swap, --flip N, --order ... or --reverse")
    lesson = make_lesson(lm, spec, heads, prompt_b=spec_b, donor=spec_b if args.towers else None,
                         contributions=args.contributions)
    path = save_lesson(lesson, args.save)
    print(f"wrote {path} ({', '.join(sorted(lesson.results))})", file=sys.stderr)
    return 0


def cmd_replay(args) -> int:
    from ..engine.models import load_model
    from ..outputs.lesson_file import load_lesson, replay

    try:
        lesson = load_lesson(Path(args.file))
    except ValueError as exc:
        raise ValidationError(f"{args.file}: {exc}") from None
    validate_args(args)
    if not lesson.results:
        raise ValidationError(f"{args.file}: the lesson file holds no results to compare (nothing to replay)")
    name = replay_model_name(lesson, args.model)
    bar = _Bar("loading model")
    try:
        lm = load_model(name, device=args.device, dtype=args.dtype,
                        progress=lambda f, msg: bar(int(f * 100), 100, msg))
    finally:
        bar.close()
    print(f"model: {lm.describe()}", file=sys.stderr)
    report = replay(lesson, lm, rtol=args.rtol, atol=args.atol)
    print(report.summary())
    if args.out:
        _write(args, "replay", df=report.to_frame())
        _save_json(args, "replay", report.to_dict())
    return 0 if report.ok else 1


def replay_model_name(lesson, model: str | None) -> str:
    """The model a replay loads: ``--model`` when given; else the offline model the file names, else the default
    offline model (a file never makes the CLI load a Hub name or a folder; the difference is said)."""
    from ..engine.offline import DEFAULT_MODEL, offline_model

    if model:
        return model
    stored = str(lesson.model.get("name") or "")
    if not stored or offline_model(stored) is not None:
        return stored or DEFAULT_MODEL
    print(f"note: the file names the model {stored[:80]!r}, which is not an offline model; replaying on the "
          f"{DEFAULT_MODEL!r} offline model (give --model to choose another)", file=sys.stderr)
    return DEFAULT_MODEL


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return args.func(args)
    except IclvizError as exc:  # every error meant for the user (iclviz/errors.py)
        if debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt) as exc:
        reason = str(exc) or "interrupted (Ctrl-C or SIGINT)"
        print(f"stopped: {reason}; outputs written before this are complete, the rest was not written"
              + (" (finished rows are kept in --checkpoint)" if getattr(args, "checkpoint", None) else ""),
              file=sys.stderr)
        return 130
    except (OSError, MemoryError) as exc:  # the machine refused: disk, permissions, memory
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: one line; --debug shows the trace
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {_one_line(exc)} (run with --debug for the trace)",
              file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]
