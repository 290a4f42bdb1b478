"""examples/scripts/flowcredit_grpo.py: the tiny YAML recipe parses into FlowGRPOConfig and trains end to end."""

from pathlib import Path

from transformers import AutoModelForCausalLM
from trl import ModelConfig, TrlParser

from examples.scripts.flowcredit_grpo import FlowGRPOScriptArguments, main
from hf_flowcredit import FlowGRPOConfig
from kit.tiny import build_tokenizer, tiny_causal_lm

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"


def _parse(argv):
    return TrlParser((FlowGRPOScriptArguments, FlowGRPOConfig, ModelConfig)).parse_args_and_config(argv)


def test_gpu_recipe_parses():
    # bf16 is switched off only because this test machine has no GPU (TrainingArguments checks the hardware).
    argv = ["--config", str(RECIPES / "flowcredit_grpo_qwen3.yaml"), "--bf16", "false", "--use_cpu", "true"]
    script_args, training_args, model_args = _parse(argv)
    assert model_args.model_name_or_path == "Qwen/Qwen3-4B" and model_args.use_peft
    assert training_args.token_scorer == "flow" and training_args.high_weight == 1.5
    assert training_args.flow_max_length == 8192 and script_args.reward_funcs == ["accuracy_reward"]


def test_tiny_recipe_trains(tmp_path):
    model_dir = tmp_path / "model"
    tokenizer = build_tokenizer()
    tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1).save_pretrained(
        model_dir
    )
    tokenizer.save_pretrained(model_dir)
    output_dir = tmp_path / "out"
    argv = [
        "--config", str(RECIPES / "flowcredit_grpo_tiny.yaml"),
        "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir),
        "--max_steps", "2", "--steps_per_generation", "1", "--max_completion_length", "12",
        "--num_train_samples", "8", "--token_scorer", "entropy", "--disable_tqdm", "true",
    ]  # fmt: skip
    script_args, training_args, model_args = _parse(argv)
    assert training_args.top_fraction == 0.4 and training_args.missing_answer == "uniform"
    main(script_args, training_args, model_args)
    trained = AutoModelForCausalLM.from_pretrained(output_dir)
    assert trained.config.num_hidden_layers == 3


def test_cpu_quickstart_in_the_docs_is_the_script():
    """docs/hf_flowcredit.md shows examples/scripts/flowcredit_cpu_quickstart.py as it is (its timing is measured)."""
    import re

    script = (RECIPES.parent / "scripts" / "flowcredit_cpu_quickstart.py").read_text()
    body = script.split('"""', 2)[2].strip()  # the code after the module docstring
    docs = (RECIPES.parents[1] / "docs" / "hf_flowcredit.md").read_text().split("## On a CPU", 1)[1]
    assert re.search(r"```python\n(.*?)```", docs, re.S).group(1).strip() == body
