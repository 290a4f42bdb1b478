"""FlowTracer on a real pretrained model (SmolLM2-135M-Instruct, offline): base accuracy, intervention, GRPO runs.

    python -m examples.repro.real_flow base --output_dir runs/real_flow           # greedy accuracy and pass@8 per setting
    python -m examples.repro.real_flow intervention --output_dir runs/real_flow   # flow-top / random / flow-bottom / none
    python -m examples.repro.real_flow scorer_cost --output_dir runs/real_flow    # flow scorer time and memory per sequence
    python -m examples.repro.real_flow grpo --output_dir runs/real_flow           # GRPO vs FlowGRPO vs random, seeds
    python -m examples.repro.real_flow summary --output_dir runs/real_flow        # tables of everything finished so far
    python -m examples.repro.real_flow all --output_dir runs/real_flow            # all of the above in order (make repro-flow)

Every unit of work (one setting of `base`, one method x seed of `grpo`, ...) writes its own JSON file under
`--output_dir` when it finishes, and a rerun skips the units whose file exists: an interrupted run resumes where it
stopped, nothing lost but the unit in progress. The model and tasks come from `kit.real_model`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, TrainerCallback

from kit.real_model import load_real_model, make_word_problem_dataset, real_model_path, word_problem_reward
from kit.teacher import sample_completions

# Base-model settings compared by `base`: (instruction, min_steps, max_steps).
SETTINGS = {
    "number-1": ("number", 1, 1),
    "boxed-1": ("boxed", 1, 1),
    "number-1to3": ("number", 1, 3),
    "boxed-1to3": ("boxed", 1, 3),
    "boxed-1to2": ("boxed", 1, 2),
    "number-1to2": ("number", 1, 2),
    "steps-1to3": ("steps", 1, 3),
}
METHOD_SCORERS = {"grpo": "none", "flow": "flow", "random": "random"}


# ----------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    """Atomic write: a unit's file exists only once its work is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(data, indent=2))
    os.replace(staging, path)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def test_split(setting: str, n: int):
    instruction, min_steps, max_steps = SETTINGS[setting]
    return make_word_problem_dataset(
        n, seed=0, split="test", instruction=instruction, min_steps=min_steps, max_steps=max_steps
    )


def train_split(setting: str, n: int):
    instruction, min_steps, max_steps = SETTINGS[setting]
    return make_word_problem_dataset(
        n, seed=1, split="train", instruction=instruction, min_steps=min_steps, max_steps=max_steps
    )


@torch.no_grad()
def generate(model, tokenizer, prompts, *, max_new_tokens: int, num_samples: int = 1, batch_size: int = 64, desc=""):
    """Greedy (`num_samples == 1`) or sampled completions, one list per prompt (`demo_sft.sample_completions`)."""
    return sample_completions(
        model,
        tokenizer,
        prompts,
        num_samples=num_samples,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        desc=desc,
    )


