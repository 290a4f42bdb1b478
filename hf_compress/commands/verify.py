"""`hf-compress verify`: mark correct traces (`hf_compress.verify`)."""

from __future__ import annotations

from ..arguments import StageIO, TaskArguments, TraceColumns, VerifyArguments
from ..validation import check_local_path
from .registry import CommandArguments, register


def _run_verify(args: CommandArguments):
    from ..inputs import load_input
    from ..verify import verify

    io, options, columns = args[StageIO], args[VerifyArguments], args[TraceColumns]
    check_local_path(io.input, "--input")
    return verify(
        load_input(io.input, io.split),
        task=args.task,
        completion_column=columns.completion_column,
        answer_column=columns.answer_column,
        problem_column=columns.problem_column,
        keep_only_correct=options.keep_only_correct,
        timeout_seconds=options.timeout_seconds,
        output_dir=io.output,
        shard_size=options.shard_size,
        overwrite=io.overwrite,
        skip_invalid_rows=options.skip_invalid_rows,
    )


register("verify", "Mark correct traces (math-verify, exact, numeric, Countdown) and per-problem pass rates.",
         _run_verify, arguments=(StageIO, TaskArguments, TraceColumns, VerifyArguments), position=20, pipeline=True)
