"""FlowGRPOTrainer and the Hub, against the local Hub server (tests/hub_server.py, fixtures in tests/hub_fixtures.py):
push_to_hub after two steps of a tiny run (weights load back equal; the model card's metadata, FlowGRPO settings and
citation), and a missing or refused token or an unreachable Hub refused in one line when the trainer is built."""

import socket

import huggingface_hub.constants as hf_constants
import huggingface_hub.hf_api
import pytest
import torch
from datasets import Dataset, load_dataset
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from hf_flowcredit import FlowGRPOConfig, FlowGRPOTrainer
from kit.tiny import build_tokenizer, tiny_causal_lm

TOKENIZER = build_tokenizer()
PROMPTS = [f"Compute {a} + {b} =" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]


def _length_reward(completions, **kwargs):
    return [float(len(completion)) for completion in completions]  # varies across rollouts: non-zero advantages


def _args(tmp_path, **overrides) -> FlowGRPOConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, per_device_train_batch_size=4,
        num_generations=4, max_completion_length=8, max_steps=2, save_strategy="no", logging_steps=1,
        missing_answer="last_tokens", flow_layers="0,1", top_fraction=0.5, high_weight=2.0, seed=0,
    )  # fmt: skip
    return FlowGRPOConfig(**{**settings, **overrides})


def _tiny():
    return tiny_causal_lm("qwen3", TOKENIZER, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, seed=0)


@pytest.mark.slow  # two GRPO steps and five Hub round trips: 6-10 s on the loaded 2-core CPU
def test_push_to_hub_after_two_steps(hub_server, hub_env, tmp_path):
    base = "user/flowgrpo-tiny-base"
    _tiny().push_to_hub(base)
    TOKENIZER.push_to_hub(base)
    Dataset.from_dict({"prompt": PROMPTS}).push_to_hub("user/flowgrpo-prompts")
    train = load_dataset("user/flowgrpo-prompts", split="train")

    args = _args(tmp_path, push_to_hub=True, hub_model_id="user/flowgrpo-tiny")
    trainer = FlowGRPOTrainer(model=base, reward_funcs=_length_reward, args=args, train_dataset=train)
    trainer.train()
    assert trainer.state.global_step == 2
    trainer.push_to_hub(dataset_name="user/flowgrpo-prompts")

    reloaded = AutoModelForCausalLM.from_pretrained("user/flowgrpo-tiny")
    trained = trainer.model.state_dict()
    assert reloaded.state_dict().keys() == trained.keys()
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0, msg=name)

    card = ModelCard.load("user/flowgrpo-tiny")
    assert card.data.library_name == "transformers" and card.data.base_model == base
    assert card.data.datasets in ("user/flowgrpo-prompts", ["user/flowgrpo-prompts"])  # TRL writes one as a string
    assert {"trl", "grpo", "flowgrpo"} <= set(card.data.tags)
    for setting in (
        "| `token_scorer` | `'flow'` |",
        "| `top_fraction` | `0.5` |",
        "| `high_weight` | `2.0` |",
        "| `flow_layers` | `'0,1'` |",
    ):
        assert setting in card.text, setting
    assert card.text.index("### FlowGRPO settings") < card.text.index("### Framework versions")
    assert (
        "title        = {{How Does Reasoning Flow? Tracing Attention-Induced Information Flow for Targeted RL in LLMs}}"
        in card.text
    )  # the paper's citation
    assert "@article{shao2024deepseekmath" in card.text  # and GRPO's
    assert (hub_server.repo_dir("user/flowgrpo-tiny") / "README.md").read_text() == str(card)


def _build(tmp_path):
    return FlowGRPOTrainer(
        model=_tiny(), reward_funcs=_length_reward, train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        args=_args(tmp_path, push_to_hub=True, hub_model_id="user/flowgrpo-refused"), processing_class=TOKENIZER,
    )  # fmt: skip


def _one_line_error(tmp_path) -> str:
    with pytest.raises(RuntimeError) as error:
        _build(tmp_path)  # the trainer is never built: no training starts
    assert "\n" not in str(error.value) and str(error.value).startswith("push_to_hub: ")
    return str(error.value)


def test_without_a_token_the_trainer_is_not_built(hub_env, hub_server, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")  # and HF_HOME is fresh: no token file either
    assert f"no Hugging Face token found for {hub_server.endpoint}; log in with `hf auth login`" in _one_line_error(
        tmp_path
    )


def test_a_refused_token_is_one_line(hub_env, hub_server, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    assert f"{hub_server.endpoint} refused the Hugging Face token (401 Unauthorized)" in _one_line_error(tmp_path)


def test_an_unreachable_hub_is_one_line(hub_env, monkeypatch, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(hf_constants, "ENDPOINT", dead)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", dead)
    assert f"cannot reach the Hub at {dead} (ConnectError" in _one_line_error(tmp_path)


def test_the_repo_is_created_when_the_trainer_is_built(hub_env, hub_server, tmp_path):
    trainer = _build(tmp_path)
    assert trainer.hub_model_id == "user/flowgrpo-refused" and hub_server.meta("user/flowgrpo-refused")["refs"]


def test_a_read_only_token_is_one_line(hub_env, monkeypatch, tmp_path):
    from hf_flowcredit import grpo_trainer

    read_only = {"name": "user", "auth": {"type": "access_token", "accessToken": {"role": "read"}}}
    monkeypatch.setattr(grpo_trainer, "whoami", lambda token: read_only)
    assert "the Hugging Face token of 'user' is read-only; use a write token" in _one_line_error(tmp_path)
