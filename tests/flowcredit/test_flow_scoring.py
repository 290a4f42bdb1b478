"""Token scorers and select_weights: the contract the trainer relies on, and each scorer's definition."""

import math

import pytest
import torch

from hf_flowcredit import scoring
from hf_flowcredit.answer import answer_token_mask
from hf_flowcredit.attention import capture_attention
from hf_flowcredit.flow import flow_throughput
from hf_flowcredit.scoring import SCORERS, ScoringBatch, get_scorer, select_weights
from kit.tiny import build_tokenizer, tiny_causal_lm

PROMPTS = ["Compute 3 + 4 from left to right.", "Compute 12 - 5 * 2 from left to right."]
COMPLETIONS = [
    "3 + 4 = 7. The answer is \\boxed{7}.",
    "3 + 4 = 8. The answer is \\boxed{8}.",
    "12 - 5 = 7. 7 * 2 = 14. The answer is \\boxed{14}.",
    "12 - 5 = 7. Hmm.",  # no answer
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_causal_lm("qwen3", tokenizer, hidden_size=64, num_layers=4, seed=0)


def make_batch(tokenizer, extra_left=0, extra_right=0, seed=0):
    """TRL's layout: prompts left-padded, completions (ending in eos) right-padded; optionally wider padding."""
    prompts = [tokenizer(PROMPTS[row // 2])["input_ids"] for row in range(4)]
    completions = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in COMPLETIONS]
    prompt_width = max(map(len, prompts)) + extra_left
    completion_width = max(map(len, completions)) + extra_right
    pad = tokenizer.pad_token_id
    rows, prompt_rows, completion_rows = [], [], []
    for prompt, completion in zip(prompts, completions):
        left, right = prompt_width - len(prompt), completion_width - len(completion)
        rows.append([pad] * left + prompt + completion + [pad] * right)
        prompt_rows.append([0] * left + [1] * len(prompt) + [0] * completion_width)
        completion_rows.append([0] * prompt_width + [1] * len(completion) + [0] * right)
    input_ids = torch.tensor(rows)
    prompt_mask, completion_mask = torch.tensor(prompt_rows).bool(), torch.tensor(completion_rows).bool()
    answer, _ = answer_token_mask(COMPLETIONS, input_ids[:, prompt_width:], tokenizer)
    answer_mask = torch.cat([torch.zeros_like(prompt_mask[:, :prompt_width]), answer], dim=1)
    return ScoringBatch(
        input_ids=input_ids,
        attention_mask=(prompt_mask | completion_mask).long(),
        prompt_mask=prompt_mask,
        completion_mask=completion_mask,
        answer_mask=answer_mask,
        rewards=torch.tensor([1.0, 0.0, 1.0, 0.0]),
        group_ids=torch.tensor([0, 0, 1, 1]),
        seed=seed,
    )


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_every_scorer_keeps_the_contract(tokenizer, model, name):
    batch = make_batch(tokenizer)
    model.train()
    scores = get_scorer(name)(model, batch)
    assert scores.dtype == torch.float32 and scores.shape == batch.input_ids.shape
    assert torch.isfinite(scores).all()
    assert (scores[~batch.completion_mask] == 0).all()
    assert (scores[batch.completion_mask] != 0).any()
    assert model.training and model.config._attn_implementation == "sdpa"  # the model is left as it was
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize("name", ["flow", "attention", "entropy", "gradient"])
def test_model_scores_do_not_depend_on_padding(tokenizer, model, name):
    narrow, wide = make_batch(tokenizer), make_batch(tokenizer, extra_left=3, extra_right=2)
    scorer = get_scorer(name)
    narrow_scores, wide_scores = scorer(model, narrow), scorer(model, wide)
    torch.testing.assert_close(wide_scores[:, 3:-2], narrow_scores, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen3", "gpt2"])
def test_batched_rows_score_as_one_row_at_a_time(tokenizer, arch, monkeypatch):
    model = tiny_causal_lm(arch, tokenizer, hidden_size=64, num_layers=4, seed=1)  # GPT-2: absolute positions
    batch = make_batch(tokenizer, extra_left=2)
    assert len(list(batch.groups(lambda length: length * length))) == 1  # the whole batch in one forward
    together = {name: get_scorer(name)(model, batch) for name in ("flow", "attention", "entropy", "gradient")}
    monkeypatch.setattr(scoring, "BATCH_ELEMENTS", 1)  # now every row gets a forward of its own
    assert len(list(batch.groups(lambda length: length * length))) == 4
    for name, scores in together.items():
        torch.testing.assert_close(get_scorer(name)(model, batch), scores, atol=1e-5, rtol=1e-4, msg=name)


def test_flow_scores_are_the_throughput_from_prompt_to_answer(tokenizer, model):
    batch = make_batch(tokenizer)
    scores = get_scorer("flow", layers=[1, 2])(model, batch)
    real = batch.attention_mask[0].bool()
    ids = batch.input_ids[:1, real]
    attn = capture_attention(model, ids, layers=[1, 2])
    expected = flow_throughput(attn, batch.prompt_mask[:1, real], batch.answer_mask[:1, real])
    torch.testing.assert_close(scores[0, real], expected[0] * batch.completion_mask[0, real])
    assert (scores[3] == 0).all()  # no answer found: all-zero row, documented
    assert (scores[0, batch.answer_mask[0]] > 0).all()


def test_random_scores_are_reproducible_from_the_seed(tokenizer, model):
    scorer = get_scorer("random")
    first, again = scorer(model, make_batch(tokenizer, seed=1)), scorer(model, make_batch(tokenizer, seed=1))
    other = scorer(model, make_batch(tokenizer, seed=2))
    assert torch.equal(first, again) and not torch.equal(first, other)


def _unpadded_row(batch, row):
    real = batch.attention_mask[row].bool()
    return batch.input_ids[row : row + 1, real], batch.completion_mask[row, real], real


def test_entropy_is_the_next_token_distribution_entropy(tokenizer, model):
    batch = make_batch(tokenizer)
    scores = get_scorer("entropy")(model, batch)
    ids, completion, real = _unpadded_row(batch, 2)
    with torch.no_grad():
        probabilities = model.eval()(input_ids=ids).logits[0].float().softmax(-1)
    entropy = -(probabilities * probabilities.log()).sum(-1)  # entropy[t] belongs to token t + 1
    expected = torch.cat([torch.zeros(1), entropy[:-1]]) * completion
    torch.testing.assert_close(scores[2, real], expected, atol=1e-5, rtol=1e-5)


def test_gradient_is_the_embedding_gradient_of_the_completion_log_likelihood(tokenizer, model):
    batch = make_batch(tokenizer)
    scores = get_scorer("gradient")(model, batch)
    ids, completion, real = _unpadded_row(batch, 0)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    log_probs = model.eval()(inputs_embeds=embeds).logits[0, :-1].float().log_softmax(-1)
    log_likelihood = (log_probs.gather(-1, ids[0, 1:, None])[:, 0] * completion[1:]).sum()
    (gradient,) = torch.autograd.grad(log_likelihood, embeds)
    torch.testing.assert_close(scores[0, real], gradient[0].norm(dim=-1) * completion, atol=1e-5, rtol=1e-4)
    assert scores[0, real][-1] == 0  # the last token influences no later log-prob


def test_correlation_scores_token_reward_association_within_each_group():
    # Group 0: token 7 appears only in the rewarded rollout, token 5 in both; group 1: constant rewards.
    input_ids = torch.tensor([[1, 5, 7, 0], [1, 5, 6, 6], [1, 5, 7, 0], [1, 8, 9, 0]])
    attention_mask = (input_ids != 0).long()
    completion_mask = attention_mask.bool() & (torch.arange(4) > 0)
    batch = ScoringBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        prompt_mask=attention_mask.bool() & ~completion_mask,
        completion_mask=completion_mask,
        answer_mask=torch.zeros_like(completion_mask),
        rewards=torch.tensor([1.0, 0.0, 0.5, 0.5]),
        group_ids=torch.tensor([0, 0, 1, 1]),
    )
    scores = get_scorer("correlation")(None, batch)
    torch.testing.assert_close(scores[0], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(scores[1], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert (scores[2:] == 0).all()
    with pytest.raises(ValueError, match="rewards and ScoringBatch.group_ids"):
        get_scorer("correlation")(
            None,
            ScoringBatch(
                *[
                    getattr(batch, f)
                    for f in ("input_ids", "attention_mask", "prompt_mask", "completion_mask", "answer_mask")
                ]
            ),
        )


def test_select_weights_rule():
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]]).bool()
    scores = torch.tensor(
        [
            [9.0, 0.1, 0.5, 0.3, 0.5, 0.2, 9.0],  # 5 tokens -> ceil(2.0) = 2 selected; outside the mask ignored
            [0.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0],  # ties broken by position: 2.0 first, then the earliest 1.0
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # no signal (e.g. no answer): weight 1 everywhere
        ]
    )
    weights = select_weights(scores, mask)
    expected = torch.tensor(
        [[0, 1, 1.5, 1, 1.5, 1, 0], [0, 1.5, 1.5, 1, 1.5, 1, 1], [1, 1, 1, 0, 0, 0, 0]], dtype=torch.float32
    )
    torch.testing.assert_close(weights, expected)
    assert select_weights(scores, mask, top_fraction=1.0, high_weight=2.0)[0].tolist() == [0, 2, 2, 2, 2, 2, 0]
    weights = select_weights(torch.rand(1, 97, generator=torch.Generator().manual_seed(0)), torch.ones(1, 97))
    assert int((weights == 1.5).sum()) == math.ceil(0.4 * 97)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"top_fraction": 0.0}, "top_fraction"),
        ({"top_fraction": 1.5}, "top_fraction"),
        ({"high_weight": math.inf}, "high_weight"),
    ],
)
def test_select_weights_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        select_weights(torch.rand(2, 5), torch.ones(2, 5), **options)


