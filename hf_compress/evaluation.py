"""Evaluate a student: greedy, batched decoding with a token cap, accuracy with the pipeline's verifier, output
length statistics and wall-clock time.

The result is a summary (`eval.json`) and a per-problem `datasets` table (`eval_table/`, with the completion, its
correctness, its token count and whether it hit the cap) in the output folder.

    >>> summary, table = evaluate_student("runs/compress/students/raw", test_set, max_new_tokens=8192)
    >>> save_evaluation(summary, table, "runs/compress/students/raw")
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .backends import BackendConfig, SamplingConfig, TeacherBackend, resolve_backend
from .constants import EVAL_FILE, EVAL_TABLE_DIR
from .durable import save_to_disk, write_json_atomically
from .hardware import bf16_supported, resolve_attn_implementation
from .stages import run_stage
from .tasks import gold_columns, gold_references, resolve_task
from .validation import looks_local
from .verify import check_texts

PERCENTILES = (50, 90, 99)


def pipeline_verifier(task: str = "math", answer_column: str = "answer", timeout_seconds: int = 5):
    """The checks `hf-compress verify` applies (math-verify with exact and numeric fallbacks, or Countdown), as a
    function of (completions, eval rows) -> correct flags."""

    def verifier(texts: list[str], rows: dict) -> list[bool]:
        return [check.correct for check in check_texts(rows, texts, task, answer_column, timeout_seconds)]

    return verifier


def load_answer_accuracy(task: str = "math"):
    """The `answer_accuracy` `evaluate` metric shipped with hf_compress (`hf_compress.metrics.ANSWER_ACCURACY`; config
    `math` or `countdown`), loaded from the installed package: no network. `hf-compress eval` scores with it."""
    import evaluate

    from .metrics import ANSWER_ACCURACY

    return evaluate.load(ANSWER_ACCURACY, task, keep_in_memory=True)


def answer_accuracy_scores(
    metric, texts: list[str], gold: dict, counts: list[int], task: str, answer_column: str
) -> dict[str, Any]:
    """`metric.compute` on completions and the eval rows' gold columns, with the per-completion flags (`correct`)."""
    references = gold_references(task, gold, answer_column)
    return metric.compute(predictions=texts, references=references, output_tokens=counts, return_correct=True)


def eval_prompts(dataset: Dataset) -> list[list[dict]]:
    """Conversational prompts from a `prompt` column, a `messages` column (its final assistant turn dropped) or a
    `problem` column (one user turn)."""
    if "prompt" in dataset.column_names:
        return list(dataset["prompt"])
    if "messages" in dataset.column_names:
        return [messages[:-1] if messages[-1]["role"] == "assistant" else messages for messages in dataset["messages"]]
    if "problem" in dataset.column_names:
        return [[{"role": "user", "content": problem}] for problem in dataset["problem"]]
    raise ValueError(
        f"The eval set needs a `prompt`, `messages` or `problem` column to build prompts from; it has {dataset.column_names}."
    )


