"""Finding the final answer in one pass, and one deadline for the whole check of a trace.

The linear parser finds what the obvious (quadratic) one finds on short random texts, finds the right answer in
long adversarial completions (looping `\\boxed{`, unclosed nesting, unclosed tags), and `check_math` gives up at
`timeout_seconds` wherever the time goes (finding the answer, math-verify), on and off the main thread, and in
`hf-compress verify` as a user runs it."""

import importlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from datasets import Dataset, load_from_disk
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_compress.answers import SEARCH_CHARS
from hf_compress.build import answer_marker
from hf_compress.compress import ExtractiveCompressor
from hf_compress.verify import answer_span, check_countdown, check_math, extract_answer

verify_module = importlib.import_module("hf_compress.verify")  # `hf_compress.verify` is also the stage function
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OLD_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def reference_markers(text):
    """(start, content, end) of every marker, found the obvious way: the tag regex, and from each `\\boxed{` a brace
    count to the end of the text until the depth returns to 0."""
    found = [(m.start(), m.group(1), m.end()) for m in OLD_ANSWER_TAG.finditer(text)]
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth = 1
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found.append((match.start(), text[match.end() : i], i + 1))
                break
    return found


def reference_extract_answer(text):
    found = reference_markers(text)
    return max(found)[1].strip() if found else None


def reference_answer_span(text):
    found = reference_markers(text)
    return max((start, end) for start, _, end in found) if found else None


PIECES = ["\\boxed{", "\\boxed {", "{", "}", "x", "1", " ", "\n", "<answer>", "</answer>", "\\frac"]


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join))
def test_the_linear_parser_finds_what_the_obvious_one_finds(text):
    assert extract_answer(text) == reference_extract_answer(text)
    assert answer_span(text) == reference_answer_span(text)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet="\\boxed{}<answer/> 1", max_size=30))
def test_the_linear_parser_on_random_characters(text):
    assert extract_answer(text) == reference_extract_answer(text)
    assert answer_span(text) == reference_answer_span(text)


def test_the_answer_span_ends_at_the_closing_brace():
    # The old span searched the content again from the marker's start: `x` was found inside `\boxed`.
    for text in ("so \\boxed{x} done", "\\boxed{b}", "\\boxed{}", "\\boxed {d}."):
        start, end = answer_span(text)
        assert text[start:end] == text[text.index("\\boxed") : text.index("}") + 1]
    assert answer_marker("so \\boxed{x} done", "x") == "\\boxed{x}"
    assert ExtractiveCompressor().compress_one("a = 1. So \\boxed{x}") == "a = 1. \\boxed{x}"


N = 1_000_000  # characters: an 8K-token loop is about 19K; the old parser needed hours for a million


