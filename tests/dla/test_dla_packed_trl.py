"""DLA models in TRL's packed training paths: `SFTTrainer(padding_free=True)`, `SFTTrainer(packing=True)`, and
`hf-compress sft` (which always packs) with a saved DLA student loaded through its own modeling code.

The loss TRL computes on a packed batch equals the loss of its documents run one by one (computed by hand), and
so do the gradients; without the document boundaries the loss differs, which is what the trainer used to train on.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from hf_compress.cli import main as hf_compress_main
from hf_dla import DLAConfig, DLAForCausalLM
from kit.tiny import build_tokenizer, make_task_dataset

TINY_RECIPE = str(Path(__file__).parents[2] / "examples" / "recipes" / "sft_tiny_student.yaml")


def tiny_dla(tokenizer, memory="dla", mixer="gated_deltanet"):
    config = DLAConfig(
        mixer=mixer, memory=memory, max_states=8, merge_threshold=0.6, chunk_size=16,
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_heads=2, head_dim=32, state_size=16,
        intermediate_size=64, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = DLAForCausalLM(config)
    with torch.no_grad():  # lambda away from 1, so that the slots matter
        for name, parameter in model.named_parameters():
            if "read_weights.proj.weight" in name:
                parameter.normal_(0.0, 0.3)
    return model


def text_dataset(n=12):
    rows = make_task_dataset("arithmetic", n, seed=0)
    return Dataset.from_dict({"text": [row["prompt"][-1]["content"] + " " + row["answer"] for row in rows]})


def documents_of(batch):
    """Split TRL's padding-free row (1, T) at its position resets: [(input_ids, labels)] per document."""
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    return [(batch["input_ids"][:, a:b], batch["labels"][:, a:b]) for a, b in zip(starts, starts[1:])]


def loss_by_hand(model, documents):
    """Mean next-token cross-entropy over the documents, each run alone."""
    total, count = 0.0, 0
    for input_ids, labels in documents:
        logits = model(input_ids).logits[0, :-1]
        targets = labels[0, 1:]
        total = total + F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
        count += int((targets != -100).sum())
    return total / count


@pytest.mark.parametrize(
    "packing_args", [{"padding_free": True, "max_length": None}, {"packing": True, "max_length": 64}], ids=str
)
def test_sft_trainer_packed_loss_and_gradients_equal_documents_alone(tmp_path, packing_args):
    tokenizer = build_tokenizer()
    model = tiny_dla(tokenizer)
    args = SFTConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3,
        report_to="none", save_strategy="no", use_cpu=True, seed=0, bf16=False, disable_tqdm=True,
        **packing_args,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=text_dataset(), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    documents = documents_of(batch)
    assert batch["input_ids"].shape[0] == 1 and len(documents) >= 4  # several documents in one row

    def gradients(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    packed_loss = trainer.compute_loss(model, batch)
    hand_loss = loss_by_hand(model, documents)
    torch.testing.assert_close(packed_loss, hand_loss, rtol=1e-5, atol=1e-6)
    packed_grads, hand_grads = gradients(packed_loss), gradients(hand_loss)
    for name, grad in hand_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    # The same row without its boundaries is what a model that drops position_ids trained on: other predictions.
    with torch.no_grad():
        unbounded = model(batch["input_ids"]).logits
        alone = torch.cat([model(input_ids).logits for input_ids, _ in documents], 1)
    assert (unbounded - alone).abs().max() > 1e-2

    trainer.train()
    assert trainer.state.global_step == 2 and torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


@pytest.mark.slow  # ~18 s on a loaded 2-core CPU: trains, saves and evaluates in a fresh process
def test_hf_compress_sft_trains_a_saved_dla_student(tmp_path):
    """`hf-compress sft` loads the student with its modeling code (trust_remote_code) and trains it packed."""
    tokenizer = build_tokenizer()
    student = tmp_path / "student"
    tiny_dla(tokenizer, memory="loglinear", mixer="mamba2").save_pretrained(student)  # 8 levels: 128 tokens
    tokenizer.save_pretrained(student)
    rows = make_task_dataset("arithmetic", 16, seed=0)
    messages = rows.map(lambda row: {"messages": row["prompt"] + row["completion"]}, remove_columns=rows.column_names)
    DatasetDict({"raw": messages}).save_to_disk(tmp_path / "built")
    out = tmp_path / "out"
    hf_compress_main(
        ["sft", TINY_RECIPE, "--model_name_or_path", str(student), "--trust_remote_code", "true",
         "--dataset_path", str(tmp_path / "built"), "--variant", "raw", "--output_dir", str(out), "--max_steps", "2"]
    )  # fmt: skip
    trained = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert trained.config.model_type == "dla" and trained.config.memory == "loglinear"
    before = AutoModelForCausalLM.from_pretrained(student, trust_remote_code=True)
    assert not torch.equal(trained.lm_head.weight, before.lm_head.weight)  # it trained

    # `hf-compress eval` in a fresh process (hf_compress never imports hf_dla) loads it with its saved code.
    make_task_dataset("arithmetic", 4, seed=0, split="test").save_to_disk(tmp_path / "test_set")
    command = [sys.executable, "-m", "hf_compress.cli", "eval", "--model", str(out), "--input", str(tmp_path / "test_set"),
               "--max_new_tokens", "4", "--trust_remote_code"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "eval.json").read_text())["n"] == 4
