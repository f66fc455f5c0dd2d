"""POST /v1/adapters with a list of instructions, on a real `tagi serve` over HTTP."""

from __future__ import annotations

import io
import tarfile

import torch
from safetensors.torch import load

import hypernet
from hypernet.io import PEFT_WEIGHTS_FILE, peft_state_dict
from serving.schemas import MAX_BATCH_INSTRUCTIONS

INSTRUCTIONS = [
    "Reverse the list, batched.",
    "Count the words, batched.",
    "Reverse the list, batched.",
    "Name the first item, batched.",
]


def peft_weights(client, adapter_id: str) -> dict[str, torch.Tensor]:
    response = client.get(f"/v1/adapters/{adapter_id}/peft")
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(PEFT_WEIGHTS_FILE))
        return load(archive.extractfile(member).read())


def test_a_list_of_instructions_gives_one_registered_adapter_each_in_order(server, serve_checkpoint):
    local = hypernet.load(serve_checkpoint)
    with server.client() as client:
        response = client.post("/v1/adapters", json={"instructions": INSTRUCTIONS})
        assert response.status_code == 200, response.text
        items = response.json()["adapters"]
        assert [item["adapter_id"] for item in items] == [local.adapter(t).adapter_id for t in INSTRUCTIONS]
        assert items[0]["adapter_id"] == items[2]["adapter_id"] and len({i["adapter_id"] for i in items}) == 3
        # One job, one generator pass: the new adapters share its time equally.
        new = [item for item in items if not item["cached"]]
        assert len(new) == 4 and len({item["generation_ms"] for item in new}) == 1 and new[0]["generation_ms"] > 0
        for item, text in zip(items, INSTRUCTIONS):
            info = client.get(f"/v1/adapters/{item['adapter_id']}")
            assert info.status_code == 200 and info.json()["instruction"] == text
            assert item["num_parameters"] > 0 and item["rank"] == local.config.generator.rank
        # What the server generated in its batch is the adapter of that instruction.
        served = peft_weights(client, items[1]["adapter_id"])
        expected = peft_state_dict(local.adapter(INSTRUCTIONS[1]))
        assert served.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(served[key], expected[key], rtol=1e-5, atol=1e-7)
        by_id = client.post(
            "/v1/generate", json={"adapter_id": items[3]["adapter_id"], "inputs": ["apple, river"], "max_new_tokens": 6}
        )
        by_text = client.post(
            "/v1/generate", json={"instruction": INSTRUCTIONS[3], "inputs": ["apple, river"], "max_new_tokens": 6}
        )
        assert by_id.status_code == by_text.status_code == 200 and by_id.json()["outputs"] == by_text.json()["outputs"]

        again = client.post("/v1/adapters", json={"instructions": INSTRUCTIONS[:2]})
        # Either worker may answer (two of them, each with its own cache): the same ids either way.
        assert again.status_code == 200 and again.json()["adapters"] == [
            {**item, "cached": a["cached"], "generation_ms": a["generation_ms"]}
            for item, a in zip(items[:2], again.json()["adapters"])
        ]

        single = client.post("/v1/adapters", json={"instruction": INSTRUCTIONS[0]})
        assert (
            single.status_code == 200
            and single.json()["adapter_id"] == items[0]["adapter_id"]
            and "adapters" not in single.json()
        )


def test_bad_lists_are_refused_with_a_json_message(server):
    cases = [
        ({"instructions": []}, 422, "instructions"),
        ({"instructions": ["Reverse the list.", "   "]}, 422, "empty"),
        ({"instructions": ["Reverse the list.", 7]}, 422, "instructions"),
        ({"instructions": ["x"] * (MAX_BATCH_INSTRUCTIONS + 1)}, 422, "instructions"),
        ({"instruction": "Reverse the list.", "instructions": ["Count the words."]}, 422, "instruction"),
        ({"instructions": ["Reverse the list.", "word " * 300]}, 413, "instruction 1"),
    ]
    with server.client() as client:
        for body, status, fragment in cases:
            response = client.post("/v1/adapters", json=body)
            assert response.status_code == status, (body, response.text)
            assert fragment in response.text and response.headers["content-type"].startswith("application/json")
