"""The intervention analysis itself (torch, transformers); `hf_flowcredit.intervention` is its public face and
imports it on first use, so that `flowcredit-intervention --help` answers without loading them."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .answer import answer_token_mask
from .attention import (
    BLOCKED_KEYS,
    CAPTURE_ATTN_IMPLEMENTATION,
    attn_implementation_set_to,
    without_blocked_keys,
)
from .scoring import ScoringBatch, get_scorer

BLOCKED_ATTENTION = CAPTURE_ATTN_IMPLEMENTATION  # the package's one attention implementation (see attention.py)
SELECTIONS = ("none", "top", "random", "bottom")


def blocked_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA attention in which no query may attend to a blocked key that lies before it (the blocked token still
    attends to itself). Without blocked keys set, plain SDPA."""
    blocked_keys = BLOCKED_KEYS.get()
    if blocked_keys is not None:
        attention_mask = without_blocked_keys(query, key, attention_mask, blocked_keys)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


@contextlib.contextmanager
def attention_blocking(model: PreTrainedModel, blocked_keys: torch.BoolTensor):
    """Within the block, no token of row b attends to an earlier position p where `blocked_keys[b, p]` is True.

    `blocked_keys` is `[B, K]` over the columns of the (padded) sequence, K at least the longest length reached,
    generated tokens included. The model's attention goes through the package's attention implementation meanwhile
    (the same blocking as `blocked_sdpa_attention`).
    """
    token = BLOCKED_KEYS.set(blocked_keys)
    try:
        with attn_implementation_set_to(model, BLOCKED_ATTENTION):
            yield model
    finally:
        BLOCKED_KEYS.reset(token)


@dataclass
class Trace:
    """One finished greedy trace: `prompt_ids`, then `completion_ids`, whose `[answer_start, answer_end)` tokens hold
    the answer span."""

    prompt_ids: list[int]
    completion_ids: list[int]
    answer_start: int
    answer_end: int
    answer_text: str = field(default="")


def _pad(rows: Sequence[Sequence[int]], pad_id: int, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """`(ids, attention_mask)` of the rows padded to a common length on `side`."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        columns = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, columns] = torch.tensor(row, dtype=torch.long)
        mask[i, columns] = 1
    return ids, mask


def _answer_spans(tokenizer, completions: list[list[int]], answer_format: str) -> list[tuple[int, int] | None]:
    """Token span `[start, end)` of each completion's answer, or None where no answer is found."""
    ids, _ = _pad([c or [tokenizer.pad_token_id] for c in completions], tokenizer.pad_token_id, side="right")
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    mask, missing = answer_token_mask(texts, ids, tokenizer, answer_format=answer_format)
    spans = []
    for i, c in enumerate(completions):
        positions = mask[i, : len(c)].nonzero().flatten()
        spans.append(None if missing[i] or len(positions) == 0 else (int(positions[0]), int(positions[-1]) + 1))
    return spans


def _completion_ids(row: torch.Tensor, stop_ids: set[int]) -> list[int]:
    """Generated ids up to (without) the first stop token."""
    ids = []
    for token in row.tolist():
        if token in stop_ids:
            break
        ids.append(token)
    return ids


@torch.no_grad()
def _greedy(model, tokenizer, rows, blocked_rows=None, max_new_tokens=64) -> list[list[int]]:
    """Greedy continuations of `rows` (left-padded); `blocked_rows[i]`: positions of row i whose keys are blocked."""
    input_ids, attention_mask = _pad(rows, tokenizer.pad_token_id)
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    blocking = contextlib.nullcontext()
    if blocked_rows is not None:
        width = input_ids.shape[1]
        blocked = torch.zeros((len(rows), width + max_new_tokens), dtype=torch.bool, device=model.device)
        for i, (row, positions) in enumerate(zip(rows, blocked_rows)):
            offset = width - len(row)  # left padding shifts every position of the row
            blocked[i, [offset + p for p in positions]] = True
        blocking = attention_blocking(model, blocked)
    with blocking:
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    stop_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return [_completion_ids(row, stop_ids) for row in output[:, input_ids.shape[1] :]]


def tokenized_prompt(tokenizer, prompt, max_length: int | None = None) -> list[int]:
    """The ids the model sees for a text or chat prompt; with `max_length`, at most that many (a length check)."""
    limit = {} if max_length is None else {"truncation": True, "max_length": max_length}
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=False, **limit)["input_ids"]
    return list(
        tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True, **limit)[
            "input_ids"
        ]
    )


