"""`hf-compress`: one subcommand per pipeline stage, plus `run`, which chains the stages from a YAML recipe.

    hf-compress generate --input problems/ --output runs/c/generate --backend transformers --model runs/sft/model
    hf-compress verify   --input runs/c/generate --output runs/c/verify
    hf-compress compress --input runs/c/verify --output runs/c/compress --compressor extractive --tokenizer runs/sft/model
    hf-compress build    --input runs/c/compress --output runs/c/build --tokenizer runs/sft/model
    hf-compress run examples/recipes/compress_arithmetic.yaml
    hf-compress sft      examples/recipes/sft_lora.yaml --dataset_path runs/c/build --variant compressed --output_dir runs/c/students/compressed
    hf-compress eval     --model runs/c/students/compressed --input test_problems/
    hf-compress report   runs/c/students/raw runs/c/students/compressed --output runs/c/report

Adding a subcommand is one `register(name, help, add_arguments, run)` call. A stage that reads `--input`
and writes `--output` can also be appended to `PIPELINE`, and `run` will chain it (its recipe section holds
its other arguments, by their argparse names).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass

import yaml


@dataclass
class Subcommand:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], object]


SUBCOMMANDS: dict[str, Subcommand] = {}
# Stages `run` chains, in order, each reading the previous one's output folder.
PIPELINE: list[str] = ["generate", "verify", "compress", "build"]


def register(name: str, help: str, add_arguments: Callable, run: Callable) -> None:
    SUBCOMMANDS[name] = Subcommand(help, add_arguments, run)


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One `--field` option per dataclass field, with its default and its `help` metadata."""
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        kind = hints[f.name]
        scalar = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # `X | None` -> X
        if scalar is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default,
                                help=f.metadata.get("help"))
        else:
            parser.add_argument(f"--{f.name}", type=scalar, default=f.default, choices=f.metadata.get("choices"),
                                help=f.metadata.get("help"))


def dataclass_from_args(config_class: type, args: argparse.Namespace):
    return config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)})


def add_io_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="A `datasets` folder (save_to_disk) or a Hub dataset id.")
    parser.add_argument("--split", default="train", help="Split to read when the input has several.")
    parser.add_argument("--output", required=True, help="Folder to write the stage's `datasets` output to.")
    parser.add_argument("--overwrite", action="store_true", help="Discard an output folder from other arguments.")


def add_trace_column_arguments(parser: argparse.ArgumentParser) -> None:
    """The columns that verify, compress and build read: the trace, its gold answer and its problem."""
    parser.add_argument("--completion_column", default="generation", help="Column holding the teacher trace.")
    parser.add_argument("--answer_column", default="answer", help="Column holding the gold final answer.")
    parser.add_argument("--problem_column", default="problem", help="Column holding the problem text.")


# ----------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------


def _add_generate(parser):
    from .backends import BackendConfig, SamplingConfig

    add_io_arguments(parser)
    add_dataclass_arguments(parser, BackendConfig)
    add_dataclass_arguments(parser, SamplingConfig)
    parser.add_argument("--problem_column", default="problem")
    parser.add_argument("--answer_column", default="answer")
    parser.add_argument("--system_prompt", default=None)
    parser.add_argument("--prompt_template", default="{problem}", help="User message; must contain {problem}.")
    parser.add_argument("--shard_size", type=int, default=256, help="Problems per saved shard (resume unit).")
    parser.add_argument("--problems_per_call", type=int, default=64, help="Problems sent to the backend at once.")


def _run_generate(args):
    from .backends import BackendConfig, SamplingConfig
    from .generate import generate
    from .stages import load_input

    return generate(
        load_input(args.input, args.split),
        dataclass_from_args(BackendConfig, args),  # built only if generation remains to be done
        dataclass_from_args(SamplingConfig, args),
        output_dir=args.output,
        problem_column=args.problem_column,
        answer_column=args.answer_column,
        system_prompt=args.system_prompt,
        prompt_template=args.prompt_template,
        shard_size=args.shard_size,
        batch_size=args.problems_per_call,
        overwrite=args.overwrite,
    )


register("generate", "Sample teacher traces (n per problem), resumably.", _add_generate, _run_generate)


def _add_verify(parser):
    add_io_arguments(parser)
    parser.add_argument("--task", default="auto", choices=["auto", "math", "countdown"])
    add_trace_column_arguments(parser)
    parser.add_argument("--keep_only_correct", action="store_true", help="Drop incorrect traces (after pass rates).")
    parser.add_argument("--timeout_seconds", type=int, default=5, help="math-verify deadline per parse/compare.")
    parser.add_argument("--shard_size", type=int, default=2048)


