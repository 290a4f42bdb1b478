"""Train a student on one variant of a Compress-Distill dataset with TRL's `SFTTrainer`.

A recipe is a YAML file of `trl.SFTConfig` fields, `trl.ModelConfig` fields (model, dtype, attention, LoRA) and
the few fields of `CompressSFTArguments` (which dataset folder and variant). Before any step is taken the
training data is checked so that the comparison between variants is fair and correct:

* the chat template marks the assistant turn with `{% generation %}` (else a clear error offering
  `EMBEDDED_CHAT_TEMPLATE`), so the loss is on the assistant's tokens only;
* every example has a non-empty assistant mask and no prompt token is in the loss;
* the assistant's end-of-turn token is trained, and becomes the eos token when it differs from the tokenizer's
  (base models end documents with `<|endoftext|>` but chat turns with `<|im_end|>`);
* no token is dropped: packing must split long sequences (`bfd_split`) rather than truncate them, and without
  packing no example may exceed `max_length`. After TRL has prepared the data the token count is checked again.

bf16 and FlashAttention 2 are used only when the hardware supports them.

    >>> args, training_args, model_args = parse_recipe("examples/recipes/sft_lora_qwen3.yaml", variant="raw")
    >>> summary = run_sft(args, training_args, model_args)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import yaml
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config
from trl.chat_template_utils import clone_chat_template, get_training_chat_template, has_generation_markers

from .arguments import CompressSFTArguments
from .build import load_variants
from .commands.registry import dataclass_parser
from .constants import SUMMARY_FILE
from .hardware import bf16_supported, resolve_attn_implementation
from .hub import check_push_access, hub_base_model, push_failed, update_student_card

logger = logging.getLogger(__name__)

# ChatML with the assistant turn (and its end-of-turn token) inside {% generation %}, for students whose tokenizer has
# no chat template, or one without generation markers that TRL cannot patch. Same rendering as Qwen's ChatML.
EMBEDDED_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
EMBEDDED_TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>")

_TEMPLATE_FIX = (
    "Set `use_embedded_chat_template: true` in the recipe (ChatML with generation markers, "
    "`hf_compress.sft.EMBEDDED_CHAT_TEMPLATE`), or `chat_template_path` to a Jinja file or tokenizer whose template "
    "wraps the assistant turn in `{% generation %}...{% endgeneration %}`."
)


RECIPE_TYPES = (CompressSFTArguments, SFTConfig, ModelConfig)


# ----------------------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------------------


def _recipe_field_names() -> set[str]:
    return {f.name for cls in RECIPE_TYPES for f in dataclasses.fields(cls) if f.init}


def check_recipe_fields(recipe: dict[str, Any], source: str = "recipe") -> None:
    """Raise on fields that no recipe dataclass knows, with the closest valid names as suggestions."""
    known = _recipe_field_names()
    hints = []
    for name in sorted(set(recipe) - known):
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    if hints:
        raise ValueError(
            f"Unknown field(s) in {source}: {', '.join(hints)}. A recipe holds fields of `trl.SFTConfig`, "
            "`trl.ModelConfig` and `hf_compress.sft.CompressSFTArguments`."
        )


def _with_hardware_precision(recipe: dict[str, Any]) -> dict[str, Any]:
    """bf16 on when the hardware has it, off otherwise (SFTConfig would default it on, and fail on a CPU)."""
    wanted = bool(recipe.get("bf16", not recipe.get("fp16", False)))
    if recipe.get("bf16") and not bf16_supported():
        logger.warning("The recipe asks for bf16 but this hardware does not support it: training in fp32.")
    return {**recipe, "bf16": wanted and bf16_supported()}


def parse_recipe(
    recipe: str | dict[str, Any], **overrides: Any
) -> tuple[CompressSFTArguments, SFTConfig, ModelConfig]:
    """Parse a YAML recipe (path or dict) plus keyword overrides into the three argument dataclasses."""
    source = recipe if isinstance(recipe, str) else "recipe"
    if isinstance(recipe, str):
        with open(recipe) as f:
            recipe = yaml.safe_load(f) or {}
        if not isinstance(recipe, dict):
            raise ValueError(f"{source} must hold a YAML mapping of field: value, got {type(recipe).__name__}.")
    recipe = {**recipe, **overrides}
    check_recipe_fields(recipe, source)
    return dataclass_parser(RECIPE_TYPES).parse_dict(_with_hardware_precision(recipe))


def parse_sft_cli(argv: list[str] | None = None) -> tuple[CompressSFTArguments, SFTConfig, ModelConfig]:
    """TRL-style command line (`hf-compress sft`): `--config recipe.yaml` then any field as `--name value` to
    override it. Option names are exact (no prefix matching); a mistyped one is an error suggesting the closest."""
    argv = list(argv or [])
    recipe = {}
    if "--config" in argv:
        path = argv[argv.index("--config") + 1]
        with open(path) as f:
            recipe = yaml.safe_load(f) or {}
        if not isinstance(recipe, dict):
            raise ValueError(f"{path} must hold a YAML mapping of field: value, got {type(recipe).__name__}.")
        check_recipe_fields({k: v for k, v in recipe.items() if k != "env"}, path)  # `env`: TrlParser's own key
    if "--bf16" not in argv:
        argv += ["--bf16", str(_with_hardware_precision(recipe)["bf16"])]
    return dataclass_parser(RECIPE_TYPES, prog="hf-compress sft").parse_args_and_config(argv)


# ----------------------------------------------------------------------------------------------------------
# Chat template and assistant masks
# ----------------------------------------------------------------------------------------------------------


def prepare_chat_template(tokenizer: PreTrainedTokenizerBase, use_embedded: bool = False) -> str | None:
    """Make sure the assistant mask can be computed; return the template TRL will train with (None: the tokenizer's).

    A template without generation markers is patched by TRL when it knows it (Qwen, Llama 3, Gemma, ...).
    Otherwise, and when there is no template at all, this fails unless `use_embedded` installs the ChatML one.
    """
    if tokenizer.chat_template is None or (use_embedded and not has_generation_markers(tokenizer.chat_template)):
        if not use_embedded:
            raise ValueError(f"The student's tokenizer has no chat template. {_TEMPLATE_FIX}")
        missing = [token for token in EMBEDDED_TEMPLATE_TOKENS if token not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(
                f"The embedded ChatML template needs the tokens {missing}, which this tokenizer lacks. Set "
                "`chat_template_path` to a tokenizer with a ChatML template (TRL clones it and adds the tokens)."
            )
        tokenizer.chat_template = EMBEDDED_CHAT_TEMPLATE
        return None
    if has_generation_markers(tokenizer.chat_template):
        return None
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:
        raise ValueError(
            "The student's chat template has no `{% generation %}` markers, so the assistant-only loss cannot be "
            f"computed, and TRL has no training version of this template. {_TEMPLATE_FIX}"
        ) from None


def apply_chat_template_path(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """TRL's `chat_template_path`, applied before the checks so that they see the template that will be trained."""
    if os.path.isfile(path) and path.endswith((".jinja", ".j2")):
        with open(path, encoding="utf-8") as f:
            tokenizer.chat_template = f.read()
        return model, tokenizer
    model, tokenizer, _ = clone_chat_template(model, tokenizer, path)
    return model, tokenizer


def _render(tokenizer, messages, chat_template, **kwargs) -> dict:
    return tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, chat_template=chat_template, **kwargs
    )


