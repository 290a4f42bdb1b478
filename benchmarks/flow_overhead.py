"""Per-step time of GRPO and FlowGRPO on the same batches, as a ratio, and the token scorer's share of a step.

    OMP_NUM_THREADS=1 python -m benchmarks.flow_overhead                      # CPU, the demo's tiny model and shapes
    OMP_NUM_THREADS=1 python -m benchmarks.flow_overhead --preset cpu-smollm2 # CPU, SmolLM2-135M, 64 and 256 tokens
    python -m benchmarks.flow_overhead --preset gpu-0.6b --device cuda        # a 0.6B-class config, 1-4K tokens
    python -m benchmarks.flow_overhead --preset gpu-smollm2 --device cuda     # SmolLM2-135M, 256-3584 tokens

A GRPO step is timed as its three parts on one fixed batch: sampling the completions (`generate`, forced to the
batch's completion length), the policy update (TRL's `compute_loss`, backward, optimizer step), and, for FlowGRPO
only, the token weights (`FlowGRPOTrainer._completion_token_weights`: answer spans, the scorer's extra forward, the
selection). The parts run interleaved, `--repeats` rounds after one warm-up round, and each is the median over the
rounds, so GRPO and FlowGRPO see the same batch and the same machine conditions.

    ratio = (generate + update + weights) / (generate + update),   scorer share = weights / FlowGRPO step

The `cpu-tiny` and `gpu-0.6b` presets build a Qwen3 with random weights (the cost does not depend on them) and draw
prompt and completion ids from the embedded tokenizer's range. The `smollm2` presets load the real
SmolLM2-135M-Instruct (`kit/real_model.py`, offline) with the README's CPU quickstart settings: 8 completions of one
chat-templated word problem; completion ids are drawn from its vocabulary. In every preset the last 8 completion
tokens stand for the answer (`missing_answer="last_tokens"`), so every completion is scored: the worst case for the
scorer's cost.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, Qwen3Config

from hf_flowcredit import FlowGRPOConfig, FlowGRPOTrainer
from kit.tiny import build_tokenizer


@dataclass(frozen=True)
class Qwen3Shape:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int | None  # None: the embedded tokenizer's vocabulary


REAL_MODEL = "SmolLM2-135M-Instruct"  # kit/real_model.py


@dataclass(frozen=True)
class Preset:
    model: Qwen3Shape | str  # a random Qwen3 of this shape, or REAL_MODEL
    batch_size: int
    prompt_length: int | None  # None: the chat-templated word problem's own length
    completion_lengths: tuple[int, ...]


PRESETS = {
    # The demo's configuration: tiny Qwen3 (as examples/repro/demo_sft.py), 16 completions of ~30 tokens after ~45.
    "cpu-tiny": Preset(Qwen3Shape(128, 4, 4, 2, 512, None), 16, 45, (32,)),
    # Qwen3-0.6B shapes (28 layers, hidden 1024, GQA 16/8, vocab 151936), sequences of 1-4K tokens.
    "gpu-0.6b": Preset(Qwen3Shape(1024, 28, 16, 8, 3072, 151936), 8, 512, (512, 1536, 3584)),
    # The README's CPU quickstart: SmolLM2-135M, 8 completions of 64 tokens of one word problem; and 256 tokens.
    "cpu-smollm2": Preset(REAL_MODEL, 8, None, (64, 256)),
    # The same model at reasoning lengths: 3584 tokens go through the scorer's query/key path (>= 2048 tokens).
    "gpu-smollm2": Preset(REAL_MODEL, 8, None, (256, 1024, 3584)),
}


def build_model(shape: Qwen3Shape, tokenizer, device: str, dtype: torch.dtype):
    config = Qwen3Config(
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.hidden_size // shape.num_heads,
        intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size or len(tokenizer),
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model.to(device)


def word_problem_prompt_ids(tokenizer) -> torch.LongTensor:
    """`[1, P]` token ids of the first training word problem with the chat template applied (as TRL does)."""
    from kit.real_model import make_word_problem_dataset

    prompt = make_word_problem_dataset(n=1, split="train")[0]["prompt"]
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    return torch.tensor([ids])


def load_model(preset: Preset, device: str, dtype: torch.dtype):
    """(model, tokenizer) of a preset: the real model, or a random Qwen3 with the embedded tokenizer."""
    if preset.model == REAL_MODEL:
        from kit.real_model import load_real_model

        model, tokenizer = load_real_model(dtype=dtype)
        return model.to(device), tokenizer
    tokenizer = build_tokenizer()
    return build_model(preset.model, tokenizer, device, dtype), tokenizer


def synthetic_batch(tokenizer, preset: Preset, completion_length: int, device: str, seed: int = 0) -> dict:
    """A generation batch in TRL's layout: left-padded prompts, right-padded completions, per-row advantages."""
    generator = torch.Generator().manual_seed(seed)
    low, high = len(tokenizer.all_special_ids), len(tokenizer)  # ordinary tokens only
    batch = preset.batch_size
    if preset.prompt_length is None:  # one chat-templated word problem, as in the README's quickstart
        prompt_ids = word_problem_prompt_ids(tokenizer).repeat(batch, 1)
    else:
        prompt_ids = torch.randint(low, high, (batch, preset.prompt_length), generator=generator)
    completion_ids = torch.randint(low, high, (batch, completion_length), generator=generator)
    lengths = torch.randint(completion_length // 2, completion_length + 1, (batch,), generator=generator)
    completion_mask = (torch.arange(completion_length)[None] < lengths[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    output = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.randn(batch, generator=generator),
    }
    output = {key: value.to(device) for key, value in output.items()}
    output["num_items_in_batch"] = completion_mask.sum().to(device)
    return output


def _timed(run, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_step_parts(trainer, optimizer, batch: dict, device: str, repeats: int) -> dict[str, float]:
    """Median seconds of each part of a step on `batch`: sampling, policy update, FlowTracer token weights."""
    completion_length = batch["completion_ids"].shape[1]
    tokenizer = trainer.processing_class

    def generate():
        with torch.no_grad():
            trainer.model.generate(
                input_ids=batch["prompt_ids"],
                attention_mask=batch["prompt_mask"],
                min_new_tokens=completion_length,
                max_new_tokens=completion_length,
                do_sample=True,
                pad_token_id=tokenizer.pad_token_id,
            )

    def update():
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def weights():
        trainer._completion_token_weights(batch)

    times = {"generate": [], "update": [], "weights": []}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for name, run in (("generate", generate), ("update", update), ("weights", weights)):
            times[name].append(_timed(run, device))
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def measure(preset_name: str, device: str, repeats: int, scorer: str) -> list[dict]:
    preset = PRESETS[preset_name]
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model, tokenizer = load_model(preset, device, dtype)
    with tempfile.TemporaryDirectory() as output_dir:
        args = FlowGRPOConfig(
            output_dir=output_dir,
            token_scorer=scorer,
            missing_answer="last_tokens",
            per_device_train_batch_size=preset.batch_size,
            num_generations=preset.batch_size,
            max_completion_length=max(preset.completion_lengths),
            report_to="none",
            use_cpu=device == "cpu",
            bf16=dtype == torch.bfloat16,
            save_strategy="no",
        )
        trainer = FlowGRPOTrainer(
            model=model,
            reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["unused"] * preset.batch_size}),
            processing_class=tokenizer,
        )
    trainer.current_gradient_accumulation_steps = 1  # set by `train()`; read by TRL's loss
    trainer.model.train()
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=1e-6)
    rows = []
    for completion_length in preset.completion_lengths:
        batch = synthetic_batch(tokenizer, preset, completion_length, device)
        median = time_step_parts(trainer, optimizer, batch, device, repeats)
        grpo = median["generate"] + median["update"]
        flowgrpo = grpo + median["weights"]
        rows.append(
            {
                "preset": preset_name,
                "scorer": scorer,
                "tokens": batch["prompt_ids"].shape[1] + completion_length,
                **median,
                "grpo_step": grpo,
                "flowgrpo_step": flowgrpo,
                "ratio": flowgrpo / grpo,
                "scorer_share": median["weights"] / flowgrpo,
                "ratio_without_generate": (median["update"] + median["weights"]) / median["update"],
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)  # progress: a long preset prints its table only at the end
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [
        "| preset | scorer | prompt+completion tokens | generate (s) | update (s) | token weights (s) "
        "| GRPO step (s) | FlowGRPO step (s) | FlowGRPO / GRPO | scorer share of a step "
        "| ratio if sampling were free |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['scorer']} | {r['tokens']} | {r['generate']:.3f} | {r['update']:.3f} "
            f"| {r['weights']:.3f} | {r['grpo_step']:.3f} | {r['flowgrpo_step']:.3f} | {r['ratio']:.3f}x "
            f"| {100 * r['scorer_share']:.1f}% | {r['ratio_without_generate']:.3f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu-tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scorers", nargs="+", default=["flow"], help="Token scorers to time (e.g. flow entropy).")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible.")
    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    print(f"# FlowGRPO step-time overhead ({args.preset}, {machine}, torch {torch.__version__})\n")
    rows = [row for scorer in args.scorers for row in measure(args.preset, args.device, args.repeats, scorer)]
    print(format_rows(rows))


if __name__ == "__main__":
    main()
