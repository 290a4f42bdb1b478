"""The `vllm` teacher backend: vLLM's offline engine, in this process or as data-parallel replica processes."""

from __future__ import annotations

from ..validation import check_local_path
from .base import TeacherBackend
from .registry import register_backend
from .vllm_replicas import VLLMReplica, chat_generations, replica_devices, split_evenly


class VLLMBackend(TeacherBackend):
    """vLLM's offline `LLM.chat` engine; only available when `vllm` is installed (`pip install .[vllm]`).

    `tensor_parallel_size` GPUs hold one copy of the model. With `data_parallel_size > 1` there are that many
    copies, each a vLLM engine in its own process on its own GPUs (vLLM's `LLM` does not run data parallel in one
    process), and each `generate` call gives every copy a contiguous share of the prompts. Requests are seeded
    one by one, so the split does not change what is sampled.
    """

    kind = "vllm"

    def __init__(self, model: str, *, tensor_parallel_size: int = 1, data_parallel_size: int = 1, **llm_kwargs):
        try:
            import vllm
        except ImportError as error:
            raise ImportError(
                "The vllm backend needs the `vllm` package: `pip install 'hf-efficient-reasoning[vllm]'`. "
                "Without it, use backend='transformers', or serve the model and use backend='openai'."
            ) from error
        check_local_path(model, "--model")
        self._vllm = vllm
        self.model_name = model
        llm_kwargs = {"tensor_parallel_size": tensor_parallel_size, **llm_kwargs}
        if data_parallel_size == 1:
            self.llm, self.replicas = vllm.LLM(model=model, **llm_kwargs), []
        else:
            self.llm = None
            self.replicas = [
                VLLMReplica(model, llm_kwargs, devices)
                for devices in replica_devices(data_parallel_size, tensor_parallel_size)
            ]
            for replica in self.replicas:
                replica.wait_ready()

    def generate(self, conversations, sampling, seed):
        params = dict(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            **({"top_k": sampling.top_k or -1} if sampling.top_k is not None else {}),  # vLLM: -1 turns it off
        )
        if not self.replicas:
            return chat_generations(self.llm, self._vllm, conversations, params)
        shares = split_evenly(conversations, len(self.replicas))
        for replica, share in zip(self.replicas, shares):
            replica.send(share, params)  # every replica works at once ...
        return [generations for replica in self.replicas for generations in replica.receive()]  # ... in order

    def close(self) -> None:
        """Stop the replica processes (also done at exit)."""
        for replica in self.replicas:
            replica.close()


@register_backend("vllm")
def vllm_from_config(config) -> VLLMBackend:
    """`--backend vllm`: vLLM's offline engine, `tensor_parallel_size` x `data_parallel_size` GPUs."""
    return VLLMBackend(
        config.model, tensor_parallel_size=config.tensor_parallel_size, data_parallel_size=config.data_parallel_size
    )
