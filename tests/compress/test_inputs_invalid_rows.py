"""Rows a stage cannot use are refused when the input is read (row index, id and field named, nothing sent or
written), or left out and counted on request; duplicate ids and one problem with two golds are refused; verify's
per-problem figures are keyed by id."""

import os
import subprocess
import sys

import pytest
from datasets import Dataset, load_from_disk

from hf_compress.backends import OpenAIBackend, SamplingConfig
from hf_compress.compress import ExtractiveCompressor, compress
from hf_compress.generate import generate
from hf_compress.locking import lock_paths
from hf_compress.stages import read_stage_record
from hf_compress.verify import verify
from kit.tiny import build_tokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def problems(**changes):
    rows = {
        "id": ["q0", "q1", "q2", "q3"],
        "problem": [f"Compute {i} + 1 from left to right." for i in range(4)],
        "answer": [str(i + 1) for i in range(4)],
    }
    for column, values in changes.items():
        rows[column] = values
    return Dataset.from_dict(rows)


def nothing_written(output):
    lock_file, holder_file = lock_paths(output)
    return not os.path.exists(output) and not os.path.exists(lock_file) and not os.path.exists(holder_file)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"problem": ["Compute 0 + 1 from left to right.", None, "Compute 2 + 1 from left to right.", ""]},
            r"2 input row\(s\) cannot be used: row 1 \(id 'q1'\): `problem` is None \(missing\); row 3 \(id 'q3'\): "
            r"`problem` is empty",
        ),
        ({"answer": ["1", "2", None, "4"]}, r"row 2 \(id 'q2'\): `answer` is None"),
        ({"answer": ["1", "2", "3", "  "]}, r"row 3 \(id 'q3'\): `answer` is blank"),
        ({"id": ["q0", "q1", "q0", "q3"]}, r"the id 'q0' is on two rows, 0 and 2"),
        (
            {"problem": ["Same problem."] * 2 + ["Other.", "Another."], "answer": ["1", "2", "3", "4"]},
            r"one problem text has two different gold answers: row 0 \(id 'q0'\) has '1', row 1 \(id 'q1'\) has '2'",
        ),
    ],
    ids=["none_and_empty_problem", "none_gold", "blank_gold", "duplicate_id", "two_golds"],
)
def test_generate_refuses_bad_rows_before_any_request(teacher_server, tmp_path, changes, message):
    output = str(tmp_path / "g")
    with pytest.raises(ValueError, match=message):
        generate(problems(**changes), OpenAIBackend("teacher", base_url=teacher_server.base_url), output_dir=output)
    assert teacher_server.behaviour.requests == 0 and nothing_written(output)


def test_without_an_id_column_rows_are_named_by_index(teacher_server):
    data = problems(problem=["a", "b", None, "d"]).remove_columns("id")
    with pytest.raises(ValueError, match=r"row 2: `problem` is None"):
        generate(data, OpenAIBackend("teacher", base_url=teacher_server.base_url))
    assert teacher_server.behaviour.requests == 0


def test_generate_skips_invalid_rows_on_request_and_counts_them(teacher_server, tmp_path):
    output = str(tmp_path / "g")
    data = problems(problem=["Compute 0 + 1 from left to right.", None, "Compute 2 + 1 from left to right.", ""])
    traces = generate(
        data,
        OpenAIBackend("teacher", base_url=teacher_server.base_url),
        SamplingConfig(n=2),
        output_dir=output,
        skip_invalid_rows=True,
    )
    assert teacher_server.behaviour.requests == 4  # 2 valid problems x 2 samples
    assert list(traces["id"]) == ["q0", "q0", "q2", "q2"]
    stats = read_stage_record(output)["stats"]
    assert stats["invalid_rows_skipped"] == 2 and stats["invalid_rows_by_column"] == {"problem": 2}


def test_verify_refuses_a_missing_gold_or_trace_and_skips_on_request(tmp_path):
    rows = {
        "id": ["a", "a", "b"],
        "problem": ["p", "p", "q"],
        "answer": ["1", "1", None],
        "generation": ["\\boxed{1}", None, "\\boxed{2}"],
    }
    with pytest.raises(
        ValueError, match=r"row 1 \(id 'a'\): `generation` is None .*row 2 \(id 'b'\): `answer` is None"
    ):
        verify(Dataset.from_dict(rows), output_dir=str(tmp_path / "v"))
    assert nothing_written(str(tmp_path / "v"))
    checked = verify(Dataset.from_dict(rows), output_dir=str(tmp_path / "v"), skip_invalid_rows=True)
    assert list(checked["id"]) == ["a"] and list(checked["correct"]) == [True]
    assert read_stage_record(str(tmp_path / "v"))["stats"]["invalid_rows_skipped"] == 2


