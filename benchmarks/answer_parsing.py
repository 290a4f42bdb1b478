"""Final-answer parsing against text length on adversarial completions: the linear parsers against the old ones,
then the whole check of a trace (`hf_compress.verify.check_math`: finding the answer, math-verify, the fallbacks).

    OMP_NUM_THREADS=1 python -m benchmarks.answer_parsing                          # 1K .. 1M characters
    python -m benchmarks.answer_parsing --lengths 1000 100000 --old_budget 1       # quick

Parsers (each on the whole text, as the pipeline calls them):

- `compress`: `hf_compress.verify.extract_answer` (verify, compress, build and eval go through the same parser);
- `flow`: `hf_flowcredit.answer.find_answer_span(text, "auto")` (every FlowGRPO completion);
- `old compress`, `old flow`: the implementations they replace, copied below verbatim: a rescan to the end of the
  text for every unclosed `\\boxed{` or `<answer>`, and the backtracking "answer is" regex. Timed only while the
  next length is expected (at quadratic growth) to finish within `--old_budget` seconds; "-" where skipped.

Families (every text is `length` characters, cut to it; none holds a well-formed answer except where said):

- `boxed_loop`: a completion looping on `\\boxed{` (`\\boxed{7} ` first: the answer to find is 7);
- `nested_unclosed`: `\\boxed{\\frac{1}{2` repeated: every unit opens three braces and closes one, so the nesting
  deepens and no `\\boxed{` is ever closed;
- `nested_closed`: `\\boxed{` nested length/16 deep around `1`, all closed: one answer per level (the
  innermost, last to start, wins);
- `tag_loop`: `<answer>` repeated, never closed;
- `boxed_open`: `\\boxed{` repeated, never closed (no answer);
- `blank_run`: `The answer is 5`, blanks, then `x` (the "answer is" pattern's worst case);
- `dollar_run`: `$1+` repeated: math-verify parses every `$...$` pair, its slowest input per character;
- `mixed`: a seeded random mix of `\\boxed{`, `{`, `}`, `<answer>`, `The answer is `, blanks and letters.

Times are the best of `--repeats` runs (one for the old parsers). The table is printed as it is measured.

The second table times `check_math(gold, text)` on the same families and on `boxed_open` (`\\boxed{` repeated, the
issue-26 case), against `old check`: the check before issue 26, which gave math-verify the whole text when it
found no marker (timed like the old parsers, under its 5 s deadline: "timeout" where it ran out).
"""

from __future__ import annotations

import argparse
import platform
import random
import re
import time

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
from math_verify import verify as math_verify_equal

from hf_compress.verify import check_math, extract_answer
from hf_flowcredit.answer import find_answer_span

# ----------------------------------------------------------------------------------------------------------
# The replaced implementations (hf_compress.verify and hf_flowcredit.answer before the linear parsers)
# ----------------------------------------------------------------------------------------------------------

_OLD_BOXED = re.compile(r"\\boxed\s*\{")
_OLD_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_OLD_HASH = re.compile(r"####[ \t]*([^\n]*)")
_OLD_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is:?[ \t]*(.+?)[ \t]*(?:\.(?:\s|$)|\n|$)")


def _old_boxed_contents(text: str) -> list[tuple[int, str]]:
    found = []
    for match in _OLD_BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found.append((match.start(), text[start:i]))
                break
    return found


def old_extract_answer(text: str) -> str | None:
    found = [(m.start(), m.group(1)) for m in _OLD_ANSWER_TAG.finditer(text)] + _old_boxed_contents(text)
    return max(found)[1].strip() if found else None


def _old_boxed_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth, start = 1, match.end()
        for position in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            if depth == 0:
                spans.append((start, position))
                break
    return spans


def old_find_answer_span(text: str) -> tuple[int, int] | None:
    finders = [_old_boxed_spans] + [
        (lambda pattern: lambda t: [m.span(1) for m in pattern.finditer(t)])(p)
        for p in (_OLD_ANSWER_TAG, _OLD_HASH, _OLD_ANSWER_IS)
    ]
    spans = []
    for finder in finders:
        for start, end in finder(text):
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if end > start:
                spans.append((start, end))
    return max(spans) if spans else None


# ----------------------------------------------------------------------------------------------------------
# Adversarial texts
# ----------------------------------------------------------------------------------------------------------


