"""The console scripts as users run them: installed executables in a subprocess, from the repository root and from
another directory, on the shipped recipes. Every YAML under `examples/recipes/` is parsed against the installed
libraries with the parser its script uses; the small recipes also run end to end (marked slow)."""

import glob
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from tests.compress.conftest import _running_server, teacher_server  # noqa: F401 - the local teacher server

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(glob.glob(str(REPO_ROOT / "examples" / "recipes" / "*.yaml")))
COMPRESS_RECIPE = REPO_ROOT / "examples" / "recipes" / "compress_arithmetic.yaml"


def console_script(name: str) -> str:
    """The installed executable, next to this interpreter (the venv's bin/) or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e .` declares it in pyproject's [project.scripts]"
    return found


def run_script(name: str, *args: str, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # as a user's shell: nothing but the installed package is importable
    return subprocess.run(
        [console_script(name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def error_line(result: subprocess.CompletedProcess, prefix: str) -> str:
    """The one line a failing command prints (progress bars aside), checked to be the only error output."""
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if "error" in line.lower()]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"{prefix}: error: "), lines
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# Every shipped recipe parses against the installed transformers / TRL (the parser its script uses)
# ----------------------------------------------------------------------------------------------------------


def parse_compress_recipe(path: str):
    from hf_compress.recipe import import_input_builder, load_recipe, plan_stages

    recipe = load_recipe(path)
    plan = plan_stages(recipe, path)
    if "input_builder" in recipe:  # the shipped recipes are run from the repository root (the tests' directory)
        import_input_builder(recipe["input_builder"])
    return [name for name, _ in plan]


def parse_sft_recipe(path: str):
    from hf_compress.sft import parse_sft_cli  # what `hf-compress sft RECIPE` calls

    script_args, training_args, model_args = parse_sft_cli(["--config", path, "--output_dir", "unused"])
    return script_args.variant, training_args.learning_rate


def parse_grpo_recipe(path: str):
    from trl import ModelConfig, TrlParser

    from examples.scripts.flowcredit_grpo import FlowGRPOConfig, FlowGRPOScriptArguments

    # As `examples/scripts/flowcredit_grpo.py` parses it; GPU-only settings (bf16) turned off on this CPU machine.
    parser = TrlParser((FlowGRPOScriptArguments, FlowGRPOConfig, ModelConfig))
    _, config, _ = parser.parse_args_and_config(["--config", path, "--bf16", "false", "--use_cpu", "true"])
    return config.token_scorer, config.top_fraction


def parse_dla_recipe(path: str):
    from transformers import TrainingArguments
    from trl import TrlParser

    from examples.repro.dla_mqar import RetrievalTaskArguments, TinyDLAArguments, check_settings

    task_args, model_args, _ = TrlParser(
        (RetrievalTaskArguments, TinyDLAArguments, TrainingArguments)
    ).parse_args_and_config(["--config", path])
    check_settings(task_args, model_args)
    return task_args.task, model_args.max_states


# Which script reads a recipe, told by the command its header comment gives (every shipped recipe names one).
PARSERS = {
    "hf-compress run": parse_compress_recipe,
    "hf-compress sft": parse_sft_recipe,
    "examples.scripts.flowcredit_grpo": parse_grpo_recipe,
    "examples.repro.dla_mqar": parse_dla_recipe,
}


@pytest.mark.parametrize("recipe", RECIPES, ids=[os.path.basename(r) for r in RECIPES])
def test_every_shipped_recipe_parses(recipe):
    text = Path(recipe).read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    commands = [command for command in PARSERS if command in header]
    assert len(commands) == 1, (
        f"{recipe}: its header comment must name the one command that reads it, of {list(PARSERS)}"
    )
    settings = yaml.safe_load(text)
    assert isinstance(settings, dict)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert PARSERS[commands[0]](recipe)
    # A key the installed libraries call deprecated (e.g. transformers 5's `gradient_checkpointing`) warns every user.
    deprecated = [
        str(w.message)
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
        and any(f"`{key}`" in str(w.message) for key in settings)
    ]
    assert not deprecated, f"{recipe} sets a deprecated field: {deprecated}"


def test_compress_distill_checks_its_sft_recipe_before_generating(tmp_path, monkeypatch):
    from examples.scripts import compress_distill

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: student\nwarmup_ratio: 0.03\n")  # a field transformers 5 removed
    monkeypatch.setattr(compress_distill, "gsm8k", lambda *a, **k: pytest.fail("loaded data before the recipe check"))
    with pytest.raises(ValueError, match="'warmup_ratio'"):
        compress_distill.main(compress_distill.CompressDistillArguments(recipe=str(recipe), output_dir=str(tmp_path)))


# ----------------------------------------------------------------------------------------------------------
# hf-compress and flowcredit-intervention as subprocesses
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # 5-7 s on the loaded 2-core CPU: two fresh `hf-compress` processes, each importing hf_compress
def test_readme_recipe_resolves_from_the_repository_root_and_from_elsewhere(tmp_path):
    # The README's command, from the repository root: the recipe's input builder is found there, as `python -m`
    # finds a module (the working directory first), and a dry run imports none of it.
    at_root = run_script("hf-compress", "run", "examples/recipes/compress_arithmetic.yaml", "--dry_run", cwd=REPO_ROOT)
    assert at_root.returncode == 0, at_root.stderr[-3000:]
    builder_file = str(REPO_ROOT / "kit" / "tiny.py")
    assert [line.split(":")[0] for line in at_root.stdout.splitlines()] == [
        "input",
        "generate",
        "verify",
        "compress",
        "build",
    ]
    assert builder_file in at_root.stdout
    # From another directory `kit` is not importable (no search of the recipe's folders): a one-line error.
    elsewhere = run_script("hf-compress", "run", str(COMPRESS_RECIPE), "--dry_run", cwd=tmp_path)
    line = error_line(elsewhere, "hf-compress run")
    assert elsewhere.returncode == 2 and "no module 'kit.tiny' in the working directory" in line
    assert str(tmp_path) in line and "repository root" in line


def test_hf_compress_errors_are_one_line_with_usage_exit_code(tmp_path):
    bad = run_script("hf-compress", "run", str(COMPRESS_RECIPE), "verify.keep_only_correct=maybe", cwd=tmp_path)
    assert bad.returncode == 2 and "expected true or false, got 'maybe'" in error_line(bad, "hf-compress run")


def test_hf_compress_typos_get_a_suggestion_from_another_folder(tmp_path):
    bad = run_script("hf-compress", "run", str(COMPRESS_RECIPE), "--dryrun", cwd=tmp_path)
    assert bad.returncode == 2
    assert error_line(bad, "hf-compress run").endswith("unrecognized arguments: --dryrun (did you mean --dry_run?)")
    bad = run_script(
        "hf-compress", "generate", "--input", "x", "--output", "y", "--problems_per_call", "0", cwd=tmp_path
    )
    assert bad.returncode == 2 and "--problems_per_call must be an integer >= 1, got 0" in error_line(
        bad, "hf-compress generate"
    )


# What each command line imports, in a fresh interpreter: `main(argv)` for each argv, then the heavy modules loaded.
IMPORTS = """
import json, sys
from hf_compress.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exit:
        assert exit.code in (0, None), (argv, exit.code)
