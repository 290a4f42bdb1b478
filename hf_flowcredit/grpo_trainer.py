"""`FlowGRPOTrainer`: TRL's `GRPOTrainer` with token-level credit from answer-targeted attention flow (FlowTracer).

The only change to GRPO: after TRL has sampled and scored a generation batch, each completion's tokens are ranked by
a token scorer (one extra no-grad forward of the current policy for the flow scorer), the top fraction gets a larger
weight, and the advantage becomes per token, `advantages[:, None] * weights`. TRL's loss accepts `(B, T)` advantages
and slices extra tensors along with the batch, so nothing else is overridden.

    from hf_flowcredit import FlowGRPOConfig, FlowGRPOTrainer

    trainer = FlowGRPOTrainer(model="Qwen/Qwen3-4B", reward_funcs=accuracy_reward, train_dataset=dataset,
                              args=FlowGRPOConfig(output_dir="qwen3-flowgrpo", token_scorer="flow"))
    trainer.train()
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
import time
import warnings
from typing import Any

import torch
import trl
from huggingface_hub import ModelCard, constants, get_token, whoami
from huggingface_hub.errors import HfHubHTTPError
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import get_config_model_id  # what GRPOTrainer names its default output dir by

from .answer import answer_token_mask
from .attention import capture_attention, capture_queries_keys, resolve_layers
from .config import FlowGRPOConfig, parse_flow_layers
from .scoring import (
    SCORERS,
    ScoringBatch,
    count_forwards,
    filler_batch,
    get_scorer,
    normalize_weights,
    select_weights,
)

# What FlowGRPOTrainer relies on in TRL's GRPOTrainer beyond its documented API, in one place. Checked when the
# trainer is built (the output keys at the first scored batch); pyproject.toml pins trl to TESTED_TRL, the versions
# the tests ran on. Also relied on, and covered by the tests only (bit for bit against GRPO): `_compute_loss` takes
# `(B, T)` advantages as they are (it unsqueezes only 1-D ones).
TESTED_TRL = ">=1.16,<1.17"
TRL_RELIES_ON = {
    "method": ("_generate_and_score_completions",),  # overridden: its output gets per-token advantages
    "class attribute": ("_tag_names", "_name", "_paper"),  # overridden: the model card's tags, name and citation
    "attribute": ("_metrics", "_tokenizer", "_step", "num_generations", "num_generations_eval"),  # set by __init__
    "output key": ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages"),
}

FLOWGRPO_CITATION = textwrap.dedent("""\
    @misc{flowtracer,
        title        = {{How Does Reasoning Flow? Tracing Attention-Induced Information Flow for Targeted RL in LLMs}},
        note         = {FlowTracer token credit for GRPO; implementation: the hf_flowcredit package},
    }
    """) + getattr(GRPOTrainer, "_paper", {}).get("citation", "")  # FlowGRPO is GRPO with token credit: cite both

# Loss types whose per-token loss multiplies the advantage token by token, so (B, T) advantages act per token: all
# of TRL's, each with importance_sampling_level="token" only (a sequence-level ratio collapses the token weights).
PER_TOKEN_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "vespo", "luspo")
# Of those, the ones whose paper setup in TRL is importance_sampling_level="sequence" (TRL warns at "token"): with
# FlowGRPO they run at "token" only.
SEQUENCE_LEVEL_IN_TRL = ("luspo",)


class FlowGRPOTrainer(GRPOTrainer):
    """[`~trl.GRPOTrainer`] whose advantages are reweighted per token by a token scorer (FlowTracer by default).

    Takes the same arguments as `GRPOTrainer`; `args` must be a [`FlowGRPOConfig`] (None: `FlowGRPOConfig`'s
    defaults, written to `"<model name>-GRPO"` as `GRPOTrainer` does). Logs `flow/answer_found_frac`
    (completions with an answer span), `flow/selected_frac` (completion tokens given the high weight),
    `flow/mean_weight` (mean token weight), `flow/too_long_frac` (sequences over `flow_max_length`, left unscored) and
    `flow/seconds` (time spent scoring) through the trainer's usual logging.
    """

    # The model card (TRL's `create_model_card`): tags, trainer name and citation; the FlowGRPO settings are added.
    _tag_names = ["trl", "grpo", "flowgrpo", "flowtracer"]
    _name = "FlowGRPO"
    _paper = {
        "title": "How Does Reasoning Flow?",  # no arXiv id: the card names the method without a paper link
        "citation": FLOWGRPO_CITATION,
    }

    def __init__(self, model, reward_funcs=None, args: FlowGRPOConfig | None = None, *more, **kwargs):
        if args is None:  # as GRPOTrainer does with a GRPOConfig: the defaults, in the same output directory
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = FlowGRPOConfig(f"{model_name.split('/')[-1]}-GRPO")
        super().__init__(model, reward_funcs, args, *more, **kwargs)
        _check_trl("method", lambda name: callable(getattr(GRPOTrainer, name, None)))
        _check_trl("class attribute", lambda name: name in vars(GRPOTrainer))
        _check_trl("attribute", lambda name: hasattr(self, name))
        if not isinstance(self.args, FlowGRPOConfig):
            raise TypeError(
                f"FlowGRPOTrainer needs `args=FlowGRPOConfig(...)`, got {type(self.args).__name__}; FlowGRPOConfig "
                "takes every GRPOConfig field plus the token-credit ones."
            )
        _check_loss_takes_token_advantages(self.args)
        self.token_scorer = None
        if self.args.token_scorer != "none":
            if SCORERS[self.args.token_scorer].reads_attention:
                _check_attention_capture(self.accelerator.unwrap_model(self.model), self.args)
            self.token_scorer = get_scorer(self.args.token_scorer, **self.args.scorer_options())

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Create the Hub repo, as `Trainer` does when it is built with `push_to_hub=True` (so before training), after
        checking the token and the Hub: a missing or refused token, a read-only one, an unreachable Hub or a repo that
        cannot be created is one line (a `RuntimeError`) now, not a traceback after hours of training."""
        token = token if token is not None else self.args.hub_token
        if self.is_world_process_zero():
            check_hub_access(token)
        try:
            super().init_hf_repo(token=token, private=private)
        except HfHubHTTPError as error:
            repo = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
            raise RuntimeError(f"push_to_hub: cannot create the Hub repo {repo!r}: {_first_line(error)}") from None

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """TRL's model card (YAML metadata: library_name, base_model, datasets, tags with trl, grpo, flowgrpo; the
        FlowGRPO and GRPO citations), with a section giving this run's FlowGRPO settings."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        card = ModelCard.load(path)
        card.text = _with_flowgrpo_settings(card.text, self.args)
        card.save(path)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor | Any]:
        output = super()._generate_and_score_completions(inputs)
        if self.token_scorer is None:
            return output
        _check_trl("output key", lambda name: name in output)
        start = time.perf_counter()
        weights, stats = self._completion_token_weights(output)
        output["advantages"] = output["advantages"][:, None] * weights
        stats["seconds"] = time.perf_counter() - start
        self._log_flow_stats(stats)
        return output

    def _completion_token_weights(self, output: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Token weights `[B, completion_length]` (padding 0) and the batch statistics that go to the logs."""
        prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"].bool()
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"].bool()
        advantages = output["advantages"]
        num_rows, prompt_length = prompt_ids.shape

        completion_texts = self._tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        answer_mask, missing = answer_token_mask(
            completion_texts, completion_ids, self._tokenizer, answer_format=self.args.answer_format
        )
        answer_mask = answer_mask.to(completion_mask.device) & completion_mask
        missing = missing.to(completion_mask.device)
        missing |= ~answer_mask.any(dim=1)  # e.g. an answer span that lies entirely in masked-out tokens
        if self.args.missing_answer == "last_tokens":
            answer_mask = torch.where(
                missing[:, None], _last_tokens(completion_mask, self.args.answer_fallback_tokens), answer_mask
            )

        sequence_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        too_long = torch.zeros_like(missing)
        if self.args.flow_max_length is not None:
            too_long = sequence_mask.sum(dim=1) > self.args.flow_max_length
        unscored = too_long | ~completion_mask.any(dim=1)
        if self.args.missing_answer == "uniform":
            unscored |= missing
        if self.args.weight_sign == "positive":
            unscored |= advantages <= 0

        weights = completion_mask.float()
        batch = None
        if not unscored.all():
            rows = ~unscored
            batch = ScoringBatch(
                input_ids=torch.cat([prompt_ids, completion_ids], dim=1)[rows],
                attention_mask=sequence_mask.long()[rows],
                prompt_mask=torch.cat([prompt_mask, torch.zeros_like(completion_mask)], dim=1)[rows],
                completion_mask=torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1)[rows],
                answer_mask=torch.cat([torch.zeros_like(prompt_mask), answer_mask], dim=1)[rows],
                # Within a group the advantages are an affine map of the rewards: same token-reward correlation.
                rewards=advantages[rows],
                group_ids=self._group_ids(num_rows, advantages.device)[rows],
                seed=self._scoring_seed(),
            )
        scores = self._score_in_step(batch)
        if scores is not None:
            row_weights = select_weights(
                scores, batch.completion_mask, top_fraction=self.args.top_fraction, high_weight=self.args.high_weight
            )
            weights[rows] = row_weights[:, prompt_length:].to(weights.dtype)
        selected_tokens = ((weights != 1.0) & completion_mask).sum().item()
        if self.args.normalize_weights:
            weights = normalize_weights(weights, completion_mask)

        stats = {
            "answers_found": (~missing).sum().item(),
            "selected_tokens": selected_tokens,
            "weight_sum": (weights * completion_mask).sum().item(),
            "too_long": too_long.sum().item(),
            "rows": num_rows,
            "tokens": completion_mask.sum().item(),
        }
        if too_long.any():
            warnings.warn(
                f"Sequences longer than flow_max_length={self.args.flow_max_length} are left unscored (weight 1.0); "
                "their share is logged as flow/too_long_frac. Raise flow_max_length to score them.",
                stacklevel=2,
            )
        if missing.all() and self.args.missing_answer == "uniform":
            warnings.warn(
                f"No completion of this batch has an answer span (answer_format={self.args.answer_format!r}), so no "
                "token was reweighted. Check answer_format, or set missing_answer='last_tokens'.",
                stacklevel=2,
            )
        return weights, stats

    def _score_in_step(self, batch: ScoringBatch | None) -> torch.Tensor | None:
        """The scorer's scores of `batch` (None: nothing to score on this rank).

        With several processes every rank runs as many scoring forwards as the busiest one, padding with one-row
        filler batches: under FSDP or ZeRO-3 each forward gathers parameters collectively, so ranks with different
        counts (their rows differ in number and length) would wait on each other forever.
        """
        model = self.accelerator.unwrap_model(self.model)
        fillers = 0
        if self.accelerator.num_processes > 1:  # agree on the count first: no collective may interleave the forwards
            local = 0 if batch is None else count_forwards(self.token_scorer, model, batch)
            most = self.accelerator.gather(torch.tensor([local], device=self.accelerator.device)).max().item()
            fillers = most - local
        scores = None if batch is None else self.token_scorer(model, batch)
        filler = filler_batch(self._tokenizer.eos_token_id or 0, device=self.accelerator.device)
        for _ in range(fillers):
            self.token_scorer(model, filler)
        return scores

    def _group_ids(self, num_rows: int, device: torch.device) -> torch.LongTensor:
        """Rollouts of one prompt share an id. TRL's sampler repeats each prompt `num_generations` times in a row
        across the global generation batch, and each process holds a contiguous slice of it."""
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        first = self.accelerator.process_index * num_rows
        return torch.arange(first, first + num_rows, device=device) // num_generations

    def _scoring_seed(self) -> int:
        """Different for every generation batch and process, the same on a rerun with the same `seed`."""
        return self.args.seed * 1_000_003 + self._step * 1_009 + self.accelerator.process_index

    def _log_flow_stats(self, stats: dict[str, float]) -> None:
        """Fractions over all processes (counts gathered and summed, then divided), appended to TRL's metrics."""
        keys = sorted(stats)
        local = torch.tensor([float(stats[key]) for key in keys], dtype=torch.float64, device=self.accelerator.device)
        total = dict(zip(keys, self.accelerator.gather(local[None]).sum(dim=0).tolist()))
        rows, tokens = max(total["rows"], 1.0), max(total["tokens"], 1.0)
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["flow/answer_found_frac"].append(total["answers_found"] / rows)
        metrics["flow/selected_frac"].append(total["selected_tokens"] / tokens)
        metrics["flow/mean_weight"].append(total["weight_sum"] / tokens)
        metrics["flow/too_long_frac"].append(total["too_long"] / rows)
        metrics["flow/seconds"].append(total["seconds"] / self.accelerator.num_processes)


