"""`build --push_to_hub` against the local Hub (tests/hub_server.py): one config per variant that `load_dataset`
reads back, a card with the pipeline statistics, no empty commit on a second push, the access check before any work
(wrong or missing token, Hub down: one line), and a failed push that keeps the local build."""

import json
import os
import subprocess
import sys

import pytest
from datasets import load_from_disk
from huggingface_hub import DatasetCard

from hf_compress.build import VARIANTS, build, load_variants
from hf_compress.cli import main
from hf_compress.hub import HubAccessError, HubPushError, check_push_access
from hf_compress.stages import read_stage_record
from kit.tiny import build_tokenizer, make_task_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HF_COMPRESS = os.path.join(os.path.dirname(sys.executable), "hf-compress")


def commits(hub_server, repo_id: str) -> int:
    return len(hub_server.meta(repo_id, "dataset")["commits"])


LOAD_BACK = """
import json, sys
from datasets import load_dataset
print(json.dumps({v: load_dataset(sys.argv[1], v, split="train").to_list() for v in sys.argv[2:]}))
"""


def test_build_pushes_one_config_per_variant_with_a_statistics_card(
    hub_server, hub_env, compressed_folder, tokenizer, tmp_path
):
    output = str(tmp_path / "build")
    build(load_from_disk(compressed_folder), tokenizer, output_dir=output, push_to_hub="user/variants")
    tree = sorted(
        p.relative_to(hub_server.repo_dir("user/variants", "dataset")).as_posix()
        for p in hub_server.repo_dir("user/variants", "dataset").rglob("*.parquet")
    )
    assert tree == sorted(f"{v}/train-00000-of-00001.parquet" for v in VARIANTS)

    card = DatasetCard.load("user/variants", repo_type="dataset")
    assert sorted(c["config_name"] for c in card.data["configs"]) == sorted(VARIANTS)
    assert {"hf-compress", "compress-distill"} <= set(card.data["tags"])
    compress_stats = read_stage_record(compressed_folder)["stats"]
    verify_stats = read_stage_record(os.path.join(os.path.dirname(compressed_folder), "verify"))["stats"]
    for line in (
        f"| pass rate (traces verified correct) | {verify_stats['pass_rate']:.3f} |",
        f"| answer kept after compression | {compress_stats['answer_kept_fraction']:.3f} |",
        f"| token ratio (compressed / raw, answer kept) | {compress_stats['token_ratio']:.3f} |",
        f"| char ratio (compressed / raw, answer kept) | {compress_stats['char_ratio']:.3f} |",
        'load_dataset("user/variants", "compressed", split="train")',
    ):
        assert line in card.text
    for variant in VARIANTS:
        assert f"| `{variant}` |" in card.text

    before = commits(hub_server, "user/variants")  # the repo's creation, one per variant, the card
    assert before == 1 + len(VARIANTS) + 1
    build(load_from_disk(compressed_folder), tokenizer, output_dir=output, push_to_hub="user/variants")
    assert commits(hub_server, "user/variants") == before  # nothing changed: no commit


