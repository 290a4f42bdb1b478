"""Embedded defaults shared by the demos and the tests: a locally built tokenizer, tiny causal LMs built
from configs, synthetic reasoning tasks with verifiable answers, and TRL-style reward functions.

Nothing here touches the model hub. Everything is deterministic under a seed.

    >>> from kit.tiny import build_tokenizer, tiny_causal_lm, make_task_dataset, arithmetic_reward
    >>> tok = build_tokenizer()
    >>> model = tiny_causal_lm("qwen3", tok, seed=0)
    >>> train = make_task_dataset("arithmetic", n=1000, seed=0, split="train")
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
)

from hf_compress.answers import extract_answer
from hf_compress.sft import EMBEDDED_CHAT_TEMPLATE

__all__ = [
    "CHAT_TEMPLATE",
    "TASKS",
    "TINY_ARCHS",
    "arithmetic_reward",
    "build_tokenizer",
    "countdown_reward",
    "extract_final_answer",
    "make_task_dataset",
    "reward_for_task",
    "tiny_causal_lm",
]

# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML with {% generation %} markers (TRL's `assistant_only_loss=True` needs them): the template
# hf-compress gives students, so the tiny models and the students it trains speak the same format.
CHAT_TEMPLATE = EMBEDDED_CHAT_TEMPLATE


def _tokenizer_corpus() -> list[str]:
    """Texts the BPE merges are learned from: the task formats, so numbers and operators tokenize compactly."""
    texts = []
    for task in TASKS:
        for row in _generate_rows(task, n=1500, seed=1234, split=None, max_ops=3, answer_format="boxed"):
            texts.append(row["problem"])
            texts.append(row["trace"])
    texts += ["The answer is", "<answer>", "</answer>", "Let me think step by step.", "user", "assistant", "system"]
    return texts


@functools.lru_cache(maxsize=1)
def _tokenizer_json(vocab_size: int) -> str:
    tokenizer = Tokenizer(models.BPE())
    # Digits are split one per token (as in Qwen/Llama-3 tokenizers) so arithmetic is learnable digit by digit.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    return tokenizer.to_str()


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained locally on the synthetic tasks, with a ChatML chat template.

    Byte-level means any text can be encoded (no unknown token) and offset mappings are exact.
    The result is the same on every call and every machine (the corpus is seeded, BPE training is deterministic).
    """
    if vocab_size < 300:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the byte alphabet alone needs 256 + 4 special tokens."
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
        padding_side="right",
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# ----------------------------------------------------------------------------------------------------------
# Tiny models
# ----------------------------------------------------------------------------------------------------------

TINY_ARCHS = ("qwen3", "llama", "gpt2")


