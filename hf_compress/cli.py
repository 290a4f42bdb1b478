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

This module is argv -> registry -> run: each command registers itself in its own module under `hf_compress.commands`
(`hf_compress.commands.registry.register(name, help, run, arguments=(...), position=...)`); a stage that reads
`--input` and writes `--output` (its first dataclass is `StageIO`) passes `pipeline=True`, and `run` chains it.
No hf_compress module imports this one.

Errors print one line (exit code 2: the command, recipe or inputs are wrong; 1: a failure while running);
`hf-compress --debug <command> ...` shows the traceback. Only the parser of the subcommand that runs is built,
and each imports what it needs when it runs, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys

from . import commands
from .commands import run  # noqa: F401 - registers `run`, which chains the stages `commands` registers
from .commands.registry import CommandParser, command_parser, parse_command

SUBCOMMANDS = commands.SUBCOMMANDS


def top_level_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = CommandParser(prog="hf-compress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of an error.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in SUBCOMMANDS.items():
        subparsers.add_parser(name, help=command.help, add_help=False)  # stands for the subcommand's own parser
    return parser, subparsers


def build_parser() -> argparse.ArgumentParser:
    """The whole command line as one argparse tree, every subcommand's parser built (for the docs and their tests);
    `main` builds only the parser of the subcommand it runs."""
    parser, subparsers = top_level_parser()
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
    top = top_level_parser()[0].parse_args(argv[: position + 1])  # --debug, --help, and a known subcommand
    command, rest = top.command, argv[position + 1 :]
    debug = top.debug or (command != "sft" and "--debug" in rest)
    try:
        SUBCOMMANDS[command].run(parse_command(command, rest))
    except KeyboardInterrupt:
        if debug:
            raise
        print(
            f"hf-compress {command}: interrupted. Finished shards are kept: rerun the same command to resume.",
            file=sys.stderr,
        )
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