def _run_verify(args):
    from .stages import load_input
    from .verify import verify

    return verify(
        load_input(args.input, args.split),
        task=args.task,
        completion_column=args.completion_column,
        answer_column=args.answer_column,
        problem_column=args.problem_column,
        keep_only_correct=args.keep_only_correct,
        timeout_seconds=args.timeout_seconds,
        output_dir=args.output,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
    )


register("verify", "Mark correct traces (math-verify, exact, numeric, Countdown) and per-problem pass rates.",
         _add_verify, _run_verify)


def _add_compress(parser):
    from .backends import BackendConfig

    add_io_arguments(parser)
    parser.add_argument("--compressor", default="extractive", choices=["extractive", "llm"])
    parser.add_argument("--prompt_version", default="v1", help="llm: key of COMPRESSION_PROMPTS.")
    parser.add_argument("--temperature", type=float, default=0.0, help="llm: sampling temperature.")
    parser.add_argument("--max_new_tokens", type=int, default=1024, help="llm: cap on the rewrite's tokens.")
    add_dataclass_arguments(parser, BackendConfig)  # llm: the compressor model; --tokenizer also counts tokens
    parser.add_argument("--task", default="auto", choices=["auto", "math", "countdown"])
    add_trace_column_arguments(parser)
    parser.add_argument("--shard_size", type=int, default=256)
    parser.add_argument("--problems_per_call", type=int, default=64)


def _run_compress(args):
    from .backends import BackendConfig, SamplingConfig
    from .compress import ExtractiveCompressor, LLMCompressor, compress
    from .stages import load_input

    tokenizer = args.tokenizer or args.model
    if not tokenizer:
        raise ValueError("compress counts tokens: pass --tokenizer (or --model, whose tokenizer is then used).")
    if args.compressor == "llm":
        sampling = SamplingConfig(n=1, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
        compressor = LLMCompressor(dataclass_from_args(BackendConfig, args), args.prompt_version, sampling=sampling)
    else:
        compressor = ExtractiveCompressor()
    return compress(
        load_input(args.input, args.split),
        compressor,
        tokenizer,
        task=args.task,
        completion_column=args.completion_column,
        problem_column=args.problem_column,
        answer_column=args.answer_column,
        output_dir=args.output,
        shard_size=args.shard_size,
        batch_size=args.problems_per_call,
        overwrite=args.overwrite,
    )


register("compress", "Rewrite traces shorter (LLM or extractive) and check that the answer survived.",
         _add_compress, _run_compress)


def _add_build(parser):
    from .build import VARIANTS

    add_io_arguments(parser)
    parser.add_argument("--tokenizer", required=True, help="Tokenizer counting tokens (and cutting `truncated`).")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    add_trace_column_arguments(parser)
    parser.add_argument("--push_to_hub", default=None, help="Hub dataset repo to push the variants to (configs).")


def _run_build(args):
    from .build import build, statistics_table, variant_statistics
    from .stages import load_input, pipeline_records

    dataset = load_input(args.input, args.split)
    built = build(
        dataset,
        args.tokenizer,
        variants=args.variants,
        problem_column=args.problem_column,
        answer_column=args.answer_column,
        completion_column=args.completion_column,
        output_dir=args.output,
        push_to_hub=args.push_to_hub,
        overwrite=args.overwrite,
    )
    print(statistics_table(variant_statistics(built), pipeline_records(dataset)))
    return built


register("build", "Write the SFT variants (raw, compressed, answer_only, truncated) in messages form.",
         _add_build, _run_build)


# ----------------------------------------------------------------------------------------------------------
# Students: sft, eval, report
# ----------------------------------------------------------------------------------------------------------


def _add_sft(parser):
    parser.add_argument("recipe", help="YAML recipe of trl.SFTConfig + trl.ModelConfig + CompressSFTArguments fields.")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="Any recipe field as `--name value`.")


def _run_sft(args):
    from .sft import parse_sft_cli, run_sft

    summary = run_sft(*parse_sft_cli(["--config", args.recipe, *args.overrides]))
    print(yaml.safe_dump(summary, sort_keys=False))
    return summary


register("sft", "Train a student on one variant with TRL's SFTTrainer (checked assistant masks, packing).",
         _add_sft, _run_sft)


