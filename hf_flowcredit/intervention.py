"""Intervention analysis: do the tokens a scorer ranks highest steer the final answer?

For each finished greedy trace (prompt, reasoning, answer), a fraction of the reasoning tokens is chosen (the top of a
scorer's ranking, the bottom, or at random), attention to those key positions is blocked for every later query, and
the answer is regenerated greedily from the same reasoning. The rate at which the answer changes measures how much
the chosen tokens matter: FlowTracer's claim is that blocking flow-top tokens changes answers more often than blocking
random or flow-bottom ones.

    from hf_flowcredit.intervention import intervention_analysis
    table = intervention_analysis(model, tokenizer, prompts)   # {"flow_top": {"changed_rate": ...}, ...}

Command line: `flowcredit-intervention --model_name_or_path PATH --dataset_name prompts.jsonl` (see `main`).

Blocking is done by the package's attention function registered with transformers' `AttentionInterface` (see
attention.py): it removes the chosen keys from the boolean mask of every later query and delegates to SDPA, so it
works for any model whose attention goes through the interface, in the prefill and in cached decoding alike.

This module holds the command line and imports only the standard library: the analysis (`intervention_analysis`,
`attention_blocking`, `finished_traces`, ...) lives in `_intervention.py` and is imported on first use of any of its
names here, so that `flowcredit-intervention --help` and argument errors answer without loading torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import json
import os
import re
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field

PROG = "flowcredit-intervention"
DESCRIPTION = (
    "Block attention to the top / random / bottom reasoning tokens of a scorer's ranking in greedy traces, regenerate "
    "the answers and print how often they change."
)


def __getattr__(name: str):
    """The analysis' names (`intervention_analysis`, `Trace`, ...), from `_intervention` on first use."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    analysis = importlib.import_module("._intervention", __package__)
    try:
        return getattr(analysis, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


@dataclass
class InterventionArguments:
    model_name_or_path: str = field(metadata={"help": "Model folder or Hub name (loaded with AutoModelForCausalLM)."})
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Required. The prompts: a .jsonl (or .json) file, a local dataset folder or a Hub dataset, with "
            "a `prompt` column (text or a list of chat messages)."
        },
    )
    dataset_split: str = field(default="test", metadata={"help": "Split of a Hub dataset or folder."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts (text or messages)."})
    num_samples: int = field(default=64, metadata={"help": "How many prompts to trace (the first ones)."})
    max_prompt_tokens: int = field(
        default=4096,
        metadata={"help": "Refuse a prompt longer than this many tokens (chat template applied), before any work."},
    )
    scorer: str = field(default="flow", metadata={"help": "Scorer whose ranking picks the top/bottom tokens."})
    fraction: float = field(default=0.2, metadata={"help": "Fraction of reasoning tokens blocked."})
    max_new_tokens: int = field(default=64, metadata={"help": "Token cap of the original greedy traces."})
    answer_format: str = field(default="auto", metadata={"help": "How answer spans are found (see answer.py)."})
    batch_size: int = field(default=16, metadata={"help": "Traces per batch."})
    seed: int = field(default=0, metadata={"help": "Seed of the random selection."})
    output_file: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})


