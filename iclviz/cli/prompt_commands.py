"""The subcommands on one prompt (compare, contributions, towers-patch) and the lesson files (lesson, replay)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..validation import (
    ValidationError,
    check_heads,
    head_name,
    parse_heads,
)
from .common import ProgressBar, checked_model, prompt_spec, save_json, write_output
from .options import (
    check_prompt_tokens,
    validate_args,
)


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

    spec = prompt_spec(args)
    lm = checked_model(args)
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
    write_output(args, "compare", df=cmp.to_frame())
    save_json(args, "compare", cmp.to_dict())
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
    write_output(args, "contributions", df=c.to_frame())
    save_json(args, "contributions", c.to_dict())
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
    write_output(args, "towers_patch", df=tp.summary)
    save_json(args, "towers_patch", tp.to_dict())
    if args.html:
        from ..outputs.plots import towers_patch_bars

        _write_html(args, towers_patch_bars(tp.summary, prompt.label_words))
    return 0



def cmd_lesson(args) -> int:
    from ..analyses.compare import PromptSpec
    from ..outputs.lesson_file import make_lesson, save_lesson

    PromptSpec.from_dict(prompt_spec(args).to_dict())  # a lesson file holds what it can read back (lengths), or nothing
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
    bar = ProgressBar("loading model")
    try:
        lm = load_model(name, device=args.device, dtype=args.dtype,
                        progress=lambda f, msg: bar(int(f * 100), 100, msg))
    finally:
        bar.close()
    print(f"model: {lm.describe()}", file=sys.stderr)
    report = replay(lesson, lm, rtol=args.rtol, atol=args.atol)
    print(report.summary())
    if args.out:
        write_output(args, "replay", df=report.to_frame())
        save_json(args, "replay", report.to_dict())
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
