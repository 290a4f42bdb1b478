"""`hf-compress run`: a YAML recipe chains the pipeline stages.

A recipe names an `output_dir`, an input (`input`: a folder or Hub id; or `input_builder: module:function` with
`input_builder_kwargs`) and one section per stage holding that subcommand's options. Each section is built into the
subcommand's own dataclasses, once, by the parser the command line uses (`parse_dict`), so values are read and
checked as on the command line; every section is checked before the first stage runs. Stage `s` writes
`<output_dir>/<s>` and the next stage reads it. Relative paths in a recipe are relative to the working directory
(as in TRL's and accelerate's configs), not to the recipe file.

A recipe names code that runs: its `input_builder` is imported and called, like a Python script. Run only recipes
from a trusted source. The builder is found as `python -m` finds a module (the working directory first, then the
installed modules); `--dry_run` only checks that its module file exists, and imports and calls nothing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import shutil
import sys
from collections.abc import Callable

import yaml

from .commands import PIPELINE, SUBCOMMANDS, CommandArguments, command_from_dict, did_you_mean, option_names
from .validation import UsageError, looks_local

RECIPE_KEYS = ("output_dir", "input", "split", "input_builder", "input_builder_kwargs")
CHAIN_KEYS = ("input", "output", "split")  # set by `run` itself, from the recipe's top level and the stage order


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
        raise UsageError(f"No recipe at {path} (relative to {os.getcwd()}).") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(recipe, dict):
        raise UsageError(f"{path} must hold a YAML mapping, got {type(recipe).__name__}.")
    recipe = apply_overrides(recipe, list(overrides))
    unknown = sorted(set(recipe) - set(PIPELINE) - set(RECIPE_KEYS))
    if unknown:
        raise UsageError(
            f"Unknown top-level key(s) {unknown} in {path}{did_you_mean(unknown, [*PIPELINE, *RECIPE_KEYS], True)}; "
            f"stages are {PIPELINE}, other keys {list(RECIPE_KEYS)}."
        )
    if not isinstance(recipe.get("output_dir"), str):
        raise UsageError(f"{path} needs an `output_dir` (a folder; each stage writes <output_dir>/<stage>).")
    if ("input" in recipe) == ("input_builder" in recipe):
        raise UsageError(
            f"{path} needs exactly one of `input` (a dataset folder or Hub id) and `input_builder` "
            "(module:function returning a datasets.Dataset)."
        )
    if not isinstance(recipe.get("input_builder_kwargs", {}), dict):
        raise UsageError(f"{path}: `input_builder_kwargs` must be a mapping of keyword arguments.")
    if not any(name in recipe for name in PIPELINE):
        raise UsageError(f"{path} has no stage section; add some of {PIPELINE}.")
    return recipe


def stage_arguments(
    name: str, section: dict, input_path: str, output_path: str, where: str = "", split: str | None = None
) -> CommandArguments:
    """The arguments `hf-compress <name>` would parse from the recipe section's values (same dataclasses, types,
    choices and checks); a bad value raises `UsageError` naming the section and the key. A null value leaves the
    option at its default."""
    where = where or f"the recipe's `{name}` section"
    if not isinstance(section, dict):
        raise UsageError(f"{where} must be a mapping of argument: value, got {section!r}.")
    chained = sorted(set(section) & set(CHAIN_KEYS))
    if chained:
        raise UsageError(
            f"{where} sets {chained}, which `run` sets itself: each stage reads the previous stage's "
            "folder and writes <output_dir>/<stage>. Set the first input and `split` at the top level."
        )
    known = [key for key in option_names(name) if key not in CHAIN_KEYS]
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise UsageError(
            f"Unknown key(s) {unknown} in {where}{did_you_mean(unknown, known, True)}; see "
            f"`hf-compress {name} --help`."
        )
    values = {key: value for key, value in section.items() if value is not None}
    values.update({"input": input_path, "output": output_path}, **({"split": split} if split is not None else {}))
    try:
        return command_from_dict(name, values)
    except ValueError as error:
        raise UsageError(f"{where}: {error}") from None


def plan_stages(recipe: dict, recipe_path: str) -> list[tuple[str, CommandArguments]]:
    """Every stage's arguments, checked before anything runs (a typo in `build` fails before `generate`)."""
    current = recipe["input"] if "input" in recipe else os.path.join(recipe["output_dir"], "input")
    plan = []
    for name in PIPELINE:
        if name not in recipe:
            continue
        output = os.path.join(recipe["output_dir"], name)
        split = recipe["split"] if "split" in recipe and current == recipe.get("input") else None
        plan.append(
            (
                name,
                stage_arguments(
                    name, recipe[name] or {}, current, output, where=f"{recipe_path}: section `{name}`", split=split
                ),
            )
        )
        current = output
    return plan