def _repeat(piece: str, length: int, head: str = "") -> str:
    return (head + piece * (length // len(piece) + 1))[:length]


def _nested_closed(length: int) -> str:
    depth = max(1, length // 16)
    core = "\\boxed{" * depth + "1" + "}" * depth
    return core + " " * max(0, length - len(core))


def _mixed(length: int) -> str:
    rng = random.Random(0)
    pieces = ["\\boxed{", "{", "}", "<answer>", "The answer is ", "    ", "\t", "x", "7", ". "]
    parts, size = [], 0
    while size < length:
        parts.append(rng.choice(pieces))
        size += len(parts[-1])
    return "".join(parts)[:length]


FAMILIES = {
    "boxed_loop": lambda n: _repeat("\\boxed{", n, head="\\boxed{7} "),
    "boxed_open": lambda n: _repeat("\\boxed{", n),
    "nested_unclosed": lambda n: _repeat("\\boxed{\\frac{1}{2", n),
    "nested_closed": _nested_closed,
    "tag_loop": lambda n: _repeat("<answer>", n),
    "blank_run": lambda n: "The answer is 5" + " " * max(0, n - 16) + "x",
    "dollar_run": lambda n: _repeat("$1+", n),  # many $...$ pairs: math-verify's slowest input per character
    "mixed": _mixed,
}


_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())


def old_check(gold: str, text: str, timeout_seconds: int = 5) -> bool:
    """The math check before issue 26: the old marker parser, and math-verify on the whole text without one."""
    predicted = old_extract_answer(text)
    gold_parsed = parse(f"\\boxed{{{gold}}}", _EXTRACTION, parsing_timeout=timeout_seconds)
    prediction = parse(
        f"\\boxed{{{predicted}}}" if predicted is not None else text, _EXTRACTION, parsing_timeout=timeout_seconds
    )
    return bool(prediction) and math_verify_equal(gold_parsed, prediction, timeout_seconds=timeout_seconds)


def check_table(families: list[str], lengths: list[int], old_budget: float, repeats: int) -> None:
    print("\n| family | length | check_math s | verdict (note) | old check s | ratio |")
    print("|---|---:|---:|---|---:|---:|")
    for family in families:
        last_old = None
        for length in sorted(lengths):
            text = FAMILIES[family](length)
            check = check_math("5", text)
            new_seconds = best_seconds(lambda t: check_math("5", t), text, repeats)
            expected = last_old[1] * (length / last_old[0]) ** 2 if last_old else 0.0
            old_cells = ["-", "-"]
            if last_old is None or (last_old[1] >= 0 and expected < old_budget):
                start = time.perf_counter()
                try:
                    old_check("5", text)
                    old_seconds = time.perf_counter() - start
                    old_cells = [f"{old_seconds:.4f}", f"{old_seconds / max(new_seconds, 1e-9):.0f}x"]
                except TimeoutError:
                    old_seconds = time.perf_counter() - start
                    old_cells = [f"{old_seconds:.1f} (timeout)", f"{old_seconds / max(new_seconds, 1e-9):.0f}x"]
                last_old = (length, old_seconds if old_cells[0][-1] != ")" else -1.0)
            else:
                last_old = (length, -1.0)
            verdict = f"{check.correct} ({check.note or '-'})"
            print(
                f"| {family} | {length:,} | {new_seconds:.4f} | {verdict} | " + " | ".join(old_cells) + " |",
                flush=True,
            )


def best_seconds(function, text: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function(text)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1_000, 4_000, 16_000, 64_000, 256_000, 1_000_000])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument(
        "--old_budget",
        type=float,
        default=4.0,
        help="Time an old parser at a length only if its expected time there is below this.",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| family | length | compress s | old compress s | ratio | flow s | old flow s | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    parsers = {"compress": (extract_answer, old_extract_answer), "flow": (find_answer_span, old_find_answer_span)}
    for family in args.families:
        last_old: dict[str, tuple[int, float]] = {}
        for length in sorted(args.lengths):
            text = FAMILIES[family](length)
            cells = []
            for name, (new, old) in parsers.items():
                # The same answer, checked where the old is quick (compress now reads "The answer is x" too).
                statements = name == "compress" and family in ("blank_run", "mixed", "dollar_run")
                if len(text) <= 2_000 and not statements and new(text) != old(text):
                    raise AssertionError(f"{family}: {name} disagrees with the old parser at {len(text)} characters")
                new_seconds = best_seconds(new, text, args.repeats)
                previous = last_old.get(name)
                expected = previous[1] * (length / previous[0]) ** 2 if previous else 0.0
                if previous is None or (previous[1] >= 0 and expected < args.old_budget):
                    old_seconds = best_seconds(old, text, 1)
                    last_old[name] = (length, old_seconds)
                    cells += [
                        f"{new_seconds:.4f}",
                        f"{old_seconds:.4f}",
                        f"{old_seconds / max(new_seconds, 1e-9):.0f}x",
                    ]
                else:
                    last_old[name] = (length, -1.0)
                    cells += [f"{new_seconds:.4f}", "-", "-"]
            print(f"| {family} | {length:,} | " + " | ".join(cells) + " |", flush=True)
    check_table(args.families, args.lengths, args.old_budget, args.repeats)


if __name__ == "__main__":
    main()
