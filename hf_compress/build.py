"""Stage 4: SFT datasets in `messages` form, one per training-target variant.

- `raw`: the teacher trace as generated.
- `compressed`: the compressor's rewrite.
- `answer_only`: just the final-answer marker (`\\boxed{...}` / `<answer>...</answer>`).
- `truncated`: the raw trace cut to the token length of its compressed version, final answer kept. It
  controls for length: same budget as `compressed`, but a prefix of the original reasoning instead of a rewrite.

Every variant holds the same problems (the verified rows whose compressed answer survived), so comparing
students trained on them compares the targets alone. Saved as a `DatasetDict` folder: `load_variants`
reopens it, and each variant's subfolder also opens alone with `datasets.load_from_disk`.
"""

from __future__ import annotations

from datasets import Dataset, DatasetDict, load_from_disk

from .stages import (
    check_stage_input,
    dataset_fingerprint,
    dataset_folder,
    load_finished_stage,
    load_tokenizer,
    pipeline_records,
    prepare_output_folder,
    quiet_datasets_progress,
    require_columns,
    save_stage,
)
from .verify import answer_span

VARIANTS = ("raw", "compressed", "answer_only", "truncated")


def answer_marker(trace: str, gold: str) -> str:
    """The trace's final-answer marker, or a boxed gold answer when the trace states it without one."""
    span = answer_span(trace)
    return trace[span[0] : span[1]] if span else f"\\boxed{{{gold}}}"


def truncate_keeping_answer(trace: str, gold: str, token_budget: int, tokenizer) -> str:
    """The first tokens of `trace`'s reasoning, then its answer marker, `token_budget` tokens in all (the
    marker alone when it fills the budget). Traces already within the budget are returned unchanged."""
    if len(tokenizer(trace, add_special_tokens=False)["input_ids"]) <= token_budget:
        return trace
    span = answer_span(trace)
    reasoning = trace[: span[0]] if span else trace
    marker = " " + answer_marker(trace, gold)
    room = token_budget - len(tokenizer(marker, add_special_tokens=False)["input_ids"])
    kept = tokenizer(reasoning, add_special_tokens=False)["input_ids"][: max(0, room)]
    return (tokenizer.decode(kept) + marker).strip()


def _targets(variant: str, batch: dict, i: int, columns: dict, tokenizer) -> str:
    trace, gold = batch[columns["completion"]][i], str(batch[columns["answer"]][i])
    if variant == "raw":
        return trace
    if variant == "compressed":
        return batch["compressed"][i]
    if variant == "answer_only":
        return answer_marker(trace, gold)
    return truncate_keeping_answer(trace, gold, batch["compressed_tokens"][i], tokenizer)


def build_variant(rows: Dataset, variant: str, tokenizer, columns: dict) -> Dataset:
    def to_messages(batch: dict) -> dict:
        targets = [_targets(variant, batch, i, columns, tokenizer) for i in range(len(batch[columns["problem"]]))]
        return {
            "messages": [
                [{"role": "user", "content": p}, {"role": "assistant", "content": t}]
                for p, t in zip(batch[columns["problem"]], targets)
            ],
            "problem": batch[columns["problem"]],
            "answer": [str(a) for a in batch[columns["answer"]]],
            "variant": [variant] * len(targets),
            "num_tokens": [len(ids) for ids in tokenizer(targets, add_special_tokens=False)["input_ids"]],
        }

    return rows.map(to_messages, batched=True, remove_columns=rows.column_names, keep_in_memory=True,
                    load_from_cache_file=False, new_fingerprint=f"build-{variant}")


def select_training_rows(dataset: Dataset, variants: tuple[str, ...]) -> Dataset:
    """Verified-correct rows, and (when a compression-based variant is asked for) whose compressed trace
    kept the answer; without a `correct` column every row is taken as is."""
    keep = dataset
    if "correct" in keep.column_names:
        keep = keep.filter(lambda ok: ok, input_columns="correct", keep_in_memory=True)
    if {"compressed", "truncated"} & set(variants):
        keep = keep.filter(lambda ok: ok, input_columns="compressed_correct", keep_in_memory=True)
    return keep


