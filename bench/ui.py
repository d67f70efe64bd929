"""Page timings of the marketers' web page (``rapport ui``) over HTTP.

Starts ``rapport ui`` as the demo does (:func:`rapport.demo.start_ui`) on a workspace,
signs in and requests every page ``--repeat`` times, then times the list builder: the
first preview (reads the candidates), previews after it (cached candidates, a changed
filter or budget), and a save (the kept candidates, files, audit). Prints the median and the
worst per page, and each page's median against the overview's (the ratio is steadier
than the times on a shared machine).

    uv run python -m bench.ui --home .rapport          # after `rapport demo` (20k customers)
    uv run python -m bench.ui --customers 20000        # builds a workspace first (minutes)
    uv run python -m bench.ui --home .rapport --with-score 20   # + /score p99 under previews

The page reads the scores and the catalog's columns (consent, contacts, cool-downs) when
it starts and keeps them (``ui.data.CachedLists``); sign-ins wait for that start-up read
("page ready", ``/readyz``; the code before it had no such route and signed in at once).
"preview, first", sent right after signing in and before the pages are timed, takes the
columns from the scoring run's published snapshot while the fresh ones are read behind
it; "save, right after the first preview" waits for those fresh ones; "preview, new
feature" takes two more columns (from the snapshot, or computed over the events without
one); "cached" previews read nothing; a save selects again from the kept candidates
with fresh columns only (it waits for those still being read; suppressions read
afresh) and writes. The bench says which previews
were served on snapshot columns and when every preview had fresh ones.

``--with-score SECONDS`` also starts the scoring service (the tests' harness, one worker)
and sends ``/score`` at 50 requests/s for that long three times: alone, while the page
previews lists without pause (filters on other features each time, as a marketer
typing), and while it saves lists without pause (each save selects from the kept
candidates, writes the files and the audit rows). The
heavy queries run in the page's process; the p99 of ``/score`` shows what they cost the
service on shared cores.

``--replicate K`` measures a copy of the workspace with every customer K times (ids
suffixed ``-1`` ... ``-{K-1}``) in ``customers``, ``scores`` and the event tables the pages
and lists read: a million customers from a 200k workspace in about two minutes instead of
half an hour of generating and training (the online store and the models stay those of
the original customers: live reasons and ``/score`` see those only).

    uv run python -m bench.ui --customers 200000 --keep /tmp/ui200k   # or --home DIR
    uv run python -m bench.ui --home /tmp/ui200k --replicate 5 --with-score 20

The workspace needs scores; analytics and monitoring make the pages fuller
(:func:`tests.ui_workspace.prepare_ui_workspace` builds one with all three).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


#: whether the latest preview timed said "features as of the scoring run" (it took
#: columns from the run's published snapshot while the fresh ones were read)
LATEST = {"snapshot": False}
SNAPSHOT_NOTE = 'class="note" id="features-as-of"'


def timed(client: httpx.Client, method: str, url: str, **kwargs: object) -> float:
    start = time.perf_counter()
    response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    if response.status_code != 200:
        raise SystemExit(f"{method} {url}: {response.status_code} {response.text[:300]}")
    LATEST["snapshot"] = SNAPSHOT_NOTE in response.text
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="An existing workspace.")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--port", type=int, default=3391)
    parser.add_argument("--with-score", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--replicate", type=int, default=1, metavar="K")
    parser.add_argument("--keep", type=Path, default=None, help="Build the workspace here.")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    from rapport.demo import DemoOptions, start_ui
    from rapport.settings import Settings
    from serving.auth import add_key

    home = args.home
    if home is None:
        from ui_workspace import prepare_ui_workspace  # type: ignore[import-not-found]

        home = args.keep or Path(tempfile.mkdtemp(prefix="bench-ui-"))
        start = time.perf_counter()
        prepare_ui_workspace(home, customers=args.customers, seed=42)
        print(f"workspace of {args.customers:,} customers in {time.perf_counter() - start:.0f} s")
    if args.replicate > 1:
        home = replicate(home, args.replicate)
    key = add_key(home, ["ui"], name="bench ui")
    launched = time.perf_counter()
    process = start_ui(DemoOptions(ui_port=args.port), Settings(home=home))
    url = f"http://127.0.0.1:{args.port}"
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            for _ in range(600):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            serving = time.perf_counter() - launched
            ready = wait_ready(client) and time.perf_counter() - launched
            form = client.get("/signin").text
            token = re.search(r'name="csrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
            signing_in = time.perf_counter()
            client.post("/signin", data={"key": key, "csrf": token})
            signed_in = time.perf_counter() - signing_in
            page = client.get("/builder").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            customer = re.search(r'/customer\?id=([^"]+)"', client.get("/customer").text)
            pages = [
                "/",
                "/segments",
                "/segments?segment=champions",
                "/builder",
                "/lists",
                "/customer",
                f"/customer?id={customer.group(1) if customer else 'x'}",
                "/results",
            ]
            headers = {"X-CSRF-Token": csrf}
            body = {"filter": "churn_probability > 0.5", "budget": "500"}
            # first, so the pages are not timed beside the start-up read
            started = time.perf_counter()
            first = timed(client, "POST", "/builder/preview", data=body, headers=headers)
            snapshot = {"first": LATEST["snapshot"]}
            # a save at once: it waits for the fresh columns the start asked for
            saved = {**body, "name": "bench_ui_first"}
            first_save = timed(client, "POST", "/builder/save", data=saved, headers=headers)
            times = {p: [timed(client, "GET", p) for _ in range(args.repeat)] for p in pages}
            warm = []
            for i in range(1, args.repeat + 1):
                changed = {"filter": f"churn_probability > {0.3 + i / 20}", "budget": str(100 * i)}
                warm.append(
                    timed(client, "POST", "/builder/preview", data=changed, headers=headers)
                )
                snapshot["cached"] = snapshot.get("cached", False) or LATEST["snapshot"]
            other = {"filter": "spend_90d > 100 and orders_30d >= 1", "budget": "500"}
            new_feature = timed(client, "POST", "/builder/preview", data=other, headers=headers)
            snapshot["new feature"] = LATEST["snapshot"]
            save = timed(
                client,
                "POST",
                "/builder/save",
                headers=headers,
                data={**body, "name": "bench_ui_list"},
            )
            print(f"\n{'page answers (/healthz)':<34} {serving:8.1f}  (since started)")
            if ready:
                print(f"{'page ready (/readyz: start-up read)':<34} {ready:8.1f}  (since started)")
            print(f"{'sign-in':<34} {signed_in:8.3f}")
            report(home, args.repeat, times, first, warm, new_feature, save)
            print(f"{'save, right after the first preview':<34} {first_save:8.3f}")
            used = [k for k, v in snapshot.items() if v]
            print(f"previews on the scoring run's snapshot columns: {', '.join(used) or 'none'}")
            # when the fresh columns of the new feature's preview replaced the snapshot's
            while LATEST["snapshot"] and time.perf_counter() - started < 600:
                time.sleep(1)
                timed(client, "POST", "/builder/preview", data=other, headers=headers)
            fresh = time.perf_counter() - started
            print(f"{'every preview on fresh columns':<34} {fresh:8.1f}  (since the first preview)")
            if args.with_score:
                score_under_previews(home, client, headers, args.with_score)
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_ready(client: httpx.Client) -> bool:
    """Wait until the page says it is ready (``/readyz``: its start-up read is done);
    False when it has no such route (the code before it)."""
    while True:
        answer = client.get("/readyz")
        if answer.status_code == 404:
            return False
        if answer.status_code == 200:
            return True
        time.sleep(0.1)


def report(
    home: Path,
    repeat: int,
    times: dict[str, list[float]],
    first: float,
    warm: list[float],
    new_feature: float,
    save: float,
) -> None:
    base = statistics.median(times["/"])
    print(f"\nworkspace {home}; {repeat} requests per page (seconds)")
    print(f"{'page':<34} {'median':>8} {'worst':>8} {'vs overview':>12}")
    for p, values in times.items():
        median = statistics.median(values)
        print(f"{p:<34} {median:8.3f} {max(values):8.3f} {median / base:11.2f}x")
    print(f"{'preview, first (start-up read)':<34} {first:8.3f}  (since signed in)")
    print(f"{'preview, cached candidates':<34} {statistics.median(warm):8.3f} {max(warm):8.3f}")
    print(f"{'preview, new feature (2 columns)':<34} {new_feature:8.3f}")
    print(f"{'save (selection, files, audit)':<34} {save:8.3f}", flush=True)


#: the tables whose rows are a customer's (the pages and lists read them)
CUSTOMER_TABLES = ("customers", "scores", "campaign_log", "interactions", "orders")


def replicate(home: Path, times: int) -> Path:
    """A copy of the workspace ``home`` with every customer ``times`` times."""
    import shutil

    import duckdb

    copy = Path(tempfile.mkdtemp(prefix=f"bench-ui-x{times}-"))
    shutil.copytree(home, copy, dirs_exist_ok=True)
    start = time.perf_counter()
    db = duckdb.connect(str(copy / "warehouse.duckdb"))
    try:
        copy_customers(db, CUSTOMER_TABLES, times)
        db.execute(f"UPDATE score_runs SET rows = rows * {times}")
        control_of_copies(db)
        customers = db.execute("SELECT count(*) FROM customers").fetchone()[0]  # type: ignore[index]
        db.execute("CHECKPOINT")
        replicate_snapshots(copy, times, db)
    finally:
        db.close()
    print(f"{customers:,} customers in {copy} ({time.perf_counter() - start:.0f} s)")
    return copy


def copy_customers(db: Any, tables: Sequence[str], times: int) -> None:
    """Every customer's rows of ``tables`` ``times`` times in the DuckDB ``db``, the
    copies' ids suffixed ``-1`` ... ``-{times-1}``: a large base with the demo's shape
    (each copy has its original's history, so scores and lists scale row for row)."""
    for table in tables:
        db.execute(f"CREATE TEMP TABLE base AS SELECT * FROM {table}")
        for k in range(1, times):
            db.execute(
                f"INSERT INTO {table} SELECT * REPLACE (customer_id || '-{k}' AS "
                "customer_id) FROM base"
            )
        db.execute("DROP TABLE base")


def control_of_copies(db: Any) -> None:
    """The scores' ``group`` of the copied customers as the run's control group (its
    share and salt) puts them: the hash of their own ids, not of the originals'."""
    import pyarrow as pa

    from features.control import ControlGroup

    runs = db.execute(
        "SELECT run_id, control_share, control_salt FROM score_runs "
        "WHERE control_share IS NOT NULL AND control_salt IS NOT NULL"
    ).fetchall()
    for run_id, share, salt in runs:
        ids = db.execute(
            "SELECT customer_id FROM scores WHERE run_id = ? AND customer_id LIKE '%-%'", [run_id]
        ).to_arrow_table()["customer_id"]
        held = ControlGroup(float(share), str(salt)).mask(ids.to_numpy(zero_copy_only=False))
        groups = pa.array(["control" if h else "treated" for h in held], pa.string())
        db.register("copied", pa.table({"customer_id": ids, "grp": groups}))
        db.execute(
            'UPDATE scores SET "group" = copied.grp FROM copied '
            "WHERE scores.run_id = ? AND scores.customer_id = copied.customer_id",
            [run_id],
        )
        db.unregister("copied")


def replicate_snapshots(home: Path, times: int, db: Any) -> None:
    """The published scoring runs (``features.tables.snapshots``) of the copy ``home``
    with every customer ``times`` times: their features in the warehouse's order (the
    rows of a run, then their copies ``-1``, ``-2`` ...), their scores as the copied
    warehouse holds them, and their ``rows`` to match ``score_runs``."""
    import json

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.tables.snapshots import FEATURES_FILE, RUN_FILE, SCORES_FILE

    folder = home / "snapshots" / "scores"
    for run in folder.glob(f"*/{RUN_FILE}") if folder.is_dir() else []:
        scores = db.execute("SELECT * FROM scores WHERE run_id = ?", [run.parent.name])
        pq.write_table(scores.to_arrow_table(), run.parent / SCORES_FILE)
        for name in (FEATURES_FILE,):
            table = pq.read_table(run.parent / name)
            at = table.schema.get_field_index("customer_id")
            ids = pc.cast(table.column(at), pa.string())
            copies = [table.set_column(at, "customer_id", ids)]
            for k in range(1, times):
                suffixed = pc.binary_join_element_wise(ids, pa.scalar(f"-{k}"), "")
                copies.append(table.set_column(at, "customer_id", suffixed))
            pq.write_table(pa.concat_tables(copies), run.parent / name)
        record = json.loads(run.read_text())
        record["rows"] *= times
        run.write_text(json.dumps(record))


def score_under_previews(
    home: Path, page: httpx.Client, headers: dict[str, str], seconds: float
) -> None:
    """``/score`` p50 / p99 at 50 requests/s: alone, while the page previews, while it saves."""
    import threading

    from serving.auth import add_key
    from tests.serving_harness import sample_customers, start_service, stop, wait_ready

    key = add_key(home, ["score"], name="bench ui score")
    # replicated customers (--replicate) are not in the online store: the originals only
    customers = [c for c in sample_customers(home, 2500) if "-" not in c][:500]
    server = start_service(home, workers=1)
    import itertools

    names = [
        "days_since_last_order",
        "orders_90d",
        "spend_90d",
        "orders_30d",
        "spend_365d",
        "avg_order_value_365d",
        "tenure_days",
        "orders_365d",
        "spend_30d",
        "contacts_90d",
        "last_order_amount",
        "orders_all",
    ]
    pairs = list(itertools.combinations(names, 2))  # the first previews read new columns
    try:
        wait_ready(server)

        def load(duration: float) -> list[float]:
            times: list[float] = []
            with httpx.Client(base_url=server.url, timeout=30) as client:
                auth = {"Authorization": f"Bearer {key}"}
                deadline = time.perf_counter() + duration
                i = 0
                while time.perf_counter() < deadline:
                    body = {"customer_id": customers[i % len(customers)]}
                    start = time.perf_counter()
                    response = client.post("/score", json=body, headers=auth)
                    times.append(time.perf_counter() - start)
                    if response.status_code != 200:
                        raise SystemExit(f"/score: {response.status_code} {response.text[:200]}")
                    i += 1
                    time.sleep(max(0.0, 0.02 - (time.perf_counter() - start)))
            return times

        load(3)  # warm up
        alone = load(seconds)

        def busy_with(request: Callable[[int], httpx.Response]) -> tuple[list[float], list[float]]:
            """``/score`` under load while ``request(i)`` runs without pause; (score
            times, page request times)."""
            stop_page = threading.Event()
            spent: list[float] = []

            def page_loop() -> None:
                i = 0
                while not stop_page.is_set():
                    start = time.perf_counter()
                    answer = request(i)
                    if answer.status_code != 200:
                        raise SystemExit(f"page: {answer.status_code} {answer.text[:200]}")
                    spent.append(time.perf_counter() - start)
                    i += 1

            worker = threading.Thread(target=page_loop)
            worker.start()
            try:
                return load(seconds), spent
            finally:
                stop_page.set()
                worker.join()

        def preview(i: int) -> httpx.Response:
            used = pairs[i % len(pairs)]  # features a marketer types, one pair after another
            rule = " and ".join(f"{f} is not null" for f in used) + f" and value_mean > {i}"
            body = {"filter": rule, "budget": "1000"}
            return page.post("/builder/preview", data=body, headers=headers)

        def save(i: int) -> httpx.Response:
            body = {"filter": f"churn_probability > {0.3 + (i % 10) / 20}", "budget": "1000"}
            return page.post(
                "/builder/save", data={**body, "name": "bench_ui_load"}, headers=headers
            )

        previewing, previews = busy_with(preview)
        saving, saves = busy_with(save)
    finally:
        stop(server)

    def q(values: list[float], p: float) -> float:
        return sorted(values)[min(len(values) - 1, int(p * len(values)))] * 1000

    print(f"\n/score at 50/s for {seconds:.0f} s (ms)       p50      p99   requests")
    print(f"{'alone':<34} {q(alone, 0.5):8.2f} {q(alone, 0.99):8.2f} {len(alone):10,}")
    for label, times, page_times, what in (
        ("while previewing", previewing, previews, "previews"),
        ("while saving lists", saving, saves, "saves"),
    ):
        print(f"{label:<34} {q(times, 0.5):8.2f} {q(times, 0.99):8.2f} {len(times):10,}")
        print(
            f"{'':<34} p99 ratio {q(times, 0.99) / q(alone, 0.99):.2f}x; {len(page_times)} "
            f"{what}, median {statistics.median(page_times or [0]):.2f} s"
        )


if __name__ == "__main__":
    main()
