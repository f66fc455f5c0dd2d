"""`tagi bench serve`: real servers on loopback, driven by the same bounded load, one run.

Configurations, each a `tagi serve` process (one inference worker) measured one after the
other on the same machine:
    mixed      --max-batch-size 8: requests with different instructions share forward passes
    base       the same server, requests without an instruction (plain base model)
    unbatched  --max-batch-size 1: every request alone (its outputs are the single-request
               reference that mixed outputs must equal)
    swap       --engine peft-swap: one PEFT model holding every adapter, `set_adapter` before
               each request, requests one at a time
All requests go through /v1/chat/completions with fusion off, because PEFT cannot fuse and the
comparison must be between equal computations. Every server first sees each instruction once
(untimed), so the timed load measures serving, not adapter generation.

Those four configurations are the `throughput` part. Other parts (`--parts`), each on its own
server, measure what an operator cares about when things go wrong; they measure whatever the
server does, so a missing feature shows as a bad figure, not as a failed benchmark:
    fairness   p99 of small requests (1 input, 4 tokens) alone, then while large ones (32 inputs x
               256 tokens) keep arriving: small_p99_ms_under_heavy and its ratio to the p99 alone
    recovery   kill -9 of one of two inference workers under load: recovery_s (until requests
               succeed again), the errors, the slowest request across the kill, /health's answer
    drain      SIGTERM with requests in flight: drain_lost (requests not answered 200)
    memory     a worker's RSS after 1,000 / 3,000 / 5,000 new instructions with an 8 MB adapter
               cache (slow: not in the default parts)
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hypernet.errors import UserError
from hypernet.files import write_json
from serving.schemas import BASE_MODEL_ID, MAX_NEW_TOKENS

INSTRUCTIONS = [
    "Reverse the order of the items in the list.",
    "Sort the items of the list alphabetically.",
    "Count the words in the text and answer with a number.",
    "Write the list in capital letters.",
    "Name the first item of the list.",
    "Keep only the words that are colours.",
    "Repeat the last item of the list twice.",
    "Replace every number in the text by its name.",
]
INPUTS = [
    "apple, river, stone",
    "green house, 7 clouds",
    "seven bright tables",
    "paper, garden, silver, music",
    "window 3 cloud",
    "stone river apple green",
    "music paper",
    "a bright silver window",
    "house, table, 12, garden",
    "river cloud seven",
    "green, paper",
    "silver table music apple",
]
TARGETS = {"batched_vs_unbatched": 2.5, "mixed_vs_base_only": 0.8, "mixed_vs_swap_per_request": 2.0}
PARTS = ("throughput", "fairness", "recovery", "drain", "memory")
DEFAULT_PARTS = ("throughput", "fairness", "recovery", "drain")
FAIRNESS_INSTRUCTION = "Repeat the last item of the list twice."
HEAVY_INPUTS = 32
HEAVY_TOKENS = 256


@dataclass(frozen=True)
class BenchConfig:
    requests: int = 400
    """Requests per configuration (the issue asks for at least 200)."""
    clients: int = 16
    instructions: int = 8
    max_new_tokens: int = 16
    time_limit_s: float = 60.0
    """A configuration's load stops here even if not every request was sent."""
    parts: tuple[str, ...] = DEFAULT_PARTS
    fairness_seconds: float = 20.0
    """How long small requests are timed, alone and then under heavy load (each)."""
    memory_checkpoints: tuple[int, ...] = (1000, 3000, 5000)
    """New instructions after which the memory part reads the worker's RSS."""
    memory_cache_mb: float = 8.0

    def __post_init__(self) -> None:
        if self.requests < 1 or self.clients < 1 or self.instructions < 1:
            raise UserError("--requests, --clients and --instructions must be >= 1")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise UserError(f"--max-new-tokens must be within 1..{MAX_NEW_TOKENS}")
        if self.time_limit_s <= 0 or self.fairness_seconds <= 0:
            raise UserError("--time-limit and --fairness-seconds must be > 0")
        unknown = set(self.parts) - set(PARTS)
        if unknown or not self.parts:
            raise UserError(f"--parts takes a comma-separated list of {', '.join(PARTS)}; got {','.join(self.parts)!r}")
        if not self.memory_checkpoints or list(self.memory_checkpoints) != sorted(set(self.memory_checkpoints)):
            raise UserError("--memory-checkpoints must be increasing counts of instructions, e.g. 1000,3000,5000")
        if self.memory_checkpoints[0] < 1 or self.memory_cache_mb < 0:
            raise UserError("--memory-checkpoints must be >= 1 and --memory-cache-mb >= 0")

    def instruction(self, i: int) -> str:
        text = INSTRUCTIONS[i % len(INSTRUCTIONS)]
        return text if i < len(INSTRUCTIONS) else f"{text} (variant {i // len(INSTRUCTIONS)})"

    def bodies(self, base: bool) -> list[dict]:
        """Request i: instruction i mod n, input i mod len(INPUTS); the same in every configuration."""
        result = []
        for i in range(self.requests):
            messages = [{"role": "user", "content": INPUTS[i % len(INPUTS)]}]
            if not base:
                messages.insert(0, {"role": "system", "content": self.instruction(i % self.instructions)})
            result.append({"model": BASE_MODEL_ID, "messages": messages, "max_tokens": self.max_new_tokens, "fusion": False})
        return result


