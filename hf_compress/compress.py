"""Stage 3: rewrite each trace shorter, then check that the final answer survived the rewrite.

Two compressors share one interface: `LLMCompressor` (any teacher backend, prompted with a versioned
template from `COMPRESSION_PROMPTS`) and `ExtractiveCompressor`, which needs no model: it keeps the
equations and the final-answer marker and drops the prose around them.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

from datasets import Dataset

from .answers import answer_span
from .backends import BackendConfig, SamplingConfig, TeacherBackend, resolve_backend
from .inputs import load_tokenizer
from .row_checks import ID_COLUMN
from .stages import open_stage, run_stage
from .tasks import gold_columns, resolve_task
from .verify import check_texts

# Versioned so that a dataset records exactly which instructions produced it; add versions, never edit one.
COMPRESSION_PROMPTS = {
    "v1": (
        "Rewrite the solution below as briefly as possible. Keep every equation and intermediate result needed "
        "to reach the answer; drop restatements of the problem, hesitation, checks that change nothing and filler "
        "words. End with the final answer written exactly as in the original (for example \\boxed{{...}} or "
        "<answer>...</answer>). Reply with the rewritten solution only.\n\n"
        "Problem:\n{problem}\n\nSolution:\n{trace}"
    ),
}

COMPRESSED_COLUMNS = (
    "compressed",
    "compressor",
    "compressed_correct",
    "compress_flag",
    "trace_chars",
    "compressed_chars",
    "char_ratio",
    "trace_tokens",
    "compressed_tokens",
    "token_ratio",
)


class Compressor(ABC):
    """Turns (problem, trace) pairs into shorter traces. `name` is recorded with every row."""

    name: str

    @abstractmethod
    def compress(self, problems: list[str], traces: list[str], seed: int = 0) -> list[str]: ...


class ExtractiveCompressor(Compressor):
    """Keeps each sentence's equation (the run of math around an `=`) and the final-answer marker."""

    name = "extractive-v1"
    _SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")
    _MATH_RUN = re.compile(r"(?:\\[a-zA-Z]+|[\d+\-*/^×÷=<>()\[\]{}.,\s]|\b[a-zA-Z]\b)+")

    def _equations(self, sentence: str) -> list[str]:
        runs = (m.group(0).strip(" ,.") for m in self._MATH_RUN.finditer(sentence))
        return [run for run in runs if "=" in run and run.strip("=")]

    def compress_one(self, trace: str) -> str:
        span = answer_span(trace)
        body, answer = (trace[: span[0]], trace[span[0] : span[1]]) if span else (trace, "")
        equations = [eq for sentence in self._SENTENCE_END.split(body) for eq in self._equations(sentence)]
        return ". ".join(equations + [answer]).strip(" .") if answer else ". ".join(equations)

    def compress(self, problems, traces, seed=0):
        return [self.compress_one(trace) for trace in traces]


class LLMCompressor(Compressor):
    """A teacher backend prompted with `COMPRESSION_PROMPTS[prompt_version]` (or a template of your own with
    `{problem}` and `{trace}` placeholders, recorded by its `prompt_version` name). A `BackendConfig` is built
    into its backend on the first rewrite, so a cached compress stage never loads the model."""

    def __init__(
        self,
        backend: TeacherBackend | BackendConfig,
        prompt_version: str = "v1",
        *,
        template: str | None = None,
        sampling: SamplingConfig | None = None,
    ):
        if template is None and prompt_version not in COMPRESSION_PROMPTS:
            raise ValueError(f"Unknown prompt_version {prompt_version!r}; known: {sorted(COMPRESSION_PROMPTS)}.")
        self.template = template or COMPRESSION_PROMPTS[prompt_version]
        for placeholder in ("{problem}", "{trace}"):
            if placeholder not in self.template:
                raise ValueError(f"The compression template must contain {placeholder}.")
        self.backend = backend
        self.sampling = sampling or SamplingConfig(n=1, temperature=0.0)
        if self.sampling.n != 1:
            raise ValueError("A compressor writes one rewrite per trace: use sampling.n == 1.")
        self.name = f"llm-{prompt_version}:{backend.model_name}"

    def compress(self, problems, traces, seed=0):
        conversations = [
            [{"role": "user", "content": self.template.format(problem=p, trace=t)}] for p, t in zip(problems, traces)
        ]
        self.backend = resolve_backend(self.backend)
        return [strip_reasoning(g[0].text) for g in self.backend.generate(conversations, self.sampling, seed=seed)]


