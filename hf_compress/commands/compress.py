"""`hf-compress compress`: rewrite traces shorter and check the answer survived (`hf_compress.compress`)."""

from __future__ import annotations

from ..arguments import CompressArguments, StageIO, TaskArguments, TraceColumns
from ..backends.config import BackendConfig, SamplingConfig
from ..validation import UsageError, check_local_path
from .registry import CommandArguments, register


def _compress_tokenizer(args: CommandArguments) -> tuple[str, str | None]:
    backend = args[BackendConfig]
    return ("--tokenizer", backend.tokenizer) if backend.tokenizer else ("--model", backend.model)


def _check_compress(args: CommandArguments) -> None:
    options, backend = args[CompressArguments], args[BackendConfig]
    if not _compress_tokenizer(args)[1]:
        raise UsageError("compress counts tokens: pass --tokenizer (or --model, whose tokenizer is then used).")
    if options.compressor == "llm":
        backend.check(model_required=True)
        from ..compress import COMPRESSION_PROMPTS

        if options.prompt_version not in COMPRESSION_PROMPTS:
            raise UsageError(
                f"argument --prompt_version: invalid choice: {options.prompt_version!r} (choose from "
                f"{', '.join(repr(v) for v in sorted(COMPRESSION_PROMPTS))})"
            )


def _run_compress(args: CommandArguments):
    from ..compress import ExtractiveCompressor, LLMCompressor, compress
    from ..inputs import load_input

    io, options = args[StageIO], args[CompressArguments]
    option, tokenizer = _compress_tokenizer(args)
    check_local_path(io.input, "--input")
    check_local_path(tokenizer, option)
    if options.compressor == "llm":
        sampling = SamplingConfig(n=1, temperature=options.temperature, max_new_tokens=options.max_new_tokens)
        compressor = LLMCompressor(args[BackendConfig], options.prompt_version, sampling=sampling)
    else:
        compressor = ExtractiveCompressor()
    return compress(
        load_input(io.input, io.split),
        compressor,
        tokenizer,
        output_dir=io.output,
        shard_size=options.shard_size,
        problems_per_call=options.problems_per_call,
        overwrite=io.overwrite,
        skip_invalid_rows=options.skip_invalid_rows,
        **args.options(TaskArguments, TraceColumns),
    )


def _compress_paths(args: CommandArguments) -> list[tuple[str, str | None]]:
    llm = args[CompressArguments].compressor == "llm"
    return [_compress_tokenizer(args), *(args[BackendConfig].local_paths() if llm else [])]


register(
    "compress",
    "Rewrite traces shorter (LLM or extractive) and check that the answer survived.",
    _run_compress,
    arguments=(StageIO, CompressArguments, BackendConfig, TaskArguments, TraceColumns),
    check=_check_compress,
    paths=_compress_paths,
    position=30,
    pipeline=True,
)