@dataclass
class LoadResult:
    name: str
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    outputs: dict[int, str] = field(default_factory=dict)
    errors: int = 0
    batch_stats: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return len(self.outputs) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the latencies of successful requests."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class Client:
    """One keep-alive HTTP connection to the server that reconnects after any failure, so a load
    keeps going through a dead worker or a closed connection and counts what failed."""

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        host, port = url.removeprefix("http://").split(":")
        self._address = (host, int(port))
        self._timeout = timeout
        self._connection = http.client.HTTPConnection(*self._address, timeout=timeout)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        """(status, JSON body); status 0 when the connection failed (refused, reset, timed out)."""
        try:
            payload = None if body is None else json.dumps(body)
            self._connection.request(method, path, payload, {"Content-Type": "application/json"})
            response = self._connection.getresponse()
            data = response.read()
            try:
                return response.status, json.loads(data) if data else None
            except ValueError:  # a text body (/health)
                return response.status, None
        except (OSError, http.client.HTTPException):
            self.close()
            self._connection = http.client.HTTPConnection(*self._address, timeout=self._timeout)
            return 0, None

    def close(self) -> None:
        self._connection.close()


@dataclass(frozen=True)
class Sent:
    """One request of a load: when it was sent and answered (perf_counter seconds), and how."""

    sent: float
    done: float
    status: int
    body: dict | None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def ms(self) -> float:
        return (self.done - self.sent) * 1000


