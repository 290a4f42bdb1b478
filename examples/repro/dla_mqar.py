"""Train tiny DLA models on synthetic retrieval and measure recall: vanilla vs loglinear vs dla memory.

For each mixer (Mamba-2, Gated DeltaNet) and memory mode, a `DLAForCausalLM` of the same size and the same
maximum state count is trained with the transformers `Trainer` on multi-query associative recall (MQAR) or
on passkey retrieval (`hf_dla.retrieval_data`), then evaluated per setting, including sequences longer than
those seen in training. Accuracy counts answer tokens predicted exactly (greedy).

    # the full setting (length 32, 1,200 steps): 1-3 minutes of training per model on 2 unloaded Xeon cores,
    # about 15 minutes for the six models in turn; figures in RESULTS.md
    python -m examples.repro.dla_mqar --config examples/recipes/dla_mqar.yaml
    # any field on the command line overrides the recipe; one model per process to run them side by side
    python -m examples.repro.dla_mqar --config examples/recipes/dla_mqar.yaml --mixers mamba2 --memories dla \
        --output_dir runs/dla_mqar/mamba2-dla
    # several seeds (data and initialisation), one folder per seed and model; a rerun skips finished models
    python -m examples.repro.dla_mqar --config examples/recipes/dla_mqar.yaml --seeds 0 1 2 --output_dir runs/dla_mqar_seeds
    # the mean +- std table over every finished run under a folder (trains nothing)
    python -m examples.repro.dla_mqar --summarize --output_dir runs/dla_mqar_seeds
    # harder: length 64, vocabulary 64 (1,500 steps leave every model at chance; give it far more)
    python -m examples.repro.dla_mqar --config examples/recipes/dla_mqar_t64.yaml --max_steps 10000
    # passkey: trained on one haystack length, evaluated on longer ones
    python -m examples.repro.dla_mqar --config examples/recipes/dla_passkey.yaml

Beside the DLA models, `--memories reference` (in the recipes) trains each mixer's reference implementation at the
same size, with its own initialisation, on the same data and budget: transformers' `Mamba2ForCausalLM` and a
`Qwen3NextForCausalLM` made of Gated DeltaNet layers only (dense MLP; transformers' torch path on the CPU). Its rows
(`memory = reference`) show what the backbone reaches outside this code base.

Every model gets the same `max_states`; loglinear needs `ceil(log2 T) + 1` levels for the longest evaluated
length T, which `check_settings` enforces before any training. Learning rates around 3e-3 suit all modes;
at 1e-2 the multi-state models (whose read weights lambda are trained too) stayed at chance in our runs.

Writes `results.json` (one row per model and setting) and `results.md` under `--output_dir`. With `--seeds`, each
model's rows are saved as soon as it is evaluated, in `<output_dir>/seed<S>/<mixer>-<memory>/results.json` with the
settings that produced them; a rerun skips the models whose file exists (and refuses a folder holding other
settings), and `--summarize` assembles the mean +- std table from those files. `examples/repro/dla_mqar_seeds.sh` runs the
seeds one model at a time in the background.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets
from tqdm.auto import tqdm
from transformers import (
    EvalPrediction,
    Mamba2Config,
    Mamba2ForCausalLM,
    Qwen3NextConfig,
    Qwen3NextForCausalLM,
    Trainer,
    TrainingArguments,
    set_seed,
)
from trl import TrlParser

import hf_dla
from hf_dla.retrieval_data import IGNORE_INDEX, mqar_dataset, passkey_dataset

REFERENCE = "reference"  # the row of the mixer's reference implementation (see `reference_model`)
EVAL_SEED_OFFSET = 10_000  # evaluation sequences come from other seeds than the training ones
RUN_FILE = "results.json"
# The training recipe that must match for runs to be averaged together (the seed and folders aside).
TRAINING_FIELDS = (
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "max_grad_norm",
)


@dataclass
class RetrievalTaskArguments:
    """Which models to compare and on which retrieval settings."""

    task: str = field(default="mqar", metadata={"help": "`mqar` (multi-query associative recall) or `passkey`."})
    mixers: list[str] = field(
        default_factory=lambda: ["mamba2", "gated_deltanet"], metadata={"help": "Mixers to train."}
    )
    memories: list[str] = field(
        default_factory=lambda: ["vanilla", "loglinear", "dla", REFERENCE],
        metadata={
            "help": "Memory modes to compare; `reference` trains the mixer's reference implementation instead of a "
            "DLA model: transformers' Mamba2ForCausalLM, or a Qwen3-Next of Gated DeltaNet layers only."
        },
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
    seeds: list[int] | None = field(
        default=None,
        metadata={
            "help": "Seeds (training data and initialisation) to run in turn, each model saved under "
            "output_dir/seed<S>/<mixer>-<memory>/ and skipped on a rerun once finished; default: one run with "
            "--seed, results only at the end."
        },
    )
    summarize: bool = field(
        default=False,
        metadata={"help": "Train nothing: print the mean +- std table over the finished runs under --output_dir."},
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


def reference_model(model_args: TinyDLAArguments, mixer: str, vocab_size: int):
    """The mixer's reference implementation at the DLA models' size, with its own initialisation: transformers'
    `Mamba2ForCausalLM`, or a `Qwen3NextForCausalLM` whose layers are all Gated DeltaNet with a dense SwiGLU MLP (no
    attention layer, no experts; on the CPU it runs transformers' torch fallback of the delta rule)."""
    expand, width = 2, model_args.hidden_size
    shared = dict(
        vocab_size=vocab_size, hidden_size=width, num_hidden_layers=model_args.num_hidden_layers,
        tie_word_embeddings=True, use_cache=False, pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    if mixer == "mamba2":
        config = Mamba2Config(
            num_heads=model_args.num_heads, head_dim=expand * width // model_args.num_heads, expand=expand,
            state_size=model_args.state_size, n_groups=1, conv_kernel=4, chunk_size=model_args.chunk_size, **shared,
        )  # fmt: skip
        return Mamba2ForCausalLM(config)
    if mixer == "gated_deltanet":
        config = Qwen3NextConfig(
            layer_types=["linear_attention"] * model_args.num_hidden_layers,
            mlp_only_layers=list(range(model_args.num_hidden_layers)), intermediate_size=model_args.intermediate_size,
            linear_num_key_heads=model_args.num_heads, linear_num_value_heads=model_args.num_heads,
            linear_key_head_dim=model_args.state_size, linear_value_head_dim=expand * width // model_args.num_heads,
            linear_conv_kernel_dim=4, **shared,
        )  # fmt: skip
        return Qwen3NextForCausalLM(config)
    raise ValueError(f"No reference implementation for mixer={mixer!r}; choose mamba2 or gated_deltanet.")


def build_model(model_args: TinyDLAArguments, mixer: str, memory: str, vocab_size: int):
    """A fresh DLA model, or the mixer's reference implementation for memory `reference`."""
    if memory == REFERENCE:
        return reference_model(model_args, mixer, vocab_size)
    return hf_dla.DLAForCausalLM(tiny_dla_config(model_args, mixer, memory, vocab_size))


def model_identity(model) -> tuple[str, str, int]:
    """(mixer, memory, memory slots) of a trained model: a DLA model's config, or a reference's."""
    config = model.config
    if isinstance(config, hf_dla.DLAConfig):
        return config.mixer, config.memory, config.num_slots
    return ("mamba2" if isinstance(model, Mamba2ForCausalLM) else "gated_deltanet"), REFERENCE, 1


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
    if model_identity(model)[1] in ("vanilla", REFERENCE):
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
    model = build_model(model_args, mixer, memory, task_args.vocab_size)
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
    model = trainer.model.eval()
    mixer, memory, num_slots = model_identity(model)
    train_log = next(log for log in reversed(trainer.state.log_history) if "train_runtime" in log)
    rows = []
    for setting, dataset in evals.items():
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="eval")
        live = live_states_per_layer(model, torch.tensor(dataset[: task_args.num_memory_examples]["input_ids"]))
        rows.append(
            {
                "mixer": mixer,
                "memory": memory,
                "setting": setting,
                "seq_len": dataset[0]["seq_len"],
                "num_kv_pairs": dataset[0].get("num_kv_pairs"),
                "accuracy": metrics["eval_accuracy"],
                "eval_loss": metrics["eval_loss"],
                "live_states_per_layer": live,
                "mean_live_states": float(np.mean(live)),
                "num_parameters": model.num_parameters(),
                "max_states": num_slots,
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


def run_settings(
    task_args: RetrievalTaskArguments, model_args: TinyDLAArguments, training_args: TrainingArguments
) -> dict:
    """The settings saved with every model run (as JSON reads them back): the task without the model list,
    the model size and the training recipe."""
    task = {k: v for k, v in asdict(task_args).items() if k not in ("mixers", "memories", "seeds", "summarize")}
    training = {
        name: getattr(getattr(training_args, name), "value", getattr(training_args, name)) for name in TRAINING_FIELDS
    }
    return json.loads(json.dumps({"task": task, "model": asdict(model_args), "training": training}))


def finished_rows(run_dir: str, settings: dict) -> list[dict] | None:
    """The saved rows of a finished model run, or None when it has not finished."""
    path = os.path.join(run_dir, RUN_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if saved.get("settings") != settings:
        raise ValueError(
            f"{path} holds a run with other settings than this command's; pass another --output_dir "
            "(or delete that folder to rerun it)."
        )
    return saved["rows"]


def run_seeds(
    task_args: RetrievalTaskArguments, model_args: TinyDLAArguments, training_args: TrainingArguments
) -> list[dict]:
    """Every seed x mixer x memory in turn. Each model's rows (tagged with the seed) are saved as soon as it is
    evaluated; the models whose file exists are loaded instead of trained, so an interrupted sweep resumes."""
    check_settings(task_args, model_args)
    settings = run_settings(task_args, model_args, training_args)
    rows = []
    for seed in task_args.seeds:
        seed_args = replace(training_args, seed=seed, output_dir=os.path.join(training_args.output_dir, f"seed{seed}"))
        datasets = None
        for mixer in task_args.mixers:
            for memory in task_args.memories:
                run_dir = os.path.join(seed_args.output_dir, f"{mixer}-{memory}")  # train_model's output_dir
                model_rows = finished_rows(run_dir, settings)
                if model_rows is None:
                    datasets = datasets or build_datasets(task_args, seed)
                    trainer = train_model(mixer, memory, task_args, model_args, seed_args, datasets[0])
                    model_rows = [dict(row, seed=seed) for row in evaluate_model(trainer, task_args, datasets[1])]
                    os.makedirs(run_dir, exist_ok=True)
                    with open(os.path.join(run_dir, RUN_FILE + ".tmp"), "w") as f:
                        json.dump({"settings": settings, "seed": seed, "rows": model_rows}, f, indent=1)
                    os.replace(os.path.join(run_dir, RUN_FILE + ".tmp"), os.path.join(run_dir, RUN_FILE))
                rows += model_rows
    return rows


def _mean_std(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def seed_table(rows: list[dict]) -> str:
    """Markdown: per mixer x memory, each setting's accuracy as mean ± sample std over the seeds it has."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    names = (*hf_dla.configuration_dla.MIXERS, *hf_dla.memory_plans.MEMORY_PLANS, REFERENCE)
    order = {name: i for i, name in enumerate(names)}
    models = sorted(dict.fromkeys((r["mixer"], r["memory"]) for r in rows), key=lambda m: (order[m[0]], order[m[1]]))
    lines = [
        "| mixer | memory | seeds | " + " | ".join(settings) + " | params | live states / layer | train s |",
        "|---|---|---|" + "---:|" * (len(settings) + 3),
    ]
    for mixer, memory in models:
        mine = [r for r in rows if (r["mixer"], r["memory"]) == (mixer, memory)]
        seeds = sorted({r["seed"] for r in mine})
        cells = [
            _mean_std([r["accuracy"] for r in mine if r["setting"] == s])
            if any(r["setting"] == s for r in mine)
            else "-"
            for s in settings
        ]
        last = [r["live_states_per_layer"] for r in mine if r["setting"] == settings[-1]]
        live = "/".join(f"{x:.1f}" for x in np.mean(last, axis=0)) if last else "-"
        train_s = _mean_std([r["train_seconds"] for r in mine if r["setting"] == mine[0]["setting"]], digits=0)
        lines.append(
            f"| {mixer} | {memory} | {','.join(map(str, seeds))} | "
            + " | ".join(cells)
            + f" | {mine[0]['num_parameters']:,} | {live} | {train_s} |"
        )
    return "\n".join(lines)


def summarize_runs(output_dir: str) -> tuple[str, list[str]]:
    """The mean ± std table over the finished model runs under `output_dir` (any depth), and the seed x model
    runs missing from the grid of seeds and models seen there. Runs with different settings are refused."""
    runs = []
    for path in sorted(glob.glob(os.path.join(output_dir, "**", RUN_FILE), recursive=True)):
        with open(path) as f:
            saved = json.load(f)
        if "settings" in saved:  # per-model files of --seeds runs (a combined results.json has none)
            runs.append((path, saved))
    if not runs:
        raise ValueError(f"No finished model runs under {output_dir}; train some with --seeds first.")
    first_path, first = runs[0]
    for path, saved in runs[1:]:
        if saved["settings"] != first["settings"]:
            raise ValueError(
                f"{path} and {first_path} were run with different settings; summarize one setting per --output_dir."
            )
    rows = [row for _, saved in runs for row in saved["rows"]]
    done = {(r["seed"], r["mixer"], r["memory"]) for r in rows}
    seeds = sorted({seed for seed, _, _ in done})
    models = sorted({(mixer, memory) for _, mixer, memory in done})
    missing = [f"seed{s}/{m}-{x}" for s in seeds for m, x in models if (s, m, x) not in done]
    return seed_table(rows), missing


def main() -> None:
    parser = TrlParser((RetrievalTaskArguments, TinyDLAArguments, TrainingArguments))
    task_args, model_args, training_args = parser.parse_args_and_config()
    if task_args.summarize or task_args.seeds:
        if task_args.seeds:
            run_seeds(task_args, model_args, training_args)
        table, missing = summarize_runs(training_args.output_dir)
        print(table)
        print("missing runs: " + (", ".join(missing) if missing else "none"))
        return
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
