"""Compress-Distill in miniature: does a student trained on compressed teacher traces keep the accuracy of one
trained on the full traces, at a lower training and inference cost?

    python -m examples.repro.demo_compress --output_dir runs/compress

1. Traces for the training problems of the embedded arithmetic task. `--traces teacher`: greedy traces of the
   tiny Qwen3 SFT model of `examples.repro.demo_sft` (reused from `--teacher_dir`, trained there if absent). It solves
   under a third of the problems, too few traces to distil from, so the default `--traces scripted` uses the
   task's worked solutions, each after a restatement of the problem as reasoning models write one: verified
   traces with prose for compression to remove.
2. Pipeline (`hf_compress`): verify the traces, compress them with the extractive compressor, build the four
   SFT variants: raw, compressed, answer_only and truncated (raw cut to the compressed length, answer kept).
3. Students, one per variant and per initialisation, trained for one epoch with `hf_compress.sft` and the recipe
   `examples/recipes/sft_tiny_student.yaml`:
   - `scratch`: a randomly initialised tiny Qwen3 (`kit.tiny.tiny_causal_lm`): must learn the task from the traces;
   - `teacher`: initialised from the teacher's weights (self-distillation): the traces reshape how it answers.
4. Every student is evaluated greedily on held-out problems (`hf_compress.evaluation`) and compared with
   `hf_compress.report`: accuracy, training tokens, training time and output tokens, as ratios to `raw`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass

import datasets
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_compress.backends import SamplingConfig, TransformersBackend
from hf_compress.build import VARIANTS, build
from hf_compress.compress import ExtractiveCompressor, compress
from hf_compress.evaluation import evaluate_student, save_evaluation
from hf_compress.generate import generate
from hf_compress.report import PLOT_FILE, load_runs, markdown_table, write_report
from hf_compress.sft import parse_recipe, train_student
from hf_compress.stages import read_stage_record
from hf_compress.verify import verify
from kit.teacher import train_tiny_sft
from kit.tiny import make_task_dataset, tiny_causal_lm

RECIPE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", "sft_tiny_student.yaml")
INITS = ("scratch", "teacher")


TRACE_SOURCES = ("scripted", "teacher")
# Reasoning models restate the problem before solving it; the scripted traces do too, so that compression has
# prose to remove and truncation to the compressed length has steps to lose.
RESTATEMENT = "Let me think step by step: {problem}"


@dataclass
class DemoSettings:
    traces: str = "scripted"  # the tiny teacher is right on too few problems to distil from (see report.md)
    n_train: int = 2000
    n_test: int = 500
    seed: int = 0
    max_new_tokens: int = 96  # teacher traces are under 40 tokens; the cap bounds students that never stop
    scratch_hidden_size: int = 128
    scratch_num_layers: int = 2
    scratch_learning_rate: float = 3e-3
    teacher_learning_rate: float = 5e-4


def build_variants(settings: DemoSettings, teacher_dir: str, data_dir: str) -> tuple[dict, dict]:
    """Traces -> verify -> compress -> build; returns the variants and each stage's statistics."""
    problems = make_task_dataset("arithmetic", settings.n_train, seed=settings.seed, split="train")
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    stages = {}
    if settings.traces == "teacher":
        traces = generate(
            problems.select_columns(["problem", "answer"]),
            TransformersBackend(teacher_dir, batch_size=128),
            SamplingConfig(n=1, temperature=0.0, max_new_tokens=settings.max_new_tokens, seed=settings.seed),
            output_dir=stages.setdefault("generate", os.path.join(data_dir, "generate")),
            problems_per_call=256,
            shard_size=1024,
            prompt_template="{problem}",  # the problem alone, as the tiny teacher was trained
        )
    else:  # the task's worked solutions, after a restatement, stand in for verified teacher traces
        traces = problems.map(
            lambda row: {"generation": RESTATEMENT.format(problem=row["problem"]) + " " + row["trace"]},
            remove_columns=["trace", "prompt", "completion"],
        )
    checked = verify(traces, output_dir=stages.setdefault("verify", os.path.join(data_dir, "verify")))
    compressed = compress(
        checked,
        ExtractiveCompressor(),
        tokenizer,
        output_dir=stages.setdefault("compress", os.path.join(data_dir, "compress")),
    )
    built = build(compressed, tokenizer, output_dir=stages.setdefault("build", os.path.join(data_dir, "build")))
    return built, {name: read_stage_record(folder)["stats"] for name, folder in stages.items()}


def new_student(init: str, settings: DemoSettings, teacher_dir: str):
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    if init == "teacher":
        return AutoModelForCausalLM.from_pretrained(teacher_dir), tokenizer
    model = tiny_causal_lm(
        "qwen3",
        tokenizer,
        hidden_size=settings.scratch_hidden_size,
        num_layers=settings.scratch_num_layers,
        seed=settings.seed,
    )
    return model, tokenizer