def _mask_facts(example: dict, tokenizer, chat_template: str | None) -> dict:
    """Per example: token counts and how many loss tokens fall outside the assistant turns.

    Assistant turn k spans from the end of `messages[:k]` rendered with the generation prompt to the end of
    `messages[:k+1]` (exact for prefix-preserving templates, as TRL requires): every masked token must lie in
    such a span.
    """
    messages = example["messages"]
    rendered = _render(tokenizer, messages, chat_template, return_assistant_tokens_mask=True)
    mask = rendered["assistant_masks"]
    allowed = [False] * len(mask)
    for k, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(_render(tokenizer, messages[:k], chat_template, add_generation_prompt=True)["input_ids"])
            end = len(_render(tokenizer, messages[: k + 1], chat_template)["input_ids"])
            allowed[start:end] = [True] * (end - start)
    return {
        "n_tokens": len(mask),
        "n_loss_tokens": sum(mask),
        "n_prompt_tokens_in_loss": sum(1 for m, ok in zip(mask, allowed) if m and not ok),
    }


@dataclass
class MaskReport:
    """Token counts of the checked data: all tokens, tokens in the loss, and the longest example."""

    n_examples: int
    n_tokens: int
    n_loss_tokens: int
    longest: int


def check_assistant_masks(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str | None = None,
    num_proc: int | None = None,
) -> MaskReport:
    """Check that every example has a non-empty assistant mask and that no prompt token is in the loss."""
    if "messages" not in dataset.column_names:
        raise ValueError(
            f"The training data needs a `messages` column (conversations), found {dataset.column_names}. "
            "`hf-compress build` writes it."
        )
    facts = dataset.map(
        _mask_facts,
        fn_kwargs={"tokenizer": tokenizer, "chat_template": chat_template},
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="Checking assistant masks",
    )
    empty = [i for i, n in enumerate(facts["n_loss_tokens"]) if n == 0]
    if empty:
        raise ValueError(
            f"{len(empty)} example(s) have an empty assistant mask (no token in the loss), e.g. indices {empty[:5]}: "
            "their assistant turn is empty or the chat template does not mark it. Drop them or fix the template."
        )
    leaking = [i for i, n in enumerate(facts["n_prompt_tokens_in_loss"]) if n > 0]
    if leaking:
        raise ValueError(
            f"The chat template puts prompt tokens in the loss in {len(leaking)} example(s), e.g. indices "
            f"{leaking[:5]}: its `{{% generation %}}` block must cover the assistant turn only. {_TEMPLATE_FIX}"
        )
    return MaskReport(
        n_examples=len(facts),
        n_tokens=sum(facts["n_tokens"]),
        n_loss_tokens=sum(facts["n_loss_tokens"]),
        longest=max(facts["n_tokens"]),
    )


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase, chat_template: str | None = None) -> str:
    """The token that ends an assistant turn in the loss: the token the student must learn to emit to stop."""
    messages = [{"role": "user", "content": "1 + 1"}, {"role": "assistant", "content": "2"}]
    rendered = _render(tokenizer, messages, chat_template, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(rendered["input_ids"], rendered["assistant_masks"]) if m]
    content = [t for t in masked if tokenizer.decode([t]).strip()]
    if not content or content[-1] not in tokenizer.get_added_vocab().values():
        raise ValueError(
            "The chat template does not put the assistant's end-of-turn token inside `{% generation %}`: the "
            f"student would never learn to stop. {_TEMPLATE_FIX}"
        )
    return tokenizer.convert_ids_to_tokens(content[-1])