class ArgumentParser(argparse.ArgumentParser):
    """The options of a dataclass of str / int / float fields, as `HfArgumentParser` would build them, on plain
    argparse (importing transformers for its parser would cost seconds before `--help` answers).

    Option names must be given in full (`allow_abbrev=False`: `--model_name` is not `--model_name_or_path`); an
    unknown or misspelt option, like any other argument error, is one line, with the closest option suggested.
    """

    def __init__(self, dataclass_type: type, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)
        self.dataclass_type = dataclass_type
        hints = typing.get_type_hints(dataclass_type)
        for f in dataclasses.fields(dataclass_type):
            kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
            if kind not in (str, int, float):
                raise TypeError(f"{dataclass_type.__name__}.{f.name}: only str, int and float options are supported.")
            required = f.default is dataclasses.MISSING
            self.add_argument(
                f"--{f.name}",
                type=kind,
                required=required,
                default=None if required else f.default,
                help=f.metadata.get("help", "") + ("" if required or f.default is None else " (default: %(default)s)"),
            )

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    def parse(self, argv: list[str] | None = None) -> tuple[typing.Any, argparse.Namespace]:
        """`(dataclass instance, the other options)`; unknown arguments are an error, with a "did you mean"."""
        argv = sys.argv[1:] if argv is None else list(argv)
        known = [name for action in self._actions for name in action.option_strings if name.startswith("--")]
        for (
            item
        ) in argv:  # before argparse's own checks, so that `--model_name x` is not "--model_name_or_path missing"
            option = item.split("=", 1)[0]
            if option.startswith("--") and option not in known:
                close = difflib.get_close_matches(option, known, n=1, cutoff=0.6)
                self.error(f"unknown option {option}" + (f"; did you mean {close[0]}?" if close else ""))
        namespace, unknown = self.parse_known_args(argv)
        if unknown:
            self.error(f"unexpected argument {unknown[0]!r} (options take the form --name value)")
        names = {f.name for f in dataclasses.fields(self.dataclass_type)}
        values = {name: value for name, value in vars(namespace).items() if name in names}
        others = argparse.Namespace(**{name: value for name, value in vars(namespace).items() if name not in names})
        return self.dataclass_type(**values), others


# ---------------------------------------------------------------------------------------------------------------
# Input checks: every problem in one line naming the file (or dataset), the line (or row) and the field
# ---------------------------------------------------------------------------------------------------------------


def _looks_local(name: str) -> bool:
    """True for a model or dataset name that can only be a local path: `./x`, `../x`, `/x`, `~/x`, `a/b/c`, `x/`, or
    anything else that is not a valid Hub id (`name` or `namespace/name`). hf_compress has the same rule
    (`hf_compress.validation.looks_local`); tests/test_shared_helpers.py holds both to one table of cases."""
    return (
        name.startswith((".", "/", "~"))
        or name.endswith(("/", os.sep))
        or (os.sep != "/" and os.sep in name)
        or not re.match(r"^(\b[\w\-.]+\b/)?\b[\w\-.]+\b$", name)  # a Hub id, as huggingface_hub checks it
        or "--" in name
        or ".." in name
    )


def _where(path: str) -> str:
    """`path`, and the folder a relative path was resolved from."""
    return path if os.path.isabs(os.path.expanduser(path)) else f"{path} (relative to {os.getcwd()})"


def check_model_path(name: str) -> None:
    """Fail fast on a local model path that cannot be loaded: missing, a file, or a folder without a config."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
            raise ValueError(f"not a model folder: {_where(name)} has no config.json")
    elif os.path.exists(path):
        raise ValueError(f"not a model folder: {_where(name)} is a file; give the folder that holds config.json")
    elif _looks_local(name):
        raise FileNotFoundError(f"no such folder: {_where(name)}")


def _describe(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_prompt(where: str, row, column: str):
    """The prompt of one row (text or chat messages); a ValueError naming `where` and `column` otherwise."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with a {column!r} field, got {_describe(row)}")
    if column not in row:
        raise ValueError(f"{where}: no field {column!r} (fields: {sorted(row)}); set --prompt_column")
    prompt = row[column]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where}: field {column!r} is empty")
        return prompt
    if isinstance(prompt, list) and prompt:
        for index, message in enumerate(prompt):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), (str, list))
            ):
                raise ValueError(
                    f'{where}: field {column!r}, message {index}: expected a {{"role": ..., "content": ...}} object, '
                    f"got {_describe(message)}"
                )
        return prompt
    kind = "null" if prompt is None else f"{type(prompt).__name__} {_describe(prompt)}"
    raise ValueError(f"{where}: field {column!r} is {kind}; expected text or a list of chat messages")


def _json_rows(path: str) -> Iterator[tuple[str, typing.Any]]:
    """`(where, row)` of a .jsonl file (or a .json file holding an array or JSON lines), without loading `datasets`."""
    with open(path, "rb") as file:
        first = file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        file.seek(0)
        if path.endswith(".json") and first.startswith(b"["):  # one JSON array
            try:
                rows = json.loads(file.read().decode("utf-8-sig"))
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x})") from None
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
            for index, row in enumerate(rows):
                yield f"{path}, item {index}", row
            return
        for number, raw in enumerate(file, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at byte {error.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno})"
                ) from None
            yield f"{path}, line {number}", row


