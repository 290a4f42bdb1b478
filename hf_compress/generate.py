"""Stage 1: sample teacher traces for every problem, `n` per problem, resumably."""

from __future__ import annotations

import collections
import functools
import logging

from datasets import Dataset

from .backends import BackendConfig, SamplingConfig, TeacherBackend, resolve_backend
from .constants import DEFAULT_PROMPT_TEMPLATE
from .row_checks import ID_COLUMN
from .stages import open_stage, run_stage
from .tasks import gold_columns, resolve_task
from .validation import check_prompt_template

logger = logging.getLogger(__name__)

GENERATED_COLUMNS = ("sample_index", "generation", "num_tokens", "finish_reason", "teacher")


def build_conversation(
    problem: str, system_prompt: str | None = None, prompt_template: str = DEFAULT_PROMPT_TEMPLATE
) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": prompt_template.format(problem=problem)}]


def generate(
    dataset: Dataset,
    backend: TeacherBackend | BackendConfig,
    sampling: SamplingConfig | None = None,
    *,
    output_dir: str | None = None,
    problem_column: str = "problem",
    answer_column: str = "answer",
    system_prompt: str | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    shard_size: int = 256,
    problems_per_call: int = 64,
    overwrite: bool = False,
    skip_invalid_rows: bool = False,
    id_column: str = ID_COLUMN,
) -> Dataset:
    """Teacher traces: one row per (problem, sample) with every input column plus `sample_index`,
    `generation` (the trace text), `num_tokens`, `finish_reason` and `teacher`. `finish_reason` is "stop" (the
    model ended its turn) or "length" (`max_new_tokens` cut it), or another reason a server sent
    ("content_filter", "abort", ...; "unknown" when it sent none): such traces are kept, counted in the stage's
    statistics (`other_finish_fraction`, `finish_reasons`) and reported in a warning.

    With `output_dir`, problems are processed in shards of `shard_size` saved as they finish: a killed run
    restarted with the same arguments resumes after the last finished shard, and its result equals an
    uninterrupted run's (each batch's seed derives from `sampling.seed` and its position in the dataset).
    `prompt_template` (with `{problem}`, formatted by `str.format`) is the user message; the default
    (`DEFAULT_PROMPT_TEMPLATE`) asks for the final answer in `\\boxed{}`; `"{problem}"` sends the problem alone.
    `problems_per_call` problems go to the backend per call (the backend may split them further). A `BackendConfig`
    is built into its backend only if some shard remains to be generated.

    Rows the teacher cannot be asked about (a problem that is None, not text or empty; a gold that is None or
    blank) are refused when the input is read, each named by index (and id, from `id_column` when the input has
    one) and field, before any request; `skip_invalid_rows` leaves them out instead and counts them in the stage
    record. An id on two rows, or one problem text with two different golds, is refused too. With `output_dir`,
    the run holds that folder's lock until it returns (see `locking.output_lock`): a concurrent run on the same
    folder is refused at once.
    """
    sampling = sampling or SamplingConfig()
    check_prompt_template(prompt_template)
    golds = gold_columns(resolve_task(dataset, "auto"), answer_column)
    with open_stage(
        dataset,
        "generate",
        output_dir=output_dir,
        fields={problem_column: "text"},
        golds=golds,
        also_required=(answer_column,),
        added_columns=GENERATED_COLUMNS,
        problem_column=problem_column,
        problem_set="problems",
        skip_invalid_rows=skip_invalid_rows,
        id_column=id_column,
    ) as (dataset, skipped):
        return _generate(
            dataset,
            backend,
            sampling,
            output_dir=output_dir,
            problem_column=problem_column,
            system_prompt=system_prompt,
            prompt_template=prompt_template,
            shard_size=shard_size,
            problems_per_call=problems_per_call,
            overwrite=overwrite,
            skipped=skipped,
        )


def _generate(
    dataset,
    backend,
    sampling,
    *,
    output_dir,
    problem_column,
    system_prompt,
    prompt_template,
    shard_size,
    problems_per_call,
    overwrite,
    skipped,
) -> Dataset:
    teacher = functools.cache(lambda: resolve_backend(backend))

    def process_shard(shard: Dataset, shard_index: int, progress) -> Dataset:
        def generate_batch(batch: dict, indices: list[int]) -> dict:
            conversations = [build_conversation(p, system_prompt, prompt_template) for p in batch[problem_column]]
            # The seed depends only on where the batch sits in the dataset, so a resumed run samples as an
            # uninterrupted one would.
            per_problem = teacher().generate(
                conversations, sampling, seed=sampling.seed + shard_index * shard_size + indices[0]
            )
            progress.update(len(conversations))
            rows = {column: [] for column in [*batch, *GENERATED_COLUMNS]}
            for i, generations in enumerate(per_problem):
                for sample_index, g in enumerate(generations):
                    for column in batch:
                        rows[column].append(batch[column][i])
                    rows["sample_index"].append(sample_index)
                    rows["generation"].append(g.text)
                    rows["num_tokens"].append(g.num_tokens)
                    rows["finish_reason"].append(g.finish_reason)
                    rows["teacher"].append(teacher().model_name)
            return rows

        return shard.map(
            generate_batch,
            with_indices=True,
            batched=True,
            batch_size=problems_per_call,
            remove_columns=shard.column_names,
            keep_in_memory=True,
            load_from_cache_file=False,
            new_fingerprint=f"generate-{shard_index}",
        )

    arguments = {
        "teacher": backend.describe(),
        "sampling": sampling.to_dict(),
        "problem_column": problem_column,
        "system_prompt": system_prompt,
        "prompt_template": prompt_template,
        "shard_size": shard_size,
        "problems_per_call": problems_per_call,
    }
    return run_stage(
        dataset,
        process_shard,
        stage="generate",
        arguments=arguments,
        output_dir=output_dir,
        shard_size=shard_size,
        finalize=lambda traces: (traces, {**summarize_generations(traces), **skipped}),
        overwrite=overwrite,
    )


def summarize_generations(traces: Dataset) -> dict:
    tokens, reasons = list(traces["num_tokens"]), list(traces["finish_reason"])
    counts = collections.Counter(reasons)
    other = {reason: count for reason, count in counts.items() if reason not in ("stop", "length")}
    if other:
        logger.warning(
            "%d of %d traces ended for another reason than stop or length: %s. They are kept with that reason in "
            "`finish_reason` (verify judges them by their answer like any other); to drop them, filter on "
            "finish_reason in ('stop', 'length').",
            sum(other.values()),
            len(reasons),
            other,
        )
    return {
        "traces": len(traces),
        "mean_tokens": sum(tokens) / max(1, len(tokens)),
        "truncated_fraction": counts["length"] / max(1, len(reasons)),
        "other_finish_fraction": sum(other.values()) / max(1, len(reasons)),
        "finish_reasons": dict(counts),
    }
