"""hf_compress: Compress-Distill data pipeline on `datasets`.

Stages, each a function over a `datasets.Dataset` and an `hf-compress` subcommand, resumable and cached:

    generate -> verify -> compress -> build

    >>> from hf_compress import TransformersBackend, SamplingConfig, generate, verify, compress, build
    >>> traces = generate(problems, TransformersBackend("Qwen/Qwen3-4B"), SamplingConfig(n=4), output_dir="runs/gen")
    >>> checked = verify(traces, keep_only_correct=True)
    >>> shorter = compress(checked, ExtractiveCompressor(), tokenizer="Qwen/Qwen3-4B")
    >>> variants = build(shorter, tokenizer="Qwen/Qwen3-4B", output_dir="runs/sft_data")

The stage functions are imported here eagerly, so `hf_compress.generate` is the function even after its
module has been imported (a lazy attribute would be shadowed by the submodule of the same name).
"""

from .backends import (
    BackendConfig,
    Generation,
    OpenAIBackend,
    SamplingConfig,
    TeacherBackend,
    TeacherError,
    TeacherRequestError,
    TeacherUnavailableError,
    TransformersBackend,
    VLLMBackend,
)
from .build import VARIANTS, build, load_variants
from .compress import COMPRESSION_PROMPTS, Compressor, ExtractiveCompressor, LLMCompressor, compress
from .generate import generate
from .verify import check_countdown, check_math, extract_answer, verify

__all__ = [
    "BackendConfig",
    "COMPRESSION_PROMPTS",
    "Compressor",
    "ExtractiveCompressor",
    "Generation",
    "LLMCompressor",
    "OpenAIBackend",
    "SamplingConfig",
    "TeacherBackend",
    "TeacherError",
    "TeacherRequestError",
    "TeacherUnavailableError",
    "TransformersBackend",
    "VARIANTS",
    "VLLMBackend",
    "build",
    "check_countdown",
    "check_math",
    "compress",
    "extract_answer",
    "generate",
    "load_variants",
    "verify",
]
