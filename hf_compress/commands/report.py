"""`hf-compress report`: compare students across variants (`hf_compress.report`).

Plain argparse: report reads JSON files, and starts without importing TRL, transformers or torch."""

from __future__ import annotations

from ..validation import check_local_path
from .registry import CommandArguments, register


def _add_report(parser):
    parser.add_argument("students", nargs="+", help="Student folders, each with compress_sft.json and eval.json.")
    parser.add_argument("--output", required=True, help="Folder for report.md, comparison.json and the plot.")
    parser.add_argument("--baseline", default="raw", help="Variant the ratios are relative to.")


def _run_report(args: CommandArguments):
    from ..report import load_runs, write_report

    for student in args.students:
        check_local_path(student, "student")
    table, markdown = write_report(load_runs(args.students), args.output, baseline=args.baseline)
    print(markdown)
    return table


register(
    "report",
    "Compare students across variants: accuracy and costs as ratios to raw, plus a plot.",
    _run_report,
    add_arguments=_add_report,
    plain=True,
    position=80,
)
