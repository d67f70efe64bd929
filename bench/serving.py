"""Benchmark the real scoring service against a bare FastAPI app serving only churn.

    uv run python -m bench.serving                    # demo workspace in a temp folder
    uv run python -m bench.serving --home .rapport    # an existing workspace (materialized,
                                                      # champions promoted)

A new demo workspace gets a quick NBA model (``--no-nba``: without, only ``no_action``);
``--keep DIR`` keeps it for later runs with ``--home DIR``.

A third app calibrates the two: a BentoML service with the real service's settings that
validates the same ``/score`` bodies and does no work (``bench/noop_service.py``), the
floor of BentoML's own cost per request.

All apps run as servers on 127.0.0.1 with the same number of worker processes; the load
comes from a separate process (a small keep-alive HTTP/1.1 client on asyncio, so the
client costs little of the two cores). Per app:

a. sequential requests on one connection: p50 / p99;
b. open loop at a fixed arrival rate (200 requests/s for 30 s): latency from the
   *scheduled* send time (no coordinated omission), p50 / p95 / p99 and errors;
c. closed loop, 16 clients back to back: the maximum requests/s;
d. open loop at a rate relative to the no-op's capacity (``--relative-share`` of its
   closed-loop requests/s, default 50%), so the tails are compared at the same share of
   the framework's capacity on any machine (the no-op runs first to measure it).

It ends with the ratios of issue 23 -- ``/score`` against the no-op: closed-loop
requests/s at least 0.5x, sequential p50 at most 2.5x, open-loop p99 at the fixed rate at
most 3x with no errors -- and says which hold.

``/score`` does everything a contact-center call needs: the online record, the features
(as of now), churn + reasons, value, segments, arbitration and a logged decision, over a
rotating sample of customers. The baseline returns the churn probability of one fixed,
pre-encoded feature vector: the price of the HTTP stack plus one LightGBM prediction.

The demo workspace and starting / stopping the servers come from the serving tests'
harness (``tests/serving_harness.py``): the bench measures the service the tests run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.auth import add_key
from serving.runtime import ROOT
from tests.serving_harness import (
    Server,
    environment,
    free_port,
    prepare_workspace,
    sample_customers,
    start_service,
    stop,
    wait_ready,
)

#: BentoML with the service's settings and request schema, doing no work (the floor)
NOOP_SERVICE = "bench.noop_service:Noop"


# --------------------------------------------------------------------------- baseline app
def baseline_app(home: Path) -> Any:
    """FastAPI: ``POST /predict`` -> the churn probability of one fixed feature vector."""
    import numpy as np
    from fastapi import FastAPI

    from features.online.record import evaluate
    from features.online.store import open_store
    from models.bundle import load_for_serving

    with environment(RAPPORT_HOME=str(home)):
        from rapport.settings import get_settings

        settings = get_settings()
        churn = load_for_serving(settings).models["churn"]
        store = open_store(settings.online_store_url)
        record = next(iter(store.get_many(sample_customers(home, 50)).values()))
        X = churn.encode(evaluate(record, datetime.now(UTC)))
        store.close()
    app = FastAPI()

    @app.post("/predict")
    async def predict() -> dict[str, float]:
        return {"p_churn": float(np.asarray(churn.predict_proba_array(X))[0])}

    return app


def run_baseline(home: Path, port: int, workers: int) -> None:
    """Like BentoML: bind once, fork ``workers`` uvicorn processes on the shared socket.

    (``uvicorn --workers`` rebuilds the socket as AF_UNIX from its fd, so asyncio skips
    TCP_NODELAY and keep-alive requests wait ~40 ms on delayed ACKs: uvicorn issue 3149.
    BentoML's workers rebuild theirs with ``socket(fileno=fd)``, which reads the protocol
    back, so they get TCP_NODELAY.)
    """
    import gc

    import uvicorn
    from threadpoolctl import threadpool_limits

    from serving import accept

    app = baseline_app(home)
    accept.install()  # like the service: workers take new connections in turns
    # like the service: one OpenMP thread per worker. It also keeps the forked workers
    # out of libgomp's thread pool, which does not survive a fork (they hung in a futex).
    threadpool_limits(limits=1)
    gc.collect()
    gc.freeze()
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP (accepted sockets inherit it); with 0, Nagle held every response body ~40 ms
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    sock.set_inheritable(True)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
            uvicorn.Server(config).run(sockets=[sock])
            os._exit(0)
        children.append(pid)

    def forward(*_: Any) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def start_baseline(home: Path, workers: int) -> Server:
    port = free_port()
    log = home / f"baseline-{port}.log"
    command = [sys.executable, "-m", "bench.serving", "--baseline-server", str(port)]
    command += ["--home", str(home), "--workers", str(workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(process, f"http://127.0.0.1:{port}", log)


# --------------------------------------------------------------------------- load
class Connection:
    """One keep-alive HTTP/1.1 connection: send a request, read one response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(self, data: bytes) -> int:
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def request_bytes(
    host: str, port: int, path: str, body: Mapping[str, Any], key: str | None
) -> bytes:
    payload = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


