"""The arguments of the `hf-compress` subcommands, as dataclasses.

The command line (TRL's `TrlParser`, an `HfArgumentParser`) and a recipe's YAML (`parse_dict`) build the same
objects, and each checks its own values in `__post_init__`: a value is read as the command line reads it (`"0.7"`
is 0.7, `"false"` is false) and checked against what the option allows, so a bad value is refused the same way
from both, in one line naming the option, before anything runs.

This module imports nothing heavy (no torch, transformers, TRL or datasets), so that `hf-compress --help` and
`hf-compress report` start at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import DEFAULT_PROMPT_TEMPLATE, TASKS, VARIANTS
from .validation import at_least, check_fields, check_prompt_template, not_empty, require

COMPRESSORS = ("extractive", "llm")


# ----------------------------------------------------------------------------------------------------------
# The subcommands' arguments (the backends' own, BackendConfig and SamplingConfig, are in hf_compress.backends)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class StageIO:
    """The folders a pipeline stage reads and writes (`run` sets them itself: a recipe section may not)."""

    input: str = field(metadata={"help": "A `datasets` folder (save_to_disk) or a Hub dataset id."})
    output: str = field(metadata={"help": "Folder to write the stage's `datasets` output to."})
    split: str = field(default="train", metadata={"help": "Split to read when the input has several."})
    overwrite: bool = field(default=False, metadata={"help": "Discard an output folder from other arguments."})

    def __post_init__(self):
        check_fields(self)
        not_empty(self, "input", "output", "split")


@dataclass
class TraceColumns:
    """The columns that verify, compress and build read: the trace, its gold answer and its problem."""

    completion_column: str = field(default="generation", metadata={"help": "Column holding the teacher trace."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the gold final answer."})
    problem_column: str = field(default="problem", metadata={"help": "Column holding the problem text."})

    def __post_init__(self):
        check_fields(self)
        not_empty(self, "completion_column", "answer_column", "problem_column")


@dataclass
class TaskArguments:
    task: str = field(
        default="auto",
        metadata={
            "choices": TASKS,
            "help": "How answers are checked; auto: Countdown rules for rows with `numbers` and `target`, math-verify "
            "(with exact and numeric fallbacks) for the others.",
        },
    )

    def __post_init__(self):
        check_fields(self)


@dataclass
class GenerateArguments:
    problem_column: str = field(default="problem", metadata={"help": "Column holding the problem text."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the gold final answer."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message of every prompt (default: none)."}
    )
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={
            "help": "User message; must contain {problem} ({{ and }} for literal braces). The default asks for the final "
            "answer in \\boxed{}; '{problem}' sends the problem alone."
        },
    )
    shard_size: int = field(default=256, metadata={"help": "Problems per saved shard (resume unit)."})
    problems_per_call: int = field(default=64, metadata={"help": "Problems sent to the backend at once."})
    skip_invalid_rows: bool = field(
        default=False,
        metadata={
            "help": "Leave out the rows whose problem is None or empty or whose gold is None or blank (counted in "
            "the stage record) instead of refusing the input."
        },
    )

    def __post_init__(self):
        check_fields(self)
        not_empty(self, "problem_column", "answer_column")
        check_prompt_template(self.prompt_template)
        at_least(self, 1, "shard_size", "problems_per_call")


@dataclass
class VerifyArguments:
    keep_only_correct: bool = field(default=False, metadata={"help": "Drop incorrect traces (after pass rates)."})
    keep_truncated: bool = field(
        default=False,
        metadata={
            "help": "Judge traces the token cap cut (finish_reason=length) by their text; by default they are incorrect, "
            "with verify_note=truncated."
        },
    )
    timeout_seconds: int = field(
        default=5,
        metadata={
            "help": "Seconds to check one trace (finding the answer, math-verify's parsing and comparison); past them "
            "it is judged incorrect with verify_note=timeout."
        },
    )
    shard_size: int = field(default=2048, metadata={"help": "Traces per saved shard (resume unit)."})
    skip_invalid_rows: bool = field(
        default=False,
        metadata={
            "help": "Leave out the rows with a None or empty problem, a None or blank gold or a None trace (counted "
            "in the stage record) instead of refusing the input."
        },
    )

    def __post_init__(self):
        check_fields(self)
        at_least(self, 1, "timeout_seconds", "shard_size")


@dataclass
class CompressArguments:
    compressor: str = field(
        default="extractive",
        metadata={
            "choices": COMPRESSORS,
            "help": "extractive: keep each sentence's equations and the final answer (no model); llm: rewrite with "
            "--model.",
        },
    )
    prompt_version: str = field(default="v1", metadata={"help": "llm: key of COMPRESSION_PROMPTS."})
    temperature: float = field(default=0.0, metadata={"help": "llm: sampling temperature."})
    max_new_tokens: int = field(default=1024, metadata={"help": "llm: cap on the rewrite's tokens."})
    shard_size: int = field(default=256, metadata={"help": "Traces per saved shard (resume unit)."})
    problems_per_call: int = field(default=64, metadata={"help": "llm: traces sent to the backend at once."})
    skip_invalid_rows: bool = field(
        default=False,
        metadata={
            "help": "Leave out the rows with a None or empty problem, a None or blank gold or a None trace (counted "
            "in the stage record) instead of refusing the input."
        },
    )

    def __post_init__(self):
        check_fields(self)
        require(self.temperature >= 0, "temperature", "a number >= 0", self.temperature)
        at_least(self, 1, "max_new_tokens", "shard_size", "problems_per_call")
        not_empty(self, "prompt_version")


@dataclass
class BuildArguments:
    tokenizer: str = field(metadata={"help": "Tokenizer counting tokens (and cutting `truncated`)."})
    variants: list[str] = field(
        default_factory=lambda: list(VARIANTS),
        metadata={"choices": VARIANTS, "help": "Variants to write, one split each."},
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub dataset repo to push the variants to (configs)."}
    )

    def __post_init__(self):
        check_fields(self)
        not_empty(self, "tokenizer", "variants")


@dataclass
class EvalArguments:
    """What `hf-compress eval` reads and writes; the student, and what decodes it, are `--backend` and its options
    (`EvalBackendConfig`: `transformers` loads the student folder `--model` here, `vllm` and `openai` serve it)."""

    input: str = field(metadata={"help": "Eval set with gold answers: `datasets` folder or Hub id."})
    split: str = field(default="test", metadata={"help": "Split to read when the input has several."})
    output: str | None = field(
        default=None,
        metadata={
            "help": "Where eval.json, eval_table/ and the resumable eval_completions/ go (default: --model, the student "
            "folder; needed with --backend openai, whose --model is a served name)."
        },
    )
    max_new_tokens: int = field(default=8192, metadata={"help": "Token cap per completion."})
    shard_size: int = field(
        default=1024,
        metadata={"help": "Problems per saved shard (resume unit); a transformers batch never spans two shards."},
    )
    answer_column: str = field(default="answer", metadata={"help": "Column holding the gold final answer."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "transformers: load a student whose modeling code is saved with it (hf_dla)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Discard saved completions from other arguments."})

    def __post_init__(self):
        check_fields(self)
        not_empty(self, "input", "split", "answer_column")
        at_least(self, 1, "max_new_tokens", "shard_size")


@dataclass
class CompressSFTArguments:
    """Which data a Compress-Distill SFT run trains on (the rest of a recipe is `SFTConfig` and `ModelConfig`)."""

    dataset_path: str | None = field(
        default=None,
        metadata={"help": "Folder written by `hf-compress build`: one `datasets` folder per variant."},
    )
    variant: str = field(
        default="compressed",
        metadata={"help": "Variant to train on: raw, compressed, answer_only or truncated.", "choices": VARIANTS},
    )
    use_embedded_chat_template: bool = field(
        default=False,
        metadata={
            "help": "Give the student `EMBEDDED_CHAT_TEMPLATE` (ChatML with generation markers) when its tokenizer "
            "has no chat template or one without generation markers that TRL cannot patch."  # no '%': argparse
        },
    )

    def __post_init__(self):
        check_fields(self)
