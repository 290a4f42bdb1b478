"""`flowcredit-intervention` as users run it: the installed console script in a subprocess, from the repository root
and from another folder. Every bad input is one line naming the file, the line and the field, given before the model
loads; option names are exact; `--help` and argument errors never import torch, transformers or the repository's kit.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from hf_flowcredit.intervention import InterventionArguments, _looks_local, _run_intervention, load_prompts
from tests.test_console_scripts import console_script, error_line

REPO_ROOT = Path(__file__).resolve().parents[2]
PROG = "flowcredit-intervention"
HEAVY = ("torch", "transformers", "trl", "datasets", "kit")


def run(*args: str, cwd, profile_imports: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # as a user's shell: nothing but the installed package is importable
    if profile_imports:
        env["PYTHONPROFILEIMPORTTIME"] = "1"  # every import on stderr: `import time: ... | module`
    return subprocess.run(
        [console_script(PROG), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def imported(result: subprocess.CompletedProcess) -> set[str]:
    """Top-level packages a run imported (it ran with `profile_imports=True`)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines}


def failure(result: subprocess.CompletedProcess) -> str:
    """The one error line of a run that must fail with exit code 2 (bad arguments or inputs)."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    result = subprocess.CompletedProcess(result.args, result.returncode, result.stdout, "\n".join(lines))
    assert result.returncode == 2, result.stderr[-3000:]
    return error_line(result, PROG)


@pytest.fixture(params=["repository root", "another folder"])
def cwd(request, tmp_path):
    return REPO_ROOT if request.param == "repository root" else tmp_path


@pytest.fixture
def model_folder(tmp_path) -> str:
    """A folder that passes the path checks (its config is never read: every case here fails before loading)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return str(folder)


def test_help_answers_without_heavy_imports(cwd):
    result = run("--help", cwd=cwd, profile_imports=True)
    assert result.returncode == 0 and "--max_prompt_tokens" in result.stdout and "--dataset_name" in result.stdout
    assert not imported(result) & set(HEAVY), imported(result) & set(HEAVY)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num_sample", "3"], "unknown option --num_sample; did you mean --num_samples? (see --help)"),
        (["--max_new_token=3"], "unknown option --max_new_token; did you mean --max_new_tokens?"),
        (["--learning_rat", "3"], "unknown option --learning_rat (see --help)"),
        (["--num", "3"], "unknown option --num"),  # a prefix of --num_samples is not taken for it
        (["extra"], "unexpected argument 'extra'"),
        (["--num_samples", "x"], "argument --num_samples: invalid int value: 'x'"),
        (["--num_samples", "0"], "--num_samples must be >= 1, got 0"),
    ],
)
def test_options_are_exact_and_misspelt_ones_get_a_suggestion(cwd, model_folder, args, message):
    result = run("--model_name_or_path", model_folder, *args, cwd=cwd, profile_imports=True)
    assert message in failure(result)
    assert not imported(result) & set(HEAVY)


def test_a_prefix_of_the_model_option_is_not_taken_for_it(cwd):
    assert "unknown option --model_name; did you mean --model_name_or_path?" in failure(
        run("--model_name", "x", cwd=cwd)
    )


def test_without_a_dataset_the_error_names_the_option(cwd, model_folder):
    result = run("--model_name_or_path", model_folder, cwd=cwd, profile_imports=True)
    assert "no prompts: pass --dataset_name" in failure(result)
    assert "kit" not in imported(result)


@pytest.mark.parametrize(
    "path", ["/nonexistent/model", "./nope", "../nope/model", "~/nonexistent-flowcredit/model", "runs/nope/model"]
)
def test_a_missing_local_model_folder_is_named_not_taken_for_a_hub_id(cwd, path):
    line = failure(run("--model_name_or_path", path, "--dataset_name", "unused.jsonl", cwd=cwd))
    relative = "" if path.startswith(("/", "~")) else f" (relative to {cwd})"
    assert f"no such folder: {path}{relative} (--debug" in line


def test_a_model_folder_without_config_and_a_missing_prompt_file_are_named(cwd, tmp_path, model_folder):
    (tmp_path / "empty").mkdir()
    assert f"not a model folder: {tmp_path / 'empty'} has no config.json" in failure(
        run("--model_name_or_path", str(tmp_path / "empty"), "--dataset_name", "x.jsonl", cwd=cwd)
    )
    assert f"no such file: nope.jsonl (relative to {cwd})" in failure(
        run("--model_name_or_path", model_folder, "--dataset_name", "nope.jsonl", cwd=cwd)
    )


def test_what_looks_like_a_local_path():
    assert all(map(_looks_local, ["/a", "./a", "../a", "~/a", "~", ".", "runs/sft/model"]))
    assert not any(map(_looks_local, ["Qwen/Qwen3-4B", "gpt2", "runs"]))  # Hub ids: left to from_pretrained


