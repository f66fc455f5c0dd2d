"""State that stays bounded however long a server runs (issue 11, item 4): registry rows
(--max-adapters, least recently used go), PEFT archives (built per request, never stored), and
list endpoints answered a page at a time."""

from __future__ import annotations

import io
import tarfile
import threading
from pathlib import Path

import pytest

from serving.registry import REGISTRY_FILE
from serving.schemas import BASE_MODEL_ID, MAX_PAGE_SIZE

MAX_ADAPTERS = 4
INSTRUCTIONS = [f"Repeat the list {word} times." for word in ("two", "three", "four", "five", "six", "seven")]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bounded") / "state"


@pytest.fixture(scope="module")
def server(server_factory, state_dir, serve_checkpoint):
    args = ("--workers", "1", "--batch-timeout", "0.05", "--max-adapters", str(MAX_ADAPTERS))
    proc = server_factory(state_dir.parent, serve_checkpoint, *args, state_dir=state_dir)
    try:
        yield proc.wait_ready()
    finally:
        proc.close()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def create(client, instruction: str) -> str:
    response = client.post("/v1/adapters", json={"instruction": instruction})
    assert response.status_code == 200, response.text
    return response.json()["adapter_id"]


def listed(client) -> set[str]:
    return {a["adapter_id"] for a in client.get("/v1/adapters").json()["adapters"]}


def test_beyond_max_adapters_the_least_recently_used_is_forgotten(client):
    ids = [create(client, text) for text in INSTRUCTIONS[:MAX_ADAPTERS]]
    generate = {"adapter_id": ids[0], "inputs": ["a, b"], "max_new_tokens": 2}
    assert client.post("/v1/generate", json=generate).status_code == 200  # a use: ids[1] is now the oldest unused
    newest = create(client, INSTRUCTIONS[MAX_ADAPTERS])
    assert listed(client) == {*ids[:1], *ids[2:], newest}

    forgotten = ids[1]
    assert client.get(f"/v1/adapters/{forgotten}").status_code == 404
    assert client.post("/v1/generate", json={**generate, "adapter_id": forgotten}).status_code == 404
    chat = {"model": forgotten, "messages": [{"role": "user", "content": "a, b"}], "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=chat).status_code == 404
    assert client.get(f"/v1/adapters/{forgotten}/peft").status_code == 404
    message = client.get(f"/v1/adapters/{forgotten}").json()["error"]["message"]
    assert "least recently used" in message

    assert create(client, INSTRUCTIONS[1]) == forgotten, "posting the instruction again re-creates the same id"
    assert client.get(f"/v1/adapters/{forgotten}").status_code == 200
    assert len(listed(client)) == MAX_ADAPTERS


def test_downloads_store_nothing_and_are_reproducible(client, state_dir):
    """Issue 11: every download left a ~200 KB archive in the state directory, forever."""
    ids = sorted(listed(client))
    for _ in range(3):
        archives = {adapter_id: client.get(f"/v1/adapters/{adapter_id}/peft") for adapter_id in ids}
        for adapter_id, response in archives.items():
            assert response.status_code == 200 and response.headers["content-type"] == "application/gzip"
            with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
                names = sorted(tar.getnames())
            assert names == [
                adapter_id,
                *(f"{adapter_id}/{f}" for f in ("adapter_config.json", "adapter_model.safetensors", "tagi.json")),
            ]
    again = client.get(f"/v1/adapters/{ids[0]}/peft").content
    assert again == archives[ids[0]].content, "the same adapter gives the same bytes"
    stored = {p.name for p in state_dir.rglob("*") if p.is_file()}
    assert stored <= {REGISTRY_FILE, f"{REGISTRY_FILE}-wal", f"{REGISTRY_FILE}-shm"}, stored


def test_a_download_racing_a_delete_is_whole_or_404(client):
    adapter_id = create(client, INSTRUCTIONS[5])
    results: list[tuple[int, bytes]] = []
    barrier = threading.Barrier(9)

    def download() -> None:
        barrier.wait(timeout=30)
        response = client.get(f"/v1/adapters/{adapter_id}/peft")
        results.append((response.status_code, response.content))

    threads = [threading.Thread(target=download) for _ in range(8)]
    for t in threads:
        t.start()
    barrier.wait(timeout=30)
    deleted = client.delete(f"/v1/adapters/{adapter_id}")
    for t in threads:
        t.join(timeout=120)
    assert deleted.status_code == 200 and len(results) == 8
    for status, content in results:
        assert status in (200, 404)
        if status == 200:
            with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
                assert len(tar.getnames()) == 4, "a whole archive"
    assert client.get(f"/v1/adapters/{adapter_id}/peft").status_code == 404


def walk(client, path: str, key: str, id_key: str, limit: int) -> list[str]:
    seen, after = [], None
    while True:
        params = {"limit": limit, **({"after": after} if after else {})}
        page = client.get(path, params=params).json()
        assert len(page[key]) <= limit
        seen += [row[id_key] for row in page[key]]
        if not page["has_more"]:
            assert page["next"] is None
            return seen
        assert page["next"] == seen[-1]
        after = page["next"]


def test_pagination_walks_every_row_exactly_once(client):
    everything = client.get("/v1/adapters").json()
    assert not everything["has_more"] and everything["next"] is None
    ids = [a["adapter_id"] for a in everything["adapters"]]
    assert ids == sorted(ids) and len(ids) >= 3, "ordered by id"
    for limit in (1, 2, len(ids)):
        assert walk(client, "/v1/adapters", "adapters", "adapter_id", limit) == ids
        assert walk(client, "/v1/models", "data", "id", limit) == [BASE_MODEL_ID, *ids]


@pytest.mark.parametrize(
    "query",
    [{"limit": 0}, {"limit": MAX_PAGE_SIZE + 1}, {"limit": "x"}, {"after": "not-an-id"}, {"after": "A" * 32}],
    ids=["zero", "over", "text", "bad cursor", "upper-case cursor"],
)
@pytest.mark.parametrize("path", ["/v1/adapters", "/v1/models"])
def test_bad_page_parameters_are_422(client, path, query):
    response = client.get(path, params=query)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"]
