"""FlowGRPO on a CPU in minutes: SmolLM2-135M-Instruct (a local copy, no hub access), 8 word problems, two steps.

    OMP_NUM_THREADS=1 python -m examples.scripts.flowcredit_cpu_quickstart    # from the repository root

Nothing CPU-specific is set: on a machine without an accelerator `FlowGRPOConfig` turns off TRL's GPU defaults
(bf16 autocast, activation checkpointing) unless they are given explicitly. `OMP_NUM_THREADS=1` matters on a small
or shared machine: with one OpenMP thread per core and anything else running, threads wait on each other.
"""

from hf_flowcredit import FlowGRPOConfig, FlowGRPOTrainer
from kit.real_model import make_word_problem_dataset, real_model_path, word_problem_reward

dataset = make_word_problem_dataset(n=8, split="train")  # `prompt` (chat) and `answer` columns
args = FlowGRPOConfig(
    output_dir="runs/flowgrpo_cpu_quickstart",
    token_scorer="flow",
    max_steps=2,
    num_generations=8,  # 8 completions of one prompt per step
    per_device_train_batch_size=8,
    max_completion_length=64,
    missing_answer="last_tokens",  # 64 tokens cut most answers off: their last tokens act as the answer
    logging_steps=1,
    save_strategy="no",
    report_to="none",
)
trainer = FlowGRPOTrainer(model=real_model_path(), reward_funcs=word_problem_reward, args=args, train_dataset=dataset)
trainer.train()
