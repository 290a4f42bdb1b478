"""Locate the final answer of each completion and mark its tokens: the sinks of the attention flow.

Supported `answer_format`s (the last occurrence in the text wins; with "auto", the last one of any built-in kind):

- "boxed": the content of `\\boxed{...}`, nested braces allowed;
- "answer_tag": the content of `<answer>...</answer>`;
- "hash": what follows `#### ` up to the end of the line (GSM8K style);
- "answer_is": what follows `The answer is` (or `the final answer is`) up to the end of the sentence;
- "regex:<pattern>": the last match of the pattern, its first group if it has one;
- a callable `text -> (start, end) | None` returning a character span.

The character span is mapped to the completion's tokens: with the tokenizer's offset mapping when re-encoding the
text reproduces the generated ids, else (sampled ids that are not the canonical tokenization) by decoding prefixes
of the generated ids. Every token overlapping the span is an answer token.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable

import torch

__all__ = ["ANSWER_FORMATS", "answer_token_mask", "find_answer_span"]

ANSWER_FORMATS = ("auto", "boxed", "answer_tag", "hash", "answer_is")

_HASH = re.compile(r"####[ \t]*([^\n]*)")
# "The answer is <x>" up to the first ". ", newline or end of text, blanks around <x> left out. <x> is a first
# character, then runs of blanks each followed by a non-blank: each run is read a bounded number of times, where
# `(.+?)[ \t]*` rescanned the blanks after every character (quadratic: 40K blanks took a minute). It finds
# what that pattern found, character for character.
_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is:?[ \t]*([^\n](?:[ \t]*[^ \t\n])*?)[ \t]*(?:\.(?:\s|$)|\n|$)")
_BOXED = re.compile(r"\\boxed\s*\{")
_BRACE = re.compile(r"[{}]")
_TAG_OPEN, _TAG_CLOSE = "<answer>", "</answer>"

# Every finder is one pass over the text (linear in its length), so a completion that loops on `\boxed{`, unclosed
# braces or blanks costs what any other completion of its length costs; `_boxed_spans` is this package's only
# `\boxed{...}` parser.


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """Content spans of every balanced `\\boxed{...}` (braces may nest). One pass with a stack of open braces: a
    `{` is closed by the `}` that pops it (an unclosed `\\boxed{` has no span)."""
    openings = {match.end() - 1 for match in _BOXED.finditer(text)}  # the `{` of each `\boxed{`
    if not openings:
        return []
    spans, stack = [], []
    for brace in _BRACE.finditer(text):
        if brace.group() == "{":
            stack.append(brace.start())
        elif stack:
            opening = stack.pop()
            if opening in openings:
                spans.append((opening + 1, brace.start()))
    return sorted(spans)


def _answer_tag_spans(text: str) -> list[tuple[int, int]]:
    """Content spans of every `<answer>...</answer>`, as the non-greedy `<answer>(.*?)</answer>` finds them,
    without its rescan to the end of the text for every unclosed tag."""
    spans, position = [], 0
    while (start := text.find(_TAG_OPEN, position)) >= 0:
        end = text.find(_TAG_CLOSE, start + len(_TAG_OPEN))
        if end < 0:  # no later tag can be closed either
            break
        spans.append((start + len(_TAG_OPEN), end))
        position = end + len(_TAG_CLOSE)
    return spans


def _group_spans(pattern: re.Pattern, text: str) -> list[tuple[int, int]]:
    group = 1 if pattern.groups else 0
    return [match.span(group) for match in pattern.finditer(text)]


def _stripped(text: str, span: tuple[int, int]) -> tuple[int, int] | None:
    """The span without surrounding whitespace; None when nothing is left."""
    start, end = span
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


_BUILT_IN: dict[str, Callable[[str], list[tuple[int, int]]]] = {
    "boxed": _boxed_spans,
    "answer_tag": _answer_tag_spans,
    "hash": lambda text: _group_spans(_HASH, text),
    "answer_is": lambda text: _group_spans(_ANSWER_IS, text),
}


def _span_finder(answer_format: str | Callable) -> Callable[[str], tuple[int, int] | None]:
    """A function text -> the last non-empty answer span, for a format name, a `regex:` pattern or a callable."""
    if callable(answer_format):
        return answer_format
    if not isinstance(answer_format, str):
        raise TypeError(f"answer_format must be a string or a callable, got {type(answer_format).__name__}.")
    if answer_format.startswith("regex:"):
        try:
            pattern = re.compile(answer_format.removeprefix("regex:"))
        except re.error as error:
            raise ValueError(f"answer_format {answer_format!r} is not a valid regular expression: {error}.") from None
        finders = [lambda text: _group_spans(pattern, text)]
    elif answer_format == "auto":
        finders = list(_BUILT_IN.values())
    elif answer_format in _BUILT_IN:
        finders = [_BUILT_IN[answer_format]]
    else:
        raise ValueError(
            f"Unknown answer_format={answer_format!r}; use one of {ANSWER_FORMATS}, 'regex:<pattern>' or a callable."
        )

    def find(text: str) -> tuple[int, int] | None:
        spans = [_stripped(text, span) for finder in finders for span in finder(text)]
        spans = [span for span in spans if span is not None]
        return max(spans) if spans else None

    return find


def find_answer_span(text: str, answer_format: str | Callable = "auto") -> tuple[int, int] | None:
    """Character span `(start, end)` of the last answer in `text`, or None if there is none."""
    return _span_finder(answer_format)(text)


def _token_span(tokenizer, token_ids: list[int], text: str, span: tuple[int, int]) -> tuple[int, int]:
    """Indices `[first, last]` of the tokens (in `token_ids`, special tokens removed) that overlap the char span."""
    start, end = span
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if encoding["input_ids"] == token_ids:
        overlapping = [k for k, (a, b) in enumerate(encoding["offset_mapping"]) if a < end and b > start]
        return overlapping[0], overlapping[-1]
    # The sampled ids are not the canonical tokenization of the text: measure decoded prefixes instead.
    if tokenizer.decode(token_ids, skip_special_tokens=True) != text:
        raise ValueError(
            "completions_text does not match the decoded completion_ids; pass the texts TRL decoded from these ids "
            "(tokenizer.batch_decode(completion_ids, skip_special_tokens=True))."
        )

    def prefix_length(k: int) -> int:
        return len(tokenizer.decode(token_ids[: k + 1], skip_special_tokens=True))

    indices = range(len(token_ids))
    return bisect.bisect_right(indices, start, key=prefix_length), bisect.bisect_left(indices, end, key=prefix_length)


def answer_token_mask(
    completions_text: list[str],
    completion_ids: torch.LongTensor,
    tokenizer,
    answer_format: str | Callable = "auto",
) -> tuple[torch.BoolTensor, torch.BoolTensor]:
    """Mark the answer tokens of each completion.

    Args:
        completions_text: the decoded completions (`batch_decode(completion_ids, skip_special_tokens=True)`).
        completion_ids: `[B, Tc]` generated ids, right-padded. Special and padding tokens are never answer tokens.
        tokenizer: a fast (Rust) tokenizer, which provides offset mappings.
        answer_format: see the module docstring.

    Returns:
        `(mask, missing)`: bool `[B, Tc]`, True on answer tokens, and bool `[B]`, True where no answer was found
        (that row of `mask` is all False).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer and has no offset mapping; load it with "
            "AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    if completion_ids.dim() != 2:
        raise ValueError(f"completion_ids must be [B, Tc], got shape {tuple(completion_ids.shape)}.")
    if isinstance(completions_text, str) or len(completions_text) != completion_ids.shape[0]:
        raise ValueError(
            f"completions_text must be a list of {completion_ids.shape[0]} strings (one per row of completion_ids)."
        )
    find = _span_finder(answer_format)
    special = set(tokenizer.all_special_ids)
    mask = torch.zeros(completion_ids.shape, dtype=torch.bool, device=completion_ids.device)
    missing = torch.zeros(completion_ids.shape[0], dtype=torch.bool, device=completion_ids.device)
    for row, (text, ids) in enumerate(zip(completions_text, completion_ids.tolist())):
        if not isinstance(text, str):
            raise TypeError(f"completions_text[{row}] is {type(text).__name__}, expected the decoded string.")
        span = find(text)
        if span is not None and not (
            isinstance(span, tuple) and len(span) == 2 and 0 <= span[0] < span[1] <= len(text)
        ):
            raise ValueError(f"answer span {span!r} for completion {row} is not a (start, end) pair inside its text.")
        positions = [position for position, token in enumerate(ids) if token not in special]
        if span is None or not positions:
            missing[row] = True
            continue
        first, last = _token_span(tokenizer, [ids[p] for p in positions], text, span)
        mask[row, positions[first : last + 1]] = True
    return mask, missing