def tiny_causal_lm(
    arch: str = "qwen3",
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """A randomly initialised causal LM of the named architecture, built from its config.

    `arch` is one of "qwen3", "llama", "gpt2" (GPT-2 has no grouped-query attention: num_kv_heads is ignored).
    """
    if arch not in TINY_ARCHS:
        raise ValueError(f"Unknown arch={arch!r}; choose one of {TINY_ARCHS}.")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}.")
    tokenizer = tokenizer or build_tokenizer()
    special = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    intermediate_size = intermediate_size or 4 * hidden_size
    if arch == "gpt2":
        config = GPT2Config(
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=intermediate_size,
            n_positions=max_position_embeddings,
            **special,
        )
    else:
        config_cls = Qwen3Config if arch == "qwen3" else LlamaConfig
        config = config_cls(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            head_dim=hidden_size // num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=True,
            **special,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


# ----------------------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------------------

TASKS = ("arithmetic", "countdown")
SPLITS = ("train", "test")
ANSWER_FORMATS = ("boxed", "answer_tag")


def _in_split(problem: str, split: str | None) -> bool:
    """Train and test are disjoint by construction: a problem's hash decides its split (1 in 8 goes to test)."""
    if split is None:
        return True
    bucket = int(hashlib.sha256(problem.encode()).hexdigest(), 16) % 8
    return (bucket == 0) == (split == "test")


def _format_answer(value: str, answer_format: str) -> str:
    return f"The answer is \\boxed{{{value}}}." if answer_format == "boxed" else f"<answer>{value}</answer>"


def _arithmetic_row(rng: random.Random, max_ops: int, answer_format: str) -> dict:
    n_ops = rng.randint(1, max_ops)
    numbers = [rng.randint(1, 20) for _ in range(n_ops + 1)]
    ops = [rng.choice("+-*") if numbers[i + 1] <= 5 else rng.choice("+-") for i in range(n_ops)]
    expression = " ".join([str(numbers[0])] + [f"{op} {n}" for op, n in zip(ops, numbers[1:])])
    steps, value = [], numbers[0]
    for op, n in zip(ops, numbers[1:]):  # left to right, as the prompt says
        new = value + n if op == "+" else value - n if op == "-" else value * n
        steps.append(f"{value} {op} {n} = {new}.")
        value = new
    problem = f"Compute {expression} from left to right."
    trace = " ".join(steps) + " " + _format_answer(str(value), answer_format)
    return {"problem": problem, "answer": str(value), "trace": trace}


def _countdown_row(rng: random.Random, max_ops: int, answer_format: str) -> dict:
    count = rng.randint(3, max(3, max_ops + 1))
    while True:
        numbers = [rng.randint(1, 12) for _ in range(count)]
        order = rng.sample(numbers, len(numbers))
        expression, value = str(order[0]), order[0]
        for n in order[1:]:
            op = rng.choice("+-*")
            new = value + n if op == "+" else value - n if op == "-" else value * n
            expression, value = f"({expression} {op} {n})", new
        if 0 < value <= 200:
            expression = expression[1:-1]  # the outermost parentheses are redundant
            break
    problem = (
        f"Using the numbers {numbers}, create an equation that equals {value}. "
        "Use each number exactly once with + - * /."
    )
    trace = f"{expression} = {value}. <answer>{expression}</answer>"
    del answer_format  # Countdown answers are expressions: always in <answer> tags, as in TinyZero.
    return {"problem": problem, "answer": str(value), "trace": trace, "numbers": numbers, "target": value}


def _generate_rows(task: str, n: int, seed: int, split: str | None, max_ops: int, answer_format: str):
    make_row = {"arithmetic": _arithmetic_row, "countdown": _countdown_row}[task]
    rng = random.Random(f"{task}-{seed}")
    seen, attempts = set(), 0
    while len(seen) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(
                f"Could not draw {n} distinct {task} problems for split={split!r}; lower n or raise max_ops."
            )
        row = make_row(rng, max_ops, answer_format)
        if row["problem"] in seen or not _in_split(row["problem"], split):
            continue
        seen.add(row["problem"])
        yield row


def make_task_dataset(
    task: str,
    n: int,
    seed: int = 0,
    split: str = "train",
    *,
    max_ops: int = 2,
    answer_format: str = "boxed",
) -> Dataset:
    """A synthetic reasoning task as a `datasets.Dataset`.

    Columns: `problem` (text), `answer` (gold final answer), `trace` (a worked solution ending in the answer),
    `prompt` / `completion` (TRL's conversational prompt-completion format) and, for Countdown,
    `numbers` and `target`. Train and test problems never overlap.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task={task!r}; choose one of {TASKS}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split={split!r}; choose one of {SPLITS}.")
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"Unknown answer_format={answer_format!r}; choose one of {ANSWER_FORMATS}.")
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if not isinstance(max_ops, int) or max_ops < 1:
        raise ValueError(f"max_ops must be an int >= 1, got {max_ops!r}.")
    rows = list(_generate_rows(task, n, seed, split, max_ops, answer_format))
    for row in rows:
        row["prompt"] = [{"role": "user", "content": row["problem"]}]
        row["completion"] = [{"role": "assistant", "content": row["trace"]}]
    return Dataset.from_list(rows)


# ----------------------------------------------------------------------------------------------------------
# Answers and rewards (TRL reward-function signature: completions + dataset columns as keyword arguments)
# ----------------------------------------------------------------------------------------------------------


def _completion_text(completion) -> str:
    """TRL passes plain strings for standard prompts and message lists for conversational ones."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion)


# The last `\\boxed{...}` or `<answer>...</answer>` content in a text, stripped; None if absent.
extract_final_answer = extract_answer


def _same_number(predicted: str | None, gold: str) -> bool:
    try:
        return predicted is not None and abs(float(predicted) - float(gold)) < 1e-6
    except ValueError:
        return False


def arithmetic_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 when the final answer equals the gold value, else 0.0."""
    return [float(_same_number(extract_final_answer(_completion_text(c)), a)) for c, a in zip(completions, answer)]


_EXPRESSION = re.compile(r"^[\d+\-*/() .]+$")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _countdown_score(text: str, numbers: list[int], target: int) -> float:
    matches = _ANSWER_TAG.findall(text)
    if not matches:
        return 0.0
    expression = matches[-1].strip()
    if not expression or not _EXPRESSION.match(expression):
        return 0.0
    try:
        value = eval(expression, {"__builtins__": {}}, {})  # safe: the regex admits only digits and operators
    except (SyntaxError, ZeroDivisionError, TypeError):
        return 0.0
    used = Counter(int(x) for x in re.findall(r"\d+", expression))
    if used == Counter(numbers) and abs(value - target) < 1e-5:
        return 1.0
    return 0.1


def countdown_reward(completions, numbers, target, **kwargs) -> list[float]:
    """TinyZero's Countdown reward: 1 for a correct expression using each number once, 0.1 for a well-formed
    but wrong one, 0 when no `<answer>` expression can be read."""
    return [_countdown_score(_completion_text(c), n, t) for c, n, t in zip(completions, numbers, target)]


def reward_for_task(task: str) -> Callable:
    if task not in TASKS:
        raise ValueError(f"Unknown task={task!r}; choose one of {TASKS}.")
    return {"arithmetic": arithmetic_reward, "countdown": countdown_reward}[task]