def train_and_evaluate(init: str, variant: str, built, test, settings: DemoSettings, teacher_dir: str, folder: str):
    """One student: trained on `variant`, evaluated on `test`; both summaries are written to `folder`."""
    learning_rate = settings.scratch_learning_rate if init == "scratch" else settings.teacher_learning_rate
    _, training_args, model_args = parse_recipe(
        RECIPE, output_dir=folder, learning_rate=learning_rate, seed=settings.seed
    )
    model, tokenizer = new_student(init, settings, teacher_dir)
    train_student(training_args, model_args, built[variant], variant=variant, model=model, tokenizer=tokenizer)
    summary, table = evaluate_student(folder, test, max_new_tokens=settings.max_new_tokens, batch_size=150)
    save_evaluation(summary, table, folder)


def teacher_accuracy(teacher_dir: str, test, settings: DemoSettings) -> dict:
    summary, _ = evaluate_student(teacher_dir, test, max_new_tokens=settings.max_new_tokens, batch_size=150)
    return summary


def write_demo_report(
    output_dir: str, settings: DemoSettings, stage_stats: dict, teacher: dict, tables: dict, seconds: float
) -> str:
    lines = [
        "# Compress-Distill trade-off miniature",
        "",
        f"Embedded arithmetic task; {settings.n_train} training problems, {settings.n_test} held-out test problems "
        f"(greedy, cap {settings.max_new_tokens} tokens). Teacher greedy accuracy on the test problems: "
        f"{teacher['accuracy']:.3f} ± {teacher['accuracy_stderr']:.3f}, {teacher['output_tokens_mean']:.1f} output "
        "tokens on average.",
        "",
        "Traces: "
        + (
            "the teacher's greedy traces."
            if settings.traces == "teacher"
            else "scripted (`Let me think step by step: <problem>` + the task's worked solution), standing in for "
            "verified teacher traces."
        ),
        "",
        "Pipeline: "
        + "; ".join(
            f"{stage}: "
            + ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in stats.items()
                if isinstance(v, (int, float))
            )
            for stage, stats in stage_stats.items()
            if stage != "build"  # per-variant figures: the tables below
        ),
        "",
        "Ratios in parentheses are relative to the student trained on `raw`; accuracy is ± one standard error.",
    ]
    for init, markdown in tables.items():
        title = "from scratch" if init == "scratch" else "initialised from the teacher (self-distillation)"
        lines += ["", f"## Students {title}", "", markdown, "", f"![{init}]({init}/{PLOT_FILE})"]
    lines += ["", f"Settings: `{json.dumps(asdict(settings))}`. Total time {seconds:.0f} s.", ""]
    report = "\n".join(lines)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(report)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/compress")
    parser.add_argument(
        "--teacher_dir", default="runs/sft", help="examples.repro.demo_sft output (trained if absent)."
    )
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    for name, value in asdict(DemoSettings()).items():
        choices = TRACE_SOURCES if name == "traces" else None
        parser.add_argument(f"--{name}", type=type(value), default=value, choices=choices)
    args = parser.parse_args(argv)
    settings = DemoSettings(**{name: getattr(args, name) for name in asdict(DemoSettings())})
    if settings.n_train < 1 or settings.n_test < 1:
        parser.error("--n_train and --n_test must be positive.")

    start = time.time()
    datasets.disable_progress_bars()  # the SFT data preparation is quick; keep the output to the tables
    torch.manual_seed(settings.seed)
    teacher_dir = train_tiny_sft(args.teacher_dir, seed=settings.seed)
    built, stage_stats = build_variants(settings, teacher_dir, os.path.join(args.output_dir, "data"))
    test = make_task_dataset("arithmetic", settings.n_test, seed=settings.seed, split="test")
    teacher = teacher_accuracy(teacher_dir, test, settings)

    tables = {}
    for init in args.inits:
        folders = [os.path.join(args.output_dir, init, variant) for variant in VARIANTS]
        for variant, folder in zip(VARIANTS, folders):
            print(f"[demo_compress] student {init}/{variant}")
            train_and_evaluate(init, variant, built, test, settings, teacher_dir, folder)
        title = f"Students {'from scratch' if init == 'scratch' else 'initialised from the teacher'}"
        table, _ = write_report(load_runs(folders), os.path.join(args.output_dir, init), title=title)
        tables[init] = markdown_table(table)
    print(write_demo_report(args.output_dir, settings, stage_stats, teacher, tables, time.time() - start))


if __name__ == "__main__":
    main()
