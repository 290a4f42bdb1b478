"""answer_token_mask: answer formats, last occurrence, token mapping (canonical and sampled ids), bad input."""

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from hf_flowcredit.answer import answer_token_mask, find_answer_span
from kit.tiny import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize(
    "text, answer_format, answer",
    [
        ("3 + 4 = 7. The answer is \\boxed{7}.", "auto", "7"),
        ("so \\boxed{\\frac{1}{2}} is it", "boxed", "\\frac{1}{2}"),
        ("x <answer>12 - 3</answer>", "auto", "12 - 3"),
        ("<answer>\n 5 \n</answer>", "answer_tag", "5"),
        ("Natalia sold 72 clips.\n#### 72\n", "auto", "72"),
        ("The answer is 3.5.", "auto", "3.5"),
        ("so the final answer is: -2\nDone", "answer_is", "-2"),
        ("\\boxed{1} and later \\boxed{2}", "auto", "2"),  # the last occurrence wins
        ("<answer>1</answer> then \\boxed{2} then <answer>3</answer>", "auto", "3"),
        ("The answer is \\boxed{9}.", "answer_is", "\\boxed{9}"),
        ("Final: 17 apples", "regex:Final: (\\d+)", "17"),
        ("Final: 17 apples", "regex:\\d+ apples", "17 apples"),
        ("answer=44;", lambda text: (text.index("=") + 1, text.index(";")), "44"),
    ],
)
def test_answer_formats(text, answer_format, answer):
    span = find_answer_span(text, answer_format)
    assert text[span[0] : span[1]] == answer


@pytest.mark.parametrize(
    "text, answer_format",
    [
        ("no answer here", "auto"),
        ("\\boxed{unbalanced", "boxed"),
        ("\\boxed{ }", "auto"),
        ("<answer>1</answer>", "hash"),
    ],
)
def test_no_answer(text, answer_format):
    assert find_answer_span(text, answer_format) is None


def _right_padded(tokenizer, rows):
    width = max(map(len, rows))
    return torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])


def test_mask_covers_exactly_the_answer_tokens(tokenizer):
    texts = ["3 + 4 = 7. The answer is \\boxed{17}.", "12 - 5 = 7. Hmm.", "<answer>2 * 3</answer>"]
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    completion_ids = _right_padded(tokenizer, rows)
    mask, missing = answer_token_mask(texts, completion_ids, tokenizer)
    assert missing.tolist() == [False, True, False]
    assert not mask[1].any()
    assert tokenizer.decode(completion_ids[0][mask[0]]).strip() == "17"
    assert tokenizer.decode(completion_ids[2][mask[2]]).strip() == "2 * 3"
    assert not (mask & (completion_ids == tokenizer.pad_token_id)).any()


def test_sampled_non_canonical_ids_are_mapped_by_decoding(tokenizer):
    text = "6 * 7 = 42. The answer is \\boxed{42}."
    ids = [token for char in text for token in tokenizer(char, add_special_tokens=False)["input_ids"]]
    assert ids != tokenizer(text, add_special_tokens=False)["input_ids"]  # one token per character: not canonical
    mask, missing = answer_token_mask([text], torch.tensor([ids + [tokenizer.eos_token_id]]), tokenizer)
    assert not missing.any()
    assert tokenizer.decode(torch.tensor(ids)[mask[0, :-1]]) == "42"


def test_text_that_does_not_match_the_ids_is_rejected(tokenizer):
    ids = torch.tensor([tokenizer("The answer is \\boxed{1}.", add_special_tokens=False)["input_ids"]])
    with pytest.raises(ValueError, match="does not match the decoded completion_ids"):
        answer_token_mask(["The answer is \\boxed{2}!"], ids, tokenizer)


def test_bad_input_gets_a_clear_error(tokenizer, tmp_path):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="list of 1 strings"):
        answer_token_mask(["a", "b"], ids, tokenizer)
    with pytest.raises(ValueError, match=r"\[B, Tc\]"):
        answer_token_mask(["a"], ids[0], tokenizer)
    with pytest.raises(ValueError, match="Unknown answer_format"):
        answer_token_mask(["a"], ids, tokenizer, answer_format="latex")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        answer_token_mask(["a"], ids, tokenizer, answer_format="regex:(")
    with pytest.raises(ValueError, match="not a \\(start, end\\) pair"):
        answer_token_mask(["abc"], ids, tokenizer, answer_format=lambda text: (2, 99))


def test_a_tokenizer_without_offset_mapping_is_rejected(tokenizer):
    class SlowTokenizer(PreTrainedTokenizerFast):
        is_fast = False

    slow = SlowTokenizer(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="offset mapping"):
        answer_token_mask(["\\boxed{1}"], torch.tensor([[5, 6]]), slow)
