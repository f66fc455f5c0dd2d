"""`tagi serve` and `tagi bench serve` (registered into hypernet.cli's parser)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import textwrap
from pathlib import Path
from typing import get_args

from hypernet.cli_common import add_checkpoint_argument, resolve_checkpoint
from hypernet.errors import UserError
from serving.settings import API_KEY_ENV, HOSTS, INTERRUPT_GRACE_S, EngineName, ServerSettings


def cmd_serve(args: argparse.Namespace) -> None:
    from serving.server import serve

    settings = ServerSettings(
        checkpoint=resolve_checkpoint(args.checkpoint),
        state_dir=Path(args.state_dir),
        host=args.host,
        port=args.port,
        workers=args.workers,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        adapter_cache_mb=args.adapter_cache_mb,
        max_adapters=args.max_adapters,
        engine=args.engine,
        torch_threads=args.torch_threads,
        timeout=args.timeout,
        drain_seconds=args.drain_seconds,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        api_key=os.environ.get(API_KEY_ENV) or None,
    )
    try:
        serve(settings)
    except RuntimeError as err:  # LitServe: a worker failed to start; its traceback is in the log above
        raise UserError(f"the server could not start: {err}") from err


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve adapters generated from instructions over HTTP (LitServe)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Start a LitServe server: POST an instruction, get an adapter id; POST inputs with an instruction or "
            "adapter id, get outputs. Requests with different instructions that arrive together share one batched "
            "forward pass. Adapter ids persist in --state-dir. Stop with Ctrl+C or SIGTERM.",
            88,
        ),
        epilog="""endpoints:
  POST   /v1/adapters             {"instruction"} -> adapter id and metadata
  GET    /v1/adapters[/ID]        list (paged: limit, after) / metadata;   DELETE /v1/adapters/ID
  GET    /v1/adapters/ID/peft     PEFT directory as .tar.gz (PeftModel.from_pretrained after tar xzf)
  POST   /v1/generate             {"instruction" | "adapter_id", "inputs", "max_new_tokens", "fusion",
                                   "temperature", "top_p", "seed", "stop", "n", "stream"}
  POST   /v1/chat/completions     OpenAI-compatible (system message = instruction, or model = adapter id)
  GET    /v1/models, /health, /info, /metrics (Prometheus), /docs, /openapi.json
  GET    /                        the playground: a web page that streams outputs

authentication:
  Set LIT_SERVER_API_KEY to require a key on every endpoint but /health and the playground page
  (which asks for it); clients send 'X-API-Key: KEY' or 'Authorization: Bearer KEY' (the openai
  client's api_key).""",
    )
    add_checkpoint_argument(p)
    d = {f.name: f.default for f in dataclasses.fields(ServerSettings)}
    p.add_argument(
        "--host", default=d["host"], choices=HOSTS, help=f"interface to listen on (default {d['host']}: this machine only)"
    )
    p.add_argument("--port", type=int, default=d["port"], help=f"TCP port, 1024-65535 (default {d['port']})")
    p.add_argument(
        "--workers",
        type=int,
        default=d["workers"],
        metavar="N",
        help=f"inference worker processes, each with its own copy of the model (default {d['workers']})",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=d["max_batch_size"],
        metavar="N",
        help=f"requests served together in one forward pass; 1 turns batching off (default {d['max_batch_size']})",
    )
    p.add_argument(
        "--batch-timeout",
        type=float,
        default=d["batch_timeout"],
        metavar="S",
        help=f"seconds a worker waits to fill a batch before running what it has (default {d['batch_timeout']:g})",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=d["timeout"],
        metavar="S",
        help=f"seconds a request may wait for its answer, queue and inference, before a 504 (default {d['timeout']:g})",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=d["drain_seconds"],
        metavar="S",
        help="on SIGTERM, stop accepting connections and give in-flight requests this long to finish "
        f"before exiting (default {d['drain_seconds']:g}); Ctrl+C gives them {INTERRUPT_GRACE_S:g} s",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=d["header_timeout"],
        metavar="S",
        help="seconds a connection has to send complete request headers (from connecting, or from the first byte "
        f"of a later request) before it is closed (default {d['header_timeout']:g})",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=d["body_timeout"],
        metavar="S",
        help="seconds a request's whole body may take to arrive after its headers before a 408 and a closed "
        f"connection (default {d['body_timeout']:g})",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=d["keep_alive_timeout"],
        metavar="S",
        help=f"seconds an idle kept-alive connection stays open between requests (default {d['keep_alive_timeout']:g})",
    )
    p.add_argument(
        "--adapter-cache-mb",
        type=float,
        default=d["adapter_cache_mb"],
        metavar="M",
        help=f"per-worker memory for generated adapters, least recently used evicted (default {d['adapter_cache_mb']:g})",
    )
    p.add_argument(
        "--max-adapters",
        type=int,
        default=d["max_adapters"],
        metavar="N",
        help="adapter ids the registry keeps; beyond N the least recently used are forgotten and answer 404 "
        f"until their instruction is posted again (default {d['max_adapters']})",
    )
    p.add_argument(
        "--state-dir",
        default=str(d["state_dir"]),
        metavar="DIR",
        help="where the adapter registry (SQLite) persists across workers and restarts; nothing else is "
        f"written there (default {d['state_dir']})",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=d["torch_threads"],
        metavar="N",
        help="torch threads per worker (default: (cores - 1) / workers, at least 1)",
    )
    p.add_argument(
        "--engine",
        choices=list(get_args(EngineName)),
        default=d["engine"],
        help=f"mixed: per-example adapters in one batch (default {d['engine']}); peft-swap: a benchmark "
        "baseline that runs each request alone on a PEFT model after set_adapter (no fusion)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_bench_serve(args: argparse.Namespace) -> None:
    from serving.bench import BenchConfig, run_serve_benchmark

    config = BenchConfig(
        requests=args.requests,
        clients=args.clients,
        instructions=args.instructions,
        max_new_tokens=args.max_new_tokens,
        time_limit_s=args.time_limit,
        parts=tuple(part.strip() for part in args.parts.split(",") if part.strip()),
        fairness_seconds=args.fairness_seconds,
        memory_checkpoints=_counts(args.memory_checkpoints),
        memory_cache_mb=args.memory_cache_mb,
    )
    run_serve_benchmark(config, resolve_checkpoint(args.checkpoint), json_path=Path(args.json) if args.json else None)


def _counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in text.split(","))
    except ValueError:
        raise UserError(f"--memory-checkpoints takes comma-separated whole numbers, got {text!r}") from None


