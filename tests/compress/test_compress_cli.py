"""`hf-compress`: the subcommands and the YAML-driven `run`, end to end against the local test server."""

import dataclasses
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest
import yaml
from datasets import load_from_disk

from hf_compress.build import VARIANTS, load_variants
from hf_compress.cli import build_parser, main
from hf_compress.commands import PIPELINE, SUBCOMMANDS
from hf_compress.recipe import stage_arguments
from hf_compress.validation import UsageError
from kit.tiny import build_tokenizer, make_task_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def workspace(tmp_path):
    make_task_dataset("arithmetic", 8, seed=0).save_to_disk(str(tmp_path / "problems"))
    build_tokenizer().save_pretrained(str(tmp_path / "tokenizer"))
    return tmp_path


def write_recipe(workspace, base_url, **changes):
    recipe = {
        "output_dir": str(workspace / "pipeline"),
        "input": str(workspace / "problems"),
        "generate": {"backend": "openai", "model": "teacher", "base_url": base_url, "n": 2, "shard_size": 3},
        "verify": {"timeout_seconds": 5},
        "compress": {"compressor": "extractive", "tokenizer": str(workspace / "tokenizer")},
        "build": {"tokenizer": str(workspace / "tokenizer")},
        **changes,
    }
    path = workspace / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_run_chains_the_stages_and_skips_finished_ones(teacher_server, workspace, capsys):
    recipe = write_recipe(workspace, teacher_server.base_url)
    main(["run", recipe])
    table = capsys.readouterr().out
    assert "| variant | rows |" in table and "**compress**: rows = 16" in table and "pass_rate" in table
    pipeline = workspace / "pipeline"
    assert len(load_from_disk(str(pipeline / "generate"))) == 16
    assert set(load_variants(str(pipeline / "build"))) == set(VARIANTS)

    requests = teacher_server.behaviour.requests
    main(["run", recipe])  # everything cached: the teacher is not called again
    assert teacher_server.behaviour.requests == requests
    shutil.rmtree(pipeline / "build")
    main(["run", recipe])  # only the missing stage is recomputed
    assert teacher_server.behaviour.requests == requests and (pipeline / "build" / "README.md").exists()


def test_subcommands_read_and_write_folders(teacher_server, workspace):
    out = workspace / "steps"
    main(
        [
            "generate",
            "--input",
            str(workspace / "problems"),
            "--output",
            str(out / "g"),
            "--backend",
            "openai",
            "--model",
            "teacher",
            "--base_url",
            teacher_server.base_url,
            "--n",
            "1",
        ]
    )
    main(["verify", "--input", str(out / "g"), "--output", str(out / "v"), "--keep_only_correct"])
    main(
        [
            "compress",
            "--input",
            str(out / "v"),
            "--output",
            str(out / "c"),
            "--tokenizer",
            str(workspace / "tokenizer"),
        ]
    )
    main(
        [
            "build",
            "--input",
            str(out / "c"),
            "--output",
            str(out / "b"),
            "--tokenizer",
            str(workspace / "tokenizer"),
            "--variants",
            "raw",
            "compressed",
        ]
    )
    assert all(load_from_disk(str(out / "v"))["correct"])
    assert list(load_variants(str(out / "b"))) == ["raw", "compressed"]


