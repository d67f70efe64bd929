"""`rapport demo`: the whole loop on generated data, step by step, printing what it did.

The demo knows the simulator's ground truth: it loads it with the data and has every model
judged against it too, through :mod:`rapport.truth` (production code never reads it)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rapport.settings import Settings

Say = Callable[[str], None]

#: simulated 30-day periods the demo plays after its batch part, each closed by the cycle
DEFAULT_PERIODS = 3


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
    #: simulated periods played after the batch part; with more than one, each period
    #: ends with `rapport cycle` (see :func:`play_periods`); 1: one period, no cycle
    periods: int = DEFAULT_PERIODS


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
    from training.datasets import Window, build_training_set

    data_set = build_training_set(
        con, Window(horizon_days=settings.horizon_days), progress=progress
    )
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
    if options.periods > 1:
        con.disconnect()  # every cycle opens the warehouse itself
        play_periods(settings, data.end, options.periods, say, progress)
        con = connect(settings.warehouse_path)
    else:
        days = f"{PERIOD_DAYS} days of answers"
        say(f"\n== one simulated period: the policy's decisions, {days}, impact")
        simulated_period(con, settings, data.end, say, progress)
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


#: days the demo plays after its history: every response window (14 days) closes in it
PERIOD_DAYS = 30


def simulated_period(
    con: Any,
    settings: Settings,
    decided_at: datetime,
    say: Say,
    progress: Say,
    days: int = PERIOD_DAYS,
    seed: int = 0,
) -> Any:
    """Close the loop once, as a campaign tool and a month would: every customer of the
    latest batch scores gets its best action at ``decided_at`` (the control group: none),
    logged to the campaign log with its group; ``rapport simulate`` plays the customers'
    answers over the ``days`` after; ``rapport ingest`` loads them (the catalog's
    attribution windows, the simulated clock as ``now``); ``rapport impact`` measures
    treated against control, printed beside the simulator's true value (read through
    :mod:`rapport.truth`). Returns the impact run (None when there is no control group).

    Runs again on the same home without changing anything: the decision ids are
    ``demo-<date>-<customer>``; when they are logged already (an earlier demo that day)
    they are replayed, not made anew, so the draws, the files, the truth and the figures
    are the same (``impact`` gets one more row in its time series)."""
    import time

    import numpy as np
    import pandas as pd

    from features.contract import CONTROL
    from features.ingest import discover_files, ingest
    from features.tables.control import read_control
    from features.tables.outcomes import decision_outcomes
    from features.tables.scores import latest_run, load_scores
    from features.timeutil import as_utc
    from features.warehouse import raw
    from models.catalog import Catalog, default_catalog
    from rapport.simulate import simulate
    from rapport.truth import load_simulated_truth
    from training import impact
    from training.nba_evaluation import default_margin_rate

    started = time.perf_counter()
    db = raw(con)
    decided = as_utc(decided_at)
    end = decided + timedelta(days=days)
    prefix = f"demo-{decided:%Y%m%d}-"
    windows = default_catalog().attribution()  # what `rapport ingest` uses without --catalog
    run = latest_run(db)
    known = db.execute(
        "SELECT count(*) FROM campaign_log WHERE starts_with(decision_id, ?)", [prefix]
    ).fetchone()
    if known and known[0]:
        say(f"{known[0]:,} decisions {prefix}* logged by an earlier demo run: played again")
    else:
        scores = load_scores(db, run)
        share = read_control(settings.home).group.share
        held = scores["group"].eq(CONTROL).to_numpy()
        log = pd.DataFrame(
            {
                "decision_id": prefix + scores["customer_id"].astype(str),
                "customer_id": scores["customer_id"].astype(str),
                "decided_at": decided.isoformat(),
                "action": scores["best_action"],
                "channel": scores["best_channel"].fillna("none"),
                # greedy within the group: the only randomisation is the salted hash
                "propensity": np.where(held, share, 1.0 - share),
                "group": scores["group"],
            }
        )
        folder = settings.home / "simulate" / f"decisions-{decided:%Y%m%d}"
        folder.mkdir(parents=True, exist_ok=True)
        log.to_csv(folder / "campaign_log.csv", index=False)
        now = max(datetime.now(UTC), decided)
        files = {"campaign_log": folder / "campaign_log.csv"}
        ingest(con, files, now=now, attribution=windows)
        say(
            f"the campaign tool executes scores {run.run_id}: {len(log):,} decisions "
            f"{prefix}* ({int(held.sum()):,} control, no action), logged from {folder}"
        )
    decisions = decision_outcomes(con, since=decided)
    ours = decisions[decisions["decision_id"].astype(str).str.startswith(prefix)]
    played = simulate(
        con, settings.home, settings.outbox_dir, days, end, seed, only=set(ours["decision_id"])
    )
    say(played.summary())
    report = ingest(con, discover_files(played.folder), now=end, attribution=windows)
    say(report.summary())
    decisions = decision_outcomes(con, since=decided)
    ours = decisions[decisions["decision_id"].astype(str).str.startswith(prefix)]
    try:
        result = impact.measure(con, since=decided, decisions=ours, now=end).record(con)
    except impact.NoImpactDataError as exc:
        say(f"no impact measured: {exc}")
        return None
    say(result.summary())
    truth = load_simulated_truth(settings.home, f"{decided:%Y%m%d}-{end:%Y%m%d}")
    catalog = Catalog.model_validate(run.catalog)  # the one impact values actions with
    measured = ours[ours["outcome"].notna() & ours["group"].notna()]
    treated = measured[measured["group"] != CONTROL]
    costs = treated["action"].map({a.id: a.cost for a in catalog.actions}).fillna(0.0)
    row = result.table[result.table["period"] == "all"].iloc[0]
    line = (
        f"headline: incremental value per treated customer {row['incremental_value']:,.2f} "
        f"(95% interval {row['incremental_value_lo']:,.2f} .. {row['incremental_value_hi']:,.2f},"
        f" {row['method']}; {int(row['treated_customers']):,} treated vs "
        f"{int(row['control_customers']):,} control customers)"
    )
    if truth is not None and treated["customer_id"].nunique():
        true_value = (
            truth["true_incremental_revenue"] * default_margin_rate(catalog) - costs.sum()
        ) / treated["customer_id"].nunique()
        inside = row["incremental_value_lo"] <= true_value <= row["incremental_value_hi"]
        line += (
            f"\n  the simulator's true incremental value per treated customer: {true_value:,.2f}"
            f" ({'inside' if inside else 'OUTSIDE'} the interval)"
        )
    say(line)
    say(
        f"period {decided:%Y-%m-%d} .. {end:%Y-%m-%d} played, loaded and measured in "
        f"{time.perf_counter() - started:.1f}s (files: {played.folder})"
    )
    return result


@dataclass
class PeriodRow:
    """One period of :func:`play_periods`' trajectory."""

    period: str
    #: realised incremental value per treated customer of the period's decisions, 95% interval
    impact: str
    #: the churn champion's AUC as the cycle's monitor step found it (realised when the
    #: labels matured, else estimated before them), value interval coverage (realised only:
    #: "not yet" until a scoring run's horizon has passed)
    churn_auc: str
    coverage: str
    #: what the cycle did: retrained, promoted, rolled back; the champions after it
    cycle: str
    champions: str

    @staticmethod
    def header() -> str:
        return f"{'period':<23} {'incr value/cust [95%]':<26} {'churn AUC':<15} {'coverage':<9} "

    def line(self) -> str:
        return (
            f"{self.period:<23} {self.impact:<26} {self.churn_auc:<15} {self.coverage:<9} "
            f"{self.champions}\n    {self.cycle}"
        )


