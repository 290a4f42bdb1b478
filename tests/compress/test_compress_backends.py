"""Teacher backends: the local transformers model and a real OpenAI-compatible server on 127.0.0.1."""

import importlib.util
import json
import sys
import time
import types

import pytest

from hf_compress.backends import (
    BackendConfig,
    Generation,
    MalformedAnswerError,
    OpenAIBackend,
    SamplingConfig,
    ServerFailure,
    TeacherBackend,
    TeacherRequestError,
    TeacherUnavailableError,
    TransformersBackend,
    VLLMBackend,
)
from hf_compress.backends.openai_backend import parse_chat_stream
from hf_compress.backends.server_checks import StreamProblem
from kit.tiny import build_tokenizer, tiny_causal_lm

PROBLEMS = [
    "Compute 3 + 4 from left to right.",
    "Compute 12 - 5 * 2 from left to right.",
    "Compute 7 from left to right.",
]


def conversations(problems=PROBLEMS):
    return [[{"role": "user", "content": p}] for p in problems]


@pytest.fixture(scope="module")
def tiny_teacher():
    tokenizer = build_tokenizer()
    return tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=2, seed=0), tokenizer


def test_transformers_batched_left_padded_generation_matches_one_by_one(tiny_teacher):
    model, tokenizer = tiny_teacher
    backend = TransformersBackend(model, tokenizer, batch_size=3)
    greedy = SamplingConfig(n=1, max_new_tokens=8)
    batched = backend.generate(conversations(), greedy, seed=0)
    one_by_one = [backend.generate(conversations([p]), greedy, seed=0)[0] for p in PROBLEMS]
    assert [g[0].text for g in batched] == [g[0].text for g in one_by_one]
    assert tokenizer.padding_side == "right"  # the backend's left padding does not leak into the tokenizer
    for (generation,) in batched:
        assert 1 <= generation.num_tokens <= 8
        assert generation.finish_reason == ("length" if generation.num_tokens == 8 else "stop")


def test_transformers_samples_n_per_problem_reproducibly(tiny_teacher):
    model, tokenizer = tiny_teacher
    backend = TransformersBackend(model, tokenizer, batch_size=2)
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=6)
    first = backend.generate(conversations(), sampling, seed=5)
    again = backend.generate(conversations(), sampling, seed=5)
    other = backend.generate(conversations(), sampling, seed=6)
    assert [len(g) for g in first] == [3, 3, 3]
    texts = [[s.text for s in g] for g in first]
    assert texts == [[s.text for s in g] for g in again]
    assert texts != [[s.text for s in g] for g in other]
    assert len({t for g in texts for t in g}) > 3  # sampling, not the same greedy answer n times


def test_transformers_top_k_one_sampling_is_greedy(tiny_teacher):
    model, tokenizer = tiny_teacher
    backend = TransformersBackend(model, tokenizer, batch_size=3)
    greedy = backend.generate(conversations(), SamplingConfig(max_new_tokens=8), seed=0)
    top_1 = backend.generate(conversations(), SamplingConfig(temperature=1.5, top_k=1, max_new_tokens=8), seed=1)
    assert [g[0].text for g in top_1] == [g[0].text for g in greedy]


def test_transformers_backend_counts_the_end_of_turn_token(tiny_teacher):
    model, tokenizer = tiny_teacher
    backend = TransformersBackend(model, tokenizer)
    eos = tokenizer.eos_token_id
    stopped = backend._to_generation([40, 41, eos, tokenizer.pad_token_id], {eos})
    capped = backend._to_generation([40, 41, 42], {eos})
    assert (stopped.num_tokens, stopped.finish_reason) == (3, "stop")
    assert (capped.num_tokens, capped.finish_reason) == (3, "length")
    assert stopped.text == tokenizer.decode([40, 41])


