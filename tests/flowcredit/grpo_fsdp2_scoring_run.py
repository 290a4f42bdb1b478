"""Run by `test_grpo_sharded.py` under `accelerate launch` with 2 CPU processes (gloo): FlowGRPOTrainer's scoring step
on a model sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`, every decoder layer and the root), with
different numbers of scoring forwards per rank. Writes `<output_dir>/rank<N>.json`.

Accelerate enables FSDP only on accelerators (on CPU it always prepares DDP), so the trainer itself cannot be given
an FSDP model here; this script runs the trainer's scoring method (`_score_in_step`) on a stand-in holding what it
reads (accelerator, scorer, tokenizer, model). Each forward of the sharded model all-gathers every layer's
parameters, so if the ranks ran different numbers of forwards, or a forward stopped part-way, they would hang.
"""

import copy
import json
import os
import sys
from types import SimpleNamespace

import torch
from accelerate import Accelerator
from torch.distributed.fsdp import fully_shard

import hf_flowcredit.scoring as scoring
from hf_flowcredit import FlowGRPOTrainer
from hf_flowcredit.scoring import FlowScorer, ScoringBatch
from kit.tiny import build_tokenizer, tiny_causal_lm

LENGTH = 12


def rows_batch(num_rows: int, seed: int, vocab_size: int) -> ScoringBatch:
    """`num_rows` rows: a 4-token prompt, a completion whose last 2 tokens are the answer, some right padding."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (num_rows, LENGTH), generator=generator)
    positions = torch.arange(LENGTH)[None]
    lengths = torch.randint(8, LENGTH + 1, (num_rows, 1), generator=generator)
    attention_mask = (positions < lengths).long()
    prompt_mask = (positions < 4).expand(num_rows, -1)
    completion_mask = attention_mask.bool() & ~prompt_mask
    answer_mask = completion_mask & (positions >= lengths - 2)
    return ScoringBatch(input_ids, attention_mask, prompt_mask, completion_mask, answer_mask)


def main(output_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    tokenizer = build_tokenizer()
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1, seed=0)
    unsharded = copy.deepcopy(model)
    # Small groups, so the ranks' forward counts differ: step 1, rank 0 scores 5 rows (3 forwards), rank 1 one row;
    # step 2, rank 0 one row, rank 1 nothing at all (none of its rows has an answer, or all are too long).
    scoring.BATCH_ELEMENTS = 2 * LENGTH * LENGTH
    scorer = FlowScorer(recompute_min_length=LENGTH)  # full-length groups take the query/key path
    vocab_size = len(tokenizer)
    if rank == 0:
        batches = [rows_batch(5, 0, vocab_size), rows_batch(1, 2, vocab_size)]
    else:
        batches = [rows_batch(1, 1, vocab_size), None]
    references = [None if batch is None else scorer(unsharded, batch) for batch in batches]

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    forwards = []
    model.model.layers[-1].register_forward_hook(lambda *args: forwards.append(1))
    trainer = SimpleNamespace(accelerator=accelerator, token_scorer=scorer, _tokenizer=tokenizer, model=model)
    report = {"rank": rank, "num_processes": accelerator.num_processes, "sharded": type(model).__name__, "steps": []}
    for batch, reference in zip(batches, references):
        forwards.clear()
        scores = FlowGRPOTrainer._score_in_step(trainer, batch)
        step = {"forwards": len(forwards), "real": 0 if batch is None else len(scorer.forward_groups(model, batch))}
        if batch is not None:
            step["max_error"] = (scores - reference).abs().max().item()
            step["scored"] = bool((scores[batch.completion_mask] > 0).any())
        report["steps"].append(step)
    # The sharded model still trains after the scoring forwards: one forward and backward, gradients everywhere.
    model.train()
    loss = model(input_ids=rows_batch(2, 3, vocab_size).input_ids).logits.float().pow(2).mean()
    loss.backward()
    report["trains"] = all(p.grad is not None for p in model.parameters())
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
