"""Control for `examples.repro.repro_compress`: re-evaluate finished students with a larger token cap.

The reproduction evaluates students with the teacher's 64-token cap. Students that learned long traces (`raw`)
hit that cap often, so part of their accuracy gap could be the cap rather than what they learned. This scores
the same students, greedily on the same held-out problems, with another cap, into `<student>/eval_cap<N>/`
(cached like the main evaluations):

    python -m examples.repro.repro_compress_cap_control --students runs/repro_compress/students/seed0/raw --cap 128
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from examples.repro.repro_compress import ReproSettings, evaluate_into, word_problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", nargs="+", required=True, help="Finished student folders (LoRA adapters).")
    parser.add_argument("--cap", type=int, default=128, help="Token cap of the greedy answers.")
    args = parser.parse_args(argv)
    settings = dataclasses.replace(ReproSettings(), eval_max_new_tokens=args.cap)
    test = word_problems(settings, "test")
    for student in args.students:
        if not os.path.isfile(os.path.join(student, "eval.json")):
            parser.error(f"{student} has no eval.json: finish it with `make repro-compress` first")
        summary = evaluate_into(os.path.join(student, f"eval_cap{args.cap}"), student, test, settings)
        print(
            f"{student}: cap {args.cap}: accuracy {summary['accuracy']:.3f} ± {summary['accuracy_stderr']:.3f}, "
            f"output tokens {summary['output_tokens_mean']:.1f}, hit cap {summary['hit_cap_rate']:.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