# ----------------------------------------------------------------------------------------------------------
# The input builder: found like `python -m` finds a module, imported only to run it
# ----------------------------------------------------------------------------------------------------------


def _split_builder(spec: str) -> tuple[str, str]:
    module_name, _, function_name = str(spec).partition(":")
    if not module_name or not function_name or not all(p.isidentifier() for p in module_name.split(".")):
        raise UsageError(f"input_builder must be `module:function` (e.g. `my_data:build_problems`), got {spec!r}.")
    return module_name, function_name


def find_input_builder(spec: str) -> str:
    """The file of the module named by `module:function`, looked for as `python -m` would import it (the working
    directory first, then the installed modules), without importing anything: not `pkg` for `pkg.sub`, whose
    `__init__` would run. Raises `UsageError` when there is none."""
    module_name, _ = _split_builder(spec)
    parts = module_name.split(".")
    cwd = os.getcwd()
    not_found = (
        f"input_builder {spec!r}: no module {module_name!r} in the working directory ({cwd}) or among the "
        "installed modules. A recipe's builder is imported as `python -m` would import it: run hf-compress "
        f"from the folder that holds `{parts[0]}` (for the shipped recipes, the repository root)."
    )
    found = None
    if parts[0] in sys.modules or parts[0] in sys.builtin_module_names:
        found = importlib.util.find_spec(parts[0])  # already imported or built in: nothing runs
    if found is None:
        found = importlib.machinery.PathFinder.find_spec(parts[0], [cwd, *sys.path])
    if found is None:
        found = importlib.util.find_spec(parts[0])  # other finders (editable installs); finds, imports nothing
    for depth in range(1, len(parts)):
        if found is None:
            break
        if found.submodule_search_locations is None:
            raise UsageError(f"input_builder {spec!r}: {'.'.join(parts[:depth])} is a module, not a package.")
        found = importlib.machinery.PathFinder.find_spec(
            ".".join(parts[: depth + 1]), list(found.submodule_search_locations)
        )
    if found is None:
        raise UsageError(not_found)
    if found.origin is None or found.loader is None:
        raise UsageError(f"input_builder {spec!r}: {module_name} is a folder without an __init__.py, not a module.")
    return found.origin


def import_input_builder(spec: str) -> Callable:
    """The function named by a recipe's `input_builder`, imported as `python -m` would (the working directory first
    on `sys.path`). This runs the module's code: the recipe must come from a trusted source."""
    find_input_builder(spec)
    module_name, function_name = _split_builder(spec)
    if not sys.path or sys.path[0] != os.getcwd():
        sys.path.insert(0, os.getcwd())
    function = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(function):
        raise UsageError(f"input_builder {spec!r}: {module_name} has no function {function_name!r}.")
    return function


def input_builder_arguments(recipe: dict, builder: Callable) -> dict:
    """What the built input depends on: the builder, its arguments and its module's source code."""
    source = inspect.getsourcefile(builder)
    code = hashlib.sha256(open(source, "rb").read()).hexdigest()[:16] if source else None
    return {
        "input_builder": recipe["input_builder"],
        "input_builder_kwargs": recipe.get("input_builder_kwargs", {}),
        "source_sha256": code,
    }