def test_openai_backend_against_a_real_server(teacher_server):
    backend = OpenAIBackend("teacher", base_url=teacher_server.base_url, max_concurrency=4)
    results = backend.generate(conversations(), SamplingConfig(n=2, max_new_tokens=64), seed=0)
    assert [len(r) for r in results] == [2, 2, 2]
    first = results[0][0]
    assert first.text == "Let me think step by step. 3 + 4 = 7. So the result is clear. The answer is \\boxed{7}."
    assert first.num_tokens == len(first.text.split()) and first.finish_reason == "stop"
    # 12 - 5 * 2 left to right is 14; the server answers wrong (15) for one seed in four, here sample 1.
    assert ["\\boxed{14}" in g.text for g in results[1]] == [True, False]
    assert "\\boxed{15}" in results[1][1].text
    assert teacher_server.behaviour.requests == 6  # one request per sample: exact per-trace usage
    assert "top_k" not in teacher_server.behaviour.last_body  # None keeps the server's default
    assert backend.generate([], SamplingConfig(), seed=0) == []
    backend.generate(conversations(PROBLEMS[:1]), SamplingConfig(temperature=0.6, top_p=0.95, top_k=20), seed=0)
    sent = teacher_server.behaviour.last_body
    assert (sent["temperature"], sent["top_p"], sent["top_k"], sent["seed"]) == (0.6, 0.95, 20, 0)


def test_openai_backend_token_cap_and_concurrency(teacher_server):
    teacher_server.behaviour.delay_seconds = 0.3
    backend = OpenAIBackend("teacher", base_url=teacher_server.base_url, max_concurrency=6)
    start = time.perf_counter()
    results = backend.generate(conversations(), SamplingConfig(n=2, max_new_tokens=5), seed=0)
    elapsed = time.perf_counter() - start
    assert all(g.finish_reason == "length" and g.num_tokens == 5 for r in results for g in r)
    assert elapsed < 6 * 0.3  # the six requests overlapped (serially they take 1.8 s at least)


def test_openai_backend_retries_transient_failures(teacher_server):
    teacher_server.behaviour.fail_next = 2
    backend = OpenAIBackend("teacher", base_url=teacher_server.base_url, max_concurrency=1, backoff_seconds=0.01)
    results = backend.generate(conversations(PROBLEMS[:1]), SamplingConfig(), seed=0)
    assert "\\boxed{7}" in results[0][0].text
    assert teacher_server.behaviour.requests == 3


def test_openai_backend_unreachable_server_gives_a_clear_error(unreachable_url):
    url = unreachable_url
    backend = OpenAIBackend("teacher", base_url=url, max_retries=2, backoff_seconds=0.01)
    with pytest.raises(TeacherUnavailableError, match=r"failed 3 times.*APIConnectionError") as error:
        backend.generate(conversations(PROBLEMS[:1]), SamplingConfig(), seed=0)
    assert url in str(error.value)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed: no error to check")
def test_vllm_backend_explains_how_to_install_it():
    with pytest.raises(ImportError, match=r"pip install .*\[vllm\]"):
        VLLMBackend("any-model")


def test_backend_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="Unknown backend"):
        BackendConfig(backend="tgi", model="m").build()
    with pytest.raises(ValueError, match="needs a model"):
        BackendConfig(backend="openai").build()
    with pytest.raises(ValueError, match="n must be"):
        SamplingConfig(n=0)
    with pytest.raises(ValueError, match="pad token"):
        tokenizer = build_tokenizer()
        tokenizer.pad_token = None
        TransformersBackend(tiny_causal_lm("qwen3", build_tokenizer(), hidden_size=32, num_layers=1), tokenizer)


ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "teacher",
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


def answer(message: dict, finish_reason="stop") -> tuple[int, str, str]:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}
    return 200, "application/json", json.dumps({**ANSWER, "choices": [choice]})


