"""A guided lesson: the paper in five steps on a prepared prompt, each with a live result.

No streamlit here. ``LESSON_STATE`` is the prepared prompt; ``STEPS`` the titles and one-sentence
explanations; ``step_result(lm, i, prompt, heads)`` computes step i's live numbers on the current
prompt and says in one sentence what they show (the same function the tests call).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..engine.interventions import Plan
from ..prompt import BuiltPrompt, build_prompt, swap_labels
from ..sharing import LabState
from ..validation import head_name
from .discrimination import swap_reading
from .evaluation import predict_prompt
from .heads import default_voters
from .readout import label_attention_table, label_mass, paired_effect, swap_check

# The prepared prompt. Chosen on the default model (Qwen2.5-Coder-0.5B, the report's context heads) among 66
# candidates (11 demonstration sets x 6 queries) as one where every step shows its point: knocking out the
# in-context heads moves the margin beyond every random set, and the label swap splits that change into +0.82
# that flips with the labels and +0.14 that stays, while the label voters' change is mostly a constant vote
# (-2.19 of -2.87); the prediction follows the swapped labels. A test on the default model checks that the
# lesson's words follow its numbers on this prompt (``tests/test_default_model.py``).
LESSON_STATE = LabState(
    demos=[("I wanted my money back", "bar"),
           ("a triumph of clever writing", "foo"),
           ("painfully unfunny from start to finish", "bar"),
           ("one of the most delightful films in years", "foo"),
           ("a tedious, lifeless script", "bar"),
           ("a wonderful, moving film with superb acting", "foo")],
    query="I hated every minute of it",
)


@dataclass(frozen=True)
class Step:
    title: str
    explanation: str


STEPS = [
    Step("Demonstrations and label positions",
         "The prompt shows the model a few sentences labelled with arbitrary words (foo for positive, bar for "
         "negative); the model must predict the query's label at the last position T, and the label words sit at "
         "the label positions."),
    Step("Attention from T",
         "A few deep in-context heads look back from T to the label positions: the label whose positions get more "
         "of their attention is the label they copy into the prediction."),
    Step("Readers and voters",
         "Knock out the in-context heads' attention from T to the label positions, beside as many random heads of "
         "the same layers (the control). Then tell two kinds of heads apart with the label swap: a head that reads "
         "the demonstrations moves the margin one way with the labels as written and the other way when every label "
         "is swapped; a label voter pushes toward the same label either way, which moves accuracy without helping "
         "the model tell the classes apart."),
    Step("The label swap",
         "Swap every demonstration's label: the heads still copy foo from foo positions, but their attention moves "
         "to the positions whose sentences resemble the query, so the prediction follows the swapped labels."),
    Step("The two biases",
         "More demonstrations of one label give it more positions to attract attention (majority bias), and labels "
         "close to the query attract more (recency bias); the paper's fixes act inside the in-context heads."),
]


@dataclass
class StepResult:
    sentence: str
    metrics: list[tuple[str, str, str | None]] = field(default_factory=list)  # (label, value, delta)
    table: pd.DataFrame | None = None


def _p(pred, w) -> str:
    return f"{pred.probs[w]:.2f}"


def step_result(lm, step: int, demos, query: str, label_words, template: str, heads, draws: int = 3,
                voters=None) -> StepResult:
    """Step ``step``'s (0-based) live result on the prompt (demos as (text, label word)) with the chosen heads
    (``voters``: the label voters step 2 sets beside them; default: those the report found on this model).

    Raises PromptError for a prompt that cannot be built.
    """
    heads = [tuple(h) for h in heads]
    demos = [(str(t), str(lab)) for t, lab in demos]

    def _rebuild(ds) -> BuiltPrompt:
        return build_prompt(lm.tokenizer, ds, query, tuple(label_words), template, max_tokens=lm.context_length)

    prompt = _rebuild(demos)
    words = prompt.label_words
    before = predict_prompt(lm, prompt)
    if step == 0:
        pos = {w: [p for p, lab in zip(prompt.label_positions, prompt.demo_labels) if lab == w] for w in words}
        sentence = (f"{len(prompt.label_positions)} demonstrations, {prompt.n_tokens} tokens; "
                    + "; ".join(f"{w} at positions {', '.join(map(str, ps))}" for w, ps in pos.items())
                    + f"; T is position {prompt.last_position}. The model predicts {before.predicted} "
                    f"(p = {before.probs[before.predicted]:.2f}).")
        return StepResult(sentence, [("Prediction", before.predicted, None),
                                     (f"p({before.predicted})", _p(before, before.predicted), None)])
    if step == 1:
        mass = label_mass(prompt, before.capture, heads)
        top = max(mass, key=mass.get)
        sentence = (f"Summed over the {len(heads)} in-context heads ({', '.join(map(head_name, heads))}), T attends "
                    + ", ".join(f"{mass[w]:.2f} to the {w} positions" for w in words)
                    + f": most to {top}; the model predicts {before.predicted}"
                    + (", the same label." if top == before.predicted else ", a different label."))
        table = label_attention_table(prompt, before.capture, heads, "before")
        return StepResult(sentence, [(f"attention on {w}", f"{mass[w]:.2f}", None) for w in words], table)
    if step == 2:
        eff = paired_effect(lm, prompt, heads, "knockout", draws=draws)
        lo, hi = eff.random_range
        readers = swap_check(lm, demos, query, words, template, heads, "knockout", per_head=False)
        voters = [tuple(h) for h in (voters if voters is not None else default_voters(lm.name, lm.n_layers,
                                                                                         lm.n_heads))]
        voters = [h for h in voters if h not in set(heads)]
        sentence = (eff.sentence() + f" Split by the label swap, the in-context heads' change "
                    f"{readers.split['change']:+.2f} is {readers.split['context']:+.2f} that flips with the labels and "
                    f"{readers.split['prior']:+.2f} that stays: {swap_reading(readers.split, words)}.")
        metrics = [("Δ margin, in-context heads", f"{eff.icl_change:+.2f}", None),
                   (f"Δ margin, random heads (mean of {eff.n_draws})", f"{eff.random_mean:+.2f}",
                    f"range {lo:+.2f} to {hi:+.2f}"),
                   ("in-context heads: part that flips", f"{readers.split['context']:+.2f}", None)]
        rows = [{"heads": "in-context heads", "set": ", ".join(map(head_name, heads)), **readers.split}]
        if voters:
            vote = swap_check(lm, demos, query, words, template, voters, "knockout", per_head=False)
            sentence += (f" The label voters ({', '.join(map(head_name, voters))}) change it by "
                         f"{vote.split['change']:+.2f}: {swap_reading(vote.split, words)}.")
            metrics.append(("label voters: part that stays", f"{vote.split['prior']:+.2f}", None))
            rows.append({"heads": "label voters", "set": ", ".join(map(head_name, voters)), **vote.split})
        table = pd.DataFrame(rows).rename(columns={"change": "Δ margin", "context": "flips with the labels",
                                                   "prior": "stays (a vote)"})
        return StepResult(sentence, metrics, table)
    if step == 3:
        swapped = _rebuild([(d.text, d.label) for d in swap_labels(demos, words)])
        after = predict_prompt(lm, swapped)
        m0, m1 = label_mass(prompt, before.capture, heads), label_mass(swapped, after.capture, heads)
        follows = after.predicted != before.predicted
        sentence = (f"Original labels: prediction {before.predicted}; swapped labels: {after.predicted}"
                    + (" — the prediction follows the swapped labels." if follows else
                       " — the prediction does not follow the swap on this prompt.")
                    + " Attention on " + ", ".join(f"{w} positions {m0[w]:.2f} → {m1[w]:.2f}" for w in words) + ".")
        return StepResult(sentence, [("Prediction, original labels", before.predicted, None),
                                     ("Prediction, swapped labels", after.predicted, None)])
    if step == 4:
        first, second = words[0], words[1]
        # majority: drop demonstrations of the second label until the first has twice as many (at least one left)
        n_second = sum(lab == second for _, lab in demos)
        keep = max(1, sum(lab == first for _, lab in demos) // 2)
        dropped, maj = 0, []
        for t, lab in demos:
            if lab == second and n_second - dropped > keep:
                dropped += 1
                continue
            maj.append((t, lab))
        # recency: every demonstration of the second label last
        rec = [d for d in demos if d[1] != second] + [d for d in demos if d[1] == second]
        rows = []
        for arr, ds in (("as written", demos), (f"{first}-majority", maj), (f"all {second} last", rec)):
            p = _rebuild(ds)
            for cond, kind in (("no fix", "none"), ("majority fix", "majority_fix"),
                              ("recency fix", "remove_positional_score")):
                if kind == "remove_positional_score" and not lm.can_remove_positional_score:
                    continue
                pred = predict_prompt(lm, p, Plan(kind, tuple(heads)), capture=False)
                rows.append({"demonstrations": arr, "condition": cond, "counts": " / ".join(
                    f"{sum(lab == w for _, lab in ds)} {w}" for w in words), "predicted": pred.predicted,
                    **{f"p({w})": round(pred.probs[w], 3) for w in words}})
        table = pd.DataFrame(rows)
        nf = table[table.condition == "no fix"].set_index("demonstrations")
        pm = f"p({first})"
        d_maj = nf.loc[f"{first}-majority", pm] - nf.loc["as written", pm]
        d_rec = nf.loc[f"all {second} last", pm] - nf.loc["as written", pm]
        sentence = (f"With more {first} demonstrations p({first}) changes by {d_maj:+.2f} "
                    + ("(towards the majority, as majority bias predicts)" if d_maj > 0 else
                       "(not towards the majority on this prompt)")
                    + f"; with every {second} last it changes by {d_rec:+.2f} "
                    + ("(towards the last label, as recency bias predicts)" if d_rec < 0 else
                       "(not towards the last label on this prompt)")
                    + ". One prompt is an illustration, not a measurement: the Bias lab measures both over a dataset.")
        return StepResult(sentence, [(f"p({first}) shift, majority", f"{d_maj:+.2f}", None),
                                     (f"p({first}) shift, {second} last", f"{d_rec:+.2f}", None)], table)
    raise ValueError(f"the lesson has {len(STEPS)} steps; step {step} does not exist")
