"""`hf-compress`: one subcommand per pipeline stage, plus `run`, which chains the stages from a YAML recipe.

    hf-compress generate --input problems/ --output runs/c/generate --backend transformers --model runs/sft/model
    hf-compress verify   --input runs/c/generate --output runs/c/verify
    hf-compress compress --input runs/c/verify --output runs/c/compress --compressor extractive --tokenizer runs/sft/model
    hf-compress build    --input runs/c/compress --output runs/c/build --tokenizer runs/sft/model
    hf-compress run examples/recipes/compress_arithmetic.yaml [generate.n=1 output_dir=runs/x ...] [--dry_run]
    hf-compress sft      examples/recipes/sft_lora_qwen3.yaml --dataset_path runs/c/build --variant compressed --output_dir runs/c/students/compressed
    hf-compress eval     --model runs/c/students/compressed --input test_problems/
    hf-compress report   runs/c/students/raw runs/c/students/compressed --output runs/c/report

Adding a subcommand is one `register(name, help, add_arguments, run)` call. A stage that reads `--input`
and writes `--output` can also be appended to `PIPELINE`, and `run` will chain it (its recipe section holds
its other arguments, by their argparse names, parsed by the stage's own parser).

Errors print one line (exit code 2: the command, recipe or inputs are wrong; 1: a failure while running);
`hf-compress --debug <command> ...` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import shutil
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
                                nargs=f.metadata.get("nargs"), help=f.metadata.get("help"))


def dataclass_from_args(config_class: type, args: argparse.Namespace):
    return config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)})


def add_io_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="A `datasets` folder (save_to_disk) or a Hub dataset id.")
    parser.add_argument("--split", default="train", help="Split to read when the input has several.")
    parser.add_argument("--output", required=True, help="Folder to write the stage's `datasets` output to.")
    parser.add_argument("--overwrite", action="store_true", help="Discard an output folder from other arguments.")


def add_task_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="auto", choices=["auto", "math", "countdown"],
                        help="How answers are checked; auto: Countdown rules for rows with `numbers` and `target`, "
                             "math-verify (with exact and numeric fallbacks) for the others.")


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
    parser.add_argument("--problem_column", default="problem", help="Column holding the problem text.")
    parser.add_argument("--answer_column", default="answer", help="Column holding the gold final answer.")
    parser.add_argument("--system_prompt", default=None, help="System message of every prompt (default: none).")
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
    add_task_argument(parser)
    add_trace_column_arguments(parser)
    parser.add_argument("--keep_only_correct", action="store_true", help="Drop incorrect traces (after pass rates).")
    parser.add_argument("--timeout_seconds", type=int, default=5, help="math-verify deadline per parse/compare.")
    parser.add_argument("--shard_size", type=int, default=2048, help="Traces per saved shard (resume unit).")


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
    parser.add_argument("--compressor", default="extractive", choices=["extractive", "llm"],
                        help="extractive: keep each sentence's equations and the final answer (no model); llm: "
                             "rewrite with --model.")
    parser.add_argument("--prompt_version", default="v1", help="llm: key of COMPRESSION_PROMPTS.")
    parser.add_argument("--temperature", type=float, default=0.0, help="llm: sampling temperature.")
    parser.add_argument("--max_new_tokens", type=int, default=1024, help="llm: cap on the rewrite's tokens.")
    add_dataclass_arguments(parser, BackendConfig)  # llm: the compressor model; --tokenizer also counts tokens
    add_task_argument(parser)
    add_trace_column_arguments(parser)
    parser.add_argument("--shard_size", type=int, default=256, help="Traces per saved shard (resume unit).")
    parser.add_argument("--problems_per_call", type=int, default=64, help="llm: traces sent to the backend at once.")


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
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="Variants to write, one split each.")
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
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="Any recipe field as `--name value` (`hf-compress sft RECIPE --help` lists them).")


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
    parser.add_argument("--split", default="test", help="Split to read when the input has several.")
    parser.add_argument("--output", default=None, help="Where eval.json and eval_table/ go (default: --model).")
    parser.add_argument("--max_new_tokens", type=int, default=8192, help="Token cap per completion.")
    parser.add_argument("--batch_size", type=int, default=32, help="Prompts per generate call.")
    add_task_argument(parser)
    parser.add_argument("--answer_column", default="answer", help="Column holding the gold final answer.")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="Load a student whose modeling code is saved with it (hf_dla)."
    )


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
        trust_remote_code=args.trust_remote_code,
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


class UsageError(ValueError):
    """A command line or recipe that cannot work: reported in one line, exit code 2."""


class _RaisingParser(argparse.ArgumentParser):
    """A stage's parser for recipe values: a bad value raises (naming the recipe section) instead of exiting."""

    def __init__(self, *args, where: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.where = where

    def error(self, message):
        raise UsageError(f"{self.where}: {message}")


RECIPE_KEYS = ("output_dir", "input", "split", "input_builder", "input_builder_kwargs")
CHAIN_KEYS = ("input", "output", "split")  # set by `run` itself, from the recipe's top level and the stage order
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _add_run(parser):
    parser.add_argument("recipe", help="YAML recipe: `output_dir`, an input, and one section per stage to run.")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="Recipe values to override, dotted for stage sections: `generate.n=1 output_dir=runs/x`.")
    parser.add_argument("--dry_run", action="store_true", help="Check the recipe and print each stage's arguments.")


