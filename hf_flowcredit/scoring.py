"""Token scorers: one interface for the flow credit signal and the baselines it is compared with.

A scorer is called as `scorer(model, batch)` on a `ScoringBatch` (prompt + completion in TRL's layout) and returns
float32 `[B, T]` scores, zero outside the completion. `select_weights` turns any scorer's scores into per-token
advantage weights with the same rule (top `top_fraction` of each completion), so baselines and flow are compared
like for like.

Model-based scorers run in eval mode on groups of consecutive rows, cut to the columns where the group has real
tokens, with position ids that count real tokens only (as generation does): scores do not depend on how the batch
was padded. A group holds as many rows as keep its `[rows, T, T]` attention (or `[rows, T, vocab]` logits) under
`BATCH_ELEMENTS` (2^26, 256 MiB in fp32); a long sequence gets a forward of its own. All but `gradient` run under
`torch.no_grad()`.

    >>> scorer = get_scorer("flow", layers="middle")
    >>> scores = scorer(model, batch)                      # [B, T], 0 outside batch.completion_mask
    >>> weights = select_weights(scores, batch.completion_mask)  # 1.5 on the top 40% of each completion, 1.0 else

Every scorer is declared in one place, its class, and registered with `@register_scorer`: its `name`, whether it
`runs_model` (then its `forward_groups` says which forwards a call runs) and whether it `reads_attention`, a
one-line `summary`, and its options (dataclass fields; `metadata={"config": field}` names the `FlowGRPOConfig`
field that sets one). `SCORERS`, the config's `token_scorer` choices and help, the trainer's checks
and the table in docs/hf_flowcredit.md all come from there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from .attention import capture_attention, capture_queries_keys, eval_mode
from .flow import flow_throughput

__all__ = [
    "SCORERS",
    "AttentionScorer",
    "CorrelationScorer",
    "EntropyScorer",
    "FlowScorer",
    "GradientScorer",
    "RandomScorer",
    "ScoringBatch",
    "TokenScorer",
    "config_options",
    "count_forwards",
    "filler_batch",
    "get_scorer",
    "normalize_weights",
    "register_scorer",
    "select_weights",
]


# Largest [rows, T, T] attention or [rows, T, vocab] logits that the model-based scorers batch in one forward.
BATCH_ELEMENTS = 2**26


@dataclass
class ScoringBatch:
    """Prompt + completion tokens of a generation batch, laid out as TRL builds them.

    All masks are `[B, T]`; booleans may be given as 0/1 integers. The prompt is left-padded and the completion
    right-padded, but any layout works as long as the masks say which positions are what.
    """

    input_ids: torch.LongTensor  # [B, T] prompt + completion
    attention_mask: torch.LongTensor  # [B, T] 1 = real token
    prompt_mask: torch.BoolTensor  # [B, T] real prompt tokens (flow sources)
    completion_mask: torch.BoolTensor  # [B, T] real completion tokens (the tokens that get weights)
    answer_mask: torch.BoolTensor  # [B, T] answer tokens, subset of completion_mask (flow sinks); may be all-False
    rewards: torch.Tensor | None = None  # [B] scalar reward per completion (correlation scorer)
    group_ids: torch.LongTensor | None = None  # [B] rollouts of the same prompt share an id (correlation scorer)
    seed: int = 0  # for the random scorer (deterministic)

    def __post_init__(self):
        if self.input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(self.input_ids.shape)}.")
        shape = tuple(self.input_ids.shape)
        for name in ("attention_mask", "prompt_mask", "completion_mask", "answer_mask"):
            value = getattr(self, name)
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {shape} like input_ids.")
            if name != "attention_mask":
                setattr(self, name, value.bool())
        real = self.attention_mask.bool()
        if ((self.prompt_mask | self.completion_mask) & ~real).any():
            raise ValueError("prompt_mask/completion_mask mark padding positions (attention_mask == 0).")
        if (self.prompt_mask & self.completion_mask).any():
            raise ValueError("prompt_mask and completion_mask overlap: a token is either prompt or completion.")
        if (self.answer_mask & ~self.completion_mask).any():
            raise ValueError("answer_mask must be a subset of completion_mask (answers are completion tokens).")
        for name in ("rewards", "group_ids"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape[:1]:
                raise ValueError(f"{name} must have shape [B] = [{shape[0]}], got {tuple(value.shape)}.")

    def groups(
        self, elements_per_row: Callable[[int], int], rows: Sequence[int] | None = None
    ) -> Iterator[tuple[torch.Tensor, slice]]:
        """Work units of the model-based scorers: (row indices, span of columns where any of them is real).

        Consecutive rows (of `rows`, default all) join a group while `len(group) * elements_per_row(span length)`
        stays within `BATCH_ELEMENTS`. Rows without any real token are skipped.
        """
        group, span = [], None
        for row in range(self.input_ids.shape[0]) if rows is None else rows:
            real = self.attention_mask[row].nonzero().flatten()
            if not len(real):
                continue
            row_span = (int(real[0]), int(real[-1]) + 1)
            merged = row_span if span is None else (min(span[0], row_span[0]), max(span[1], row_span[1]))
            if group and (len(group) + 1) * elements_per_row(merged[1] - merged[0]) > BATCH_ELEMENTS:
                yield torch.tensor(group, device=self.input_ids.device), slice(*span)
                group, merged = [], row_span
            group.append(row)
            span = merged
        if group:
            yield torch.tensor(group, device=self.input_ids.device), slice(*span)


class TokenScorer(Protocol):
    """Anything with a `name` that maps `(model, ScoringBatch)` to float32 `[B, T]` scores, 0 outside the completion."""

    name: str

    def __call__(self, model, batch: ScoringBatch) -> torch.Tensor: ...


SCORERS: dict[str, type] = {}


DECLARED_CLASS_VARIABLES = ("name", "runs_model", "reads_attention", "summary")


def register_scorer(scorer: type) -> type:
    """Class decorator: make a dataclass scorer available under its `name` (`get_scorer`, `token_scorer=...`).

    The class declares, as class variables, `name`, `runs_model` (it calls the model), `reads_attention` (it
    captures the model's attention, so the trainer checks at start-up that the model's attention can be captured)
    and `summary` (one line for the config's help and the docs' table); its dataclass fields are its options.

    A scorer that runs the model must also say how many forwards a call runs: a method
    `forward_groups(model, batch)` returning one item per forward (`count_forwards` counts them). Under FSDP or
    ZeRO-3 every forward gathers parameters collectively, so the trainer makes every process run as many as the
    busiest one; a count it cannot know would leave processes waiting on each other forever.
    """
    missing = [attribute for attribute in DECLARED_CLASS_VARIABLES if not hasattr(scorer, attribute)]
    if missing or not dataclasses.is_dataclass(scorer):
        raise TypeError(f"{scorer.__name__} must be a dataclass with class variables {missing or ''} to register.")
    if scorer.reads_attention and not scorer.runs_model:
        raise TypeError(f"{scorer.__name__} declares reads_attention=True, which needs runs_model=True.")
    if scorer.runs_model and not callable(getattr(scorer, "forward_groups", None)):
        raise TypeError(
            f"{scorer.__name__} declares runs_model=True but has no `forward_groups(model, batch)` method saying which "
            "forwards a call runs (one item per forward): without it sharded training (FSDP, ZeRO-3) cannot give "
            "every process the same number of forwards. Add the method, or declare runs_model=False if the scorer "
            "never calls the model."
        )
    if scorer.name == "none" or scorer.name in SCORERS:
        raise ValueError(f"A token scorer named {scorer.name!r} exists already ('none' means plain GRPO).")
    SCORERS[scorer.name] = scorer
    return scorer


def config_options(scorer: type) -> dict[str, str]:
    """`{option: FlowGRPOConfig field}` for the options of `scorer` that a config field sets."""
    return {f.name: f.metadata["config"] for f in dataclasses.fields(scorer) if "config" in f.metadata}


def _zeros(batch: ScoringBatch) -> torch.Tensor:
    return torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=batch.input_ids.device)


def _positions(attention_mask: torch.Tensor) -> torch.LongTensor:
    """Position ids counting real tokens only, so left padding does not shift them (as in generation)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _capture(model, batch: ScoringBatch, rows: torch.Tensor, span: slice, layers, capture=capture_attention):
    attention_mask = batch.attention_mask[rows, span]
    return capture(model, batch.input_ids[rows, span], attention_mask, layers, position_ids=_positions(attention_mask))


