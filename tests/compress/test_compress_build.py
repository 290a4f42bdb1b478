"""The build stage: the four SFT variants, their selection of rows, truncation, card and cache."""

import os

import pytest
from datasets import Dataset, load_from_disk

from hf_compress.build import VARIANTS, build, load_variants, truncate_keeping_answer
from hf_compress.stages import StageMismatchError


def test_build_writes_four_aligned_variants(compressed_folder, tokenizer, tmp_path):
    source = load_from_disk(compressed_folder)
    built = build(source, tokenizer, output_dir=str(tmp_path / "build"))
    assert list(built) == list(VARIANTS)
    kept = source.filter(lambda r: r["correct"] and r["compressed_correct"])
    assert 0 < len(kept) < len(source)  # the server answers wrong for some seeds: those rows are left out
    for variant, split in built.items():
        assert set(split.column_names) == {"problem", "answer", "messages", "variant", "num_tokens"}
        assert list(split["problem"]) == list(kept["problem"])  # same problems, same order, in every variant
        assert set(split["variant"]) == {variant}
        for messages in split["messages"]:
            assert [m["role"] for m in messages] == ["user", "assistant"]
    raw, short = built["raw"], built["compressed"]
    assert [m[1]["content"] for m in raw["messages"]] == list(kept["generation"])
    assert [m[1]["content"] for m in short["messages"]] == list(kept["compressed"])
    for row, answer_only, truncated in zip(kept, built["answer_only"], built["truncated"]):
        assert answer_only["messages"][1]["content"] == f"\\boxed{{{row['answer']}}}"
        cut = truncated["messages"][1]["content"]
        assert cut.endswith(f"\\boxed{{{row['answer']}}}.") or cut.endswith(f"\\boxed{{{row['answer']}}}")
        assert truncated["num_tokens"] <= row["compressed_tokens"] + 2  # re-tokenizing a join may differ by one
        assert cut.split(" \\boxed")[0].rstrip(" .") in row["generation"]  # a prefix of the raw reasoning


def test_build_output_loads_per_variant_and_has_a_card(compressed_folder, tokenizer, tmp_path):
    output = str(tmp_path / "build")
    built = build(load_from_disk(compressed_folder), tokenizer, output_dir=output)
    assert {k: len(v) for k, v in load_variants(output).items()} == {k: len(v) for k, v in built.items()}
    for variant in VARIANTS:  # the contract with the SFT stage: one load_from_disk folder per variant
        assert load_from_disk(os.path.join(output, variant))[0]["variant"] == variant
    card = open(os.path.join(output, "README.md")).read()
    assert "teacher: `teacher`" in card and "compressor: `extractive-v1`" in card
    assert "**verify**: traces = 12" in card and "| truncated |" in card


def test_build_is_cached_and_refuses_other_arguments(compressed_folder, tokenizer, tmp_path):
    output = str(tmp_path / "build")
    build(load_from_disk(compressed_folder), tokenizer, output_dir=output)
    stamp = os.path.getmtime(os.path.join(output, "hf_compress_stage.json"))
    build(load_from_disk(compressed_folder), tokenizer, output_dir=output)
    assert os.path.getmtime(os.path.join(output, "hf_compress_stage.json")) == stamp
    with pytest.raises(StageMismatchError, match=r"\['variants'\]"):
        build(load_from_disk(compressed_folder), tokenizer, variants=["raw"], output_dir=output)
    build(load_from_disk(compressed_folder), tokenizer, variants=["raw"], output_dir=output, overwrite=True)
    assert sorted(os.listdir(output)) == ["README.md", "dataset_dict.json", "hf_compress_stage.json", "raw"]


def test_truncate_keeping_answer(tokenizer):
    trace = "First 1 + 2 = 3. Then 3 + 4 = 7. Then 7 + 5 = 12. Then 12 + 6 = 18. The answer is \\boxed{18}."
    cut = truncate_keeping_answer(trace, "18", 14, tokenizer)
    assert cut.endswith("\\boxed{18}") and trace.startswith(cut.split(" \\boxed")[0])
    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 15
    assert truncate_keeping_answer(trace, "18", 1000, tokenizer) == trace  # within budget: unchanged
    assert truncate_keeping_answer(trace, "18", 2, tokenizer) == "\\boxed{18}"  # only the answer fits


def test_build_needs_compress_output_for_compressed_variants(tokenizer):
    verified = Dataset.from_dict({"problem": ["p"], "answer": ["1"], "generation": ["\\boxed{1}"], "correct": [True]})
    with pytest.raises(ValueError, match="Run `compress` first"):
        build(verified, tokenizer)
    only_raw = build(verified, tokenizer, variants=["raw", "answer_only"])
    assert list(only_raw) == ["raw", "answer_only"]
    with pytest.raises(ValueError, match="Unknown variant"):
        build(verified, tokenizer, variants=["short"])
