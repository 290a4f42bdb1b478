"""Checks of argument values, shared by the argument dataclasses (`hf_compress.arguments`), the backends' options
(`hf_compress.backends.config`) and the stages: values read as the command line reads them, ranges, templates, and
local paths that do not exist.

Imports nothing heavy (no torch, transformers, TRL or datasets).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import string
import types
import typing


class UsageError(ValueError):
    """A command line, recipe or argument value that cannot work: reported in one line, exit code 2."""


# ----------------------------------------------------------------------------------------------------------
# Values: read as the command line reads them, then checked against what each option allows
# ----------------------------------------------------------------------------------------------------------

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def as_bool(value, name: str) -> bool:
    """YAML booleans, and the strings a user may quote (`"false"`), as a bool; anything else is an error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise UsageError(f"`{name}`: expected true or false, got {value!r}.")


@functools.cache
def _type_hints(cls: type) -> dict:
    # Not `Field.type`: HfArgumentParser rewrites it in place (`int | None` becomes `int`) when it builds a parser.
    return typing.get_type_hints(cls)


def _coerce(value, hint, name: str, choices):
    """`value` as the command line would parse it for a field of type `hint` (argparse's messages on failure)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):
            return None
        return _coerce(value, inner[0], name, choices) if len(inner) == 1 else value
    if value is None:
        raise UsageError(f"argument --{name}: expected a value, got null (leave it out to keep the default).")
    if origin is list:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return [_coerce(item, args[0] if args else str, name, choices) for item in items]
    if origin is typing.Literal:
        hint, choices = type(args[0]), args
    if isinstance(value, (list, tuple, dict, set)):
        raise UsageError(f"argument --{name}: expected a single value, got {value!r}.")
    if hint is bool:
        value = as_bool(value, name)
    elif hint in (int, float) and type(value) is not hint:
        if hint is float and type(value) is int:
            value = float(value)
        else:
            try:
                value = hint(str(value))  # as argparse: int("2.5") and float("hot") fail
            except ValueError:
                raise UsageError(f"argument --{name}: invalid {hint.__name__} value: {str(value)!r}") from None
    elif hint is str and not isinstance(value, str):
        value = str(value)
    if choices and value not in choices:
        raise UsageError(
            f"argument --{name}: invalid choice: {value!r} (choose from {', '.join(repr(c) for c in choices)})"
        )
    return value


def coerce_values(cls: type, values: dict) -> dict:
    """`values` (field: value) read as the command line reads the options of dataclass `cls`: types and choices are
    checked for every field before any dataclass checks its ranges, as argparse does."""
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    return {
        key: _coerce(value, hints[key], key, fields[key].metadata.get("choices")) if key in fields else value
        for key, value in values.items()
    }


def check_fields(obj) -> None:
    """Read every field of a dataclass as the command line would (types, booleans, `choices` in its metadata)."""
    hints = _type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.init and f.name in hints:
            setattr(obj, f.name, _coerce(getattr(obj, f.name), hints[f.name], f.name, f.metadata.get("choices")))


def require(condition: bool, name: str, allowed: str, value) -> None:
    """The one-line error of an option whose value is out of range: `--name must be <allowed>, got <value>.`"""
    if not condition:
        raise UsageError(f"--{name} must be {allowed}, got {value!r}.")


def at_least(obj, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        kind = "an integer" if isinstance(value, int) else "a number"
        require(value >= minimum, name, f"{kind} >= {minimum}", value)


def positive(obj, *names: str) -> None:
    for name in names:
        require(getattr(obj, name) > 0, name, "a number > 0", getattr(obj, name))


def not_empty(obj, *names: str) -> None:
    for name in names:
        require(bool(getattr(obj, name)), name, "a non-empty name", getattr(obj, name))


def check_prompt_template(template: str, name: str = "prompt_template") -> None:
    """A user-message template: `{problem}` is its one placeholder (`{{` and `}}` write literal braces)."""
    hint = "write {{ and }} for literal braces"
    try:
        placeholders = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as error:
        raise UsageError(f"--{name}: {error} in {template!r}; {hint}.") from None
    require("problem" in placeholders, name, "a template containing {problem}", template)
    others = sorted(placeholders - {"problem"})
    if others:
        shown = ", ".join("{" + p + "}" for p in others)
        raise UsageError(f"--{name} may use only the placeholder {{problem}} ({hint}), got {template!r} with {shown}.")


# ----------------------------------------------------------------------------------------------------------
# Local paths: a name that cannot be a Hub id and does not exist is a missing folder, said so
# ----------------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^(\b[\w\-.]+\b/)?\b[\w\-.]+\b$")  # `name` or `namespace/name`, as huggingface_hub checks it


def looks_local(name: str) -> bool:
    """True for a model or dataset name that can only be a local path: `./x`, `../x`, `/x`, `~/x`, `a/b/c`, `x/`, or
    anything else that is not a valid Hub id (`name` or `namespace/name`)."""
    return (
        name.startswith((".", "/", "~"))
        or name.endswith(("/", os.sep))
        or (os.sep != "/" and os.sep in name)
        or not _HUB_ID.match(name)
        or "--" in name
        or ".." in name
    )


def check_local_path(path: str | None, option: str) -> None:
    """Refuse, in one line, a path that looks local (`looks_local`) and does not exist, naming the folder it was
    looked for in: relative paths, in recipes too, are relative to the working directory. Every subcommand that takes
    a model, tokenizer or dataset path calls this before loading it, so that a missing folder is not reported by the
    Hub as a malformed repo id."""
    if not path or not looks_local(path) or os.path.exists(path):
        return
    where = "" if os.path.isabs(os.path.expanduser(path)) else f" (relative to {os.getcwd()})"
    raise FileNotFoundError(f"{option}: no such folder: {path}{where}")
