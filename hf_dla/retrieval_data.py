"""Synthetic retrieval tasks for linear-attention memory: multi-query associative recall (MQAR) and passkey.

Both return a `datasets.Dataset` of token-id sequences with `labels` aligned to `input_ids` as transformers
causal LMs expect (the model shifts them): every position is -100 except the answer tokens, so the loss and
the accuracy measure recall only.

MQAR (in the style of Zoology, Arora et al. 2023). Token ids ``1 .. vocab_size // 2 - 1`` are keys, ids
``vocab_size // 2 .. vocab_size - 1`` are values. A sequence of length ``seq_len`` starts with
``num_kv_pairs`` distinct key-value pairs ``k1 v1 k2 v2 ...``; the rest holds ``(seq_len - 2 * num_kv_pairs)
// 2`` two-token query slots. Each key is queried once, in a slot drawn without replacement with
probability proportional to ``g ** (power_a - 1)`` for ``g = 1, 2, ...`` (a power law: most queries come
soon after the context, a few far away). A query is the key followed by its value; the value is the one
labelled token. The other slots hold filler: random tokens over the whole vocabulary (as in Zoology) or 0.

    >>> from hf_dla.retrieval_data import mqar_dataset
    >>> ds = mqar_dataset(num_examples=1000, num_kv_pairs=8, seq_len=128, vocab_size=256, seed=0)

Passkey (single needle). A haystack of random filler tokens holds, at a chosen depth, a needle marker
followed by a passkey of ``passkey_len`` value tokens; the sequence ends with a query marker followed by
the passkey again, whose tokens are labelled.

    >>> from hf_dla.retrieval_data import passkey_dataset
    >>> ds = passkey_dataset(num_examples=200, haystack_len=512, vocab_size=256, passkey_len=2, seed=0)
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset

IGNORE_INDEX = -100  # the label transformers' causal LM loss skips
NEEDLE_MARKER = 1  # passkey: announces the passkey inside the haystack
QUERY_MARKER = 2  # passkey: asks for it at the end
_PASSKEY_SPECIAL_TOKENS = 3  # ids 0 (unused), NEEDLE_MARKER, QUERY_MARKER


def validate_mqar_settings(num_kv_pairs: int, seq_len: int, vocab_size: int, power_a: float) -> None:
    """Raise a `ValueError` naming the constraint when an MQAR setting cannot hold."""
    if num_kv_pairs < 1:
        raise ValueError(f"num_kv_pairs={num_kv_pairs} must be at least 1.")
    if num_kv_pairs * 4 > seq_len:
        raise ValueError(
            f"MQAR needs num_kv_pairs * 4 <= seq_len (2 tokens per pair in the context plus at least as many "
            f"query slots), got num_kv_pairs={num_kv_pairs}, seq_len={seq_len}: raise seq_len to at least "
            f"{num_kv_pairs * 4} or lower num_kv_pairs to at most {seq_len // 4}."
        )
    if vocab_size // 2 - 1 < num_kv_pairs:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: keys are the ids 1..vocab_size // 2 - 1 "
            f"({max(vocab_size // 2 - 1, 0)} of them) and num_kv_pairs={num_kv_pairs} distinct keys are needed; "
            f"raise vocab_size to at least {2 * num_kv_pairs + 2}."
        )
    if not power_a > 0:
        raise ValueError(f"power_a={power_a} must be positive (query gaps are drawn with p(g) ~ g ** (power_a - 1)).")


def power_law_gap_probabilities(num_slots: int, power_a: float) -> np.ndarray:
    """Probability of each query slot ``g = 0 .. num_slots - 1`` (gap ``g + 1`` after the context)."""
    weights = np.arange(1, num_slots + 1, dtype=np.float64) ** (power_a - 1.0)
    return weights / weights.sum()


def _sample_without_replacement(rng: np.random.Generator, probs: np.ndarray, rows: int, size: int) -> np.ndarray:
    """`size` distinct indices per row, drawn one after another with probabilities `probs` renormalised over
    those not yet drawn. Gumbel top-k does exactly that, for all rows at once."""
    scores = np.log(probs)[None, :] + rng.gumbel(size=(rows, probs.size))
    return np.argsort(-scores, axis=1)[:, :size]


def _distinct_tokens(rng: np.random.Generator, low: int, high: int, rows: int, size: int) -> np.ndarray:
    """`size` distinct token ids in ``[low, high)`` per row, in random order."""
    return np.argsort(rng.random((rows, high - low)), axis=1)[:, :size] + low


def mqar_dataset(
    num_examples: int,
    num_kv_pairs: int,
    seq_len: int,
    vocab_size: int,
    power_a: float = 0.01,
    random_filler: bool = True,
    seed: int = 0,
) -> Dataset:
    """Multi-query associative recall: columns `input_ids`, `labels` (answers only), `num_kv_pairs`, `seq_len`.

    Args:
        num_examples: number of sequences.
        num_kv_pairs: key-value pairs per sequence; each is queried once. Needs ``num_kv_pairs * 4 <= seq_len``.
        seq_len: tokens per sequence.
        vocab_size: keys take ids ``1 .. vocab_size // 2 - 1``, values the upper half; needs
            ``vocab_size >= 2 * num_kv_pairs + 2``.
        power_a: exponent of the query-gap law ``p(g) ~ g ** (power_a - 1)``; small values put most queries
            right after the context (Zoology's default 0.01).
        random_filler: fill the slots without a query with random tokens (True) or with token 0.
        seed: the dataset is a function of the arguments and this seed.
    """
    validate_mqar_settings(num_kv_pairs, seq_len, vocab_size, power_a)
    rng = np.random.default_rng(seed)
    context_len = 2 * num_kv_pairs
    num_slots = (seq_len - context_len) // 2
    keys = _distinct_tokens(rng, 1, vocab_size // 2, num_examples, num_kv_pairs)
    values = _distinct_tokens(rng, vocab_size // 2, vocab_size, num_examples, num_kv_pairs)
    slots = _sample_without_replacement(
        rng, power_law_gap_probabilities(num_slots, power_a), num_examples, num_kv_pairs
    )

    if random_filler:
        input_ids = rng.integers(0, vocab_size, size=(num_examples, seq_len))
    else:
        input_ids = np.zeros((num_examples, seq_len), dtype=np.int64)
    input_ids[:, 0:context_len:2] = keys
    input_ids[:, 1:context_len:2] = values
    query_positions = context_len + 2 * slots
    rows = np.arange(num_examples)[:, None]
    input_ids[rows, query_positions] = keys
    input_ids[rows, query_positions + 1] = values
    labels = np.full_like(input_ids, IGNORE_INDEX)
    labels[rows, query_positions + 1] = values
    return Dataset.from_dict(
        {
            "input_ids": input_ids.tolist(),
            "labels": labels.tolist(),
            "num_kv_pairs": [num_kv_pairs] * num_examples,
            "seq_len": [seq_len] * num_examples,
        }
    )


def validate_passkey_settings(haystack_len: int, vocab_size: int, passkey_len: int, depth: float | None) -> None:
    """Raise a `ValueError` naming the constraint when a passkey setting cannot hold."""
    if haystack_len < 1:
        raise ValueError(f"haystack_len={haystack_len} must be at least 1 filler token.")
    if passkey_len < 1:
        raise ValueError(f"passkey_len={passkey_len} must be at least 1 token.")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth} must lie in [0, 1] (0: needle first, 1: needle last) or be None (random).")
    if vocab_size < 2 * _PASSKEY_SPECIAL_TOKENS + 2:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: ids 0-2 are reserved (needle and query markers), filler takes "
            f"ids 3..vocab_size // 2 - 1 and passkey tokens the upper half, which needs vocab_size >= "
            f"{2 * _PASSKEY_SPECIAL_TOKENS + 2}."
        )


def passkey_dataset(
    num_examples: int,
    haystack_len: int,
    vocab_size: int,
    passkey_len: int = 1,
    depth: float | None = None,
    seed: int = 0,
) -> Dataset:
    """Single-needle retrieval: columns `input_ids`, `labels` (the final passkey only), `depth`, `seq_len`.

    A sequence is ``filler[:n] NEEDLE p_1..p_L filler[n:] QUERY p_1..p_L`` with ``haystack_len`` filler tokens,
    so ``seq_len = haystack_len + 2 * (passkey_len + 1)``.

    Args:
        num_examples: number of sequences.
        haystack_len: filler tokens around the needle (the distance to retrieve over).
        vocab_size: filler takes ids ``3 .. vocab_size // 2 - 1``, passkey tokens the upper half.
        passkey_len: tokens in the passkey (drawn with repetition).
        depth: fraction of the haystack before the needle, in [0, 1]; None draws it uniformly per example.
        seed: the dataset is a function of the arguments and this seed.
    """
    validate_passkey_settings(haystack_len, vocab_size, passkey_len, depth)
    rng = np.random.default_rng(seed)
    filler = rng.integers(_PASSKEY_SPECIAL_TOKENS, vocab_size // 2, size=(num_examples, haystack_len))
    passkeys = rng.integers(vocab_size // 2, vocab_size, size=(num_examples, passkey_len))
    depths = rng.random(num_examples) if depth is None else np.full(num_examples, depth)
    needle_at = np.rint(depths * haystack_len).astype(np.int64)
    input_ids, labels = [], []
    for row, at in enumerate(needle_at):
        needle = [NEEDLE_MARKER, *passkeys[row]]
        query = [QUERY_MARKER, *passkeys[row]]
        input_ids.append([*filler[row, :at], *needle, *filler[row, at:], *query])
        labels.append([IGNORE_INDEX] * (len(input_ids[-1]) - passkey_len) + passkeys[row].tolist())
    return Dataset.from_dict(
        {
            "input_ids": [[int(t) for t in seq] for seq in input_ids],
            "labels": labels,
            "depth": (needle_at / haystack_len).tolist(),
            "seq_len": [haystack_len + 2 * (passkey_len + 1)] * num_examples,
        }
    )


__all__ = [
    "IGNORE_INDEX",
    "NEEDLE_MARKER",
    "QUERY_MARKER",
    "mqar_dataset",
    "passkey_dataset",
    "power_law_gap_probabilities",
    "validate_mqar_settings",
    "validate_passkey_settings",
]
