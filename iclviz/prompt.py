"""Prompt building: demonstrations, label words, templates, label positions.

Label positions are found from the tokenizer's character offsets, never by searching
token strings, so that a label word that happens to occur inside a sentence is not
mistaken for a label position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import IclvizError

DEFAULT_LABEL_WORDS = ("foo", "bar")


class PromptError(IclvizError, ValueError):
    """A problem with the user's prompt that the app shows as a message."""


@dataclass(frozen=True)
class Template:
    """How one demonstration and the query are written.

    ``demo`` must contain ``{text}`` and ``{label}``, with ``{label}`` last; ``query`` is
    the demonstration shape cut just before the label.
    """

    name: str
    demo: str
    query: str
    separator: str

    def __post_init__(self):
        if "{text}" not in self.demo or not self.demo.endswith("{label}"):
            raise PromptError("a template's demonstration shape must contain {text} and end with {label}")
        if "{text}" not in self.query or "{label}" in self.query:
            raise PromptError("a template's query shape must contain {text} and no {label}")


TEMPLATES: dict[str, Template] = {
    # The paper's shape: "S1 : bar S2 : foo S3 :"
    "paper": Template("paper", demo="{text} : {label}", query="{text} :", separator="\n"),
    "review": Template("review", demo="Review: {text}\nLabel: {label}", query="Review: {text}\nLabel:",
                       separator="\n\n"),
    "sentence": Template("sentence", demo="Sentence: {text}\nAnswer: {label}", query="Sentence: {text}\nAnswer:",
                         separator="\n\n"),
}
DEFAULT_TEMPLATE = "review"


def get_template(template: str | Template) -> Template:
    if isinstance(template, Template):
        return template
    if template not in TEMPLATES:
        raise PromptError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[template]


@dataclass(frozen=True)
class Demonstration:
    text: str
    label: str


@dataclass
class BuiltPrompt:
    """A tokenized prompt with the positions the analyses need.

    ``label_positions[i]`` is the token index of demonstration ``i``'s label word,
    ``demo_labels[i]`` its label word, ``last_position`` the final token ``T``.
    ``label_token_ids[w]`` is the token id compared for label word ``w``.
    """

    text: str
    input_ids: list[int]
    label_positions: list[int]
    demo_labels: list[str]
    label_words: tuple[str, ...]
    label_token_ids: dict[str, int]
    demo_spans: list[tuple[int, int]]  # token index range [start, end) of each demonstration's sentence
    query_span: tuple[int, int]
    warnings: list[str] = field(default_factory=list)

    @property
    def last_position(self) -> int:
        return len(self.input_ids) - 1

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    def label_token_id_list(self) -> list[int]:
        return [self.label_token_ids[w] for w in self.label_words]

    def positions_of(self, word: str) -> list[int]:
        return [p for p, w in zip(self.label_positions, self.demo_labels) if w == word]


def check_label_words(label_words) -> tuple[str, ...]:
    words = tuple(str(w) for w in label_words)
    if len(words) < 2:
        raise PromptError("give at least two label words")
    for w in words:
        if not w.strip():
            raise PromptError("a label word is empty")
        if w != w.strip() or any(c.isspace() for c in w):
            raise PromptError(f"label word {w!r} contains white space; use one word")
    if len(set(words)) != len(words):
        raise PromptError(f"label words must differ; got {', '.join(words)}")
    return words


def _tokens_covering(offsets, start: int, end: int) -> list[int]:
    return [i for i, (a, b) in enumerate(offsets) if b > start and a < end and b > a]


def label_token_ids(tokenizer, label_words, template: str | Template = DEFAULT_TEMPLATE) -> dict[str, int]:
    """Token id of each label word as it appears after the template's separator.

    Raises PromptError if a word is several tokens or two words share their token.
    """
    template = get_template(template)
    words = check_label_words(label_words)
    ids: dict[str, int] = {}
    for w in words:
        demo = template.demo.format(text="x", label=w)
        start = demo.rindex(w)
        enc = tokenizer(demo, return_offsets_mapping=True, add_special_tokens=False)
        cover = _tokens_covering(enc["offset_mapping"], start, start + len(w))
        if len(cover) != 1:
            pieces = [tokenizer.decode([enc["input_ids"][i]]) for i in cover]
            raise PromptError(
                f"label word {w!r} is {len(cover)} tokens for this tokenizer ({pieces}); "
                "choose a word that is a single token"
            )
        ids[w] = enc["input_ids"][cover[0]]
    seen: dict[int, str] = {}
    for w, i in ids.items():
        if i in seen:
            raise PromptError(f"label words {seen[i]!r} and {w!r} map to the same token; choose distinct words")
        seen[i] = w
    return ids


