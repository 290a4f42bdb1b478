"""`evaluate` metrics shipped with hf_compress, each a folder that `evaluate.load(path)` opens offline.

>>> import evaluate
>>> from hf_compress.metrics import ANSWER_ACCURACY
>>> accuracy = evaluate.load(ANSWER_ACCURACY)                 # or evaluate.load(ANSWER_ACCURACY, "countdown")
>>> accuracy.compute(predictions=["... \\\\boxed{4}"], references=["4"], output_tokens=[12])
{'accuracy': 1.0, 'accuracy_stderr': 0.0, 'n': 1, 'output_tokens_mean': 12.0, ...}
"""

import os

# The folder of the answer-accuracy metric (math-verify with the pipeline's fallbacks, or Countdown rules), with the
# output-token cost beside it: `evaluate.load(ANSWER_ACCURACY)`. Used by `hf-compress eval`.
ANSWER_ACCURACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "answer_accuracy")