def cli_error(argv, capsys):
    """(exit code, stderr) of a failing `hf-compress` command."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_recipe_errors_name_the_problem_in_one_line(teacher_server, workspace, capsys):
    cases = [
        ({"generate": {"temprature": 0.5}}, r"Unknown key\(s\) \['temprature'\] in .*recipe.yaml: section `generate`"),
        ({"evaluate_me": {}}, r"Unknown top-level key\(s\) \['evaluate_me'\]"),
        (
            {"generate": {"temperature": "hot"}},
            r"section `generate`: argument --temperature: invalid float value: 'hot'",
        ),
        ({"generate": {"n": 2.5}}, r"argument --n: invalid int value: '2.5'"),
        ({"verify": {"keep_only_correct": "maybe"}}, r"`keep_only_correct`: expected true or false, got 'maybe'"),
        ({"verify": {"task": "algebra"}}, r"argument --task: invalid choice: 'algebra'"),
        ({"compress": {"output": "elsewhere"}}, r"section `compress` sets \['output'\], which `run` sets itself"),
        ({"build": {"input": "elsewhere"}}, r"section `build` sets \['input'\]"),
    ]
    for changes, message in cases:
        code, err = cli_error(["run", write_recipe(workspace, teacher_server.base_url, **changes)], capsys)
        assert code == 2 and re.search(message, err), (changes, err)
        assert err.startswith("hf-compress run: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert teacher_server.behaviour.requests == 0  # every section is checked before the first stage runs
    assert not (workspace / "pipeline").exists()


def test_recipe_values_are_parsed_like_the_command_line():
    verify = stage_arguments("verify", {"keep_only_correct": "false", "timeout_seconds": "7"}, "in", "out")
    assert verify.keep_only_correct is False and verify.timeout_seconds == 7
    assert stage_arguments("verify", {"keep_only_correct": "yes"}, "in", "out").keep_only_correct is True
    generate = stage_arguments(
        "generate", {"temperature": "0.7", "top_k": None, "system_prompt": "- be brief"}, "in", "out"
    )
    assert generate.temperature == 0.7 and generate.top_k is None and generate.system_prompt == "- be brief"
    build = stage_arguments("build", {"tokenizer": "tok", "variants": ["raw", "compressed"]}, "in", "out")
    assert build.variants == ["raw", "compressed"]
    with pytest.raises(UsageError, match=r"argument --variants: invalid choice: 'shortest'"):
        stage_arguments("build", {"tokenizer": "tok", "variants": ["shortest"]}, "in", "out")
    with pytest.raises(UsageError, match=r"the following arguments are required: --tokenizer"):
        stage_arguments("build", {}, "in", "out")
    with pytest.raises(UsageError, match=r"Unknown key\(s\) \['help'\]"):  # not argparse's -h, which would exit
        stage_arguments("verify", {"help": True}, "in", "out")


def test_keep_only_correct_false_in_a_recipe_keeps_every_row(teacher_server, workspace):
    recipe = write_recipe(workspace, teacher_server.base_url, verify={"keep_only_correct": "false"})
    main(["run", recipe])
    verified = load_from_disk(str(workspace / "pipeline" / "verify"))
    assert len(verified) == 16 and not all(verified["correct"])


def traces_folder(path, n=4):
    data = make_task_dataset("arithmetic", n, seed=0).select_columns(["problem", "answer"])
    data = data.map(lambda row: {"generation": f"The answer is \\boxed{{{row['answer']}}}."})
    data.save_to_disk(str(path))
    return str(path)


def test_stages_refuse_an_output_that_is_or_holds_or_lies_inside_the_input(tmp_path, capsys):
    traces = traces_folder(tmp_path / "traces")
    before = sorted(os.listdir(traces))
    for output in [traces, os.path.join(traces, "verified"), str(tmp_path)]:
        for stage in (
            ["verify"],
            ["compress", "--tokenizer", "unused"],
            ["build", "--tokenizer", "unused", "--variants", "raw"],
        ):
            code, err = cli_error([*stage, "--input", traces, "--output", output, "--overwrite"], capsys)
            assert code == 2 and "writing there would destroy the input" in err, (stage, output, err)
    assert sorted(os.listdir(traces)) == before and len(load_from_disk(traces)) == 4
    main(["verify", "--input", traces, "--output", str(tmp_path / "verified")])  # a sibling folder is fine
    assert len(load_from_disk(str(tmp_path / "verified"))) == 4


def test_empty_input_is_refused_before_anything_is_written(tmp_path, capsys):
    traces = load_from_disk(traces_folder(tmp_path / "traces", n=4))
    traces.map(lambda row: {"generation": "no idea"}).save_to_disk(str(tmp_path / "wrong"))
    main(["verify", "--input", str(tmp_path / "wrong"), "--output", str(tmp_path / "v"), "--keep_only_correct"])
    assert len(load_from_disk(str(tmp_path / "v"))) == 0  # kept no trace, and the folder still loads
    tokenizer = str(tmp_path / "tok")
    build_tokenizer().save_pretrained(tokenizer)
    for stage in (
        ["compress", "--tokenizer", tokenizer],
        ["build", "--tokenizer", tokenizer, "--variants", "raw"],
        ["verify"],
    ):
        code, err = cli_error([*stage, "--input", str(tmp_path / "v"), "--output", str(tmp_path / "next")], capsys)
        assert code == 2 and "has no rows" in err and not (tmp_path / "next").exists(), err
    traces.select([]).save_to_disk(str(tmp_path / "empty"))  # datasets writes no data file for 0 rows
    code, err = cli_error(["verify", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "next")], capsys)
    assert code == 2 and "holds a dataset with no rows" in err and not (tmp_path / "next").exists()


BUILDER = """
from datasets import Dataset


