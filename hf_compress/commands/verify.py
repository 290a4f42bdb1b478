"""`hf-compress verify`: mark correct traces (`hf_compress.verify`)."""

from __future__ import annotations

from ..arguments import StageIO, TaskArguments, TraceColumns, VerifyArguments
from ..validation import check_local_path
from .registry import CommandArguments, register


def _run_verify(args: CommandArguments):
    from ..inputs import load_input
    from ..verify import verify

    io = args[StageIO]
    check_local_path(io.input, "--input")
    return verify(
        load_input(io.input, io.split),
        output_dir=io.output,
        overwrite=io.overwrite,
        **args.options(TaskArguments, TraceColumns, VerifyArguments),
    )


register(
    "verify",
    "Mark correct traces (math-verify, exact, numeric, Countdown) and per-problem pass rates.",
    _run_verify,
    arguments=(StageIO, TaskArguments, TraceColumns, VerifyArguments),
    position=20,
    pipeline=True,
)
