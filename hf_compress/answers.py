"""The final answer of a trace, whatever its format: the one extractor of hf_compress.

verify judges it, the extractive compressor keeps it as it was written, the LLM compressor's rewrite is checked by it
and build's `answer_only` and `truncated` targets carry it. Formats, in order of precedence:

- marked: `\\boxed{...}` (nested braces allowed) or `<answer>...</answer>`, the last one in the text;
- stated: `#### x` (GSM8K style, up to the end of the line) or `The answer is x` (`the final answer is x`, up to the
  end of the sentence), the last one in the text. An explicit marker wins over a statement wherever they stand,
  so that "\\boxed{7}. Let me check: the answer is clear" keeps 7.

The answer is looked for in the last `SEARCH_CHARS` characters of a trace (about 5,000 tokens: a final answer
followed by more is no final answer), and every finder is one pass over them: a completion that loops on `\\boxed{`,
unclosed braces, tags or blanks for a million characters is read in milliseconds, as fast as any other.
`answer_region` bounds what math-verify reads (its parser is not linear): the answer found, else the last
`TAIL_CHARS` characters. Together they make every check fast whatever the trace (`benchmarks/answer_parsing.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ANSWER_KINDS",
    "MAX_ANSWER_CHARS",
    "MAX_DOLLARS",
    "SEARCH_CHARS",
    "TAIL_CHARS",
    "Answer",
    "answer_region",
    "answer_span",
    "answer_tags",
    "extract_answer",
    "find_answer",
]

ANSWER_KINDS = ("boxed", "answer_tag", "hash", "answer_is")
# math-verify reads at most this much of a trace: an answer longer than MAX_ANSWER_CHARS is no final answer (it is
# judged by the exact and numeric comparisons alone), and a trace without one is read from its last TAIL_CHARS.
MAX_ANSWER_CHARS = 300
TAIL_CHARS = 300
SEARCH_CHARS = 20_000
MAX_DOLLARS = 8  # math-verify reads at most the last 4 `$...$` formulas of a region

_BOXED = re.compile(r"\\boxed\s*\{")
_BRACE = re.compile(r"[{}]")
_TAG_OPEN, _TAG_CLOSE = "<answer>", "</answer>"
_HASH = re.compile(r"####[ \t]*([^\n]*)")
# "The answer is <x>" up to the first ". ", newline or end of text, blanks around <x> left out. <x> is a first
# character, then runs of blanks each followed by a non-blank: each run is read a bounded number of times (the
# obvious `(.+?)[ \t]*` rescans the blanks after every character: quadratic). hf_flowcredit reads it the same way.
_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is:?[ \t]*([^\n](?:[ \t]*[^ \t\n])*?)[ \t]*(?:\.(?:\s|$)|\n|$)")


@dataclass(frozen=True)
class Answer:
    """A final answer found in a text: `text[start:end]` is the whole of it as written (`\\boxed{7}`, `#### 7`,
    `The answer is 7`), `text[first:last]` its content (`7`)."""

    kind: str
    start: int
    first: int
    last: int
    end: int
    content: str

    @property
    def marked(self) -> bool:
        return self.kind in ("boxed", "answer_tag")


def _boxed(text: str) -> list[tuple[int, int, int, int]]:
    """(start, first, last, end) of each closed `\\boxed{...}`, braces balanced (`\\boxed{\\frac{1}{2}}`). One pass
    with a stack of open braces: a `{` is closed by the `}` that pops it."""
    openings = {match.end() - 1: match.start() for match in _BOXED.finditer(text)}  # its `{` -> where it starts
    if not openings:
        return []
    found, stack = [], []
    for brace in _BRACE.finditer(text):
        if brace.group() == "{":
            stack.append(brace.start())
        elif stack:
            opening = stack.pop()
            if opening in openings:
                found.append((openings[opening], opening + 1, brace.start(), brace.start() + 1))
    return found


def answer_tags(text: str) -> list[tuple[int, int, int, int]]:
    """(start, first, last, end) of each `<answer>...</answer>`, as the non-greedy regex `<answer>(.*?)</answer>`
    finds them, without its rescan to the end of the text for every unclosed tag."""
    found, position = [], 0
    while (start := text.find(_TAG_OPEN, position)) >= 0:
        last = text.find(_TAG_CLOSE, start + len(_TAG_OPEN))
        if last < 0:  # no later tag can be closed either
            break
        found.append((start, start + len(_TAG_OPEN), last, last + len(_TAG_CLOSE)))
        position = last + len(_TAG_CLOSE)
    return found


def _stated(pattern: re.Pattern, text: str) -> list[tuple[int, int, int, int]]:
    found = []
    for match in pattern.finditer(text):
        first, last = match.span(1)
        while first < last and text[first].isspace():
            first += 1
        while last > first and text[last - 1].isspace():
            last -= 1
        if last > first:
            found.append((match.start(), first, last, last))
    return found


_FINDERS = {
    "boxed": _boxed,
    "answer_tag": answer_tags,
    "hash": lambda t: _stated(_HASH, t),
    "answer_is": lambda t: _stated(_ANSWER_IS, t),
}


def find_answer(text: str) -> Answer | None:
    """The final answer of `text` (the last marked one, else the last stated one, in its last `SEARCH_CHARS`
    characters; see the module docstring), or None when it states none."""
    offset = max(0, len(text) - SEARCH_CHARS)
    window = text[offset:]
    for kinds in (("boxed", "answer_tag"), ("hash", "answer_is")):
        found = [(spans, kind) for kind in kinds for spans in _FINDERS[kind](window)]
        if found:
            (start, first, last, end), kind = max(found)
            return Answer(
                kind, start + offset, first + offset, last + offset, end + offset, window[first:last].strip()
            )
    return None


def answer_region(text: str, answer: Answer | None = None) -> str:
    """What math-verify reads of `text`: the answer found (`\\boxed{}` around a marked one), or nothing when it is
    longer than `MAX_ANSWER_CHARS`; without an answer, the last `TAIL_CHARS` characters ("... so we get 14")."""
    answer = find_answer(text) if answer is None else answer
    if answer is None:
        return _last_formulas(text[-TAIL_CHARS:])
    if len(answer.content) > MAX_ANSWER_CHARS:
        return ""
    content = _last_formulas(answer.content)
    return f"\\boxed{{{content}}}" if answer.marked else content


def _last_formulas(region: str) -> str:
    """`region` from its `MAX_DOLLARS`-th last `$` on: math-verify parses every `$...$` pair it is given (`$1+` run
    over 300 characters took 0.1 s), and a final answer is in the last of them."""
    position = len(region)
    for _ in range(MAX_DOLLARS):
        position = region.rfind("$", 0, position)
        if position < 0:
            return region
    return region[position:]


def answer_span(text: str) -> tuple[int, int] | None:
    """Character span of the final answer as written (`\\boxed{7}`, `<answer>7</answer>`, `#### 7`,
    `The answer is 7`), or None."""
    answer = find_answer(text)
    return None if answer is None else (answer.start, answer.end)


def extract_answer(text: str) -> str | None:
    """The content of the final answer (`7` in each of the forms of `answer_span`), stripped; None if absent."""
    answer = find_answer(text)
    return None if answer is None else answer.content
