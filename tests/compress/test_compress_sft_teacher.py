"""Content checks with a teacher that has learned the trace format: the foundation's tiny SFT model (slow).

The teacher is `train_tiny_sft(runs/sft)` with its default settings, the one `make demo-sft` trains: reused
when that run has finished, trained here (several minutes on a CPU) otherwise.
"""

import pytest

from kit.tiny import arithmetic_reward, make_task_dataset
from tests.conftest import TEACHER_TIMEOUT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(TEACHER_TIMEOUT)]


def test_pipeline_on_traces_of_a_trained_teacher(trained_teacher, tmp_path):
    from hf_compress import (
        ExtractiveCompressor,
        SamplingConfig,
        TransformersBackend,
        build,
        compress,
        generate,
        verify,
    )

    problems = make_task_dataset("arithmetic", 32, seed=5, split="test").select_columns(["problem", "answer"])
    backend = TransformersBackend(trained_teacher, batch_size=16)
    # The problem alone, as the tiny teacher was trained (the default template asks for \boxed{} in words).
    traces = generate(
        problems,
        backend,
        SamplingConfig(n=2, temperature=0.7, max_new_tokens=64),
        output_dir=str(tmp_path / "generate"),
        shard_size=16,
        prompt_template="{problem}",
    )
    assert all("\\boxed{" in g for g in traces["generation"])  # the teacher learned the format
    assert set(traces["finish_reason"]) == {"stop"}

    checked = verify(traces)
    # math-verify agrees with the kit's own reward, written independently, on every trace
    expected = [r == 1.0 for r in arithmetic_reward(list(traces["generation"]), list(traces["answer"]))]
    assert list(checked["correct"]) == expected

    compressed = compress(checked, ExtractiveCompressor(), backend.tokenizer)
    correct_rows = compressed.filter(lambda ok: ok, input_columns="correct")
    assert all(correct_rows["compressed_correct"])  # extraction never loses the answer of these traces
    assert all(r < 1 for r in compressed["token_ratio"])
    assert len(correct_rows) > 0  # the tiny teacher solves some problems (about 7% of samples at T=0.7)
    built = build(compressed, backend.tokenizer)
    assert {len(split) for split in built.values()} == {len(correct_rows)}