def as_bool(value, where: str) -> bool:
    """YAML booleans, and the strings a user may quote (`"false"`), as a bool; anything else is an error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise UsageError(f"{where}: expected true or false, got {value!r}.")


def section_argv(parser: argparse.ArgumentParser, section: dict, where: str) -> list[str]:
    """A recipe section as the command line that says the same, so the stage's parser checks types and choices."""
    actions = {action.dest: action for action in parser._actions}
    argv = []
    for key, value in section.items():
        action, option = actions[key], actions[key].option_strings[0]
        if value is None:
            continue  # set after parsing: null keeps an option unset
        if action.nargs == 0:  # a flag: store_true or --x/--no-x
            flag = as_bool(value, f"{where}, `{key}`")
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(option if flag else f"--no-{key}")
            elif flag:
                argv.append(option)
        elif action.nargs in ("+", "*"):
            argv += [option, *(str(v) for v in (value if isinstance(value, list) else [value]))]
        elif isinstance(value, (list, dict)):
            raise UsageError(f"{where}, `{key}`: expected a single value, got {value!r}.")
        else:
            argv.append(f"{option}={value}")
    return argv


def stage_namespace(name: str, section: dict, input_path: str, output_path: str, where: str = "") -> argparse.Namespace:
    """The namespace `hf-compress <name>` would parse from the recipe section's values, given as its command line
    (same types, choices and booleans); a bad value raises `UsageError` naming the section and the key."""
    where = where or f"the recipe's `{name}` section"
    if not isinstance(section, dict):
        raise UsageError(f"{where} must be a mapping of argument: value, got {section!r}.")
    chained = sorted(set(section) & set(CHAIN_KEYS))
    if chained:
        raise UsageError(f"{where} sets {chained}, which `run` sets itself: each stage reads the previous stage's "
                         "folder and writes <output_dir>/<stage>. Set the first input and `split` at the top level.")
    parser = _RaisingParser(prog=f"hf-compress {name}", where=where)
    SUBCOMMANDS[name].add_arguments(parser)
    unknown = sorted(set(section) - {action.dest for action in parser._actions if action.dest != "help"})
    if unknown:
        raise UsageError(f"Unknown key(s) {unknown} in {where}; see `hf-compress {name} --help`.")
    args = parser.parse_args(["--input", input_path, "--output", output_path, *section_argv(parser, section, where)])
    for key, value in section.items():
        if value is None:
            setattr(args, key, None)
    return args


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    """`key=value` pairs (values read as YAML; dotted keys reach into stage sections) applied to a copy."""
    recipe = {key: dict(value) if isinstance(value, dict) else value for key, value in recipe.items()}
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise UsageError(f"Override {override!r} is not `key=value` (e.g. `generate.n=1`).")
        value = yaml.safe_load(text) if text else None
        section, dot, field = key.partition(".")
        if dot:
            if not isinstance(recipe.get(section) or {}, dict):
                raise UsageError(f"Override {override!r}: `{section}` is not a section of the recipe.")
            recipe[section] = {**(recipe.get(section) or {}), field: value}
        else:
            recipe[key] = value
    return recipe


