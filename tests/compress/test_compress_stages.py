"""Crash safety of `run_stage`: shards and results are published atomically, and damaged ones are redone."""

import glob
import json
import os

import pytest
from datasets import Dataset

from hf_compress import inputs, stages
from hf_compress.constants import SHARDS_DIR, STAGE_FILE
from hf_compress.stages import run_stage


class Doubler:
    """A stage's shard function that records which shards it computed, and can crash on one of them."""

    def __init__(self, crash_on: int | None = None):
        self.crash_on = crash_on
        self.calls: list[int] = []

    def __call__(self, shard: Dataset, index: int, progress) -> Dataset:
        if index == self.crash_on:
            raise RuntimeError("crash")
        self.calls.append(index)
        progress.update(len(shard))
        return shard.map(lambda row: {"doubled": 2 * row["x"]}, keep_in_memory=True)


def numbers(n: int = 10) -> Dataset:
    return Dataset.from_dict({"x": list(range(n))})


def run(output_dir, shard_function, data=None):
    return run_stage(
        data or numbers(), shard_function, stage="double", arguments={"factor": 2}, output_dir=output_dir, shard_size=3
    )


def truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_an_input_that_is_neither_a_folder_here_nor_on_the_hub_is_named(tmp_path, monkeypatch):
    def offline(source, split):
        raise ConnectionError(f"Couldn't reach {source!r} on the Hub")

    monkeypatch.setattr(inputs, "load_dataset", offline)
    for path in (str(tmp_path / "typo"), "./typo", "runs/c/typo"):  # paths, never Hub ids: no Hub request
        with pytest.raises(FileNotFoundError, match="is not a folder here"):
            inputs.load_input(path)
    with pytest.raises(FileNotFoundError, match=r"out/typo is not a folder here.*did not give it.*Couldn't reach"):
        inputs.load_input("out/typo")  # could be a Hub id `org/name`: asked, and both failures named
    monkeypatch.setattr(inputs, "load_dataset", lambda source, split: pytest.fail(f"asked the Hub for {source}"))
    with pytest.raises(FileNotFoundError):
        inputs.load_input(str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="tokenizer runs/sft/typo is not a folder here"):
        inputs.load_tokenizer("runs/sft/typo")


def test_a_truncated_shard_is_detected_and_redone(tmp_path):
    output = str(tmp_path / "out")
    with pytest.raises(RuntimeError, match="crash"):
        run(output, Doubler(crash_on=2))  # shards 0 and 1 are saved, then the process "dies"
    shard_dir = os.path.join(output, SHARDS_DIR)
    assert sorted(n for n in os.listdir(shard_dir) if n.startswith("shard-")) == [
        "shard-00000-of-00004",
        "shard-00001-of-00004",
    ]
    truncate(glob.glob(os.path.join(shard_dir, "shard-00000-of-00004", "*.arrow"))[0])  # e.g. power loss

    resumed = Doubler()
    result = run(output, resumed)
    assert resumed.calls == [0, 2, 3]  # the damaged shard is redone, the intact one reused
    assert result["doubled"] == run(None, Doubler())["doubled"] == [2 * x for x in range(10)]


def test_a_damaged_result_or_record_is_detected_and_redone(tmp_path):
    output = str(tmp_path / "out")
    run(output, Doubler())
    truncate(glob.glob(os.path.join(output, "*.arrow"))[0])
    again = Doubler()
    assert run(output, again)["doubled"] == [2 * x for x in range(10)] and again.calls == [0, 1, 2, 3]

    truncate(os.path.join(output, STAGE_FILE))  # not valid JSON any more
    again = Doubler()
    assert run(output, again)["doubled"] == [2 * x for x in range(10)] and again.calls == [0, 1, 2, 3]
    cached = Doubler()
    assert len(run(output, cached)) == 10 and cached.calls == []  # intact now: reused


def test_a_crash_before_the_record_is_written_resumes_from_the_shards(tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    write = stages.write_json_atomically

    def crash_on_the_record(path, content):
        if path.endswith(STAGE_FILE):
            raise KeyboardInterrupt  # the result's data files are on disk, its record is not
        write(path, content)

    monkeypatch.setattr(stages, "write_json_atomically", crash_on_the_record)
    with pytest.raises(KeyboardInterrupt):
        run(output, Doubler())
    monkeypatch.setattr(stages, "write_json_atomically", write)
    assert not os.path.exists(os.path.join(output, STAGE_FILE))
    resumed = Doubler()
    assert run(output, resumed)["doubled"] == [2 * x for x in range(10)] and resumed.calls == []


def test_leftovers_of_a_killed_save_are_cleaned_and_a_damaged_shard_list_restarts(tmp_path):
    output = str(tmp_path / "out")
    with pytest.raises(RuntimeError):
        run(output, Doubler(crash_on=1))
    shard_dir = os.path.join(output, SHARDS_DIR)
    os.makedirs(os.path.join(shard_dir, "tmp-shard-00001-of-00004-999"))  # a save killed before its rename
    resumed = Doubler()
    assert len(run(output, resumed)) == 10 and resumed.calls == [1, 2, 3]

    output = str(tmp_path / "other")
    with pytest.raises(RuntimeError):
        run(output, Doubler(crash_on=1))
    with open(os.path.join(output, SHARDS_DIR, "shards.json"), "w") as f:
        f.write('{"stage": "dou')  # truncated: its shards cannot be attributed to a run
    resumed = Doubler()
    assert len(run(output, resumed)) == 10 and resumed.calls == [0, 1, 2, 3]


def test_a_shard_or_result_without_rows_is_saved_loadably(tmp_path):
    def drop_all(shard, index, progress):
        progress.update(len(shard))
        return shard.filter(lambda row: False, keep_in_memory=True)

    result = run(str(tmp_path / "out"), drop_all)
    assert len(result) == 0 and result.column_names == ["x"]
    with open(os.path.join(tmp_path, "out", STAGE_FILE)) as f:
        assert json.load(f)["files"]  # the empty result still has its (empty) data file and digests