def traces(n):
    problems = [f"Compute {i} + 1 from left to right." for i in range(n)]
    return Dataset.from_dict({"problem": problems, "answer": [str(i + 1) for i in range(n)],
                              "generation": [f"\\\\boxed{{{i + 1}}}" for i in range(n)]})
"""


def builder_recipe(folder, module, n):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(BUILDER)
    recipe = {
        "output_dir": str(folder / "pipeline"),
        "input_builder": f"{module}:traces",
        "input_builder_kwargs": {"n": n},
        "verify": {"keep_only_correct": True},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return str(folder / "recipe.yaml")


def test_run_rebuilds_the_input_when_the_builder_arguments_change(tmp_path, monkeypatch, capsys):
    module = f"builder_{uuid.uuid4().hex[:8]}"
    recipe = builder_recipe(tmp_path / "recipes", module, n=3)
    monkeypatch.chdir(tmp_path / "recipes")  # the builder is imported as `python -m` would: from the working directory
    monkeypatch.setattr(sys, "path", list(sys.path))
    main(["run", recipe])
    pipeline = tmp_path / "recipes" / "pipeline"
    assert len(load_from_disk(str(pipeline / "input"))) == 3 and len(load_from_disk(str(pipeline / "verify"))) == 3

    code, err = cli_error(["run", recipe, "input_builder_kwargs.n=5"], capsys)
    assert len(load_from_disk(str(pipeline / "input"))) == 5  # rebuilt, not the stale 3 rows
    assert code == 2 and "the input dataset changed" in err and "`overwrite: true` in the `verify` section" in err
    main(["run", recipe, "input_builder_kwargs.n=5", "verify.overwrite=true"])
    assert len(load_from_disk(str(pipeline / "verify"))) == 5
    main(["run", recipe, "input_builder_kwargs.n=5"])  # unchanged now: everything reused
    assert len(load_from_disk(str(pipeline / "verify"))) == 5


def test_cli_errors_are_one_line_with_exit_codes_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    def fail(args):
        raise RuntimeError("the teacher went away\nmid-run")

    monkeypatch.setitem(SUBCOMMANDS, "verify", dataclasses.replace(SUBCOMMANDS["verify"], help="fails", run=fail))
    argv = ["verify", "--input", "in", "--output", "out"]
    code, err = cli_error(argv, capsys)
    assert (
        code == 1
        and err
        == "hf-compress verify: error: RuntimeError: the teacher went away mid-run (--debug shows the traceback)\n"
    )
    with pytest.raises(RuntimeError, match="the teacher went away"):
        main([*argv, "--debug"])
    with pytest.raises(RuntimeError, match="the teacher went away"):
        main(["--debug", *argv])


def test_example_recipe_is_valid():
    with open(os.path.join(REPO_ROOT, "examples", "recipes", "compress_arithmetic.yaml")) as f:
        recipe = yaml.safe_load(f)
    for name in PIPELINE:
        if name in recipe:
            args = stage_arguments(name, recipe[name] or {}, "in", "out")
            assert all(getattr(args, key) == value for key, value in (recipe[name] or {}).items())
    assert {"generate", "verify", "compress", "build"} <= set(recipe)


def test_parser_lists_every_registered_subcommand():
    help_text = build_parser().format_help()
    assert all(name in help_text for name in SUBCOMMANDS)
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("hf-compress") == "hf_compress.cli:main"  # pyproject [project.scripts], installed


# ----------------------------------------------------------------------------------------------------------
# Option values, typos, local paths, and what a dry run may not do
# ----------------------------------------------------------------------------------------------------------


def generate_argv(workspace, url, **options):
    options = {
        "input": str(workspace / "problems"),
        "output": str(workspace / "g"),
        "backend": "openai",
        "model": "teacher",
        "base_url": url,
        **options,
    }
    return ["generate", *[item for key, value in options.items() for item in (f"--{key}", str(value))]]


BAD_VALUES = [
    ("problems_per_call", "0", r"--problems_per_call must be an integer >= 1, got 0\."),
    ("top_k", "-5", r"--top_k must be an integer >= 0 \(0 turns it off.*\), got -5\."),
    (
        "prompt_template",
        "{problem} {foo}",
        r"--prompt_template may use only the placeholder \{problem\}.* with \{foo\}",
    ),
    ("prompt_template", "Solve: {problm}", r"--prompt_template must be a template containing \{problem\}"),
    ("temperature", "-0.5", r"--temperature must be a number >= 0, got -0.5\."),
    ("top_p", "1.5", r"--top_p must be in \(0, 1\], got 1.5\."),
    ("max_concurrency", "0", r"--max_concurrency must be an integer >= 1, got 0\."),
    ("stall_timeout_seconds", "0", r"--stall_timeout_seconds must be a number > 0, got 0.0\."),
    ("base_url", "localhost:8000/v1", r"--base_url: base_url 'localhost:8000/v1' is not an http\(s\) URL"),
]


@pytest.mark.parametrize(("option", "value", "message"), BAD_VALUES, ids=[f"{o}={v}" for o, v, _ in BAD_VALUES])
def test_option_values_are_checked_before_the_first_request(teacher_server, workspace, capsys, option, value, message):
    code, err = cli_error(generate_argv(workspace, teacher_server.base_url, **{option: value}), capsys)
    assert code == 2 and re.search(message, err) and err.startswith("hf-compress generate: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err
    # The same value in a recipe: the same check (the section's dataclasses), before any stage runs.
    section = {"backend": "openai", "model": "teacher", "base_url": teacher_server.base_url, option: value}
    code, err = cli_error(["run", write_recipe(workspace, teacher_server.base_url, generate=section)], capsys)
    assert code == 2 and re.search(r"section `generate`: " + message, err), err
    assert teacher_server.behaviour.requests == 0 and not (workspace / "g").exists()
    assert not (workspace / "pipeline").exists()


def test_typos_are_refused_with_a_suggestion_never_taken_for_another_option(teacher_server, workspace, capsys):
    recipe = write_recipe(workspace, teacher_server.base_url)
    code, err = cli_error(["run", recipe, "--dryrun"], capsys)
    assert code == 2 and err == "hf-compress run: error: unrecognized arguments: --dryrun (did you mean --dry_run?)\n"
    code, err = cli_error(generate_argv(workspace, teacher_server.base_url, problems_per_cal=4), capsys)
    assert code == 2 and "unrecognized arguments: --problems_per_cal 4 (did you mean --problems_per_call?)" in err
    # A prefix of an option is not that option (argparse would take --keep_only as --keep_only_correct).
    code, err = cli_error(["verify", "--input", "in", "--output", "out", "--keep_only"], capsys)
    assert code == 2 and "unrecognized arguments: --keep_only (did you mean --keep_only_correct?)" in err
    code, err = cli_error(["rn", recipe], capsys)
    assert code == 2 and err.startswith("hf-compress: error: argument command: invalid choice: 'rn'")
    assert err.endswith("(did you mean 'run'?)\n") and err.count("\n") == 1
    code, err = cli_error(
        ["run", write_recipe(workspace, teacher_server.base_url, generate={"temprature": 0.5})], capsys
    )
    assert code == 2 and "['temprature'] in " in err and "(did you mean 'temperature'?)" in err
    assert teacher_server.behaviour.requests == 0


def test_a_local_path_that_does_not_exist_is_named_with_the_folder_it_was_looked_for_in(
    workspace, monkeypatch, capsys
):
    elsewhere = workspace / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cases = [
        (["verify", "--input", "test_set/", "--output", "out"], f"--input: no such folder: test_set/ ({elsewhere})"),
        (
            ["generate", "--input", str(workspace / "problems"), "--output", "g", "--model", "runs/sft/model"],
            "--model: no such folder: runs/sft/model",
        ),
        (
            ["build", "--input", str(workspace / "problems"), "--output", "b", "--tokenizer", "runs/sft/model"],
            "--tokenizer: no such folder: runs/sft/model",
        ),
        (
            ["eval", "--model", "students/raw/", "--input", str(workspace / "problems")],
            "--model: no such folder: students/raw/",
        ),
    ]
    for argv, message in cases:
        code, err = cli_error(argv, capsys)
        line = err.replace("\r", "\n").strip().splitlines()[-1]  # generate's progress bar aside
        assert code == 2 and line.startswith(f"hf-compress {argv[0]}: error: {message.replace(f' ({elsewhere})', '')}")
        assert f"(relative to {elsewhere})" in line and "Repo id" not in err and "Traceback" not in err, err
    # A recipe's relative paths are relative to the working directory too, never to the recipe's folder.
    traces_folder(workspace / "traces")
    recipe = {"output_dir": "pipeline", "input": "traces/", "verify": {}}
    (workspace / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code, err = cli_error(["run", str(workspace / "recipe.yaml")], capsys)
    assert code == 2 and f"--input: no such folder: traces/ (relative to {elsewhere})" in err
    monkeypatch.chdir(workspace)
    main(["run", str(workspace / "recipe.yaml")])
    assert len(load_from_disk(str(workspace / "pipeline" / "verify"))) == 4


SIDE_EFFECT = """
open({marker!r}, "w").close()


