# Compress-Distill end to end on GSM8K, for a GPU machine. Every stage is cached in --output_dir: rerun the same
# command after an interruption and finished stages (and finished teacher shards) are skipped.
#
#   pip install "hf-efficient-reasoning[vllm]"          # or serve the teacher and use --backend openai
#   python examples/scripts/compress_distill.py \
#       --teacher Qwen/Qwen3-8B --compressor Qwen/Qwen2.5-7B-Instruct --student Qwen/Qwen3-1.7B-Base \
#       --recipe examples/recipes/sft_lora_qwen3.yaml --output_dir runs/compress_distill
#
# Stages: teacher traces (vLLM) -> verify (math-verify) -> compress (the compressor LLM, answer re-verified)
# -> build (raw / compressed / answer_only / truncated) -> one student per variant with `hf_compress.sft`
# -> greedy evaluation on the GSM8K test split (8192-token cap) -> comparison table and plot.
"""Compress-Distill on GSM8K: teacher traces, compressed by an LLM, distilled into one student per variant."""

import gc
import os
from dataclasses import dataclass, field

import torch
from datasets import load_dataset
from trl import TrlParser

from hf_compress.backends import BackendConfig, SamplingConfig
from hf_compress.build import VARIANTS, build
from hf_compress.compress import LLMCompressor, compress
from hf_compress.evaluation import evaluate_student, save_evaluation
from hf_compress.generate import generate
from hf_compress.report import load_runs, write_report
from hf_compress.sft import CompressSFTArguments, parse_recipe, run_sft
from hf_compress.verify import verify


@dataclass
class CompressDistillArguments:
    teacher: str = field(default="Qwen/Qwen3-8B", metadata={"help": "Reasoning model that writes the traces."})
    compressor: str = field(default="Qwen/Qwen2.5-7B-Instruct", metadata={"help": "Model that rewrites them."})
    student: str = field(default="Qwen/Qwen3-1.7B-Base", metadata={"help": "Model trained on each variant."})
    recipe: str = field(default="examples/recipes/sft_lora_qwen3.yaml", metadata={"help": "SFT recipe (YAML)."})
    output_dir: str = field(default="runs/compress_distill")
    backend: str = field(default="vllm", metadata={"help": "vllm (offline engine) or openai (a running server)."})
    base_url: str | None = field(default=None, metadata={"help": "openai backend: the teacher server's URL."})
    samples_per_problem: int = field(default=4, metadata={"help": "Teacher samples per training problem."})
    temperature: float = field(default=0.6)
    max_new_tokens: int = field(default=8192, metadata={"help": "Token cap of teacher traces and evaluation."})
    num_train_problems: int | None = field(default=None, metadata={"help": "Use the first N problems (all: None)."})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))


def gsm8k(split: str, limit: int | None = None):
    """GSM8K with `problem` and a bare `answer` (the number after '####')."""
    data = load_dataset("openai/gsm8k", "main", split=split)
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return data.map(
        lambda row: {"problem": row["question"], "answer": row["answer"].split("####")[-1].strip().replace(",", "")},
        remove_columns=data.column_names,
    )


def release_gpu_memory():
    """vLLM engines keep their memory until collected; the next stage needs it."""
    gc.collect()
    torch.cuda.empty_cache()


def main(args: CompressDistillArguments):
    # The SFT recipe is used hours from now, after generation: a bad field must fail here, not then.
    parse_recipe(args.recipe, model_name_or_path=args.student, output_dir=args.output_dir)
    data_dir = os.path.join(args.output_dir, "data")
    problems = gsm8k("train", args.num_train_problems)

    teacher = BackendConfig(backend=args.backend, model=args.teacher, base_url=args.base_url).build()
    sampling = SamplingConfig(
        n=args.samples_per_problem, temperature=args.temperature, top_p=0.95, max_new_tokens=args.max_new_tokens
    )
    traces = generate(problems, teacher, sampling, output_dir=os.path.join(data_dir, "generate"))
    del teacher
    release_gpu_memory()
    checked = verify(traces, keep_only_correct=True, output_dir=os.path.join(data_dir, "verify"))

    compressor_backend = BackendConfig(backend=args.backend, model=args.compressor, base_url=args.base_url).build()
    compressed = compress(
        checked, LLMCompressor(compressor_backend), args.student, output_dir=os.path.join(data_dir, "compress")
    )
    del compressor_backend
    release_gpu_memory()
    build(compressed, args.student, variants=args.variants, output_dir=os.path.join(data_dir, "build"))

    test = gsm8k("test")
    students = []
    for variant in args.variants:
        folder = os.path.join(args.output_dir, "students", variant)
        if not os.path.exists(os.path.join(folder, "compress_sft.json")):
            _, training_args, model_args = parse_recipe(
                args.recipe, model_name_or_path=args.student, output_dir=folder
            )
            run_sft(
                CompressSFTArguments(dataset_path=os.path.join(data_dir, "build"), variant=variant),
                training_args,
                model_args,
            )
            release_gpu_memory()
        summary, table = evaluate_student(folder, test, max_new_tokens=args.max_new_tokens, batch_size=64)
        save_evaluation(summary, table, folder)
        students.append(folder)
    _, markdown = write_report(load_runs(students), os.path.join(args.output_dir, "report"))
    print(markdown)


if __name__ == "__main__":
    main(TrlParser(CompressDistillArguments).parse_args_and_config()[0])
