"""vLLM data parallelism: one engine per child process, each on its own GPUs, driven over a pipe (vLLM's `LLM` does
not run data parallel in one process)."""

from __future__ import annotations

import atexit
import contextlib
import os
import traceback
import weakref

from .base import Generation


def chat_generations(llm, vllm, conversations, params: dict) -> list[list[Generation]]:
    outputs = llm.chat(conversations, vllm.SamplingParams(**params), use_tqdm=False)
    return [
        [Generation(o.text, len(o.token_ids), o.finish_reason or "unknown") for o in out.outputs] for out in outputs
    ]


def split_evenly(items: list, parts: int) -> list[list]:
    """`items` cut into `parts` contiguous pieces whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(parts)]


def replica_devices(data_parallel_size: int, tensor_parallel_size: int) -> list[str]:
    """`CUDA_VISIBLE_DEVICES` for each replica: consecutive groups of `tensor_parallel_size` of the GPUs this
    process sees (its own `CUDA_VISIBLE_DEVICES`, else every GPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())]
    needed = data_parallel_size * tensor_parallel_size
    if len(devices) < needed:
        raise ValueError(
            f"data_parallel_size={data_parallel_size} x tensor_parallel_size={tensor_parallel_size} needs {needed} "
            f"GPUs, but this process sees {len(devices)} ({devices}); lower one of them or set CUDA_VISIBLE_DEVICES."
        )
    return [
        ",".join(devices[r * tensor_parallel_size : (r + 1) * tensor_parallel_size]) for r in range(data_parallel_size)
    ]


def serve_replica(model: str, llm_kwargs: dict, devices: str, connection) -> None:
    """A replica process: one vLLM engine on `devices`, answering (conversations, sampling params) until None."""
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        import vllm

        llm = vllm.LLM(model=model, **llm_kwargs)
        connection.send(("ready", None))
        while (request := connection.recv()) is not None:
            connection.send(("done", chat_generations(llm, vllm, *request)))
    except EOFError:
        pass  # the driving process is gone
    except Exception:
        with contextlib.suppress(OSError):
            connection.send(("error", traceback.format_exc()))


class VLLMReplica:
    """One vLLM engine in a child process (spawned: CUDA cannot be forked), driven over a pipe."""

    def __init__(self, model: str, llm_kwargs: dict, devices: str):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.devices = devices
        self.connection, child_end = context.Pipe()
        # Not a daemon: vLLM starts processes of its own, which a daemon process may not.
        self.process = context.Process(
            target=serve_replica, args=(model, llm_kwargs, devices, child_end), name=f"vllm-replica-{devices}"
        )
        self.process.start()
        child_end.close()
        self._finalizer = weakref.finalize(self, VLLMReplica._stop, self.process, self.connection)
        # Registered after multiprocessing's own exit hook, so it runs first: that hook waits for the replica.
        atexit.register(self._finalizer)

    def wait_ready(self) -> None:
        self._answer()

    def send(self, conversations: list, params: dict) -> None:
        self.connection.send((conversations, params))

    def receive(self) -> list[list[Generation]]:
        return self._answer()

    def _answer(self):
        try:
            status, payload = self.connection.recv()
        except EOFError:
            raise RuntimeError(
                f"The vLLM replica on GPUs {self.devices} exited (exit code "
                f"{self.process.exitcode}); see its log above."
            ) from None
        if status == "error":
            raise RuntimeError(f"The vLLM replica on GPUs {self.devices} failed:\n{payload}")
        return payload

    def close(self) -> None:
        self._finalizer()

    @staticmethod
    def _stop(process, connection) -> None:
        # At exit or on close: ask politely, then make sure (an interrupted replica may be mid-generation).
        with contextlib.suppress(OSError, ValueError):
            connection.send(None)
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)