def build(n=1):
    raise AssertionError("a dry run called the builder")
"""


def test_a_dry_run_imports_and_calls_none_of_the_recipes_code(tmp_path, monkeypatch, capsys):
    package = f"pkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(SIDE_EFFECT.format(marker=str(tmp_path / "package_imported")))
    (tmp_path / package / "sub.py").write_text(SIDE_EFFECT.format(marker=str(tmp_path / "module_imported")))
    monkeypatch.chdir(tmp_path)  # found as `python -m` would find it: in the working directory
    monkeypatch.setattr(sys, "path", list(sys.path))

    def recipe(builder, **kwargs):
        path = tmp_path / "recipe.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "output_dir": str(tmp_path / "out"),
                    "input_builder": builder,
                    "input_builder_kwargs": kwargs,
                    "verify": {},
                }
            )
        )
        return str(path)

    main(["run", recipe(f"{package}.sub:build"), "--dry_run"])
    assert f"input: {package}.sub:build in {tmp_path / package / 'sub.py'}" in capsys.readouterr().out
    assert not (tmp_path / "package_imported").exists() and not (tmp_path / "module_imported").exists()
    assert package not in sys.modules
    # A builder that is any installed function: a dry run does not call it.
    main(["run", recipe("subprocess:run", args=["touch", str(tmp_path / "touched")]), "--dry_run"])
    assert not (tmp_path / "touched").exists() and "subprocess.py" in capsys.readouterr().out
    code, err = cli_error(["run", recipe(f"{package}.nothing:build"), "--dry_run"], capsys)
    assert code == 2 and f"no module '{package}.nothing' in the working directory ({tmp_path})" in err
    assert not (tmp_path / "out").exists()


LAZY = """
import sys, types
import hf_compress
assert "datasets" not in sys.modules and "hf_compress.generate" not in sys.modules
import hf_compress.generate
from hf_compress import generate, verify
assert isinstance(generate, types.FunctionType) and hf_compress.generate is generate  # not the submodule
assert isinstance(verify, types.FunctionType) and hf_compress.verify is verify
from hf_compress.generate import GENERATED_COLUMNS  # the module itself is still importable
print(sorted(name for name in hf_compress.__all__ if not hasattr(hf_compress, name)))
"""


def test_the_package_imports_its_names_when_first_used_and_stage_functions_stay_functions():
    result = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-3000:]
