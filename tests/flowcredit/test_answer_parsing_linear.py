"""find_answer_span in one pass: the same answers as the obvious (quadratic) parsers on short random texts, and the
right answers, promptly, on long adversarial completions (looping `\\boxed{`, unclosed nesting, long blank runs)."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_flowcredit.answer import _ANSWER_IS, _answer_tag_spans, _boxed_spans, find_answer_span

# The parsers before the linear ones: obviously correct, quadratic on adversarial text.
OLD_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is:?[ \t]*(.+?)[ \t]*(?:\.(?:\s|$)|\n|$)")
OLD_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
OLD_HASH = re.compile(r"####[ \t]*([^\n]*)")


def reference_boxed_spans(text):
    """From each `\\boxed{`, count braces to the end of the text until the depth returns to 0."""
    spans = []
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth = 1
        for position in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            if depth == 0:
                spans.append((match.end(), position))
                break
    return spans


def reference_find(text):
    spans = reference_boxed_spans(text) + [
        m.span(1) for pattern in (OLD_ANSWER_TAG, OLD_HASH, OLD_ANSWER_IS) for m in pattern.finditer(text)
    ]
    stripped = []
    for start, end in spans:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            stripped.append((start, end))
    return max(stripped) if stripped else None


PIECES = [
    "\\boxed{",
    "\\boxed {",
    "{",
    "}",
    "a",
    "7",
    " ",
    "\t",
    "\n",
    ".",
    ":",
    "<answer>",
    "</answer>",
    "The answer is",
    "the final answer is",
    "#### ",
]
texts = st.lists(st.sampled_from(PIECES), max_size=14).map("".join)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(texts)
def test_the_linear_parsers_find_what_the_obvious_ones_find(text):
    assert _boxed_spans(text) == reference_boxed_spans(text)
    assert _answer_tag_spans(text) == [m.span(1) for m in OLD_ANSWER_TAG.finditer(text)]
    assert [m.span(1) for m in _ANSWER_IS.finditer(text)] == [m.span(1) for m in OLD_ANSWER_IS.finditer(text)]
    assert find_answer_span(text) == reference_find(text)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet="\\boxed{} a", max_size=30))
def test_boxed_on_random_characters(text):
    assert _boxed_spans(text) == reference_boxed_spans(text)


N = 1_000_000  # characters: an 8K-token loop is about 19K; the old parsers needed hours for a million


def answer(text, answer_format="auto"):
    span = find_answer_span(text, answer_format)
    return None if span is None else text[span[0] : span[1]]


@pytest.mark.timeout(120)  # a regression to a quadratic parser would run for hours, not fail quietly
@pytest.mark.parametrize(
    "text, answer_format, expected",
    [
        ("\\boxed{7} " + "\\boxed{" * (N // 7), "auto", "7"),  # a completion looping on \boxed{ after its answer
        ("\\boxed{" * (N // 7), "boxed", None),
        ("\\boxed{\\frac{1}{2" * (N // 15), "auto", None),  # nesting deepens, nothing is ever closed
        ("\\boxed{" * (N // 8) + "1" + "}" * (N // 8), "boxed", "1"),  # the last one to start wins: the innermost
        ("<answer>" * (N // 8), "auto", None),
        ("<answer>3</answer>" + "<answer>" * (N // 8), "answer_tag", "3"),
        ("The answer is 5" + " " * N + "x", "answer_is", "5" + " " * N + "x"),  # the pattern's worst case
        ("The answer is 5." + " " * N, "auto", "5"),
        ("The answer is" + " " * N + "\n", "answer_is", None),
        ("#### 12\n" + "#" * N, "hash", "#" * (N - 4)),  # the later `####` line wins, the rest of its line
        ("The answer is \\boxed{4}. " + "{" * N, "auto", "4"),
    ],
    ids=[
        "boxed_loop",
        "boxed_loop_only",
        "nested_unclosed",
        "nested_closed",
        "tag_loop",
        "tag_then_loop",
        "blank_run",
        "blank_tail",
        "blank_line",
        "hash_run",
        "unclosed_braces",
    ],
)
def test_adversarial_completions_of_a_million_characters(text, answer_format, expected):
    assert answer(text, answer_format) == expected