def _square(length: int) -> int:
    return length * length


@register_scorer
@dataclass
class FlowScorer:
    """Answer-targeted attention flow throughput (`flow_throughput`): sources = prompt tokens, sinks = answer tokens.

    A row whose `answer_mask` is all False (no answer found) gets all-zero scores without running the model: the
    caller decides the fallback (`select_weights` gives such a row weight 1.0 everywhere).

    Groups of at least `recompute_min_length` tokens never build the `T x T` attention: the capturing forward keeps
    the selected layers' queries and keys (`capture_queries_keys`) and the blockwise flow solver recomputes
    attention rows from them, one slab at a time (O(T * d) memory, the same scores). `None`: always the dense path.
    """

    name: ClassVar[str] = "flow"
    runs_model: ClassVar[bool] = True
    reads_attention: ClassVar[bool] = True
    summary: ClassVar[str] = "attention-flow throughput from the prompt to the answer (FlowTracer)"
    layers: str | int | Sequence[int] = field(default="middle", metadata={"config": "flow_layers"})
    block_size: int | None = None
    renormalize: bool = True
    recompute_min_length: int | None = field(default=2048, metadata={"config": "flow_recompute_min_length"})

    def forward_groups(self, model, batch: ScoringBatch) -> list[tuple[torch.Tensor, slice]]:
        """(rows, columns) of each forward `__call__` runs: the rows with both a prompt and an answer."""
        with_flow = (batch.answer_mask.any(-1) & batch.prompt_mask.any(-1)).nonzero().flatten().tolist()
        return list(batch.groups(_square, with_flow))

    def __call__(self, model, batch: ScoringBatch) -> torch.Tensor:
        scores = _zeros(batch)
        for rows, span in self.forward_groups(model, batch):
            long = self.recompute_min_length is not None and span.stop - span.start >= self.recompute_min_length
            scores[rows, span] = flow_throughput(
                _capture(model, batch, rows, span, self.layers, capture_queries_keys if long else capture_attention),
                batch.prompt_mask[rows, span],
                batch.answer_mask[rows, span],
                attention_mask=batch.attention_mask[rows, span],
                renormalize=self.renormalize,
                block_size=self.block_size,
            )
        return scores * batch.completion_mask


