"""Tiny DLA configurations and random op inputs shared by the hf_dla tests."""

import pytest
import torch

import hf_dla


def tiny_config(**overrides) -> hf_dla.DLAConfig:
    settings = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=2,
        head_dim=32,
        state_size=16,
        intermediate_size=64,
        max_states=6,
        merge_threshold=0.6,
        chunk_size=8,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(overrides)
    return hf_dla.DLAConfig(**settings)


def random_op_inputs(batch, seq_len, heads, key_dim, value_dim, num_slots, delta_rule, seed=0):
    """q, k, v, log_decay, beta, lam, initial_state as the mixers produce them."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    q, k, v = (
        randn(batch, seq_len, heads, key_dim),
        randn(batch, seq_len, heads, key_dim),
        randn(batch, seq_len, heads, value_dim),
    )
    if delta_rule:
        q = torch.nn.functional.normalize(q, dim=-1) * key_dim**-0.5
        k = torch.nn.functional.normalize(k, dim=-1)
    log_decay = -torch.rand(batch, seq_len, heads, generator=generator)
    beta = torch.rand(batch, seq_len, heads, generator=generator)
    lam = torch.rand(batch, seq_len, heads, num_slots, generator=generator) + 0.5
    initial_state = randn(batch, heads, num_slots, key_dim, value_dim) * 0.5
    return q, k, v, log_decay, beta, lam, initial_state


@pytest.fixture
def make_config():
    return tiny_config


@pytest.fixture
def make_op_inputs():
    return random_op_inputs