# Loops a completion can end in, a million characters long (an 8K-token loop is about 19K characters).
LOOPS = {
    "boxed_loop": "\\boxed{" * (N // 7),
    "nested_unclosed": "\\boxed{\\frac{1}{2" * (N // 15),  # nesting deepens, nothing is ever closed
    "unclosed_braces": "{" * N,
    "tag_loop": "<answer>" * (N // 8),
    "blanks": " " * N,
    "answer_is_blanks": "The answer is 5" + " " * N + "x",  # the worst case of the "answer is" pattern
    "hash_loop": "####" * (N // 4),
}


@pytest.mark.timeout(120)  # a regression to a quadratic parser would run for hours, not fail quietly
@pytest.mark.parametrize("loop", LOOPS.values(), ids=list(LOOPS))
def test_adversarial_completions_of_a_million_characters(loop):
    # The answer is read from the end of the trace: found after the loop, not before it (SEARCH_CHARS).
    assert extract_answer(loop + " \\boxed{7}") == "7"
    assert len(loop) > SEARCH_CHARS and extract_answer("\\boxed{7} " + loop) != "7"
    assert check_math("7", loop + " \\boxed{7}").correct
    check = check_math("7", "\\boxed{7} " + loop)
    assert not check.correct and check.note != "timeout"  # judged, well inside the deadline


@pytest.mark.timeout(120)
def test_countdown_answer_after_a_million_unclosed_tags():
    text = "<answer>3 * 4 + 5</answer>" + "<answer>" * (N // 8)
    assert check_countdown([3, 4, 5], 17, text).correct


def test_the_deadline_covers_finding_the_answer(monkeypatch):
    def slow_extract(text):
        time.sleep(30)

    monkeypatch.setattr(verify_module, "find_answer", slow_extract)
    start = time.perf_counter()
    check = check_math("7", "\\boxed{7}", timeout_seconds=1)
    assert time.perf_counter() - start < 10
    assert (check.correct, check.predicted, check.note) == (False, None, "timeout")


@pytest.mark.timeout(120)
def test_a_runaway_expression_times_out_on_and_off_the_main_thread():
    runaway = "\\boxed{9^{9^{9^{9}}}}"  # sympy would compute this for hours
    start = time.perf_counter()
    assert check_math("2", runaway, timeout_seconds=1).note == "timeout"
    assert time.perf_counter() - start < 10
    assert check_math("7", "\\boxed{7}", timeout_seconds=1).correct  # the timer is off again

    results = []
    thread = threading.Thread(target=lambda: results.append(check_math("2", runaway, timeout_seconds=1)))
    thread.start()
    thread.join()
    assert results[0].note == "timeout" and not results[0].correct


def test_the_callers_alarm_is_put_back():
    def handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 100)
        assert check_math("7", "\\boxed{7}", timeout_seconds=5).correct
        assert signal.getsignal(signal.SIGALRM) is handler and 90 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def hf_compress_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "hf-compress")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "hf_compress.cli"]


@pytest.mark.slow  # one `hf-compress verify` subprocess: about 10 s on the loaded 2-core CPU
def test_hf_compress_verify_keeps_to_its_timeout_on_adversarial_traces(tmp_path):
    generations = [
        "\\boxed{" * (N // 7) + " \\boxed{7}",  # an 8K-token loop would be 19K characters: this is 50 times that
        "\\boxed{\\frac{1}{2" * (N // 15),
        "\\boxed{9^{9^{9^{9}}}}",  # math-verify would not finish
        "3 + 4 = 7. \\boxed{7}",
    ]
    Dataset.from_dict(
        {"problem": [f"p{i}" for i in range(4)], "answer": ["7", "1/2", "2", "7"], "generation": generations}
    ).save_to_disk(str(tmp_path / "traces"))
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"}
    # 5 s: the linear parse of a million characters takes under 0.5 s on an idle core, several times that on a
    # loaded machine, and must still finish inside the deadline; the third trace never does.
    done = subprocess.run(
        [
            *hf_compress_command(),
            "verify",
            "--input",
            str(tmp_path / "traces"),
            "--output",
            str(tmp_path / "verified"),
            "--timeout_seconds",
            "5",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    verified = load_from_disk(str(tmp_path / "verified"))
    assert list(verified["correct"]) == [True, False, False, True]
    assert list(verified["predicted_answer"]) == ["7", None, None, "7"]
    assert list(verified["verify_note"]) == ["", "no_answer", "timeout", ""]


# ----------------------------------------------------------------------------------------------------------
# One answer, whatever its format, through verify, compress and build
# ----------------------------------------------------------------------------------------------------------

FORMS = {  # the trace's last line, as each kind of model writes it
    "boxed": "So the total is \\boxed{12}.",
    "answer_tag": "<answer>12</answer>",
    "hash": "#### 12",
    "answer_is": "The answer is 12.",
}


def test_every_answer_format_goes_through_verify_compress_and_build(tokenizer):
    from hf_compress.build import build
    from hf_compress.compress import compress
    from hf_compress.verify import verify

    rows = Dataset.from_dict(
        {
            "problem": [f"Compute 3 * 4 ({kind})." for kind in FORMS],
            "answer": ["12"] * len(FORMS),
            "generation": [f"Let me see. We need 3 * 4 = 12 here.\n{last}" for last in FORMS.values()],
        }
    )
    checked = verify(rows)
    assert checked["correct"] == [True] * 4 and checked["predicted_answer"] == ["12"] * 4
    compressed = compress(checked, ExtractiveCompressor(), tokenizer)
    assert compressed["compressed_correct"] == [True] * 4  # no answer_lost: the answer is kept as it was written
    assert compressed["compressed"] == [
        f"3 * 4 = 12. {last.removeprefix('So the total is ').rstrip('.')}" for last in FORMS.values()
    ]
    built = build(compressed, tokenizer, variants=["answer_only"])
    targets = [m[-1]["content"] for m in built["answer_only"]["messages"]]
    assert targets == ["\\boxed{12}", "<answer>12</answer>", "#### 12", "The answer is 12"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{7}. Let me check: the answer is clear.", "7"),  # a marker wins over a later statement
        ("The answer is 5.\n#### 6", "6"),  # statements: the last one
        ("The final answer is: $\\frac{1}{2}$.", "$\\frac{1}{2}$"),
        ("#### 1,234\n", "1,234"),
        ("so the answer is 42", "42"),
        ("no statement of 42 here", None),
    ],
)
def test_answer_precedence_and_statements(text, expected):
    assert extract_answer(text) == expected
    if expected is not None:
        assert check_math(expected.strip("$"), text).correct
