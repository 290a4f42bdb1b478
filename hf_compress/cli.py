"""`hf-compress`: one subcommand per pipeline stage, plus `run`, which chains the stages from a YAML recipe.

    hf-compress generate --input problems/ --output runs/c/generate --backend transformers --model runs/sft/model
    hf-compress verify   --input runs/c/generate --output runs/c/verify
    hf-compress compress --input runs/c/verify --output runs/c/compress --compressor extractive --tokenizer runs/sft/model
    hf-compress build    --input runs/c/compress --output runs/c/build --tokenizer runs/sft/model
    hf-compress run examples/recipes/compress_arithmetic.yaml [generate.n=1 output_dir=runs/x ...] [--dry_run]
    hf-compress sft      examples/recipes/sft_lora_qwen3.yaml --dataset_path runs/c/build --variant compressed --output_dir runs/c/students/compressed
    hf-compress eval     --model runs/c/students/compressed --input test_problems/
    hf-compress report   runs/c/students/raw runs/c/students/compressed --output runs/c/report

One argument system: a subcommand's options are the fields of its dataclasses (`hf_compress.arguments`,
`hf_compress.backends.BackendConfig` / `SamplingConfig`), parsed by TRL's `TrlParser` (an `HfArgumentParser`) from
the command line, or built from a recipe section with `parse_dict` (`hf_compress.recipe`); the dataclasses check
their values themselves. Option names are exact (no prefix matching) and a typo gets a "did you mean". Only
`report` parses with plain argparse: it reads JSON files and must start without TRL, torch or transformers.

Adding a subcommand is one `register(name, help, run, arguments=(...))` call. A stage that reads `--input` and
writes `--output` (its first dataclass is `StageIO`) can also be appended to `PIPELINE`, and `run` will chain it.

Errors print one line (exit code 2: the command, recipe or inputs are wrong; 1: a failure while running);
`hf-compress --debug <command> ...` shows the traceback. Only the parser of the subcommand that runs is built,
and each imports what it needs when it runs, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .arguments import (
    BuildArguments,
    CompressArguments,
    EvalArguments,
    GenerateArguments,
    StageIO,
    TaskArguments,
    TraceColumns,
    UsageError,
    VerifyArguments,
    check_local_path,
    coerce_values,
)
from .backends.config import BackendConfig, SamplingConfig

# Stages `run` chains, in order, each reading the previous one's output folder.
PIPELINE: list[str] = ["generate", "verify", "compress", "build"]


# ----------------------------------------------------------------------------------------------------------
# Parsers: exact option names, one-line errors with a "did you mean"
# ----------------------------------------------------------------------------------------------------------


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """`--help` names each option's default, as transformers' and TRL's parsers do; unset (None) and off flags are
    left out, and so is an option whose help already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not action.option_strings or unset or "default" in help:
            return action.help
        return f"{help} (default: %(default)s)".lstrip()

    def _format_action_invocation(self, action: argparse.Action) -> str:
        # HfArgumentParser adds `--a-b` next to each `--a_b`: show one spelling (both are accepted).
        names = set(action.option_strings)
        shown = [o for o in action.option_strings if not (o.startswith("--") and "--" + o[2:].replace("-", "_") in
                                                          names and "-" in o[2:])]
        if shown != action.option_strings:
            action = copy.copy(action)
            action.option_strings = shown
        return super()._format_action_invocation(action)


def did_you_mean(words: list[str], candidates, quote: bool = False) -> str:
    """` (did you mean X?)` for the words that are close to one of `candidates`, else ''."""
    pairs = [(word, difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)) for word in words]
    pairs = [(word, repr(close[0]) if quote else close[0]) for word, close in pairs if close]
    if not pairs:
        return ""
    if len(pairs) == 1:
        return f" (did you mean {pairs[0][1]}?)"
    return " (did you mean " + ", ".join(f"{close} for {word}" for word, close in pairs) + "?)"