@register_scorer
@dataclass
class AttentionScorer:
    """Attention received: the sum over later real tokens j of `attn[j, i]` (same captured layers as `flow`)."""

    name: ClassVar[str] = "attention"
    runs_model: ClassVar[bool] = True
    reads_attention: ClassVar[bool] = True
    summary: ClassVar[str] = "attention received from later tokens"
    layers: str | int | Sequence[int] = field(default="middle", metadata={"config": "flow_layers"})

    def forward_groups(self, model, batch: ScoringBatch) -> list[tuple[torch.Tensor, slice]]:
        """(rows, columns) of each forward `__call__` runs."""
        return list(batch.groups(_square))

    def __call__(self, model, batch: ScoringBatch) -> torch.Tensor:
        scores = _zeros(batch)
        for rows, span in self.forward_groups(model, batch):
            scores[rows, span] = _capture(model, batch, rows, span, self.layers).tril(-1).sum(1)
        return scores * batch.completion_mask


@register_scorer
@dataclass
class RandomScorer:
    """Uniform random scores, reproducible from `batch.seed`; the model is not used."""

    name: ClassVar[str] = "random"
    runs_model: ClassVar[bool] = False
    reads_attention: ClassVar[bool] = False
    summary: ClassVar[str] = "uniform random scores (the model is not used)"

    def __call__(self, model, batch: ScoringBatch) -> torch.Tensor:
        generator = torch.Generator().manual_seed(batch.seed)
        scores = torch.rand(batch.input_ids.shape, generator=generator).to(batch.input_ids.device)
        return scores * batch.completion_mask