def build_prompt(
    tokenizer,
    demonstrations,
    query: str,
    label_words=DEFAULT_LABEL_WORDS,
    template: str | Template = DEFAULT_TEMPLATE,
    max_tokens: int | None = None,
) -> BuiltPrompt:
    """Build the ICL prompt and find each label position from the tokenizer's offsets."""
    template = get_template(template)
    words = check_label_words(label_words)
    demos = [d if isinstance(d, Demonstration) else Demonstration(*d) for d in demonstrations]
    if not demos:
        raise PromptError("add at least one demonstration")
    query = (query or "").strip()
    if not query:
        raise PromptError("the query sentence is empty")
    for i, d in enumerate(demos):
        if not str(d.text).strip():
            raise PromptError(f"demonstration {i + 1} has no text")
        if d.label not in words:
            raise PromptError(f"demonstration {i + 1} has label {d.label!r}, which is not one of {', '.join(words)}")
    token_ids = label_token_ids(tokenizer, words, template)

    parts: list[str] = []
    label_chars: list[tuple[int, int]] = []
    text_chars: list[tuple[int, int]] = []
    cursor = 0
    for d in demos:
        text = " ".join(str(d.text).split())
        piece = template.demo.format(text=text, label=d.label)
        t0 = piece.index(text)
        text_chars.append((cursor + t0, cursor + t0 + len(text)))
        l0 = len(piece) - len(d.label)
        label_chars.append((cursor + l0, cursor + len(piece)))
        parts.append(piece + template.separator)
        cursor += len(piece) + len(template.separator)
    qtext = " ".join(query.split())
    qpiece = template.query.format(text=qtext)
    q0 = cursor + qpiece.index(qtext)
    full = "".join(parts) + qpiece

    # Special tokens the tokenizer adds (a BOS for Llama) have empty offsets and are never matched.
    enc = tokenizer(full, return_offsets_mapping=True, add_special_tokens=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    positions: list[int] = []
    warnings: list[str] = []
    for i, (a, b) in enumerate(label_chars):
        cover = _tokens_covering(offsets, a, b)
        if len(cover) != 1:
            raise PromptError(f"the label of demonstration {i + 1} does not form one token in context")
        p = cover[0]
        if ids[p] != token_ids[demos[i].label]:
            warnings.append(
                f"demonstration {i + 1}: the label token in context differs from the label token compared; "
                "the template's separator may merge with the label"
            )
        positions.append(p)
    demo_spans = []
    for a, b in text_chars:
        cover = _tokens_covering(offsets, a, b)
        demo_spans.append((cover[0], cover[-1] + 1))
    qcover = _tokens_covering(offsets, q0, q0 + len(qtext))
    present = {d.label for d in demos}
    missing = [w for w in words if w not in present]
    if missing:
        warnings.append(f"no demonstration has label {', '.join(missing)}: the model has nothing to copy for it")
    if max_tokens is not None and len(ids) > max_tokens:
        raise PromptError(
            f"the prompt is {len(ids)} tokens, longer than the model's context of {max_tokens}; "
            "remove demonstrations or shorten sentences"
        )
    return BuiltPrompt(
        text=full,
        input_ids=ids,
        label_positions=positions,
        demo_labels=[d.label for d in demos],
        label_words=words,
        label_token_ids=token_ids,
        demo_spans=demo_spans,
        query_span=(qcover[0], qcover[-1] + 1),
        warnings=warnings,
    )


def swap_labels(demonstrations, label_words=DEFAULT_LABEL_WORDS) -> list[Demonstration]:
    """Swap label words cyclically (foo->bar->foo for two labels)."""
    words = list(label_words)
    nxt = {w: words[(i + 1) % len(words)] for i, w in enumerate(words)}
    out = []
    for d in demonstrations:
        d = d if isinstance(d, Demonstration) else Demonstration(*d)
        out.append(Demonstration(d.text, nxt[d.label]))
    return out