@pytest.mark.slow
def test_pushed_configs_load_in_a_fresh_process_and_a_second_cli_push_makes_no_commit(
    hub_server, hub_env, compressed_folder, tmp_path
):
    output = str(tmp_path / "build")
    saved_tokenizer = str(tmp_path / "tokenizer")  # by path, as the command line below names it
    build(load_from_disk(compressed_folder), saved_tokenizer, output_dir=output, push_to_hub="user/reload")
    local = load_variants(output)

    # Another user's fresh process, with an empty cache, reads every config back as built here.
    result = subprocess.run(
        [sys.executable, "-c", LOAD_BACK, "user/reload", *VARIANTS],
        env=hub_env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {v: local[v].to_list() for v in VARIANTS}

    # The same build pushed again, from the command line in a fresh process: the build is reused from its folder,
    # every file is already on the Hub, and no commit is made.
    before = commits(hub_server, "user/reload")
    stamp = os.path.getmtime(os.path.join(output, "hf_compress_stage.json"))
    result = subprocess.run(
        [
            HF_COMPRESS,
            "build",
            "--input",
            compressed_folder,
            "--output",
            output,
            "--tokenizer",
            saved_tokenizer,
            "--push_to_hub",
            "user/reload",
        ],
        env=hub_env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert commits(hub_server, "user/reload") == before
    assert os.path.getmtime(os.path.join(output, "hf_compress_stage.json")) == stamp


def test_a_failed_push_keeps_the_local_build_and_a_rerun_pushes_it(
    hub_server, hub_env, compressed_folder, tokenizer, tmp_path, monkeypatch
):
    output = str(tmp_path / "build")
    # The access check passes, then the Hub stops accepting the token (revoked while the build ran).
    with monkeypatch.context() as patch, pytest.raises(HubPushError) as failed:
        patch.setattr("hf_compress.hub.check_push_access", lambda repo_id, *a, **k: repo_id)
        build(
            load_from_disk(compressed_folder),
            tokenizer,
            output_dir=output,
            push_to_hub="user/kept",
            token="hf_revoked",
        )
    message = str(failed.value)
    assert "user/kept" in message and hub_server.endpoint in message and output in message
    assert "\n" not in message and "HF_TOKEN" in message
    record = read_stage_record(output)
    assert record is not None and set(load_variants(output)) == set(VARIANTS)
    stamp = os.path.getmtime(os.path.join(output, "hf_compress_stage.json"))

    build(load_from_disk(compressed_folder), tokenizer, output_dir=output, push_to_hub="user/kept")
    assert os.path.getmtime(os.path.join(output, "hf_compress_stage.json")) == stamp  # reused, not rebuilt
    card = DatasetCard.load("user/kept", repo_type="dataset")
    assert sorted(c["config_name"] for c in card.data["configs"]) == sorted(VARIANTS)


def test_push_access_is_checked_before_any_work_in_one_line(
    hub_server, hub_env, compressed_folder, tmp_path, monkeypatch, capsys
):
    import huggingface_hub.constants

    argv = [
        "build",
        "--input",
        compressed_folder,
        "--output",
        str(tmp_path / "build"),
        "--tokenizer",
        str(tmp_path / "tokenizer"),
        "--push_to_hub",
        "user/checked",
    ]
    assert check_push_access("user/checked", "dataset") == "user/checked"  # creates the repo; no commit
    assert commits(hub_server, "user/checked") == 1

    cases = {
        "wrong token": ({"HF_TOKEN": "hf_wrong"}, None, "refused the token"),
        "no token": ({"HF_TOKEN": None}, None, "no Hugging Face token"),
        "Hub down": ({}, f"http://127.0.0.1:{_free_port()}", "cannot be reached"),
    }
    for case, (env, endpoint, expected) in cases.items():
        with monkeypatch.context() as patch:
            for var, value in env.items():
                patch.setenv(var, value) if value else patch.delenv(var)
            if endpoint:
                patch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
            with pytest.raises(SystemExit) as exit_info:
                main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, case
        assert err.count("\n") == 1 and expected in err and "user/checked" in err, (case, err)
        assert (endpoint or hub_server.endpoint) in err, (case, err)
        if case != "Hub down":
            assert "hf auth login" in err and "HF_TOKEN" in err, (case, err)
        assert not os.path.exists(tmp_path / "build"), case  # nothing built before the check
    with pytest.raises(HubAccessError, match="read-only|refused"):
        check_push_access("user/checked", "dataset", token="hf_wrong")


def test_run_with_a_wrong_token_stops_before_the_first_teacher_request(hub_server, hub_env, teacher_server, tmp_path):
    import yaml

    make_task_dataset("arithmetic", 4, seed=0).save_to_disk(str(tmp_path / "problems"))
    build_tokenizer().save_pretrained(str(tmp_path / "tokenizer"))
    recipe = {
        "output_dir": str(tmp_path / "pipeline"),
        "input": str(tmp_path / "problems"),
        "generate": {"backend": "openai", "model": "teacher", "base_url": teacher_server.base_url, "n": 2},
        "verify": {},
        "compress": {"compressor": "extractive", "tokenizer": str(tmp_path / "tokenizer")},
        "build": {"tokenizer": str(tmp_path / "tokenizer"), "push_to_hub": "user/run-variants"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run(
        [HF_COMPRESS, "run", str(tmp_path / "recipe.yaml")],
        env={**hub_env, "HF_TOKEN": "hf_x"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "user/run-variants" in lines[0] and hub_server.endpoint in lines[0], lines
    assert "HF_TOKEN" in lines[0]
    assert teacher_server.behaviour.requests == 0
    assert not os.path.exists(tmp_path / "pipeline" / "generate")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