#: LightGBM settings of the churn and value models the demo's cycles retrain: a faster
#: learning rate, fewer rounds (the gate still decides whether they replace the champion)
DEMO_CYCLE_PARAMS = {"learning_rate": 0.1, "num_boost_round": 150, "early_stopping_rounds": 20}


def demo_cycle() -> Any:
    """The cycle's options in the demo's periods: what is due is retrained as in
    production (a champion older than ``RAPPORT_CYCLE_RETRAIN_DAYS`` on the period's
    clock, or alerted, once the data changed), but cheaply enough to play a few periods at
    20,000 customers in minutes: fast LightGBM settings, two training cutoffs instead of
    four, 50 bootstrap draws for the NBA's off-policy interval, no comparison with other
    uplift learners."""
    from training.cycle import CycleOptions

    return CycleOptions(
        params=DEMO_CYCLE_PARAMS,
        train_cutoffs=2,
        nba_boot=50,
        nba_compare_methods=False,
    )


def play_periods(
    settings: Settings,
    start: datetime,
    periods: int,
    say: Say,
    progress: Say,
    cycle: Any = None,
) -> list[PeriodRow]:
    """The loop turned ``periods`` times on simulated time: each period the policy decides
    with the latest scores, the customers answer (:func:`simulated_period`, with its
    impact), then ``rapport cycle`` runs on the period's clock (ingest, monitor, impact,
    guard, retrain what changed, promote through the gate, re-score, refresh the store),
    and the next period decides with what it left. Prints and returns the trajectory.

    ``cycle``: the :class:`training.cycle.CycleOptions` (default :func:`demo_cycle`); its
    clock is each period's end."""
    import dataclasses

    from features.warehouse import connect
    from training.cycle import run_cycle

    options = cycle or demo_cycle()
    rows = []
    for k in range(periods):
        decided = start + timedelta(days=k * PERIOD_DAYS)
        end = decided + timedelta(days=PERIOD_DAYS)
        say(f"\n== period {k + 1} of {periods}: {decided:%Y-%m-%d} .. {end:%Y-%m-%d}")
        con = connect(settings.warehouse_path)
        try:
            measured = simulated_period(con, settings, decided, say, progress)
        finally:
            con.disconnect()
        say(f"-- rapport cycle as of {end:%Y-%m-%d}")
        result = run_cycle(dataclasses.replace(options, now=end), progress)
        say(result.summary())
        rows.append(_period_row(settings, decided, end, measured, result))
        if not result.ok:
            say("the cycle failed: the trajectory stops here (the champions before it serve)")
            break
    say("\n== the trajectory, period by period")
    say(PeriodRow.header() + "champions after the cycle")
    for row in rows:
        say(row.line())
    return rows


