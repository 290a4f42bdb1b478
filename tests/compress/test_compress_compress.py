"""The compress stage: extractive and LLM compressors, answer re-verification, flags and ratios."""

import pytest
from datasets import Dataset

from hf_compress.backends import Generation, OpenAIBackend, SamplingConfig, TeacherBackend
from hf_compress.compress import Compressor, ExtractiveCompressor, LLMCompressor, compress
from hf_compress.generate import generate
from hf_compress.verify import verify
from kit.tiny import build_tokenizer, make_task_dataset


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def verified_traces(server, n=4, samples=4):
    problems = make_task_dataset("arithmetic", n, seed=0).select_columns(["problem", "answer"])
    traces = generate(problems, OpenAIBackend("teacher", base_url=server.base_url), SamplingConfig(n=samples))
    return verify(traces)


@pytest.mark.parametrize(
    "trace, expected",
    [
        (
            "Let me think step by step. 3 + 4 = 7. Then 7 * 2 = 14, which is even. The answer is \\boxed{14}.",
            "3 + 4 = 7. 7 * 2 = 14. \\boxed{14}",
        ),
        ("(3 * 4) + 5 = 17. <answer>(3 * 4) + 5</answer>", "(3 * 4) + 5 = 17. <answer>(3 * 4) + 5</answer>"),
        (
            "First x = 2\nso y = x + 1 = 3\nFinally \\boxed{\\frac{3}{2}}",
            "x = 2. y = x + 1 = 3. \\boxed{\\frac{3}{2}}",
        ),
        ("Adding gives 7 and that is all.", ""),  # nothing to keep: flagged empty by the stage
    ],
)
def test_extractive_compressor_keeps_equations_and_the_final_answer(trace, expected):
    assert ExtractiveCompressor().compress_one(trace) == expected


def test_compress_records_ratios_and_keeps_answers(teacher_server, tokenizer):
    checked = verified_traces(teacher_server)
    compressed = compress(checked, ExtractiveCompressor(), tokenizer)
    for row in compressed:
        assert row["compressor"] == "extractive-v1"
        assert row["compressed_correct"] == row["correct"]  # right answers survive, wrong ones stay wrong
        assert row["compress_flag"] == ""
        assert row["char_ratio"] == pytest.approx(len(row["compressed"]) / len(row["generation"]))
        assert row["trace_tokens"] == len(tokenizer(row["generation"], add_special_tokens=False)["input_ids"])
        assert row["token_ratio"] == pytest.approx(row["compressed_tokens"] / row["trace_tokens"])
        assert 0 < row["token_ratio"] < 1 and "Let me think" not in row["compressed"]


def test_llm_compressor_through_a_server(teacher_server, tokenizer):
    checked = verified_traces(teacher_server, n=2, samples=1)
    compressor = LLMCompressor(OpenAIBackend("compressor", base_url=teacher_server.base_url))
    compressed = compress(checked, compressor, tokenizer)
    assert set(compressed["compressor"]) == {"llm-v1:compressor"}
    for row in compressed:  # the test server keeps the sentences that hold a digit
        assert row["compressed"].startswith(row["generation"].split(". ", 1)[1].split(" So")[0])
        assert row["compressed_correct"] and row["compress_flag"] == ""


def test_empty_compressions_are_flagged_not_dropped(teacher_server, tokenizer):
    checked = verified_traces(teacher_server, n=2, samples=1)
    teacher_server.behaviour.empty_answers = True
    compressed = compress(
        checked, LLMCompressor(OpenAIBackend("compressor", base_url=teacher_server.base_url)), tokenizer
    )
    assert len(compressed) == len(checked)
    assert set(compressed["compress_flag"]) == {"empty"} and not any(compressed["compressed_correct"])
    assert set(compressed["token_ratio"]) == {0.0}


class FirstSentence(Compressor):
    """A lossy compressor: keeps only the first sentence, so the final answer is lost."""

    name = "first-sentence"

    def compress(self, problems, traces, seed=0):
        return [t.split(". ")[0] + "." for t in traces]


def test_lost_answers_are_flagged(teacher_server, tokenizer):
    compressed = compress(verified_traces(teacher_server, n=2, samples=2), FirstSentence(), tokenizer)
    flags = list(compressed["compress_flag"])
    assert flags == ["answer_lost" if c else "" for c in compressed["correct"]]
    assert not any(compressed["compressed_correct"])


def test_compress_checks_without_a_verify_stage(tokenizer):
    rows = Dataset.from_dict({"problem": ["p"], "answer": ["3"], "generation": ["Add 1 and 2. \\boxed{3}"]})
    compressed = compress(rows, FirstSentence(), tokenizer)
    assert compressed[0]["compress_flag"] == "answer_lost"


def test_compress_rejects_bad_inputs(teacher_server, tokenizer):
    with pytest.raises(ValueError, match=r"\['generation'\]"):
        compress(Dataset.from_dict({"problem": ["p"], "answer": ["1"]}), ExtractiveCompressor(), tokenizer)
    backend = OpenAIBackend("c", base_url=teacher_server.base_url)
    with pytest.raises(ValueError, match="Unknown prompt_version"):
        LLMCompressor(backend, "v0")
    with pytest.raises(ValueError, match=r"\{trace\}"):
        LLMCompressor(backend, "mine", template="Shorten: {problem}")


@pytest.mark.parametrize(
    "rewrite, expected",
    [
        ("<think>\nshorten it\n</think>\n\n3 + 4 = 7. \\boxed{7}", "3 + 4 = 7. \\boxed{7}"),
        ("<think>still thinking when the tokens ran out", ""),
        ("  3 + 4 = 7. \\boxed{7} ", "3 + 4 = 7. \\boxed{7}"),
    ],
)
def test_llm_compressor_drops_its_own_thinking(rewrite, expected):
    class ThinkingBackend(TeacherBackend):
        kind, model_name = "scripted", "thinker"

        def generate(self, conversations, sampling, seed):
            return [
                [Generation(text=rewrite, num_tokens=len(rewrite.split()), finish_reason="stop")]
                for _ in conversations
            ]

    compressor = LLMCompressor(ThinkingBackend())
    assert compressor.compress(["What is 3 + 4?"], ["3 + 4 = 7. So the answer is \\boxed{7}."]) == [expected]
