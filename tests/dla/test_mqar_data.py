"""Invariants of the MQAR and passkey generators (hf_dla.retrieval_data)."""

import numpy as np
import pytest
from datasets import Dataset

from hf_dla.retrieval_data import (
    IGNORE_INDEX,
    NEEDLE_MARKER,
    QUERY_MARKER,
    mqar_dataset,
    passkey_dataset,
    power_law_gap_probabilities,
)


def _arrays(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return np.array(ds["input_ids"]), np.array(ds["labels"])


@pytest.fixture(scope="module")
def mqar():
    return mqar_dataset(num_examples=200, num_kv_pairs=8, seq_len=96, vocab_size=64, seed=3)


def test_mqar_shapes_and_columns(mqar):
    assert isinstance(mqar, Dataset)
    assert set(mqar.column_names) == {"input_ids", "labels", "num_kv_pairs", "seq_len"}
    input_ids, labels = _arrays(mqar)
    assert input_ids.shape == labels.shape == (200, 96)
    assert input_ids.min() >= 0 and input_ids.max() < 64
    assert set(mqar["num_kv_pairs"]) == {8} and set(mqar["seq_len"]) == {96}


def test_mqar_labels_only_at_answer_positions_and_answers_are_the_paired_values(mqar):
    input_ids, labels = _arrays(mqar)
    for ids, lab in zip(input_ids, labels):
        pairs = dict(zip(ids[0:16:2].tolist(), ids[1:16:2].tolist()))
        answer_positions = np.flatnonzero(lab != IGNORE_INDEX)
        assert len(answer_positions) == 8  # every key queried once
        assert (answer_positions >= 17).all()  # never inside the key-value context
        assert ((answer_positions - 16) % 2 == 1).all()  # the second token of a query slot
        for pos in answer_positions:
            assert lab[pos] == ids[pos]  # HF convention: the label is the input token, the model shifts
            assert pairs[int(ids[pos - 1])] == lab[pos]  # the queried key's paired value
        assert sorted(ids[answer_positions - 1].tolist()) == sorted(pairs)  # each key queried exactly once


def test_mqar_keys_unique_and_in_their_vocabulary_halves(mqar):
    input_ids, _ = _arrays(mqar)
    keys, values = input_ids[:, 0:16:2], input_ids[:, 1:16:2]
    assert all(len(set(row)) == 8 for row in keys.tolist())
    assert all(len(set(row)) == 8 for row in values.tolist())
    assert keys.min() >= 1 and keys.max() < 32
    assert values.min() >= 32 and values.max() < 64


def test_mqar_deterministic_under_seed():
    kwargs = dict(num_examples=20, num_kv_pairs=4, seq_len=64, vocab_size=64)
    first, again, other = (mqar_dataset(**kwargs, seed=s) for s in (7, 7, 8))
    assert first["input_ids"] == again["input_ids"] and first["labels"] == again["labels"]
    assert first["input_ids"] != other["input_ids"]


def test_mqar_filler_without_random_tokens_is_zero():
    input_ids, labels = _arrays(mqar_dataset(10, num_kv_pairs=4, seq_len=40, vocab_size=32, random_filler=False))
    answers = labels != IGNORE_INDEX
    queries = np.roll(answers, -1, axis=1)
    filler = ~answers & ~queries
    filler[:, :8] = False  # the key-value context
    assert (input_ids[filler] == 0).all() and (input_ids[~filler] != 0).all()


def test_mqar_query_gaps_follow_the_power_law():
    """With one pair, the query slot is one draw from p(g) ~ g^(a-1): compare the histogram over
    log-spaced bins with the law on 10k seeded sequences (per-bin std < 0.005), and contrast with uniform."""
    num_slots, power_a = 32, 0.3
    _, labels = _arrays(mqar_dataset(10_000, num_kv_pairs=1, seq_len=2 + 2 * num_slots, vocab_size=8, power_a=power_a))
    slots = (np.argmax(labels != IGNORE_INDEX, axis=1) - 3) // 2
    edges = [0, 1, 2, 4, 8, 16, 32]
    observed = np.histogram(slots, bins=edges)[0] / len(slots)
    expected = np.add.reduceat(power_law_gap_probabilities(num_slots, power_a), edges[:-1])
    np.testing.assert_allclose(observed, expected, atol=0.015)
    assert observed[:3].sum() > 2.5 * 4 / num_slots  # far from uniform: the first 4 slots hold > 2.5x their share


def test_mqar_many_pairs_spread_queries_without_collisions():
    _, labels = _arrays(mqar_dataset(50, num_kv_pairs=16, seq_len=64, vocab_size=40, seed=1))
    assert ((labels != IGNORE_INDEX).sum(1) == 16).all()  # 4 * pairs == seq_len: every query slot used


@pytest.mark.parametrize(
    "kwargs, constraint",
    [
        (dict(num_kv_pairs=17, seq_len=64, vocab_size=256), "num_kv_pairs \\* 4 <= seq_len"),
        (dict(num_kv_pairs=8, seq_len=64, vocab_size=17), "vocab_size=17 is too small.*at least 18"),
        (dict(num_kv_pairs=0, seq_len=64, vocab_size=256), "num_kv_pairs=0 must be at least 1"),
        (dict(num_kv_pairs=4, seq_len=64, vocab_size=256, power_a=0.0), "power_a=0.0 must be positive"),
    ],
)
def test_mqar_bad_settings_name_the_constraint(kwargs, constraint):
    with pytest.raises(ValueError, match=constraint):
        mqar_dataset(num_examples=2, **kwargs)


def test_passkey_layout_and_labels():
    ds = passkey_dataset(50, haystack_len=40, vocab_size=32, passkey_len=3, seed=0)
    input_ids, labels = _arrays(ds)
    assert input_ids.shape == (50, 40 + 8) and set(ds["seq_len"]) == {48}
    for ids, lab, depth in zip(input_ids, labels, ds["depth"]):
        assert (ids == NEEDLE_MARKER).sum() == 1 and ids[-4] == QUERY_MARKER and (ids == QUERY_MARKER).sum() == 1
        needle = int(np.flatnonzero(ids == NEEDLE_MARKER)[0])
        assert needle == round(depth * 40)
        passkey = ids[needle + 1 : needle + 4]
        assert (lab[:-3] == IGNORE_INDEX).all() and (lab[-3:] == passkey).all() and (ids[-3:] == passkey).all()
        filler = np.delete(ids, [needle, needle + 1, needle + 2, needle + 3, 44, 45, 46, 47])
        assert filler.min() >= 3 and filler.max() < 16 and passkey.min() >= 16  # disjoint vocabularies


def test_passkey_fixed_depth_and_determinism():
    first = passkey_dataset(5, haystack_len=100, vocab_size=64, depth=0.25, seed=2)
    assert first["depth"] == [0.25] * 5
    assert all(ids.index(NEEDLE_MARKER) == 25 for ids in first["input_ids"])
    assert first["input_ids"] == passkey_dataset(5, haystack_len=100, vocab_size=64, depth=0.25, seed=2)["input_ids"]
    assert first["input_ids"] != passkey_dataset(5, haystack_len=100, vocab_size=64, depth=0.25, seed=3)["input_ids"]


@pytest.mark.parametrize(
    "kwargs, constraint",
    [
        (dict(haystack_len=0, vocab_size=64), "haystack_len=0 must be at least 1"),
        (dict(haystack_len=10, vocab_size=7), "vocab_size=7 is too small"),
        (dict(haystack_len=10, vocab_size=64, passkey_len=0), "passkey_len=0"),
        (dict(haystack_len=10, vocab_size=64, depth=1.5), "depth=1.5 must lie in \\[0, 1\\]"),
    ],
)
def test_passkey_bad_settings_name_the_constraint(kwargs, constraint):
    with pytest.raises(ValueError, match=constraint):
        passkey_dataset(2, **kwargs)
