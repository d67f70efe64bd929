"""CPU a live write costs per record: a logged decision that counts, a posted order.

    uv run python -m bench.record_writes --home DIR    # a workspace like `rapport demo`'s

Copies the workspace's SQLite online store to a scratch folder (the workspace is not
changed), then writes, customer after customer, what the service's writers write:

* ``decision``: a logged decision that counts (:func:`features.online.events.log_decisions`,
  in groups of 16 like the service's writer thread: the outbox, the records, one commit);
* ``order``: a posted order (:func:`features.online.events.apply_events`, one per call).

Each record is stamped again as it is written (:func:`features.online.kept.stamp`). Each
kind runs in two arms, alternating group by group over different customers: ``reuse``,
the writers as they are (the stamp the record had gives the tables the write leaves alone),
and ``full``, every table aggregated again (the stamp's ``previous`` withheld: the code
before), so the ratio is measured in one run on one machine. Prints thread CPU
microseconds per record (median over the groups); never fails on figures.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.online import events
from features.online.events import Outbox, apply_events, decision_row, log_decisions
from features.online.store import open_store
from features.spec import default_spec
from tests.serving_harness import sample_customers

GROUP = 16


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, required=True, help="Workspace (not modified).")
    parser.add_argument("--customers", type=int, default=1600, help="Customers per kind.")
    args = parser.parse_args(argv)
    home = args.home.expanduser().absolute()
    spec = default_spec()
    customers = sample_customers(home, 2 * args.customers)
    scratch = Path(tempfile.mkdtemp(prefix="rapport-writes-"))
    try:
        shutil.copy(home / "online.sqlite", scratch / "online.sqlite")
        store = open_store(f"sqlite:///{scratch / 'online.sqlite'}")
        outbox = Outbox(scratch / "outbox")
        restamp = events.stamp

        def full(record: Any, as_of: datetime, spec: Any, *_: Any) -> Any:
            return restamp(record, as_of, spec)  # no previous stamp: every table

        def decisions(ids: list[str]) -> None:
            now = datetime.now(UTC)
            rows = [
                decision_row(f"bench-{c}-{now.timestamp()}", c, now, "cross_sell", "email", 0.5)
                for c in ids
            ]
            log_decisions(store, outbox, rows, set(ids), spec)

        def orders(ids: list[str]) -> None:
            for c in ids:
                now = datetime.now(UTC)
                order = {"order_id": f"bench-{c}-{now.timestamp()}", "customer_id": c}
                apply_events(
                    store, outbox, {"orders": [{**order, "ordered_at": now, "amount": 9.5}]}
                )

        results: dict[tuple[str, str], list[float]] = {}
        for kind, write in (("decision", decisions), ("order", orders)):
            ids = customers[: args.customers] if kind == "decision" else customers[args.customers :]
            for start in range(0, len(ids) - 2 * GROUP + 1, 2 * GROUP):
                for offset, (arm, stamper) in enumerate((("reuse", restamp), ("full", full))):
                    group = ids[start + offset * GROUP : start + (offset + 1) * GROUP]
                    events.stamp = stamper  # type: ignore[assignment]
                    try:
                        results.setdefault((kind, arm), []).append(_cpu(write, group) / len(group))
                    finally:
                        events.stamp = restamp
        print(f"{args.customers:,} customers per kind from {home.name}; thread CPU per record")
        print("| write | reuse (us) | full (us) | reuse / full |")
        print("|---|---|---|---|")
        for kind in ("decision", "order"):
            reuse = statistics.median(results[(kind, "reuse")]) * 1e6
            whole = statistics.median(results[(kind, "full")]) * 1e6
            print(f"| {kind} | {reuse:.0f} | {whole:.0f} | {reuse / whole:.2f} |")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cpu(write: Callable[[list[str]], None], ids: list[str]) -> float:
    started = time.thread_time()
    write(ids)
    return time.thread_time() - started


if __name__ == "__main__":
    main()
