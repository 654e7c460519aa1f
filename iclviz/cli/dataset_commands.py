"""The subcommands over a dataset sample (evaluate, locate, the tests, the biases), the report, verify and
predict."""

from __future__ import annotations

import sys
import time

from ..data import load_dataset
from ..prompt import PromptError
from ..validation import (
    ValidationError,
    head_name,
    parse_heads,
)
from .common import ProgressBar, checked_model, prompt_spec, write_output
from .options import (
    check_prompt_tokens,
    validate_args,
)


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
    bar = ProgressBar(f"locating heads ({args.rule})")
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



def cmd_predict(args) -> int:
    from ..analyses.evaluation import predict_prompt
    from ..engine.interventions import Plan

    spec = prompt_spec(args)
    lm = checked_model(args)
    plan = Plan("ablate", tuple(parse_heads(args.ablate))) if args.ablate else Plan()
    prompt = spec.build(lm)
    check_prompt_tokens([prompt], args.max_tokens, lm, args.max_seconds)
    t0 = time.perf_counter()
    pred = predict_prompt(lm, prompt, plan, capture=False)
    obj = {"prediction": pred.predicted, "probabilities": pred.probs, "logits": pred.logits,
           "tokens": pred.prompt.n_tokens, "seconds": round(time.perf_counter() - t0, 3),
           "intervention": plan.label(), "warnings": pred.prompt.warnings}
    write_output(args, "predict", obj=obj)
    return 0



def _on_dataset(body):
    """A subcommand over a dataset sample: ``body(args, lm, setup, bar)`` after loading the model, building
    the sample and refusing too-long prompts, with one progress bar."""

    def command(args) -> int:
        validate_args(args)
        setup = _setup(args)  # the dataset is read and checked before the model loads
        lm = checked_model(args)
        for seed in setup.seeds:  # tokenizing is cheap; a pass over a too-long prompt is not
            check_prompt_tokens(setup.prompts(lm, seed)[0], args.max_tokens, lm, args.max_seconds)
        bar = ProgressBar(args.command)
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
    write_output(args, f"{name}_rows", df=rows)
    write_output(args, name, df=summary)



def _write_bias(args, name: str, res) -> None:
    """A bias result: its rows and summary, the per-prompt outcomes (``<name>_prompts``), the paired
    intervals and permutation test (``<name>_intervals``), and the reading on stderr."""
    from ..analyses.readout import bias_reading

    _write_rows_and_summary(args, name, res.rows, res.summary)
    write_output(args, f"{name}_prompts", df=res.prompts)
    text, warning, intervals = bias_reading(res)
    write_output(args, f"{name}_intervals", df=intervals)
    print(text, file=sys.stderr)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)



def _write_null_test(args, name: str, nt) -> None:
    """A test against random heads: its summary table, its verdict, and the verdict's line on stderr."""
    from ..analyses.causal import verdict_line

    write_output(args, f"{name}_summary", df=nt.summary)
    write_output(args, f"{name}_verdict", obj=nt.verdict)
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
    write_output(args, "evaluate_rows", df=res.rows)
    write_output(args, "evaluate", obj=res.summary())



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
        write_output(args, "context_scan", df=head_parts(cs))
        if "curve" in extra:
            write_output(args, "context_location_curve", df=extra["curve"])
        result["context"] = {"prompts": cs.n_prompts, "test_part": "locate", "seed": args.locate_seed,
                             "heads": _names(heads), "label_voters": _names(voter_ranking(cs)[:len(heads)])}
        write_output(args, "top_heads", obj=result)
        return
    if args.method in ("importance", "both"):
        from ..analyses.locate import locate_heads

        scan = locate_heads(lm, setup, scaling=args.scaling, layers=layers, batch_size=args.batch_size, progress=bar)
        bar.close()
        write_output(args, "head_importance", df=scan.table)
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
        write_output(args, "causal_scan", df=cs.table)
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
            write_output(args, "rankings", df=side.sort_values("rank_causal").head(20)[
                ["layer", "head", "importance", "favours", "rank_importance", "effect", "label_effect",
                 "supports", "vote", "rank_causal"]])
    write_output(args, "top_heads", obj=result)



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
    write_output(args, "interventions", df=df)



@_on_dataset
def cmd_causal(args, lm, setup, bar):
    from ..analyses.locate import candidate_accuracy_drops

    if args.n_heads is None:
        args.n_heads = args.candidates
    heads = _in_context_heads(args, lm, setup)
    df = candidate_accuracy_drops(lm, setup, heads[:args.candidates], kind=args.intervention,
                                  batch_size=args.batch_size, progress=bar)
    bar.close()
    write_output(args, "causal", df=df)



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
    write_output(args, "context_test", df=t.table())
    write_output(args, "context_curve", df=t.curve())
    v = t.verdict(f"top:{k}" if f"top:{k}" in t.names else t.names[1])
    write_output(args, "context_verdict", obj=v)
    print(v["reading"], file=sys.stderr)



@_on_dataset
def cmd_label_vectors(args, lm, setup, bar):
    from ..analyses.label_vectors import label_vector_table

    heads = _in_context_heads(args, lm, setup)
    prompts, _ = setup.prompts(lm, setup.seeds[0])
    write_output(args, "label_vectors", df=label_vector_table(lm, prompts[0], heads, args.scaling))



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
