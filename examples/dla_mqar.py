"""Train tiny DLA models on synthetic retrieval and measure recall: vanilla vs loglinear vs dla memory.

For each mixer (Mamba-2, Gated DeltaNet) and memory mode, a `DLAForCausalLM` of the same size and the same
maximum state count is trained with the transformers `Trainer` on multi-query associative recall (MQAR) or
on passkey retrieval (`hf_dla.retrieval_data`), then evaluated per setting, including sequences longer than
those seen in training. Accuracy counts answer tokens predicted exactly (greedy).

    # the full setting (length 32, 1,200 steps): 1-3 minutes of training per model on 2 unloaded Xeon cores,
    # about 15 minutes for the six models in turn; figures in RESULTS.md
    python -m examples.dla_mqar --config examples/recipes/dla_mqar.yaml
    # any field on the command line overrides the recipe; one model per process to run them side by side
    python -m examples.dla_mqar --config examples/recipes/dla_mqar.yaml --mixers mamba2 --memories dla \
        --output_dir runs/dla_mqar/mamba2-dla
    # harder: length 64, vocabulary 64 (1,500 steps leave every model at chance; give it far more)
    python -m examples.dla_mqar --config examples/recipes/dla_mqar_t64.yaml --max_steps 10000
    # passkey: trained on one haystack length, evaluated on longer ones
    python -m examples.dla_mqar --config examples/recipes/dla_passkey.yaml

Every model gets the same `max_states`; loglinear needs `ceil(log2 T) + 1` levels for the longest evaluated
length T, which `check_settings` enforces before any training. Learning rates around 3e-3 suit all modes;
at 1e-2 the multi-state models (whose read weights lambda are trained too) stayed at chance in our runs.

Writes `results.json` (one row per model and setting) and `results.md` under `--output_dir`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets
from tqdm.auto import tqdm
from transformers import EvalPrediction, Trainer, TrainingArguments, set_seed
from trl import TrlParser

import hf_dla
from hf_dla.retrieval_data import IGNORE_INDEX, mqar_dataset, passkey_dataset

EVAL_SEED_OFFSET = 10_000  # evaluation sequences come from other seeds than the training ones


@dataclass
class RetrievalTaskArguments:
    """Which models to compare and on which retrieval settings."""

    task: str = field(default="mqar", metadata={"help": "`mqar` (multi-query associative recall) or `passkey`."})
    mixers: list[str] = field(
        default_factory=lambda: ["mamba2", "gated_deltanet"], metadata={"help": "Mixers to train."}
    )
    memories: list[str] = field(
        default_factory=lambda: ["vanilla", "loglinear", "dla"], metadata={"help": "Memory modes to compare."}
    )
    vocab_size: int = field(default=256, metadata={"help": "Vocabulary of the synthetic task (and the model)."})
    train_seq_len: int = field(default=128, metadata={"help": "MQAR training sequence length."})
    train_num_kv_pairs: list[int] = field(
        default_factory=lambda: [4, 8, 16], metadata={"help": "MQAR pair counts mixed in the training set."}
    )
    num_train_examples: int = field(
        default=4000, metadata={"help": "Training sequences per MQAR pair count (or passkey sequences)."}
    )
    eval_seq_lens: list[int] = field(
        default_factory=lambda: [128, 256], metadata={"help": "MQAR evaluation lengths (longer than trained too)."}
    )
    eval_num_kv_pairs: list[int] = field(
        default_factory=lambda: [4, 8, 16, 32], metadata={"help": "MQAR evaluation pair counts."}
    )
    power_a: float = field(default=0.01, metadata={"help": "MQAR query-gap power law p(g) ~ g^(a-1)."})
    train_haystack_len: int = field(default=120, metadata={"help": "Passkey training haystack length."})
    eval_haystack_lens: list[int] = field(
        default_factory=lambda: [120, 240, 480], metadata={"help": "Passkey evaluation haystack lengths."}
    )
    passkey_len: int = field(default=2, metadata={"help": "Passkey tokens."})
    num_eval_examples: int = field(default=200, metadata={"help": "Evaluation sequences per setting."})
    num_memory_examples: int = field(
        default=8, metadata={"help": "Sequences (per setting) over which the live memory states are averaged."}
    )


@dataclass
class TinyDLAArguments:
    """One size for every model: only `mixer` and `memory` vary between runs."""

    hidden_size: int = field(default=64, metadata={"help": "Model width."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Blocks."})
    num_heads: int = field(default=2, metadata={"help": "Heads; head_dim = 2 * hidden_size / num_heads."})
    state_size: int = field(default=32, metadata={"help": "Key / query dim per head."})
    intermediate_size: int = field(default=128, metadata={"help": "SwiGLU width of Gated DeltaNet blocks."})
    max_states: int = field(
        default=10,
        metadata={"help": "Slots of loglinear and dla (vanilla has 1); loglinear needs ceil(log2 T) + 1."},
    )
    merge_threshold: float = field(default=0.5, metadata={"help": "DLA drift threshold for opening a slot."})
    backend: str = field(default="chunk", metadata={"help": "Op backend; `chunk` is the CPU training path."})
    chunk_size: int = field(default=32, metadata={"help": "Chunk length of the chunk backend."})


def tiny_dla_config(model_args: TinyDLAArguments, mixer: str, memory: str, vocab_size: int) -> hf_dla.DLAConfig:
    expand = 2
    return hf_dla.DLAConfig(
        mixer=mixer,
        memory=memory,
        vocab_size=vocab_size,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_heads=model_args.num_heads,
        head_dim=expand * model_args.hidden_size // model_args.num_heads,
        state_size=model_args.state_size,
        expand=expand,
        intermediate_size=model_args.intermediate_size,
        max_states=model_args.max_states,
        merge_threshold=model_args.merge_threshold,
        backend=model_args.backend,
        chunk_size=model_args.chunk_size,
        use_cache=False,  # training and scoring whole sequences: no generation cache in the outputs
    )


def check_settings(task_args: RetrievalTaskArguments, model_args: TinyDLAArguments) -> None:
    """Fail before training when the longest evaluation cannot fit the loglinear level table."""
    longest = max(eval_lengths(task_args))
    needed = math.ceil(math.log2(longest)) + 1
    if "loglinear" in task_args.memories and model_args.max_states < needed:
        raise ValueError(
            f"max_states={model_args.max_states} gives loglinear 2^{model_args.max_states - 1} tokens, but the "
            f"longest evaluation has {longest}; set --max_states {needed} (every mode uses the same count)."
        )


def eval_lengths(task_args: RetrievalTaskArguments) -> list[int]:
    if task_args.task == "mqar":
        return task_args.eval_seq_lens
    return [h + 2 * (task_args.passkey_len + 1) for h in task_args.eval_haystack_lens]


def build_datasets(task_args: RetrievalTaskArguments, seed: int) -> tuple[Dataset, dict[str, Dataset]]:
    """The training set and the evaluation sets, keyed by setting name (`T128_N8`, `H480`)."""
    a = task_args
    if a.task == "mqar":
        train = concatenate_datasets(
            [
                mqar_dataset(a.num_train_examples, n, a.train_seq_len, a.vocab_size, a.power_a, seed=seed + i)
                for i, n in enumerate(a.train_num_kv_pairs)
            ]
        )
        evals = {
            f"T{t}_N{n}": mqar_dataset(
                a.num_eval_examples, n, t, a.vocab_size, a.power_a, seed=seed + EVAL_SEED_OFFSET + 97 * t + n
            )
            for t in a.eval_seq_lens
            for n in a.eval_num_kv_pairs
            if 4 * n <= t
        }
    elif a.task == "passkey":
        train = passkey_dataset(a.num_train_examples, a.train_haystack_len, a.vocab_size, a.passkey_len, seed=seed)
        evals = {
            f"H{h}": passkey_dataset(
                a.num_eval_examples, h, a.vocab_size, a.passkey_len, seed=seed + EVAL_SEED_OFFSET + h
            )
            for h in a.eval_haystack_lens
        }
    else:
        raise ValueError(f"task={a.task!r} is unknown; choose `mqar` or `passkey`.")
    return train.shuffle(seed=seed), evals


def greedy_tokens(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep only the argmax per position during evaluation (the vocab-sized logits are never gathered)."""
    return logits.argmax(-1)