def build(
    dataset: Dataset,
    tokenizer,
    *,
    variants: tuple[str, ...] | list[str] = VARIANTS,
    problem_column: str = "problem",
    answer_column: str = "answer",
    completion_column: str = "generation",
    output_dir: str | None = None,
    push_to_hub: str | None = None,
    overwrite: bool = False,
    **push_kwargs,
) -> DatasetDict:
    """A `DatasetDict` with one split per variant (columns `messages`, `problem`, `answer`, `variant`,
    `num_tokens`), saved to `output_dir` with a dataset card (README.md) of statistics, and pushed to the Hub
    as one config per variant when `push_to_hub` names a repository (`push_kwargs` pass through to
    `Dataset.push_to_hub`)."""
    variants = tuple(variants)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise ValueError(f"Unknown variant(s) {unknown}; choose among {VARIANTS}.")
    needed = [problem_column, answer_column, completion_column]
    if {"compressed", "truncated"} & set(variants):
        needed += ["compressed", "compressed_correct", "compressed_tokens"]
    require_columns(dataset, needed, "build", hint="Run `compress` first for the compressed and truncated variants.")
    check_stage_input(dataset, output_dir, "build")
    tokenizer = load_tokenizer(tokenizer)
    arguments = {"variants": list(variants), "tokenizer": getattr(tokenizer, "name_or_path", ""),
                 "columns": [problem_column, answer_column, completion_column]}
    fingerprint = dataset_fingerprint(dataset, {"stage": "build", **arguments})

    built = None
    if output_dir is not None:
        prepare_output_folder(output_dir, "build", overwrite)
        if load_finished_stage(output_dir, "build", fingerprint, arguments) is not None:
            built = load_variants(output_dir)
    if built is None:
        with quiet_datasets_progress():
            rows = select_training_rows(dataset, variants)
            if len(rows) == 0:
                raise ValueError("No row is left to train on: none is verified correct (with its answer kept "
                                 "after compression). Check the verify and compress statistics.")
            columns = {"problem": problem_column, "answer": answer_column, "completion": completion_column}
            built = DatasetDict({v: build_variant(rows, v, tokenizer, columns) for v in variants})
        if output_dir is not None:
            built = save_stage(built, output_dir, stage="build", fingerprint=fingerprint, arguments=arguments,
                               stats=variant_statistics(built), input_folder=dataset_folder(dataset),
                               extra_files={"README.md": dataset_card(built, pipeline_records(dataset))})
    if push_to_hub:
        for variant, split in built.items():
            split.push_to_hub(push_to_hub, config_name=variant, split="train", **push_kwargs)
        _push_card_text(push_to_hub, dataset_card(built, pipeline_records(dataset)), push_kwargs.get("token"))
    return built


def _push_card_text(repo_id: str, card: str, token: str | None) -> None:
    """Replace the text of the card `datasets` pushed, keeping its metadata (the `configs` it lists)."""
    from huggingface_hub import DatasetCard

    pushed = DatasetCard.load(repo_id, token=token)
    pushed.text = card.split("---\n", 2)[2]  # our body, without our own metadata header
    pushed.push_to_hub(repo_id, token=token)


def load_variants(folder: str) -> DatasetDict:
    """The variants written by `build` (or `hf-compress build`), as a DatasetDict keyed by variant name."""
    loaded = load_from_disk(folder)
    if not isinstance(loaded, DatasetDict) or not set(loaded) <= set(VARIANTS):
        raise ValueError(f"{folder} is not a build output (expected a DatasetDict with splits among {VARIANTS}).")
    return loaded


def variant_statistics(built: DatasetDict) -> dict:
    """Per variant: rows, mean and total assistant tokens, and the token ratio against `raw`."""
    stats = {}
    for variant, split in built.items():
        tokens = list(split["num_tokens"])
        stats[variant] = {"rows": len(split), "mean_tokens": sum(tokens) / max(1, len(tokens)),
                          "total_tokens": sum(tokens)}
    if "raw" in stats:
        for entry in stats.values():
            entry["token_ratio_vs_raw"] = entry["total_tokens"] / max(1, stats["raw"]["total_tokens"])
    return stats


def statistics_table(variant_stats: dict, upstream: list[dict]) -> str:
    """A markdown table of the variants, preceded by a line per upstream stage's key figures."""
    lines = []
    for record in upstream:
        figures = {k: v for k, v in record.get("stats", {}).items() if isinstance(v, (int, float))}
        lines.append(f"- **{record['stage']}**: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in figures.items()))
    lines += ["", "| variant | rows | mean tokens | total tokens | tokens vs raw |", "|---|---:|---:|---:|---:|"]
    for variant, s in variant_stats.items():
        lines.append(f"| {variant} | {s['rows']} | {s['mean_tokens']:.1f} | {s['total_tokens']} | "
                     f"{_fmt(s.get('token_ratio_vs_raw', float('nan')))} |")
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def dataset_card(built: DatasetDict, upstream: list[dict]) -> str:
    teacher = next((r["arguments"].get("teacher", {}) for r in upstream if r["stage"] == "generate"), {})
    compressor = next((r["arguments"].get("compressor") for r in upstream if r["stage"] == "compress"), None)
    return (
        "---\ntags:\n- hf-compress\n- sft\n---\n\n"
        "# Compress-Distill SFT variants\n\n"
        "Built with `hf_compress` (teacher traces -> verify -> compress -> build). Each variant holds the same "
        "problems, with a different assistant target, in `messages` form.\n\n"
        f"- teacher: `{teacher.get('model', 'unknown')}`\n- compressor: `{compressor or 'none'}`\n\n"
        "## Statistics\n\n" + statistics_table(variant_statistics(built), upstream) + "\n"
    )
