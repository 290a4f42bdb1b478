"""Copies that must not drift. The packages stay independent (none imports another), so a few small helpers exist
once per package: whether a name can only be a local path, and the `\\boxed{...}` and `<answer>...</answer>`
parsers. One table of cases per helper, and every package's copy must pass all of it."""

from __future__ import annotations

import pytest

from hf_compress import answers as compress_answers
from hf_compress import validation as compress_validation
from hf_flowcredit import answer as flowcredit_answer
from hf_flowcredit import intervention as flowcredit_intervention

LOOKS_LOCAL = {
    "hf_compress": compress_validation.looks_local,
    "hf_flowcredit": flowcredit_intervention._looks_local,
}

LOCAL_PATHS = [
    "/a",
    "./a",
    "../a",
    "~/a",
    "~",
    ".",
    "..",
    "runs/sft/model",
    "a/b/c",
    "x/",
    "org/name/",
    "a--b",
    "m..x",
    ".hidden",
    "with space",
    "org/with space",
    "a/b c",
]
HUB_IDS = ["Qwen/Qwen3-4B", "gpt2", "runs", "org/name.v2", "a-b/c_d", "HuggingFaceTB/SmolLM2-135M-Instruct", "x.y"]


@pytest.mark.parametrize("package", sorted(LOOKS_LOCAL))
def test_looks_local_agrees_on_every_case(package):
    looks_local = LOOKS_LOCAL[package]
    assert [name for name in LOCAL_PATHS if not looks_local(name)] == [], "taken for Hub ids"
    assert [name for name in HUB_IDS if looks_local(name)] == [], "taken for local paths"


# The content of every closed marker, in order of where it opens.
BOXED_CASES = [
    ("no answer here", []),
    ("so \\boxed{4}.", ["4"]),
    ("\\boxed{\\frac{1}{2}}", ["\\frac{1}{2}"]),
    ("first \\boxed{1}, then \\boxed{2}", ["1", "2"]),
    ("\\boxed {3}", ["3"]),
    ("\\boxed{}", [""]),
    ("\\boxed{a{b}c}", ["a{b}c"]),
    ("\\boxed{unclosed", []),
    ("\\boxed{a}}", ["a"]),
    ("{\\boxed{x}", ["x"]),
    ("\\boxed{\\boxed{5}}", ["\\boxed{5}", "5"]),
    ("\\boxed{1} \\boxed{2", ["1"]),
    ("\\boxed{" * 50 + "7" + "}" * 3, ["\\boxed{\\boxed{7}}", "\\boxed{7}", "7"]),
]
ANSWER_TAG_CASES = [
    ("<answer>7</answer>", ["7"]),
    ("<answer>1</answer> and <answer>2</answer>", ["1", "2"]),
    ("<answer>open", []),
    ("<answer>a<answer>b</answer>", ["a<answer>b"]),
    ("<answer></answer>", [""]),
    ("</answer><answer>3</answer>", ["3"]),
]

BOXED = {
    "hf_compress": lambda text: [text[a:b] for _, a, b, _ in sorted(compress_answers._boxed(text))],
    "hf_flowcredit": lambda text: [text[a:b] for a, b in flowcredit_answer._boxed_spans(text)],
}
ANSWER_TAGS = {
    "hf_compress": lambda text: [text[a:b] for _, a, b, _ in compress_answers.answer_tags(text)],
    "hf_flowcredit": lambda text: [text[a:b] for a, b in flowcredit_answer._answer_tag_spans(text)],
}


@pytest.mark.parametrize("package", sorted(BOXED))
def test_boxed_parsers_agree_on_every_case(package):
    found = {text: BOXED[package](text) for text, _ in BOXED_CASES}
    assert found == dict(BOXED_CASES)


@pytest.mark.parametrize("package", sorted(ANSWER_TAGS))
def test_answer_tag_parsers_agree_on_every_case(package):
    found = {text: ANSWER_TAGS[package](text) for text, _ in ANSWER_TAG_CASES}
    assert found == dict(ANSWER_TAG_CASES)
