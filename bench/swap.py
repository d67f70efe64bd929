"""Benchmark a champion swap under load: p99 and errors while the running service takes new
champions, against the steady state of the same server in the same run.

    uv run python -m bench.swap                    # demo workspace in a temp folder
    uv run python -m bench.swap --home DIR         # a workspace with churn v1 and v2

The server (``bentoml serve``, ``--workers`` processes, checking for new champions every
``--reload`` seconds) gets an open-loop ``/score`` load from a separate process
(:func:`bench.serving.open_loop`: latency from the scheduled send time) twice:

1. steady: nothing changes;
2. swapping: the champion alternates between churn v1 and v2 every ``--every`` seconds,
   by a new champions bundle (``--via bundle``, the default: what the service watches,
   written cheaply so the figures show the service's own cost) or by
   ``registry.set_champion`` (``--via registry``: what ``rapport promote`` / ``rollback``
   / ``cycle`` call; it also re-reads the champions from MLflow, seconds of CPU on the
   same cores); every worker loads the new champions in a thread and swaps them in.

It prints both runs' p50 / p99 / errors, the ratio of the p99s and whether "0 failed,
p99 within 2x of the steady state" holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.serving import figures, new_home, open_loop, request_bytes, score_bodies
from serving.auth import add_key
from serving.runtime import ROOT
from tests.serving_harness import (
    add_churn_version,
    environment,
    prepare_workspace,
    sample_customers,
    serving,
)


def load(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One open-loop run (in the load process)."""
    host, port = spec["host"], spec["port"]
    requests = [request_bytes(host, port, "/score", body, spec["key"]) for body in spec["bodies"]]
    result = asyncio.run(open_loop(host, port, requests, spec["rate"], spec["seconds"]))
    return figures(result)


