"""CPU time the scoring service spends per ``/score`` request, from ``/proc``.

    uv run python -m bench.serving_cpu --home DIR       # a workspace like `rapport demo`'s

Starts the service (2 workers) as ``bench/serving.py`` does, warms it up, then runs its
closed loop (16 clients) and a short sequential run, and reads the CPU seconds (user +
system) of the server's process tree before and after each: CPU per request. On a machine
shared with other jobs, requests/s and latencies measure the other jobs as much as the
service; the CPU a request costs moves much less, so before/after comparisons there use
this. Linux only (``/proc``). Never fails on figures.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from bench.serving import run_load, score_bodies
from serving.auth import add_key
from tests.serving_harness import sample_customers, start_service, stop, wait_ready


def tree_cpu(root: int) -> float:
    """User + system CPU seconds of ``root`` and all its descendants."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, required=True, help="Existing workspace.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--closed-seconds", type=float, default=15.0)
    parser.add_argument("--sequential", type=int, default=300)
    args = parser.parse_args(argv)
    home = args.home.expanduser().absolute()
    key = add_key(home, ["admin"])
    server = start_service(home, workers=args.workers)
    try:
        wait_ready(server)
        spec = {
            "host": "127.0.0.1",
            "port": int(server.url.rsplit(":", 1)[1]),
            "path": "/score",
            "key": key,
            "bodies": score_bodies(sample_customers(home, 5000)),
            "clients": 16,
            "closed_s": 3.0,
            "sequential": args.sequential,
        }
        run_load({**spec, "scenarios": ["closed"]})  # warm-up
        for scenario in ("closed", "sequential"):
            load = os.getloadavg()[0]
            before = tree_cpu(server.process.pid)
            figures = run_load({**spec, "closed_s": args.closed_seconds, "scenarios": [scenario]})
            used = tree_cpu(server.process.pid) - before
            result = figures[scenario]
            count = result["count"] + (50 if scenario == "sequential" else 0)  # + warm-up
            print(
                f"{scenario}: {result['count']:.0f} requests, {result['rps']:.0f} req/s, p50 "
                f"{result['p50']:.2f} ms; server CPU {used:.2f} s = "
                f"{1000 * used / count:.2f} ms per request (1-minute load {load:.2f})"
            )
    finally:
        stop(server)


if __name__ == "__main__":
    main()