@dataclass
class Result:
    latencies: list[float]
    #: failure kind ("timeout", "connection", or the HTTP status) -> count
    failures: Counter[str]
    seconds: float

    @property
    def errors(self) -> int:
        return sum(self.failures.values())

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def sequential(host: str, port: int, requests: list[bytes], count: int) -> Result:
    conn = await Connection.open(host, port)
    for data in requests[:50]:  # warm-up
        await conn.request(data)
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    start = time.perf_counter()
    for i in range(count):
        sent = time.perf_counter()
        status = await conn.request(requests[i % len(requests)])
        latencies.append(time.perf_counter() - sent)
        if status != 200:
            failures[str(status)] += 1
    conn.close()
    return Result(latencies, failures, time.perf_counter() - start)


async def open_loop(
    host: str, port: int, requests: list[bytes], rate: float, seconds: float, timeout: float = 2.0
) -> Result:
    """Requests sent on schedule whatever the server does; latency from the schedule."""
    idle: list[Connection] = [await Connection.open(host, port) for _ in range(32)]
    latencies: list[float] = []
    failures: Counter[str] = Counter()

    async def one(i: int, due: float) -> None:
        # like any HTTP client's pool: a connection the server closed while it sat idle
        # (keep-alive timeout) is dropped, not used
        while idle and idle[-1].reader.at_eof():
            idle.pop().close()
        conn = idle.pop() if idle else await Connection.open(host, port)
        try:
            status = await asyncio.wait_for(conn.request(requests[i % len(requests)]), timeout)
        except TimeoutError:
            failures[f"timeout {timeout:g}s"] += 1
            conn.close()
            return
        except (OSError, asyncio.IncompleteReadError):
            failures["connection"] += 1
            conn.close()
            return
        latencies.append(time.perf_counter() - due)
        if status != 200:
            failures[str(status)] += 1
        idle.append(conn)

    start = time.perf_counter()
    tasks = []
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()
    return Result(latencies, failures, time.perf_counter() - start)


async def closed_loop(
    host: str, port: int, requests: list[bytes], clients: int, seconds: float
) -> Result:
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    stop_at = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        conn = await Connection.open(host, port)
        i = offset
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            status = await conn.request(requests[i % len(requests)])
            latencies.append(time.perf_counter() - sent)
            if status != 200:
                failures[str(status)] += 1
            i += clients
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return Result(latencies, failures, time.perf_counter() - start)


#: the scenarios of one app, in the order they run
SCENARIOS = ("sequential", "open", "closed", "relative")


