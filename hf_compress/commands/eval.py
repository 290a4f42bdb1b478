"""`hf-compress eval`: greedy accuracy and output length of a student (`hf_compress.evaluation`)."""

from __future__ import annotations

from ..arguments import EvalArguments, TaskArguments
from ..validation import check_local_path
from .registry import CommandArguments, register


def _run_eval(args: CommandArguments):
    import yaml

    from ..evaluation import evaluate_student, save_evaluation
    from ..inputs import load_input

    options = args[EvalArguments]
    check_local_path(options.model, "--model")
    check_local_path(options.input, "--input")
    summary, table = evaluate_student(
        options.model,
        load_input(options.input, options.split),
        max_new_tokens=options.max_new_tokens,
        batch_size=options.batch_size,
        task=args.task,
        answer_column=options.answer_column,
        trust_remote_code=options.trust_remote_code,
    )
    save_evaluation(summary, table, options.output or options.model)
    print(yaml.safe_dump(summary, sort_keys=False))
    return summary


register("eval", "Greedy accuracy and output length of a trained student (token cap, batched).", _run_eval,
         arguments=(EvalArguments, TaskArguments), position=70)