def _period_row(
    settings: Settings, decided: datetime, end: datetime, measured: Any, result: Any
) -> PeriodRow:
    """The trajectory's row of one period: its impact, the cycle's monitoring and moves."""
    from features.tables.monitoring import CHECKS
    from features.warehouse import connect, raw
    from models import registry

    impact = "n/a"
    if measured is not None:
        row = measured.table[measured.table["period"] == "all"].iloc[0]
        impact = (
            f"{row['incremental_value']:,.2f} [{row['incremental_value_lo']:,.2f}, "
            f"{row['incremental_value_hi']:,.2f}]"
        )
    auc, coverage = "n/a", "n/a"  # the monitor did not run
    monitor = next((s for s in result.steps if s.name == "monitor"), None)
    if monitor is not None and monitor.status == "done":
        auc, coverage = "not yet", "not yet"  # no scores whose labels or estimate are due
        run_id = monitor.detail.split(":")[0].removeprefix("run ")
        con = connect(settings.warehouse_path, read_only=True)
        try:
            checks = (
                raw(con)
                .execute(
                    f'SELECT kind, "check", value FROM {CHECKS} WHERE run_id = ? '
                    "AND subject = 'all' AND \"check\" IN ('auc', 'estimated_auc', 'coverage')",
                    [run_id],
                )
                .fetchall()
            )
        finally:
            con.disconnect()
        found = {(kind, check): value for kind, check, value in checks}
        if ("churn", "auc") in found:
            auc = f"{found['churn', 'auc']:.3f}"
        elif ("churn", "estimated_auc") in found:
            auc = f"{found['churn', 'estimated_auc']:.3f} (est.)"
        if ("value", "coverage") in found:
            coverage = f"{found['value', 'coverage']:.1%}"
    moves = [
        f"{s.name}: {s.detail}"
        for s in result.steps
        if s.name in ("guard", "retrain", "promote") and s.status == "done"
        if s.detail != "champions hold"
    ]
    held = {kind: registry.aliases(kind).get(registry.CHAMPION) for kind in registry.KINDS}
    champions = ", ".join(f"{kind} v{v}" for kind, v in held.items() if v)
    return PeriodRow(
        f"{decided:%Y-%m-%d} .. {end:%Y-%m-%d}",
        impact,
        auc,
        coverage,
        f"cycle {result.status}: " + ("; ".join(moves) or "nothing retrained or promoted"),
        champions,
    )


def prepare_serving(
    options: DemoOptions, settings: Settings, con: Any, say: Say, progress: Say
) -> None:
    """Online store, champions in the BentoML store, a local key; then (unless
    ``--no-serve``) the service itself, in place of this process."""
    say("\n== 6. online feature store: every customer's record, for live scoring")
    from features.online.materialize import load_online_store
    from models.bundle import import_champions
    from serving.auth import add_key
    from serving.runtime import serve

    loaded = load_online_store(con, progress=progress, settings=settings)
    say(f"{loaded.records:,} records in {loaded.seconds:.1f}s into {loaded.store}")
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
    say(f"URL:     {url}   (OpenAPI: {url}/docs.json)")
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
