"""The real-teacher reproduction driver's plumbing, on a tiny kit model and a scripted teacher: every stage and
student is written, the report holds the table, and a rerun recomputes nothing."""

import json
import os

import pytest
from datasets import load_from_disk

from examples.repro import repro_compress
from hf_compress.backends import Generation, TeacherBackend
from hf_compress.build import VARIANTS
from kit.real_model import make_word_problem_dataset
from kit.tiny import build_tokenizer, tiny_causal_lm


class ScriptedTeacher(TeacherBackend):
    """Per problem: the task's worked solution, a wrong final answer, then the solution again but cut by the
    token cap (pass rate 1/3: verify judges the cut one incorrect, `verify_note=truncated`)."""

    kind = "scripted"
    model_name = "scripted-word-problems"

    def __init__(self, n_problems: int, max_steps: int = repro_compress.ReproSettings.max_steps):
        rows = make_word_problem_dataset(n_problems, seed=0, split="train", max_steps=max_steps)
        self.traces = {row["problem"]: (row["trace"], row["answer"]) for row in rows}

    def generate(self, conversations, sampling, seed):
        results = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            trace, answer = next(v for problem, v in self.traces.items() if text.startswith(problem))
            wrong = trace.replace(f"\\boxed{{{answer}}}", f"\\boxed{{{int(answer) + 1}}}")
            samples = [Generation(trace, 20, "stop"), Generation(wrong, 20, "stop"), Generation(trace, 96, "length")]
            results.append(samples[: sampling.n])
        return results


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_model")
    tokenizer = build_tokenizer()
    tiny_causal_lm("llama", tokenizer, hidden_size=32, num_layers=1, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.slow  # ~20 s of CPU, more on a loaded machine
def test_driver_writes_every_stage_and_student_and_a_rerun_skips_them(tiny_model_path, tmp_path, monkeypatch):
    settings = repro_compress.ReproSettings(
        n_train=6,
        n_samples=3,
        n_test=4,
        teacher_batch_size=4,
        shard_size=4,
        require_stop=True,
        compress_max_new_tokens=8,
        eval_max_new_tokens=8,
        eval_batch_size=4,
    )
    output_dir = str(tmp_path / "repro")
    run = dict(model_path=tiny_model_path, teacher=ScriptedTeacher(6), recipe_overrides={"logging_steps": 1})
    report = repro_compress.run(settings, output_dir, [0], **run)

    summary = json.load(open(os.path.join(output_dir, "summary.json")))
    assert summary["pipeline"]["verify"]["pass_rate"] == pytest.approx(1 / 3)
    assert summary["pipeline"]["verify"]["flags"]["truncated"] == 6
    assert summary["pipeline"]["verify"]["problems_solved"] == 6
    assert summary["pipeline"]["correct_traces"]["n"] == 6
    assert summary["pipeline"]["correct_traces"]["cut_by_cap_dropped"] == 0  # verify dropped them already
    assert summary["pipeline"]["correct_traces"]["ended_fraction"] == 1.0
    assert [row["variant"] for row in summary["students"]] == list(VARIANTS)
    assert [reference["n"] for reference in summary["base"].values()] == [4, 4]
    teacher_prompts = load_from_disk(os.path.join(output_dir, "base_teacher_prompt", "eval_table"))["prompt"]
    assert teacher_prompts[0][0]["content"].endswith(settings.instruction)
    for variant in VARIANTS:
        student = os.path.join(output_dir, "students", "seed0", variant)
        assert json.load(open(os.path.join(student, "compress_sft.json")))["n_examples"] == 6
        assert json.load(open(os.path.join(student, "eval.json")))["n"] == 4
    assert os.path.exists(os.path.join(output_dir, "seed0", "accuracy_vs_training_tokens.png"))
    assert os.path.exists(os.path.join(output_dir, "accuracy_vs_training_tokens.png"))  # over the seeds
    assert "| answer_only |" in report and "| base model, teacher's prompt |" in report
    # The fast (bfloat16) copy made the LLM compressor's backend; the stage cache records it.
    assert os.path.exists(os.path.join(output_dir, "model-bfloat16", "config.json"))

    # The cap control re-scores a finished student with another token cap, beside its main evaluation.
    from examples.repro import repro_compress_cap_control

    raw_student = os.path.join(output_dir, "students", "seed0", "raw")
    repro_compress_cap_control.main(["--students", raw_student, "--cap", "4"])
    control = json.load(open(os.path.join(raw_student, "eval_cap4", "eval.json")))
    assert control["max_new_tokens"] == 4 and control["n"] == repro_compress.ReproSettings().n_test
    assert json.load(open(os.path.join(raw_student, "eval.json")))["n"] == 4

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached part was recomputed")

    monkeypatch.setattr(repro_compress, "run_sft", must_not_run)
    monkeypatch.setattr(repro_compress, "evaluate_student", must_not_run)
    monkeypatch.setattr(ScriptedTeacher, "generate", must_not_run)
    assert (
        repro_compress.run(settings, output_dir, [0], **run).split("This run's wall time")[0]
        == report.split("This run's wall time")[0]
    )


def test_aggregate_pools_seeds_and_table_gives_ratios_to_raw():
    def row(variant, accuracy, tokens):
        return {
            "variant": variant,
            "n": 500,
            "accuracy": accuracy,
            "accuracy_stderr": 0.02,
            "train_tokens": tokens,
            "loss_tokens": tokens / 2,
            "hit_cap_rate": 0.1,
            "train_seconds": 10.0,
            "output_tokens_mean": tokens / 100,
            "output_tokens_p90": tokens / 50,
        }

    table = repro_compress.aggregate(
        {
            0: [row("raw", 0.5, 1000), row("compressed", 0.4, 250)],
            1: [row("raw", 0.3, 1000), row("compressed", 0.4, 250)],
        }
    )
    raw, compressed = table
    assert raw["accuracy"] == pytest.approx(0.4) and raw["seed_accuracies"] == [0.5, 0.3]
    assert raw["accuracy_stderr"] == pytest.approx(0.02 / 2**0.5)
    text = repro_compress.student_table(table, None)
    assert "| compressed | 0.400 ± 0.014 (1.00x) | 0.4, 0.4 | 250 (0.25x) | 125 (0.25x) |" in text


def test_keep_first_traces_keeps_k_per_problem():
    from datasets import Dataset

    rows = Dataset.from_dict({"problem": ["a", "a", "b", "a", "b"], "sample_index": [0, 1, 0, 3, 2]})
    assert repro_compress.keep_first_traces(rows, 1)["sample_index"] == [0, 0]
    assert len(repro_compress.keep_first_traces(rows, 0)) == 5
