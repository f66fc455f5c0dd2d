"""`tagi serve` on a decoder-only checkpoint (a Qwen2-layout base with a chat template): the same API,
mixed-adapter batches over real HTTP, and the OpenAI endpoint rendering messages through the
checkpoint's input_template (the base's chat template)."""

from __future__ import annotations

import io
import json
import signal
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from support import make_causal_checkpoint

import hypernet
from hypernet.chat import input_template_for
from hypernet.families import load_base_tokenizer, read_family
from hypernet.files import BASE_DIR
from hypernet.io import PEFT_CONFIG_FILE
from serving.registry import Registry
from serving.schemas import BASE_MODEL_ID, GenerateRequest
from serving.service import AdapterService
from tests.serving.promtext import parse, value
from tests.serving.server_process import TestServer, start_server

INSTRUCTIONS = ["Reverse the list.", "Count the words in the list."]
INPUTS = ["apple, river, stone", "green, 7, house, cloud"]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def causal_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_causal_checkpoint(tmp_path_factory.mktemp("causal"), "qwen2", chat_template=True)


@pytest.fixture(scope="module")
def causal_server(tmp_path_factory: pytest.TempPathFactory, causal_checkpoint: Path) -> Iterator[TestServer]:
    """One worker gathering batches for 0.3 s: concurrent requests share a batch."""
    proc = start_server(
        tmp_path_factory.mktemp("serve-causal"), causal_checkpoint, "--max-batch-size", "8", "--batch-timeout", "0.3"
    )
    try:
        yield proc.wait_ready()
    finally:
        stopped = proc.stop(signal.SIGINT)
        proc.kill()
    assert stopped, "SIGINT left processes of the server's group behind"


def test_mixed_batch_of_two_adapters_and_the_base_equals_generate_row_by_row(causal_server, causal_checkpoint):
    local = hypernet.load(causal_checkpoint)
    adapters = [local.adapter(text) for text in INSTRUCTIONS]
    expected = [local.generate(INPUTS, [adapter] * len(INPUTS), max_new_tokens=NEW_TOKENS) for adapter in adapters]
    expected_base = local.generate(INPUTS[:1], [None], max_new_tokens=NEW_TOKENS)
    assert len({tuple(rows) for rows in [*expected, expected_base * len(INPUTS)]}) == 3, "adapters must change outputs"

    with causal_server.client() as client:
        info = client.get("/info").json()["model"]
        assert info["input_template"] == local.config.input_template != "{input}\n"
        assert (info["base_family"], info["base_kind"]) == ("qwen2", "causal")
        before = client.get("/metrics").text
        results: dict[str, object] = {}
        barrier = threading.Barrier(3)

        def adapted(i: int) -> None:
            barrier.wait(timeout=30)
            body = {"instruction": INSTRUCTIONS[i], "inputs": INPUTS, "max_new_tokens": NEW_TOKENS}
            results[f"adapter{i}"] = client.post("/v1/generate", json=body)

        def base() -> None:
            barrier.wait(timeout=30)
            body = {"model": BASE_MODEL_ID, "messages": [{"role": "user", "content": INPUTS[0]}], "max_tokens": NEW_TOKENS}
            results["base"] = client.post("/v1/chat/completions", json=body)

        threads = [threading.Thread(target=adapted, args=(i,)) for i in range(2)] + [threading.Thread(target=base)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        for i, adapter in enumerate(adapters):
            response = results[f"adapter{i}"]
            assert response.status_code == 200, response.text
            assert response.json()["outputs"] == expected[i] and response.json()["adapter_id"] == adapter.adapter_id
        assert results["base"].status_code == 200, results["base"].text
        assert results["base"].json()["choices"][0]["message"]["content"] == expected_base[0]

        after = client.get("/metrics").text
    # The three requests were decoded in one forward pass with several adapters.
    mixed = [
        value(samples, "tagi_batch_adapters_count") - value(samples, "tagi_batch_adapters_bucket", le="1.0")
        for samples in (parse(before), parse(after))
    ]
    assert mixed[1] > mixed[0]


def test_openai_chat_renders_the_message_through_the_chat_template(causal_server, causal_checkpoint):
    local = hypernet.load(causal_checkpoint)
    # The checkpoint's input_template is the base's own chat template around the message.
    tokenizer = load_base_tokenizer(causal_checkpoint / BASE_DIR, read_family(causal_checkpoint / BASE_DIR))
    assert local.config.input_template == input_template_for(tokenizer)
    adapter = local.adapter(INSTRUCTIONS[0])
    text = INPUTS[1]
    expected = local.generate([text], [adapter], max_new_tokens=NEW_TOKENS)[0]

    api = openai.OpenAI(base_url=f"{causal_server.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": INSTRUCTIONS[0]}, {"role": "user", "content": text}]
    reply = api.chat.completions.create(model=BASE_MODEL_ID, messages=messages, max_tokens=NEW_TOKENS)
    assert reply.choices[0].message.content == expected and reply.model == adapter.adapter_id
    stream = api.chat.completions.create(model=adapter.adapter_id, messages=messages[1:], max_tokens=NEW_TOKENS, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == expected
    assert adapter.adapter_id in [m.id for m in api.models.list()]

    # The server's PEFT archive of a causal adapter is the causal export.
    with causal_server.client() as client:
        response = client.get(f"/v1/adapters/{adapter.adapter_id}/peft")
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        config = json.load(archive.extractfile(f"{adapter.adapter_id}/{PEFT_CONFIG_FILE}"))
        tagi = json.load(archive.extractfile(f"{adapter.adapter_id}/tagi.json"))
    assert config["task_type"] == "CAUSAL_LM" and config["target_modules"] == sorted(local.config.generator.target_modules)
    assert tagi["input_template"] == local.config.input_template and config["base_model_name_or_path"] == BASE_DIR


def test_the_peft_swap_baseline_serves_a_causal_checkpoint(causal_checkpoint, tmp_path):
    """The benchmark's PEFT engine (left-padded prompts, prompt cut off its output) equals the mixed engine."""
    from serving.baseline import SwapPerRequestEngine

    model = hypernet.load(causal_checkpoint)
    registry = Registry(tmp_path, model.fingerprint)
    swap = AdapterService(model, registry, tmp_path, cache_bytes=2**26, engine=SwapPerRequestEngine(model, causal_checkpoint))
    mixed = AdapterService(model, registry, tmp_path, cache_bytes=2**26)
    # Inputs of different token lengths, so prompts are padded.
    jobs = [
        GenerateRequest(instruction=text, inputs=[INPUTS[0], "seven"], fusion=False, max_new_tokens=NEW_TOKENS)
        for text in INSTRUCTIONS
    ] + [GenerateRequest(inputs=INPUTS, max_new_tokens=NEW_TOKENS, fusion=False)]
    assert swap.run(jobs) == mixed.run(jobs)
