"""The cache keyword of DLA models: `cache=` (transformers 5's name) and `past_key_values=` (the older one, still
passed by many callers) continue the same sequence, `use_cache` behaves as in transformers' Mamba-2, and
`generate(inputs_embeds=...)` works."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_dla

MIXERS = ["mamba2", "gated_deltanet"]
MEMORIES = ["vanilla", "loglinear", "dla"]


def build(make_config, **overrides):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(make_config(**overrides)).eval()


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("memory", MEMORIES)
def test_decoding_with_past_key_values_equals_the_full_forward(mixer, memory, make_config):
    """Left-padded prompt, chunked prefill, a chunked continuation and single steps, all through
    `past_key_values=`: the logits of every real token equal one forward over the whole padded batch."""
    model = build(make_config, mixer=mixer, memory=memory)
    ids = torch.randint(3, 64, (2, 22), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # row 0 is left-padded
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        out = model(ids[:, :9], attention_mask=mask[:, :9])  # eval mode: use_cache defaults to config.use_cache
        assert isinstance(out.cache, hf_dla.DLACache)
        logits, cache = [out.logits], out.cache
        out = model(ids[:, 9:14], attention_mask=mask[:, :14], past_key_values=cache)
        assert out.cache is cache  # updated in place and returned
        logits.append(out.logits)
        for t in range(14, ids.shape[1]):
            logits.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(logits, 1)[real], full[real], atol=1e-4, rtol=1e-4)


def test_cache_keywords_and_use_cache_follow_transformers_mamba2(make_config):
    model = build(make_config, memory="dla")
    ids = torch.randint(3, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids, use_cache=False)
        assert full.cache is None
        prefix = model(ids[:, :8], use_cache=True).cache
        # a passed cache is continued whatever use_cache says; only a returned cache depends on it (as in Mamba-2)
        rest = model(ids[:, 8:], past_key_values=prefix, use_cache=False)
        assert rest.cache is None
        torch.testing.assert_close(rest.logits, full.logits[:, 8:], atol=1e-4, rtol=1e-4)
        again = model.model(ids[:, 8:], cache_params=model(ids[:, :8]).cache)  # Mamba-2's older name
        torch.testing.assert_close(
            again.last_hidden_state, model.model(ids).last_hidden_state[:, 8:], atol=1e-4, rtol=1e-4
        )
        with pytest.raises(ValueError, match="Both `past_key_values` and `cache`"):
            model(ids, cache=prefix, past_key_values=prefix)
    model.train()
    assert model(ids).cache is None  # training: no cache unless asked for
    model.activation_checkpointing_enable()
    assert model(ids, use_cache=True).cache is None  # recomputed blocks would write it twice


@pytest.mark.parametrize("mixer", MIXERS)
def test_generate_from_inputs_embeds_equals_generate_from_input_ids(mixer, make_config):
    model = build(make_config, mixer=mixer, memory="dla")
    ids = torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        from_ids = model.generate(ids, **kwargs)
        from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(ids), **kwargs)
        recomputed = model.generate(inputs_embeds=model.get_input_embeddings()(ids), use_cache=False, **kwargs)
    assert torch.equal(from_embeds, from_ids[:, ids.shape[1] :])  # only the new tokens, as for any decoder
    assert torch.equal(recomputed, from_embeds)