def _add_eval(parser):
    parser.add_argument("--model", required=True, help="Trained student folder (full weights or LoRA adapter).")
    parser.add_argument("--input", required=True, help="Eval set with gold answers: `datasets` folder or Hub id.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", default=None, help="Where eval.json and eval_table/ go (default: --model).")
    parser.add_argument("--max_new_tokens", type=int, default=8192, help="Token cap per completion.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--task", default="auto", choices=["auto", "math", "countdown"])
    parser.add_argument("--answer_column", default="answer")


def _run_eval(args):
    from .evaluate import evaluate_student, save_evaluation
    from .stages import load_input

    summary, table = evaluate_student(
        args.model,
        load_input(args.input, args.split),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        task=args.task,
        answer_column=args.answer_column,
    )
    save_evaluation(summary, table, args.output or args.model)
    print(yaml.safe_dump(summary, sort_keys=False))
    return summary


register("eval", "Greedy accuracy and output length of a trained student (token cap, batched).", _add_eval, _run_eval)


def _add_report(parser):
    parser.add_argument("students", nargs="+", help="Student folders, each with compress_sft.json and eval.json.")
    parser.add_argument("--output", required=True, help="Folder for report.md, comparison.json and the plot.")
    parser.add_argument("--baseline", default="raw", help="Variant the ratios are relative to.")


def _run_report(args):
    from .report import load_runs, write_report

    table, markdown = write_report(load_runs(args.students), args.output, baseline=args.baseline)
    print(markdown)
    return table


register("report", "Compare students across variants: accuracy and costs as ratios to raw, plus a plot.",
         _add_report, _run_report)


# ----------------------------------------------------------------------------------------------------------
# run: chain the stages from a YAML recipe
# ----------------------------------------------------------------------------------------------------------


def _add_run(parser):
    parser.add_argument("recipe", help="YAML recipe: `output_dir`, an input, and one section per stage to run.")


def load_recipe_input(recipe: dict, recipe_path: str) -> str:
    """The recipe's `input` (folder or Hub id), or a dataset built by `input_builder: "module:function"`
    with `input_builder_kwargs`, saved under the output folder."""
    if "input" in recipe:
        return recipe["input"]
    if "input_builder" not in recipe:
        raise ValueError(f"{recipe_path} needs `input` (a dataset folder or Hub id) or `input_builder` (module:function).")
    path = os.path.join(recipe["output_dir"], "input")
    if not os.path.exists(os.path.join(path, "state.json")):
        module_name, _, function_name = recipe["input_builder"].partition(":")
        builder = getattr(importlib.import_module(module_name), function_name)
        builder(**recipe.get("input_builder_kwargs", {})).save_to_disk(path)
    return path


def stage_namespace(name: str, section: dict, input_path: str, output_path: str) -> argparse.Namespace:
    """The argparse namespace of a stage as its subcommand would parse it, with the recipe's values set."""
    parser = argparse.ArgumentParser(prog=f"hf-compress {name}")
    SUBCOMMANDS[name].add_arguments(parser)
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in the recipe's `{name}` section; see `hf-compress {name} --help`.")
    for action in parser._actions:
        if action.dest in section:
            action.required = False  # the recipe provides it
    args = parser.parse_args(["--input", input_path, "--output", output_path])
    for key, value in section.items():
        setattr(args, key, value)
    return args


def _run_recipe(args):
    with open(args.recipe) as f:
        recipe = yaml.safe_load(f) or {}
    if "output_dir" not in recipe:
        raise ValueError(f"{args.recipe} needs an `output_dir`.")
    unknown = sorted(set(recipe) - set(PIPELINE) - {"output_dir", "input", "input_builder", "input_builder_kwargs", "split"})
    if unknown:
        raise ValueError(f"Unknown top-level key(s) {unknown} in {args.recipe}; stages are {PIPELINE}.")
    current = load_recipe_input(recipe, args.recipe)
    results = {}
    for name in PIPELINE:
        if name not in recipe:
            continue
        output = os.path.join(recipe["output_dir"], name)
        stage_args = stage_namespace(name, recipe[name] or {}, current, output)
        if "split" in recipe and current == recipe.get("input"):
            stage_args.split = recipe["split"]
        print(f"[hf-compress run] {name}: {current} -> {output}", file=sys.stderr)
        results[name] = SUBCOMMANDS[name].run(stage_args)
        current = output
    return results


register("run", "Chain the pipeline stages from a YAML recipe.", _add_run, _run_recipe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-compress", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, subcommand in SUBCOMMANDS.items():
        subcommand.add_arguments(subparsers.add_parser(name, help=subcommand.help, description=subcommand.help))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    SUBCOMMANDS[args.command].run(args)


if __name__ == "__main__":
    main()
