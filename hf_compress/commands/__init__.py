"""The `hf-compress` commands: one module per command, each registering itself with `registry.register`.

    generate, verify, compress, build    the pipeline stages (`run` chains them, in their registered order)
    sft, eval, report                     students: training, evaluation, comparison

`run` (`hf_compress.commands.run`) sits above these: it chains the stages registered here, so the command line
imports it on top of this package, and this package never imports it. Each module imports what its command runs
only when it runs, so importing this package (and `hf-compress --help`) loads neither torch, transformers nor datasets.
Adding a command: its module here (a `register(...)` call), its line below, its docs.
"""

from . import build, compress, eval, generate, report, sft, verify  # noqa: F401 - each registers its command
from .registry import (
    PIPELINE,
    SUBCOMMANDS,
    CommandArguments,
    CommandParser,
    DefaultsHelpFormatter,
    Subcommand,
    command_from_dict,
    command_parser,
    dataclass_parser,
    did_you_mean,
    option_names,
    parse_command,
    register,
)

__all__ = [
    "PIPELINE",
    "SUBCOMMANDS",
    "CommandArguments",
    "CommandParser",
    "DefaultsHelpFormatter",
    "Subcommand",
    "command_from_dict",
    "command_parser",
    "dataclass_parser",
    "did_you_mean",
    "option_names",
    "parse_command",
    "register",
]