def load_recipe_input(recipe: dict) -> str:
    """The recipe's `input` (folder or Hub id), or the dataset built by `input_builder` with `input_builder_kwargs`,
    saved to <output_dir>/input with a fingerprint of the builder, its arguments and its source: when any of
    them changes the input is rebuilt (and the stages after it refuse their old results)."""
    if "input" in recipe:
        return recipe["input"]
    from datasets import Dataset

    from .constants import STAGE_FILE
    from .inputs import check_not_empty
    from .stages import StageMismatchError, run_stage

    path = os.path.join(recipe["output_dir"], "input")
    builder = import_input_builder(recipe["input_builder"])
    arguments = input_builder_arguments(recipe, builder)
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, STAGE_FILE)) and os.listdir(path):
        if not os.path.exists(os.path.join(path, "state.json")):
            raise UsageError(f"{path} exists and is not a built input; move it away or change output_dir.")
        shutil.rmtree(path)  # built by an older hf-compress, without a fingerprint: cannot be trusted

    def build_input(_) -> tuple[Dataset, dict]:
        built = builder(**recipe.get("input_builder_kwargs", {}))
        if not isinstance(built, Dataset):
            raise UsageError(
                f"input_builder {recipe['input_builder']!r} returned {type(built).__name__}, not a datasets.Dataset."
            )
        check_not_empty(built, "input_builder")
        return built, {"rows": len(built)}

    # A result that depends on the builder, its arguments and its source alone: run_stage's whole-dataset mode.
    try:
        run_stage(None, None, stage="input", arguments=arguments, output_dir=path, finalize=build_input)
    except StageMismatchError:
        print(f"[hf-compress run] the input builder or its arguments changed: rebuilding {path}", file=sys.stderr)
        run_stage(
            None, None, stage="input", arguments=arguments, output_dir=path, finalize=build_input, overwrite=True
        )
    return path


# ----------------------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------------------


def missing_paths(recipe: dict, plan: list[tuple[str, CommandArguments]]) -> list[str]:
    """The models, tokenizers and input the recipe names as local folders that do not exist (here, now)."""
    named = [("input", "`input`", recipe.get("input"))]
    for name, args in plan:
        paths = SUBCOMMANDS[name].paths
        named += [(name, option, path) for option, path in (paths(args) if paths else [])]
    return [
        f"{name} {option}: no such folder: {path}"
        for name, option, path in named
        if path and looks_local(path) and not os.path.exists(path)
    ]


def run_recipe(recipe_path: str, overrides: list[str] = (), dry_run: bool = False):
    """`hf-compress run RECIPE [key=value ...] [--dry_run]`."""
    from .locking import output_lock
    from .stages import StageMismatchError

    recipe = load_recipe(recipe_path, overrides)
    plan = plan_stages(recipe, recipe_path)
    for missing in missing_paths(recipe, plan):  # a stage already finished does not need them: warn only
        print(
            f"[hf-compress run] warning: {missing} (relative to {os.getcwd()}); the stage that reads it will "
            "fail unless it is finished already.",
            file=sys.stderr,
        )
    if dry_run:
        if "input_builder" in recipe:
            print(f"input: {recipe['input_builder']} in {find_input_builder(recipe['input_builder'])} (not imported)")
        for name, args in plan:
            print(f"{name}: " + " ".join(f"{key}={value!r}" for key, value in args.as_dict().items()))
        return plan
    for name, args in plan:  # a push that cannot work fails now, before the first teacher request
        if name == "build" and args.push_to_hub:
            from .hub import check_push_access

            check_push_access(args.push_to_hub, "dataset")
    with output_lock(recipe["output_dir"], "run"):  # one run per output_dir; each stage also locks its own folder
        load_recipe_input(recipe)
        results = {}
        for name, args in plan:
            print(f"[hf-compress run] {name}: {args.input} -> {args.output}", file=sys.stderr)
            try:
                results[name] = SUBCOMMANDS[name].run(args)
            except StageMismatchError as error:
                raise StageMismatchError(
                    f"{error} In a recipe: set `overwrite: true` in the `{name}` section "
                    f"(or pass `{name}.overwrite=true`), or choose another output_dir."
                ) from error
    return results