print(json.dumps(sorted(name for name in ("torch", "transformers", "trl", "datasets") if name in sys.modules)))
"""


def modules_loaded_by(*argvs, cwd) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS, json.dumps(argvs)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_hf_compress_report_imports_no_torch_transformers_or_trl(tmp_path):
    for variant, train_tokens in (("raw", 1000), ("compressed", 400)):
        (tmp_path / variant).mkdir()
        (tmp_path / variant / "compress_sft.json").write_text(
            json.dumps({"variant": variant, "train_tokens": train_tokens, "loss_tokens": 300, "train_seconds": 10.0})
        )
        (tmp_path / variant / "eval.json").write_text(
            json.dumps(
                {
                    "n": 10,
                    "accuracy": 0.5,
                    "accuracy_stderr": 0.16,
                    "output_tokens_mean": 20.0,
                    "output_tokens_p90": 30,
                    "hit_cap_rate": 0.0,
                }
            )
        )
    loaded = modules_loaded_by(
        ["report", "raw", "compressed", "--output", "report"], ["report", "--help"], cwd=tmp_path
    )
    assert (tmp_path / "report" / "comparison.json").exists()
    assert not {"torch", "transformers", "trl"} & set(loaded), loaded


def test_help_of_every_subcommand_imports_neither_torch_nor_transformers(tmp_path):
    recipe = str(REPO_ROOT / "examples" / "recipes" / "sft_tiny_student.yaml")
    argvs = [
        ["--help"],
        *([command, "--help"] for command in ("run", "generate", "verify", "compress", "build", "eval", "report")),
        ["sft", recipe, "--help"],
    ]
    loaded = modules_loaded_by(*argvs, cwd=tmp_path)
    assert not {"torch", "transformers"} & set(loaded), loaded  # TRL's parser alone (its package is lazy) is light


def test_hf_compress_sft_help_is_short_and_names_the_subcommand(tmp_path):
    recipe = str(REPO_ROOT / "examples" / "recipes" / "sft_tiny_student.yaml")
    result = run_script("hf-compress", "sft", recipe, "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: hf-compress sft RECIPE"), result.stderr[-3000:]
    assert len(result.stdout.splitlines()) < 150  # the data and model options and the recipe's values, not TRL's 800
    assert "--dataset_path" in result.stdout and "--learning_rate 0.003" in result.stdout
    assert "--help_all" in result.stdout


def test_flowcredit_intervention_errors_are_one_line(tmp_path, capsys):
    from hf_flowcredit.intervention import main

    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", str(tmp_path / "not_a_model")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("flowcredit-intervention: error: ") and err.count("\n") == 1
    assert "not_a_model" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="not_a_model"):
        main(["--model_name_or_path", str(tmp_path / "not_a_model"), "--debug"])


@pytest.mark.slow
def test_flowcredit_intervention_console_script_error_is_one_line(tmp_path):
    (tmp_path / "not_a_model").mkdir()
    result = run_script("flowcredit-intervention", "--model_name_or_path", str(tmp_path / "not_a_model"), cwd=tmp_path)
    assert result.returncode == 2 and "not_a_model" in error_line(result, "flowcredit-intervention")


@pytest.mark.slow
def test_readme_pipeline_runs_end_to_end_from_the_repository_root(teacher_server, tmp_path):  # noqa: F811
    """`hf-compress run examples/recipes/compress_arithmetic.yaml`, with the teacher served on 127.0.0.1 and 8
    problems; then a changed builder argument rebuilds the input and the stages refuse their stale results."""
    tokenizer = tmp_path / "tokenizer"
    from kit.tiny import build_tokenizer

    build_tokenizer().save_pretrained(str(tokenizer))
    overrides = [
        f"output_dir={tmp_path / 'pipeline'}",
        "input_builder_kwargs.n=8",
        "generate.backend=openai",
        "generate.model=teacher",
        f"generate.base_url={teacher_server.base_url}",
        "generate.n=2",
        f"compress.tokenizer={tokenizer}",
        f"build.tokenizer={tokenizer}",
    ]
    result = run_script("hf-compress", "run", "examples/recipes/compress_arithmetic.yaml", *overrides, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| compressed |" in result.stdout
    from hf_compress.build import load_variants

    built = load_variants(str(tmp_path / "pipeline" / "build"))
    assert set(built) == {"raw", "compressed", "answer_only", "truncated"} and len(built["raw"]) > 0

    changed = run_script(
        "hf-compress", "run", str(COMPRESS_RECIPE), *overrides, "input_builder_kwargs.n=10", cwd=REPO_ROOT
    )
    assert changed.returncode == 2 and "the input dataset changed" in error_line(changed, "hf-compress run")


@pytest.mark.slow
def test_tiny_sft_recipe_trains_a_few_steps_from_another_directory(tmp_path):
    from datasets import DatasetDict

    from kit.tiny import build_tokenizer, make_task_dataset, tiny_causal_lm

    tokenizer = build_tokenizer()
    tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=1).save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    rows = make_task_dataset("arithmetic", 24, seed=0)
    rows = rows.map(lambda row: {"messages": row["prompt"] + row["completion"], "variant": "raw"})
    DatasetDict({"raw": rows}).save_to_disk(str(tmp_path / "built"))
    result = run_script(
        "hf-compress",
        "sft",
        str(REPO_ROOT / "examples" / "recipes" / "sft_tiny_student.yaml"),
        "--model_name_or_path",
        str(tmp_path / "student"),
        "--dataset_path",
        str(tmp_path / "built"),
        "--variant",
        "raw",
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "compress_sft.json").read_text())
    assert summary["variant"] == "raw" and summary["loss_tokens"] > 0
