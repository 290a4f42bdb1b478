"""Publishing to the Hugging Face Hub: one check before any long work, and the pushes of `build` and `sft`.

`check_push_access(repo_id, repo_type)` runs first (at the start of `hf-compress run`, `build` and `sft`, and of
`hf_compress.build.build` / `hf_compress.sft.train_student` when asked to push): the token is there, the Hub
accepts it, it may write, and the repo exists (created when missing). Anything else is one line naming the repo, the
endpoint and the fix, raised as `HubAccessError` (a `ValueError`: exit code 2 on the command line) before an hour of
generation or training is spent on a result that could not be published.

A push that fails afterwards raises `HubPushError` (exit code 1) saying where the local result is kept. Pushing the
same result twice makes no second commit: `huggingface_hub` leaves out files whose content the repo already holds,
and sends no commit when none is left.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

LOGIN_FIX = "log in with `hf auth login` (or `huggingface-cli login`) or set HF_TOKEN to a token with write access"
# Tags on everything hf_compress publishes.
TAGS = ("hf-compress", "compress-distill")


class HubAccessError(ValueError):
    """The Hub cannot take a push (no or wrong token, read-only token, server unreachable, offline mode)."""


class HubPushError(RuntimeError):
    """A push failed after the local result was saved; the message says where it is kept."""


def _endpoint(api) -> str:
    return api.endpoint.rstrip("/")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def check_push_access(
    repo_id: str, repo_type: str = "model", *, token: str | None = None, private: bool | None = None
) -> str:
    """Make sure `repo_id` can be pushed to, before any long work; returns the full repo id (`namespace/name`).

    Checks, in one round trip each: a token is found (`token`, else HF_TOKEN or the saved login), the Hub accepts it
    (whoami), it is not read-only, and the repo exists or is created now (`create_repo(exist_ok=True)`, which makes
    no commit when it exists). Raises `HubAccessError` with one line naming the repo, the endpoint and the fix.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    if not repo_id or not isinstance(repo_id, str):
        raise HubAccessError(f"Cannot push: no repo named (got {repo_id!r}); pass a repo id such as `user/name`.")
    api = HfApi(token=token)
    where = f"{repo_type} repo {repo_id} on {_endpoint(api)}"
    try:
        me = api.whoami()
    except LocalTokenNotFoundError:
        raise HubAccessError(f"Cannot push to {where}: no Hugging Face token found; {LOGIN_FIX}.") from None
    except OfflineModeIsEnabled:
        raise HubAccessError(f"Cannot push to {where}: HF_HUB_OFFLINE is set; unset it to publish.") from None
    except HfHubHTTPError as error:
        if _status(error) in (401, 403):
            raise HubAccessError(
                f"Cannot push to {where}: the Hub refused the token ({_status(error)}: "
                f"{_one_line(error)}); {LOGIN_FIX}."
            ) from None
        raise HubAccessError(
            f"Cannot push to {where}: the Hub answered {_status(error)} to whoami "
            f"({_one_line(error)}); check HF_ENDPOINT and try again later."
        ) from None
    except Exception as error:  # noqa: BLE001 - connection refused, DNS, timeouts: any transport error
        raise HubAccessError(
            f"Cannot push to {where}: the Hub cannot be reached ({type(error).__name__}: "
            f"{_one_line(error)}); check the network and HF_ENDPOINT."
        ) from None
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubAccessError(f"Cannot push to {where}: the token of {me.get('name')} is read-only; {LOGIN_FIX}.")
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, private=private)
    except HfHubHTTPError as error:
        hint = LOGIN_FIX if _status(error) in (401, 403) else "check the repo id"
        raise HubAccessError(
            f"Cannot push to {where}: {me.get('name')} may not create or write it "
            f"({_status(error)}: {_one_line(error)}); {hint}."
        ) from None
    except Exception as error:  # noqa: BLE001
        raise HubAccessError(
            f"Cannot push to {where}: the Hub cannot be reached ({type(error).__name__}: "
            f"{_one_line(error)}); check the network and HF_ENDPOINT."
        ) from None
    return url.repo_id