class _ExactOptions:
    """For an `argparse.ArgumentParser`: no abbreviated options (`--learning_rat` is not `--learning_rate`), and an
    error is one line, `<prog>: error: <message>`, with a "did you mean" for a mistyped option or choice."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments: "):
            options = [o for o in self._option_string_actions if o.startswith("--")]
            words = [w.split("=")[0] for w in message.split(": ", 1)[1].split() if w.startswith("--")]
            message += did_you_mean(words, options)
        elif match := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message):
            choices = [choice.strip().strip("'") for choice in match.group(2).split(",")]
            message += did_you_mean([match.group(1)], choices, quote=True)
        self.exit(2, f"{self.prog}: error: {message}\n")


class CommandParser(_ExactOptions, argparse.ArgumentParser):
    """A plain argparse parser with exact option names and one-line errors (the top level, and `report`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


@functools.cache
def _trl_command_parser():
    from trl import TrlParser

    class TrlCommandParser(_ExactOptions, TrlParser):
        """TRL's parser (an `HfArgumentParser`) with exact option names and one-line errors."""

        def __init__(self, dataclass_types=None, **kwargs):
            kwargs.setdefault("allow_abbrev", False)
            kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
            super().__init__(dataclass_types, **kwargs)

        def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
            kwargs["look_for_args_file"] = False  # no `<script>.args` file read behind the user's back
            *outputs, remaining = super().parse_args_into_dataclasses(args, return_remaining_strings=True, **kwargs)
            if return_remaining_strings:
                return (*outputs, remaining)
            if remaining:
                self.error(f"unrecognized arguments: {' '.join(remaining)}")
            return tuple(outputs)

    return TrlCommandParser


def dataclass_parser(dataclass_types, **kwargs) -> argparse.ArgumentParser:
    """TRL's `TrlParser` for `dataclass_types` (one `--field` option each), with exact option names and one-line
    errors that suggest the closest option. TRL is imported here, not when this module is."""
    return _trl_command_parser()(dataclass_types, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------------------


class CommandArguments:
    """What one subcommand parsed: its argument dataclasses (`args[BackendConfig]`) and its plain arguments;
    `args.name` reads a field of any of them."""

    def __init__(self, command: str, parts=(), extra: dict | None = None):
        self.command, self.parts, self.extra = command, tuple(parts), dict(extra or {})

    def __getitem__(self, cls: type):
        return next(part for part in self.parts if isinstance(part, cls))

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("command", "parts", "extra"):
            raise AttributeError(name)
        for part in self.parts:
            if name in {f.name for f in dataclasses.fields(part)}:
                return getattr(part, name)
        if name in self.extra:
            return self.extra[name]
        raise AttributeError(f"hf-compress {self.command} has no argument {name!r}")

    def as_dict(self) -> dict:
        values = {f.name: getattr(part, f.name) for part in self.parts for f in dataclasses.fields(part) if f.init}
        return {**values, **{k: v for k, v in self.extra.items() if k != "debug"}}


@dataclass
class Subcommand:
    help: str
    run: Callable[[CommandArguments], object]
    arguments: tuple[type, ...] = ()  # dataclasses whose fields are the options (TRL's parser)
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # positional and plain arguments
    check: Callable[[CommandArguments], None] | None = None  # checks that span several dataclasses
    paths: Callable[[CommandArguments], list[tuple[str, str | None]]] | None = None  # (option, local path) it loads
    plain: bool = False  # parsed by plain argparse (a command that must start without TRL)
    parse: Callable[[list[str]], CommandArguments] | None = None  # a command that parses its own command line


SUBCOMMANDS: dict[str, Subcommand] = {}


def register(name: str, help: str, run: Callable, **kwargs) -> None:
    SUBCOMMANDS[name] = Subcommand(help, run, **kwargs)


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `hf-compress <name>`."""
    command = SUBCOMMANDS[name]
    kwargs = {"prog": f"hf-compress {name}", "description": command.help}
    parser = CommandParser(**kwargs) if command.plain else dataclass_parser(command.arguments, **kwargs)
    if command.add_arguments:
        command.add_arguments(parser)
    if name != "sft":  # sft passes every option after the recipe to TRL (SFTConfig has a `debug` field)
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="Show the full traceback of an error.")
    return parser


def parse_command(name: str, argv: list[str]) -> CommandArguments:
    """`hf-compress <name> <argv...>` parsed into its dataclasses and checked."""
    command = SUBCOMMANDS[name]
    if command.parse:
        return command.parse(argv)
    parser = command_parser(name)
    if command.plain:
        args = CommandArguments(name, extra=vars(parser.parse_args(argv)))
    else:
        outputs = parser.parse_args_into_dataclasses(argv)
        rest = outputs[len(command.arguments) :]
        args = CommandArguments(name, outputs[: len(command.arguments)], vars(rest[0]) if rest else {})
    if command.check:
        command.check(args)
    return args


def option_names(name: str) -> list[str]:
    """The options of `hf-compress <name>` that come from its dataclasses (the keys of its recipe section)."""
    return [f.name for cls in SUBCOMMANDS[name].arguments for f in dataclasses.fields(cls) if f.init]


def command_from_dict(name: str, values: dict) -> CommandArguments:
    """The arguments of `hf-compress <name>` from a mapping of option: value (a recipe section), built by the same
    parser's `parse_dict` into the same dataclasses, which read and check the values as the command line would."""
    command = SUBCOMMANDS[name]
    required = [f.name for cls in command.arguments for f in dataclasses.fields(cls)
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [key for key in required if key not in values]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join('--' + key for key in missing)}")
    for cls in command.arguments:  # every type first, then each dataclass's own checks (as argparse does)
        values = coerce_values(cls, values)
    args = CommandArguments(name, dataclass_parser(command.arguments).parse_dict(values))
    if command.check:
        command.check(args)
    return args


# ----------------------------------------------------------------------------------------------------------
# The pipeline stages
# ----------------------------------------------------------------------------------------------------------


def _run_generate(args: CommandArguments):
    from .generate import generate
    from .stages import load_input

    io, options = args[StageIO], args[GenerateArguments]
    args[BackendConfig].check(model_required=True)
    check_local_path(io.input, "--input")
    return generate(
        load_input(io.input, io.split),
        args[BackendConfig],  # built only if generation remains to be done
        args[SamplingConfig],
        output_dir=io.output,
        problem_column=options.problem_column,
        answer_column=options.answer_column,
        system_prompt=options.system_prompt,
        prompt_template=options.prompt_template,
        shard_size=options.shard_size,
        batch_size=options.problems_per_call,
        overwrite=io.overwrite,
        skip_invalid_rows=options.skip_invalid_rows,
    )


register("generate", "Sample teacher traces (n per problem), resumably.", _run_generate,
         arguments=(StageIO, BackendConfig, SamplingConfig, GenerateArguments),
         paths=lambda args: args[BackendConfig].local_paths())


def _run_verify(args: CommandArguments):
    from .stages import load_input
    from .verify import verify

    io, options, columns = args[StageIO], args[VerifyArguments], args[TraceColumns]
    check_local_path(io.input, "--input")
    return verify(
        load_input(io.input, io.split),
        task=args.task,
        completion_column=columns.completion_column,
        answer_column=columns.answer_column,
        problem_column=columns.problem_column,
        keep_only_correct=options.keep_only_correct,
        keep_truncated=options.keep_truncated,
        timeout_seconds=options.timeout_seconds,
        output_dir=io.output,
        shard_size=options.shard_size,
        overwrite=io.overwrite,
        skip_invalid_rows=options.skip_invalid_rows,
    )


register("verify", "Mark correct traces (math-verify, exact, numeric, Countdown) and per-problem pass rates.",
         _run_verify, arguments=(StageIO, TaskArguments, TraceColumns, VerifyArguments))


def _compress_tokenizer(args: CommandArguments) -> tuple[str, str | None]:
    backend = args[BackendConfig]
    return ("--tokenizer", backend.tokenizer) if backend.tokenizer else ("--model", backend.model)


def _check_compress(args: CommandArguments) -> None:
    options, backend = args[CompressArguments], args[BackendConfig]
    if not _compress_tokenizer(args)[1]:
        raise UsageError("compress counts tokens: pass --tokenizer (or --model, whose tokenizer is then used).")
    if options.compressor == "llm":
        backend.check(model_required=True)
        from .compress import COMPRESSION_PROMPTS

        if options.prompt_version not in COMPRESSION_PROMPTS:
            raise UsageError(f"argument --prompt_version: invalid choice: {options.prompt_version!r} (choose from "
                             f"{', '.join(repr(v) for v in sorted(COMPRESSION_PROMPTS))})")


def _run_compress(args: CommandArguments):
    from .compress import ExtractiveCompressor, LLMCompressor, compress
    from .stages import load_input

    io, options, columns = args[StageIO], args[CompressArguments], args[TraceColumns]
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
        task=args.task,
        completion_column=columns.completion_column,
        problem_column=columns.problem_column,
        answer_column=columns.answer_column,
        output_dir=io.output,
        shard_size=options.shard_size,
        batch_size=options.problems_per_call,
        overwrite=io.overwrite,
        skip_invalid_rows=options.skip_invalid_rows,
    )


def _compress_paths(args: CommandArguments) -> list[tuple[str, str | None]]:
    llm = args[CompressArguments].compressor == "llm"
    return [_compress_tokenizer(args), *(args[BackendConfig].local_paths() if llm else [])]


register("compress", "Rewrite traces shorter (LLM or extractive) and check that the answer survived.", _run_compress,
         arguments=(StageIO, CompressArguments, BackendConfig, TaskArguments, TraceColumns),
         check=_check_compress, paths=_compress_paths)


def _run_build(args: CommandArguments):
    from .build import build, statistics_table, variant_statistics
    from .stages import load_input, pipeline_records

    io, options, columns = args[StageIO], args[BuildArguments], args[TraceColumns]
    check_local_path(io.input, "--input")
    check_local_path(options.tokenizer, "--tokenizer")
    dataset = load_input(io.input, io.split)
    built = build(
        dataset,
        options.tokenizer,
        variants=options.variants,
        problem_column=columns.problem_column,
        answer_column=columns.answer_column,
        completion_column=columns.completion_column,
        output_dir=io.output,
        push_to_hub=options.push_to_hub,
        overwrite=io.overwrite,
    )
    print(statistics_table(variant_statistics(built), pipeline_records(dataset)))
    return built


register("build", "Write the SFT variants (raw, compressed, answer_only, truncated) in messages form.", _run_build,
         arguments=(StageIO, BuildArguments, TraceColumns), paths=lambda args: [("--tokenizer", args.tokenizer)])


# ----------------------------------------------------------------------------------------------------------
# run: chain the stages from a YAML recipe (hf_compress.recipe)
# ----------------------------------------------------------------------------------------------------------


def _add_run(parser):
    parser.add_argument("recipe", help="YAML recipe: `output_dir`, an input, and one section per stage to run.")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="Recipe values to override, dotted for stage sections: `generate.n=1 output_dir=runs/x`.")
    parser.add_argument("--dry_run", action="store_true",
                        help="Check the recipe and print each stage's arguments; runs and imports none of its code.")


