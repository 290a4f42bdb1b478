"""The scored-completion pictures: every token shown, answer and selected tokens marked, files written."""

import pytest
import torch

from hf_flowcredit.viz import ANSWER_COLOUR, SELECTED_COLOUR, render_html, render_png, token_strings
from kit.tiny import build_tokenizer

TOKENS = ["3", " +", " 4", " =", " 7", ".", " <b>", "\\boxed{", "7", "}"]
SCORES = torch.tensor([0.1, 0.0, 0.3, 0.2, 0.9, 0.0, 0.1, 0.2, 1.0, 0.1])
ANSWER = torch.tensor([False] * 8 + [True, False])
SELECTED = SCORES >= 0.3


def test_html_shows_every_token_and_marks_answer_and_selection():
    page = render_html(TOKENS, SCORES, answer_mask=ANSWER, selected_mask=SELECTED, title="a < b")
    assert page.count("<span title=") == len(TOKENS)
    assert "&lt;b&gt;" in page and "<b>" not in page and "a &lt; b" in page  # text is escaped
    assert page.count(f"outline: 2px solid {ANSWER_COLOUR}") == int(ANSWER.sum()) + 1  # + the legend
    assert page.count(f"border-bottom: 3px solid {SELECTED_COLOUR}") == int(SELECTED.sum()) + 1
    assert 'title="1"' in page  # hover shows the score


def test_png_is_written(tmp_path):
    path = tmp_path / "flow.png"
    figure = render_png(TOKENS, SCORES, answer_mask=ANSWER, selected_mask=SELECTED, title="t", path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts == TOKENS


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="10 tokens but 3 scores"):
        render_html(TOKENS, SCORES[:3])
    with pytest.raises(ValueError, match="answer_mask has 2 entries"):
        render_html(TOKENS, SCORES, answer_mask=ANSWER[:2])


def test_token_strings_decode_each_token_visibly():
    tokenizer = build_tokenizer()
    ids = tokenizer("1 + 2\n= 3", add_special_tokens=False)["input_ids"]
    strings = token_strings(tokenizer, torch.tensor(ids))
    assert len(strings) == len(ids)
    assert "".join(strings) == "1 + 2\u21b5= 3"