def _next_token_log_probs(model, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
    """log p(. | x_<t) for t = 1..T-1, float32 [rows, T-1, V]; `inputs` are `input_ids` or `inputs_embeds`."""
    logits = model(**inputs, attention_mask=attention_mask, position_ids=_positions(attention_mask), use_cache=False)
    return torch.log_softmax(logits.logits[:, :-1].float(), dim=-1)


def _logits_size(model) -> Callable[[int], int]:
    vocab_size = model.config.get_text_config().vocab_size
    return lambda length: length * vocab_size


@register_scorer
@dataclass
class EntropyScorer:
    """Entropy of the model's next-token distribution at each completion token: H(p(. | x_<t))."""

    name: ClassVar[str] = "entropy"
    runs_model: ClassVar[bool] = True
    reads_attention: ClassVar[bool] = False
    summary: ClassVar[str] = "entropy of the model's next-token distribution"

    def forward_groups(self, model, batch: ScoringBatch) -> list[tuple[torch.Tensor, slice]]:
        """(rows, columns) of each forward `__call__` runs."""
        return list(batch.groups(_logits_size(model)))

    def __call__(self, model, batch: ScoringBatch) -> torch.Tensor:
        scores = _zeros(batch)
        with torch.no_grad(), eval_mode(model):
            for rows, span in self.forward_groups(model, batch):
                log_probs = _next_token_log_probs(
                    model, batch.attention_mask[rows, span], input_ids=batch.input_ids[rows, span]
                )
                scores[rows, span.start + 1 : span.stop] = -(log_probs.exp() * log_probs).sum(-1)
        return scores * batch.completion_mask


@register_scorer
@dataclass
class GradientScorer:
    """Saliency of each completion token for the completion's log-likelihood.

    score_t = || d/d e_t  sum_{s in completion} log p(x_s | x_<s) ||_2, with e_t the input embedding of token t.
    (The literal d log p(x_t | x_<t) / d e_t is identically zero in a causal LM, since position t's own embedding
    is not an input of the distribution that predicts x_t; the summed completion log-probability is what the
    policy gradient moves.) Runs with gradients enabled for the embeddings only; parameter `.grad`s are untouched.
    """

    name: ClassVar[str] = "gradient"
    runs_model: ClassVar[bool] = True
    reads_attention: ClassVar[bool] = False
    summary: ClassVar[str] = "gradient norm of the completion's log-likelihood w.r.t. the token's input embedding"

    forward_groups = EntropyScorer.forward_groups

    def __call__(self, model, batch: ScoringBatch) -> torch.Tensor:
        scores = _zeros(batch)
        embeddings = model.get_input_embeddings()
        with torch.enable_grad(), eval_mode(model):
            for rows, span in self.forward_groups(model, batch):
                input_ids = batch.input_ids[rows, span]
                inputs_embeds = embeddings(input_ids).detach().requires_grad_(True)
                log_probs = _next_token_log_probs(model, batch.attention_mask[rows, span], inputs_embeds=inputs_embeds)
                token_log_probs = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
                # Rows do not interact, so one backward of the summed objective gives every row's own gradient.
                objective = (token_log_probs * batch.completion_mask[rows, span][:, 1:]).sum()
                (gradient,) = torch.autograd.grad(objective, inputs_embeds)
                scores[rows, span] = gradient.float().norm(dim=-1)
        return scores * batch.completion_mask


@register_scorer
@dataclass
class CorrelationScorer:
    """Token-reward association across the rollouts of one prompt; the model is not used.

    For each token id v in a group's completions, x_k = 1 if rollout k contains v; the score of every occurrence
    of v is |Pearson correlation(x, rewards)| over the group (0 when x or the rewards are constant).
    """

    name: ClassVar[str] = "correlation"
    runs_model: ClassVar[bool] = False
    reads_attention: ClassVar[bool] = False
    summary: ClassVar[str] = "token-reward association across the rollouts of one prompt (the model is not used)"

    def __call__(self, model, batch: ScoringBatch) -> torch.Tensor:
        if batch.rewards is None or batch.group_ids is None:
            raise ValueError("The correlation scorer needs ScoringBatch.rewards and ScoringBatch.group_ids.")
        scores = _zeros(batch)
        for group in batch.group_ids.unique():
            rows = (batch.group_ids == group).nonzero().flatten()
            ids, mask = batch.input_ids[rows], batch.completion_mask[rows]
            vocabulary, inverse = ids[mask].unique(return_inverse=True)
            presence = torch.zeros(len(rows), len(vocabulary), device=ids.device)
            presence[mask.nonzero()[:, 0], inverse] = 1.0
            rewards = batch.rewards[rows].float()
            centred_x, centred_r = presence - presence.mean(0), (rewards - rewards.mean())[:, None]
            covariance = (centred_x * centred_r).sum(0)
            norm = centred_x.norm(dim=0) * centred_r.norm()
            association = torch.where(norm > 0, covariance.abs() / norm.clamp_min(1e-12), 0.0)
            group_scores = torch.zeros(ids.shape, device=ids.device)
            group_scores[mask] = association[inverse]
            scores[rows] = group_scores
        return scores * batch.completion_mask


def get_scorer(name: str, **options) -> TokenScorer:
    """The scorer registered under `name` (see `SCORERS`), built with its options (e.g. `layers="middle"`)."""
    if name not in SCORERS:
        raise ValueError(f"Unknown token scorer {name!r}; choose one of {sorted(SCORERS)}.")
    accepted = {f.name for f in dataclasses.fields(SCORERS[name])}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"Scorer {name!r} has no option(s) {unknown}; it accepts {sorted(accepted) or 'none'}.")
    return SCORERS[name](**options)


