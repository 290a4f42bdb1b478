"""`hf-compress`: the subcommands and the YAML-driven `run`, end to end against the local test server."""

import importlib.metadata
import os
import shutil

import pytest
import yaml
from datasets import load_from_disk

from examples.tiny_kit import build_tokenizer, make_task_dataset
from hf_compress.build import VARIANTS, load_variants
from hf_compress.cli import PIPELINE, SUBCOMMANDS, build_parser, main, stage_namespace

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
    main(["generate", "--input", str(workspace / "problems"), "--output", str(out / "g"), "--backend", "openai",
          "--model", "teacher", "--base_url", teacher_server.base_url, "--n", "1"])
    main(["verify", "--input", str(out / "g"), "--output", str(out / "v"), "--keep_only_correct"])
    main(["compress", "--input", str(out / "v"), "--output", str(out / "c"), "--tokenizer", str(workspace / "tokenizer")])
    main(["build", "--input", str(out / "c"), "--output", str(out / "b"), "--tokenizer", str(workspace / "tokenizer"),
          "--variants", "raw", "compressed"])
    assert all(load_from_disk(str(out / "v"))["correct"])
    assert list(load_variants(str(out / "b"))) == ["raw", "compressed"]


def test_recipe_errors_name_the_problem(teacher_server, workspace):
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['temprature'\] in the recipe's `generate`"):
        main(["run", write_recipe(workspace, teacher_server.base_url, generate={"temprature": 0.5})])
    with pytest.raises(ValueError, match=r"Unknown top-level key\(s\) \['evaluate_me'\]"):
        main(["run", write_recipe(workspace, teacher_server.base_url, evaluate_me={})])


def test_example_recipe_is_valid():
    with open(os.path.join(REPO_ROOT, "examples", "recipes", "compress_arithmetic.yaml")) as f:
        recipe = yaml.safe_load(f)
    for name in PIPELINE:
        if name in recipe:
            args = stage_namespace(name, recipe[name] or {}, "in", "out")
            assert all(getattr(args, key) == value for key, value in (recipe[name] or {}).items())
    assert {"generate", "verify", "compress", "build"} <= set(recipe)


def test_parser_lists_every_registered_subcommand():
    help_text = build_parser().format_help()
    assert all(name in help_text for name in SUBCOMMANDS)
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("hf-compress") == "hf_compress.cli:main"  # pyproject [project.scripts], installed