GARBAGE = {
    "invalid JSON": (200, "application/json", '{"id": "chatcmpl-1", "choices": [{"index": 0,'),
    "an HTML page": (200, "text/html", "<html><body>" + "Bad gateway, try later. " * 400 + "</body></html>"),
    "{}": (200, "application/json", "{}"),
    "empty choices": (200, "application/json", json.dumps({**ANSWER, "choices": []})),
    "content null": answer({"content": None}),
    "no usage": (200, "application/json", json.dumps({**json.loads(answer({"content": "7"})[2]), "usage": None})),
    "a 404": (404, "text/html", "<html><head><title>404 Not Found</title></head><body>nginx</body></html>"),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_openai_backend_retries_garbage_then_names_the_server_and_what_it_sent(teacher_server, kind):
    backend = OpenAIBackend(
        "teacher", base_url=teacher_server.base_url, max_concurrency=1, max_retries=2, backoff_seconds=0.01
    )
    teacher_server.behaviour.scripted = [GARBAGE[kind]] * 2  # retried like a 5xx: the third answer is good
    (generations,) = backend.generate(conversations(PROBLEMS[:1]), SamplingConfig(), seed=0)
    assert "\\boxed{7}" in generations[0].text and teacher_server.behaviour.requests == 3

    teacher_server.behaviour.scripted = [GARBAGE[kind]] * 3  # garbage every time: a clear error, not a raw one
    with pytest.raises(TeacherUnavailableError) as error:
        backend.generate(conversations(PROBLEMS[:1]), SamplingConfig(), seed=0)
    message = str(error.value)
    assert teacher_server.base_url in message and "failed 3 times" in message
    assert GARBAGE[kind][2][:40] in message  # what the server sent ...
    assert len(message) < 1500  # ... truncated


def test_openai_backend_records_other_finish_reasons_and_separated_reasoning(teacher_server):
    teacher_server.behaviour.scripted = [
        answer({"content": "The answer is"}, finish_reason="content_filter"),
        answer({"content": "The answer is 7."}, finish_reason=None),
        # vLLM / SGLang with a reasoning parser: the thinking comes apart from the answer
        answer({"content": "The answer is 7.", "reasoning_content": "3 + 4 = 7."}),
        answer({"content": None, "reasoning": "3 + 4 is"}, finish_reason="length"),
    ]
    backend = OpenAIBackend("teacher", base_url=teacher_server.base_url, max_concurrency=1)
    results = backend.generate(conversations(PROBLEMS[:1]), SamplingConfig(n=4), seed=0)
    assert [(g.text, g.finish_reason) for g in results[0]] == [
        ("The answer is", "content_filter"),  # kept as the server said it, counted by the generate stage
        ("The answer is 7.", "unknown"),
        ("<think>\n3 + 4 = 7.\n</think>\n\nThe answer is 7.", "stop"),
        ("<think>\n3 + 4 is", "length"),  # cut while thinking: no answer, but not an empty trace
    ]
    assert teacher_server.behaviour.requests == 4  # none of these is garbage: no retry


def test_openai_backend_does_not_retry_a_rejected_request(teacher_server):
    teacher_server.behaviour.scripted = [
        (
            400,
            "application/json",
            json.dumps(
                {"error": {"message": "top_k must be -1 (disable), or at least 1, got 0.", "type": "BadRequestError"}}
            ),
        )
    ]
    backend = OpenAIBackend("teacher", base_url=teacher_server.base_url, max_retries=3, backoff_seconds=0.01)
    with pytest.raises(TeacherRequestError, match=r"rejected.*400.*top_k must be") as error:
        backend.generate(conversations(PROBLEMS[:1]), SamplingConfig(), seed=0)
    assert teacher_server.base_url in str(error.value) and teacher_server.behaviour.requests == 1


class FakeVLLM(types.ModuleType):
    """Stands in for `vllm` (not installed here): records how the engine is built and answers `chat`."""

    def __init__(self):
        super().__init__("vllm")
        self.engines = []
        fake = self

        class LLM:
            def __init__(self, model, **kwargs):
                fake.engines.append({"model": model, **kwargs})

            def chat(self, conversations, params, use_tqdm=False):
                output = types.SimpleNamespace(text="ok", token_ids=[1, 2], finish_reason="stop")
                return [types.SimpleNamespace(outputs=[output] * params.n) for _ in conversations]

        self.LLM = LLM
        self.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)


