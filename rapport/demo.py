"""`rapport demo`: the whole loop on generated data, step by step, printing what it did.

The demo knows the simulator's ground truth: it loads it with the data and has every model
judged against it too, through :mod:`rapport.truth` (production code never reads it)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rapport.settings import Settings

Say = Callable[[str], None]


@dataclass
class DemoOptions:
    customers: int = 20_000
    seed: int = 42
    serve: bool = True
    tune_trials: int = 3
    host: str = "127.0.0.1"
    port: int = 3000
    #: the marketers' web page, started beside the service
    ui_port: int = 3001


def run_demo(options: DemoOptions, settings: Settings, say: Say, progress: Say) -> None:
    from features.warehouse import connect
    from rapport.demo_data import generate, write

    settings.ensure_home()
    say(f"workspace: {settings.home}")
    data_dir = settings.home / "demo-data"
    say(f"\n== 1. demo data: {options.customers:,} customers, seed {options.seed}")
    data = generate(
        options.customers, options.seed, horizon_days=settings.horizon_days, progress=progress
    )
    write(data, data_dir, "parquet")
    say(
        f"written to {data_dir} (history to {data.end:%Y-%m-%d}, "
        f"truth as of {data.truth_as_of:%Y-%m-%d})"
    )

    say("\n== 2. ingest into the warehouse")
    from rapport.truth import compare_holdout, compare_nba, ingest_demo

    con = connect(settings.warehouse_path)
    report = ingest_demo(con, data_dir, now=datetime.now(UTC))
    say(report.summary())

    say("\n== 3. features and segments as of the end of history")
    from features.batch import build
    from features.segments import describe_segments, with_segments
    from features.spec import default_spec
    from features.tables.segments import snapshot_segments
    from features.warehouse import raw

    spec = default_spec()
    frame = build(con, data.end)
    segments = snapshot_segments(raw(con), frame, data.end, spec.version, datetime.now(UTC))
    frame = with_segments(frame, segments.model)
    say(f"{len(frame):,} customers x {len(spec.names)} features (feature set {spec.version})")
    say(f"stored {segments.describe()}")
    say(describe_segments(frame))

    say("\n== 4. train, tune, register and promote the churn and value models")
    from training import jobs
    from training.datasets import build_training_set

    data_set = build_training_set(con, horizon_days=settings.horizon_days, progress=progress)
    for kind in ("churn", "value"):
        trained = jobs.train(kind, con, data=data_set, progress=progress, compare=compare_holdout)
        say(trained.summary())
        say(jobs.promote(kind, con=con, progress=progress).summary())
        if options.tune_trials:
            # the tuned version must beat the default one on the holdout to replace it: a
            # bigger model that is no better only costs latency (its reasons cost ~10x)
            say(
                jobs.tune(
                    kind,
                    con,
                    options.tune_trials,
                    data=data_set,
                    progress=progress,
                    compare=compare_holdout,
                ).summary()
            )
            say(jobs.promote(kind, con=con, progress=progress).summary())

    say("\n== 5. next best action: uplift from the campaign log, off-policy evaluation, gate")
    from training.nba import promote_nba, train_nba

    nba_result = train_nba(con, progress=progress, compare=compare_nba)
    say(nba_result.summary())
    say(promote_nba(nba_result.version).summary())
    say("\n== batch scores for everyone and an example target list")
    example_list(con, settings, data.end, say, progress)
    say(f"MLflow UI: uv run mlflow ui --backend-store-uri {settings.tracking_uri}")
    prepare_serving(options, settings, con, say, progress)


def example_list(
    con: Any,
    settings: Settings,
    as_of: datetime,
    say: Say,
    progress: Say,
    name: str = "at_risk_high_value",
) -> None:
    """Score everyone, then make one saved list, exported to ``<home>/exports/<name>.csv``
    and recorded for audit, as ``rapport targets --list <name> --out ...`` would."""
    from features.spec import default_spec
    from features.tables.control import read_control
    from features.tables.lists import AuditTables, WarehouseLists, definition_texts
    from models.targeting import lookup, make_list, saved_definitions
    from training.scoring import score_all

    say(score_all(con, as_of, progress=progress).summary())
    definition = lookup(name, {}, saved_definitions(definition_texts(settings.target_lists_path)))
    out = settings.exports_dir / f"{name}.csv"
    target = make_list(
        WarehouseLists(con),
        definition,
        default_spec(),
        as_of,
        control=read_control(settings.home).group,
        sink=AuditTables(con, out),
        progress=progress,
    )
    say(target.summary())
    say(
        'more lists: uv run rapport targets --filter "churn_probability > 0.5 and '
        "abc_tier == 'A'\" --budget 5000 --out list.csv   (saved ones: --show-lists)"
    )


def prepare_serving(
    options: DemoOptions, settings: Settings, con: Any, say: Say, progress: Say
) -> None:
    """Online store, champions in the BentoML store, a local key; then (unless
    ``--no-serve``) the service itself, in place of this process."""
    import time

    say("\n== 6. online feature store: every customer's record, for live scoring")
    from features.online.materialize import materialize
    from features.online.store import open_store, redact_url
    from models.bundle import import_champions
    from serving.auth import add_key
    from serving.runtime import serve

    store = open_store(settings.online_store_url)
    start = time.perf_counter()
    try:
        written = materialize(con, store, progress=progress)
    finally:
        store.close()
    say(
        f"{written:,} records in {time.perf_counter() - start:.1f}s into "
        f"{redact_url(settings.online_store_url)}"
    )
    say(f"champions bundled for serving as {import_champions(settings)}")
    row = con.con.execute(
        "SELECT customer_id FROM orders GROUP BY customer_id ORDER BY count(*) DESC, "
        "customer_id LIMIT 1"
    ).fetchone()
    customer = row[0] if row else "C000001"
    con.disconnect()

    say("\n== 7. scoring service")
    key = add_key(
        settings.home, ["score", "events", "feedback", "targets", "ui"], name="rapport demo"
    )
    url = f"http://{options.host}:{options.port}"
    body = f'{{"customer_id": "{customer}", "context": {{"channel": "call"}}}}'
    say(f"URL:     {url}   (OpenAPI: {url}/docs)")
    say(f"API key: {key}   (local, shown once; scopes score, events, feedback, targets, ui)")
    say("try:")
    say(
        f"  curl -s {url}/score -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' -d '{body}'"
    )
    page = f"http://{options.host}:{options.ui_port}"
    if not options.serve:
        say("start it with: uv run rapport serve")
        say(f"the web page for marketers: uv run rapport ui   (then {page}, sign in with the key)")
        return
    start_ui(options, settings)
    say(f"web page: {page}   (sign in with the API key above)")
    say(f"starting the service on {url} (Ctrl+C stops both) ...")
    sys.stdout.flush()
    serve(options.host, options.port, settings=settings)


def start_ui(options: DemoOptions, settings: Settings) -> Any:
    """``rapport ui`` in a child process beside the service: its own process, so list
    previews never run in the scoring workers. It shares the terminal's process group, so
    the Ctrl+C that stops the service stops it too."""
    import os
    import subprocess

    command = [sys.executable, "-m", "rapport.cli", "ui", "--host", options.host]
    command += ["--port", str(options.ui_port)]
    return subprocess.Popen(command, env={**os.environ, "RAPPORT_HOME": str(settings.home)})