def add_bench_serve(bench: argparse._SubParsersAction) -> None:
    from serving.bench import PARTS, BenchConfig

    defaults = BenchConfig()
    p = bench.add_parser(
        "serve",
        help="`tagi serve` on loopback: throughput (mixed batches vs no batching, base, PEFT swap), small requests' "
        "latency under large ones, recovery from a killed worker, SIGTERM drain, worker memory",
        description="Start real servers on 127.0.0.1, side by side in one run, and drive each with the same bounded "
        "load (concurrent clients, distinct instructions): mixed-adapter batching; batching off; the same server "
        "answering base-model requests; and a PEFT swap-per-request baseline. Prints a table; fusion is off in "
        "every configuration because PEFT cannot fuse. Further parts (--parts), each on its own server: fairness, "
        "recovery, drain and memory.",
    )
    add_checkpoint_argument(p)
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument(
        "--requests", type=int, default=defaults.requests, help=f"requests per configuration (default {defaults.requests})"
    )
    p.add_argument(
        "--clients", type=int, default=defaults.clients, help=f"concurrent client threads (default {defaults.clients})"
    )
    p.add_argument(
        "--instructions",
        type=int,
        default=defaults.instructions,
        help=f"distinct instructions, i.e. adapters, cycled over requests (default {defaults.instructions})",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=defaults.max_new_tokens,
        help=f"output tokens per request (default {defaults.max_new_tokens})",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=defaults.time_limit_s,
        metavar="S",
        help=f"stop a configuration's load after this many seconds (default {defaults.time_limit_s:g})",
    )
    p.add_argument(
        "--parts",
        default=",".join(defaults.parts),
        metavar="LIST",
        help=f"what to measure, comma-separated, from {','.join(PARTS)}: throughput (the four configurations), "
        "fairness (small requests' p99 under large ones), recovery (kill -9 of a worker), drain (SIGTERM with "
        f"requests in flight), memory (worker RSS under new instructions; slow) (default {','.join(defaults.parts)})",
    )
    p.add_argument(
        "--fairness-seconds",
        type=float,
        default=defaults.fairness_seconds,
        metavar="S",
        help=f"how long small requests are timed, alone and then under large ones (default {defaults.fairness_seconds:g})",
    )
    p.add_argument(
        "--memory-checkpoints",
        default=",".join(map(str, defaults.memory_checkpoints)),
        metavar="N,N,...",
        help="counts of new instructions after which the memory part reads the worker's RSS "
        f"(default {','.join(map(str, defaults.memory_checkpoints))})",
    )
    p.add_argument(
        "--memory-cache-mb",
        type=float,
        default=defaults.memory_cache_mb,
        metavar="M",
        help=f"--adapter-cache-mb of the memory part's server (default {defaults.memory_cache_mb:g})",
    )
    p.set_defaults(func=cmd_bench_serve)


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    add_serve(sub)
    add_bench_serve(bench)