def recall_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Share of answer tokens (labels != -100) that the previous position predicts exactly."""
    predicted, labels = prediction.predictions[:, :-1], prediction.label_ids[:, 1:]
    answers = labels != IGNORE_INDEX
    return {"accuracy": float((predicted[answers] == labels[answers]).mean())}


@torch.no_grad()
def live_states_per_layer(model: hf_dla.DLAForCausalLM, input_ids: torch.Tensor) -> list[float]:
    """Mean number of live memory slots per layer, averaged over tokens and sequences."""
    config = model.config
    length = input_ids.shape[1]
    if config.memory == "vanilla":
        return [1.0] * config.num_hidden_layers
    if config.memory == "loglinear":
        # Fenwick levels after token t: level 0 plus one level per set bit of t (the same in every layer).
        mean = float(np.mean([1 + bin(t).count("1") for t in range(length)]))
        return [mean] * config.num_hidden_layers
    records: list[dict] = []
    model.model(input_ids=input_ids.to(model.device), use_cache=False, memory_trace=records)
    per_layer = []
    for record in records:
        opened = record["trace"]["opened"].long()
        merged = (record["trace"]["merged"] >= 0).long()
        live = opened.cumsum(1) - merged.cumsum(1)  # (B, T)
        per_layer.append(float(live.float().mean()))
    return per_layer


def train_model(
    mixer: str,
    memory: str,
    task_args: RetrievalTaskArguments,
    model_args: TinyDLAArguments,
    training_args: TrainingArguments,
    train: Dataset,
) -> Trainer:
    """Train one model from scratch (same seed for every mixer x memory) and return its `Trainer`."""
    set_seed(training_args.seed)
    model = hf_dla.DLAForCausalLM(tiny_dla_config(model_args, mixer, memory, task_args.vocab_size))
    run_args = replace(training_args, output_dir=os.path.join(training_args.output_dir, f"{mixer}-{memory}"))
    trainer = Trainer(
        model=model,
        args=run_args,
        train_dataset=train,
        compute_metrics=recall_accuracy,
        preprocess_logits_for_metrics=greedy_tokens,
    )
    trainer.train()
    return trainer


def evaluate_model(trainer: Trainer, task_args: RetrievalTaskArguments, evals: dict[str, Dataset]) -> list[dict]:
    """One result row per evaluation setting: recall accuracy, live states per layer, size, training cost."""
    model, config = trainer.model.eval(), trainer.model.config
    train_log = next(log for log in reversed(trainer.state.log_history) if "train_runtime" in log)
    rows = []
    for setting, dataset in evals.items():
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="eval")
        live = live_states_per_layer(model, torch.tensor(dataset[: task_args.num_memory_examples]["input_ids"]))
        rows.append(
            {
                "mixer": config.mixer,
                "memory": config.memory,
                "setting": setting,
                "seq_len": dataset[0]["seq_len"],
                "num_kv_pairs": dataset[0].get("num_kv_pairs"),
                "accuracy": metrics["eval_accuracy"],
                "eval_loss": metrics["eval_loss"],
                "live_states_per_layer": live,
                "mean_live_states": float(np.mean(live)),
                "num_parameters": model.num_parameters(),
                "max_states": config.num_slots,
                "train_loss": train_log["train_loss"],
                "train_seconds": train_log["train_runtime"],
            }
        )
    return rows


def run_comparison(
    task_args: RetrievalTaskArguments, model_args: TinyDLAArguments, training_args: TrainingArguments
) -> tuple[list[dict], dict[tuple[str, str], hf_dla.DLAForCausalLM]]:
    """Every mixer x memory mode on the same data, size and maximum state count: result rows and the models."""
    check_settings(task_args, model_args)
    train, evals = build_datasets(task_args, training_args.seed)
    rows, models = [], {}
    runs = [(mixer, memory) for mixer in task_args.mixers for memory in task_args.memories]
    for mixer, memory in tqdm(runs, desc="models"):
        trainer = train_model(mixer, memory, task_args, model_args, training_args, train)
        rows += evaluate_model(trainer, task_args, evals)
        models[mixer, memory] = trainer.model
    return rows, models


def results_table(rows: list[dict]) -> str:
    """Markdown: one row per mixer x memory, one accuracy column per setting, then size and live states."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    models = list(dict.fromkeys((r["mixer"], r["memory"]) for r in rows))
    lines = [
        "| mixer | memory | " + " | ".join(settings) + " | params | max states | mean live states / layer |",
        "|---|---|" + "---:|" * (len(settings) + 3),
    ]
    for mixer, memory in models:
        mine = {r["setting"]: r for r in rows if (r["mixer"], r["memory"]) == (mixer, memory)}
        accuracies = " | ".join(f"{mine[s]['accuracy']:.3f}" if s in mine else "-" for s in settings)
        first = next(iter(mine.values()))
        live = "/".join(f"{x:.1f}" for x in mine[settings[-1]]["live_states_per_layer"])
        lines.append(
            f"| {mixer} | {memory} | {accuracies} | {first['num_parameters']:,} | {first['max_states']} | {live} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = TrlParser((RetrievalTaskArguments, TinyDLAArguments, TrainingArguments))
    task_args, model_args, training_args = parser.parse_args_and_config()
    rows, _ = run_comparison(task_args, model_args, training_args)
    os.makedirs(training_args.output_dir, exist_ok=True)
    with open(os.path.join(training_args.output_dir, "results.json"), "w") as f:
        json.dump({"task": asdict(task_args), "model": asdict(model_args), "rows": rows}, f, indent=1)
    table = results_table(rows)
    with open(os.path.join(training_args.output_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
