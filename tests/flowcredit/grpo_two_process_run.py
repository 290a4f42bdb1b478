"""Run by `test_grpo_distributed.py` under `accelerate launch --num_processes 2 --cpu`: a few FlowGRPO steps with
gloo, then each process writes what it saw (world size, flow metrics, scoring forwards, a parameter checksum) to
`<output_dir>/rank<N>.json`. Rank 1 has nothing to score (its `flow_max_length` leaves every row unscored), so it
must pad with filler forwards to run as many scoring forwards as rank 0."""

import json
import os
import sys

import torch
from accelerate import PartialState

from hf_flowcredit import FlowGRPOConfig, FlowGRPOTrainer
from hf_flowcredit.scoring import FlowScorer
from kit.tiny import build_tokenizer, make_task_dataset, tiny_causal_lm


def uneven_reward(completions, **kwargs):
    return [float(len(str(c)) % 5) for c in completions]


class CountingFlowScorer(FlowScorer):
    """FlowScorer counting its forwards on real batches and on the one-row filler batches."""

    forwards = {"real": 0, "filler": 0}

    def __call__(self, model, batch):
        kind = "filler" if tuple(batch.input_ids.shape) == (1, 2) else "real"
        self.forwards[kind] += len(self.forward_groups(model, batch))
        return super().__call__(model, batch)


def main(output_dir: str) -> None:
    rank = int(os.environ["RANK"])  # PartialState comes after the trainer, which sets the gloo backend up
    tokenizer = build_tokenizer()
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1, seed=0)
    args = FlowGRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=16,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        seed=0,
        save_strategy="no",
        disable_tqdm=True,
        missing_answer="last_tokens",
        flow_max_length=None if rank == 0 else 2,  # rank 1: every row too long, nothing to score
    )
    dataset = make_task_dataset("arithmetic", 16, seed=0).select_columns(["prompt", "answer"])
    trainer = FlowGRPOTrainer(
        model=model, reward_funcs=uneven_reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.token_scorer = CountingFlowScorer(**vars(trainer.token_scorer))
    trainer.train()
    state = PartialState()
    flow_logs = [{k: v for k, v in entry.items() if k.startswith("flow/")} for entry in trainer.state.log_history]
    report = {
        "num_processes": state.num_processes,
        "backend": str(torch.distributed.get_backend()) if torch.distributed.is_initialized() else None,
        "flow_logs": [entry for entry in flow_logs if entry],
        "scoring_forwards": CountingFlowScorer.forwards,
        "checksum": float(sum(p.double().sum() for p in trainer.model.parameters())),
    }
    with open(os.path.join(output_dir, f"rank{state.process_index}.json"), "w") as f:
        json.dump(report, f)
    # Leave together and close gloo explicitly: a rank that exits while its peer still holds the process group
    # can abort in gloo's teardown ("terminate called without an active exception").
    state.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
