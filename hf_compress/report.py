"""Compare students trained on different variants: the paper's accuracy-cost table and plot.

Each student folder holds `compress_sft.json` (written by `hf-compress sft`: training tokens and time) and
`eval.json` (written by `hf-compress eval`: accuracy and output tokens). Every cost is also given as a ratio to
the student trained on the `raw` traces.

    >>> rows = load_runs(["runs/compress/students/raw", "runs/compress/students/compressed"])
    >>> write_report(rows, "runs/compress")
"""

from __future__ import annotations

import json
import os
from typing import Any

from datasets import Dataset

from .constants import EVAL_FILE, SUMMARY_FILE

BASELINE = "raw"
# (column, label in the table, format) for the quantities compared against the baseline.
COMPARED = (
    ("accuracy", "accuracy", "{:.3f}"),
    ("train_tokens", "training tokens", "{:,}"),
    ("train_seconds", "training time (s)", "{:.1f}"),
    ("output_tokens_mean", "output tokens (mean)", "{:.1f}"),
)
# What the table reads from each student's files (written by `hf-compress sft` and `hf-compress eval`).
REQUIRED_FIELDS = {
    SUMMARY_FILE: ("variant", "train_tokens", "loss_tokens", "train_seconds"),
    EVAL_FILE: ("n", "accuracy", "accuracy_stderr", "output_tokens_mean", "output_tokens_p90", "hit_cap_rate"),
}
REPORT_FILE = "report.md"
PLOT_FILE = "accuracy_vs_training_tokens.png"
TABLE_FILE = "comparison.json"


def load_run(path: str) -> dict[str, Any]:
    """One student's training summary merged with its evaluation summary."""
    parts = {}
    for name, hint in ((SUMMARY_FILE, "hf-compress sft"), (EVAL_FILE, "hf-compress eval")):
        file = os.path.join(path, name)
        if not os.path.exists(file):
            raise FileNotFoundError(f"{file} is missing: run `{hint}` for this student first.")
        with open(file) as f:
            parts[name] = json.load(f)
        missing = [field for field in REQUIRED_FIELDS[name] if field not in parts[name]]
        if missing:
            raise ValueError(f"{file} lacks {missing}: it was not written by this version of `{hint}`; rerun it.")
    return {**parts[EVAL_FILE], **parts[SUMMARY_FILE], "path": path}


def load_runs(paths: list[str]) -> list[dict[str, Any]]:
    rows = [load_run(path) for path in paths]
    variants = [row["variant"] for row in rows]
    duplicates = sorted({v for v in variants if variants.count(v) > 1})
    if duplicates:
        raise ValueError(f"Several students for the variant(s) {duplicates}: pass one folder per variant.")
    return rows


def comparison_table(rows: list[dict[str, Any]], baseline: str = BASELINE) -> Dataset:
    """One row per variant with each compared quantity and its ratio to the baseline variant."""
    by_variant = {row["variant"]: row for row in rows}
    if baseline not in by_variant:
        raise ValueError(
            f"The ratios are relative to the {baseline!r} student, which is missing (have {sorted(by_variant)})."
        )
    reference = by_variant[baseline]
    table = []
    for row in rows:
        entry = {"variant": row["variant"], "n": row["n"], "accuracy_stderr": row["accuracy_stderr"]}
        for column, _, _ in COMPARED:
            entry[column] = row[column]
            entry[f"{column}_ratio"] = row[column] / reference[column] if reference[column] else float("nan")
        entry["loss_tokens"] = row["loss_tokens"]
        entry["output_tokens_p90"] = row["output_tokens_p90"]
        entry["hit_cap_rate"] = row["hit_cap_rate"]
        table.append(entry)
    return Dataset.from_list(table)


def markdown_table(table: Dataset, baseline: str = BASELINE) -> str:
    header = ["variant"] + [f"{label} (x {baseline})" for _, label, _ in COMPARED] + ["output tokens p90", "hit cap"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [row["variant"]]
        for column, _, fmt in COMPARED:
            value = fmt.format(row[column])
            if column == "accuracy":
                value += f" ± {row['accuracy_stderr']:.3f}"
            cells.append(f"{value} ({row[f'{column}_ratio']:.2f})")
        cells += [f"{row['output_tokens_p90']:.0f}", f"{row['hit_cap_rate']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_accuracy_vs_tokens(
    table: Dataset | list[dict[str, Any]],
    path: str,
    title: str = "Accuracy against training tokens",
    references: dict[str, float] | None = None,
) -> None:
    """One point per student (accuracy ± s.e. against training tokens); `references` (name -> accuracy, e.g. the
    model before fine-tuning) are drawn as dashed horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for row in table:
        ax.errorbar(row["train_tokens"], row["accuracy"], yerr=row["accuracy_stderr"], fmt="o", capsize=3)
        ax.annotate(row["variant"], (row["train_tokens"], row["accuracy"]), textcoords="offset points", xytext=(6, 4))
    for name, accuracy in (references or {}).items():
        ax.axhline(accuracy, linestyle="--", linewidth=1, color="gray")
        ax.annotate(
            name,
            (0.01, accuracy),
            xycoords=("axes fraction", "data"),
            xytext=(0, 3),
            textcoords="offset points",
            fontsize=8,
            color="gray",
        )
    ax.set_xlabel("training tokens")
    ax.set_ylabel(f"greedy accuracy (n={table[0]['n']}, ±1 s.e.)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    rows: list[dict[str, Any]],
    output_dir: str,
    baseline: str = BASELINE,
    title: str = "Accuracy against training tokens",
) -> tuple[Dataset, str]:
    """Write `report.md`, `comparison.json` and the PNG plot; return the table and its markdown."""
    os.makedirs(output_dir, exist_ok=True)
    table = comparison_table(rows, baseline)
    markdown = markdown_table(table, baseline)
    plot_accuracy_vs_tokens(table, os.path.join(output_dir, PLOT_FILE), title)
    table.to_json(os.path.join(output_dir, TABLE_FILE), lines=False, indent=2)
    with open(os.path.join(output_dir, REPORT_FILE), "w") as f:
        f.write(f"# Compress-Distill comparison\n\nRatios in parentheses are relative to `{baseline}`.\n\n")
        f.write(markdown + f"\n\n![accuracy vs training tokens]({PLOT_FILE})\n")
    return table, markdown
