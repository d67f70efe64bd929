"""``POST /targets`` and ``/score`` while ``rapport score`` holds the warehouse.

    uv run python -m bench.contention [--customers 5000] [--seconds 30] [--unniced]

Builds a demo workspace (the tests' harness) with one scoring run, starts the service
(one worker) and runs two phases of ``--seconds`` each with the same load: ``/score`` at
``--score-rate`` requests/s and ``POST /targets`` at ``--targets-rate`` (each from its own
thread, latency from the scheduled send time).
Phase one is alone; in phase two ``rapport score`` runs in its own process, again and
again, so a writer holds the warehouse most of the time (at its default, lowered CPU
priority, ``RAPPORT_BATCH_NICE``); with ``--unniced`` a third phase runs it at the
service's priority (``RAPPORT_BATCH_NICE=0``, as before issue 22). Prints p50 / p99 / max
per route and phase, the statuses, how many lists came from the published run (the
warehouse locked) rather than the warehouse, and ``/score``'s p99 during each job phase
against its p99 alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.serving_harness import (
    Workspace,
    environment,
    prepare_workspace,
    sample_customers,
    serving,
)


@dataclass
class Route:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    from_snapshot: int = 0

    def line(self, name: str) -> str:
        ms = np.array(self.latencies) * 1000
        p50, p99 = np.percentile(ms, [50, 99]) if len(ms) else (float("nan"),) * 2
        extra = f", {self.from_snapshot} from the published run" if name == "/targets" else ""
        return (
            f"{name:<9} n={len(ms):>5}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
            f"max {ms.max() if len(ms) else float('nan'):7.1f} ms  "
            f"statuses {dict(self.statuses)}{extra}"
        )


def drive(
    url: str,
    key: str,
    body_of: tuple[str, Callable[[int], dict[str, Any]]],
    rate: float,
    until: float,
    out: Route,
) -> None:
    """Send at ``rate`` per second until ``until``; latency from the scheduled time."""
    path, make = body_of
    interval, n = 1.0 / rate, 0
    start = time.perf_counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        while True:
            due = start + n * interval
            if due >= until:
                return
            time.sleep(max(0.0, due - time.perf_counter()))
            response = client.post(path, json=make(n), timeout=60)
            out.latencies.append(time.perf_counter() - due)
            out.statuses[response.status_code] += 1
            if path == "/targets" and response.status_code == 200:
                data = response.json()
                out.from_snapshot += data["features_as_of"] == data["scores_as_of"]
            n += 1


def phase(
    url: str, ws: Workspace, customers: list[str], args: argparse.Namespace
) -> dict[str, Route]:
    routes = {"/score": Route(), "/targets": Route()}
    until = time.perf_counter() + args.seconds
    work = {
        "/score": (ws.keys["score"], ("/score", lambda n: {"customer_id": customers[n % 200]})),
        "/targets": (
            ws.keys["targets"],
            ("/targets", lambda n: {"action": "cross_sell", "top": 50}),
        ),
    }
    rates = {"/score": args.score_rate, "/targets": args.targets_rate}
    threads = [
        threading.Thread(target=drive, args=(url, key, spec, rates[name], until, routes[name]))
        for name, (key, spec) in work.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return routes


def score_forever(home: Path, stop_at: float, nice: str | None = None) -> int:
    """Run ``rapport score`` back to back until ``stop_at``; returns the runs finished.
    ``nice``: ``RAPPORT_BATCH_NICE`` for the job (default: the setting's)."""
    env = {**os.environ, "RAPPORT_HOME": str(home)}
    if nice is not None:
        env["RAPPORT_BATCH_NICE"] = nice
    runs = 0
    while time.perf_counter() < stop_at:
        done = subprocess.run(
            [sys.executable, "-m", "rapport.cli", "score"], env=env, capture_output=True
        )
        if done.returncode != 0:
            raise SystemExit(done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:])
        runs += 1
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--score-rate", type=float, default=50.0)
    parser.add_argument("--targets-rate", type=float, default=2.0)
    parser.add_argument(
        "--unniced",
        action="store_true",
        help="Also a phase with the job at the service's priority (RAPPORT_BATCH_NICE=0).",
    )
    args = parser.parse_args()
    temp = tempfile.TemporaryDirectory(prefix="rapport-contention-")
    home = Path(temp.name) / "home"
    print(f"building a {args.customers:,}-customer workspace (minutes)", flush=True)
    ws = prepare_workspace(home, args.customers)
    with environment(RAPPORT_HOME=str(home), MLFLOW_TRACKING_URI=None):
        # one run first: scores and a published snapshot
        subprocess.run([sys.executable, "-m", "rapport.cli", "score"], check=True)
        customers = sample_customers(home, 200)
        with serving(home) as server:
            phases = {"alone": phase(server.url, ws, customers, args)}
            jobs: dict[str, str | None] = {"while rapport score runs (niced, the default)": None}
            if args.unniced:
                jobs["while rapport score runs at the service's priority"] = "0"
            for title, nice in jobs.items():
                phases[title] = during_job(server.url, ws, customers, args, nice)
    for title, routes in phases.items():
        print(f"\n{title}:")
        for name, route in routes.items():
            print("  " + route.line(name))
    alone = np.percentile(phases["alone"]["/score"].latencies, 99)
    print(f"\n/score p99 alone: {alone * 1000:.1f} ms")
    for title in jobs:
        during = np.percentile(phases[title]["/score"].latencies, 99)
        print(f"/score p99 {title}: {during * 1000:.1f} ms, {during / alone:.2f}x alone")
    print(f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    temp.cleanup()


def during_job(
    url: str, ws: Workspace, customers: list[str], args: argparse.Namespace, nice: str | None
) -> dict[str, Route]:
    """One phase while ``rapport score`` runs back to back (``nice``: its niceness)."""
    stop_at = time.perf_counter() + args.seconds + 3
    runs: list[int] = []
    writer = threading.Thread(target=lambda: runs.append(score_forever(ws.home, stop_at, nice)))
    writer.start()
    time.sleep(3)  # the writer's imports: it holds the warehouse from its first run on
    routes = phase(url, ws, customers, args)
    writer.join()
    print(f"{runs[0] if runs else 0} scoring runs during the phase", flush=True)
    return routes


if __name__ == "__main__":
    main()
