"""Draw one completion coloured by its FlowTracer score (the picture in the README).

    python -m examples.repro.plot_flow_example --real_model --output docs/flow_example.png   # the README's picture
    python -m examples.repro.plot_flow_example --output runs/flow_example_tiny.png          # the tiny SFT model
    python -m examples.repro.plot_flow_example --model_dir runs/sft/model --output runs/flow_example.png

With `--real_model` the completion is a real greedy answer of SmolLM2-135M-Instruct (`kit.real_model`) to a
held-out word problem (the first of `--seed`'s problems that it answers correctly), scored from the prompt to its
final number. Otherwise it trains (or reuses) the tiny SFT model of `examples.repro.demo_sft` under `--sft_dir` (or loads
`--model_dir`) and scores the arithmetic task's worked trace up to its `\\boxed{}` answer. The top 40% of the tokens
(the ones GRPO would up-weight) are underlined. An HTML version is written beside the PNG.
"""

from __future__ import annotations

import argparse
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_flowcredit import ScoringBatch, answer_token_mask, get_scorer, select_weights
from hf_flowcredit.viz import render_html, render_png, token_strings
from kit.tiny import make_task_dataset


def scored_example(model, tokenizer, messages: list[dict], completion: str, layers="middle", answer_format="auto"):
    """Flow scores, answer mask and selected mask over the tokens of `completion` answering the chat `messages`."""
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    prompt_ids = list(prompt_ids["input_ids"])
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    answer, missing = answer_token_mask(
        [completion], torch.tensor([completion_ids]), tokenizer, answer_format=answer_format
    )
    if missing.any():
        raise ValueError(f"No answer found in the completion {completion!r}.")
    prompt_mask = torch.tensor([[True] * len(prompt_ids) + [False] * len(completion_ids)])
    batch = ScoringBatch(
        input_ids=torch.tensor([prompt_ids + completion_ids]),
        attention_mask=torch.ones(1, len(prompt_ids) + len(completion_ids), dtype=torch.long),
        prompt_mask=prompt_mask,
        completion_mask=~prompt_mask,
        answer_mask=torch.cat([torch.zeros(1, len(prompt_ids), dtype=torch.bool), answer], dim=1),
    )
    scores = get_scorer("flow", layers=layers)(model, batch)
    selected = select_weights(scores, batch.completion_mask) > 1.0
    completion_part = slice(len(prompt_ids), None)
    return (
        token_strings(tokenizer, completion_ids),
        scores[0, completion_part],
        answer[0],
        selected[0, completion_part],
    )


def real_model_example(seed: int, layers="middle", candidates: int = 8):
    """`scored_example` of the real model's own greedy answer to the first of `candidates` held-out word problems
    that it answers correctly, with the last number as the answer (the flow's sinks)."""
    from examples.repro.real_flow import answer_format_for, generate
    from kit.real_model import load_real_model, make_word_problem_dataset, word_problem_reward

    model, tokenizer = load_real_model()
    test = make_word_problem_dataset(candidates, seed=seed, split="test", instruction="number", max_steps=1)
    completions = [c[0] for c in generate(model, tokenizer, list(test["prompt"]), max_new_tokens=48)]
    correct = word_problem_reward(completions, test["answer"])
    if not any(correct):
        raise ValueError(
            f"None of the {candidates} problems of seed {seed} was answered correctly; try another --seed."
        )
    i = correct.index(1.0)
    scored = scored_example(
        model, tokenizer, test[i]["prompt"], completions[i].strip(), layers, answer_format_for("number-1")
    )
    return (*scored, test[i]["problem"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="docs/flow_example.png", help="PNG path (the HTML goes beside it).")
    parser.add_argument(
        "--model_dir", default=None, help="A saved causal LM + tokenizer; default: the tiny SFT model."
    )
    parser.add_argument("--sft_dir", default="runs/sft", help="Where the tiny SFT model is trained or reused.")
    parser.add_argument("--seed", type=int, default=3, help="Which held-out problem(s) to draw.")
    parser.add_argument(
        "--real_model", action="store_true", help="Score a greedy answer of the real model (SmolLM2-135M-Instruct)."
    )
    parser.add_argument("--layers", default="middle", help="Layers whose attention is used (preset name).")
    args = parser.parse_args(argv)

    if args.real_model:
        tokens, scores, answer, selected, problem = real_model_example(args.seed, args.layers)
        title = f"SmolLM2-135M-Instruct, flow throughput, prompt -> answer: {problem}"
    else:
        model_dir = args.model_dir
        if model_dir is None:
            from kit.teacher import train_tiny_sft

            model_dir = train_tiny_sft(args.sft_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        row = make_task_dataset("arithmetic", n=1, seed=args.seed, split="test", max_ops=3)[0]
        tokens, scores, answer, selected = scored_example(model, tokenizer, row["prompt"], row["trace"], args.layers)
        title = f"Flow throughput, prompt -> answer: {row['problem']}"

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    render_png(tokens, scores, answer_mask=answer, selected_mask=selected, title=title, path=args.output)
    html_path = os.path.splitext(args.output)[0] + ".html"
    with open(html_path, "w") as f:
        f.write(render_html(tokens, scores, answer_mask=answer, selected_mask=selected, title=title))
    print(f"wrote {args.output} and {html_path}")
    for token, score, is_selected in zip(tokens, scores.tolist(), selected.tolist()):
        print(f"{token!r:>12} {score:8.4f} {'*' if is_selected else ''}")


if __name__ == "__main__":
    main()
