"""GRPO with FlowTracer token credit, in the style of TRL's `trl/scripts/grpo.py`: `FlowGRPOConfig` takes every
`GRPOConfig` option plus `token_scorer`, `top_fraction`, `high_weight`, ...

    # Embedded tiny model and synthetic arithmetic (CPU; trains the tiny SFT warm start first if it is missing):
    python -m examples.scripts.flowcredit_grpo --config examples/recipes/flowcredit_grpo_tiny.yaml

    # A real model on GPUs, any dataset with `prompt` and `solution` columns (math-verify accuracy reward):
    accelerate launch -m examples.scripts.flowcredit_grpo --config examples/recipes/flowcredit_grpo_qwen3.yaml

Every field can be overridden on the command line (`--token_scorer entropy --high_weight 2.0`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from datasets import load_dataset
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config
from trl.rewards import accuracy_reward, think_format_reward

from hf_flowcredit import FlowGRPOConfig, FlowGRPOTrainer

REWARDS = {"accuracy_reward": accuracy_reward, "think_format_reward": think_format_reward}


@dataclass
class FlowGRPOScriptArguments(ScriptArguments):
    """Script arguments. Without `dataset_name`, the embedded synthetic `task` is used; without
    `model_name_or_path`, the embedded tiny SFT model (trained into `sft_dir` if missing)."""

    task: str = field(default="arithmetic", metadata={"help": "Embedded task: 'arithmetic' or 'countdown'."})
    num_train_samples: int = field(default=2000, metadata={"help": "Size of the embedded training set."})
    sft_dir: str = field(default="runs/sft", metadata={"help": "Where the embedded tiny SFT warm start lives."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy_reward"],
        metadata={
            "help": f"Rewards for `dataset_name`: {sorted(REWARDS)} or a dotted import path "
            "('my_lib.rewards.my_reward'). The embedded task always uses its own reward."
        },
    )


def _reward(name: str):
    if name in REWARDS:
        return REWARDS[name]
    if "." not in name:
        raise ValueError(f"Unknown reward {name!r}: use one of {sorted(REWARDS)} or a dotted import path.")
    module, attribute = name.rsplit(".", 1)
    return getattr(importlib.import_module(module), attribute)


def load_training_data(script_args: FlowGRPOScriptArguments):
    """(train dataset, reward functions)."""
    if script_args.dataset_name is None:
        from kit.tiny import make_task_dataset, reward_for_task

        train = make_task_dataset(script_args.task, n=script_args.num_train_samples, seed=1, split="train")
        return train.remove_columns(["completion", "trace"]), [reward_for_task(script_args.task)]
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    return dataset[script_args.dataset_train_split], [_reward(name) for name in script_args.reward_funcs]


def main(script_args: FlowGRPOScriptArguments, training_args: FlowGRPOConfig, model_args: ModelConfig) -> None:
    model = model_args.model_name_or_path
    if model is None:
        from kit.teacher import train_tiny_sft

        model = train_tiny_sft(script_args.sft_dir, task=script_args.task)
    training_args.model_init_kwargs = {
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "revision": model_args.model_revision,
        **(training_args.model_init_kwargs or {}),
    }
    train_dataset, reward_funcs = load_training_data(script_args)
    trainer = FlowGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    parser = TrlParser((FlowGRPOScriptArguments, FlowGRPOConfig, ModelConfig))
    main(*parser.parse_args_and_config())