def load_student_for_eval(
    path: str, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A trained student folder: full weights, or a LoRA adapter merged into its base model. `trust_remote_code`
    loads students whose modeling code is saved with them (e.g. `hf_dla` models), as in `hf-compress sft`."""
    if looks_local(path) and not os.path.isdir(path):
        raise FileNotFoundError(
            f"student {path} is not a folder here (relative to {os.getcwd()}; a typo, or another working directory?)."
        )
    dtype = torch.bfloat16 if bf16_supported() else torch.float32
    attn = resolve_attn_implementation(None)
    if os.path.exists(os.path.join(path, "adapter_config.json")):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn, trust_remote_code=trust_remote_code
        ).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn, trust_remote_code=trust_remote_code
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def _stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    configured = model.generation_config.eos_token_id
    configured = [configured] if isinstance(configured, int) else list(configured or [])
    return set(configured) | {tokenizer.eos_token_id}


def _output_length(row: list[int], stop_ids: set[int]) -> int:
    """Generated tokens up to and including the first stop token (all of them when it never stopped)."""
    return next((i + 1 for i, token in enumerate(row) if token in stop_ids), len(row))


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict]],
    *,
    max_new_tokens: int = 8192,
    batch_size: int = 32,
) -> tuple[list[str], list[int], list[bool]]:
    """Greedy completions (text, token count, hit the cap) of conversational prompts, in input order.

    Prompts are sorted by length so that a batch holds little padding; padding is on the left.
    """
    prompts = list(prompts)  # a `datasets` Column is not a list of conversations to `apply_chat_template`
    if tokenizer.pad_token is None:  # base-model tokenizers often have none; padding positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    stop_ids = _stop_token_ids(model, tokenizer)
    rendered = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
    lengths = [len(ids) for ids in rendered["input_ids"]]
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    texts, counts, capped = [None] * len(prompts), [0] * len(prompts), [False] * len(prompts)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="greedy decoding"):
            indices = order[start : start + batch_size]
            batch = tokenizer.apply_chat_template(
                [prompts[i] for i in indices],
                add_generation_prompt=True,
                return_tensors="pt",
                padding=True,
                return_dict=True,
            ).to(model.device)
            output = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            for i, row in zip(indices, output[:, batch["input_ids"].shape[1] :].tolist()):
                counts[i] = _output_length(row, stop_ids)
                capped[i] = counts[i] == max_new_tokens and row[counts[i] - 1] not in stop_ids
                texts[i] = tokenizer.decode(row[: counts[i]], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
    return texts, counts, capped


def evaluate_student(
    model: str | PreTrainedModel,
    dataset: Dataset,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_new_tokens: int = 8192,
    batch_size: int = 32,
    task: str = "auto",
    answer_column: str = "answer",
    verifier: Callable[[list[str], dict], list[bool]] | None = None,
    trust_remote_code: bool = False,
    output_dir: str | None = None,
    shard_size: int = 1024,
    overwrite: bool = False,
) -> tuple[dict[str, Any], Dataset]:
    """Greedy accuracy and output length of a student on an eval set with gold answers.

    `model` is the student: a folder (or Hub id), or a model object with its `tokenizer`, decoded here with
    `greedy_generate` (`batch_size` prompts per call); or a teacher backend that serves it (a `TeacherBackend`, or
    a `BackendConfig`: `vllm`, `openai` with its server pool), asked for one greedy completion per problem
    (`temperature=0`, `max_new_tokens`). A `BackendConfig(backend="transformers")` is the student folder
    `config.model`, decoded here. With `output_dir`, completions are made shard by shard (`shard_size` problems)
    and saved there as they finish (a stage folder, see `stages.run_stage`): a killed run restarted with the same
    arguments resumes after the last finished shard; a batch never spans two shards, so with the whole set in one
    shard the completions are those of an unsharded run.

    Correctness is judged as `hf-compress verify` judges teacher traces (`task="auto"`: Countdown when the set has
    `numbers` and `target` columns, math otherwise), through the `answer_accuracy` evaluate metric
    (`hf_compress.metrics.ANSWER_ACCURACY`), unless `verifier(completions, rows) -> flags` is given.
    Returns the summary (accuracy and its standard error, mean and percentile output tokens, output tokens per
    correct answer, share of outputs cut by the cap, seconds) and the per-problem table.
    """
    task = resolve_task(dataset, task)
    golds = gold_columns(task, answer_column)
    missing = [column for column in golds if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The eval set has no {missing} column(s) (it has {dataset.column_names}): accuracy needs the gold "
            "answers. Evaluate on a split with answers, or pass answer_column=."
        )
    if len(dataset) == 0:
        raise ValueError("The eval set is empty.")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}.")
    if isinstance(model, BackendConfig) and model.backend == "transformers":
        model.check(model_required=True)
        model = model.model  # the student folder, loaded and decoded here as any student
    complete, name = _completion_source(
        model, tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size, trust_remote_code=trust_remote_code
    )
    prompts = eval_prompts(dataset)
    gold = dataset.select_columns(golds).to_dict()
    metric = None if verifier is not None else load_answer_accuracy(task)  # loaded before the long part

    start = time.perf_counter()
    if output_dir is None:
        texts, counts, capped = complete(prompts)
    else:
        texts, counts, capped = _complete_in_shards(
            complete,
            prompts,
            output_dir,
            shard_size=shard_size,
            overwrite=overwrite,
            arguments={"model": _describe(model, name), "max_new_tokens": max_new_tokens, "batch_size": batch_size},
        )
    seconds = time.perf_counter() - start
    if metric is None:
        correct, scores = [bool(flag) for flag in verifier(texts, gold)], {}
    else:
        scores = answer_accuracy_scores(metric, texts, gold, counts, task, answer_column)
        correct = scores.pop("correct")

    table = Dataset.from_dict(
        {
            "prompt": prompts,
            **gold,
            "completion": texts,
            "correct": correct,
            "output_tokens": counts,
            "hit_cap": capped,
        }
    )
    accuracy = float(scores.get("accuracy", np.mean(correct)))
    summary = {
        "model": name,
        "task": task,
        "n": len(correct),
        "accuracy": accuracy,
        "accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / len(correct)),
        "output_tokens_mean": float(np.mean(counts)),
        **{f"output_tokens_p{q}": float(np.percentile(counts, q)) for q in PERCENTILES},
        "output_tokens_max": int(max(counts)),
        "output_tokens_per_correct": float(sum(counts) / max(1, sum(correct))),
        "hit_cap_rate": float(np.mean(capped)),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "eval_seconds": seconds,
        **({"backend": _describe(model, name)["backend"]} if _is_backend(model) else {}),
    }
    return summary, table


def _is_backend(model) -> bool:
    return isinstance(model, (TeacherBackend, BackendConfig))


def _describe(model, name: str) -> dict | str:
    return model.describe() if _is_backend(model) else name


def _completion_source(model, tokenizer, *, max_new_tokens: int, batch_size: int, trust_remote_code: bool):
    """`(complete, name)`: `complete(prompts) -> (texts, token counts, hit the cap)`, greedy, in input order, and the
    model's name. Nothing is loaded before the first call (a finished, saved run loads no model)."""
    if _is_backend(model):
        sampling = SamplingConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        backend = functools.cache(lambda: resolve_backend(model))

        def complete_with_backend(prompts):
            generations = [samples[0] for samples in backend().generate(list(prompts), sampling, seed=0)]
            return (
                [g.text for g in generations],
                [g.num_tokens for g in generations],
                [g.finish_reason == "length" for g in generations],
            )

        return complete_with_backend, model.model_name
    name = model if isinstance(model, str) else getattr(model, "name_or_path", type(model).__name__)
    if not isinstance(model, str) and tokenizer is None:
        raise ValueError("Pass the tokenizer together with the model.")

    @functools.cache
    def student():
        return load_student_for_eval(model, trust_remote_code) if isinstance(model, str) else (model, tokenizer)

    def complete_here(prompts):
        return greedy_generate(*student(), prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)

    return complete_here, name


def _complete_in_shards(
    complete, prompts: list, output_dir: str, *, shard_size: int, overwrite: bool, arguments: dict
) -> tuple[list[str], list[int], list[bool]]:
    """`complete(prompts)` shard by shard, each finished shard saved in `output_dir` (resumable)."""
    rows = Dataset.from_dict({"index": list(range(len(prompts))), "prompt": [json.dumps(p) for p in prompts]})

    def process_shard(shard: Dataset, shard_index: int, progress) -> Dataset:
        texts, counts, capped = complete([prompts[i] for i in shard["index"]])
        progress.update(len(shard))
        return Dataset.from_dict(
            {"index": list(shard["index"]), "completion": texts, "output_tokens": counts, "hit_cap": capped}
        )

    done = run_stage(
        rows,
        process_shard,
        stage="eval",
        arguments=arguments,
        output_dir=output_dir,
        shard_size=shard_size,
        overwrite=overwrite,
    )
    return list(done["completion"]), list(done["output_tokens"]), list(done["hit_cap"])


def save_evaluation(summary: dict[str, Any], table: Dataset, output_dir: str) -> None:
    """The table first, then `eval.json` (which `report` reads) atomically: a crash never leaves a summary whose
    table is missing, nor a truncated summary."""
    os.makedirs(output_dir, exist_ok=True)
    save_to_disk(table, os.path.join(output_dir, EVAL_TABLE_DIR))
    write_json_atomically(os.path.join(output_dir, EVAL_FILE), summary)
