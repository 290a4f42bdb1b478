"""The `transformers` teacher backend: a local causal LM, batched `generate` over left-padded chat prompts."""

from __future__ import annotations

from ..validation import check_local_path
from .base import Generation, TeacherBackend
from .registry import register_backend


class TransformersBackend(TeacherBackend):
    """A local causal LM, sampled with batched `generate` over left-padded chat prompts."""

    kind = "transformers"

    def __init__(self, model, tokenizer=None, *, batch_size: int = 16, device: str | None = None, dtype="auto"):
        """`model` is a path / Hub id (loaded with `dtype`, on `device` or the GPU if there is one) or a model
        object (used where it is, unless `device` is given)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, str):
            self.model_name = model
            tokenizer = tokenizer if tokenizer is not None else model
            check_local_path(model, "--model")
            if isinstance(tokenizer, str):
                check_local_path(tokenizer, "--tokenizer")
            model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
            device = device or ("cuda" if torch.cuda.is_available() else None)
        else:
            self.model_name = getattr(model, "name_or_path", "") or type(model).__name__
            if tokenizer is None:
                raise ValueError("Pass the tokenizer along with a model object (or give the model as a path).")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer) if isinstance(tokenizer, str) else tokenizer
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token` before batched generation.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model = model.to(device) if device else model
        self.model.eval()
        self.batch_size = batch_size

    def describe(self):
        # The batch size changes what is sampled: seeds are set per batch, and padding shifts the numerics.
        return {**super().describe(), "batch_size": self.batch_size}

    def generate(self, conversations, sampling, seed):
        import torch

        results = []
        for start in range(0, len(conversations), self.batch_size):
            torch.manual_seed(seed + start)
            results += self._generate_batch(conversations[start : start + self.batch_size], sampling)
        return results

    def _generate_batch(self, conversations, sampling):
        import torch

        texts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations
        ]
        padding_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # decoder-only models continue from the last position
        try:
            inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            self.tokenizer.padding_side = padding_side
        inputs = inputs.to(self.model.device)
        do_sample = sampling.temperature > 0
        sample_kwargs = dict(temperature=sampling.temperature, top_p=sampling.top_p) if do_sample else {}
        if do_sample and sampling.top_k is not None:
            sample_kwargs["top_k"] = sampling.top_k
        with torch.no_grad():
            output = self.model.generate(
                **inputs,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=do_sample,
                num_return_sequences=sampling.n,
                pad_token_id=self.tokenizer.pad_token_id,
                **sample_kwargs,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        eos_ids = self._eos_token_ids()
        generations = [self._to_generation(row, eos_ids) for row in new_tokens.tolist()]
        return [generations[i * sampling.n : (i + 1) * sampling.n] for i in range(len(conversations))]

    def _eos_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        return {e for e in eos + [self.tokenizer.eos_token_id] if e is not None}

    def _to_generation(self, token_ids: list[int], eos_ids: set[int]) -> Generation:
        end = next((i for i, t in enumerate(token_ids) if t in eos_ids), None)
        kept = token_ids if end is None else token_ids[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        # The end-of-turn token counts as generated: it is what the student will be trained to emit.
        num_tokens = len(kept) if end is None else end + 1
        return Generation(text=text, num_tokens=num_tokens, finish_reason="length" if end is None else "stop")


@register_backend("transformers", cache_fields=("batch_size",))
def transformers_from_config(config) -> TransformersBackend:
    """`--backend transformers`: the model (and tokenizer) loaded here, batched `generate`."""
    return TransformersBackend(config.model, config.tokenizer, batch_size=config.batch_size, device=config.device)
