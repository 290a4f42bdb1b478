"""Answer accuracy of reasoning completions, with their output-token cost beside it: an `evaluate` metric.

Each completion is judged as `hf-compress verify` judges teacher traces: its final answer (`\\boxed{...}` or
`<answer>...</answer>`) against the gold one by math-verify, then exact and numeric fallbacks (config `math`, the
default); or by the Countdown rules (config `countdown`: the last `<answer>` expression uses each number once and
equals the target). Load it offline from the installed package:

    import evaluate
    from hf_compress.metrics import ANSWER_ACCURACY

    accuracy = evaluate.load(ANSWER_ACCURACY)
    accuracy.compute(predictions=completions, references=gold_answers, output_tokens=token_counts)
"""

import math

import datasets
import evaluate

from hf_compress.verify import check_texts

_CITATION = """\
@misc{compress_distill,
  title = {Compress-Distill: training reasoning students on compressed teacher traces},
  note = {implementation: the hf_compress package (hf-efficient-reasoning)},
}
"""

_DESCRIPTION = """\
Answer accuracy of reasoning completions, judged as the hf_compress pipeline's `verify` stage judges teacher traces
(math-verify with exact and numeric fallbacks, or the Countdown rules), with the output-token cost beside it: mean
output tokens and output tokens per correct answer, when the completions' token counts are given.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the completions, each ending with its final answer (`\\boxed{...}` or
        `<answer>...</answer>`).
    references: config `math` (default): the gold answers (`list` of `str`); config `countdown`: one
        `{"numbers": [int, ...], "target": int}` per completion.
    output_tokens (`list` of `int`, optional): each completion's length in tokens (the cost).
    timeout_seconds (`float`, default 5): math config: deadline of one completion's whole check.
    return_correct (`bool`, default False): also return the per-completion flags (`correct`).
Returns:
    accuracy: the fraction judged correct; accuracy_stderr: its binomial standard error; n: the number of
    completions; with `output_tokens`: output_tokens_mean, output_tokens_total and output_tokens_per_correct
    (total output tokens / correct answers; the total when none is correct).
Examples:
    >>> accuracy = evaluate.load(ANSWER_ACCURACY)
    >>> accuracy.compute(predictions=["2 + 2 = 4, so \\\\boxed{4}", "\\\\boxed{5}"], references=["4", "4"],
    ...                  output_tokens=[9, 3])
    {'accuracy': 0.5, 'accuracy_stderr': 0.3535533905932738, 'n': 2, 'output_tokens_mean': 6.0,
     'output_tokens_total': 12, 'output_tokens_per_correct': 12.0}
"""

CONFIGS = ("math", "countdown")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AnswerAccuracy(evaluate.Metric):
    def _task(self) -> str:
        task = "math" if self.config_name == "default" else self.config_name
        if task not in CONFIGS:
            raise ValueError(f"Unknown config {self.config_name!r} of answer_accuracy; choose one of {CONFIGS}.")
        return task

    def _info(self):
        if self._task() == "countdown":
            references = {"numbers": datasets.Sequence(datasets.Value("int64")), "target": datasets.Value("int64")}
        else:
            references = datasets.Value("string")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": references}),
        )

    def _compute(self, predictions, references, output_tokens=None, timeout_seconds=5, return_correct=False):
        if len(predictions) == 0:
            raise ValueError("answer_accuracy needs at least one completion.")
        task = self._task()
        if task == "countdown":
            gold = {"numbers": [r["numbers"] for r in references], "target": [r["target"] for r in references]}
        else:
            gold = {"answer": list(references)}
        correct = [bool(c.correct) for c in check_texts(gold, list(predictions), task, "answer", timeout_seconds)]
        accuracy = sum(correct) / len(correct)
        result = {
            "accuracy": accuracy,
            "accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / len(correct)),
            "n": len(correct),
        }
        if output_tokens is not None:
            tokens = [int(t) for t in output_tokens]
            if len(tokens) != len(correct):
                raise ValueError(f"output_tokens has {len(tokens)} counts for {len(correct)} completions.")
            total = sum(tokens)
            result.update(
                output_tokens_mean=total / len(tokens),
                output_tokens_total=total,
                output_tokens_per_correct=total / max(1, sum(correct)),
            )
        if return_correct:
            result["correct"] = correct
        return result