def load(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The scenarios ``spec["scenarios"]`` names against one app (runs in the load
    process); ``relative`` is the open loop at ``spec["relative_rate"]``."""
    host, port = spec["host"], spec["port"]
    requests = [
        request_bytes(host, port, spec["path"], body, spec.get("key")) for body in spec["bodies"]
    ]

    async def scenario(name: str) -> Result:
        if name == "sequential":
            return await sequential(host, port, requests, spec["sequential"])
        if name == "open":
            return await open_loop(host, port, requests, spec["rate"], spec["seconds"])
        if name == "closed":
            return await closed_loop(host, port, requests, spec["clients"], spec["closed_s"])
        return await open_loop(
            host, port, requests, spec["relative_rate"], spec["relative_seconds"]
        )

    async def run() -> dict[str, Result]:
        return {name: await scenario(name) for name in spec["scenarios"]}

    results = asyncio.run(run())
    return {name: figures(r) for name, r in results.items()}


def figures(result: Result) -> dict[str, Any]:
    """A scenario's figures as the report (and the load process's JSON) carries them."""
    return {
        "p50": result.pct(50),
        "p95": result.pct(95),
        "p99": result.pct(99),
        "rps": result.rps,
        "errors": float(result.errors),
        "count": float(len(result.latencies)),
        "failures": dict(result.failures),
    }


def run_load(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The load generator in its own process (it must not share the server's GIL)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.serving", "--load"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    result: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return result


# --------------------------------------------------------------------------- report
def rows(rate: float, relative: str) -> list[tuple[str, str, str]]:
    """(label, scenario, figure) of the table; ``relative`` labels the relative open loop."""
    return [
        ("sequential p50 (ms)", "sequential", "p50"),
        ("sequential p99 (ms)", "sequential", "p99"),
        (f"open {rate:.0f}/s p50 (ms)", "open", "p50"),
        (f"open {rate:.0f}/s p95 (ms)", "open", "p95"),
        (f"open {rate:.0f}/s p99 (ms)", "open", "p99"),
        (f"open {rate:.0f}/s errors", "open", "errors"),
        ("closed 16 clients req/s", "closed", "rps"),
        ("closed 16 clients p99 (ms)", "closed", "p99"),
        (f"open {relative} p50 (ms)", "relative", "p50"),
        (f"open {relative} p99 (ms)", "relative", "p99"),
        (f"open {relative} errors", "relative", "errors"),
    ]


#: display names of the apps, in the table's column order
APPS = {"service": "rapport /score", "noop": "bentoml no-op", "baseline": "fastapi churn"}


def table(
    results: Mapping[str, Mapping[str, Mapping[str, float]]],
    labels: Sequence[tuple[str, str, str]],
) -> str:
    """One row per figure: the apps measured, then /score over the no-op."""
    apps = [name for name in APPS if name in results]
    head = "".join(f" {APPS[name]:>14} |" for name in apps)
    lines = [
        f"| {'metric':<34} |{head} {'score/no-op':>11} |",
        f"|{'-' * 36}|" + f"{'-' * 16}|" * len(apps) + f"{'-' * 13}|",
    ]
    for label, scenario, key in labels:
        values = [results[name].get(scenario, {}).get(key, float("nan")) for name in apps]
        cells = "".join(f" {v:>14.2f} |" for v in values)
        a = results.get("service", {}).get(scenario, {}).get(key)
        n = results.get("noop", {}).get(scenario, {}).get(key)
        ratio = f"{a / n:11.2f}" if a is not None and n else f"{'-':>11}"
        lines.append(f"| {label:<34} |{cells} {ratio} |")
    return "\n".join(lines)


#: issue 23's targets for /score against the no-op: (what, scenario, figure, limit, kind)
TARGETS = (
    ("closed-loop req/s", "closed", "rps", 0.5, "at least"),
    ("sequential p50", "sequential", "p50", 2.5, "at most"),
    ("open-loop p99 at the fixed rate", "open", "p99", 3.0, "at most"),
)


def verdicts(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    """One line per target: the ratio of /score to the no-op and whether it holds (the
    open loop also needs 0 errors)."""
    service, noop = results["service"], results["noop"]
    lines = []
    for what, scenario, key, limit, kind in TARGETS:
        ratio = service[scenario][key] / noop[scenario][key]
        holds = ratio >= limit if kind == "at least" else ratio <= limit
        note = ""
        if scenario == "open":
            errors = int(service[scenario]["errors"])
            holds = holds and errors == 0
            note = f", {errors} errors"
        verdict = "holds" if holds else "FAILS"
        lines.append(f"{what}: /score / no-op = {ratio:.2f} ({kind} {limit:g}{note}): {verdict}")
    return lines


def score_bodies(customers: Sequence[str], seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    channels = ["call", "chat", "web", "store"]
    return [
        {"customer_id": c, "context": {"channel": rng.choice(channels)}}
        for c in rng.sample(list(customers), len(customers))
    ]


def new_home(stack: contextlib.ExitStack, keep: Path | None, prefix: str) -> Path:
    """The folder of a workspace to prepare: ``--keep``'s, or a temporary one ``stack``
    removes."""
    if keep:
        home = keep.expanduser().absolute()
        home.mkdir(parents=True, exist_ok=True)
        return home
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="Existing workspace (default: a new demo).")
    parser.add_argument("--customers", type=int, default=5000, help="Demo size (new workspace).")
    parser.add_argument(
        "--no-nba",
        dest="nba",
        action="store_false",
        help="New workspace without an NBA model (only no_action is ranked).",
    )
    parser.add_argument(
        "--keep", type=Path, help="Prepare the new workspace in this folder and keep it."
    )
    parser.add_argument("--workers", type=int, default=2, help="Server processes per app.")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="Open-loop duration.")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--closed-seconds", type=float, default=15.0)
    parser.add_argument("--sequential", type=int, default=2000)
    parser.add_argument(
        "--relative-share",
        type=float,
        default=0.5,
        help="Rate of the relative open loop, as a share of the no-op's closed-loop req/s.",
    )
    parser.add_argument("--relative-seconds", type=float, default=15.0)
    parser.add_argument(
        "--apps",
        default="service,noop,baseline",
        help="Apps to measure (comma-separated; the no-op always runs, first).",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=5000,
        help="Customers the requests rotate over. Every /score logs a decision into the "
        "customer's record, so a small sample grows each record by dozens of decisions per "
        "run (a customer called that often is rare) and slows both reads and writes.",
    )
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        print(json.dumps(load(json.loads(sys.stdin.read()))))
        return
    if args.baseline_server:
        run_baseline(args.home, args.baseline_server, args.workers)
        return
    with contextlib.ExitStack() as stack:
        if args.home:
            home = args.home.expanduser().absolute()
            keys = {"admin": add_key(home, ["admin"])}
            customers = sample_customers(home, args.sample)
        else:
            home = new_home(stack, args.keep, "rapport-bench-")
            print(
                f"preparing a demo workspace ({args.customers:,} customers) in {home}",
                file=sys.stderr,
            )
            ws = prepare_workspace(home, args.customers, nba=args.nba)
            keys = ws.keys
            customers = sample_customers(home, args.sample)
        common = {
            "host": "127.0.0.1",
            "rate": args.rate,
            "seconds": args.seconds,
            "clients": args.clients,
            "closed_s": args.closed_seconds,
            "sequential": args.sequential,
            "relative_seconds": args.relative_seconds,
        }
        results: dict[str, dict[str, dict[str, Any]]] = {}
        loads: dict[str, float] = {}
        wanted = {name.strip() for name in args.apps.split(",")} | {"noop"}
        # the no-op first: its closed-loop capacity sets the relative open loop's rate
        for name in [n for n in ("noop", "service", "baseline") if n in wanted]:
            if name == "service":
                server = start_service(home, workers=args.workers)
            elif name == "noop":
                server = start_service(home, workers=args.workers, service=NOOP_SERVICE)
            else:
                server = start_baseline(home, args.workers)
            try:
                wait_ready(server, path="/docs" if name == "baseline" else "/readyz")
                port = int(server.url.rsplit(":", 1)[1])
                if name != "baseline":
                    spec = {
                        **common,
                        "port": port,
                        "path": "/score",
                        "key": keys["admin"],
                        "bodies": score_bodies(customers),
                    }
                else:
                    spec = {**common, "port": port, "path": "/predict", "bodies": [{}]}
                print(f"loading {name} ({server.url}, {args.workers} workers)", file=sys.stderr)
                loads[name] = os.getloadavg()[0]
                if name == "noop":
                    results[name] = run_load({**spec, "scenarios": SCENARIOS[:3]})
                    capacity = results[name]["closed"]["rps"]
                    common["relative_rate"] = args.relative_share * capacity
                    spec["relative_rate"] = common["relative_rate"]
                    results[name].update(run_load({**spec, "scenarios": SCENARIOS[3:]}))
                else:
                    results[name] = run_load({**spec, "scenarios": SCENARIOS})
            finally:
                stop(server)
    relative = f"{common['relative_rate']:.0f}/s ({100 * args.relative_share:.0f}% no-op)"
    print(table(results, rows(args.rate, relative)))
    print(
        f"\nworkers per app: {args.workers}; open loop {args.rate:.0f}/s for {args.seconds:.0f}s; "
        f"closed loop {args.clients} clients for {args.closed_seconds:.0f}s; relative open loop "
        f"{common['relative_rate']:.0f}/s ({args.relative_share:g} x the no-op's closed-loop "
        f"req/s) for {args.relative_seconds:.0f}s; load from a separate process"
    )
    print(
        "1-minute load average before each run: "
        + ", ".join(f"{name} {value:.2f}" for name, value in loads.items())
        + f" ({os.cpu_count()} cores)"
    )
    for name, scenarios in results.items():
        for scenario, figures in scenarios.items():
            if figures.get("failures"):
                print(f"{name} {scenario} failures: {figures['failures']}")
    if "service" in results:
        print("\nissue 23's targets (/score against the no-op, this run):")
        for line in verdicts(results):
            print(f"  {line}")


if __name__ == "__main__":
    main()