def load_recipe(path: str, overrides: list[str] = ()) -> dict:
    """Read and check a `run` recipe's top level (the stage sections are checked by `plan_stages`)."""
    try:
        with open(path) as f:
            recipe = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UsageError(f"No recipe at {path}.") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(recipe, dict):
        raise UsageError(f"{path} must hold a YAML mapping, got {type(recipe).__name__}.")
    recipe = apply_overrides(recipe, list(overrides))
    unknown = sorted(set(recipe) - set(PIPELINE) - set(RECIPE_KEYS))
    if unknown:
        raise UsageError(f"Unknown top-level key(s) {unknown} in {path}; stages are {PIPELINE}, other keys "
                         f"{list(RECIPE_KEYS)}.")
    if not isinstance(recipe.get("output_dir"), str):
        raise UsageError(f"{path} needs an `output_dir` (a folder; each stage writes <output_dir>/<stage>).")
    if ("input" in recipe) == ("input_builder" in recipe):
        raise UsageError(f"{path} needs exactly one of `input` (a dataset folder or Hub id) and `input_builder` "
                         "(module:function returning a datasets.Dataset).")
    if not isinstance(recipe.get("input_builder_kwargs", {}), dict):
        raise UsageError(f"{path}: `input_builder_kwargs` must be a mapping of keyword arguments.")
    if not any(name in recipe for name in PIPELINE):
        raise UsageError(f"{path} has no stage section; add some of {PIPELINE}.")
    return recipe


def plan_stages(recipe: dict, recipe_path: str) -> list[tuple[str, argparse.Namespace]]:
    """Every stage's parsed arguments, checked before anything runs (a typo in `build` fails before `generate`)."""
    current = recipe["input"] if "input" in recipe else os.path.join(recipe["output_dir"], "input")
    plan = []
    for name in PIPELINE:
        if name not in recipe:
            continue
        output = os.path.join(recipe["output_dir"], name)
        stage_args = stage_namespace(name, recipe[name] or {}, current, output,
                                     where=f"{recipe_path}: section `{name}`")
        if "split" in recipe and current == recipe.get("input"):
            stage_args.split = recipe["split"]
        plan.append((name, stage_args))
        current = output
    return plan


def locate_input_builder(spec: str, recipe_path: str) -> str:
    """Where `module:function`'s module is, without running it: installed, else in the current directory, else in
    the recipe's folder or the nearest folder above it that holds it (so `kit.tiny:...` works from any
    directory); that folder is put on `sys.path`. Returns the module's file."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise UsageError(f"input_builder must be `module:function` (e.g. `my_data:build_problems`), got {spec!r}.")
    top = module_name.split(".")[0]
    if importlib.util.find_spec(top) is None:
        folder = os.path.dirname(os.path.abspath(recipe_path))
        candidates = [os.getcwd(), folder]
        while os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
            candidates.append(folder)
        found = next((c for c in candidates if os.path.exists(os.path.join(c, top + ".py"))
                      or os.path.isdir(os.path.join(c, top))), None)
        if found is None:
            raise UsageError(f"input_builder {spec!r}: module {top!r} is neither installed nor in the current "
                             "directory, the recipe's folder or a folder above it.")
        sys.path.insert(0, found)
    try:
        module_spec = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:
        module_spec = None
    if module_spec is None:
        raise UsageError(f"input_builder {spec!r}: no module {module_name!r} in {top!r}.")
    return module_spec.origin


def import_input_builder(spec: str, recipe_path: str) -> Callable:
    """The `module:function` named by a recipe's `input_builder` (see `locate_input_builder`)."""
    locate_input_builder(spec, recipe_path)
    module_name, _, function_name = spec.partition(":")
    function = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(function):
        raise UsageError(f"input_builder {spec!r}: {module_name} has no function {function_name!r}.")
    return function


def input_builder_arguments(recipe: dict, builder: Callable) -> dict:
    """What the built input depends on: the builder, its arguments and its module's source code."""
    source = inspect.getsourcefile(builder)
    code = hashlib.sha256(open(source, "rb").read()).hexdigest()[:16] if source else None
    return {"input_builder": recipe["input_builder"], "input_builder_kwargs": recipe.get("input_builder_kwargs", {}),
            "source_sha256": code}