def push_failed(
    error: BaseException, what: str, repo_id: str, repo_type: str, kept: str | None, retry: str
) -> HubPushError:
    """The error to raise when a push fails after the local result was saved: one line saying what is kept."""
    from huggingface_hub import HfApi

    where = f"{repo_type} repo {repo_id} on {_endpoint(HfApi())}"
    hint = f" ({LOGIN_FIX})" if _status(error) in (401, 403) else ""
    local = f"Nothing is lost: {kept} holds it; {retry}." if kept else f"It was not saved locally; {retry}."
    return HubPushError(
        f"Pushing {what} to {where} failed ({type(error).__name__}: {_one_line(error)}){hint}. {local}"
    )


# ----------------------------------------------------------------------------------------------------------
# build: one dataset config per variant
# ----------------------------------------------------------------------------------------------------------


def push_variants(
    built,
    repo_id: str,
    card_text: str,
    *,
    output_dir: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    **push_kwargs,
) -> None:
    """Push each variant of `built` (a `DatasetDict` from `build`) as its own config with a `train` split, then set
    the card's text to `card_text`, keeping the metadata `datasets` wrote (its `configs:` list and `dataset_info`)
    and adding hf_compress's tags. Files the repo already holds are not sent again: pushing the same build twice
    makes no commit. `output_dir` is where the build is saved, for the error message when the push fails."""
    retry = "rerun the same command to push it (the saved build is reused, not redone)"
    try:
        for variant, split in built.items():
            split.push_to_hub(
                repo_id,
                config_name=variant,
                split="train",
                token=token,
                private=private,
                commit_message=f"hf-compress build: the {variant} variant",
                **push_kwargs,
            )
        _set_dataset_card_text(repo_id, card_text, token)
    except Exception as error:
        raise push_failed(error, "the build", repo_id, "dataset", output_dir, retry) from error


def _set_dataset_card_text(repo_id: str, card_text: str, token: str | None) -> None:
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(repo_id, repo_type="dataset", token=token)
    tags = list(card.data.get("tags") or [])
    card.data["tags"] = tags + [tag for tag in (*TAGS, "sft") if tag not in tags]
    card.text = card_text
    card.push_to_hub(
        repo_id,
        repo_type="dataset",
        token=token,
        commit_message="hf-compress build: dataset card (configs and pipeline statistics)",
    )


# ----------------------------------------------------------------------------------------------------------
# sft: the student's model card
# ----------------------------------------------------------------------------------------------------------


def hub_base_model(name_or_path: str | None) -> str | None:
    """`name_or_path` when it names a Hub model (the only value a card's `base_model` may hold), else None."""
    if not name_or_path or os.path.isdir(name_or_path) or os.path.exists(name_or_path):
        return None
    return name_or_path


def update_student_card(
    readme: str,
    *,
    variant: str,
    base_model: str | None,
    peft: bool,
    repo_id: str | None = None,
    summary: dict | None = None,
    dataset: str | None = None,
) -> None:
    """Amend the model card TRL wrote to `readme` for a Compress-Distill student: `base_model`, `library_name: peft`
    for a LoRA adapter, the tags `compress-distill` and the variant, and a section on how it was trained."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(readme)
    data = card.data
    if base_model:
        data.base_model = base_model
    if peft:
        data.library_name = "peft"
    tags = list(data.tags or [])
    if peft and "lora" not in tags:
        tags.append("lora")
    data.tags = tags + [tag for tag in (*TAGS, variant) if tag not in tags]
    if dataset and not os.path.exists(dataset):
        data.datasets = [dataset]
    lines = [
        "",
        "## Compress-Distill",
        "",
        f"Trained with `hf-compress sft` on the **{variant}** variant of a Compress-Distill dataset"
        + (
            f" ([{dataset}](https://huggingface.co/datasets/{dataset}), config `{variant}`)"
            if dataset and not os.path.exists(dataset)
            else ""
        )
        + ".",
        "",
    ]
    if base_model:
        lines.append(f"Base model: `{base_model}`" + (" (this repo holds a LoRA adapter)." if peft else "."))
    if peft:
        lines += [
            "",
            "```python",
            "from peft import AutoPeftModelForCausalLM",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id or "<this repo>"}")  # base, then adapter',
            "```",
        ]
    if summary:
        keys = ("n_examples", "train_tokens", "loss_tokens", "train_loss", "num_train_epochs", "packing_strategy")
        lines += ["", "| figure | value |", "|---|---|"]
        lines += [f"| {key} | {summary[key]} |" for key in keys if summary.get(key) is not None]
        lines += ["", "`compress_sft.json` in this repo holds the run summary."]
    card.text = card.text.rstrip() + "\n" + "\n".join(lines) + "\n"
    card.save(readme)