def greedy_accuracy(model, tokenizer, test, max_new_tokens: int, batch_size: int = 64) -> list[float]:
    """Per-problem reward (0/1) of greedy completions."""
    completions = generate(model, tokenizer, test["prompt"], max_new_tokens=max_new_tokens, batch_size=batch_size)
    return word_problem_reward([c[0] for c in completions], test["answer"])


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean."""
    mean = statistics.mean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


# ----------------------------------------------------------------------------------------------------------
# base: greedy accuracy and pass@k of the untrained model
# ----------------------------------------------------------------------------------------------------------


def run_base(args) -> None:
    """One result file per (setting, stage): `greedy` on `--n_test` problems, `pass` (pass@k) on `--n_pass`."""
    model, tokenizer = load_real_model()
    for stage in args.stages:
        for setting in args.settings:
            name = "greedy" if stage == "greedy" else f"pass{args.k}-n{args.n_pass}"
            path = Path(args.output_dir) / "base" / f"{setting}-{name}-t{args.max_new_tokens}.json"
            if path.is_file():
                continue
            torch.manual_seed(0)
            start = time.perf_counter()
            result = {"setting": setting, "max_new_tokens": args.max_new_tokens}
            if stage == "greedy":
                test = test_split(setting, args.n_test)
                greedy = greedy_accuracy(model, tokenizer, test, args.max_new_tokens)
                by_steps = {
                    k: [g for g, s in zip(greedy, test["steps"]) if s == k] for k in sorted(set(test["steps"]))
                }
                result |= {
                    "n_test": len(test),
                    "greedy": statistics.mean(greedy),
                    "greedy_per_steps": {str(k): statistics.mean(v) for k, v in by_steps.items()},
                }
            else:
                test = test_split(setting, args.n_pass)
                samples = generate(
                    model, tokenizer, list(test["prompt"]), max_new_tokens=args.max_new_tokens,
                    num_samples=args.k, desc=f"pass@{args.k} {setting}",
                )  # fmt: skip
                rewards = [word_problem_reward(s, [a] * len(s)) for s, a in zip(samples, test["answer"])]
                result |= {
                    "n_pass": len(samples),
                    "k": args.k,
                    "pass_at_k": statistics.mean([float(any(r)) for r in rewards]),
                    "sample_mean": statistics.mean([statistics.mean(r) for r in rewards]),
                    "example": samples[0][0],
                }
            result["seconds"] = time.perf_counter() - start
            _write_json(path, result)
            print(json.dumps(result), flush=True)
    print(base_table(args.output_dir))


def base_table(output_dir: str) -> str:
    rows: dict[str, dict] = {}
    for path in sorted((Path(output_dir) / "base").glob("*.json")):
        r = json.loads(path.read_text())
        rows.setdefault(f"{r['setting']}, {r['max_new_tokens']} tokens", {}).update(r)
    lines = [
        "| setting (instruction-steps, token cap) | greedy accuracy ± s.e. | problems | pass@k | mean sample reward "
        "| problems (pass@k) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        greedy = "-"
        if "greedy" in r:
            greedy = f"{r['greedy']:.3f} ± {math.sqrt(r['greedy'] * (1 - r['greedy']) / r['n_test']):.3f}"
        passed = f"pass@{r['k']} = {r['pass_at_k']:.3f}" if "k" in r else "-"
        sample = f"{r['sample_mean']:.3f}" if "k" in r else "-"
        lines.append(f"| {name} | {greedy} | {r.get('n_test', '-')} | {passed} | {sample} | {r.get('n_pass', '-')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# intervention: block attention to flow-top / random / flow-bottom reasoning tokens, count changed answers
# ----------------------------------------------------------------------------------------------------------


def answer_format_for(setting: str) -> str:
    """Where the flow's sinks are: `\\boxed{}` (or "The answer is") when the prompt asks for a box, else the last
    number, which is what `word_problem_reward` reads."""
    return "auto" if SETTINGS[setting][0] != "number" else r"regex:-?\d+(?:\.\d+)?"


def run_intervention(args) -> None:
    from hf_flowcredit.intervention import Trace, finished_traces, format_table, intervention_analysis

    folder = Path(args.output_dir) / "intervention" / args.setting
    model, tokenizer = load_real_model()
    answer_format = answer_format_for(args.setting)
    traces_file = folder / "traces.json"
    if not traces_file.is_file():
        prompts = test_split(args.setting, args.intervention_prompts)["prompt"]
        traces = finished_traces(
            model, tokenizer, prompts, max_new_tokens=args.trace_max_new_tokens, answer_format=answer_format,
            batch_size=32,
        )  # fmt: skip
        _write_json(traces_file, {"prompts": len(prompts), "traces": [vars(t) for t in traces]})
    # Only traces that ended (EOS before the token cap): in a cut trace the last number may be mid-reasoning, and
    # regenerating past the cap would change it with nothing blocked.
    traces = [Trace(**t) for t in json.loads(traces_file.read_text())["traces"]]
    traces = [t for t in traces if len(t.completion_ids) < args.trace_max_new_tokens][: args.intervention_traces]
    if len(traces) < args.intervention_traces:
        print(
            f"only {len(traces)} finished traces (asked for {args.intervention_traces}); raise --intervention_prompts"
        )
    units = [("none", 0), ("top", 0), ("bottom", 0)] + [("random", seed) for seed in args.random_seeds]
    for selection, seed in units:
        path = folder / f"{selection}-seed{seed}.json"
        if path.is_file():
            continue
        start = time.perf_counter()
        result = intervention_analysis(
            model,
            tokenizer,
            [],
            scorer="flow",
            fraction=args.fraction,
            selections=[selection],
            answer_format=answer_format,
            batch_size=32,
            seed=seed,
            traces=traces,
        )[selection]
        _write_json(path, {**result, "selection": selection, "seed": seed, "seconds": time.perf_counter() - start})
        print(format_table({selection: result}))
    print(intervention_table(args.output_dir, args.setting))


def intervention_table(output_dir: str, setting: str) -> str:
    folder = Path(output_dir) / "intervention" / setting
    rows: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*-seed*.json")):
        r = json.loads(path.read_text())
        rows.setdefault(r["selection"], []).append(r)
    names = {"none": "none (control)", "top": "flow-top", "bottom": "flow-bottom", "random": "random"}
    lines = ["| blocked 20% of reasoning tokens | answers changed | per seed | traces | tokens blocked (mean) |"]
    lines.append("|---|---|---|---|---|")
    for selection in ("top", "random", "bottom", "none"):
        if selection not in rows:
            continue
        rates = [r["changed_rate"] for r in rows[selection]]
        mean, error = mean_and_error(rates)
        n = int(rows[selection][0]["num_traces"])
        # one run: the binomial standard error over traces; several seeds: the standard error over seeds
        error = error if len(rates) > 1 else math.sqrt(mean * (1 - mean) / n)
        per_seed = ", ".join(f"{x:.3f}" for x in rates) if len(rates) > 1 else "-"
        lines.append(
            f"| {names[selection]} | {mean:.3f} ± {error:.3f} | {per_seed} | {n} | "
            f"{rows[selection][0]['blocked_tokens_mean']:.1f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# scorer_cost: flow scorer time and memory per sequence on the real model
# ----------------------------------------------------------------------------------------------------------


def run_scorer_cost(args) -> None:
    from benchmarks.flow_scoring import _return_freed_memory_to_the_os, measure
    from hf_flowcredit.intervention import Trace, _reasoning_scores

    _return_freed_memory_to_the_os()
    traces_file = Path(args.output_dir) / "intervention" / args.setting / "traces.json"
    if not traces_file.is_file():
        raise FileNotFoundError(f"{traces_file} is missing: run `intervention` first (it saves the real traces).")
    traces = [Trace(**t) for t in json.loads(traces_file.read_text())["traces"]]
    model, tokenizer = load_real_model()
    model.eval()
    lengths = [len(t.prompt_ids) + len(t.completion_ids) for t in traces]
    records = []
    for batch_size in args.cost_batch_sizes:
        chunk = traces[:batch_size]
        rows = [t.prompt_ids + t.completion_ids for t in chunk]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in rows])[:, None]).long()

        def forward(ids=ids, mask=mask):
            with torch.no_grad():
                return model(input_ids=ids, attention_mask=mask).logits

        cases = {
            "policy forward (logits, no grad)": forward,
            "flow scorer (middle layers)": lambda chunk=chunk: _reasoning_scores(model, tokenizer, chunk, "flow", 0),
            "entropy scorer": lambda chunk=chunk: _reasoning_scores(model, tokenizer, chunk, "entropy", 0),
        }
        measure(forward, 1)  # warm-up
        for name, run in cases.items():
            seconds, mib = measure(run, args.cost_repeats)
            records.append({"what": name, "batch": batch_size, "T": width, "seconds": seconds, "peak_mib": mib})
            print(records[-1])
    _write_json(
        Path(args.output_dir) / "scorer_cost.json",
        {"records": records, "threads": torch.get_num_threads(), "mean_length": statistics.mean(lengths)},
    )
    print(scorer_cost_table(args.output_dir))


def scorer_cost_table(output_dir: str) -> str:
    data = _read_json(Path(output_dir) / "scorer_cost.json")
    if data is None:
        return "(scorer_cost not run)"
    forward = {r["batch"]: r["seconds"] for r in data["records"] if r["what"].startswith("policy")}
    lines = ["| what | sequences | padded length | ms per sequence | ratio to the forward | peak extra MiB |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for r in data["records"]:
        lines.append(
            f"| {r['what']} | {r['batch']} | {r['T']} | {1000 * r['seconds'] / r['batch']:.1f} | "
            f"{r['seconds'] / forward[r['batch']]:.2f} | {r['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# grpo: GRPO vs FlowGRPO vs the random scorer, same budget, seeds; one result file per (method, seed)
# ----------------------------------------------------------------------------------------------------------


def run_name(args, method: str, seed: int) -> str:
    lora = f"lora{args.lora_r}" if args.lora_r else "full"
    temperature = "" if args.temperature == 1.0 else f"-t{args.temperature:g}"
    return (
        f"{args.setting}-{lora}-lr{args.learning_rate:g}-s{args.max_steps}-g{args.num_generations}"
        f"-b{args.per_device_train_batch_size}-c{args.max_completion_length}{temperature}/{method}-seed{seed}"
    )


class _ProgressLine(TrainerCallback):
    """`step, reward, step time` per logged step, so that a background run shows where it is."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "reward" in logs:
            print(
                f"step {state.global_step}/{state.max_steps} reward {logs['reward']:.3f} "
                f"step_time {logs.get('step_time', float('nan')):.1f}s",
                flush=True,
            )