def start_load(spec: Mapping[str, Any]) -> subprocess.Popen[str]:
    """The load generator in its own process (it must not share a GIL with the swaps)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.swap", "--load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(spec))
    process.stdin.close()
    return process


def finish_load(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    out = process.stdout.read()
    if process.wait() != 0:
        raise RuntimeError(f"load process failed ({process.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


def served(url: str) -> str:
    import httpx

    try:
        return httpx.get(url + "/readyz", timeout=5).headers.get("x-rapport-models", "")
    except httpx.HTTPError:  # a slow answer under load: ask again
        return ""


@dataclass
class Swaps:
    """What the swapping run did: per swap, the promotion call's seconds (registry and
    bundle, in this process) and the seconds from its return until ``/readyz`` said so."""

    promote: list[float] = field(default_factory=list)
    seen: list[float | None] = field(default_factory=list)


def swap_during(home: Path, url: str, seconds: float, every: float, via: str) -> Swaps:
    """Alternate churn v2 / v1 as champion every ``every`` s for ``seconds``: through the
    registry (``via="registry"``: ``registry.set_champion``, what ``rapport promote`` /
    ``rollback`` / ``cycle`` call, which also re-reads the champions from MLflow for the
    bundle) or by writing the new bundle only (``via="bundle"``: the champions loaded
    beforehand, so the promoting process costs the shared cores little and the figures show
    the service's own swap)."""
    from models import registry
    from models.bundle import bundle_champions, load_for_serving
    from rapport.settings import get_settings

    swaps = Swaps()
    version = "2"
    with environment(RAPPORT_HOME=str(home), RAPPORT_ONLINE_STORE=None, MLFLOW_TRACKING_URI=None):
        settings = get_settings()
        ready = {}
        if via == "bundle":
            for number in ("1", "2"):
                champions = load_for_serving(settings)
                champions.models["churn"], _ = registry.load_model("churn", version=number)
                champions.versions["churn"] = number
                ready[number] = champions
        stop_at = time.monotonic() + seconds - every / 2
        while time.monotonic() < stop_at:
            started = time.monotonic()
            if via == "bundle":
                bundle_champions(ready[version], settings)
            else:
                registry.set_champion("churn", version)
            promoted = time.monotonic()
            swaps.promote.append(promoted - started)
            while f"churn={version}," not in served(url) and time.monotonic() - promoted < every:
                time.sleep(0.05)
            shown = time.monotonic() - promoted
            swaps.seen.append(shown if shown < every else None)
            version = "1" if version == "2" else "2"
            time.sleep(max(0.0, every - (time.monotonic() - started)))
        # leave the workspace as found: churn v1, in the registry and the latest bundle
        if via == "bundle":
            bundle_champions(ready["1"], settings)
        else:
            registry.set_champion("churn", "1")
    return swaps


def warm_up(home: Path) -> None:
    """Import and open what a promotion needs (MLflow, the registry) before measuring, and
    start from churn v1 (bundled afresh)."""
    from models import registry

    with environment(RAPPORT_HOME=str(home), RAPPORT_ONLINE_STORE=None, MLFLOW_TRACKING_URI=None):
        if registry.aliases("churn").get("champion") != "1":
            registry.set_champion("churn", "1")
        registry.load_champions()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="Workspace with churn v1 and v2.")
    parser.add_argument("--keep", type=Path, help="Prepare the new workspace here and keep it.")
    parser.add_argument("--customers", type=int, default=3000, help="Demo size (new workspace).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=50.0, help="Requests per second.")
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of each run.")
    parser.add_argument("--every", type=float, default=5.0, help="Seconds between swaps.")
    parser.add_argument("--reload", type=float, default=1.0, help="The server's check interval.")
    parser.add_argument(
        "--via",
        choices=["bundle", "registry"],
        default="bundle",
        help="How the champion changes: a new bundle only (default: the service's own cost) "
        "or registry.set_champion (alias + bundle, as a promotion does).",
    )
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        print(json.dumps(load(json.loads(sys.stdin.read()))))
        return
    with contextlib.ExitStack() as stack:
        if args.home:
            home = args.home.expanduser().absolute()
        else:
            home = new_home(stack, args.keep, "rapport-swap-")
            print(f"preparing a demo workspace in {home}", file=sys.stderr)
            prepare_workspace(home, args.customers)
            add_churn_version(home)
        key = add_key(home, ["score"])
        warm_up(home)
        reload = {"RAPPORT_RELOAD_SECONDS": str(args.reload)}
        server = stack.enter_context(serving(home, env=reload, workers=args.workers))
        spec = {
            "host": "127.0.0.1",
            "port": int(server.url.rsplit(":", 1)[1]),
            "key": key,
            "rate": args.rate,
            "seconds": args.seconds,
            "bodies": score_bodies(sample_customers(home, 2000)),
        }
        print("steady state", file=sys.stderr)
        steady_load = os.getloadavg()[0]
        steady = finish_load(start_load(spec))
        print("swapping", file=sys.stderr)
        swap_load = os.getloadavg()[0]
        running = start_load(spec)
        swaps = swap_during(home, server.url, args.seconds, args.every, args.via)
        swapping = finish_load(running)
        errors = [line for line in server.log_text().splitlines() if "ERROR" in line]
    ratio = swapping["p99"] / steady["p99"] if steady["p99"] else float("nan")
    print(f"| {'run':<9} | {'requests':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'failed':>6} |")
    print(f"|{'-' * 11}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 8}|")
    for name, run in (("steady", steady), ("swapping", swapping)):
        print(
            f"| {name:<9} | {run['count'] + run['errors']:>8.0f} | {run['p50']:>7.1f} "
            f"| {run['p99']:>7.1f} | {run['errors']:>6.0f} |"
        )
    seen = ", ".join("-" if t is None else f"{t:.1f}" for t in swaps.seen)
    print(
        f"\n{len(swaps.seen)} swaps (churn v1 <-> v2) every {args.every:g}s; each promotion "
        f"({args.via}) took {', '.join(f'{t:.1f}' for t in swaps.promote)} s (in the "
        f"bench process, on the same cores); /readyz showed it {seen} s later "
        f"(- = not within {args.every:g}s); {args.workers} workers; open loop "
        f"{args.rate:g}/s for {args.seconds:g}s each"
    )
    print(
        f"1-minute load average before each run: steady {steady_load:.2f}, "
        f"swapping {swap_load:.2f} ({os.cpu_count()} cores, shared: noisy)"
    )
    for name, run in (("steady", steady), ("swapping", swapping)):
        if run["failures"]:
            print(f"{name} failures: {run['failures']}")
    if errors:
        print(f"server log errors: {len(errors)}, first: {errors[0]}")
    holds = swapping["errors"] == 0 and ratio <= 2.0
    verdict = "holds" if holds else "does NOT hold"
    print(f"p99 swapping / steady: {ratio:.2f}; '0 failed, p99 within 2x': {verdict}")


if __name__ == "__main__":
    main()
