"""The `hf-compress` command registry and parser factory, below the command line and every command.

Each command registers itself (`register`, in its module under `hf_compress.commands`), as token scorers register
themselves in hf_flowcredit: the registry holds its help, its run function and its argument dataclasses, and from them
builds its parser (TRL's `TrlParser`, an `HfArgumentParser`, with exact option names and one-line errors), parses a
command line (`parse_command`) or a recipe section (`command_from_dict`) into the same dataclasses.
`hf_compress.cli` only turns argv into a registered command and runs it.

Imports nothing heavy: TRL when a dataclass parser is first built, never torch, transformers or datasets.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..arguments import StageIO
from ..validation import UsageError, coerce_values

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
        shown = [
            o
            for o in action.option_strings
            if not (o.startswith("--") and "--" + o[2:].replace("-", "_") in names and "-" in o[2:])
        ]
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
# The registry
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

    def options(self, *classes: type) -> dict:
        """The fields of the given argument dataclasses as keywords: a stage function's parameters are named like
        its options, so a new option is its field and its parameter, with nothing to map in between."""
        return {f.name: getattr(self[cls], f.name) for cls in classes for f in dataclasses.fields(cls) if f.init}

    def as_dict(self) -> dict:
        values = {f.name: getattr(part, f.name) for part in self.parts for f in dataclasses.fields(part) if f.init}
        return {**values, **{k: v for k, v in self.extra.items() if k != "debug"}}


@dataclass
class Subcommand:
    help: str
    run: Callable[[CommandArguments], object]
    position: int  # where it is listed in `hf-compress --help`; for a pipeline stage, where `run` chains it
    arguments: tuple[type, ...] = ()  # dataclasses whose fields are the options (TRL's parser)
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # positional and plain arguments
    check: Callable[[CommandArguments], None] | None = None  # checks that span several dataclasses
    paths: Callable[[CommandArguments], list[tuple[str, str | None]]] | None = None  # (option, local path) it loads
    plain: bool = False  # parsed by plain argparse (a command that must start without TRL)
    parse: Callable[[list[str]], CommandArguments] | None = None  # a command that parses its own command line
    pipeline: bool = False  # a stage `run` chains: reads `--input`, writes `--output` (its first dataclass is StageIO)


SUBCOMMANDS: dict[str, Subcommand] = {}  # by `position`
PIPELINE: list[str] = []  # the stages `run` chains, in order, each reading the previous one's output folder


def register(name: str, help: str, run: Callable[[CommandArguments], object], *, position: int, **kwargs) -> None:
    """Declare `hf-compress <name>` (see `Subcommand` for the keywords). A stage that `run` may chain passes
    `pipeline=True`; `position` orders the listing and the pipeline (generate 10, verify 20, compress 30, build 40:
    a stage between verify and compress takes 25)."""
    if name in SUBCOMMANDS:
        raise ValueError(f"hf-compress {name} is registered already.")
    command = Subcommand(help, run, position, **kwargs)
    if command.pipeline and (not command.arguments or command.arguments[0] is not StageIO):
        raise TypeError(f"hf-compress {name}: a pipeline stage's first argument dataclass is StageIO.")
    ordered = sorted([*SUBCOMMANDS.items(), (name, command)], key=lambda item: item[1].position)
    SUBCOMMANDS.clear()
    SUBCOMMANDS.update(ordered)
    PIPELINE[:] = [key for key, value in SUBCOMMANDS.items() if value.pipeline]


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `hf-compress <name>`."""
    command = SUBCOMMANDS[name]
    kwargs = {"prog": f"hf-compress {name}", "description": command.help}
    parser = CommandParser(**kwargs) if command.plain else dataclass_parser(command.arguments, **kwargs)
    if command.add_arguments:
        command.add_arguments(parser)
    if name != "sft":  # sft passes every option after the recipe to TRL (SFTConfig has a `debug` field)
        parser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="Show the full traceback of an error."
        )
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
    required = [
        f.name
        for cls in command.arguments
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [key for key in required if key not in values]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join('--' + key for key in missing)}")
    for cls in command.arguments:  # every type first, then each dataclass's own checks (as argparse does)
        values = coerce_values(cls, values)
    args = CommandArguments(name, dataclass_parser(command.arguments).parse_dict(values))
    if command.check:
        command.check(args)
    return args
