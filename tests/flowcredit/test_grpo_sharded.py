"""Single-process pieces of sharded scoring: forward counts, the filler batch, and the trainer's token weights with
`normalize_weights` (the 2-process runs are in test_grpo_distributed.py)."""

import pytest
import torch
from datasets import Dataset

from hf_flowcredit import FlowGRPOConfig, FlowGRPOTrainer
from hf_flowcredit.scoring import ScoringBatch, count_forwards, filler_batch, get_scorer
from kit.tiny import build_tokenizer, tiny_causal_lm

TOKENIZER = build_tokenizer()


def _batch(num_rows=5, length=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, len(TOKENIZER), (num_rows, length), generator=generator)
    positions = torch.arange(length)[None].expand(num_rows, -1)
    prompt_mask = positions < 3
    completion_mask = ~prompt_mask
    answer_mask = completion_mask & (positions >= length - 2)
    answer_mask[1] = False  # no answer: the flow scorer skips this row
    rewards = torch.arange(num_rows, dtype=torch.float)
    return ScoringBatch(
        input_ids, torch.ones_like(input_ids), prompt_mask, completion_mask, answer_mask, rewards,
        group_ids=torch.zeros(num_rows, dtype=torch.long),
    )  # fmt: skip


@pytest.mark.parametrize("name", ["flow", "attention", "entropy", "gradient", "random", "correlation"])
def test_count_forwards_matches_the_forwards_run_and_the_filler_runs_one(name, monkeypatch):
    import hf_flowcredit.scoring as scoring

    per_row = 10 * 10 if name in ("flow", "attention") else 10 * len(TOKENIZER)  # [T, T] attention or [T, V] logits
    monkeypatch.setattr(scoring, "BATCH_ELEMENTS", 2 * per_row)  # two rows per forward
    model = tiny_causal_lm("qwen3", TOKENIZER, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1)
    forwards = []
    model.model.embed_tokens.register_forward_hook(lambda *args: forwards.append(1))
    scorer = get_scorer(name)
    batch = _batch()
    expected = count_forwards(scorer, model, batch)
    scorer(model, batch)
    assert len(forwards) == expected
    assert expected == {"flow": 2, "random": 0, "correlation": 0}.get(name, 3)  # flow: 4 rows with an answer
    forwards.clear()
    filler = filler_batch(TOKENIZER.eos_token_id)
    scores = scorer(model, filler)
    assert len(forwards) == count_forwards(scorer, model, filler) == (0 if name in ("random", "correlation") else 1)
    assert scores.shape == (1, 2)


def _generation_output(completion_lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    width = max(completion_lengths)
    prompt_ids = torch.randint(5, len(TOKENIZER), (len(completion_lengths), 4), generator=generator)
    completion_ids = torch.randint(5, len(TOKENIZER), (len(completion_lengths), width), generator=generator)
    completion_mask = (torch.arange(width)[None] < torch.tensor(completion_lengths)[:, None]).long()
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids * completion_mask + TOKENIZER.pad_token_id * (1 - completion_mask),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -0.5, 0.25])[: len(completion_lengths)],
    }


@pytest.mark.parametrize("normalize", [False, True])
def test_trainer_normalize_weights(tmp_path, normalize):
    model = tiny_causal_lm("qwen3", TOKENIZER, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1)
    args = FlowGRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, report_to="none", use_cpu=True,
        token_scorer="random", missing_answer="last_tokens", normalize_weights=normalize,
    )  # fmt: skip
    trainer = FlowGRPOTrainer(
        model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        train_dataset=Dataset.from_dict({"prompt": ["unused"] * 4}), processing_class=TOKENIZER,
    )  # fmt: skip
    output = _generation_output([10, 7, 3])
    weights, stats = trainer._completion_token_weights(output)
    mask = output["completion_mask"].bool()
    means = (weights * mask).sum(-1) / mask.sum(-1)
    assert stats["selected_tokens"] == 4 + 3 + 2  # ceil(0.4 n) per completion, whether normalised or not
    if normalize:
        torch.testing.assert_close(means, torch.ones(3), atol=1e-6, rtol=0)
        assert sorted(set(weights[0][mask[0]].tolist())) == pytest.approx([1.0 / 1.2, 1.5 / 1.2])
    else:  # the paper's rule: 1.5 and 1.0, mean above 1
        assert set(weights[0][mask[0]].tolist()) == {1.5, 1.0} and means[0] == pytest.approx(1.2)
    assert (weights[~mask] == 0).all()