GOOD = b'{"prompt": "Compute 1 + 2 ="}\n'
BAD_FILES = {
    "malformed": (GOOD + b'{"prompt": "b",}\n', ", line 2: not valid JSON (Expecting property name"),
    "null": (GOOD + b'{"prompt": null}\n', ", line 2: field 'prompt' is null; expected text or a list of chat"),
    "missing": (
        GOOD + b'\n{"question": "b"}\n',
        ", line 3: no field 'prompt' (fields: ['question']); set --prompt_col",
    ),
    "integer": (b'{"prompt": 7}\n', ", line 1: field 'prompt' is int 7; expected text or a list of chat messages"),
    "empty prompt": (b'{"prompt": "  "}\n', ", line 1: field 'prompt' is empty"),
    "bad message": (b'{"prompt": [{"role": "user"}]}\n', ", line 1: field 'prompt', message 0: expected a {\"role\""),
    "not an object": (b'["Compute 1 + 2"]\n', ", line 1: expected a JSON object with a 'prompt' field"),
    "empty file": (b"", ": no rows, so no prompts"),
    "blank lines only": (b"\n\n", ": no rows, so no prompts"),
    "latin-1": (GOOD + b'{"prompt": "caf\xe9"}\n', ", line 2: not UTF-8 text (byte 0xe9 at byte 16)"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_prompt_file_is_one_line_naming_file_line_and_field(cwd, tmp_path, model_folder, case):
    content, message = BAD_FILES[case]
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(content)
    result = run("--model_name_or_path", model_folder, "--dataset_name", str(path), cwd=cwd, profile_imports=True)
    assert f"{path}{message}" in failure(result)
    assert not imported(result) & set(HEAVY)  # found before torch, transformers or datasets load


def test_only_the_prompts_used_are_read_and_an_unknown_scorer_is_refused_before_loading(tmp_path, model_folder):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(GOOD * 2 + b"not json\n")
    arguments = InterventionArguments(model_name_or_path=model_folder, dataset_name=str(path), num_samples=2)
    assert load_prompts(arguments) == [(f"{path}, line 1", "Compute 1 + 2 ="), (f"{path}, line 2", "Compute 1 + 2 =")]
    arguments.scorer = "nope"
    with pytest.raises(ValueError, match="--scorer 'nope' is not a token scorer"):  # before from_pretrained
        _run_intervention(arguments)


def test_a_json_array_file_names_the_item(tmp_path, model_folder):
    path = tmp_path / "prompts.json"
    path.write_text('[{"prompt": "a"}, {"prompt": 3}]')
    assert f"{path}, item 1: field 'prompt' is int 3" in failure(
        run("--model_name_or_path", model_folder, "--dataset_name", str(path), cwd=tmp_path)
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from kit.tiny import build_tokenizer, tiny_causal_lm

    folder = tmp_path_factory.mktemp("tiny") / "model"
    tokenizer = build_tokenizer()
    tiny_causal_lm(
        "qwen3", tokenizer, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, seed=0
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.slow  # the tokenizer loads transformers and torch in the subprocess: 5-20 s on the loaded 2-core CPU
def test_a_huge_prompt_is_refused_before_the_model_loads(tmp_path, tiny_model):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "Compute 1 + 2 ="}) + "\n" + json.dumps({"prompt": "3 + 4 . " * 260_000}))
    assert path.stat().st_size > 2_000_000
    line = failure(run("--model_name_or_path", tiny_model, "--dataset_name", str(path), cwd=tmp_path))
    assert f"{path}, line 2: field 'prompt' has more than --max_prompt_tokens=4096 tokens" in line
    line = failure(
        run("--model_name_or_path", tiny_model, "--dataset_name", str(path), "--max_prompt_tokens", "5", cwd=tmp_path)
    )
    assert f"{path}, line 1: field 'prompt' has more than --max_prompt_tokens=5 tokens" in line


@pytest.mark.slow  # a real run in a fresh process: 10-30 s on the loaded 2-core CPU
def test_the_console_script_runs_from_another_folder_without_the_repository(tmp_path, tiny_model):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"question": f"Compute {a} + 1 ="}) for a in range(3)))
    result = run(
        "--model_name_or_path",
        tiny_model,
        "--dataset_name",
        "prompts.jsonl",
        "--prompt_column",
        "question",
        "--scorer",
        "random",
        "--max_new_tokens",
        "10",
        "--answer_format",
        "regex:(..)$",
        "--output_file",
        "out/intervention.json",
        cwd=tmp_path,
        profile_imports=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random-top" in result.stdout and "kit" not in imported(result)
    assert json.loads((tmp_path / "out" / "intervention.json").read_text())["none"]["changed_rate"] == 0.0
