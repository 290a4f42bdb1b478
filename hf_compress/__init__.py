"""hf_compress: Compress-Distill data pipeline on `datasets`.

Stages, each a function over a `datasets.Dataset` and an `hf-compress` subcommand, resumable and cached:

    generate -> verify -> compress -> build

    >>> from hf_compress import TransformersBackend, SamplingConfig, generate, verify, compress, build
    >>> traces = generate(problems, TransformersBackend("Qwen/Qwen3-4B"), SamplingConfig(n=4), output_dir="runs/gen")
    >>> checked = verify(traces, keep_only_correct=True)
    >>> shorter = compress(checked, ExtractiveCompressor(), tokenizer="Qwen/Qwen3-4B")
    >>> variants = build(shorter, tokenizer="Qwen/Qwen3-4B", output_dir="runs/sft_data")

The names below are imported when first used, so that `import hf_compress` (and `hf-compress --help`, `hf-compress
report`) does not load datasets, math-verify or torch. `hf_compress.generate`, `.verify`, `.compress` and `.build`
are the stage functions, also after their modules have been imported (the import system would otherwise set the
package's attribute of that name to the submodule).
"""

import importlib
import sys
import types

# name -> the submodule that defines it
_EXPORTS = {
    "BackendConfig": "backends",
    "Generation": "backends",
    "OpenAIBackend": "backends",
    "SamplingConfig": "backends",
    "TeacherBackend": "backends",
    "TeacherError": "backends",
    "TeacherRequestError": "backends",
    "TeacherUnavailableError": "backends",
    "TransformersBackend": "backends",
    "VLLMBackend": "backends",
    "EvalBackendConfig": "backends",
    "register_backend": "backends",
    "VARIANTS": "build",
    "build": "build",
    "load_variants": "build",
    "COMPRESSION_PROMPTS": "compress",
    "Compressor": "compress",
    "ExtractiveCompressor": "compress",
    "LLMCompressor": "compress",
    "compress": "compress",
    "generate": "generate",
    "check_countdown": "verify",
    "check_math": "verify",
    "extract_answer": "answers",
    "verify": "verify",
}
# Stage functions named like the module that defines them.
_SHADOWED = {name for name, module in _EXPORTS.items() if name == module}

__all__ = sorted(_EXPORTS)


class _Package(types.ModuleType):
    def __getattr__(self, name: str):
        if name not in _EXPORTS:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, name)  # importing the submodule keeps the stage function here
        super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_EXPORTS))


sys.modules[__name__].__class__ = _Package
