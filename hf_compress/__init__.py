"""hf_compress: Compress-Distill data pipeline on `datasets`.

Stages, each a function over a `datasets.Dataset` and an `hf-compress` subcommand, resumable and cached:

    generate -> verify -> compress -> build

    >>> from hf_compress import TransformersBackend, SamplingConfig, generate, verify, compress, build
    >>> traces = generate(problems, TransformersBackend("Qwen/Qwen3-4B"), SamplingConfig(n=4), output_dir="runs/gen")
    >>> checked = verify(traces, keep_only_correct=True)
    >>> shorter = compress(checked, ExtractiveCompressor(), tokenizer="Qwen/Qwen3-4B")
    >>> variants = build(shorter, tokenizer="Qwen/Qwen3-4B", output_dir="runs/sft_data")

Names are imported on first use, so `import hf_compress` stays light (a resumed worker starts fast).
"""

import importlib

_EXPORTS = {
    "backends": ["BackendConfig", "Generation", "OpenAIBackend", "SamplingConfig", "TeacherBackend",
                 "TeacherUnavailableError", "TransformersBackend", "VLLMBackend"],
    "generate": ["generate"],
    "verify": ["check_countdown", "check_math", "extract_answer", "verify"],
    "compress": ["COMPRESSION_PROMPTS", "Compressor", "ExtractiveCompressor", "LLMCompressor", "compress"],
    "build": ["VARIANTS", "build", "load_variants"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'hf_compress' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