def train_one(args, method: str, seed: int) -> dict:
    from peft import LoraConfig
    from transformers import PrinterCallback

    from hf_flowcredit import FlowGRPOConfig, FlowGRPOTrainer

    model, tokenizer = load_real_model()
    train = train_split(args.setting, args.n_train).remove_columns(["completion", "trace"])
    config = FlowGRPOConfig(
        output_dir=str(Path(args.output_dir) / "grpo_checkpoints" / run_name(args, method, seed)),
        token_scorer=METHOD_SCORERS[method],
        top_fraction=0.4,
        high_weight=1.5,
        answer_format=answer_format_for(args.setting),
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        warmup_steps=0,
        lr_scheduler_type="constant",
        temperature=args.temperature,
        num_generations=args.num_generations,
        per_device_train_batch_size=args.per_device_train_batch_size,
        steps_per_generation=1,
        max_completion_length=args.max_completion_length,
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,  # TRL's default bf16 autocast is slower on a CPU and would persist into evaluation
        seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    peft_config = None
    if args.lora_r:
        peft_config = LoraConfig(
            r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    trainer = FlowGRPOTrainer(
        model=model,
        reward_funcs=word_problem_reward,
        args=config,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.remove_callback(PrinterCallback)  # one short line per step instead of TRL's full log dicts
    trainer.add_callback(_ProgressLine())
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    # a fresh tokenizer: TRL's trainer changed the padding side of its own
    eval_tokenizer = AutoTokenizer.from_pretrained(real_model_path(), padding_side="left")
    test = test_split(args.setting, args.n_test)
    correct = greedy_accuracy(trainer.model, eval_tokenizer, test, args.max_new_tokens)
    log = trainer.state.log_history
    step_times = [e["step_time"] for e in log if "step_time" in e]
    return {
        "method": method,
        "seed": seed,
        "accuracy": statistics.mean(correct),
        "n_test": len(correct),
        "train_seconds": train_seconds,
        "mean_step_time": statistics.mean(step_times) if step_times else train_seconds / args.max_steps,
        "train_reward": [e["reward"] for e in log if "reward" in e],
        "answer_found_frac": [e["flow/answer_found_frac"] for e in log if "flow/answer_found_frac" in e],
        "log": log,
    }


def base_accuracy(args, compute: bool = True) -> dict | None:
    """Greedy held-out accuracy of the untrained model on the test split the GRPO runs are scored on: the `base`
    command's result when it used the same problems and token cap, else computed here (None if not `compute`)."""
    for path in (
        Path(args.output_dir) / "base" / f"{args.setting}-greedy-t{args.max_new_tokens}.json",
        Path(args.output_dir) / "grpo" / f"base-{args.setting}-n{args.n_test}-t{args.max_new_tokens}.json",
    ):
        result = _read_json(path)
        if result is not None and result["n_test"] == args.n_test:
            return {"accuracy": result.get("greedy", result.get("accuracy")), "n_test": result["n_test"]}
    if not compute:
        return None
    model, tokenizer = load_real_model()
    correct = greedy_accuracy(model, tokenizer, test_split(args.setting, args.n_test), args.max_new_tokens)
    _write_json(path, {"accuracy": statistics.mean(correct), "n_test": len(correct)})
    return {"accuracy": statistics.mean(correct), "n_test": len(correct)}


def run_grpo(args) -> None:
    base_accuracy(args)
    for seed in args.seeds:  # seed-major: a partial repro has every method at the first seeds
        for method in args.methods:
            path = Path(args.output_dir) / "grpo" / (run_name(args, method, seed) + ".json")
            if path.is_file():
                continue
            print(f"training {run_name(args, method, seed)}", flush=True)
            _write_json(path, train_one(args, method, seed))
            print(grpo_table(args), flush=True)
    print(grpo_table(args))


def grpo_table(args) -> str:
    base = base_accuracy(args, compute=False)
    if base is None:
        return "(no base accuracy yet: run `grpo`)"
    folder = Path(args.output_dir) / "grpo" / run_name(args, "x", 0).split("/")[0]
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    n = base["n_test"]
    base_error = math.sqrt(base["accuracy"] * (1 - base["accuracy"]) / n)
    lines = [
        f"Setting `{run_name(args, 'x', 0).split('/')[0]}`; held-out: {n} problems, greedy.",
        "",
        "| method | held-out accuracy, mean ± s.e. over seeds | per seed | gain over base, in base s.e. | "
        "mean step time (s) | step time / GRPO's, same seed: median (per seed) | token scoring per step: s (share) |",
        "|---|---|---|---|---|---|---|",
        f"| base model (no RL) | {base['accuracy']:.3f} ± {base_error:.3f} (binomial) | - | - | - | - | - |",
    ]
    grpo_step = {r["seed"]: r["mean_step_time"] for r in runs if r["method"] == "grpo"}
    for method in args.methods:
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        mean, error = mean_and_error([r["accuracy"] for r in mine])
        step = statistics.mean(r["mean_step_time"] for r in mine)
        # Each seed's run is timed against GRPO's run of the same seed; the median damps one pair that ran under a
        # different load, but on a shared machine read the scorer-share column, which no load changes.
        ratios = {r["seed"]: r["mean_step_time"] / grpo_step[r["seed"]] for r in mine if r["seed"] in grpo_step}
        ratio = (
            f"{statistics.median(ratios.values()):.2f}x (" + ", ".join(f"{v:.2f}" for v in ratios.values()) + ")"
            if ratios
            else "-"
        )
        per_seed = ", ".join(f"{r['seed']}: {r['accuracy']:.3f}" for r in mine)
        lines.append(
            f"| {method} | {mean:.3f} ± {error:.3f} | {per_seed} | {(mean - base['accuracy']) / max(base_error, 1e-9):+.1f} | "
            f"{step:.1f} | {ratio} | {scorer_share(mine)} |"
        )
    return "\n".join(lines)


def scorer_share(runs: list[dict]) -> str:
    """Seconds per step spent scoring tokens (the trainer's `flow/seconds`) and their share of the step, both timed
    inside the same steps: unlike the ratio to GRPO's separate run, this does not depend on the machine's load."""
    seconds = [entry["flow/seconds"] for run in runs for entry in run.get("log", []) if "flow/seconds" in entry]
    if not seconds:
        return "-"
    return f"{statistics.mean(seconds):.2f} ({statistics.mean(seconds) / statistics.mean(r['mean_step_time'] for r in runs):.1%})"


def run_all(args) -> None:
    """Everything, cheapest and most informative first; each stage skips what earlier runs finished."""
    stages = args.stages
    args.stages = ["greedy"]
    run_base(args)
    run_intervention(args)
    args.stages = [stage for stage in stages if stage != "greedy"]
    run_base(args)
    run_scorer_cost(args)
    run_grpo(args)
    run_summary(args)


def run_summary(args) -> None:
    print("## Base model\n")
    print(base_table(args.output_dir))
    print(f"\n## Intervention ({args.setting})\n")
    print(intervention_table(args.output_dir, args.setting))
    print("\n## Scorer cost\n")
    print(scorer_cost_table(args.output_dir))
    print("\n## GRPO\n")
    print(grpo_table(args))


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["all", "base", "intervention", "scorer_cost", "grpo", "summary"])
    parser.add_argument("--output_dir", default="runs/real_flow")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["number-1", "boxed-1"],
        choices=list(SETTINGS),
        help="base: the settings compared.",
    )
    parser.add_argument(
        "--setting",
        default="number-1",
        choices=list(SETTINGS),
        help="intervention / grpo: the task and prompt used.",
    )
    parser.add_argument("--n_test", type=int, default=500, help="Held-out problems (greedy accuracy).")
    parser.add_argument("--n_pass", type=int, default=64, help="base: problems for pass@k.")
    parser.add_argument(
        "--stages",
        nargs="+",
        default=["greedy", "pass"],
        choices=["greedy", "pass"],
        help="base: greedy accuracy and/or pass@k.",
    )
    parser.add_argument("--k", type=int, default=8, help="base: samples per problem for pass@k.")
    parser.add_argument("--max_new_tokens", type=int, default=48, help="Token cap of greedy/sampled answers.")
    # intervention
    parser.add_argument("--intervention_prompts", type=int, default=256, help="Prompts traced (those answered kept).")
    parser.add_argument("--intervention_traces", type=int, default=128, help="Traces intervened on (at most).")
    parser.add_argument("--trace_max_new_tokens", type=int, default=64, help="Token cap of the traced answers.")
    parser.add_argument("--fraction", type=float, default=0.2, help="Fraction of reasoning tokens blocked.")
    parser.add_argument("--random_seeds", nargs="+", type=int, default=[0, 1, 2])
    # scorer_cost
    parser.add_argument("--cost_batch_sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--cost_repeats", type=int, default=3)
    # grpo
    parser.add_argument("--methods", nargs="+", default=list(METHOD_SCORERS), choices=list(METHOD_SCORERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max_steps", type=int, default=40, help="Optimizer steps per run (the same for all).")
    parser.add_argument(
        "--learning_rate", type=float, default=2e-5, help="2e-5 with temperature 0.7: GRPO beats the base model."
    )
    parser.add_argument("--lora_r", type=int, default=0, help="LoRA rank (all linear layers); 0: full fine-tuning.")
    parser.add_argument("--num_generations", type=int, default=8, help="Completions per prompt.")
    parser.add_argument("--per_device_train_batch_size", type=int, default=8, help="Completions per step.")
    parser.add_argument("--max_completion_length", type=int, default=48)
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="Sampling temperature of the rollouts (1.0: no gain over base)."
    )
    parser.add_argument("--n_train", type=int, default=2000)
    args = parser.parse_args(argv)
    for name in ("n_test", "n_pass", "k", "max_new_tokens", "max_steps", "num_generations", "intervention_traces"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.per_device_train_batch_size % args.num_generations:
        parser.error("--per_device_train_batch_size must be a multiple of --num_generations (whole groups per step).")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    real_model_path()  # convert once before anything else (a clear error if the package is missing)
    commands = {
        "base": run_base,
        "intervention": run_intervention,
        "scorer_cost": run_scorer_cost,
        "grpo": run_grpo,
        "summary": run_summary,
        "all": run_all,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()
