"""`hf-compress eval`: greedy accuracy and output length of a student (`hf_compress.evaluation`), decoded here
(`--backend transformers`, the default) or by the backends `generate` uses (`vllm`, `openai` with its server pool),
resumable in shards."""

from __future__ import annotations

import os

from ..arguments import EvalArguments, TaskArguments
from ..backends.config import EvalBackendConfig
from ..backends.registry import BACKEND_REGISTRY
from ..validation import UsageError, check_local_path
from .registry import CommandArguments, register

COMPLETIONS_DIR = "eval_completions"  # beside eval.json: the resumable completions, shard by shard


def _output_folder(args: CommandArguments) -> str:
    options, backend = args[EvalArguments], args[EvalBackendConfig]
    if options.output:
        return options.output
    if not BACKEND_REGISTRY[backend.backend].loads_local_files:
        raise UsageError(
            f"--output is needed with --backend {backend.backend}: --model is a served model name, not a "
            "folder to write the evaluation into."
        )
    return backend.model


def _check_eval(args: CommandArguments) -> None:
    args[EvalBackendConfig].check(model_required=True)
    _output_folder(args)


def _run_eval(args: CommandArguments):
    import yaml

    from ..evaluation import evaluate_student, save_evaluation
    from ..inputs import load_input

    options, backend = args[EvalArguments], args[EvalBackendConfig]
    for option, path in backend.local_paths():
        check_local_path(path, option)
    check_local_path(options.input, "--input")
    output = _output_folder(args)
    summary, table = evaluate_student(
        backend,  # transformers: the student folder --model, loaded and decoded here
        load_input(options.input, options.split),
        max_new_tokens=options.max_new_tokens,
        batch_size=backend.batch_size,
        task=args.task,
        answer_column=options.answer_column,
        trust_remote_code=options.trust_remote_code,
        output_dir=os.path.join(output, COMPLETIONS_DIR),
        shard_size=options.shard_size,
        overwrite=options.overwrite,
    )
    save_evaluation(summary, table, output)
    print(yaml.safe_dump(summary, sort_keys=False))
    return summary


register(
    "eval",
    "Greedy accuracy and output length of a trained student (token cap, batched; here or on servers).",
    _run_eval,
    arguments=(EvalArguments, EvalBackendConfig, TaskArguments),
    check=_check_eval,
    paths=lambda args: args[EvalBackendConfig].local_paths(),
    position=70,
)