def check_no_token_dropped(report: MaskReport, training_args: SFTConfig) -> None:
    """Packing with `bfd` truncates long examples and so does no packing with `max_length`: refuse both."""
    if training_args.max_length is None or report.longest <= training_args.max_length:
        return
    if not training_args.packing:
        raise ValueError(
            f"The longest example has {report.longest} tokens > max_length={training_args.max_length}, and without "
            "packing TRL truncates it. Raise max_length, set it to null, or use packing with packing_strategy: bfd_split."
        )
    if training_args.packing_strategy == "bfd":
        raise ValueError(
            f"The longest example has {report.longest} tokens > max_length={training_args.max_length}, and "
            "packing_strategy 'bfd' truncates it. Use packing_strategy: bfd_split, which splits it instead."
        )


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def load_variant(dataset_path: str, variant: str) -> Dataset:
    """One variant of the folder `hf-compress build` wrote."""
    if not os.path.isdir(dataset_path):
        raise FileNotFoundError(f"dataset_path={dataset_path!r} is not a folder; run `hf-compress build` first.")
    variants = load_variants(dataset_path)
    if variant not in variants:
        raise ValueError(f"Variant {variant!r} is missing from {dataset_path}; it holds {sorted(variants)}.")
    return variants[variant]


def load_student(
    model_args: ModelConfig, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The student and its tokenizer; `trust_remote_code` (the recipe's SFTConfig field) loads students saved with
    their own modeling code, such as hf_dla models."""
    if not model_args.model_name_or_path:
        raise ValueError("Set `model_name_or_path` in the recipe: the student to train.")
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=resolve_attn_implementation(model_args.attn_implementation),
        trust_remote_code=trust_remote_code,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=trust_remote_code
    )
    return model, tokenizer


def _count_trained_tokens(dataset: Dataset) -> tuple[int, int]:
    """(all tokens, loss tokens) of a dataset prepared by `SFTTrainer` (packed or not)."""
    n_tokens = n_loss = 0
    for batch in dataset.select_columns(["input_ids", "labels"]).iter(batch_size=1024):
        n_tokens += sum(len(ids) for ids in batch["input_ids"])
        n_loss += sum(label != -100 for labels in batch["labels"] for label in labels)
    return n_tokens, n_loss


class CompressSFTTrainer(SFTTrainer):
    """TRL's `SFTTrainer`, whose model card (written by `create_model_card`, which `push_to_hub` calls) describes a
    Compress-Distill student: `base_model` (when it is a Hub model), `library_name: peft` for a LoRA adapter, the
    tags `compress-distill` and the variant, and the run summary (`compress_sft.json`) when it is written."""

    compress_variant: str | None = None
    compress_base_model: str | None = None

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        try:
            from peft import PeftModel

            peft = isinstance(self.model, PeftModel)
        except ImportError:
            peft = False
        summary_path = os.path.join(self.args.output_dir, SUMMARY_FILE)
        summary = json.load(open(summary_path)) if os.path.exists(summary_path) else None
        update_student_card(
            os.path.join(self.args.output_dir, "README.md"),
            variant=self.compress_variant or "unknown",
            base_model=self.compress_base_model,
            peft=peft,
            repo_id=self.hub_model_id,
            summary=summary,
            dataset=dataset_name,
        )


def build_sft_trainer(
    training_args: SFTConfig,
    model_args: ModelConfig,
    train_dataset: Dataset,
    *,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    use_embedded_chat_template: bool = False,
) -> tuple[SFTTrainer, MaskReport]:
    """Check the data, then build TRL's `SFTTrainer` with assistant-only loss; `model`/`tokenizer` default to
    `model_args.model_name_or_path`. Returns the trainer and the mask report (token counts before training)."""
    if model is None:
        model, tokenizer = load_student(model_args, training_args.trust_remote_code)
    elif tokenizer is None:
        raise ValueError("Pass the tokenizer together with the model.")
    if not training_args.assistant_only_loss:
        logger.warning("Compress-Distill trains on the assistant turn only: setting assistant_only_loss=True.")
    updates: dict[str, Any] = {"assistant_only_loss": True}
    if training_args.chat_template_path is not None:
        model, tokenizer = apply_chat_template_path(model, tokenizer, training_args.chat_template_path)
        updates["chat_template_path"] = None
    chat_template = prepare_chat_template(tokenizer, use_embedded_chat_template)
    report = check_assistant_masks(train_dataset, tokenizer, chat_template, training_args.dataset_num_proc)
    check_no_token_dropped(report, training_args)
    stop_token = end_of_turn_token(tokenizer, chat_template)
    if stop_token != tokenizer.eos_token:
        # A base model's eos ends documents; a chat turn ends with the template's token. Generation must stop there.
        logger.info("eos token %r -> %r (the chat template's end of turn)", tokenizer.eos_token, stop_token)
        updates["eos_token"] = stop_token
    if training_args.bf16 and not bf16_supported():
        updates["bf16"] = False
    training_args = dataclasses.replace(training_args, **updates)
    trainer = CompressSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset.select_columns(["messages"]),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    n_tokens, n_loss = _count_trained_tokens(trainer.train_dataset)
    if (n_tokens, n_loss) != (report.n_tokens, report.n_loss_tokens):
        raise RuntimeError(
            f"SFTTrainer prepared {n_tokens} tokens ({n_loss} in the loss) but the data holds {report.n_tokens} "
            f"({report.n_loss_tokens}): tokens were dropped or added. Check max_length and packing_strategy."
        )
    return trainer, report


def train_student(
    training_args: SFTConfig,
    model_args: ModelConfig,
    train_dataset: Dataset,
    *,
    variant: str,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    use_embedded_chat_template: bool = False,
) -> dict[str, Any]:
    """Train, save model + tokenizer to `training_args.output_dir`, and write the run summary (`compress_sft.json`)
    that `hf-compress report` reads: training tokens, loss tokens, training time.

    With `training_args.push_to_hub`, the Hub repo (`hub_model_id`, else the output folder's name under the token's
    account) is checked before the model is loaded (`hf_compress.hub.check_push_access`), and once the student is
    saved, `trainer.push_to_hub` uploads the folder with a model card naming the base model and the variant. A
    failed push keeps the saved student and says how to upload it."""
    repo_id = None
    if training_args.push_to_hub:  # before loading the model and training: fail now, not after hours of training
        repo_id = check_push_access(
            training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir)),
            "model",
            token=training_args.hub_token,
            private=training_args.hub_private_repo,
        )
        training_args = dataclasses.replace(training_args, hub_model_id=repo_id)
        base_model = hub_base_model(model_args.model_name_or_path)
        if model_args.use_peft and base_model is None:
            logger.warning(
                "model_name_or_path=%r is not a Hub model: the pushed adapter names a base model that "
                "others cannot download. Train from a Hub id to publish a loadable adapter.",
                model_args.model_name_or_path,
            )
    trainer, report = build_sft_trainer(
        training_args,
        model_args,
        train_dataset,
        model=model,
        tokenizer=tokenizer,
        use_embedded_chat_template=use_embedded_chat_template,
    )
    trainer.compress_variant = variant
    trainer.compress_base_model = hub_base_model(model_args.model_name_or_path)
    start = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - start
    # _internal_call: with push_to_hub, Trainer.save_model would push here; the push comes below, with the summary
    trainer.save_model(training_args.output_dir, _internal_call=True)
    trainer.processing_class.save_pretrained(training_args.output_dir)
    summary = {
        "variant": variant,
        "model": model_args.model_name_or_path or type(trainer.model).__name__,
        "n_examples": report.n_examples,
        "train_tokens": report.n_tokens,
        "loss_tokens": report.n_loss_tokens,
        "train_seconds": train_seconds,
        "train_loss": result.training_loss,
        "num_train_epochs": trainer.args.num_train_epochs,
        "packing": trainer.args.packing,
        "packing_strategy": trainer.args.packing_strategy if trainer.args.packing else None,
        "peft": model_args.use_peft,
        "bf16": trainer.args.bf16,
        "attn_implementation": trainer.model.config._attn_implementation,
        "eos_token": trainer.processing_class.eos_token,
    }
    if repo_id:
        summary["hub_model_id"] = repo_id
    with open(os.path.join(training_args.output_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    if repo_id:
        push_student(trainer, repo_id, variant)
    return summary


def push_student(trainer: SFTTrainer, repo_id: str, variant: str) -> None:
    """`trainer.push_to_hub` (TRL's model card, amended by `CompressSFTTrainer`): the saved output folder (model or
    LoRA adapter, tokenizer, `compress_sft.json`, README.md) in one commit; a failure names the saved folder."""
    try:
        trainer.push_to_hub(commit_message=f"hf-compress sft: {variant} student", tags=["compress-distill", variant])
    except Exception as error:
        folder = trainer.args.output_dir
        raise push_failed(
            error,
            "the student",
            repo_id,
            "model",
            folder,
            f"upload it with `hf upload {repo_id} {folder}` (its card is written)",
        ) from error


def run_sft(script_args: CompressSFTArguments, training_args: SFTConfig, model_args: ModelConfig) -> dict[str, Any]:
    """`hf-compress sft`: train the recipe's student on the recipe's variant."""
    if script_args.dataset_path is None:
        raise ValueError("Set `dataset_path` in the recipe: the folder written by `hf-compress build`.")
    dataset = load_variant(script_args.dataset_path, script_args.variant)
    return train_student(
        training_args,
        model_args,
        dataset,
        variant=script_args.variant,
        use_embedded_chat_template=script_args.use_embedded_chat_template,
    )
