"""SIGTERM drains: requests in flight when it arrives all finish with their full answers, a new
connection is refused at once, and then every process of the server is gone."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx2
import pytest

from tests.serving.promtext import parse, value

SLOW = {
    "instruction": "Reverse the order of the words.",
    "inputs": [f"alpha beta {i} gamma delta" for i in range(32)],
    "max_new_tokens": 256,
}
"""Two batches of four of these (128 rows x 256 steps each) keep the one worker busy for seconds
after the SIGTERM (the micro checkpoint's adapters never stop a row early), so the drain has
something to wait for."""


def batches_started(client: httpx2.Client) -> float:
    """Batches the workers have begun (the service counts a batch when it starts)."""
    return value(parse(client.get("/metrics").text), "tagi_batch_requests_count")


def test_sigterm_finishes_in_flight_requests_and_refuses_new_connections(server_factory, serve_checkpoint, tmp_path):
    proc = server_factory(
        tmp_path, serve_checkpoint, "--workers", "1", "--max-batch-size", "4", "--batch-timeout", "0.05", "--drain-seconds", "120"
    )
    try:
        proc.wait_ready()
        with proc.client() as client:
            expected = client.post("/v1/generate", json=SLOW)
            assert expected.status_code == 200, expected.text

        answers: list[tuple[int, dict, float]] = []

        def post() -> None:
            with proc.client() as client:
                response = client.post("/v1/generate", json=SLOW)
                answers.append((response.status_code, response.json(), time.monotonic()))

        with proc.client() as client:
            before = batches_started(client)
            threads = [threading.Thread(target=post) for _ in range(8)]
            for thread in threads:
                thread.start()
            # SIGTERM once the first batch of the eight runs (the rest are queued behind it), not
            # after a fixed sleep, which an idle machine outran.
            deadline = time.monotonic() + 60
            while batches_started(client) == before and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(0.2)  # every connection is accepted
        assert not answers, "the requests finished before the SIGTERM: make SLOW slower"
        os.kill(proc.process.pid, signal.SIGTERM)  # the main process only, as `kill`, docker stop or systemd send it
        terminated = time.monotonic()
        time.sleep(0.5)
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(f"{proc.url}/health", timeout=5)
        for thread in threads:
            thread.join(timeout=150)
        assert len(answers) == 8, f"{8 - len(answers)} in-flight requests lost\n{proc.log_tail()}"
        assert all(status == 200 and body == expected.json() for status, body, _ in answers)
        assert max(answered for *_, answered in answers) - terminated > 0.5, "nothing was left to drain"
        assert proc.wait_gone(60), "processes of the server outlived the drain"
        assert proc.process.returncode == 0
    finally:
        proc.kill()