def test_select_weights_rejects_bad_scores():
    with pytest.raises(ValueError, match="NaN"):
        select_weights(torch.tensor([[0.1, math.nan]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        select_weights(torch.rand(2, 5), torch.ones(2, 4))


def test_get_scorer_errors_and_options():
    assert get_scorer("flow", layers="late", block_size=64, renormalize=False).layers == "late"
    with pytest.raises(ValueError, match="Unknown token scorer 'flux'"):
        get_scorer("flux")
    with pytest.raises(ValueError, match="has no option"):
        get_scorer("random", layers="middle")


def test_scoring_batch_validation(tokenizer):
    batch = make_batch(tokenizer)
    fields = {name: getattr(batch, name) for name in ("input_ids", "attention_mask", "prompt_mask", "completion_mask")}
    with pytest.raises(ValueError, match="subset of completion_mask"):
        ScoringBatch(**fields, answer_mask=batch.prompt_mask)
    with pytest.raises(ValueError, match="shape"):
        ScoringBatch(**fields, answer_mask=batch.answer_mask[:, :-1])
    with pytest.raises(ValueError, match="overlap"):
        ScoringBatch(
            **{**fields, "completion_mask": batch.completion_mask | batch.prompt_mask}, answer_mask=batch.answer_mask
        )
    with pytest.raises(ValueError, match="rewards must have shape"):
        ScoringBatch(**fields, answer_mask=batch.answer_mask, rewards=torch.zeros(3))