def _run_recipe(args: CommandArguments):
    from .recipe import run_recipe

    return run_recipe(args.recipe, args.overrides, dry_run=args.dry_run)


register("run", "Chain the pipeline stages from a YAML recipe.", _run_recipe, add_arguments=_add_run)


# ----------------------------------------------------------------------------------------------------------
# Students: sft, eval, report
# ----------------------------------------------------------------------------------------------------------


def _add_sft(parser):
    parser.add_argument("recipe", metavar="RECIPE",
                        help="YAML recipe of trl.SFTConfig + trl.ModelConfig + CompressSFTArguments fields.")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="Any recipe field as `--name value` (`hf-compress sft RECIPE --help` lists them).")


class _HelpWithEpilog(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    pass


def sft_help(recipe: str | None = None, full: bool = False) -> str:
    """`hf-compress sft [RECIPE] --help`: the data and model options, and the values the recipe sets; `full` lists
    every `trl.SFTConfig` field too (which imports TRL's trainer, and torch: seconds)."""
    import yaml
    from trl import ModelConfig

    from .arguments import CompressSFTArguments

    if full:
        from .sft import RECIPE_TYPES as types
    else:
        types = (CompressSFTArguments, ModelConfig)
    lines = []
    if recipe is not None:
        try:
            with open(recipe) as f:
                values = yaml.safe_load(f) or {}
            for key, value in values.items() if isinstance(values, dict) else ():
                if key != "env":
                    shown = " ".join(map(str, value)) if isinstance(value, list) else str(value)
                    lines.append(f"  --{key} {shown}")
        except (OSError, yaml.YAMLError) as error:
            lines.append(f"  (cannot read it: {error})")
    epilog = (f"set by {recipe} (override any of them with --name value):\n" + "\n".join(lines) + "\n\n"
              if recipe is not None else "")
    if not full:
        epilog += ("Every trl.SFTConfig field (output_dir, learning_rate, num_train_epochs, max_length, packing, seed, "
                   "...) is\nan option too: `hf-compress sft RECIPE --help_all` lists them all (slower: it imports "
                   "TRL's trainer).\n")
    parser = dataclass_parser(
        types, prog="hf-compress sft", usage="hf-compress sft RECIPE [--name value ...]",
        description=SUBCOMMANDS["sft"].help + " Relative paths, in the recipe too, are relative to the working "
        "directory.", epilog=epilog, formatter_class=_HelpWithEpilog)
    parser.add_argument("recipe", metavar="RECIPE", help="YAML recipe of trl.SFTConfig, trl.ModelConfig and "
                        "hf_compress.sft.CompressSFTArguments fields.")
    if not full:
        parser.add_argument("--help_all", action="store_true", help="List every option, trl.SFTConfig's too.")
    return parser.format_help()


def _parse_sft(argv: list[str]) -> CommandArguments:
    if any(item in ("-h", "--help", "--help_all") for item in argv):
        recipe = argv[0] if argv and not argv[0].startswith("-") else None
        print(sft_help(recipe, full="--help_all" in argv))
        sys.exit(0)
    parser = command_parser("sft")
    if not argv:
        parser.error("the following arguments are required: RECIPE (`hf-compress sft --help` lists the options)")
    return CommandArguments("sft", extra=vars(parser.parse_args(argv)))


def _run_sft(args: CommandArguments):
    import yaml

    if not os.path.isfile(args.recipe):
        raise FileNotFoundError(f"RECIPE: no such file: {args.recipe} (relative to {os.getcwd()})")
    from .sft import parse_sft_cli, run_sft

    script_args, training_args, model_args = parse_sft_cli(["--config", args.recipe, *args.overrides])
    check_local_path(model_args.model_name_or_path, "--model_name_or_path")
    check_local_path(script_args.dataset_path, "--dataset_path")
    summary = run_sft(script_args, training_args, model_args)
    print(yaml.safe_dump(summary, sort_keys=False))
    return summary


register("sft", "Train a student on one variant with TRL's SFTTrainer (checked assistant masks, packing).", _run_sft,
         add_arguments=_add_sft, plain=True, parse=_parse_sft)


def _run_eval(args: CommandArguments):
    import yaml

    from .evaluate import evaluate_student, save_evaluation
    from .stages import load_input

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
         arguments=(EvalArguments, TaskArguments))


