"""`hf-compress run`: chain the pipeline stages from a YAML recipe (`hf_compress.recipe`).

It sits above the stage commands: the recipe module reads their registrations."""

from __future__ import annotations

from .registry import CommandArguments, register


def _add_run(parser):
    parser.add_argument("recipe", help="YAML recipe: `output_dir`, an input, and one section per stage to run.")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="Recipe values to override, dotted for stage sections: `generate.n=1 output_dir=runs/x`.",
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="Check the recipe and print each stage's arguments; runs and imports none of its code.",
    )


def _run_recipe(args: CommandArguments):
    from ..recipe import run_recipe

    return run_recipe(args.recipe, args.overrides, dry_run=args.dry_run)


register("run", "Chain the pipeline stages from a YAML recipe.", _run_recipe, add_arguments=_add_run, position=50)