def load_recipe_input(recipe: dict, recipe_path: str) -> str:
    """The recipe's `input` (folder or Hub id), or the dataset built by `input_builder` with `input_builder_kwargs`,
    saved to <output_dir>/input with a fingerprint of the builder, its arguments and its source: when any of
    them changes the input is rebuilt (and the stages after it refuse their old results)."""
    if "input" in recipe:
        return recipe["input"]
    from datasets import Dataset

    from .stages import STAGE_FILE, StageMismatchError, check_not_empty, load_finished_stage, save_stage

    path = os.path.join(recipe["output_dir"], "input")
    builder = import_input_builder(recipe["input_builder"], recipe_path)
    arguments = input_builder_arguments(recipe, builder)
    fingerprint = hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:16]
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, STAGE_FILE)) and os.listdir(path):
        if not os.path.exists(os.path.join(path, "state.json")):
            raise UsageError(f"{path} exists and is not a built input; move it away or change output_dir.")
        shutil.rmtree(path)  # built by an older hf-compress, without a fingerprint: cannot be trusted
    try:
        if load_finished_stage(path, "input", fingerprint, arguments) is not None:
            return path
    except StageMismatchError:
        print(f"[hf-compress run] the input builder or its arguments changed: rebuilding {path}", file=sys.stderr)
        shutil.rmtree(path)
    built = builder(**recipe.get("input_builder_kwargs", {}))
    if not isinstance(built, Dataset):
        raise UsageError(f"input_builder {recipe['input_builder']!r} returned {type(built).__name__}, "
                         "not a datasets.Dataset.")
    check_not_empty(built, "input_builder")
    save_stage(built, path, stage="input", fingerprint=fingerprint, arguments=arguments, stats={"rows": len(built)})
    return path


def _run_recipe(args):
    from .stages import StageMismatchError

    recipe = load_recipe(args.recipe, args.overrides)
    plan = plan_stages(recipe, args.recipe)
    if args.dry_run:
        if "input_builder" in recipe:
            print(f"input: {recipe['input_builder']} in {locate_input_builder(recipe['input_builder'], args.recipe)}")
        for name, stage_args in plan:
            print(f"{name}: " + " ".join(f"{k}={v!r}" for k, v in vars(stage_args).items() if k != "command"))
        return plan
    load_recipe_input(recipe, args.recipe)
    results = {}
    for name, stage_args in plan:
        print(f"[hf-compress run] {name}: {stage_args.input} -> {stage_args.output}", file=sys.stderr)
        try:
            results[name] = SUBCOMMANDS[name].run(stage_args)
        except StageMismatchError as error:
            raise StageMismatchError(f"{error} In a recipe: set `overwrite: true` in the `{name}` section "
                                     f"(or pass `{name}.overwrite=true`), or choose another output_dir.") from error
    return results


register("run", "Chain the pipeline stages from a YAML recipe.", _add_run, _run_recipe)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """`--help` names each option's default, as transformers' and TRL's parsers do; unset (None) and off flags are
    left out, and so is an option whose help already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not action.option_strings or unset or "default" in help:
            return action.help
        return f"{help} (default: %(default)s)".lstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-compress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of an error.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, subcommand in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=subcommand.help, description=subcommand.help,
                                          formatter_class=DefaultsHelpFormatter)
        subcommand.add_arguments(subparser)
        if name != "sft":  # sft passes every option after the recipe to TRL: use `hf-compress --debug sft ...`
            subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                   help="Show the full traceback of an error.")
    return parser


def _is_usage_error(error: BaseException) -> bool:
    from .stages import StageMismatchError

    return isinstance(error, (ValueError, StageMismatchError, FileNotFoundError))


def main(argv: list[str] | None = None) -> None:
    """Run one subcommand. Errors print one line (exit 2: the command or its inputs are wrong; 1: it failed while
    running; 130: interrupted); `--debug` shows the traceback instead."""
    args = build_parser().parse_args(argv)
    try:
        SUBCOMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"hf-compress {args.command}: interrupted. Finished shards are kept: rerun the same command to resume.",
              file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into a message and an exit code
        if args.debug:
            raise
        usage = _is_usage_error(error)
        kind = "" if usage else f"{type(error).__name__}: "
        message = " ".join(str(error).split()) or repr(error)
        print(f"hf-compress {args.command}: error: {kind}{message} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(2 if usage else 1)


if __name__ == "__main__":
    main()
