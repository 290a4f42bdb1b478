"""Turn pretrained recurrent models into DLA models that compute the same function.

With the read weights at lambda = 1 (their initialisation), a multi-state DLA layer sums its slots back into the
single state of its backbone, so a converted checkpoint starts exactly as the original and only the memory is
new. Fine-tune the memory (`read_weights`) alone or with LoRA on top: see docs/hf_dla.md.

    >>> import hf_dla
    >>> model = hf_dla.convert_mamba2("path/to/mamba2", memory="dla", max_states=16, output_dir="mamba2-dla")

This module is not needed to load a converted model (the saved folder holds `DLAConfig` and the modeling files).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import torch
from transformers import AutoTokenizer, Mamba2Config, Mamba2ForCausalLM, PreTrainedTokenizerBase

from .configuration_dla import DLAConfig
from .modeling_dla import DLAForCausalLM

logger = logging.getLogger(__name__)

# Mamba2Config fields that DLAConfig has under the same name.
_MAMBA2_SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_heads",
    "head_dim",
    "state_size",
    "expand",
    "n_groups",
    "conv_kernel",
    "hidden_act",
    "initializer_range",
    "rescale_prenorm_residual",
    "residual_in_fp32",
    "time_step_min",
    "time_step_max",
    "time_step_floor",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
)


def dla_config_from_mamba2(config: Mamba2Config, memory: str = "dla", max_states: int = 16, **overrides) -> DLAConfig:
    """The `DLAConfig` of a Mamba-2 model with `memory` / `max_states` slots; any other DLAConfig field may be
    overridden (`backend`, `chunk_size`, `merge_threshold`, ...)."""
    if config.use_bias:
        raise ValueError(
            "Mamba2Config.use_bias=True (biases on in_proj / out_proj) has no counterpart in DLA's Mamba-2 mixer; "
            "only bias-free checkpoints (the published Mamba-2 models) convert."
        )
    if not config.use_conv_bias:
        raise ValueError(
            "Mamba2Config.use_conv_bias=False: DLA's Mamba-2 mixer has a conv bias; convert, then zero and freeze "
            "`conv1d.bias` if you need this variant."
        )
    settings = {field: getattr(config, field) for field in _MAMBA2_SHARED_FIELDS}
    settings.update(
        mixer="mamba2",
        memory=memory,
        max_states=max_states,
        rms_norm_eps=config.layer_norm_epsilon,
        time_step_limit=tuple(config.time_step_limit),
    )
    settings.update(overrides)
    return DLAConfig(**settings)


def convert_mamba2(
    model_or_path: Mamba2ForCausalLM | str | os.PathLike,
    memory: str = "dla",
    max_states: int = 16,
    output_dir: str | os.PathLike | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    **config_overrides,
) -> DLAForCausalLM:
    """A `DLAForCausalLM` with the weights of a transformers `Mamba2ForCausalLM` (a model or a folder / hub id)
    whose logits equal the original's: the parameter names are Mamba-2's, and the new read weights start at
    lambda = 1.

    Args:
        model_or_path: the Mamba-2 model, or where `Mamba2ForCausalLM.from_pretrained` finds it.
        memory, max_states: the DLA memory (`"dla"`, `"loglinear"` or `"vanilla"`) and its slot count.
        output_dir: if given, save the converted model there (with `auto_map`, loadable with
            `trust_remote_code=True`) together with the tokenizer, when there is one (else a warning says so).
        tokenizer: saved with the model; by default the one next to `model_or_path` (or the model's `name_or_path`),
            if that folder or repo has tokenizer files.
        push_to_hub, repo_id, private, token: as in `save_pretrained(output_dir, push_to_hub=True, repo_id=...)`:
            also upload what is saved (model, modeling files, tokenizer) to the Hub repo `repo_id` (default: the
            name of `output_dir`; without `output_dir` the files are saved in a temporary folder and `repo_id` is
            needed), created if missing (`private` applies then). `token` also reads `model_or_path` from the Hub.
        config_overrides: other `DLAConfig` fields (e.g. `backend="triton"`, `chunk_size=64`).
    """
    if push_to_hub and output_dir is None and repo_id is None:
        raise ValueError("convert_mamba2(push_to_hub=True) needs repo_id= (or output_dir=, whose name it then takes).")
    if isinstance(model_or_path, (str, os.PathLike)):
        source = Mamba2ForCausalLM.from_pretrained(model_or_path, token=token)
    elif isinstance(model_or_path, Mamba2ForCausalLM):
        source = model_or_path
    else:
        raise TypeError(
            f"convert_mamba2 takes a transformers Mamba2ForCausalLM or its path, got {type(model_or_path).__name__}; "
            "for Gated DeltaNet checkpoints see docs/hf_dla.md (Converting pretrained models)."
        )
    config = dla_config_from_mamba2(source.config, memory=memory, max_states=max_states, **config_overrides)
    dtype = next(source.parameters()).dtype
    model = DLAForCausalLM(config)
    state_dict = {_mamba2_to_dla_name(name): tensor for name, tensor in source.state_dict().items()}
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [name for name in missing if ".read_weights." not in name]  # new: they start at lambda = 1
    if missing or unexpected:
        raise ValueError(
            f"The Mamba-2 checkpoint does not map onto DLAForCausalLM: missing {missing}, unexpected {unexpected}. "
            "Is it a transformers Mamba2ForCausalLM?"
        )
    model = model.to(dtype).eval()
    if output_dir is not None or push_to_hub:
        tokenizer = tokenizer or _find_tokenizer(model_or_path, source, token)
        if push_to_hub:  # save_pretrained's default repo: the folder's name
            repo_id = repo_id or os.path.basename(os.path.normpath(os.fspath(output_dir)))
        hub_kwargs = {"push_to_hub": True, "repo_id": repo_id, "private": private, "token": token}
        with _save_folder(output_dir) as folder:
            _save_converted(
                model, tokenizer, folder, hub_kwargs if push_to_hub else {}, source.name_or_path, output_dir
            )
    return model


@contextlib.contextmanager
def _save_folder(output_dir: str | os.PathLike | None):
    """`output_dir`, or a temporary folder for a push to the Hub without a local copy (as `push_to_hub` does)."""
    if output_dir is not None:
        yield output_dir
        return
    with tempfile.TemporaryDirectory() as folder:
        yield folder


def _save_converted(model, tokenizer, folder, hub_kwargs: dict, source_name: str, output_dir) -> None:
    """Save (and with `hub_kwargs`, push) the model and, when there is one, the tokenizer: transformers'
    `save_pretrained(push_to_hub=True, repo_id=...)` of each, so one commit each, of the files each wrote."""
    model.save_pretrained(folder, **hub_kwargs)
    places = [] if output_dir is None else [f"in {output_dir}"]
    if hub_kwargs:
        places.append(f"pushed to {hub_kwargs['repo_id']}")
    if tokenizer is None:
        logger.warning(
            "No tokenizer found for %s (no tokenizer files there); saved the model alone (%s). "
            "Pass tokenizer= to save one with it.",
            source_name,
            " and ".join(places),
        )
        return
    tokenizer.save_pretrained(folder, **hub_kwargs)
    logger.info("Saved the tokenizer (%s) with the model (%s).", type(tokenizer).__name__, " and ".join(places))


def _mamba2_to_dla_name(name: str) -> str:
    # Mamba2ForCausalLM: backbone.{embeddings, layers.i.{norm, mixer.*}, norm_f}, lm_head; DLA: model.* likewise.
    return "model." + name.removeprefix("backbone.") if name.startswith("backbone.") else name


def _find_tokenizer(model_or_path, source, token=None) -> PreTrainedTokenizerBase | None:
    location = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else source.name_or_path
    if not location:
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, token=token)
    except (OSError, ValueError):
        return None
    return tokenizer if _has_vocabulary(tokenizer) else None


def _has_vocabulary(tokenizer: PreTrainedTokenizerBase) -> bool:
    # From a folder with no tokenizer files, AutoTokenizer builds the model type's tokenizer class from its defaults
    # (Mamba-2: a GPT-NeoX tokenizer holding its 2 special tokens, which encodes any text as []): not the source's.
    beyond_specials = len(tokenizer.get_vocab()) > len(set(tokenizer.all_special_tokens))
    return beyond_specials and len(tokenizer("hello world 12", add_special_tokens=False)["input_ids"]) > 0


# ----------------------------------------------------------------------------------------------------------
# Gated DeltaNet: Qwen3-Next linear-attention layers
# ----------------------------------------------------------------------------------------------------------


def qwen3_next_gated_deltanet_state_dict(
    layer_state_dict: dict[str, torch.Tensor], num_heads: int, key_dim: int, value_dim: int
) -> dict[str, torch.Tensor]:
    """The `DLAGatedDeltaNetMixer` state dict of one Qwen3-Next linear-attention layer (`Qwen3NextGatedDeltaNet`,
    keys `in_proj_qkvz.weight`, `in_proj_ba.weight`, `conv1d.weight`, `dt_bias`, `A_log`, `norm.weight`,
    `out_proj.weight`). Qwen3-Next fuses the projections head by head ([q_h, k_h, v_h, z_h] and [b_h, a_h]) and
    shares the output-norm weight over heads; DLA keeps them apart (`q_proj` ... `g_proj`, per-channel norm).
    Only layers with as many value heads as key heads convert (`linear_num_value_heads ==
    linear_num_key_heads`); DLA's mixer has one head count."""
    qkvz = layer_state_dict["in_proj_qkvz.weight"]
    hidden = qkvz.shape[-1]
    widths = [key_dim, key_dim, value_dim, value_dim]
    if qkvz.shape[0] != num_heads * sum(widths):
        raise ValueError(
            f"in_proj_qkvz has {qkvz.shape[0]} rows, not num_heads * (2 * key_dim + 2 * value_dim) = "
            f"{num_heads * sum(widths)}: a layer with more value heads than key heads does not convert to DLA "
            "(one head count); check num_heads / key_dim / value_dim."
        )
    q, k, v, z = (part.reshape(-1, hidden) for part in qkvz.view(num_heads, sum(widths), hidden).split(widths, 1))
    b, a = (
        part.reshape(-1, hidden) for part in layer_state_dict["in_proj_ba.weight"].view(num_heads, 2, hidden).unbind(1)
    )
    return {
        "q_proj.weight": q,
        "k_proj.weight": k,
        "v_proj.weight": v,
        "g_proj.weight": z,
        "b_proj.weight": b,
        "a_proj.weight": a,
        "conv1d.weight": layer_state_dict["conv1d.weight"],  # channels already in DLA's order [q, k, v]
        "dt_bias": layer_state_dict["dt_bias"],
        "A_log": layer_state_dict["A_log"],
        "norm.weight": layer_state_dict["norm.weight"].repeat(num_heads),
        "out_proj.weight": layer_state_dict["out_proj.weight"],
    }


__all__ = ["convert_mamba2", "dla_config_from_mamba2", "qwen3_next_gated_deltanet_state_dict"]
