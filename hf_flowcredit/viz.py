"""Pictures of one scored completion: its tokens coloured by score, the answer span and the selected tokens marked.

    >>> tokens = token_strings(tokenizer, batch.input_ids[row, batch.completion_mask[row]])
    >>> html = render_html(tokens, scores, answer_mask=answer, selected_mask=weights > 1)
    >>> figure = render_png(tokens, scores, answer_mask=answer, selected_mask=weights > 1, path="flow.png")

`render_png` needs matplotlib (the `plots` extra); `render_html` needs nothing.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import torch

__all__ = ["render_html", "render_png", "token_strings"]

ANSWER_COLOUR = "#1f77b4"
SELECTED_COLOUR = "#111111"
COLOURMAP = "Oranges"


def token_strings(tokenizer, token_ids: torch.Tensor | Sequence[int]) -> list[str]:
    """Readable text of each token (decoded one at a time; newlines shown as a visible mark)."""
    ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
    return [tokenizer.decode([token]).replace("\n", "\u21b5") for token in ids]


def _checked(tokens, scores, answer_mask, selected_mask):
    """Validated tensors plus each token's shade in [0, 1] and the score the colour scale tops out at.

    The scale tops out at the largest score outside the answer: answer tokens (the flow sinks) receive all the
    flow and would otherwise wash out every other token; they are drawn saturated and outlined instead.
    """
    scores = torch.as_tensor(scores, dtype=torch.float32).flatten()
    if len(tokens) != len(scores):
        raise ValueError(f"{len(tokens)} tokens but {len(scores)} scores; pass one score per token.")
    masks = []
    for name, mask in (("answer_mask", answer_mask), ("selected_mask", selected_mask)):
        mask = torch.zeros(len(tokens), dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().flatten()
        if len(mask) != len(tokens):
            raise ValueError(f"{name} has {len(mask)} entries for {len(tokens)} tokens.")
        masks.append(mask)
    outside_answer = scores[~masks[0]]
    top = float((outside_answer if len(outside_answer) else scores).abs().max())
    top = top if top > 0 else float(scores.abs().max())
    relative = scores / top if top > 0 else torch.zeros_like(scores)
    return scores, relative.clamp(0, 1), masks[0], masks[1], top


def _colour(relative: float) -> tuple[float, float, float, float]:
    import matplotlib

    return matplotlib.colormaps[COLOURMAP](0.05 + 0.85 * relative)


def render_html(
    tokens: Sequence[str],
    scores,
    *,
    answer_mask=None,
    selected_mask=None,
    title: str | None = None,
) -> str:
    """A self-contained HTML snippet: background = score (scale as in `_checked`), blue box = answer token,
    underline = selected (high-weight) token; hovering a token shows its score."""
    scores, relative, answer, selected, _ = _checked(tokens, scores, answer_mask, selected_mask)
    spans = []
    for token, score, shade, is_answer, is_selected in zip(tokens, scores, relative, answer, selected):
        style = [f"background: rgba(230, 85, 13, {0.08 + 0.8 * float(shade):.3f})", "white-space: pre"]
        if is_answer:
            style.append(f"outline: 2px solid {ANSWER_COLOUR}")
        if is_selected:
            style.append(f"border-bottom: 3px solid {SELECTED_COLOUR}")
        spans.append(f'<span title="{float(score):.4g}" style="{"; ".join(style)}">{html.escape(token)}</span>')
    heading = f"<h3>{html.escape(title)}</h3>\n" if title else ""
    legend = (
        f'<p style="font-size: small">background: score; <span style="outline: 2px solid {ANSWER_COLOUR}">'
        f'answer</span>; <span style="border-bottom: 3px solid {SELECTED_COLOUR}">selected</span></p>'
    )
    body = "".join(spans)
    return f'<div style="font-family: monospace; line-height: 2">\n{heading}<p>{body}</p>\n{legend}\n</div>\n'


def render_png(
    tokens: Sequence[str],
    scores,
    *,
    answer_mask=None,
    selected_mask=None,
    title: str | None = None,
    path: str | None = None,
    line_width: int = 64,
):
    """A matplotlib figure of the tokens in reading order, wrapped at `line_width` characters, with the same
    marks as `render_html`; saved to `path` (PNG) when given. Returns the figure."""
    # The object-oriented Figure needs no GUI backend, so this works on headless machines and inside notebooks.
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    scores, relative, answer, selected, top = _checked(tokens, scores, answer_mask, selected_mask)
    lines, column, row = [], 0, 0
    for token in tokens:
        width = max(1, len(token))
        if column and column + width > line_width:
            column, row = 0, row + 1
        lines.append((column, row, width))
        column += width
    rows = row + 1
    # One character cell is 0.1 inch, about the advance of a 10 pt monospace glyph.
    figure = Figure(figsize=(line_width * 0.1 + 1.6, rows * 0.34 + 1.0))
    axes = figure.subplots()
    for token, (x, y, width), shade, is_answer, is_selected in zip(tokens, lines, relative, answer, selected):
        axes.add_patch(
            Rectangle(
                (x, -y - 0.8),
                width,
                0.8,
                facecolor=_colour(float(shade)),
                edgecolor=ANSWER_COLOUR if is_answer else "white",
                linewidth=2.0 if is_answer else 0.5,
            )
        )
        if is_selected:
            axes.plot([x + 0.1, x + width - 0.1], [-y - 0.88, -y - 0.88], color=SELECTED_COLOUR, linewidth=2)
        ink = "white" if shade > 0.6 else "black"
        axes.text(x + width / 2, -y - 0.4, token, ha="center", va="center", family="monospace", fontsize=10, color=ink)
    axes.set_xlim(-0.5, line_width + 0.5)
    axes.set_ylim(-rows - 0.1, 0.1)
    axes.axis("off")
    mappable = ScalarMappable(cmap=COLOURMAP, norm=Normalize(0, top or 1.0))
    colourbar = figure.colorbar(mappable, ax=axes, fraction=0.03, pad=0.01, extend="max")
    colourbar.set_label("score", fontsize=8)
    colourbar.ax.tick_params(labelsize=7)
    handles = [
        Patch(facecolor=_colour(1.0), edgecolor=ANSWER_COLOUR, linewidth=2, label="answer (flow sink, clipped)"),
        Line2D([], [], color=SELECTED_COLOUR, linewidth=2, label="selected (high weight)"),
    ]
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 0.0), ncol=2, frameon=False, fontsize=8)
    if title:
        axes.set_title(title, loc="left", fontsize=10)
    if path:
        figure.savefig(path, dpi=150, bbox_inches="tight")
    return figure