def strip_reasoning(text: str) -> str:
    """The rewrite without a reasoning compressor's own thinking: what follows the last `</think>`. A rewrite that
    is still inside an unclosed `<think>` (it ran out of tokens while thinking) has no answer and becomes empty, so
    the answer check drops it instead of keeping the compressor's thoughts as a "compressed" trace."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1].strip()
    return "" if text.lstrip().startswith("<think>") else text.strip()


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def compress(
    dataset: Dataset,
    compressor: Compressor,
    tokenizer,
    *,
    task: str = "auto",
    completion_column: str = "generation",
    problem_column: str = "problem",
    answer_column: str = "answer",
    timeout_seconds: int = 5,
    output_dir: str | None = None,
    shard_size: int = 256,
    problems_per_call: int = 64,
    overwrite: bool = False,
    skip_invalid_rows: bool = False,
    id_column: str = ID_COLUMN,
) -> Dataset:
    """Add the compressed trace and its checks: `compressed`, `compressor`, `compressed_correct` (the
    compressed trace still verifies against the gold answer), `compress_flag` ("empty" when the compressor
    returned nothing, "answer_lost" when a correct trace's answer did not survive, "" otherwise), and
    character and token counts with `char_ratio` and `token_ratio` (compressed / original; 0 when empty).

    Rows that cannot be compressed and checked (a problem that is None or empty, a trace that is None, a gold that
    is None or blank) are refused when the input is read, each named by index (and id) and field, before any
    request; `skip_invalid_rows` leaves them out and counts them in the stage record. With `output_dir`, the run
    holds that folder's lock until it returns.
    """
    task = resolve_task(dataset, task)
    with open_stage(
        dataset,
        "compress",
        output_dir=output_dir,
        fields={completion_column: "trace", problem_column: "text"},
        golds=gold_columns(task, answer_column),
        added_columns=COMPRESSED_COLUMNS,
        skip_invalid_rows=skip_invalid_rows,
        id_column=id_column,
    ) as (dataset, skipped):
        return _compress(
            dataset,
            compressor,
            load_tokenizer(tokenizer),
            task=task,
            completion_column=completion_column,
            problem_column=problem_column,
            answer_column=answer_column,
            timeout_seconds=timeout_seconds,
            output_dir=output_dir,
            shard_size=shard_size,
            problems_per_call=problems_per_call,
            overwrite=overwrite,
            skipped=skipped,
        )


def _compress(
    dataset,
    compressor,
    tokenizer,
    *,
    task,
    completion_column,
    problem_column,
    answer_column,
    timeout_seconds,
    output_dir,
    shard_size,
    problems_per_call,
    overwrite,
    skipped,
) -> Dataset:

    def compress_batch(batch: dict, indices: list[int]) -> dict:
        traces = batch[completion_column]
        compressed = compressor.compress(batch[problem_column], traces, seed=indices[0])
        if "correct" in batch:
            original_correct = batch["correct"]
        else:
            original_correct = [c.correct for c in check_texts(batch, traces, task, answer_column, timeout_seconds)]
        kept = [c.correct for c in check_texts(batch, compressed, task, answer_column, timeout_seconds)]
        trace_chars, compressed_chars = [len(t) for t in traces], [len(c) for c in compressed]
        trace_tokens, compressed_tokens = _token_counts(tokenizer, traces), _token_counts(tokenizer, compressed)
        return {
            "compressed": compressed,
            "compressor": [compressor.name] * len(traces),
            "compressed_correct": kept,
            "compress_flag": [
                "empty" if not c.strip() else "answer_lost" if was and not now else ""
                for c, was, now in zip(compressed, original_correct, kept)
            ],
            "trace_chars": trace_chars,
            "compressed_chars": compressed_chars,
            "char_ratio": [c / max(1, t) for c, t in zip(compressed_chars, trace_chars)],
            "trace_tokens": trace_tokens,
            "compressed_tokens": compressed_tokens,
            "token_ratio": [c / max(1, t) for c, t in zip(compressed_tokens, trace_tokens)],
        }

    def process_shard(shard: Dataset, shard_index: int, progress) -> Dataset:
        def compress_and_count(batch, indices):
            result = compress_batch(batch, [shard_index * shard_size + i for i in indices])
            progress.update(len(indices))
            return result

        return shard.map(
            compress_and_count,
            with_indices=True,
            batched=True,
            batch_size=problems_per_call,
            keep_in_memory=True,
            load_from_cache_file=False,
            new_fingerprint=f"compress-{shard_index}",
        )

    describe = compressor.backend.describe() if isinstance(compressor, LLMCompressor) else {}
    arguments = {
        "compressor": compressor.name,
        "compressor_backend": describe,
        "template": getattr(compressor, "template", None),
        "sampling": compressor.sampling.to_dict() if isinstance(compressor, LLMCompressor) else None,
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "task": task,
        "completion_column": completion_column,
        "shard_size": shard_size,
        "problems_per_call": problems_per_call,
    }
    return run_stage(
        dataset,
        process_shard,
        stage="compress",
        arguments=arguments,
        output_dir=output_dir,
        shard_size=shard_size,
        finalize=lambda d: (d, {**summarize_compression(d), **skipped}),
        overwrite=overwrite,
    )


def summarize_compression(compressed: Dataset) -> dict:
    """Ratios of totals (sum compressed / sum original) over the rows whose answer survived, and flag counts."""
    flags = list(compressed["compress_flag"])
    kept = compressed.filter(lambda ok: ok, input_columns="compressed_correct")
    total = {c: sum(kept[c]) for c in ("trace_chars", "compressed_chars", "trace_tokens", "compressed_tokens")}
    return {
        "rows": len(compressed),
        "answer_kept_fraction": len(kept) / max(1, len(compressed)),
        "char_ratio": total["compressed_chars"] / max(1, total["trace_chars"]),
        "token_ratio": total["compressed_tokens"] / max(1, total["trace_tokens"]),
        "empty": flags.count("empty"),
        "answer_lost": flags.count("answer_lost"),
    }