def finished_traces(
    model, tokenizer, prompts, *, max_new_tokens=64, answer_format="auto", batch_size=16
) -> list[Trace]:
    """Greedy traces of `prompts` (text or conversational), keeping those with an answer after some reasoning."""
    traces = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="traces", leave=False):
        prompt_rows = [tokenized_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        completions = _greedy(model, tokenizer, prompt_rows, max_new_tokens=max_new_tokens)
        for prompt_ids, completion, span in zip(
            prompt_rows, completions, _answer_spans(tokenizer, completions, answer_format)
        ):
            if span is not None and span[0] >= 2:  # need reasoning tokens to intervene on
                text = tokenizer.decode(completion[span[0] : span[1]], skip_special_tokens=True).strip()
                traces.append(Trace(prompt_ids, completion, span[0], span[1], text))
    return traces


def _reasoning_scores(model, tokenizer, traces: list[Trace], scorer_name: str, seed: int) -> list[torch.Tensor]:
    """The scorer's score of each reasoning token (completion tokens before the answer), one tensor per trace.
    The batch is laid out as TRL lays it out: left-padded prompts, then right-padded completions."""
    prompt_ids, prompt_mask = _pad([t.prompt_ids for t in traces], tokenizer.pad_token_id)
    completion_ids, completion_mask = _pad([t.completion_ids for t in traces], tokenizer.pad_token_id, side="right")
    answer_mask = torch.zeros_like(completion_mask, dtype=torch.bool)
    for i, t in enumerate(traces):
        answer_mask[i, t.answer_start : t.answer_end] = True
    no_prompt, no_completion = torch.zeros_like(completion_mask), torch.zeros_like(prompt_mask)
    batch = ScoringBatch(
        input_ids=torch.cat([prompt_ids, completion_ids], dim=1).to(model.device),
        attention_mask=torch.cat([prompt_mask, completion_mask], dim=1).to(model.device),
        prompt_mask=torch.cat([prompt_mask, no_prompt], dim=1).bool().to(model.device),
        completion_mask=torch.cat([no_completion, completion_mask], dim=1).bool().to(model.device),
        answer_mask=torch.cat([no_completion.bool(), answer_mask], dim=1).to(model.device),
        seed=seed,
    )
    scores = get_scorer(scorer_name)(model, batch).float().cpu()
    start = prompt_ids.shape[1]
    return [scores[i, start : start + t.answer_start] for i, t in enumerate(traces)]


def choose_positions(scores: torch.Tensor, selection: str, fraction: float, generator: torch.Generator) -> list[int]:
    """Indices of `round(fraction * n)` (at least 1) of the n scored tokens: highest, lowest, random or none."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r} is not supported; choose one of {SELECTIONS}.")
    if selection == "none":
        return []
    count = max(1, round(fraction * len(scores)))
    if selection == "random":
        order = torch.randperm(len(scores), generator=generator)
    else:
        order = torch.argsort(scores, descending=selection == "top", stable=True)
    return sorted(order[:count].tolist())


def intervention_analysis(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence,
    *,
    scorer: str = "flow",
    fraction: float = 0.2,
    selections: Sequence[str] = SELECTIONS,
    max_new_tokens: int = 64,
    answer_max_new_tokens: int = 24,
    answer_format: str = "auto",
    batch_size: int = 16,
    seed: int = 0,
    traces: Sequence[Trace] | None = None,
) -> dict[str, dict[str, float]]:
    """Rate of changed answers when attention to chosen reasoning tokens is blocked.

    Returns `{selection: {"changed_rate", "num_traces", "blocked_tokens_mean"}}` for each of `selections`
    ("top" / "bottom" of `scorer`'s ranking, "random", and "none", the control, which should be ~0).
    `traces`: reuse the `finished_traces` of an earlier call (e.g. to repeat "random" over seeds); `prompts` is then
    ignored.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token = tokenizer.eos_token` first.")
    was_training = model.training
    model.eval()
    try:
        if traces is None:
            traces = finished_traces(
                model,
                tokenizer,
                list(prompts),
                max_new_tokens=max_new_tokens,
                answer_format=answer_format,
                batch_size=batch_size,
            )
        traces = list(traces)
        if not traces:
            raise ValueError(
                "No greedy trace had an answer after some reasoning, so there is nothing to intervene on; check "
                "answer_format or use a model that answers in the expected format."
            )
        results = {}
        for selection in selections:
            generator = torch.Generator().manual_seed(seed)
            changed, blocked_total = 0, 0
            for start in tqdm(range(0, len(traces), batch_size), desc=f"block {selection}", leave=False):
                chunk = traces[start : start + batch_size]
                scores = _reasoning_scores(model, tokenizer, chunk, scorer, seed + start)
                prefixes = [t.prompt_ids + t.completion_ids[: t.answer_start] for t in chunk]
                blocked = [
                    [len(t.prompt_ids) + p for p in choose_positions(s, selection, fraction, generator)]
                    for t, s in zip(chunk, scores)
                ]
                continuations = _greedy(model, tokenizer, prefixes, blocked, max_new_tokens=answer_max_new_tokens)
                new_completions = [t.completion_ids[: t.answer_start] + c for t, c in zip(chunk, continuations)]
                spans = _answer_spans(tokenizer, new_completions, answer_format)
                for t, completion, span in zip(chunk, new_completions, spans):
                    new_answer = (
                        None
                        if span is None
                        else tokenizer.decode(completion[span[0] : span[1]], skip_special_tokens=True).strip()
                    )
                    changed += new_answer != t.answer_text
                blocked_total += sum(len(b) for b in blocked)
            results[selection] = {
                "changed_rate": changed / len(traces),
                "num_traces": float(len(traces)),
                "blocked_tokens_mean": blocked_total / len(traces),
            }
        return results
    finally:
        model.train(was_training)


def format_table(results: dict[str, dict[str, float]], scorer: str = "flow") -> str:
    """A markdown table of `intervention_analysis` results."""
    lines = ["| blocked tokens | answers changed | traces | tokens blocked (mean) |", "|---|---|---|---|"]
    for selection, row in results.items():
        name = {"none": "none (control)", "random": "random"}.get(selection, f"{scorer}-{selection}")
        lines.append(
            f"| {name} | {row['changed_rate']:.1%} | {int(row['num_traces'])} | {row['blocked_tokens_mean']:.1f} |"
        )
    return "\n".join(lines)
