"""`hf-compress generate`: sample teacher traces (`hf_compress.generate`)."""

from __future__ import annotations

from ..arguments import GenerateArguments, StageIO
from ..backends.config import BackendConfig, SamplingConfig
from ..validation import check_local_path
from .registry import CommandArguments, register


def _run_generate(args: CommandArguments):
    from ..generate import generate
    from ..inputs import load_input

    io = args[StageIO]
    args[BackendConfig].check(model_required=True)
    check_local_path(io.input, "--input")
    return generate(
        load_input(io.input, io.split),
        args[BackendConfig],  # built only if generation remains to be done
        args[SamplingConfig],
        output_dir=io.output,
        overwrite=io.overwrite,
        **args.options(GenerateArguments),
    )


register(
    "generate",
    "Sample teacher traces (n per problem), resumably.",
    _run_generate,
    arguments=(StageIO, BackendConfig, SamplingConfig, GenerateArguments),
    position=10,
    pipeline=True,
    paths=lambda args: args[BackendConfig].local_paths(),
)