def test_verify_refuses_one_id_with_two_golds():
    rows = {"id": ["a", "a"], "problem": ["p", "p"], "answer": ["1", "2"], "generation": ["\\boxed{1}"] * 2}
    with pytest.raises(ValueError, match=r"rows 0 and 1 have the same id 'a' but different golds \('1' and '2'\)"):
        verify(Dataset.from_dict(rows))
    no_ids = Dataset.from_dict(rows).remove_columns("id")
    with pytest.raises(ValueError, match=r"one problem text has two different gold answers: row 0 has '1', row 1"):
        verify(no_ids)


def test_verify_pass_rates_are_per_id_not_per_text():
    rows = {
        "id": ["a", "a", "b", "b"],
        "problem": ["Same text."] * 4,
        "answer": ["1", "1", "999", "999"],
        "generation": ["\\boxed{1}"] * 4,
    }
    checked = verify(Dataset.from_dict(rows))
    assert list(checked["correct"]) == [True, True, False, False]
    assert list(checked["pass_rate"]) == [1.0, 1.0, 0.0, 0.0]  # keyed by text, both ids got 0.5


def test_verify_statistics_count_problems_by_id(tmp_path):
    rows = {"id": ["a", "b"], "problem": ["Same text."] * 2, "answer": ["1", "999"], "generation": ["\\boxed{1}"] * 2}
    verify(Dataset.from_dict(rows), output_dir=str(tmp_path / "v"))
    stats = read_stage_record(str(tmp_path / "v"))["stats"]
    assert stats["problems"] == 2 and stats["problems_solved"] == 1 and stats["mean_problem_pass_rate"] == 0.5


def test_compress_refuses_a_none_problem_before_loading_anything(tmp_path):
    rows = {"problem": ["p", None], "answer": ["1", "2"], "generation": ["\\boxed{1}", "\\boxed{2}"]}
    with pytest.raises(ValueError, match=r"row 1: `problem` is None"):
        compress(Dataset.from_dict(rows), ExtractiveCompressor(), "no/such/tokenizer", output_dir=str(tmp_path / "c"))
    kept = compress(Dataset.from_dict(rows), ExtractiveCompressor(), build_tokenizer(), skip_invalid_rows=True)
    assert list(kept["problem"]) == ["p"]


# ----------------------------------------------------------------------------------------------------------
# As a user runs it: the console script
# ----------------------------------------------------------------------------------------------------------


def hf_compress(*args, cwd):
    script = os.path.join(os.path.dirname(sys.executable), "hf-compress")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "hf_compress.cli"]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # three runs of the console script: about 25 s on the loaded 2-core CPU
def test_hf_compress_generate_and_verify_refuse_bad_rows_and_skip_them_on_request(teacher_server, tmp_path):
    problems(
        problem=["Compute 0 + 1 from left to right.", None, "Compute 2 + 1 from left to right.", ""]
    ).save_to_disk(str(tmp_path / "problems"))
    command = [
        "generate",
        "--input",
        "problems",
        "--output",
        "g",
        "--backend",
        "openai",
        "--model",
        "teacher",
        "--base_url",
        teacher_server.base_url,
        "--n",
        "2",
    ]
    refused = hf_compress(*command, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert (
        "row 1 (id 'q1'): `problem` is None" in refused.stderr
        and "row 3 (id 'q3'): `problem` is empty" in refused.stderr
    )
    assert teacher_server.behaviour.requests == 0 and nothing_written(str(tmp_path / "g"))

    skipped = hf_compress(*command, "--skip_invalid_rows", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert teacher_server.behaviour.requests == 4
    assert read_stage_record(str(tmp_path / "g"))["stats"]["invalid_rows_skipped"] == 2

    traces = load_from_disk(str(tmp_path / "g"))
    traces.map(
        lambda row, i: {"answer": None if i == 1 else row["answer"]},
        with_indices=True,
    ).save_to_disk(str(tmp_path / "bad_gold"))
    refused = hf_compress("verify", "--input", "bad_gold", "--output", "v", cwd=tmp_path)
    assert refused.returncode == 2 and "row 1 (id 'q0'): `answer` is None" in refused.stderr, refused.stderr[-2000:]
    assert nothing_written(str(tmp_path / "v"))
