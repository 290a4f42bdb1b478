"""Names shared by the command-line layer and the modules that do the work, kept apart so that `hf-compress --help`
and `hf-compress report` import neither torch, transformers, TRL nor datasets to know them."""

# The SFT variants `build` writes, one split each (see `hf_compress.build`).
VARIANTS = ("raw", "compressed", "answer_only", "truncated")

# Written into a student's folder by `hf-compress sft` (training) and `hf-compress eval`; read by `report`.
SUMMARY_FILE = "compress_sft.json"
EVAL_FILE = "eval.json"
EVAL_TABLE_DIR = "eval_table"

# How answers are checked (`verify`, `compress`, `eval`): auto picks Countdown for rows with `numbers` and `target`.
TASKS = ("auto", "math", "countdown")

# A stage's output folder: its record (written last, the commit point), and its finished shards with their manifests.
STAGE_FILE = "hf_compress_stage.json"
SHARDS_DIR = ".shards"
SHARD_MANIFEST = "hf_compress_shard.json"

# The user message `generate` sends for each problem (`--prompt_template`; `{{` and `}}` write literal braces). It
# asks for the final answer in `\boxed{}`, the form every stage reads first, so that a plain instruction model's
# traces can be verified, compressed and built without a prompt of your own.
DEFAULT_PROMPT_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
