"""What a user can share: the prompt and the chosen heads, as JSON and as one URL query parameter.

No streamlit here. Untrusted input (an upload, a shared link) is validated by
``validation.parse_shared_state`` before it becomes a :class:`LabState`.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field

from .prompt import DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE, TEMPLATES
from .validation import head_name, load_json_limited, parse_shared_state

Head = tuple[int, int]

START_DEMOS: list[tuple[str, str]] = [
    ("a wonderful, moving film with superb acting", "foo"),
    ("dull, slow and far too long", "bar"),
    ("the best comedy I have seen this year", "foo"),
    ("a boring mess with no story at all", "bar"),
]
START_QUERY = "I loved every minute of it"


@dataclass
class LabState:
    """What a user can share: the prompt and the chosen heads."""

    demos: list[tuple[str, str]] = field(default_factory=lambda: list(START_DEMOS))
    query: str = START_QUERY
    label_words: tuple[str, ...] = DEFAULT_LABEL_WORDS
    template: str = DEFAULT_TEMPLATE
    heads: list[Head] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"demonstrations": [{"text": t, "label": lab} for t, lab in self.demos], "query": self.query,
                "label_words": list(self.label_words), "template": self.template,
                "heads": [head_name(h) for h in self.heads]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_query_param(self) -> str:
        """``z`` + URL-safe base64 of the deflated compact JSON (under half the plain encoding's length for a
        prompt of 16 demonstrations, so that a shared address stays short)."""
        raw = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        return COMPRESSED_PREFIX + base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def state_from_dict(d) -> LabState:
    """Validate untrusted data (an upload or a URL) into a LabState; ValueError with a clear message."""
    v = parse_shared_state(d, TEMPLATES)
    return LabState(v["demos"], v["query"], v["label_words"], v["template"], v["heads"])


def state_from_json(text: str | bytes) -> LabState:
    return state_from_dict(load_json_limited(text))


COMPRESSED_PREFIX = "z"  # the plain encoding's base64 of "{" starts with "e", so the two never collide
MAX_SHARED_JSON_BYTES = 1_000_000  # what a shared link may inflate to


def state_from_query_param(value: str) -> LabState:
    """A shared link's state: the compressed encoding, or the plain base64 JSON of older links. Inflating is
    bounded, so a small link cannot expand into a large allocation."""
    if not isinstance(value, str) or len(value) > 200_000:
        raise ValueError("the shared link is damaged or too long")
    compressed = value.startswith(COMPRESSED_PREFIX)
    body = value[1:] if compressed else value
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (ValueError, TypeError):
        raise ValueError("the shared link is damaged") from None
    if compressed:
        inflate = zlib.decompressobj()
        try:
            raw = inflate.decompress(raw, MAX_SHARED_JSON_BYTES)
        except zlib.error:
            raise ValueError("the shared link is damaged") from None
        if inflate.unconsumed_tail or not inflate.eof:
            raise ValueError("the shared link is damaged or too long")
    return state_from_json(raw)