def _add_report(parser):
    parser.add_argument("students", nargs="+", help="Student folders, each with compress_sft.json and eval.json.")
    parser.add_argument("--output", required=True, help="Folder for report.md, comparison.json and the plot.")
    parser.add_argument("--baseline", default="raw", help="Variant the ratios are relative to.")


def _run_report(args: CommandArguments):
    from .report import load_runs, write_report

    for student in args.students:
        check_local_path(student, "student")
    table, markdown = write_report(load_runs(args.students), args.output, baseline=args.baseline)
    print(markdown)
    return table


# Plain argparse: report reads JSON files, and starts without importing TRL, transformers or torch.
register("report", "Compare students across variants: accuracy and costs as ratios to raw, plus a plot.", _run_report,
         add_arguments=_add_report, plain=True)


# ----------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------


def _top_level() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = CommandParser(prog="hf-compress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of an error.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in SUBCOMMANDS.items():
        subparsers.add_parser(name, help=command.help, add_help=False)  # stands for the subcommand's own parser
    return parser, subparsers


def build_parser() -> argparse.ArgumentParser:
    """The whole command line as one argparse tree, every subcommand's parser built (for the docs and their tests);
    `main` builds only the parser of the subcommand it runs."""
    parser, subparsers = _top_level()
    for name in SUBCOMMANDS:
        subparsers.choices[name] = command_parser(name)
    return parser


def _is_usage_error(error: BaseException) -> bool:
    stages = sys.modules.get(f"{__package__}.stages")  # not imported: the error cannot be one of its own
    return isinstance(error, (ValueError, FileNotFoundError) + ((stages.StageMismatchError,) if stages else ()))


def main(argv: list[str] | None = None) -> None:
    """Run one subcommand. Errors print one line (exit 2: the command or its inputs are wrong; 1: it failed while
    running; 130: interrupted); `--debug` shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    position = next((i for i, item in enumerate(argv) if not item.startswith("-")), len(argv))
    top = _top_level()[0].parse_args(argv[: position + 1])  # --debug, --help, and a known subcommand
    command, rest = top.command, argv[position + 1 :]
    debug = top.debug or (command != "sft" and "--debug" in rest)
    try:
        SUBCOMMANDS[command].run(parse_command(command, rest))
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"hf-compress {command}: interrupted. Finished shards are kept: rerun the same command to resume.",
              file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into a message and an exit code
        if debug:
            raise
        usage = _is_usage_error(error)
        kind = "" if usage else f"{type(error).__name__}: "
        message = " ".join(str(error).split()) or repr(error)
        print(f"hf-compress {command}: error: {kind}{message} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(2 if usage else 1)


if __name__ == "__main__":
    main()