def test_vllm_backend_passes_tensor_parallel_size_through(monkeypatch):
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    config = BackendConfig(backend="vllm", model="Qwen/Qwen3-8B", tensor_parallel_size=4)
    backend = config.build()
    assert fake.engines == [{"model": "Qwen/Qwen3-8B", "tensor_parallel_size": 4}]
    assert backend.generate(conversations(PROBLEMS[:2]), SamplingConfig(n=2), seed=0)[1][1].text == "ok"
    assert config.describe() == backend.describe() == {"backend": "vllm", "model": "Qwen/Qwen3-8B"}
    with pytest.raises(ValueError, match="tensor_parallel_size must be"):
        BackendConfig(backend="vllm", model="m", tensor_parallel_size=0)


FAKE_VLLM_PACKAGE = '''
"""A stand-in for vllm: logs each engine it builds; `chat` answers with the prompt and the GPUs it runs on."""
import json
import os
from types import SimpleNamespace


class SamplingParams(SimpleNamespace):
    pass


class LLM:
    def __init__(self, model, **kwargs):
        with open(os.environ["FAKE_VLLM_LOG"], "a") as log:
            log.write(json.dumps({"model": model, **kwargs, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")

    def chat(self, conversations, params, use_tqdm=False):
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        output = lambda c: SimpleNamespace(text=f"{c[-1]['content']} @ {gpus}", token_ids=[1, 2], finish_reason="stop")
        return [SimpleNamespace(outputs=[output(c)] * params.n) for c in conversations]
'''


@pytest.fixture
def fake_vllm_package(tmp_path, monkeypatch):
    """A `vllm` package on sys.path, so that spawned replica processes import it too."""
    (tmp_path / "site" / "vllm").mkdir(parents=True)
    (tmp_path / "site" / "vllm" / "__init__.py").write_text(FAKE_VLLM_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(tmp_path / "engines.jsonl"))
    sys.modules.pop("vllm", None)
    yield tmp_path / "engines.jsonl"
    sys.modules.pop("vllm", None)


@pytest.mark.slow  # two spawned processes importing hf_compress: about 15 s on 2 cores
def test_vllm_data_parallel_replicas_each_answer_a_share_on_their_own_gpus(fake_vllm_package, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7,8")
    backend = BackendConfig(
        backend="vllm", model="Qwen/Qwen3-8B", tensor_parallel_size=2, data_parallel_size=2
    ).build()
    try:
        results = backend.generate(conversations(), SamplingConfig(n=2), seed=0)
    finally:
        backend.close()
    gpus = ["4,5", "4,5", "6,7"]  # three prompts: two to the first replica, one to the second, answers in order
    assert [[g.text for g in r] for r in results] == [[f"{p} @ {g}"] * 2 for p, g in zip(PROBLEMS, gpus)]
    engines = sorted(json.loads(line)["gpus"] for line in fake_vllm_package.read_text().splitlines())
    assert engines == ["4,5", "6,7"]  # one engine per replica, none in this process
    assert all(
        '"tensor_parallel_size": 2' in line and "data_parallel" not in line
        for line in fake_vllm_package.read_text().splitlines()
    )
    assert not any(replica.process.is_alive() for replica in backend.replicas)
    with pytest.raises(ValueError, match=r"needs 6 GPUs, but this process sees 5"):
        BackendConfig(backend="vllm", model="m", tensor_parallel_size=2, data_parallel_size=3).build()


def sse(*chunks) -> list[str]:
    return [line for chunk in chunks for line in (f"data: {json.dumps(chunk)}", "")] + ["data: [DONE]"]


def test_a_streamed_answer_is_put_together_like_a_complete_one():
    lines = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "3 + 4"}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": " = 7."}}]},
        {"choices": [{"index": 0, "delta": {"content": "The answer"}}]},
        {"choices": [{"index": 0, "delta": {"content": " is 7."}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"completion_tokens": 9}},
    )
    seen = []
    generation = parse_chat_stream([": keep-alive", *lines], on_line=lambda: seen.append(1))
    assert generation == Generation("<think>\n3 + 4 = 7.\n</think>\n\nThe answer is 7.", 9, "stop")
    assert len(seen) == len(lines) + 1  # every line counts as a sign of life
    no_usage = sse({"choices": [{"index": 0, "delta": {"content": "7"}, "finish_reason": "length"}]})
    with pytest.raises(StreamProblem, match="usage.completion_tokens") as problem:
        parse_chat_stream(no_usage)
    assert problem.value.kind == "no_usage"
    cut = sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})  # llama-cpp-python's interrupted answer
    with pytest.raises(StreamProblem, match="no finish reason") as problem:
        parse_chat_stream(cut)
    assert problem.value.kind == "interrupted"
    with pytest.raises(StreamProblem, match="empty stream") as problem:
        parse_chat_stream([])
    assert problem.value.kind == "empty"
    with pytest.raises(ServerFailure, match="an error in the stream"):  # vLLM's mid-stream error: retried
        parse_chat_stream(sse({"error": {"message": "engine dead", "code": 500}}))
    with pytest.raises(MalformedAnswerError, match="not JSON"):
        parse_chat_stream(["data: {oops"])


