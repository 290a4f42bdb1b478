"""`hf-compress build`: write the SFT variants (`hf_compress.build`)."""

from __future__ import annotations

from ..arguments import BuildArguments, StageIO, TraceColumns
from ..validation import check_local_path
from .registry import CommandArguments, register


def _run_build(args: CommandArguments):
    from ..build import build, statistics_table, variant_statistics
    from ..inputs import load_input
    from ..stages import pipeline_records

    io, options, columns = args[StageIO], args[BuildArguments], args[TraceColumns]
    check_local_path(io.input, "--input")
    check_local_path(options.tokenizer, "--tokenizer")
    dataset = load_input(io.input, io.split)
    built = build(
        dataset,
        options.tokenizer,
        variants=options.variants,
        problem_column=columns.problem_column,
        answer_column=columns.answer_column,
        completion_column=columns.completion_column,
        output_dir=io.output,
        push_to_hub=options.push_to_hub,
        overwrite=io.overwrite,
    )
    print(statistics_table(variant_statistics(built), pipeline_records(dataset)))
    return built


register("build", "Write the SFT variants (raw, compressed, answer_only, truncated) in messages form.", _run_build,
         arguments=(StageIO, BuildArguments, TraceColumns), paths=lambda args: [("--tokenizer", args.tokenizer)], position=40, pipeline=True)
