"""`hf-compress build`: write the SFT variants (`hf_compress.build`)."""

from __future__ import annotations

from ..arguments import BuildArguments, StageIO, TraceColumns
from ..validation import check_local_path
from .registry import CommandArguments, register


def _run_build(args: CommandArguments):
    from ..build import build, statistics_table, variant_statistics
    from ..inputs import load_input
    from ..stages import pipeline_records

    io, options = args[StageIO], args[BuildArguments]
    check_local_path(io.input, "--input")
    check_local_path(options.tokenizer, "--tokenizer")
    dataset = load_input(io.input, io.split)
    built = build(
        dataset,
        output_dir=io.output,
        overwrite=io.overwrite,
        **args.options(BuildArguments, TraceColumns),
    )
    print(statistics_table(variant_statistics(built), pipeline_records(dataset)))
    return built


register(
    "build",
    "Write the SFT variants (raw, compressed, answer_only, truncated) in messages form.",
    _run_build,
    arguments=(StageIO, BuildArguments, TraceColumns),
    paths=lambda args: [("--tokenizer", args.tokenizer)],
    position=40,
    pipeline=True,
)
