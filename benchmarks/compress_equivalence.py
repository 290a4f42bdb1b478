"""The demo's data pipeline (scripted traces -> verify -> compress -> build, as examples.repro.demo_compress runs it)
and greedy evaluation of a tiny seeded model, on one tree; prints a JSON of every figure and a digest of every row.

Run it on two trees and diff the outputs (the model path aside) to check that a refactor kept every figure:

    git worktree add /tmp/base <commit>
    (cd /tmp/base && PYTHONPATH=/tmp/base python /path/to/benchmarks/compress_equivalence.py /tmp/eq_base) > base.json
    PYTHONPATH=. python -m benchmarks.compress_equivalence /tmp/eq_new > new.json
    diff <(grep -v '"model"' base.json) <(grep -v '"model"' new.json)

It needs no trained teacher (the demo's default scripted traces need only its tokenizer), so it runs in about two
minutes where the full demo (a teacher and eight students trained) takes much longer on a loaded machine.
"""

import hashlib
import importlib
import json
import os
import sys

from examples.repro.demo_compress import DemoSettings, build_variants
from kit.tiny import build_tokenizer, make_task_dataset, tiny_causal_lm

try:
    evaluation = importlib.import_module("hf_compress.evaluation")
except ImportError:
    evaluation = importlib.import_module("hf_compress.evaluate")

out = sys.argv[1]
tokenizer = build_tokenizer()
model = tiny_causal_lm("qwen3", tokenizer, hidden_size=64, num_layers=2, seed=0)
teacher = os.path.join(out, "teacher")
model.save_pretrained(teacher)
tokenizer.save_pretrained(teacher)
built, stats = build_variants(DemoSettings(), teacher, os.path.join(out, "data"))
digest = lambda rows: hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()  # noqa: E731
test = make_task_dataset("arithmetic", 64, seed=0, split="test")
summary, table = evaluation.evaluate_student(teacher, test, max_new_tokens=24, batch_size=16)
summary.pop("eval_seconds")
print(
    json.dumps(
        {
            "stage_stats": stats,
            "variants": {v: digest(built[v].to_dict()) for v in built},
            "eval": summary,
            "eval_table": digest(table.to_dict()),
        },
        indent=1,
        sort_keys=True,
        default=str,
    )
)