def count_forwards(scorer: TokenScorer, model, batch: ScoringBatch) -> int:
    """How many model forwards `scorer(model, batch)` runs (0 for scorers that declare `runs_model=False`)."""
    runs_model = getattr(scorer, "runs_model", None)
    if runs_model is None:
        raise TypeError(
            f"{type(scorer).__name__} does not declare `runs_model`, so the number of model forwards it runs is "
            "unknown; declare it (and `forward_groups` if True) and register it with @register_scorer."
        )
    return len(scorer.forward_groups(model, batch)) if runs_model else 0


def filler_batch(token_id: int, device: torch.device | str = "cpu") -> ScoringBatch:
    """A one-row batch (one prompt token, one answer token) on which every model-based scorer runs one forward.

    Sharded training pads with it: every rank must run as many forwards as the busiest one (see FlowGRPOTrainer).
    """
    tokens = torch.full((1, 2), token_id, dtype=torch.long, device=device)
    second = torch.tensor([[False, True]], device=device)
    return ScoringBatch(
        input_ids=tokens,
        attention_mask=torch.ones_like(tokens),
        prompt_mask=~second,
        completion_mask=second,
        answer_mask=second,
        rewards=torch.zeros(1, device=device),
        group_ids=torch.zeros(1, dtype=torch.long, device=device),
    )


def select_weights(
    scores: torch.Tensor,
    completion_mask: torch.Tensor,
    top_fraction: float = 0.4,
    high_weight: float = 1.5,
) -> torch.Tensor:
    """Per-token advantage weights: `high_weight` on the top `top_fraction` of each completion's tokens, 1.0 on the rest.

    A completion of n tokens gets ceil(top_fraction * n) high-weight tokens. Ties are broken by position (earlier
    first). A completion whose scores are all equal carries no ranking signal (e.g. a flow row without an answer)
    and gets 1.0 everywhere. Padding and prompt positions get 0. Returns float32 `[B, T]`.
    """
    if scores.shape != completion_mask.shape or scores.dim() != 2:
        raise ValueError(
            f"scores {tuple(scores.shape)} and completion_mask {tuple(completion_mask.shape)} must be [B, T]."
        )
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}.")
    if not math.isfinite(high_weight) or high_weight < 0:
        raise ValueError(f"high_weight must be a finite non-negative number, got {high_weight}.")
    mask = completion_mask.bool()
    scores = scores.float()
    if not torch.isfinite(scores[mask]).all():
        raise ValueError("scores contain NaN or inf on completion tokens.")
    masked = scores.masked_fill(~mask, float("-inf"))
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    )
    count = torch.ceil(top_fraction * mask.sum(-1) - 1e-9)
    row_max = masked.amax(-1)
    row_min = scores.masked_fill(~mask, float("inf")).amin(-1)
    informative = row_max > row_min
    selected = (rank < count[:, None]) & mask & informative[:, None]
    return (1.0 + (high_weight - 1.0) * selected.float()) * mask


def normalize_weights(weights: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Token weights rescaled so that each completion's mean weight over its tokens is 1 (padding stays 0).

    `select_weights`' rule (top 40% x1.5) raises a completion's mean weight to 1.2, scaling its policy-gradient
    step by 1.2 as a larger learning rate would; after this only the relative credit between tokens remains.
    Completions without tokens are left as they are.
    """
    mask = completion_mask.to(weights.dtype)
    totals = (weights * mask).sum(-1, keepdim=True)
    counts = mask.sum(-1, keepdim=True)
    scale = torch.where(totals > 0, counts / totals.clamp_min(torch.finfo(weights.dtype).tiny), 1.0)
    return weights * scale * mask
