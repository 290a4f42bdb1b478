"""The tiny SFT model that demos, reproductions and tests share as warm start / teacher, and batched chat
generation for evaluating it.

`train_tiny_sft` trains a tiny Qwen3-style model with TRL's `SFTTrainer` on synthetic arithmetic traces; a finished
run with the same settings is reused from disk instead of trained again.

    >>> from kit.teacher import train_tiny_sft, held_out_accuracy
    >>> model_dir = train_tiny_sft("runs/sft")          # runs/sft/model: model + tokenizer
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from kit.tiny import build_tokenizer, make_task_dataset, reward_for_task, tiny_causal_lm


@dataclass(frozen=True)
class TinySFTSettings:
    task: str = "arithmetic"
    seed: int = 0
    n_train: int = 6000
    num_train_epochs: float = 4.0
    learning_rate: float = 3e-3
    batch_size: int = 32
    hidden_size: int = 128
    num_layers: int = 4
    max_ops: int = 2
    bf16: bool = False  # TRL turns on bf16 autocast by default, CPU included; fp32 is faster and exact here


def _finished_run_matches(model_dir: str, settings: TinySFTSettings) -> bool:
    path = os.path.join(model_dir, "tiny_sft_settings.json")
    if not os.path.exists(path) or not os.path.exists(os.path.join(model_dir, "config.json")):
        return False
    with open(path) as f:
        return json.load(f) == asdict(settings)


def train_tiny_sft(output_dir: str, task: str = "arithmetic", seed: int = 0, **overrides) -> str:
    """Train (or reuse) a tiny SFT model; returns the folder holding the model and its tokenizer.

    `overrides` are fields of `TinySFTSettings`. The training log is kept as `log_history.json` beside the model.
    """
    settings = TinySFTSettings(task=task, seed=seed, **overrides)
    model_dir = os.path.join(output_dir, "model")
    if _finished_run_matches(model_dir, settings):
        return model_dir

    tokenizer = build_tokenizer()
    train = make_task_dataset(
        settings.task, n=settings.n_train, seed=settings.seed, split="train", max_ops=settings.max_ops
    )
    model = tiny_causal_lm(
        "qwen3", tokenizer, hidden_size=settings.hidden_size, num_layers=settings.num_layers, seed=settings.seed
    )
    args = SFTConfig(
        output_dir=os.path.join(output_dir, "checkpoints"),
        num_train_epochs=settings.num_train_epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        weight_decay=0.01,
        max_length=192,
        logging_steps=10,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        use_cpu=True,
        bf16=settings.bf16,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train.select_columns(["prompt", "completion"]),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(model_dir)
    tokenizer.save_pretrained(model_dir)
    with open(os.path.join(model_dir, "log_history.json"), "w") as f:
        json.dump(trainer.state.log_history, f)
    with open(os.path.join(model_dir, "tiny_sft_settings.json"), "w") as f:
        json.dump(asdict(settings), f)
    return model_dir


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict]],
    *,
    num_samples: int = 1,
    batch_size: int = 64,
    max_new_tokens: int = 64,
    desc: str = "generating",
) -> list[list[str]]:
    """Completions of conversational prompts, batched with left padding: greedy when `num_samples == 1`, else
    `num_samples` samples per prompt at temperature 1 (no top-k / top-p). Returns one list per prompt."""
    tokenizer.padding_side = "left"
    model.eval()
    prompts_per_batch = max(1, batch_size // num_samples)
    sampling = (
        {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0} if num_samples > 1 else {"do_sample": False}
    )
    out = []
    for start in tqdm(range(0, len(prompts), prompts_per_batch), desc=desc, leave=False):
        batch = tokenizer.apply_chat_template(
            prompts[start : start + prompts_per_batch],
            add_generation_prompt=True,
            return_tensors="pt",
            padding=True,
            return_dict=True,
        )
        output = model.generate(
            **batch, max_new_tokens=max_new_tokens, num_return_sequences=num_samples,
            pad_token_id=tokenizer.pad_token_id, **sampling,
        )  # fmt: skip
        texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        out += [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]
    return out


def greedy_completions(model, tokenizer, prompts, **kwargs) -> list[str]:
    """Greedy completions of conversational prompts, batched with left padding (see `sample_completions`)."""
    return [texts[0] for texts in sample_completions(model, tokenizer, prompts, num_samples=1, **kwargs)]


def held_out_accuracy(model_dir: str, task: str = "arithmetic", n_test: int = 300, seed: int = 0, **kwargs) -> float:
    """Mean task reward of greedy completions on `n_test` held-out problems."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    test = make_task_dataset(task, n=n_test, seed=seed, split="test")
    completions = greedy_completions(model, tokenizer, test["prompt"], desc=f"eval {task}", **kwargs)
    columns = {name: test[name] for name in test.column_names if name not in ("prompt", "completion")}
    rewards = reward_for_task(task)(completions, **columns)
    return sum(rewards) / len(rewards)