def drive(url: str, bodies: list[dict], clients: int, time_limit_s: float, name: str) -> LoadResult:
    """`clients` threads, each with a keep-alive connection, send the bodies in order until all
    are sent or the time limit passes."""
    from tqdm import tqdm

    result = LoadResult(name)
    lock = threading.Lock()
    next_index = iter(range(len(bodies)))
    progress = tqdm(total=len(bodies), desc=f"{name:>9}", unit="req", leave=False)
    start = time.perf_counter()
    deadline = start + time_limit_s

    def client() -> None:
        connection = Client(url)
        while time.perf_counter() < deadline:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            sent = time.perf_counter()
            status, payload = connection.request("POST", "/v1/chat/completions", bodies[i])
            elapsed_ms = (time.perf_counter() - sent) * 1000
            with lock:
                if status == 200:
                    result.outputs[i] = payload["choices"][0]["message"]["content"]
                    result.latencies_ms.append(elapsed_ms)
                else:
                    result.errors += 1
                progress.update(1)
        connection.close()

    threads = [threading.Thread(target=client, name=f"bench-client-{k}") for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - start
    progress.close()
    return result


def keep_sending(
    url: str, clients: int, body: Callable[[int], dict], stop: threading.Event, log: list[Sent], name: str
) -> list[threading.Thread]:
    """Start `clients` threads that POST /v1/generate bodies body(0), body(1), ... (one at a time
    each) until `stop` is set, appending every answer to `log`. A failed request is followed by a
    short pause, so a dead server is not hammered in a tight loop."""
    counter = iter(range(10**9))
    lock = threading.Lock()

    def client() -> None:
        connection = Client(url)
        while not stop.is_set():
            with lock:
                i = next(counter)
            sent = time.perf_counter()
            status, payload = connection.request("POST", "/v1/generate", body(i))
            log.append(Sent(sent, time.perf_counter(), status, payload))  # list.append is atomic
            if status != 200:
                time.sleep(0.1)
        connection.close()

    threads = [threading.Thread(target=client, name=f"bench-{name}-{k}", daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    return threads


def _post(url: str, path: str, body: dict) -> dict:
    client = Client(url, timeout=300)
    try:
        status, payload = client.request("POST", path, body)
    finally:
        client.close()
    if status != 200:
        raise RuntimeError(f"{path} answered {status}: {payload}")
    return payload


def _metric_samples(url: str) -> list:
    """Every sample of the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("GET", "/metrics")
        families = text_string_to_metric_families(connection.getresponse().read().decode())
        return [sample for family in families for sample in family.samples]
    finally:
        connection.close()


def _batch_stats(url: str) -> dict[str, float]:
    """Cumulative batch counters of the server, from /metrics."""
    samples = {s.name: s.value for s in _metric_samples(url) if not s.labels}
    names = ("tagi_batch_requests_sum", "tagi_batch_requests_count", "tagi_batch_adapters_sum", "tagi_batch_adapters_count")
    return {name: samples.get(name, 0.0) for name in names}


@contextmanager
def running_server(checkpoint: Path, root: Path, name: str, *args: str) -> Iterator:
    """A LocalServer (serving.launch), ready, closed afterwards whatever state it is in."""
    from serving.launch import LocalServer

    server = LocalServer(checkpoint, root / f"state-{name}", root / f"server-{name}.log", *args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


def warm_up(url: str, config: BenchConfig) -> None:
    """Each instruction (and the base model) once, untimed: adapters exist before the clock starts."""
    for i in range(config.instructions):
        _post(url, "/v1/chat/completions", config.bodies(base=False)[i])
    _post(url, "/v1/chat/completions", config.bodies(base=True)[0])


def run_serve_benchmark(config: BenchConfig, checkpoint: Path, json_path: Path | None = None) -> dict:
    """The chosen parts, one after the other, each on its own server(s); figures of every part in one dict."""
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="tagi-bench-serve-") as tmp:
        root = Path(tmp)
        print(f"checkpoint {checkpoint}; parts: {', '.join(config.parts)}")
        if "throughput" in config.parts:
            runs = throughput_part(config, checkpoint, root)
            figures.update(summarize(runs))
            print_report(runs, figures)
        parts = {"fairness": fairness_part, "recovery": recovery_part, "drain": drain_part, "memory": memory_part}
        for name, part in parts.items():
            if name in config.parts:
                figures.update(part(config, checkpoint, root))
    if json_path is not None:
        write_json(json_path, figures)
        print(f"wrote {json_path}")
    return figures


def throughput_part(config: BenchConfig, checkpoint: Path, root: Path) -> dict[str, LoadResult]:
    print(
        f"\nthroughput: {config.requests} requests per configuration from {config.clients} clients, "
        f"{config.instructions} instructions, {config.max_new_tokens} new tokens, fusion off"
    )
    adapted, base = config.bodies(base=False), config.bodies(base=True)
    runs: dict[str, LoadResult] = {}
    with running_server(checkpoint, root, "mixed", "--max-batch-size", "8") as server:
        warm_up(server.url, config)
        before = _batch_stats(server.url)
        runs["mixed"] = drive(server.url, adapted, config.clients, config.time_limit_s, "mixed")
        after = _batch_stats(server.url)
        runs["mixed"].batch_stats = {k: after[k] - before[k] for k in after}
        runs["base"] = drive(server.url, base, config.clients, config.time_limit_s, "base")
    with running_server(checkpoint, root, "unbatched", "--max-batch-size", "1") as server:
        warm_up(server.url, config)
        runs["unbatched"] = drive(server.url, adapted, config.clients, config.time_limit_s, "unbatched")
    with running_server(checkpoint, root, "swap", "--engine", "peft-swap", "--max-batch-size", "1") as server:
        warm_up(server.url, config)
        runs["swap"] = drive(server.url, adapted, config.clients, config.time_limit_s, "swap")
    return runs


# ---- fairness: small requests behind large ones ----------------------------------------------

SMALL_CLIENTS = 2
HEAVY_CLIENTS = 2


def small_body(i: int) -> dict:
    return {"instruction": FAIRNESS_INSTRUCTION, "inputs": [INPUTS[i % len(INPUTS)]], "max_new_tokens": 4}


def heavy_body(i: int) -> dict:
    """32 inputs x 256 tokens (the per-request budget): long lists, so rows do not all stop at once."""
    inputs = [", ".join(INPUTS[(i + k + j) % len(INPUTS)] for j in range(4)) for k in range(HEAVY_INPUTS)]
    return {"instruction": FAIRNESS_INSTRUCTION, "inputs": inputs, "max_new_tokens": HEAVY_TOKENS}


def _small_phase(url: str, seconds: float, heavy: bool) -> tuple[list[Sent], list[Sent]]:
    """Small requests for `seconds` (after heavy ones have started, when `heavy`); both logs."""
    from tqdm import tqdm

    small_log: list[Sent] = []
    heavy_log: list[Sent] = []
    stop_small, stop_heavy = threading.Event(), threading.Event()
    threads = keep_sending(url, HEAVY_CLIENTS, heavy_body, stop_heavy, heavy_log, "heavy") if heavy else []
    if heavy:
        time.sleep(1.0)  # the first large requests are queued or running
    threads += keep_sending(url, SMALL_CLIENTS, small_body, stop_small, small_log, "small")
    label = "small requests under heavy load" if heavy else "small requests alone"
    for _ in tqdm(range(int(seconds)), desc=label, unit="s", leave=False):
        time.sleep(1.0)
    stop_small.set()
    stop_heavy.set()
    for t in threads:
        t.join(timeout=300)
    return small_log, heavy_log


def fairness_part(config: BenchConfig, checkpoint: Path, root: Path) -> dict:
    print(
        f"\nfairness: p99 of {SMALL_CLIENTS} clients' 1-input, 4-token requests for {config.fairness_seconds:g} s alone, "
        f"then while {HEAVY_CLIENTS} clients send {HEAVY_INPUTS}-input x {HEAVY_TOKENS}-token requests"
    )
    with running_server(checkpoint, root, "fairness") as server:
        _post(server.url, "/v1/generate", small_body(0))  # the adapter exists before the clock starts
        alone, _ = _small_phase(server.url, config.fairness_seconds, heavy=False)
        loaded, heavy = _small_phase(server.url, config.fairness_seconds, heavy=True)
    p99_alone = _p99([s.ms for s in alone if s.ok])
    p99_loaded = _p99([s.ms for s in loaded if s.ok])
    heavy_ok = [s for s in heavy if s.ok]
    rows = sum(len(s.body["outputs"]) for s in heavy_ok)
    tokens = sum(s.body.get("usage", {}).get("completion_tokens", 0) for s in heavy_ok)
    figures = {
        "small_p99_ms_alone": round(p99_alone, 1),
        "small_p99_ms_under_heavy": round(p99_loaded, 1),
        "small_p99_heavy_vs_alone": round(p99_loaded / p99_alone, 2) if p99_alone else math.nan,
        "fairness": {
            "small_requests_alone": len(alone),
            "small_requests_under_heavy": len(loaded),
            "heavy_requests_done": len(heavy_ok),
            "heavy_tokens_per_row": round(tokens / rows, 1) if rows else math.nan,
            "heavy_ms_mean": round(sum(s.ms for s in heavy_ok) / len(heavy_ok), 1) if heavy_ok else math.nan,
            "errors": sum(not s.ok for s in alone + loaded + heavy),
        },
    }
    print(
        f"small p99 alone {p99_alone:.0f} ms, under heavy load {p99_loaded:.0f} ms "
        f"(x{figures['small_p99_heavy_vs_alone']}); {len(heavy_ok)} heavy requests done, "
        f"{figures['fairness']['heavy_tokens_per_row']} tokens per row; errors {figures['fairness']['errors']}"
    )
    return figures


def _p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (nan for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


# ---- recovery: a worker killed under load ----------------------------------------------------

RECOVERY_LIMIT_S = 60.0
"""How long the recovery part watches after the kill before it calls the server unrecovered."""


def worker_pids(pgid: int) -> list[int]:
    """The inference workers of a server's process group: LitServe spawns them (multiprocessing's
    spawn_main), while the HTTP servers and the manager are forks of the main process."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid and b"spawn_main" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return sorted(pids)


def _watch_health(url: str, stop: threading.Event, log: list[tuple[float, int]]) -> threading.Thread:
    def poll() -> None:
        client = Client(url, timeout=5)
        while not stop.is_set():
            status, _ = client.request("GET", "/health")
            log.append((time.perf_counter(), status))
            time.sleep(0.2)
        client.close()

    thread = threading.Thread(target=poll, name="bench-health", daemon=True)
    thread.start()
    return thread


def recovery_part(config: BenchConfig, checkpoint: Path, root: Path) -> dict:
    print(f"\nrecovery: kill -9 of one of 2 inference workers while {SMALL_CLIENTS * 2} clients send requests")
    log: list[Sent] = []
    health: list[tuple[float, int]] = []
    with running_server(checkpoint, root, "recovery", "--workers", "2", "--torch-threads", "1") as server:
        _post(server.url, "/v1/generate", small_body(0))
        workers = worker_pids(server.pgid)
        stop = threading.Event()
        threads = keep_sending(server.url, SMALL_CLIENTS * 2, small_body, stop, log, "recovery")
        threads.append(_watch_health(server.url, stop, health))
        time.sleep(2.0)
        killed_at = time.perf_counter()
        os.kill(workers[0], signal.SIGKILL)
        while time.perf_counter() - killed_at < RECOVERY_LIMIT_S:
            time.sleep(0.5)
            if _recovered(log, health, killed_at, worker_pids(server.pgid), workers[0]):
                break
        stop.set()
        for t in threads:
            t.join(timeout=150)
        alive = server.process.poll() is None
    figures = {"recovery_s": _recovery_seconds(log, killed_at), "recovery": _recovery_details(log, health, killed_at, alive)}
    details = figures["recovery"]
    print(
        f"recovery_s {figures['recovery_s']}; errors {details['errors']}; slowest request across the kill "
        f"{details['max_latency_ms']} ms; /health non-200 after {details['health_down_s']} s, 200 again after "
        f"{details['health_up_s']} s; main process alive: {alive}"
    )
    return figures


def _recovered(log: list[Sent], health: list[tuple[float, int]], killed_at: float, workers: list[int], victim: int) -> bool:
    """Back to normal: two workers again (a replacement for the victim), /health 200, and 2 s of
    requests without a failure."""
    now = time.perf_counter()
    replaced = victim not in workers and len(workers) >= 2
    healthy = bool(health) and health[-1][1] == 200
    recent = [s for s in log if s.done > now - 2.0]
    return now - killed_at > 2.0 and replaced and healthy and bool(recent) and all(s.ok for s in recent)


def _recovery_seconds(log: list[Sent], killed_at: float) -> float | None:
    """Seconds from the kill until requests succeed again: the answer to the first request sent
    after the kill's last failure (after the kill if nothing failed) that succeeded. None: never."""
    failures = [s.done for s in log if not s.ok and s.done >= killed_at]
    since = max(failures, default=killed_at)
    answers = [s.done for s in log if s.ok and s.sent >= since]
    return round(min(answers) - killed_at, 2) if answers else None


def _recovery_details(log: list[Sent], health: list[tuple[float, int]], killed_at: float, alive: bool) -> dict:
    after = [s for s in log if s.done >= killed_at]
    down = next((t for t, status in health if t >= killed_at and status != 200), None)
    up = next((t for t, status in health if down is not None and t > down and status == 200), None)
    return {
        "errors": sum(not s.ok for s in after),
        "requests_after_kill": len(after),
        "max_latency_ms": round(max((s.ms for s in after), default=math.nan), 1),
        "health_down_s": round(down - killed_at, 2) if down is not None else None,
        "health_up_s": round(up - killed_at, 2) if up is not None else None,
        "server_alive": alive,
    }


# ---- drain: SIGTERM with requests in flight --------------------------------------------------

DRAIN_REQUESTS = 8


def drain_part(config: BenchConfig, checkpoint: Path, root: Path) -> dict:
    print(f"\ndrain: SIGTERM to the main process with {DRAIN_REQUESTS} requests in flight")
    body = {"instruction": FAIRNESS_INSTRUCTION, "inputs": [", ".join(INPUTS)] * 8, "max_new_tokens": 128}
    results: list[Sent | None] = [None] * DRAIN_REQUESTS
    with running_server(checkpoint, root, "drain", "--torch-threads", "1") as server:
        _post(server.url, "/v1/generate", small_body(0))

        def send(i: int) -> None:
            client = Client(server.url)
            sent = time.perf_counter()
            status, payload = client.request("POST", "/v1/generate", body)
            results[i] = Sent(sent, time.perf_counter(), status, payload)
            client.close()

        threads = [threading.Thread(target=send, args=(i,), name=f"bench-drain-{i}") for i in range(DRAIN_REQUESTS)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        signalled_at = time.perf_counter()
        os.kill(server.process.pid, signal.SIGTERM)
        for t in threads:
            t.join(timeout=300)
        exited = server.wait_gone()
        exit_s = time.perf_counter() - signalled_at
    in_flight = [r for r in results if r is None or r.done >= signalled_at]
    figures = {
        "drain_lost": sum(r is None or not r.ok for r in in_flight),
        "drain": {"in_flight_at_sigterm": len(in_flight), "exit_s": round(exit_s, 2), "exited": exited},
    }
    print(f"drain_lost {figures['drain_lost']} of {len(in_flight)} in flight; the server exited after {exit_s:.1f} s")
    return figures


# ---- memory: a worker under a stream of new instructions ---------------------------------------


def _proc_status_mb(pid: int) -> dict[str, float]:
    """VmRSS (all resident memory), RssAnon (heap, stacks, allocator pools) and RssFile (mapped
    files: libraries' code, weights) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def memory_body(i: int) -> dict:
    """Request i: an instruction no earlier request had, 1-4 inputs, 16 tokens."""
    inputs = [INPUTS[(i + k) % len(INPUTS)] for k in range(1 + i % 4)]
    return {"instruction": f"{INSTRUCTIONS[i % len(INSTRUCTIONS)]} (request {i})", "inputs": inputs, "max_new_tokens": 16}


def memory_part(config: BenchConfig, checkpoint: Path, root: Path) -> dict:
    from tqdm import tqdm

    total = config.memory_checkpoints[-1]
    print(
        f"\nmemory: one worker, --adapter-cache-mb {config.memory_cache_mb:g}, {total} new instructions from "
        f"{config.clients} clients; worker RSS after {', '.join(map(str, config.memory_checkpoints))}"
    )
    readings: dict[str, dict[str, float]] = {}
    errors = 0
    args = ("--adapter-cache-mb", str(config.memory_cache_mb), "--torch-threads", "1")
    with running_server(checkpoint, root, "memory", *args) as server:
        worker = worker_pids(server.pgid)[0]
        readings["0"] = _proc_status_mb(worker)
        done = 0
        progress = tqdm(total=total, desc="new instructions", unit="req", leave=False)
        for checkpoint_count in config.memory_checkpoints:
            bodies = [memory_body(i) for i in range(done, checkpoint_count)]
            errors += _send_all(server.url, bodies, config.clients, progress)
            done = checkpoint_count
            readings[str(done)] = _proc_status_mb(worker)
        progress.close()
        cache_bytes = sum(s.value for s in _metric_samples(server.url) if s.name == "tagi_adapter_cache_bytes")
    figures = {
        "memory": {
            "adapter_cache_mb": config.memory_cache_mb,
            "cache_bytes_mb": round(cache_bytes / 2**20, 2),
            "worker_mb": readings,
            "errors": errors,
        }
    }
    print(f"{'new instructions':>16}{'RSS MB':>9}{'anon MB':>9}{'file MB':>9}")
    for count, fields in readings.items():
        print(f"{count:>16}{fields['VmRSS']:>9.0f}{fields['RssAnon']:>9.0f}{fields['RssFile']:>9.0f}")
    print(f"adapter cache holds {cache_bytes / 2**20:.1f} MB (bound {config.memory_cache_mb:g} MB); errors {errors}")
    return figures


def _send_all(url: str, bodies: list[dict], clients: int, progress) -> int:  # noqa: ANN001 - a tqdm bar
    """POST every body to /v1/generate from `clients` threads; the number that failed."""
    pending = iter(bodies)
    lock = threading.Lock()
    failed = [0]

    def client() -> None:
        connection = Client(url)
        while True:
            with lock:
                body = next(pending, None)
            if body is None:
                break
            status, _ = connection.request("POST", "/v1/generate", body)
            with lock:
                failed[0] += status != 200
                progress.update(1)
        connection.close()

    threads = [threading.Thread(target=client, name=f"bench-memory-{k}") for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed[0]


def _matches(runs: dict[str, LoadResult], name: str, reference: str) -> tuple[bool, int]:
    common = set(runs[name].outputs) & set(runs[reference].outputs)
    same = all(runs[name].outputs[i] == runs[reference].outputs[i] for i in common)
    return bool(common) and same, len(common)


def summarize(runs: dict[str, LoadResult]) -> dict:
    mixed = runs["mixed"]
    ratio = lambda a, b: round(runs[a].throughput / runs[b].throughput, 3) if runs[b].throughput else math.nan  # noqa: E731
    outputs_match, compared = _matches(runs, "mixed", "unbatched")
    swap_match, _ = _matches(runs, "swap", "unbatched")
    stats = mixed.batch_stats
    return {
        "batched_vs_unbatched": ratio("mixed", "unbatched"),
        "mixed_vs_base_only": ratio("mixed", "base"),
        "mixed_vs_swap_per_request": ratio("mixed", "swap"),
        "p50_ms": round(mixed.percentile(50), 1),
        "p99_ms": round(mixed.percentile(99), 1),
        "errors": sum(run.errors for run in runs.values()),
        "outputs_match": outputs_match and mixed.errors == 0,
        "requests": len(mixed.outputs) + mixed.errors,
        "outputs_compared": compared,
        "swap_outputs_match_unbatched": swap_match,
        "mean_requests_per_batch": round(stats["tagi_batch_requests_sum"] / max(stats["tagi_batch_requests_count"], 1), 2),
        "mean_adapters_per_forward": round(stats["tagi_batch_adapters_sum"] / max(stats["tagi_batch_adapters_count"], 1), 2),
        "configs": {
            name: {
                "requests": len(run.outputs) + run.errors,
                "errors": run.errors,
                "seconds": round(run.seconds, 2),
                "req_per_s": round(run.throughput, 2),
                "p50_ms": round(run.percentile(50), 1),
                "p99_ms": round(run.percentile(99), 1),
            }
            for name, run in runs.items()
        },
    }


def print_report(runs: dict[str, LoadResult], figures: dict) -> None:
    labels = {
        "mixed": "mixed adapters, batches of 8",
        "base": "base model only, batches of 8",
        "unbatched": "mixed adapters, batching off",
        "swap": "PEFT set_adapter per request",
    }
    print(f"\n{'configuration':<32}{'requests':>9}{'errors':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for name, run in runs.items():
        print(
            f"{labels[name]:<32}{len(run.outputs) + run.errors:>9}{run.errors:>8}{run.throughput:>9.1f}"
            f"{run.percentile(50):>9.0f}{run.percentile(99):>9.0f}"
        )
    print(f"\n{'figure':<32}{'value':>9}{'target':>9}")
    for key, target in TARGETS.items():
        verdict = "ok" if figures[key] >= target else "MISSED"
        print(f"{key:<32}{figures[key]:>9.2f}{'>= ' + str(target):>9}  {verdict}")
    print(f"{'errors':<32}{figures['errors']:>9}{'0':>9}  {'ok' if figures['errors'] == 0 else 'MISSED'}")
    print(
        f"{'outputs_match (mixed == alone)':<32}{str(figures['outputs_match']):>9}{'True':>9}  "
        f"{'ok' if figures['outputs_match'] else 'MISSED'}  ({figures['outputs_compared']} requests compared)"
    )
    print(
        f"mixed run: {figures['mean_requests_per_batch']} requests per batch, "
        f"{figures['mean_adapters_per_forward']} distinct adapters per forward pass on average; "
        f"PEFT swap outputs equal unbatched tagi outputs: {figures['swap_outputs_match_unbatched']}"
    )
