"""The `answer_accuracy` evaluate metric: `evaluate.load(hf_compress.metrics.ANSWER_ACCURACY)` runs answer_accuracy.py.

This file makes the folder a regular package, so that it ships in the wheel whatever the packages finder settings."""
