"""The docs say what the code does: every `hf-compress` command line in README.md and docs/ parses, every option of
every subcommand is named in docs/hf_compress.md and its `--help` gives the default, and the FlowGRPOConfig options
table lists each field with its real default."""

import argparse
import dataclasses
import re
import shlex
from pathlib import Path

import pytest
from trl import GRPOConfig

from hf_compress.cli import build_parser
from hf_compress.sft import check_recipe_fields
from hf_flowcredit import FlowGRPOConfig
from hf_flowcredit.attention import LAYER_PRESETS

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def documented_command_lines() -> list[tuple[str, list[str]]]:
    """(doc, argv after `hf-compress`) of each command in the docs' bash blocks, continuations joined."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if "hf-compress " in line:
                    command = line[line.index("hf-compress ") :].split(" #")[0]
                    found.append((doc.name, shlex.split(command)[1:]))
    return found


def test_docs_show_hf_compress_commands():
    assert {argv[0] for _, argv in documented_command_lines()} >= {
        "run",
        "generate",
        "verify",
        "compress",
        "build",
        "sft",
        "eval",
        "report",
    }


@pytest.mark.parametrize(("doc", "argv"), documented_command_lines(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_documented_hf_compress_command_parses(doc, argv):
    args = build_parser().parse_args(argv)  # an unknown flag or a missing argument exits here
    if args.command == "sft":  # its overrides go to TRL's parsers: each must be a recipe field
        names = [item[2:] for item in args.overrides if item.startswith("--")]
        check_recipe_fields(dict.fromkeys(names, None), f"{doc}: hf-compress sft")


@pytest.mark.parametrize("command", ["run", "generate", "verify", "compress", "build", "eval", "report"])
def test_every_option_is_named_in_the_docs_and_its_help_gives_the_default(command):
    docs = (REPO_ROOT / "docs" / "hf_compress.md").read_text()
    subparser = subcommand_parsers()[command]
    formatter = subparser._get_formatter()
    for action in subparser._actions:
        option = next((o for o in action.option_strings if o.startswith("--")), None)
        if option in (None, "--help", "--debug"):
            continue
        assert option in docs, f"hf-compress {command} {option} is not named in docs/hf_compress.md"
        if action.default is not None and action.default is not False:
            help_text = formatter._get_help_string(action) or ""
            assert "default" in help_text, f"hf-compress {command} --help does not give the default of {option}"


def test_help_gives_defaults_but_not_unset_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["generate", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "requests in flight at once, per server. (default: 16)" in text
    assert "seconds before a request times out. (default: 600.0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("command", ["run", "generate", "verify", "compress", "build", "sft", "eval", "report"])
def test_every_subcommand_prints_its_help(command, capsys):
    from hf_compress.cli import main

    argv = (
        [command, str(REPO_ROOT / "examples" / "recipes" / "sft_tiny_student.yaml")] if command == "sft" else [command]
    )
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])  # sft: TRL's parser prints every recipe field
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--help" in out
    if command == "sft":
        assert "--dataset_path" in out and "--use_embedded_chat_template" in out and "--learning_rate" in out


def documented_default(value) -> str:
    return f'`"{value}"`' if isinstance(value, str) else f"`{value}`"


def test_flowgrpo_config_options_table_lists_every_field_with_its_default():
    docs = (REPO_ROOT / "docs" / "hf_flowcredit.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (`[^|]*`) \|", docs, re.M))
    own = [
        f for f in dataclasses.fields(FlowGRPOConfig) if f.name not in {g.name for g in dataclasses.fields(GRPOConfig)}
    ]
    assert own, "FlowGRPOConfig adds no field to GRPOConfig?"
    for f in own:
        assert f.name in rows, f"FlowGRPOConfig.{f.name} is missing from the options table of docs/hf_flowcredit.md"
        assert rows[f.name] == documented_default(f.default), f"{f.name}: docs say {rows[f.name]}, code {f.default!r}"
        assert f"{f.name} (`" in FlowGRPOConfig.__doc__, f"FlowGRPOConfig's docstring does not document {f.name}"


def test_flowgrpo_script_prints_its_help():
    from trl import ModelConfig, TrlParser

    from examples.scripts.flowcredit_grpo import FlowGRPOScriptArguments

    # What `python -m examples.scripts.flowcredit_grpo --help` prints: argparse %-formats every field's help.
    text = TrlParser((FlowGRPOScriptArguments, FlowGRPOConfig, ModelConfig)).format_help()
    assert "--normalize_weights" in text and "--flow_recompute_min_length" in text


def test_flow_layers_help_names_every_preset():
    help_text = next(f for f in dataclasses.fields(FlowGRPOConfig) if f.name == "flow_layers").metadata["help"]
    assert all(f"'{preset}'" in help_text for preset in LAYER_PRESETS), help_text
