"""The arguments of the `hf-compress` subcommands, as dataclasses.

The command line (TRL's `TrlParser`, an `HfArgumentParser`) and a recipe's YAML (`parse_dict`) build the same
objects, and each checks its own values in `__post_init__`: a value is read as the command line reads it (`"0.7"`
is 0.7, `"false"` is false) and checked against what the option allows, so a bad value is refused the same way
from both, in one line naming the option, before anything runs.

This module imports nothing heavy (no torch, transformers, TRL or datasets), so that `hf-compress --help` and
`hf-compress report` start at once.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import string
import types
import typing
from dataclasses import dataclass, field

from .constants import DEFAULT_PROMPT_TEMPLATE, VARIANTS

TASKS = ("auto", "math", "countdown")
COMPRESSORS = ("extractive", "llm")


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
        raise UsageError(f"argument --{name}: invalid choice: {value!r} (choose from "
                         f"{', '.join(repr(c) for c in choices)})")
    return value


def coerce_values(cls: type, values: dict) -> dict:
    """`values` (field: value) read as the command line reads the options of dataclass `cls`: types and choices are
    checked for every field before any dataclass checks its ranges, as argparse does."""
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    return {key: _coerce(value, hints[key], key, fields[key].metadata.get("choices")) if key in fields else value
            for key, value in values.items()}


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


# ----------------------------------------------------------------------------------------------------------
# The subcommands' arguments (the backends' own, BackendConfig and SamplingConfig, are in hf_compress.backends)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class StageIO:
    """The folders a pipeline stage reads and writes (`run` sets them itself: a recipe section may not)."""

    input: str = field(metadata={"help": "A `datasets` folder (save_to_disk) or a Hub dataset id."})
    output: str = field(metadata={"help": "Folder to write the stage's `datasets` output to."})
    split: str = field(default="train", metadata={"help": "Split to read when the input has several."})
    overwrite: bool = field(default=False, metadata={"help": "Discard an output folder from other arguments."})

    def __post_init__(self):
        check_fields(self)
        not_empty(self, "input", "output", "split")


@dataclass
class TraceColumns:
    """The columns that verify, compress and build read: the trace, its gold answer and its problem."""

    completion_column: str = field(default="generation", metadata={"help": "Column holding the teacher trace."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the gold final answer."})
    problem_column: str = field(default="problem", metadata={"help": "Column holding the problem text."})

    def __post_init__(self):
        check_fields(self)
        not_empty(self, "completion_column", "answer_column", "problem_column")


@dataclass
class TaskArguments:
    task: str = field(default="auto", metadata={
        "choices": TASKS,
        "help": "How answers are checked; auto: Countdown rules for rows with `numbers` and `target`, math-verify "
                "(with exact and numeric fallbacks) for the others."})

    def __post_init__(self):
        check_fields(self)


@dataclass
class GenerateArguments:
    problem_column: str = field(default="problem", metadata={"help": "Column holding the problem text."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the gold final answer."})
    system_prompt: str | None = field(default=None, metadata={"help": "System message of every prompt (default: none)."})
    prompt_template: str = field(default=DEFAULT_PROMPT_TEMPLATE, metadata={
        "help": "User message; must contain {problem} ({{ and }} for literal braces). The default asks for the final "
                "answer in \\boxed{}; '{problem}' sends the problem alone."})
    shard_size: int = field(default=256, metadata={"help": "Problems per saved shard (resume unit)."})
    problems_per_call: int = field(default=64, metadata={"help": "Problems sent to the backend at once."})
    skip_invalid_rows: bool = field(default=False, metadata={
        "help": "Leave out the rows whose problem is None or empty or whose gold is None or blank (counted in "
                "the stage record) instead of refusing the input."})

    def __post_init__(self):
        check_fields(self)
        not_empty(self, "problem_column", "answer_column")
        check_prompt_template(self.prompt_template)
        at_least(self, 1, "shard_size", "problems_per_call")


@dataclass
class VerifyArguments:
    keep_only_correct: bool = field(default=False, metadata={"help": "Drop incorrect traces (after pass rates)."})
    keep_truncated: bool = field(default=False, metadata={
        "help": "Judge traces the token cap cut (finish_reason=length) by their text; by default they are incorrect, "
                "with verify_note=truncated."})
    timeout_seconds: int = field(default=5, metadata={
        "help": "Seconds to check one trace (finding the answer, math-verify's parsing and comparison); past them "
                "it is judged incorrect with verify_note=timeout."})
    shard_size: int = field(default=2048, metadata={"help": "Traces per saved shard (resume unit)."})
    skip_invalid_rows: bool = field(default=False, metadata={
        "help": "Leave out the rows with a None or empty problem, a None or blank gold or a None trace (counted "
                "in the stage record) instead of refusing the input."})

    def __post_init__(self):
        check_fields(self)
        at_least(self, 1, "timeout_seconds", "shard_size")


@dataclass
class CompressArguments:
    compressor: str = field(default="extractive", metadata={
        "choices": COMPRESSORS,
        "help": "extractive: keep each sentence's equations and the final answer (no model); llm: rewrite with "
                "--model."})
    prompt_version: str = field(default="v1", metadata={"help": "llm: key of COMPRESSION_PROMPTS."})
    temperature: float = field(default=0.0, metadata={"help": "llm: sampling temperature."})
    max_new_tokens: int = field(default=1024, metadata={"help": "llm: cap on the rewrite's tokens."})
    shard_size: int = field(default=256, metadata={"help": "Traces per saved shard (resume unit)."})
    problems_per_call: int = field(default=64, metadata={"help": "llm: traces sent to the backend at once."})
    skip_invalid_rows: bool = field(default=False, metadata={
        "help": "Leave out the rows with a None or empty problem, a None or blank gold or a None trace (counted "
                "in the stage record) instead of refusing the input."})

    def __post_init__(self):
        check_fields(self)
        require(self.temperature >= 0, "temperature", "a number >= 0", self.temperature)
        at_least(self, 1, "max_new_tokens", "shard_size", "problems_per_call")
        not_empty(self, "prompt_version")


@dataclass
class BuildArguments:
    tokenizer: str = field(metadata={"help": "Tokenizer counting tokens (and cutting `truncated`)."})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS), metadata={
        "choices": VARIANTS, "help": "Variants to write, one split each."})
    push_to_hub: str | None = field(default=None, metadata={
        "help": "Hub dataset repo to push the variants to (configs)."})

    def __post_init__(self):
        check_fields(self)
        not_empty(self, "tokenizer", "variants")


@dataclass
class EvalArguments:
    model: str = field(metadata={"help": "Trained student folder (full weights or LoRA adapter)."})
    input: str = field(metadata={"help": "Eval set with gold answers: `datasets` folder or Hub id."})
    split: str = field(default="test", metadata={"help": "Split to read when the input has several."})
    output: str | None = field(default=None, metadata={"help": "Where eval.json and eval_table/ go (default: --model)."})
    max_new_tokens: int = field(default=8192, metadata={"help": "Token cap per completion."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per generate call."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the gold final answer."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Load a student whose modeling code is saved with it (hf_dla)."})

    def __post_init__(self):
        check_fields(self)
        not_empty(self, "model", "input", "split", "answer_column")
        at_least(self, 1, "max_new_tokens", "batch_size")


@dataclass
class CompressSFTArguments:
    """Which data a Compress-Distill SFT run trains on (the rest of a recipe is `SFTConfig` and `ModelConfig`)."""

    dataset_path: str | None = field(
        default=None,
        metadata={"help": "Folder written by `hf-compress build`: one `datasets` folder per variant."},
    )
    variant: str = field(
        default="compressed",
        metadata={"help": "Variant to train on: raw, compressed, answer_only or truncated.", "choices": VARIANTS},
    )
    use_embedded_chat_template: bool = field(
        default=False,
        metadata={
            "help": "Give the student `EMBEDDED_CHAT_TEMPLATE` (ChatML with generation markers) when its tokenizer "
            "has no chat template or one without generation markers that TRL cannot patch."  # no '%': argparse
        },
    )

    def __post_init__(self):
        check_fields(self)
