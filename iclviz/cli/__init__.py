"""Command line: every analysis headless, with a progress bar and CSV/JSON output.

    python -m iclviz predict --demo "a wonderful film=foo" --demo "dull and boring=bar" --query "I loved it"
    python -m iclviz evaluate --dataset sst2 --k 4 --n-test 48 --seeds 0 1 2
    python -m iclviz locate --dataset sst2 --out runs/sst2
    python -m iclviz report --out docs/results.md
"""

from __future__ import annotations

import argparse
import sys

from ..errors import Cancelled, IclvizError
from ..validation import (
    int_type,
    tolerance_type,
)
from .dataset_commands import (
    cmd_causal,
    cmd_context_test,
    cmd_evaluate,
    cmd_interventions,
    cmd_label_specific,
    cmd_label_swap,
    cmd_label_vectors,
    cmd_locate,
    cmd_majority_bias,
    cmd_null,
    cmd_predict,
    cmd_recency_bias,
    cmd_report,
    cmd_two_towers,
    cmd_verify,
)
from .options import (
    Parser,
    common_options,
    device_type,
    edit_options,
    heads_type,
    prompt_options,
)
from .prompt_commands import (
    cmd_compare,
    cmd_contributions,
    cmd_lesson,
    cmd_replay,
    cmd_towers_patch,
    replay_model_name,
)

__all__ = ["build_parser", "main", "replay_model_name"]


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m iclviz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show the trace of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="label probabilities for one prompt")
    common_options(p, dataset=False)
    p.add_argument("--demo", action="append", default=[], help="'sentence=label' (repeat)")
    p.add_argument("--query", required=True)
    p.add_argument("--ablate", default=None, type=heads_type, help="heads to ablate, e.g. 'L21H1 L20H10'")
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
        common_options(p)
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



def _view_parsers(sub) -> None:
    p = sub.add_parser("compare", help="prompt A/B per head: attention from T to each label, head logits, prediction",
                       description="Prompt A/B per in-context head and label, for A, B and B - A.")
    prompt_options(p)
    edit_options(p, None)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("contributions", help="each demonstration's contribution through the heads, beside the "
                                             "measured effect of knocking it out (a waterfall)")
    prompt_options(p)
    p.add_argument("--pair", nargs=2, default=None, metavar=("LABEL", "LABEL"),
                   help="the margin's two labels (default: the first two, or predicted vs runner-up)")
    p.set_defaults(func=cmd_contributions)
    p = sub.add_parser("towers-patch", help="the two towers causally: patch the query at T, the keys or the values "
                                            "of the heads from B into A")
    prompt_options(p)
    edit_options(p, "label-swap")
    p.add_argument("--positions", default="labels", choices=["labels", "all"],
                   help="keys/values patched at the label positions (matched by demonstration) or at every position")
    p.add_argument("--conditions", nargs="+", default=["none", "q", "k", "v", "q+k", "all"],
                   help="what is patched per row: none, all, or q, k, v joined by '+'")
    p.set_defaults(func=cmd_towers_patch)
    p = sub.add_parser("lesson", help="save a lesson file: the prompt, heads, B, and the results of the views")
    prompt_options(p)
    edit_options(p, None)
    p.add_argument("--save", required=True, help="the lesson file to write (JSON)")
    p.add_argument("--contributions", action="store_true", help="include each demonstration's contribution")
    p.add_argument("--towers", action="store_true", help="include the towers patch (B as the donor)")
    p.set_defaults(func=cmd_lesson)
    p = sub.add_parser("replay", help="recompute a lesson file on a model and say what differs")
    p.add_argument("file", help="a lesson file (JSON) written by the app or `lesson --save`")
    p.add_argument("--model", default=None, help="the model to replay on (default: the offline model the file names, "
                                                 "else the default offline model; a Hub name or a folder only here)")
    p.add_argument("--device", default="auto", type=device_type)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--out", default=None, help="folder for the differences (CSV/JSON)")
    p.add_argument("--rtol", type=tolerance_type("--rtol"), default=1e-3, help="relative tolerance (finite, >= 0)")
    p.add_argument("--atol", type=tolerance_type("--atol"), default=1e-4, help="absolute tolerance (finite, >= 0)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the trace of an error")
    p.set_defaults(func=cmd_replay)



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