def _dataset_rows(args: InterventionArguments) -> Iterator[tuple[str, typing.Any]]:
    """`(where, row)` of a Hub dataset or a local dataset folder."""
    from datasets import load_dataset

    dataset = load_dataset(args.dataset_name, split=args.dataset_split)
    for index, row in enumerate(dataset):
        yield f"{args.dataset_name} (split {args.dataset_split}), row {index}", row


def load_prompts(args: InterventionArguments) -> list[tuple[str, typing.Any]]:
    """The first `num_samples` prompts of `--dataset_name`, each with where it came from, checked row by row."""
    name = args.dataset_name
    if name is None:
        raise ValueError(
            "no prompts: pass --dataset_name (a .jsonl file with a `prompt` field per line, a local dataset folder "
            "or a Hub dataset)"
        )
    path = os.path.expanduser(name)
    is_file = name.endswith((".json", ".jsonl"))
    if (is_file or _looks_local(name)) and not os.path.exists(path):
        raise FileNotFoundError(f"no such {'file' if is_file else 'folder'}: {_where(name)}")
    rows = _json_rows(path) if is_file and os.path.isfile(path) else _dataset_rows(args)
    prompts = []
    for where, row in rows:
        prompts.append((where, check_prompt(where, row, args.prompt_column)))
        if len(prompts) == args.num_samples:
            break
    if not prompts:
        raise ValueError(f"{name}: no rows, so no prompts")
    return prompts


def check_prompt_lengths(prompts: list[tuple[str, typing.Any]], tokenizer, args: InterventionArguments) -> None:
    """Refuse a prompt over `--max_prompt_tokens` (as the model will see it: chat template applied)."""
    from ._intervention import tokenized_prompt

    for where, prompt in prompts:
        # Counted up to one past the limit: no full encoding of a huge prompt, no tokenizer warning about it.
        if len(tokenized_prompt(tokenizer, prompt, max_length=args.max_prompt_tokens + 1)) > args.max_prompt_tokens:
            raise ValueError(
                f"{where}: field {args.prompt_column!r} has more than --max_prompt_tokens={args.max_prompt_tokens} "
                "tokens; shorten it or raise the limit"
            )


def check_arguments(args: InterventionArguments) -> None:
    for name in ("num_samples", "max_prompt_tokens", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0.0 < args.fraction <= 1.0:
        raise ValueError(f"--fraction must be in (0, 1], got {args.fraction}")


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """`flowcredit-intervention`: print (and optionally save) the intervention table of a model.

    Errors are one line on stderr: exit code 2 for bad arguments or inputs, 1 for a failure (`--debug`: traceback).
    """
    parser = ArgumentParser(InterventionArguments, prog=PROG, description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of an error.")
    args, options = parser.parse(argv)
    try:
        _run_intervention(args)
    except Exception as error:  # noqa: BLE001 - one line per error (exit 2: bad arguments or inputs, 1: failure)
        if options.debug:
            raise
        usage = isinstance(error, (ValueError, FileNotFoundError))
        message = " ".join(str(error).split()) or repr(error)
        kind = "" if usage else f"{type(error).__name__}: "
        print(f"{PROG}: error: {kind}{message} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(2 if usage else 1)


def _run_intervention(args: InterventionArguments) -> None:
    # Everything that can be checked without the model first: a bad input fails in a second, not after loading.
    check_arguments(args)
    check_model_path(args.model_name_or_path)
    prompts = load_prompts(args)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ._intervention import format_table, intervention_analysis
    from .answer import find_answer_span
    from .scoring import SCORERS

    if args.scorer not in SCORERS:
        raise ValueError(f"--scorer {args.scorer!r} is not a token scorer; choose one of {sorted(SCORERS)}")
    find_answer_span("", args.answer_format)  # an unknown format or a bad regex: a ValueError naming it
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    check_prompt_lengths(prompts, tokenizer, args)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
    results = intervention_analysis(
        model,
        tokenizer,
        [prompt for _, prompt in prompts],
        scorer=args.scorer,
        fraction=args.fraction,
        max_new_tokens=args.max_new_tokens,
        answer_format=args.answer_format,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(format_table(results, args.scorer))
    if args.output_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
        with open(args.output_file, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