def check_hub_access(token: str | None) -> None:
    """Raise a one-line `RuntimeError` unless `token` (or the one `huggingface_hub` finds: HF_TOKEN, `hf auth login`)
    is accepted by the Hub (`HF_ENDPOINT`) with write access."""
    endpoint = constants.ENDPOINT
    token = token or get_token()
    if not token:
        raise RuntimeError(
            f"push_to_hub: no Hugging Face token found for {endpoint}; log in with `hf auth login`, set HF_TOKEN or "
            "pass hub_token, or set push_to_hub=False."
        )
    try:
        info = whoami(token=token)
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status == 401:
            raise RuntimeError(
                f"push_to_hub: {endpoint} refused the Hugging Face token (401 Unauthorized); log in again with "
                "`hf auth login`, or set HF_TOKEN or hub_token to a valid token."
            ) from None
        raise RuntimeError(f"push_to_hub: {endpoint} answered the token check with: {_first_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - whatever the HTTP client raises when the Hub cannot be reached
        raise RuntimeError(
            f"push_to_hub: cannot reach the Hub at {endpoint} ({type(error).__name__}: {_first_line(error)}); check "
            "the network or HF_ENDPOINT, or set push_to_hub=False."
        ) from None
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise RuntimeError(
            f"push_to_hub: the Hugging Face token of {info.get('name')!r} is read-only; use a write token."
        )


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _with_flowgrpo_settings(text: str, args: FlowGRPOConfig) -> str:
    """The card's text with a "FlowGRPO settings" section (every FlowGRPOConfig field GRPOConfig lacks) before
    TRL's "Framework versions"."""
    grpo_fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    rows = [
        f"| `{f.name}` | `{getattr(args, f.name)!r}` |" for f in dataclasses.fields(args) if f.name not in grpo_fields
    ]
    section = "\n".join([
        "### FlowGRPO settings",
        "",
        "Token credit by `hf_flowcredit` (the hf-efficient-reasoning package): the completion tokens "
        "a token scorer ranks highest (`top_fraction` of each completion) get `high_weight` times the advantage.",
        "",
        "| setting | value |",
        "|---|---|",
        *rows,
        "",
    ])  # fmt: skip
    marker = "### Framework versions"
    return text.replace(marker, section + "\n" + marker, 1) if marker in text else text + "\n" + section


def _check_trl(kind: str, present) -> None:
    """Raise, naming the installed TRL version, when a member of `TRL_RELIES_ON[kind]` is not `present(name)`."""
    missing = [name for name in TRL_RELIES_ON[kind] if not present(name)]
    if missing:
        raise RuntimeError(
            f"FlowGRPOTrainer relies on TRL GRPOTrainer's {kind}(s) {missing}, which trl {trl.__version__} does not "
            f"have: it was tested with trl{TESTED_TRL}. Install that (pip install 'trl{TESTED_TRL}'), or update "
            "hf_flowcredit's TRL_RELIES_ON and the code that uses it."
        )


def _check_loss_takes_token_advantages(args: FlowGRPOConfig) -> None:
    if args.token_scorer == "none":
        return
    if args.loss_type not in PER_TOKEN_LOSS_TYPES:
        raise ValueError(
            f"loss_type={args.loss_type!r} is not known to take per-token advantages; FlowGRPOTrainer supports "
            f"{PER_TOKEN_LOSS_TYPES}, each with importance_sampling_level='token'. Pick one of those, or set "
            "token_scorer='none' for plain GRPO."
        )
    if args.importance_sampling_level == "sequence":
        paper_setup = (
            f" loss_type={args.loss_type!r} is run by TRL at importance_sampling_level='sequence' (its paper's setup), "
            "which token credit cannot follow: with FlowGRPO it runs at 'token' only (TRL then warns that this "
            "departs from the paper)."
            if args.loss_type in SEQUENCE_LEVEL_IN_TRL
            else ""
        )
        raise ValueError(
            "importance_sampling_level='sequence' (GSPO-style) uses one importance ratio per sequence, so per-token "
            "advantage weights collapse to a single scale per completion and token credit is lost."
            f"{paper_setup} Use importance_sampling_level='token', or token_scorer='none' for plain GRPO."
        )


def _check_attention_capture(model, args: FlowGRPOConfig) -> None:
    """Fail at construction, not at the first scored batch (possibly hours in), when the attention scorers cannot
    work on `model`: `flow_layers` must exist in it, and capturing a 4-token probe with one padding position must
    succeed, through the query/key path as well when the flow scorer will use it for long sequences (no gradient;
    the model's train/eval mode, attention implementation and the RNG state are left as they were)."""
    name = type(model).__name__
    num_layers = model.config.get_text_config().num_hidden_layers
    try:
        layers = resolve_layers(parse_flow_layers(args.flow_layers), num_layers)
    except ValueError as error:
        raise ValueError(
            f"flow_layers={args.flow_layers!r} does not fit {name} ({num_layers} layers): {error}"
        ) from None
    if is_deepspeed_zero3_enabled():
        return  # the parameters stay partitioned until the trainer prepares the model: no forward is possible yet
    device = next(model.parameters()).device
    probe = torch.arange(1, 5, device=device)[None] % model.config.get_text_config().vocab_size
    probe_mask = torch.tensor([[0, 1, 1, 1]], device=device)  # left padding: the padding-mask path runs too
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            capture_attention(model, probe, probe_mask, layers=layers)
            if args.scorer_options().get("recompute_min_length") is not None:  # the flow scorer's long-sequence path
                capture_queries_keys(model, probe, probe_mask, layers=layers)(0, probe.shape[1])
        except (NotImplementedError, RuntimeError, TypeError) as error:
            others = ", ".join(f"token_scorer={n!r}" for n, scorer in SCORERS.items() if not scorer.reads_attention)
            raise ValueError(
                f"token_scorer={args.token_scorer!r} reads the attention of {name}, but capturing it fails: {error} "
                f"Use a scorer that does not read attention ({others}), or a model whose attention layers call "
                "transformers' AttentionInterface."
            ) from error


def _last_tokens(completion_mask: torch.BoolTensor, count: int) -> torch.BoolTensor:
    """The last `count` real tokens of each (right-padded) completion."""
    lengths = completion_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(completion_mask.shape[1], device=completion_mask.device)[None]
    return completion_mask & (positions >= lengths - count)
