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

from .answers import answer_span
from .constants import VARIANTS
from .inputs import check_stage_input, load_tokenizer, require_columns
from .stages import pipeline_records, run_stage


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

    return rows.map(
        to_messages,
        batched=True,
        remove_columns=rows.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
        new_fingerprint=f"build-{variant}",
    )


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
    `num_tokens`), saved to `output_dir` with a dataset card (README.md) of statistics.

    When `push_to_hub` names a dataset repo, access to it is checked first, before any work
    (`hf_compress.hub.check_push_access`: token, permission, repo created if missing), and the variants are pushed
    once saved: one config per variant with a `train` split (`datasets.load_dataset(repo, "compressed")`), and the
    card with the pipeline statistics. `push_kwargs` (`token`, `private`, ...) pass through to
    `Dataset.push_to_hub`. A failed push keeps the saved build (rerunning reuses it and pushes again); pushing an
    unchanged build again makes no commit."""
    variants = tuple(variants)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise ValueError(f"Unknown variant(s) {unknown}; choose among {VARIANTS}.")
    needed = [problem_column, answer_column, completion_column]
    if {"compressed", "truncated"} & set(variants):
        needed += ["compressed", "compressed_correct", "compressed_tokens"]
    require_columns(dataset, needed, "build", hint="Run `compress` first for the compressed and truncated variants.")
    check_stage_input(dataset, output_dir, "build")
    if push_to_hub:  # before any work: a build that cannot be published fails now, not after it
        from .hub import check_push_access

        push_to_hub = check_push_access(
            push_to_hub, "dataset", token=push_kwargs.get("token"), private=push_kwargs.get("private")
        )
    tokenizer = load_tokenizer(tokenizer)
    arguments = {
        "variants": list(variants),
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "columns": [problem_column, answer_column, completion_column],
    }
    columns = {"problem": problem_column, "answer": answer_column, "completion": completion_column}

    def build_all(dataset: Dataset) -> tuple[DatasetDict, dict]:
        rows = select_training_rows(dataset, variants)
        if len(rows) == 0:
            raise ValueError(
                "No row is left to train on: none is verified correct (with its answer kept "
                "after compression). Check the verify and compress statistics."
            )
        built = DatasetDict({v: build_variant(rows, v, tokenizer, columns) for v in variants})
        return built, variant_statistics(built)

    built = run_stage(
        dataset,
        None,
        stage="build",
        arguments=arguments,
        output_dir=output_dir,
        finalize=build_all,
        overwrite=overwrite,
        extra_files=lambda built: {"README.md": dataset_card(built, pipeline_records(dataset))},
    )
    if push_to_hub:
        from .hub import push_variants

        card = dataset_card(built, pipeline_records(dataset), repo_id=push_to_hub)
        push_variants(built, push_to_hub, card.split("---\n", 2)[2], output_dir=output_dir, **push_kwargs)
    return built


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
        stats[variant] = {
            "rows": len(split),
            "mean_tokens": sum(tokens) / max(1, len(tokens)),
            "total_tokens": sum(tokens),
        }
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
        lines.append(
            f"| {variant} | {s['rows']} | {s['mean_tokens']:.1f} | {s['total_tokens']} | "
            f"{_fmt(s.get('token_ratio_vs_raw', float('nan')))} |"
        )
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# What each variant's assistant turn holds, for the dataset card.
VARIANT_TARGETS = {
    "raw": "the teacher's verified trace, as generated",
    "compressed": "the compressor's rewrite of that trace (final answer re-verified)",
    "answer_only": "the final-answer marker alone",
    "truncated": "the raw trace cut to the compressed version's token length, final answer kept (length control)",
}


def pipeline_figures(upstream: list[dict]) -> list[tuple[str, str]]:
    """The headline figures of the stage records `build`'s input came from: teacher traces, pass rate, answers kept
    after compression, token and character ratios (as (label, formatted value); those not recorded are left out)."""
    stats = {r["stage"]: r.get("stats", {}) for r in upstream}
    wanted = [
        ("generate", "traces", "teacher traces"),
        ("generate", "mean_tokens", "mean trace tokens"),
        ("generate", "truncated_fraction", "traces cut by the token cap"),
        ("verify", "pass_rate", "pass rate (traces verified correct)"),
        ("verify", "mean_problem_pass_rate", "mean per-problem pass rate"),
        ("verify", "problems_solved", "problems solved at least once"),
        ("compress", "answer_kept_fraction", "answer kept after compression"),
        ("compress", "token_ratio", "token ratio (compressed / raw, answer kept)"),
        ("compress", "char_ratio", "char ratio (compressed / raw, answer kept)"),
    ]
    return [
        (label, _fmt(stats[stage][key]))
        for stage, key, label in wanted
        if isinstance(stats.get(stage, {}).get(key), (int, float))
    ]


def dataset_card(built: DatasetDict, upstream: list[dict], repo_id: str | None = None) -> str:
    """The README.md of a build: what each variant (config, when pushed) holds, how to load it, the pipeline's
    statistics (pass rate, answers kept, token and char ratios) and the per-variant token table."""
    teacher = next((r["arguments"].get("teacher", {}) for r in upstream if r["stage"] == "generate"), {})
    compressor = next((r["arguments"].get("compressor") for r in upstream if r["stage"] == "compress"), None)
    stats = variant_statistics(built)
    configs = ["| config | assistant target | rows | mean tokens |", "|---|---|---:|---:|"]
    configs += [f"| `{v}` | {VARIANT_TARGETS[v]} | {s['rows']} | {s['mean_tokens']:.1f} |" for v, s in stats.items()]
    example = next((v for v in ("compressed", *built) if v in built), "raw")
    if repo_id:
        loading = (
            "```python\nfrom datasets import load_dataset\n\n"
            f'data = load_dataset("{repo_id}", "{example}", split="train")  # one config per variant\n```'
        )
    else:
        loading = (
            "```python\nfrom hf_compress import load_variants\n\n"
            f'data = load_variants("<this folder>")[{example!r}]  # or datasets.load_from_disk("<this '
            f'folder>/{example}")\n```\n\n`hf-compress build --push_to_hub user/name` publishes one config '
            "per variant."
        )
    figures = pipeline_figures(upstream)
    pipeline = (
        ["| figure | value |", "|---|---:|"] + [f"| {label} | {value} |" for label, value in figures]
        if figures
        else ["No stage records were found with the input (it did not come from `hf-compress` stage folders)."]
    )
    return (
        "---\ntags:\n- hf-compress\n- compress-distill\n- sft\n---\n\n"
        "# Compress-Distill SFT variants\n\n"
        "Built with `hf_compress` (teacher traces -> verify -> compress -> build). Each variant holds the same "
        "problems, with a different assistant target, in `messages` form.\n\n"
        f"- teacher: `{teacher.get('model', 'unknown')}`\n- compressor: `{compressor or 'none'}`\n\n"
        "## Configs\n\n" + "\n".join(configs) + "\n\n"
        "Columns: `messages` (user problem, assistant target), `problem`, `answer` (gold), `variant`, `num_tokens` "
        "(assistant target tokens).\n\n" + loading + "\n\n"
        "## Pipeline statistics\n\n" + "\n".join(pipeline) + "\n\n"
        "## Stage records and tokens per variant\n\n" + statistics_table(stats, upstream) + "\n"
    )