def test_config_values_are_read_like_the_command_line_and_checked():
    sampling = SamplingConfig(n="2", temperature="0.7", top_k="20")  # as a recipe may quote them
    assert (sampling.n, sampling.temperature, sampling.top_k) == (2, 0.7, 20)
    config = BackendConfig(backend="openai", model="m", base_url="http://a:1/v1, http://b:1/v1", max_retries="0")
    assert config.base_urls == ["http://a:1/v1", "http://b:1/v1"] and config.max_retries == 0
    for kwargs, message in [
        ({"top_k": -5}, r"--top_k must be an integer >= 0"),
        ({"n": 2.5}, r"invalid int value"),
        ({"max_new_tokens": 0}, r"--max_new_tokens must be an integer >= 1, got 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            SamplingConfig(**kwargs)
    for kwargs, message in [
        ({"request_timeout": 0}, "--request_timeout must be a number > 0"),
        ({"batch_size": 0}, "--batch_size must be an integer >= 1"),
        ({"backoff_seconds": -1}, "--backoff_seconds must be a number >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            BackendConfig(backend="openai", model="m", **kwargs)


def test_a_missing_local_model_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=rf"--model: no such folder: runs/sft/model \(relative to {tmp_path}\)"
    ):
        BackendConfig(model="runs/sft/model").build()


class EchoBackend(TeacherBackend):
    """A user's backend: answers every problem with its last number boxed."""

    kind = "echo"

    def __init__(self, model: str):
        self.model_name = model

    def generate(self, conversations, sampling, seed):
        answer = lambda text: "\\boxed{" + text.split()[-1] + "}"  # noqa: E731
        return [[Generation(answer(c[-1]["content"]), 3, "stop")] * sampling.n for c in conversations]


def test_a_user_backend_plugs_in_by_name(tmp_path):
    """`register_backend` is all it takes: the config, its checks, `--backend`'s choices and the stages build it."""
    from datasets import Dataset

    from hf_compress import generate
    from hf_compress.backends import BACKEND_REGISTRY, BACKENDS, register_backend

    register_backend("echo", loads_local_files=False)(lambda config: EchoBackend(config.model))
    try:
        assert "echo" in BACKENDS and "echo" in BackendConfig.__dataclass_fields__["backend"].metadata["choices"]
        config = BackendConfig(backend="echo", model="served-name")
        assert config.local_paths() == [] and config.describe() == {"backend": "echo", "model": "served-name"}
        problems = Dataset.from_dict({"problem": ["Say 4", "Say 7"], "answer": ["4", "7"]})
        traces = generate(
            problems, config, SamplingConfig(n=2), output_dir=str(tmp_path / "generate"), prompt_template="{problem}"
        )  # the echo reads the problem's last word
        assert traces["generation"] == ["\\boxed{4}"] * 2 + ["\\boxed{7}"] * 2 and set(traces["teacher"]) == {
            "served-name"
        }
        with pytest.raises(ValueError, match="'echo' is registered already"):
            register_backend("echo")(lambda config: EchoBackend(config.model))
    finally:
        BACKEND_REGISTRY.pop("echo", None)
    with pytest.raises(ValueError, match="Unknown backend 'echo'.*register_backend"):
        BackendConfig(backend="echo")
