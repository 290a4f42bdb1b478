"""`hf-compress sft`: train a student on one variant with TRL's SFTTrainer (`hf_compress.sft`)."""

from __future__ import annotations

import argparse
import os
import sys

from ..validation import check_local_path
from .registry import SUBCOMMANDS, CommandArguments, DefaultsHelpFormatter, command_parser, dataclass_parser, register


def _add_sft(parser):
    parser.add_argument(
        "recipe",
        metavar="RECIPE",
        help="YAML recipe of trl.SFTConfig + trl.ModelConfig + CompressSFTArguments fields.",
    )
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="Any recipe field as `--name value` (`hf-compress sft RECIPE --help` lists them).",
    )


class _HelpWithEpilog(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    pass


def sft_help(recipe: str | None = None, full: bool = False) -> str:
    """`hf-compress sft [RECIPE] --help`: the data and model options, and the values the recipe sets; `full` lists
    every `trl.SFTConfig` field too (which imports TRL's trainer, and torch: seconds)."""
    import yaml
    from trl import ModelConfig

    from ..arguments import CompressSFTArguments

    if full:
        from ..sft import RECIPE_TYPES as types
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
    epilog = (
        f"set by {recipe} (override any of them with --name value):\n" + "\n".join(lines) + "\n\n"
        if recipe is not None
        else ""
    )
    if not full:
        epilog += (
            "Every trl.SFTConfig field (output_dir, learning_rate, num_train_epochs, max_length, packing, seed, "
            "...) is\nan option too: `hf-compress sft RECIPE --help_all` lists them all (slower: it imports "
            "TRL's trainer).\n"
        )
    parser = dataclass_parser(
        types,
        prog="hf-compress sft",
        usage="hf-compress sft RECIPE [--name value ...]",
        description=SUBCOMMANDS["sft"].help + " Relative paths, in the recipe too, are relative to the working "
        "directory.",
        epilog=epilog,
        formatter_class=_HelpWithEpilog,
    )
    parser.add_argument(
        "recipe",
        metavar="RECIPE",
        help="YAML recipe of trl.SFTConfig, trl.ModelConfig and hf_compress.sft.CompressSFTArguments fields.",
    )
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
    from ..sft import parse_sft_cli, run_sft

    script_args, training_args, model_args = parse_sft_cli(["--config", args.recipe, *args.overrides])
    check_local_path(model_args.model_name_or_path, "--model_name_or_path")
    check_local_path(script_args.dataset_path, "--dataset_path")
    summary = run_sft(script_args, training_args, model_args)
    print(yaml.safe_dump(summary, sort_keys=False))
    return summary


register(
    "sft",
    "Train a student on one variant with TRL's SFTTrainer (checked assistant masks, packing).",
    _run_sft,
    add_arguments=_add_sft,
    plain=True,
    parse=_parse_sft,
    position=60,
)
